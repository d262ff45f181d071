"""Hostile agents against the policy gate and its grants, on the real server.

- Reading around a denied tool: with `get_failures` denied, a session's
  failures are refused through `resources/read` and `prompts/get
  triage_failures` too (the error names the rule), each refusal leaves an
  audit row, and the same reads pass once the policy allows them.
- Inventing grants: stateless 2026-07-28 requests that each carry a fresh
  random `Mcp-Session-Id` share the one `http` grant and its cap; a session
  id the server never issued opens nothing in the handshake era, and a real
  one lends its grant to no stateless request.
- Writing into another grant: bob's record tools without a `session_id`
  never touch alice's running session.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx2 as httpx
import pytest
from mcp.shared.exceptions import MCPError

from conftest import (Server, connect, failed, mcp_fixtures, passed, post_jsonrpc, start_server,
                      stream_plugin_session)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
TRACEBACK = "assert compute() == 2"

# Reads of a session and of the failure clusters are allowed; get_failures is
# not named, so the default denies it.
NO_FAILURES = {"version": "1", "default": "deny",
               "tools": {"get_session": {}, "get_failure_clusters": {}, "list_sessions": {}}}


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


def audit_rows(server: Server) -> list[list[str]]:
    """The audit trail as `pytest-mcp audit` prints it, newest first: each
    row is grant, transport, tool, decision, result, duration, reason."""
    out = subprocess.run([mcp_fixtures.binary(), "audit", "--db", str(server.db), "-n", "500"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "GRANT"], out.stdout
    return [line.split(maxsplit=8)[2:] for line in lines[1:]]


def wait_for_reload(server: Server) -> None:
    deadline = time.monotonic() + 15
    while not any("policy reloaded" in line for line in server.stderr):
        assert time.monotonic() < deadline, server.stderr
        time.sleep(0.05)


def recorded_failure(server: Server) -> str:
    return stream_plugin_session(server, [passed("t.py::test_ok"),
                                          failed("t.py::test_bad", "AssertionError: 1 != 2")])


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_policy_denying_get_failures_denies_the_failures_resource_and_the_triage_prompt(
    tmp_path: Path, transport: str
):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(NO_FAILURES))
    s = start_server(tmp_path / "db.sqlite", "--policy", str(policy))
    try:
        sid = recorded_failure(s)
        async with connect(transport, s, stdio_args=("--policy", str(policy))) as session:
            with pytest.raises(MCPError) as err:
                await session.read_resource(f"pytest://sessions/{sid}/failures")
            assert "refused by policy" in err.value.message
            assert "gated as the tool get_failures" in err.value.message, err.value.message
            assert "default: deny" in err.value.message, err.value.message
            assert TRACEBACK not in err.value.message

            with pytest.raises(MCPError) as err:
                await session.get_prompt("triage_failures", {"session": sid})
            assert "gated as the tool get_failures" in err.value.message, err.value.message
            assert TRACEBACK not in err.value.message
            # Like a denied tool, the prompt is not offered.
            assert (await session.list_prompts()).prompts == []

            # The session itself is get_session's data, which is allowed.
            read = await session.read_resource(f"pytest://sessions/{sid}")
            assert json.loads(read.contents[0].text)["session"]["id"] == sid

        # 2026-07-28 stateless requests go through the same gate.
        if transport == "http":
            status, reply = post_jsonrpc(s, "resources/read",
                                         {"uri": f"pytest://sessions/{sid}/failures"},
                                         name=f"pytest://sessions/{sid}/failures")
            assert "gated as the tool get_failures" in reply["error"]["message"], reply
            status, reply = post_jsonrpc(s, "prompts/get", {"name": "triage_failures"},
                                         name="triage_failures")
            assert "gated as the tool get_failures" in reply["error"]["message"], reply

        rows = audit_rows(s)
        reads = [r[2:5] for r in rows if r[2] in ("resources/read", "prompts/get")]
        expected = [["resources/read", "allowed", "ok"], ["prompts/get", "denied", "-"],
                    ["resources/read", "denied", "-"]]
        if transport == "http":
            expected = [["prompts/get", "denied", "-"], ["resources/read", "denied", "-"]] + expected
        assert reads == expected, rows
        denied = [r for r in rows if r[3] == "denied"]
        assert all("get_failures" in r[6] for r in denied), denied

        # Allowing get_failures lets the same reads through: the gate, not
        # something else, refused them.
        policy.write_text(json.dumps({**NO_FAILURES, "tools": {**NO_FAILURES["tools"],
                                                                "get_failures": {}}}))
        wait_for_reload(s)
        async with connect("http", s) as session:
            read = await session.read_resource(f"pytest://sessions/{sid}/failures")
            assert TRACEBACK in read.contents[0].text
            prompt = await session.get_prompt("triage_failures", {"session": sid})
            assert TRACEBACK in prompt.messages[0].content.text
            assert [p.name for p in (await session.list_prompts()).prompts] == ["triage_failures"]
    finally:
        stop(s)


async def test_reads_through_resources_and_prompts_count_against_get_failures_limit(tmp_path: Path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow", "tools": {"get_failures": {
        "limits": [{"counter": "failures", "window": "hour", "max": 2}]}}}))
    s = start_server(tmp_path / "db.sqlite", "--policy", str(policy))
    try:
        sid = recorded_failure(s)
        async with connect("http", s) as session:
            await session.read_resource(f"pytest://sessions/{sid}/failures")
            assert not (await session.call_tool("get_failures", {"session": sid})).is_error
            with pytest.raises(MCPError) as err:
                await session.get_prompt("triage_failures", {"session": sid})
            assert "limit of 2 calls per hour" in err.value.message, err.value.message
            assert '"failures"' in err.value.message
            with pytest.raises(MCPError):
                await session.read_resource(f"pytest://sessions/{sid}/failures")
        assert [r[3] for r in audit_rows(s)[:2]] == ["limited", "limited"]
    finally:
        stop(s)


def post(server: Server, body: dict, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.post(server.mcp_url, json=body, headers={
            "Accept": "application/json, text/event-stream", **headers})


def modern_call(server: Server, tool: str, session_header: str | None) -> dict:
    """One stateless 2026-07-28 tools/call, with a made-up Mcp-Session-Id."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "forger", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool}
    if session_header is not None:
        headers["Mcp-Session-Id"] = session_header
    reply = post(server, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": {}, "_meta": meta}}, headers)
    assert reply.status_code == 200, reply.text
    return _result(reply.text)


def _result(body: str) -> dict:
    for line in body.splitlines():
        data = line.removeprefix("data:").strip()
        if data.startswith("{"):
            message = json.loads(data)
            if "result" in message or "error" in message:
                return message.get("result") or message
    raise AssertionError(f"no JSON-RPC response in {body!r}")


def test_invented_session_ids_share_the_http_grant_and_its_cap(tmp_path: Path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow", "tools": {"list_projects": {
        "limits": [{"counter": "projects", "window": "hour", "max": 30, "scope": "grant"}]}}}))
    s = start_server(tmp_path / "db.sqlite", "--policy", str(policy))
    try:
        refused = [modern_call(s, "list_projects", str(uuid.uuid4())).get("isError", False)
                   for _ in range(35)]
        assert refused == [False] * 30 + [True] * 5

        # A session id the server never issued opens nothing in the
        # handshake era either.
        forged = str(uuid.uuid4())
        reply = post(s, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "list_projects", "arguments": {}}},
                     {"Mcp-Session-Id": forged, "MCP-Protocol-Version": LEGACY})
        assert reply.status_code == 404, reply.text

        # A session the server issued is a grant of its own, with a fresh quota...
        init = post(s, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}, {})
        issued = init.headers["mcp-session-id"]
        legacy = {"Mcp-Session-Id": issued, "MCP-Protocol-Version": LEGACY}
        post(s, {"jsonrpc": "2.0", "method": "notifications/initialized"}, legacy)
        call = post(s, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "list_projects", "arguments": {}}}, legacy)
        assert not _result(call.text).get("isError", False), call.text
        # ...which a stateless request naming it cannot borrow.
        assert modern_call(s, "list_projects", issued).get("isError") is True

        rows = [r for r in audit_rows(s) if r[2] == "list_projects"]
        grants = [r[0] for r in rows]
        assert len(rows) == 37, rows
        # (The audit command cuts a grant to 24 characters.)
        assert [g for g in grants if g != "http"] == [f"mcp-session:{issued[:11]}…"], grants
        assert sum(g == "http" for g in grants) == 36, grants
        assert not any(forged[:8] in g for g in grants), grants
    finally:
        stop(s)


