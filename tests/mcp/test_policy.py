"""The policy gate, tokens and the audit trail, through the official MCP Python SDK."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from conftest import Server, binary, connect, start_server, stream_plugin_session

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

TRANSPORTS = ["stdio", "http"]

ALL_TOOLS = {"list_sessions", "get_session", "get_failures", "get_failure_clusters", "duration_regressions", "get_test_history",
             "find_flaky_tests", "compare_sessions", "slowest_tests", "list_quarantine", "list_projects",
             "affected_tests", "record_session_start", "record_test_outcome", "record_session_finish",
             "quarantine_test", "release_test"}

# The policy of the issue, byte for byte.
ISSUE_POLICY = """{
  "version": "1",
  "default": "deny",
  "tools": {
    "record_session_finish": {
      "limits": [
        { "counter": "record_session_finish_rate", "window": "minute", "max": 30, "scope": "grant" }
      ]
    }
  }
}
"""

EMPTY_SUMMARY = {"total_tests": 0, "passed": 0, "failed": 0, "skipped": 0, "exitstatus": 0}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(ISSUE_POLICY)
    return path


@pytest.fixture
def policed(tmp_path: Path, policy_file: Path):
    """`serve` with the issue's policy and no tokens."""
    s = start_server(tmp_path / "db.sqlite", "--policy", str(policy_file))
    yield s
    stop(s)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"alice": "tok-alice-123", "bob": "tok-bob-456"}))
    return path


@pytest.fixture
def guarded(tmp_path: Path, policy_file: Path, tokens_file: Path):
    """`serve` with the issue's policy and two grants, alice and bob."""
    # Traced, so a test can check that no token reaches the log at any level.
    s = start_server(tmp_path / "db.sqlite", "--policy", str(policy_file),
                     "--tokens", str(tokens_file), env={"RUST_LOG": "trace"})
    s.token = "tok-alice-123"
    yield s
    stop(s)


def running_sessions(server: Server, n: int) -> list[str]:
    """n sessions started over gRPC, as the plugin does, left running."""
    return [stream_plugin_session(server, [], finish=False) for _ in range(n)]


def status_of(server: Server, sid: str) -> str:
    return server.grpc("GetSession", {"session_id": sid})["session"]["status"]


async def finish(session, sid: str) -> types.CallToolResult:
    return await session.call_tool("record_session_finish",
                                   {"session_id": sid, "summary": EMPTY_SUMMARY})


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_with_the_issue_policy_30_finishes_pass_and_the_31st_is_refused_changing_nothing(
    policed: Server, policy_file: Path, transport: str
):
    sids = running_sessions(policed, 31)
    async with connect(transport, policed, stdio_args=("--policy", str(policy_file))) as session:
        listed = [t.name for t in (await session.list_tools()).tools]
        assert listed == ["record_session_finish"]

        for sid in sids[:30]:
            result = await finish(session, sid)
            assert not result.is_error, text_of(result)
            assert result.structured_content["session"]["status"] == "finished"

        refused = await finish(session, sids[30])
        assert refused.is_error
        text = text_of(refused)
        assert "refused by policy" in text
        assert "limit of 30 calls per minute" in text
        assert "record_session_finish_rate" in text
        assert RFC3339.search(text), text
        assert re.search(r"in \d+ s", text), text
        assert "nothing was changed" in text
    assert status_of(policed, sids[30]) == "SESSION_STATUS_RUNNING"
    assert status_of(policed, sids[29]) == "SESSION_STATUS_FINISHED"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_other_tool_is_absent_from_the_list_and_refused_when_called(
    policed: Server, policy_file: Path, transport: str
):
    before = policed.grpc("ListSessions", {}).get("sessions", [])
    async with connect(transport, policed, stdio_args=("--policy", str(policy_file))) as session:
        for tool in sorted(ALL_TOOLS - {"record_session_finish"}):
            arguments = {"environment": {"os": "Linux", "python_version": "3.12"}} \
                if tool == "record_session_start" else {"nodeid": "t.py::a"} \
                if tool == "get_test_history" else {}
            result = await session.call_tool(tool, arguments)
            assert result.is_error, tool
            assert "refused by policy" in text_of(result), (tool, text_of(result))
            assert "default: deny" in text_of(result), (tool, text_of(result))
        # An unknown tool is still a protocol error, and names only visible tools.
        with pytest.raises(MCPError) as err:
            await session.call_tool("no_such_tool", {})
        assert err.value.code == -32602
        assert "record_session_finish" in err.value.message
        assert "get_session" not in err.value.message
    # The refused record_session_start created nothing.
    assert policed.grpc("ListSessions", {}).get("sessions", []) == before


