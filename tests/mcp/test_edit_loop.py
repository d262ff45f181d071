"""The loop people live in: edit, run, edit, run, without committing.

A git project with a commit that passes; a bug introduced and not
committed, run three times; fixed, still not committed, run twice. Every run is on the same
commit with a dirty tree, so only the code state (the commit plus a digest
of the uncommitted changes, recorded by the plugin) tells the runs apart: no
test may come out flaky, and the history says regressed, then fixed. A test
that fails at random on unchanged code is flaky, naming that code.

Real `pytest --mcp` runs with the plugin, read back with the official MCP
Python SDK.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mcp import types

from conftest import Server, client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

CALC = '''
def add(a, b):
    return a + b
'''

TESTS = '''
import os
from pathlib import Path

from calc import add


def test_add():
    assert add(2, 3) == 5


def test_steady():
    assert add(0, 0) == 0


def test_random():
    # Fails on every other run, whatever the code: the count lives outside
    # the checkout, as a shared service's state would.
    counter = Path(os.environ["LOOP_COUNTER"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    assert n % 2 == 1, f"unlucky run {n}"
'''


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=dev@example.invalid", "-c", "user.name=dev", *args],
        cwd=repo, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def run(server: Server, repo: Path, counter: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["LOOP_COUNTER"] = str(counter)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:randomly",
         "--mcp", "--mcp-address", server.grpc_addr, "-k", "not test_random"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(c, name: str, arguments: dict) -> dict:
    result = await c.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    return result.structured_content


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.fail("git is needed for the edit loop")
    repo = tmp_path / "loop"
    repo.mkdir()
    (repo / "calc.py").write_text(textwrap.dedent(CALC))
    (repo / "test_calc.py").write_text(textwrap.dedent(TESTS))
    (repo / "pytest.ini").write_text("[pytest]\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "calc")
    return repo


async def test_a_bug_made_and_fixed_without_committing_is_a_regression_and_a_fix_not_flakiness(
    server: Server, repo: Path, tmp_path: Path
):
    counter = tmp_path / "counter"
    commit = git(repo, "rev-parse", "HEAD").strip()
    # The committed code passes.
    done = run(server, repo, counter)
    assert done.returncode == 0, done.stdout + done.stderr
    # The bug, not committed: three runs on the same dirty tree.
    (repo / "calc.py").write_text(textwrap.dedent(CALC).replace("a + b", "a - b"))
    for _ in range(3):
        done = run(server, repo, counter)
        assert done.returncode == 1, done.stdout + done.stderr
    # Fixed, still not committed (another spelling than the commit's): two runs.
    (repo / "calc.py").write_text(textwrap.dedent(CALC).replace("a + b", "b + a"))
    for _ in range(2):
        done = run(server, repo, counter)
        assert done.returncode == 0, done.stdout + done.stderr
    async with client("http", server, "2026-07-28") as c:
        sessions = (await call(c, "list_sessions", {"project": "loop"}))["sessions"]
        assert len(sessions) == 6
        # Every run on the same commit; the first on a clean tree, the rest
        # on two dirty ones.
        assert {s["git_commit"] for s in sessions} == {commit}
        codes = [s["code_state"] for s in reversed(sessions)]
        assert codes[0] == commit
        assert all(code.startswith(commit + "+") for code in codes[1:]), codes
        assert len(set(codes[1:4])) == 1 and len(set(codes[4:])) == 1 and codes[1] != codes[4]

        flaky = await call(c, "find_flaky_tests", {"project": "loop"})
        assert flaky["total"] == 0, flaky
        history = await call(c, "get_test_history", {"nodeid": "test_calc.py::test_add",
                                                     "project": "loop"})
        s = history["stability"]
        assert s["verdict"] == "fixed", s
        assert [ch["change"] for ch in s["changes"]] == ["regressed", "fixed"]
        first_bad, first_good = sessions[-2]["id"], sessions[1]["id"]
        assert [ch["session_id"] for ch in s["changes"]] == [first_bad, first_good]
        assert "not flaky" in s["why"]
        assert [e["outcome"] for e in history["entries"]] == ["passed"] * 2 + ["failed"] * 3 \
            + ["passed"]
        # Its failures were never labelled flaky either.
        failures = await call(c, "get_failures", {"session": sessions[2]["id"]})
        assert [f["known_flaky"] for f in failures["failures"]] == [False]


async def test_a_test_failing_at_random_on_unchanged_code_is_flaky(
    server: Server, repo: Path, tmp_path: Path
):
    counter = tmp_path / "counter"
    env_runs = []
    for _ in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env["LOOP_COUNTER"] = str(counter)
        env_runs.append(subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:randomly",
             "--mcp", "--mcp-address", server.grpc_addr],
            cwd=repo, env=env, capture_output=True, text=True, timeout=120))
    assert [r.returncode for r in env_runs] == [1, 0], [r.stdout for r in env_runs]
    commit = git(repo, "rev-parse", "HEAD").strip()
    async with client("http", server, "2026-07-28") as c:
        flaky = await call(c, "find_flaky_tests", {"project": "loop"})
        assert [t["nodeid"] for t in flaky["tests"]] == ["test_calc.py::test_random"]
        evidence = flaky["tests"][0]["stability"]["evidence"]
        # A clean checkout: the code state is the commit itself.
        assert evidence["code_state"] == commit
        assert len(evidence["passed_in"]) == 1 and len(evidence["failed_in"]) == 1
        text = text_of(await c.call_tool("find_flaky_tests", {"project": "loop"}))
        assert f"on code state {commit[:12]}" in text, text


def run_deps(server: Server, repo: Path, counter: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["LOOP_COUNTER"] = str(counter)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:randomly",
         "--mcp", "--mcp-deps", "--mcp-address", server.grpc_addr, *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120)


async def test_with_dependencies_a_random_failure_is_flaky_across_commits_that_did_not_touch_its_code(
    server: Server, repo: Path, tmp_path: Path
):
    counter = tmp_path / "counter"
    assert run_deps(server, repo, counter, "-k", "test_random").returncode == 1
    # A commit that changes nothing the test runs: another module.
    (repo / "notes.py").write_text("WHO = 'someone else'\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "unrelated")
    assert run_deps(server, repo, counter, "-k", "test_random").returncode == 0
    async with client("http", server, "2026-07-28") as c:
        sessions = (await call(c, "list_sessions", {"project": "loop"}))["sessions"]
        assert len({s["code_state"] for s in sessions}) == 2, "two commits"
        flaky = await call(c, "find_flaky_tests", {"project": "loop"})
        assert [t["nodeid"] for t in flaky["tests"]] == ["test_calc.py::test_random"], flaky
        evidence = flaky["tests"][0]["stability"]["evidence"]
        assert evidence["rule"] == "same_dependencies", evidence
        assert len(evidence["passed_in"]) == 1 and len(evidence["failed_in"]) == 1


async def test_with_dependencies_a_changed_data_file_between_pass_and_fail_is_a_regression_on_one_code_state(
    server: Server, repo: Path, tmp_path: Path
):
    # The expected total lives in a file git ignores: the code state (commit
    # plus the digest of what git sees) cannot tell the two runs apart, the
    # test's dependencies (the file it read) can.
    (repo / ".gitignore").write_text("expected.txt\n")
    (repo / "test_calc.py").write_text(textwrap.dedent(TESTS) + textwrap.dedent('''

        def test_expected():
            expected = int((Path(__file__).parent / "expected.txt").read_text())
            assert add(2, 3) == expected
    '''))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "expected")
    (repo / "calc.py").write_text(textwrap.dedent(CALC) + "\n# dirty, uncommitted\n")
    counter = tmp_path / "counter"
    (repo / "expected.txt").write_text("5\n")
    assert run_deps(server, repo, counter, "-k", "test_expected").returncode == 0
    (repo / "expected.txt").write_text("6\n")
    assert run_deps(server, repo, counter, "-k", "test_expected").returncode == 1
    async with client("http", server, "2026-07-28") as c:
        sessions = (await call(c, "list_sessions", {"project": "loop"}))["sessions"]
        codes = {s["code_state"] for s in sessions}
        assert len(codes) == 1 and "+" in codes.pop(), "one commit, one dirty tree"
        history = await call(c, "get_test_history", {"nodeid": "test_calc.py::test_expected",
                                                     "project": "loop"})
        s = history["stability"]
        assert s["verdict"] == "regressed", s
        assert [ch["rule"] for ch in s["changes"]] == ["dependencies"], s["changes"]
        assert (await call(c, "find_flaky_tests", {"project": "loop"}))["total"] == 0