@pytest.fixture
def alice_and_bob(tmp_path: Path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"alice": "tok-alice-123", "bob": "tok-bob-456"}))
    s = start_server(tmp_path / "db.sqlite", "--tokens", str(tokens))
    s.token = "tok-alice-123"  # for grpc()
    yield s
    stop(s)


def session_of(server: Server, sid: str) -> dict:
    return server.grpc("GetSession", {"session_id": sid})["session"]


ENVIRONMENT = {"environment": {"os": "Linux", "python_version": "3.12"}}
SUMMARY = {"summary": {"total_tests": 1, "passed": 1, "failed": 0, "skipped": 0, "exitstatus": 0}}
OUTCOME = {"nodeid": "t.py::test_x", "outcome": "passed", "duration": 0.1}


def text_of(result) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def test_bobs_writes_without_a_session_id_never_touch_alices_session(alice_and_bob: Server):
    s = alice_and_bob
    async with connect("http", s, token="tok-alice-123") as alice, \
            connect("http", s, token="tok-bob-456") as bob:
        started = await alice.call_tool("record_session_start", ENVIRONMENT)
        alices = started.structured_content["session_id"]

        # Bob has no running session: a clear error naming session_id.
        for tool, arguments in [("record_test_outcome", OUTCOME),
                                ("record_session_finish", SUMMARY)]:
            result = await bob.call_tool(tool, arguments)
            assert result.is_error, (tool, text_of(result))
            assert text_of(result).startswith("session_id:"), text_of(result)
            assert "bob" in text_of(result)
        # The same over stateless 2026-07-28 HTTP.
        _, reply = post_jsonrpc(s, "tools/call", {"name": "record_session_finish",
                                                  "arguments": SUMMARY},
                                name="record_session_finish", token="tok-bob-456")
        assert reply["result"]["isError"] is True, reply

        # Naming alice's session does not help him.
        named = await bob.call_tool("record_session_finish", {**SUMMARY, "session_id": alices})
        assert named.is_error and "session_id" in text_of(named), text_of(named)

        # With a session of his own, his writes go there.
        bobs = (await bob.call_tool("record_session_start", ENVIRONMENT)) \
            .structured_content["session_id"]
        recorded = await bob.call_tool("record_test_outcome", OUTCOME)
        assert recorded.structured_content["session_id"] == bobs, text_of(recorded)
        finished = await bob.call_tool("record_session_finish", SUMMARY)
        assert finished.structured_content["session_id"] == bobs, text_of(finished)

        alice_now = session_of(s, alices)
        assert alice_now["status"] == "SESSION_STATUS_RUNNING", alice_now
        assert int(alice_now.get("outcomesStored", 0)) == 0, alice_now
        assert session_of(s, bobs)["status"] == "SESSION_STATUS_FINISHED"

        # Alice's own writes still find her session.
        assert not (await alice.call_tool("record_test_outcome", OUTCOME)).is_error
        done = await alice.call_tool("record_session_finish", SUMMARY)
        assert done.structured_content["session_id"] == alices