async def test_two_grants_have_separate_counters(guarded: Server):
    sids = running_sessions(guarded, 32)
    async with connect("http", guarded, token="tok-alice-123") as alice:
        for sid in sids[:30]:
            assert not (await finish(alice, sid)).is_error
        assert (await finish(alice, sids[30])).is_error
        async with connect("http", guarded, token="tok-bob-456") as bob:
            # Bob finishes a session of his own: a grant writes only to its own.
            guarded.token = "tok-bob-456"
            bobs = running_sessions(guarded, 1)[0]
            guarded.token = "tok-alice-123"
            result = await finish(bob, bobs)
            assert not result.is_error, text_of(result)
        # A new MCP session does not give alice a fresh quota: her token is the grant.
        async with connect("http", guarded, token="tok-alice-123") as alice_again:
            assert (await finish(alice_again, sids[31])).is_error
    assert status_of(guarded, sids[31]) == "SESSION_STATUS_RUNNING"


async def test_concurrent_calls_are_counted_exactly(policed: Server):
    sids = running_sessions(policed, 40)
    results: list[bool] = []
    async with connect("http", policed) as session:
        async def one(sid: str) -> None:
            results.append(not (await finish(session, sid)).is_error)

        async with anyio.create_task_group() as group:
            for sid in sids:
                group.start_soon(one, sid)
    assert sorted(results) == [False] * 10 + [True] * 30
    listed = policed.grpc("ListSessions", {"page_size": 100})["sessions"]
    assert [x["status"] for x in listed].count("SESSION_STATUS_FINISHED") == 30


async def test_without_tokens_each_mcp_session_is_its_own_grant(policed: Server):
    sids = running_sessions(policed, 32)
    async with connect("http", policed) as first:
        for sid in sids[:30]:
            assert not (await finish(first, sid)).is_error
        assert (await finish(first, sids[30])).is_error
        async with connect("http", policed) as second:
            assert not (await finish(second, sids[30])).is_error


