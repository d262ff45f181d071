"""The code state of a run (Environment.code_state): the commit, plus a
digest of the working tree's changes; equal only for runs on the same code.

Real git in temporary checkouts. The end-to-end tests run pytest with the
plugin in the checkout (subprocesses, cwd the checkout, so no pytester file
lands in the tree) and read what the recorder stored back over gRPC.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import INNER_TIMEOUT, SESSION_LINE
from pytest_mcp import _code_state
from pytest_mcp._code_state import Change, code_state, parse_status

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

TEST_FILE = "def test_one():\n    assert 1 + 1 == 2\n"
DIGEST = re.compile(r"[0-9a-f]{40}\+[0-9a-f]{16}")


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
         "-c", "commit.gpgsign=false", *args],
        cwd=cwd, capture_output=True, text=True, check=True, timeout=30,
    )
    return done.stdout


def head(cwd: Path) -> str:
    return git(cwd, "rev-parse", "HEAD").strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout with one committed test file and no .gitignore."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q")
    (path / "test_one.py").write_text(TEST_FILE)
    (path / "lib").mkdir()
    (path / "lib" / "util.py").write_text("VALUE = 1\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


def record(checkout: Path, server, tmp_path: Path, *args: str) -> str:
    """Runs pytest with recording in ``checkout``; the code state the recorder stored."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the first run must write __pycache__
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--mcp", f"--mcp-address={server.addr}",
         f"--mcp-spool={tmp_path / 'spool'}", *args],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=INNER_TIMEOUT,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    match = SESSION_LINE.search(out)
    assert match, out
    return server.session(match.group(1)).environment.code_state


# ---- end to end: what the recorder stores ---------------------------------


@needs_git
def test_two_runs_of_unchanged_code_share_the_commit_though_the_first_wrote_caches(
    checkout, server, tmp_path
):
    first = record(checkout, server, tmp_path)
    # The first run left what pytest writes in a tree without a .gitignore.
    assert (checkout / "__pycache__").is_dir()
    assert (checkout / ".pytest_cache").is_dir()
    second = record(checkout, server, tmp_path)
    assert first == second == head(checkout)


@needs_git
def test_an_uncommitted_edit_changes_the_stored_code_state_and_reverting_it_restores_it(
    checkout, server, tmp_path
):
    clean = record(checkout, server, tmp_path, "-p", "no:cacheprovider")
    util = checkout / "lib" / "util.py"
    util.write_text("VALUE = 2\n")
    edited = record(checkout, server, tmp_path, "-p", "no:cacheprovider")
    assert DIGEST.fullmatch(edited) and edited.startswith(head(checkout) + "+"), edited
    # What the recorder stored is what the plugin computes for this tree.
    assert edited == code_state(str(checkout))
    util.write_text("VALUE = 1\n")
    assert record(checkout, server, tmp_path, "-p", "no:cacheprovider") == clean == head(checkout)


def test_outside_a_checkout_the_stored_code_state_is_empty(pytester, run_mcp, server):
    pytester.makepyfile(test_one=TEST_FILE)
    inside = shutil.which("git") is not None and subprocess.run(
        ["git", "rev-parse"], cwd=pytester.path, capture_output=True
    ).returncode == 0
    if inside:
        pytest.skip("the temporary directory is inside a git checkout")
    result = run_mcp()
    assert result.ret == 0
    (session,) = server.sessions()
    assert session.environment.code_state == ""
    assert session.environment.rootdir == str(pytester.path)


# ---- how the tree maps to a code state ------------------------------------


@needs_git
def test_the_same_edit_gives_the_same_digest_and_a_different_edit_another(checkout):
    util = checkout / "lib" / "util.py"
    util.write_text("VALUE = 2\n")
    two = code_state(str(checkout))
    util.write_text("VALUE = 3\n")
    three = code_state(str(checkout))
    util.write_text("VALUE = 2\n")
    assert code_state(str(checkout)) == two != three
    assert DIGEST.fullmatch(two) and DIGEST.fullmatch(three)


@needs_git
def test_an_untracked_test_file_changes_the_code_state_and_an_ignored_file_does_not(checkout):
    (checkout / ".gitignore").write_text("*.log\n")
    git(checkout, "add", ".gitignore")
    git(checkout, "commit", "-q", "-m", "ignore logs")
    (checkout / "run.log").write_text("noise\n")
    assert code_state(str(checkout)) == head(checkout)
    (checkout / "test_two.py").write_text("def test_two():\n    pass\n")
    assert DIGEST.fullmatch(code_state(str(checkout)))


@needs_git
def test_what_tests_and_tools_write_is_not_code(checkout):
    clean = code_state(str(checkout))
    for name in (
        "__pycache__/test_one.cpython-311.pyc", "lib/__pycache__/util.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed", ".mypy_cache/3.11/util.json",
        ".ruff_cache/content", ".hypothesis/examples/x", ".tox/py311/bin/python",
        ".nox/tests/bin/python", ".venv/pyvenv.cfg", "venv/lib/site.py",
        "node_modules/left-pad/index.js", "project.egg-info/PKG-INFO", "lib/stray.pyc",
        "lib/stray.pyo", ".coverage", ".coverage.host.1234.567890",
    ):
        path = checkout / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("generated\n")
    assert code_state(str(checkout)) == clean == head(checkout)
    # The same names as code are code: a module called venv_tools.py counts.
    (checkout / "lib" / "venv_tools.py").write_text("X = 1\n")
    assert code_state(str(checkout)) != clean


