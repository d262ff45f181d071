"""Both eras of MCP through the official Python SDK's `Client`: `legacy`
(the initialize handshake, 2025-11-25), `auto` (server/discover, which this
server answers, so no fallback) and pinned `2026-07-28`, over stdio and
HTTP; and the 2026-07-28 streamable HTTP rules seen on the wire."""

from __future__ import annotations

import json
import uuid

import httpx2 as httpx
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from conftest import Server, client, failed, passed, post_jsonrpc, send_outcomes, start_server, \
    stream_plugin_session

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TRANSPORTS = ["stdio", "http"]
MODES = [("legacy", "2025-11-25"), ("auto", "2026-07-28"), ("2026-07-28", "2026-07-28")]

READ_TOOLS = {"list_sessions", "get_session", "get_failures", "get_failure_clusters", "duration_regressions", "get_test_history",
              "find_flaky_tests", "compare_sessions", "slowest_tests", "list_quarantine",
              "list_projects", "affected_tests"}
WRITE_TOOLS = {"record_session_start", "record_test_outcome", "record_session_finish",
               "quarantine_test", "release_test"}


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def ok(result: types.CallToolResult) -> dict:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode,negotiated", MODES)
async def test_every_mode_lists_calls_reads_and_refuses_alike(
    server: Server, transport: str, mode: str, negotiated: str
):
    sid = stream_plugin_session(server, [passed("tests/test_e.py::test_ok"),
                                         failed("tests/test_e.py::test_bad", "AssertionError: 1 != 2")])
    async with client(transport, server, mode) as c:
        assert c.protocol_version == negotiated

        tools = {t.name for t in (await c.list_tools()).tools}
        assert tools == READ_TOOLS | WRITE_TOOLS

        # A read tool.
        got = ok(await c.call_tool("get_failures", {"session": sid}))
        assert [f["nodeid"] for f in got["failures"]] == ["tests/test_e.py::test_bad"]
        assert "AssertionError: 1 != 2" in got["failures"][0]["traceback"]

        # The write tools; on 2026-07-28 HTTP each call is its own request, and
        # the session they write to is found in the store, not in a connection.
        started = ok(await c.call_tool("record_session_start", {
            "environment": {"os": "Linux", "python_version": "3.12.1", "project": f"era-{mode}"}}))
        ok(await c.call_tool("record_test_outcome", {
            "nodeid": "tests/test_w.py::test_one", "outcome": "passed", "duration": 0.5}))
        finished = ok(await c.call_tool("record_session_finish", {
            "summary": {"total_tests": 1, "passed": 1, "failed": 0, "skipped": 0, "exitstatus": 0}}))
        assert finished["session_id"] == started["session_id"]
        mine = ok(await c.call_tool("get_session", {"session": started["session_id"]}))
        assert mine["session"]["status"] == "finished"
        assert mine["session"]["counts"]["passed"] == 1

        # A resource.
        body = await c.read_resource(f"pytest://sessions/{sid}/failures")
        assert "tests/test_e.py::test_bad" in body.contents[0].text

        # Bad arguments: a tool error naming the field.
        bad = await c.call_tool("record_test_outcome",
                                {"nodeid": "t.py::a", "outcome": "exploded", "duration": 1})
        assert bad.is_error and "outcome" in text_of(bad), text_of(bad)
        bad = await c.call_tool("get_failures", {"session": "yesterday"})
        assert bad.is_error and "session" in text_of(bad), text_of(bad)

        # An unknown tool: invalid params naming it, in both eras.
        with pytest.raises(MCPError) as err:
            await c.call_tool("get_failurez", {})
        assert err.value.code == -32602
        assert "get_failurez" in err.value.message and "get_failures" in err.value.message

        # A missing resource: -32002 before 2026-07-28, -32602 from it on.
        missing = f"pytest://sessions/{uuid.uuid4()}"
        with pytest.raises(MCPError) as err:
            await c.read_resource(missing)
        assert err.value.code == (-32002 if negotiated < "2026-07-28" else -32602)
        assert err.value.data == {"uri": missing}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_discover_offers_every_revision_and_live_resource_capabilities(
    server: Server, transport: str
):
    async with client(transport, server, "auto") as c:
        result = await c.session.discover()
        assert result.supported_versions == [
            "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"]
        caps = result.capabilities
        assert caps.resources is not None
        assert caps.resources.subscribe and caps.resources.list_changed
        assert c.server_info is not None and c.server_info.name == "pytest-mcp"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cache_hints_never_let_a_running_session_go_stale(server: Server, transport: str):
    sid = stream_plugin_session(server, [passed("tests/test_c.py::test_1")], finish=False)
    # The SDK's client caches by the hints (its default CacheConfig).
    async with client(transport, server, "2026-07-28") as c:
        listed = await c.session.list_resources()
        assert (listed.ttl_ms, listed.cache_scope) == (0, "private")
        first = json.loads((await c.read_resource(f"pytest://sessions/{sid}")).contents[0].text)
        assert first["session"]["outcomes_stored"] == 1

        send_outcomes(server, sid, [failed("tests/test_c.py::test_2", "AssertionError: no")], 2)
        # Read again at once: a cached copy would still say one outcome.
        again = json.loads((await c.read_resource(f"pytest://sessions/{sid}")).contents[0].text)
        assert again["session"]["outcomes_stored"] == 2
        latest = json.loads((await c.read_resource("pytest://sessions/latest")).contents[0].text)
        assert latest["session"]["id"] == sid

        raw = await c.session.read_resource(f"pytest://sessions/{sid}")
        assert raw.ttl_ms == 0

        # A new session shows in the list and in `latest` straight away.
        newer = stream_plugin_session(server, [passed("tests/test_c.py::test_1")])
        listed = await c.list_resources()
        assert f"pytest://sessions/{newer}" in [str(r.uri) for r in listed.resources]
        latest = json.loads((await c.read_resource("pytest://sessions/latest")).contents[0].text)
        assert latest["session"]["id"] == newer
        raw = await c.session.read_resource("pytest://sessions/latest")
        assert raw.ttl_ms == 0

        # A closed session no longer changes: it may be kept a while.
        raw = await c.session.read_resource(f"pytest://sessions/{newer}")
        assert (raw.ttl_ms, raw.cache_scope) == (60_000, "private")
        tools = await c.session.list_tools()
        assert (tools.ttl_ms, tools.cache_scope) == (60_000, "public")