def request(url: str, headers: dict[str, str]):
    """POSTs an initialize; returns the status, the headers (case-insensitive) and the body."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                  "clientInfo": {"name": "curl-like", "version": "1"}}}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers, ""
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_http_needs_the_right_bearer_token(guarded: Server):
    status, headers, body = request(guarded.mcp_url, {})
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert "expected `authorization: Bearer <token>`" in body

    status, headers, body = request(guarded.mcp_url, {"Authorization": "Bearer tok-mallory"})
    assert status == 401
    assert 'error="invalid_token"' in headers.get("WWW-Authenticate", "")
    assert body.strip() == "invalid token"

    assert request(guarded.mcp_url, {"Authorization": "Bearer tok-bob-456"})[0] == 200
    running_sessions(guarded, 1)  # over gRPC, with alice's token
    # No token reaches the log, even at RUST_LOG=trace.
    assert len(guarded.stderr) > 100  # the trace is on
    assert not any("tok-" in line for line in guarded.stderr)


async def test_audit_rows_match_the_calls_made_decisions_included(tmp_path: Path):
    small = tmp_path / "small.json"
    small.write_text(ISSUE_POLICY.replace('"max": 30', '"max": 2'))
    s = start_server(tmp_path / "audit.sqlite", "--policy", str(small), env={"PYTEST_MCP_TOKEN": "s3cret"})
    s.token = "s3cret"
    try:
        sids = running_sessions(s, 2)
        async with connect("http", s, token="s3cret") as session:
            # Let through, then failing: it still counts against the limit.
            bad = await session.call_tool("record_session_finish", {"summary": {"total_tests": -1}})
            assert bad.is_error and "refused" not in text_of(bad)
            assert not (await finish(session, sids[0])).is_error
            assert (await finish(session, sids[1])).is_error
            assert (await session.call_tool("get_session", {})).is_error
            with pytest.raises(MCPError):
                await session.call_tool("no_such_tool", {})
        out = subprocess.run([binary(), "audit", "--db", str(s.db), "-n", "100"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[:3] == ["TIME", "(UTC)", "GRANT"]
        rows = [line.split()[2:7] for line in lines[1:]]
        # Newest first: grant, transport, tool, decision, result.
        assert rows == [
            ["default", "http", "no_such_tool", "unknown", "-"],
            ["default", "http", "get_session", "denied", "-"],
            ["default", "http", "record_session_finish", "limited", "-"],
            ["default", "http", "record_session_finish", "allowed", "ok"],
            ["default", "http", "record_session_finish", "allowed", "error"],
        ], out.stdout
        assert "default: deny" in lines[2]
        assert "limit of 2 calls per minute" in lines[3]
        assert "summary: missing field" in lines[5]
        assert status_of(s, sids[1]) == "SESSION_STATUS_RUNNING"
    finally:
        stop(s)


async def test_a_changed_policy_file_is_reloaded_and_a_broken_one_keeps_the_policy_in_force(
    tmp_path: Path,
):
    path = tmp_path / "policy.json"
    path.write_text('{"version": "1", "default": "allow"}')
    s = start_server(tmp_path / "db.sqlite", "--policy", str(path))

    async def wait_for(text: str) -> None:
        with anyio.fail_after(15):
            while not any(text in line for line in s.stderr):
                await anyio.sleep(0.05)

    try:
        async with connect("http", s) as session:
            assert {t.name for t in (await session.list_tools()).tools} == ALL_TOOLS
            path.write_text(json.dumps({"version": "1", "default": "allow", "tools": {
                "get_session": {"action": "deny", "reason": "use get_failures"}}}))
            await wait_for("policy reloaded")
            assert {t.name for t in (await session.list_tools()).tools} == ALL_TOOLS - {"get_session"}
            refused = await session.call_tool("get_session", {})
            assert refused.is_error and "use get_failures" in text_of(refused)

            path.write_text('{"version": "1", "default": "allow", "tools": {"get_sesion": {}}}')
            await wait_for("the changed policy file is refused")
            assert any("tools.get_sesion" in line for line in s.stderr), s.stderr
            assert {t.name for t in (await session.list_tools()).tools} == ALL_TOOLS - {"get_session"}
    finally:
        stop(s)


def test_a_malformed_policy_stops_the_start_naming_the_field(tmp_path: Path):
    path = tmp_path / "policy.json"
    path.write_text(ISSUE_POLICY.replace('"minute"', '"fortnight"'))
    out = subprocess.run([binary(), "serve", "--db", str(tmp_path / "db.sqlite"),
                          "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
                          "--policy", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "tools.record_session_finish.limits[0].window: unknown variant `fortnight`" in out.stderr


def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_mcp_over_https_with_a_token(tmp_path: Path):
    import ssl

    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    cert, key = certificate(tmp_path)
    s = start_server(tmp_path / "db.sqlite", "--tls-cert", str(cert), "--tls-key", str(key),
                     env={"PYTEST_MCP_TOKEN": "tls-token-1"})
    try:
        assert s.mcp_url.startswith("https://127.0.0.1:"), s.mcp_url
        context = ssl.create_default_context(cafile=str(cert))
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        req = urllib.request.Request(s.mcp_url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10, context=context)
        assert refused.value.code == 401
        # Plain HTTP to the TLS port gets no answer.
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
            urllib.request.urlopen(req.full_url.replace("https://", "http://"), timeout=10)

        async with httpx2.AsyncClient(verify=context, headers={"Authorization": "Bearer tls-token-1"},
                                      timeout=httpx2.Timeout(30, read=300)) as client:
            async with streamable_http_client(s.mcp_url, http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    assert {t.name for t in (await session.list_tools()).tools} == ALL_TOOLS
                    started = await session.call_tool("record_session_start", {
                        "environment": {"os": "Linux", "python_version": "3.12.1"}})
                    assert not started.is_error, text_of(started)
        # Recorded without a project: that is the project it is read in.
        shown = subprocess.run([binary(), "show", "latest", "--db", str(s.db),
                                "--project", "(no project)"],
                               capture_output=True, text=True, timeout=30)
        assert "grant     default" in shown.stdout, shown.stdout
    finally:
        stop(s)
