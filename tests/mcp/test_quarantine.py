"""Quarantine through MCP, as an agent uses it, with real `pytest --mcp` runs.

An agent quarantines a failing test with `quarantine_test`; the next run with
`--mcp-quarantine` exits 0 when that is its only failure, shows the test as
quarantined, and the recorder keeps its real outcome with the quarantined
flag. `release_test` ends it. The policy gate and the audit trail cover both
write tools; `get_session` and `find_flaky_tests` suggest releasing an entry
whose test passed its last 10 runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from mcp import types

from conftest import SUITE, Server, binary, connect, passed, start_server, stream_plugin_session

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

FAILING = "test_demo.py::test_fails"


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def structured(result: types.CallToolResult) -> dict:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


def run_suite(server: Server, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """`pytest --mcp` on the demo suite (one pass, one failure), recording to `server`."""
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "test_demo.py").write_text(textwrap.dedent(SUITE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "--mcp",
         "--mcp-address", server.grpc_addr, *extra, "test_demo.py"],
        cwd=suite, env=env, capture_output=True, text=True, timeout=120,
    )


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_test_quarantined_by_an_agent_no_longer_fails_the_run_until_it_is_released(
    server: Server, tmp_path: Path, transport: str
):
    async with connect(transport, server) as session:
        added = structured(await session.call_tool(
            "quarantine_test", {"nodeid": FAILING, "reason": "answer is off by one, fix in #42"}))
    assert added["renewed"] is False
    assert added["entry"]["pattern"] == FAILING
    assert added["entry"]["project"] is None
    assert added["entry"]["added_by"].startswith("mcp:")

    run = run_suite(server, tmp_path, "--mcp-quarantine")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "2 passed, 1 quarantined" in out, out
    assert "QUARANTINED" in out, out

    async with connect(transport, server) as session:
        failures = structured(await session.call_tool("get_failures", {"session": "latest"}))
        detail = structured(await session.call_tool("get_session", {"session": "latest"}))
    # The real outcome is stored, with its traceback, and flagged.
    [failure] = failures["failures"]
    assert failure["nodeid"] == FAILING
    assert failure["outcome"] == "failed"
    assert failure["quarantined"] is True
    assert "assert 3 == 2" in failure["traceback"]
    assert detail["session"]["counts"]["failed"] == 1
    assert detail["first_failures"][0]["quarantined"] is True
    [entry] = detail["quarantine"]
    assert entry["entry"]["reason"] == "answer is off by one, fix in #42"
    assert entry["release_suggested"] is False
    # The session page marks the row too.
    base = server.mcp_url.removesuffix("/mcp")
    sid = detail["session"]["id"]
    with urllib.request.urlopen(f"{base}/sessions/{sid}?outcome=failed", timeout=20) as page:
        html = page.read().decode()
    assert 'class="quarantined"' in html and FAILING in html, html

    # Without --mcp-quarantine the run fails as it always did.
    assert run_suite(server, tmp_path).returncode == 1

    async with connect(transport, server) as session:
        released = structured(await session.call_tool("release_test", {"nodeid": FAILING}))
        assert released["entry"]["pattern"] == FAILING
        again = await session.call_tool("release_test", {"nodeid": FAILING})
        assert again.is_error
        assert f'nodeid: "{FAILING}" is not quarantined' in text_of(again)
        listed = structured(await session.call_tool("list_quarantine", {}))
    assert listed["entries"] == []
    run = run_suite(server, tmp_path, "--mcp-quarantine")
    assert run.returncode == 1, run.stdout
    assert "quarantined" not in run.stdout.splitlines()[-1], run.stdout


async def test_bad_quarantine_arguments_are_refused_naming_the_field(server: Server):
    async with connect("http", server) as session:
        for args, want in [
            ({"nodeid": FAILING, "reason": "r", "days": 91}, "days: 91 is out of range"),
            ({"nodeid": FAILING, "reason": "r", "days": 0}, "days: 0 is out of range"),
            ({"nodeid": FAILING, "reason": " "}, "reason: must not be empty"),
            ({"nodeid": "", "reason": "r"}, "nodeid: must not be empty"),
            ({"nodeid": FAILING}, "reason"),
        ]:
            result = await session.call_tool("quarantine_test", args)
            assert result.is_error, args
            assert want in text_of(result), (args, text_of(result))
        listed = structured(await session.call_tool("list_quarantine", {}))
    assert listed["entries"] == []


async def test_the_policy_gate_and_the_audit_cover_both_quarantine_tools(tmp_path: Path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "version": "1",
        "default": "allow",
        "tools": {
            "quarantine_test": {"limits": [{"counter": "quarantines", "window": "hour", "max": 1}]},
            "release_test": {"action": "deny", "reason": "releases go through review"},
        },
    }))
    s = start_server(tmp_path / "policed.db", "--policy", str(policy))
    try:
        async with connect("http", s) as session:
            names = {t.name for t in (await session.list_tools()).tools}
            assert "quarantine_test" in names and "release_test" not in names
            first = await session.call_tool("quarantine_test", {"nodeid": FAILING, "reason": "flaky"})
            assert not first.is_error, text_of(first)
            second = await session.call_tool("quarantine_test", {"nodeid": "t.py::x", "reason": "flaky"})
            assert second.is_error and "limit of 1 calls per hour" in text_of(second)
            denied = await session.call_tool("release_test", {"nodeid": FAILING})
            assert denied.is_error and "releases go through review" in text_of(denied)
            listed = structured(await session.call_tool("list_quarantine", {}))
        # The limited call stored nothing; the denied one released nothing.
        assert [e["entry"]["pattern"] for e in listed["entries"]] == [FAILING]
        out = subprocess.run([binary(), "audit", "--db", s.db, "-n", "10"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        rows = [line.split()[4:7] for line in out.stdout.splitlines()[1:]]
        assert rows[:4] == [
            ["list_quarantine", "allowed", "ok"],
            ["release_test", "denied", "-"],
            ["quarantine_test", "limited", "-"],
            ["quarantine_test", "allowed", "ok"],
        ], out.stdout
    finally:
        stop(s)


async def test_an_entry_whose_test_passed_its_last_ten_runs_is_suggested_for_release(
    server: Server,
):
    nodeid = "tests/test_cache.py::test_warm"
    async with connect("http", server) as session:
        structured(await session.call_tool(
            "quarantine_test", {"nodeid": nodeid, "reason": "races the cache", "days": 30}))
    for _ in range(9):
        stream_plugin_session(server, [passed(nodeid), passed("tests/test_cache.py::test_cold")])
    async with connect("http", server) as session:
        detail = structured(await session.call_tool("get_session", {}))
    [status] = detail["quarantine"]
    assert status["release_suggested"] is False
    assert status["tests"] == [{"nodeid": nodeid, "runs": 9, "passed_in_a_row": 9}]

    stream_plugin_session(server, [passed(nodeid), passed("tests/test_cache.py::test_cold")])
    async with connect("http", server) as session:
        detail = await session.call_tool("get_session", {})
        flaky = await session.call_tool("find_flaky_tests", {})
    [status] = structured(detail)["quarantine"]
    assert status["release_suggested"] is True
    assert "release suggested: passed its last 10 runs" in text_of(detail)
    [status] = structured(flaky)["quarantine"]
    assert status["entry"]["pattern"] == nodeid and status["release_suggested"] is True
    assert "release suggested" in text_of(flaky)
