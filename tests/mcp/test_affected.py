"""Which tests a change needs, from the code each test ran.

A small git project: a helper some tests call, another function, a data
file one test reads, a session-scoped fixture two tests in two files use,
and a conftest.py. It is recorded with `pytest --mcp --mcp-deps` (the real
plugin), then edited as a person would, without committing; each edit is
answered by `pytest-mcp affected` (the CLI, reading the working tree), by
`pytest --mcp --mcp-affected` (which runs the selection and deselects the
rest), and by the `affected_tests` tool through the official MCP Python SDK
given the edit's diff text. They must agree, name their reasons, and never
leave out a test the edit can break.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mcp import types

from conftest import Server, binary, connect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

FILES = {
    "pyproject.toml": '[project]\nname = "affdemo"\nversion = "0"\n',
    "pkg/__init__.py": "",
    "pkg/util.py": '''
        LIMIT = 10


        def helper(x):
            # doubles
            return x * 2


        def other(x):
            return x + 1


        def build_table():
            return {n: n * n for n in range(LIMIT)}
    ''',
    "tests/conftest.py": '''
        import sys
        from pathlib import Path

        import pytest

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


        @pytest.fixture(scope="session")
        def table():
            from pkg.util import build_table
            return build_table()
    ''',
    "tests/data.json": '{"answer": 42}\n',
    "tests/test_helper.py": '''
        from pkg.util import helper


        def test_helper_small():
            assert helper(2) == 4


        def test_helper_big():
            assert helper(50) == 100
    ''',
    "tests/test_other.py": '''
        import json
        from pathlib import Path

        from pkg.util import other


        def test_other():
            assert other(1) == 2


        def test_data():
            data = json.loads((Path(__file__).parent / "data.json").read_text())
            assert data["answer"] == 42


        def test_table(table):
            assert table[3] == 9
    ''',
    "tests/test_more.py": '''
        def test_table_again(table):
            assert table[4] == 16


        def test_plain():
            assert True
    ''',
}

ALL = sorted([
    "tests/test_helper.py::test_helper_small", "tests/test_helper.py::test_helper_big",
    "tests/test_other.py::test_other", "tests/test_other.py::test_data",
    "tests/test_other.py::test_table", "tests/test_more.py::test_table_again",
    "tests/test_more.py::test_plain",
])
HELPER = ["tests/test_helper.py::test_helper_big", "tests/test_helper.py::test_helper_small"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=dev@example.invalid", "-c", "user.name=dev", *args],
        cwd=repo, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def make_project(root: Path) -> Path:
    repo = root / "affdemo"
    for name, text in FILES.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    return repo


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def pytest_run(server: Server, repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-q", "-rA", "--mcp", "--mcp-address", server.grpc_addr, *args],
        cwd=repo, env=clean_env(), capture_output=True, text=True, timeout=180)


def record(server: Server, repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = pytest_run(server, repo, "--mcp-deps", *args)
    assert "recorded at" in done.stdout, done.stdout + done.stderr
    return done


def cli_affected(server: Server, repo: Path, *args: str) -> dict:
    env = clean_env()
    env["PYTEST_MCP_PYTHON"] = sys.executable
    done = subprocess.run(
        [binary(), "affected", "--db", server.db, "--format", "json", "--all", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def selected(view: dict) -> list[str]:
    return sorted(t["nodeid"] for t in view["tests"])


def reasons(view: dict) -> dict[str, str]:
    return {t["nodeid"]: t["reason"] for t in view["tests"]}


def edit(repo: Path, name: str, old: str, new: str) -> None:
    path = repo / name
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


def ran(done: subprocess.CompletedProcess) -> list[str]:
    """The node ids pytest reports as run (-rA's short summary)."""
    out = []
    for line in done.stdout.splitlines():
        for word in ("PASSED ", "FAILED ", "ERROR "):
            if line.startswith(word):
                out.append(line[len(word):].split(" - ")[0].strip())
    return sorted(out)


async def tool(server: Server, arguments: dict) -> dict:
    async with connect("http", server) as session:
        result = await session.call_tool("affected_tests", arguments)
        assert not result.is_error, [c.text for c in result.content if isinstance(c, types.TextContent)]
        return result.structured_content


async def test_each_edit_selects_exactly_the_tests_it_can_break_with_reasons_on_every_surface(
        server: Server, tmp_path: Path):
    repo = make_project(tmp_path)
    record(server, repo)

    # Nothing changed: nothing to run.
    view = cli_affected(server, repo)
    assert view["tests"] == [] and view["total"] == 7 and view["confidence"] == "exact", view

    # The helper's body: exactly its two callers, by every surface.
    edit(repo, "pkg/util.py", "return x * 2", "return x * 2 + 0")
    view = cli_affected(server, repo)
    assert selected(view) == HELPER, view
    assert set(reasons(view).values()) == {"calls pkg/util.py::helper, changed"}
    done = pytest_run(server, repo, "--mcp-affected")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran(done) == HELPER, done.stdout
    assert "5 deselected" in done.stdout, done.stdout
    assert "pytest-mcp: affected: running 2 of 7 tests" in done.stdout, done.stdout
    answer = await tool(server, {"project": "affdemo", "diff": git(repo, "diff")})
    assert selected(answer) == HELPER, reasons(answer)
    git(repo, "checkout", "--", ".")

    # Undoing the edit is a change too: the helper's tests last ran the
    # edited body. Running the affected tests brings them up to date.
    assert selected(cli_affected(server, repo)) == HELPER
    done = pytest_run(server, repo, "--mcp-affected")
    assert ran(done) == HELPER, done.stdout
    assert cli_affected(server, repo)["tests"] == []

    # Only a comment: nothing.
    edit(repo, "pkg/util.py", "# doubles", "# twice the input, as the spec says")
    assert cli_affected(server, repo)["tests"] == []
    assert (await tool(server, {"project": "affdemo", "diff": git(repo, "diff")}))["tests"] == []
    git(repo, "checkout", "--", ".")

    # The data file one test reads: that test.
    edit(repo, "tests/data.json", "42", "43")
    view = cli_affected(server, repo)
    assert reasons(view) == {"tests/test_other.py::test_data": "reads tests/data.json, changed"}
    git(repo, "checkout", "--", ".")

    # What the session-scoped fixture's setup ran: both tests that use it, in two files.
    edit(repo, "pkg/util.py", "n * n for n", "n ** 2 for n")
    assert selected(cli_affected(server, repo)) == [
        "tests/test_more.py::test_table_again", "tests/test_other.py::test_table"]
    git(repo, "checkout", "--", ".")

    # A new test: it runs (the plugin collects it), and the CLI told the collection names it.
    (repo / "tests" / "test_new.py").write_text("def test_new():\n    assert 1\n")
    collected = tmp_path / "collected.txt"
    collected.write_text("\n".join([*ALL, "tests/test_new.py::test_new"]) + "\n")
    view = cli_affected(server, repo, "--collected", str(collected))
    assert reasons(view) == {"tests/test_new.py::test_new": "new test: no recorded run"}
    # Without the collection, the new test file is named by its path.
    answer = await tool(server, {"project": "affdemo", "files": ["tests/test_new.py"]})
    assert reasons(answer) == {"tests/test_new.py": "new test file: no recorded run"}
    done = pytest_run(server, repo, "--mcp-affected")
    assert ran(done) == ["tests/test_new.py::test_new"], done.stdout
    (repo / "tests" / "test_new.py").unlink()

    # conftest.py: every test, naming why.
    edit(repo, "tests/conftest.py", "import sys", "import sys  # noqa\nimport os")
    view = cli_affected(server, repo)
    assert view["all"] and view["confidence"] == "all" and selected(view) == ALL, view
    assert view["notes"][0].startswith("tests/conftest.py changed"), view["notes"]
    answer = await tool(server, {"project": "affdemo", "files": ["tests/conftest.py"]})
    assert answer["all"] and answer["notes"][0].startswith("tests/conftest.py changed")
    git(repo, "checkout", "--", ".")


async def test_a_test_that_failed_last_time_is_selected_until_it_passes(
        server: Server, tmp_path: Path):
    repo = make_project(tmp_path)
    edit(repo, "pkg/util.py", "return x + 1", "return x + 2")
    done = record(server, repo)
    assert done.returncode == 1
    git(repo, "checkout", "--", ".")
    # The fix is a change to other(); reverting it again leaves only "failed last time".
    view = cli_affected(server, repo)
    assert selected(view) == ["tests/test_other.py::test_other"], view
    done = pytest_run(server, repo, "--mcp-affected", "--mcp-deps")
    assert done.returncode == 0 and ran(done) == ["tests/test_other.py::test_other"], done.stdout
    # It passed: nothing needs to run now, and the partial run did not make
    # the deselected tests look gone.
    view = cli_affected(server, repo)
    assert view["tests"] == [] and view["total"] == 7, view
    # pytest's exit code when a selected test fails is pytest's own.
    edit(repo, "pkg/util.py", "return x * 2", "return x * 3")
    done = pytest_run(server, repo, "--mcp-affected")
    assert done.returncode == 1 and ran(done) == HELPER, done.stdout


async def test_xdist_records_the_same_dependencies_and_deselects_in_each_worker(
        server: Server, tmp_path: Path):
    pytest.importorskip("xdist")
    repo = make_project(tmp_path)
    record(server, repo, "-n", "2")
    edit(repo, "pkg/util.py", "return x * 2", "return x * 2 + 0")
    view = cli_affected(server, repo)
    assert selected(view) == HELPER, view
    done = pytest_run(server, repo, "--mcp-affected", "-n", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran(done) == HELPER, done.stdout


async def test_a_revision_range_is_read_in_the_checkout_and_matches_the_diff(
        server: Server, tmp_path: Path):
    repo = make_project(tmp_path)
    record(server, repo)
    edit(repo, "pkg/util.py", "return x + 1", "return x + 1 - 0")
    git(repo, "commit", "-q", "-am", "touch other")
    view = cli_affected(server, repo, "--rev", "HEAD~1..HEAD")
    assert reasons(view) == {"tests/test_other.py::test_other": "calls pkg/util.py::other, changed"}
    done = pytest_run(server, repo, "--mcp-affected", "--mcp-base", "HEAD~1")
    assert ran(done) == ["tests/test_other.py::test_other"], done.stdout


async def test_an_undescribed_change_the_server_cannot_see_says_what_to_send(
        server: Server, tmp_path: Path):
    repo = make_project(tmp_path)
    record(server, repo)
    shutil.rmtree(repo)
    async with connect("http", server) as session:
        result = await session.call_tool("affected_tests", {"project": "affdemo"})
    assert result.is_error
    text = "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert "cannot see project affdemo's checkout" in text and "diff" in text, text