def test_legacy_results_keep_their_shape_without_cache_hints(server: Server):
    with httpx.Client(timeout=10) as http:
        init = http.post(server.mcp_url, headers={"Accept": "application/json, text/event-stream"},
                         json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                             "protocolVersion": "2025-11-25", "capabilities": {},
                             "clientInfo": {"name": "raw", "version": "1"}}})
        assert init.status_code == 200, init.text
        session = init.headers["mcp-session-id"]
        headers = {"Accept": "application/json, text/event-stream", "Mcp-Session-Id": session,
                   "MCP-Protocol-Version": "2025-11-25"}
        http.post(server.mcp_url, headers=headers,
                  json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        listed = http.post(server.mcp_url, headers=headers,
                           json={"jsonrpc": "2.0", "id": 2, "method": "resources/list"})
        result = sse_result(listed.text)
        assert "resources" in result
        assert not {"ttlMs", "cacheScope", "resultType"} & set(result), result


def sse_result(body: str) -> dict:
    """The result of the one JSON-RPC response in an SSE (or JSON) body."""
    for line in body.splitlines():
        data = line.removeprefix("data:").strip()
        if data.startswith("{"):
            message = json.loads(data)
            if "result" in message or "error" in message:
                return message.get("result") or message
    raise AssertionError(f"no JSON-RPC response in {body!r}")


def test_stateless_http_checks_the_revisions_headers_and_metadata(server: Server):
    # Header mismatch: -32020 with 400.
    status, reply = post_jsonrpc(server, "tools/call", {"name": "list_sessions", "arguments": {}},
                                 name="get_session")
    assert status == 400 and reply["error"]["code"] == -32020, reply
    assert "Mcp-Name" in reply["error"]["message"]
    status, reply = post_jsonrpc(server, "tools/call", {"name": "list_sessions", "arguments": {}},
                                 method_header="tools/list")
    assert status == 400 and reply["error"]["code"] == -32020, reply
    # A revision the server does not speak: -32022 with the ones it does.
    status, reply = post_jsonrpc(server, "tools/list", {}, version="2099-01-01")
    assert status == 400 and reply["error"]["code"] == -32022, reply
    assert "2026-07-28" in reply["error"]["data"]["supported"]
    # Request metadata without client capabilities: -32602 with 400.
    status, reply = post_jsonrpc(server, "tools/list", {}, capabilities=None)
    assert status == 400 and reply["error"]["code"] == -32602, reply
    assert "clientCapabilities" in reply["error"]["message"]
    # Methods the revision removed.
    status, reply = post_jsonrpc(server, "resources/subscribe", {"uri": "pytest://sessions/latest"},
                                 name="pytest://sessions/latest")
    assert status == 404 and reply["error"]["code"] == -32601, reply
    status, reply = post_jsonrpc(server, "ping", {})
    assert status == 404 and reply["error"]["code"] == -32601, reply
    # A served request, with the revision's result shape.
    status, reply = post_jsonrpc(server, "tools/call", {"name": "list_sessions", "arguments": {}},
                                 name="list_sessions")
    assert status == 200 and reply["result"]["resultType"] == "complete", reply
    # Cache hints on the wire: lists of sessions are never fresh for long.
    status, reply = post_jsonrpc(server, "resources/list", {})
    assert (reply["result"]["ttlMs"], reply["result"]["cacheScope"]) == (0, "private"), reply
    status, reply = post_jsonrpc(server, "tools/list", {})
    assert (reply["result"]["ttlMs"], reply["result"]["cacheScope"]) == (60_000, "public"), reply
    # Nothing to open or close: no GET stream, no session to DELETE.
    with httpx.Client(timeout=10) as http:
        headers = {"MCP-Protocol-Version": "2026-07-28", "Accept": "text/event-stream"}
        assert http.get(server.mcp_url, headers=headers).status_code == 405
        assert http.delete(server.mcp_url, headers=headers).status_code == 405


def test_stateless_requests_are_served_when_the_session_cap_is_full(tmp_path):
    s = start_server(tmp_path / "db.sqlite", "--max-sessions", "1")
    try:
        with httpx.Client(timeout=10) as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}}
            headers = {"Accept": "application/json, text/event-stream"}
            assert http.post(s.mcp_url, headers=headers, json=body).status_code == 200
            assert http.post(s.mcp_url, headers=headers, json=body).status_code == 503
        for _ in range(3):
            status, reply = post_jsonrpc(s, "tools/call", {"name": "list_sessions", "arguments": {}},
                                         name="list_sessions")
            assert status == 200 and not reply["result"]["isError"], reply
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)