@needs_git
def test_a_staged_change_and_the_same_change_unstaged_have_the_same_code_state(checkout):
    (checkout / "lib" / "util.py").write_text("VALUE = 2\n")  # modified
    (checkout / "lib" / "new module.py").write_text("NEW = 1\n")  # added, a space in its name
    os.rename(checkout / "test_one.py", checkout / "test_renamed.py")  # renamed
    (checkout / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(checkout / "run.sh", 0o755)  # added, executable
    unstaged = code_state(str(checkout))
    git(checkout, "add", "-A")
    assert "R  test_one.py -> test_renamed.py" in git(checkout, "status", "--short")
    staged = code_state(str(checkout))
    assert DIGEST.fullmatch(unstaged) and staged == unstaged
    # Half staged, half not: still the same tree.
    git(checkout, "reset", "-q", "--", "lib/util.py")
    assert code_state(str(checkout)) == unstaged


@needs_git
def test_a_deletion_and_a_mode_change_count(checkout):
    clean = code_state(str(checkout))
    os.chmod(checkout / "lib" / "util.py", 0o755)
    made_executable = code_state(str(checkout))
    os.chmod(checkout / "lib" / "util.py", 0o644)
    os.remove(checkout / "lib" / "util.py")
    deleted = code_state(str(checkout))
    assert len({clean, made_executable, deleted}) == 3
    git(checkout, "rm", "-q", "--", "lib/util.py")  # the same deletion, staged
    assert code_state(str(checkout)) == deleted


@needs_git
def test_code_outside_the_rootdir_counts(checkout):
    (checkout / "tests").mkdir()
    (checkout / "tests" / "test_a.py").write_text(TEST_FILE)
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "tests")
    rootdir = str(checkout / "tests")
    assert code_state(rootdir) == head(checkout)
    (checkout / "lib" / "util.py").write_text("VALUE = 2\n")
    assert code_state(rootdir) == code_state(str(checkout)) != head(checkout)


@needs_git
def test_without_a_commit_the_code_state_is_unknown(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "test_one.py").write_text(TEST_FILE)
    assert code_state(str(tmp_path)) == ""


def test_without_git_the_code_state_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    assert code_state(str(tmp_path)) == ""


@needs_git
def test_past_each_bound_the_code_state_is_unknown(checkout, monkeypatch):
    for i in range(4):
        (checkout / f"test_new_{i}.py").write_text(f"def test_{i}():\n    pass\n")
    assert DIGEST.fullmatch(code_state(str(checkout)))
    with monkeypatch.context() as m:
        m.setattr(_code_state, "MAX_CHANGED_PATHS", 3)
        assert code_state(str(checkout)) == ""
    with monkeypatch.context() as m:
        m.setattr(_code_state, "MAX_HASHED_BYTES", 40)
        assert code_state(str(checkout)) == ""
    with monkeypatch.context() as m:
        m.setattr(_code_state, "BUDGET", 0.0)
        assert code_state(str(checkout)) == ""
    assert DIGEST.fullmatch(code_state(str(checkout)))


# ---- the porcelain v2 reader ------------------------------------------------


def test_the_status_reader_takes_renames_and_paths_with_spaces_and_newlines():
    commit = "6b6e9503d95a85a5341ccae8cf5aa011b1a513b6"
    blob = "61780798228d17af2d34fce4cfbdf35556832472"
    zero = "0" * 40
    data = (
        f"# branch.oid {commit}\0# branch.head main\0"
        f"2 R. N... 100644 100644 100644 {blob} {blob} R100 new name.txt\0old\nname.txt\0"
        f"2 C. N... 100644 100644 100644 {blob} {blob} C75 copy.txt\0{blob[:4]}.txt\0"
        f"1 .M N... 100644 100644 100755 {blob} {blob} dir/with space/a b.py\0"
        f"1 D. N... 100644 000000 000000 {blob} {zero} gone.py\0"
        f"1 M. SC.. 160000 160000 160000 {blob} {commit} vendor/lib\0"
        f"u UU N... 100644 100644 100644 100644 {blob} {blob} {blob} conflict.py\0"
        f"? new\nfile.py\0"
        f"! ignored.log\0"
    ).encode()
    found_commit, changes = parse_status(data)
    assert found_commit == commit.encode()
    assert changes == [
        Change("2", b"new name.txt", "R.", "N...", b"100644", blob.encode(), b"old\nname.txt"),
        Change("2", b"copy.txt", "C.", "N...", b"100644", blob.encode(), None),
        Change("1", b"dir/with space/a b.py", ".M", "N...", b"100755", blob.encode()),
        Change("1", b"gone.py", "D.", "N...", b"000000", zero.encode()),
        Change("1", b"vendor/lib", "M.", "SC..", b"160000", commit.encode()),
        Change("u", b"conflict.py", "UU", "N...", b"100644"),
        Change("?", b"new\nfile.py"),
    ]


def test_the_status_reader_knows_a_checkout_without_commits_and_rejects_garbage():
    assert parse_status(b"# branch.oid (initial)\0# branch.head main\0? a.py\0") == (
        None, [Change("?", b"a.py")]
    )
    with pytest.raises(_code_state.StatusError):
        parse_status(b"1 .M N... 100644\0")
    with pytest.raises(_code_state.StatusError):
        parse_status(b"2 R. N... 100644 100644 100644 a b R100 new.txt\0")
    with pytest.raises(_code_state.StatusError):
        parse_status(b"not porcelain\0")


def test_generated_paths_are_told_from_code():
    assert _code_state.generated(b"a/__pycache__/m.cpython-311.pyc")
    assert _code_state.generated(b"pkg.egg-info/PKG-INFO")
    assert _code_state.generated(b".coverage.host.1.2")
    assert not _code_state.generated(b"venv_tools.py")
    assert not _code_state.generated(b"docs/coverage.md")
    assert not _code_state.generated(b"tests/test_pyc.py")
