"""The MCP front end through the official MCP Python SDK, over stdio and HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anyio
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from conftest import Server, connect, failed, passed, send_outcomes, stream_plugin_session

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TRANSPORTS = ["stdio", "http"]

READ_TOOLS = {"list_sessions", "get_session", "get_failures", "get_failure_clusters", "duration_regressions", "get_test_history",
              "find_flaky_tests", "compare_sessions", "slowest_tests", "list_quarantine",
              "list_projects", "affected_tests"}
WRITE_TOOLS = {"record_session_start", "record_test_outcome", "record_session_finish",
               "quarantine_test", "release_test"}


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(session, name: str, arguments: dict) -> dict:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_initialize_lists_tools_resources_templates_and_prompts(server: Server, transport: str):
    async with connect(transport, server) as session:
        assert session.server_info.name == "pytest-mcp"
        caps = session.server_capabilities
        assert caps.tools is not None and caps.prompts is not None
        assert caps.resources is not None and caps.resources.subscribe

        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == READ_TOOLS | WRITE_TOOLS
        for name in READ_TOOLS:
            assert tools[name].annotations.read_only_hint is True, name
            assert tools[name].output_schema is not None, name
        for name in WRITE_TOOLS:
            assert tools[name].annotations.read_only_hint is False, name
            # Releasing a quarantine removes what someone decided; the rest only add.
            assert tools[name].annotations.destructive_hint is (name == "release_test"), name
        start = tools["record_session_start"].input_schema
        assert start["required"] == ["environment"]
        outcome = tools["record_test_outcome"].input_schema
        assert set(outcome["required"]) == {"nodeid", "outcome", "duration"}
        assert "Duration in seconds" in json.dumps(outcome)

        resources = [str(r.uri) for r in (await session.list_resources()).resources]
        # Nothing recorded yet: nothing to read, so nothing listed.
        assert resources == []
        sid = stream_plugin_session(server, [passed("tests/test_a.py::test_ok")])
        resources = [str(r.uri) for r in (await session.list_resources()).resources]
        assert resources == ["pytest://sessions/latest", f"pytest://sessions/{sid}"]
        templates = {t.uri_template for t in (await session.list_resource_templates()).resource_templates}
        assert templates == {"pytest://sessions/{id}", "pytest://sessions/{id}/failures"}
        prompts = (await session.list_prompts()).prompts
        assert [p.name for p in prompts] == ["triage_failures"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_session_recorded_through_the_record_tools_reads_back_through_the_read_tools(
    server: Server, transport: str
):
    async with connect(transport, server) as session:
        async def record(failing: bool, duration: float) -> str:
            started = await call(session, "record_session_start",
                                 {"environment": {"os": "Linux", "python_version": "3.12.1",
                                                  "project": "agent-run"}})
            sid = started["session_id"]
            await call(session, "record_test_outcome",
                       {"nodeid": "tests/test_a.py::test_ok", "outcome": "passed", "duration": duration})
            await call(session, "record_test_outcome",
                       {"nodeid": "tests/test_a.py::test_skip", "outcome": "skipped", "duration": 0})
            outcome = "failed" if failing else "passed"
            r = await call(session, "record_test_outcome",
                           {"nodeid": "tests/test_a.py::test_maybe[x y]", "outcome": outcome,
                            "duration": 0.25,
                            "error": "AssertionError: assert 1 == 2\n  full traceback here" if failing else None})
            assert r["seq"] == 3 and r["session_id"] == sid
            fin = await call(session, "record_session_finish",
                             {"summary": {"total_tests": 3, "passed": 1 + (not failing),
                                          "failed": int(failing), "skipped": 1,
                                          "exitstatus": int(failing)}})
            assert fin["session"]["status"] == "finished"
            assert fin["session"]["finished_at"]
            return sid

        first = await record(failing=False, duration=0.1)
        second = await record(failing=True, duration=2.0)

        got = await call(session, "get_session", {})
        assert got["session"]["id"] == second
        assert got["session"]["source"] == "mcp"
        assert got["session"]["counts"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1,
                                            "xfailed": 0, "xpassed": 0}
        assert got["first_failures"][0]["message"] == "AssertionError: assert 1 == 2"

        listed = await call(session, "list_sessions", {"project": "agent-run"})
        assert [s["id"] for s in listed["sessions"]] == [second, first]

        failures = await call(session, "get_failures", {"session": second})
        assert failures["total_failures"] == 1
        f = failures["failures"][0]
        assert f["nodeid"] == "tests/test_a.py::test_maybe[x y]"
        assert "full traceback here" in f["traceback"]
        assert f["location"] == "tests/test_a.py"
        assert failures["rerun_command"] == "pytest 'tests/test_a.py::test_maybe[x y]'"
        assert failures["truncated"] is False and failures["next_cursor"] is None

        history = await call(session, "get_test_history", {"nodeid": "tests/test_a.py::test_maybe[x y]"})
        assert [e["outcome"] for e in history["entries"]] == ["failed", "passed"]
        assert history["stability"]["verdict"] == "regressed"

        compared = await call(session, "compare_sessions", {})
        assert compared["base"]["id"] == first and compared["head"]["id"] == second
        assert [t["nodeid"] for t in compared["new_failures"]] == ["tests/test_a.py::test_maybe[x y]"]
        assert [d["nodeid"] for d in compared["slower"]] == ["tests/test_a.py::test_ok"]

        slowest = await call(session, "slowest_tests", {"session": second, "limit": 1})
        assert [t["nodeid"] for t in slowest["tests"]] == ["tests/test_a.py::test_ok"]

        flaky = await call(session, "find_flaky_tests", {})
        assert flaky["total"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_session_streamed_over_grpc_shows_its_tracebacks_in_get_failures(
    server: Server, transport: str
):
    sid = stream_plugin_session(server, [
        passed("tests/test_b.py::test_one"),
        failed("tests/test_b.py::test_two", "AssertionError: assert 3 == 2"),
        failed("tests/test_c.py::test_three", "ValueError: bad"),
    ])
    async with connect(transport, server) as session:
        got = await call(session, "get_failures", {"session": "latest"})
        assert got["session"]["id"] == sid and got["session"]["source"] == "plugin"
        assert [f["nodeid"] for f in got["failures"]] == ["tests/test_b.py::test_two",
                                                          "tests/test_c.py::test_three"]
        first = got["failures"][0]
        assert first["location"] == "tests/test_b.py:7"
        assert first["phase"] == "call"
        assert "E       AssertionError: assert 3 == 2" in first["traceback"]
        assert first["stdout"] == "captured line\n"
        assert got["rerun_command"] == "pytest tests/test_b.py::test_two tests/test_c.py::test_three"

        # Paging: one per page, the cursor leads to the second.
        page1 = await call(session, "get_failures", {"limit": 1})
        assert page1["next_cursor"]
        page2 = await call(session, "get_failures", {"limit": 1, "cursor": page1["next_cursor"]})
        assert [f["nodeid"] for f in page2["failures"]] == ["tests/test_c.py::test_three"]
        assert page2["next_cursor"] is None

        # The text rendering carries the traceback's end and the rerun command.
        result = await session.call_tool("get_failures", {})
        assert "AssertionError: assert 3 == 2" in text_of(result)
        assert "rerun: pytest" in text_of(result)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_large_failures_are_cut_to_the_budget_and_say_how_to_page(server: Server, transport: str):
    big = [failed(f"tests/test_big.py::test_{i}", f"AssertionError: {i}") for i in range(40)]
    for o in big:
        o["longrepr"] = "x" * 3000 + "\nE   the error line"
    stream_plugin_session(server, big)
    async with connect(transport, server) as session:
        result = await session.call_tool("get_failures", {"limit": 40})
        got = result.structured_content
        assert got["truncated"] is True
        assert 0 < len(got["failures"]) < 40
        assert len(json.dumps(got)) <= 21 * 1024
        assert got["next_cursor"] == str(got["failures"][-1]["seq"])
        assert all(f["traceback"].endswith("the error line") for f in got["failures"])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
async def test_a_subscribed_client_is_told_while_outcomes_arrive_and_when_the_session_finishes(
    server: Server, transport: str
):
    sid = stream_plugin_session(server, [], finish=False)
    uri = f"pytest://sessions/{sid}"
    updates: list[str] = []

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(message.params.uri)

    async def updated(wanted: str) -> None:
        with anyio.fail_after(15):
            while wanted not in updates:
                await anyio.sleep(0.05)

    async with connect(transport, server, message_handler=on_message) as session:
        await session.subscribe_resource(uri)
        await session.subscribe_resource("pytest://sessions/latest")
        send_outcomes(server, sid, [failed("tests/test_d.py::test_first", "AssertionError: early")], 1)
        await updated(uri)
        await updated("pytest://sessions/latest")
        # The agent can start on the first failure before the run ends.
        early = await call(session, "get_failures", {"session": sid})
        assert [f["nodeid"] for f in early["failures"]] == ["tests/test_d.py::test_first"]
        body = await session.read_resource(f"{uri}/failures")
        assert "tests/test_d.py::test_first" in body.contents[0].text

        updates.clear()
        server.grpc("FinishSession", {"session_id": sid, "outcomes_sent": 1,
                                      "summary": {"total_tests": 1, "failed": 1, "exitstatus": 1}})
        await updated(uri)
        await session.unsubscribe_resource(uri)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_handshake_era_client_is_told_when_a_session_starts(server: Server, transport: str):
    changed = anyio.Event()

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceListChangedNotification):
            changed.set()

    async with connect(transport, server, message_handler=on_message) as session:
        assert session.server_capabilities.resources.list_changed
        before = {str(r.uri) for r in (await session.list_resources()).resources}
        # Over HTTP the notification comes on the GET stream the SDK opens.
        await anyio.sleep(0.5)
        sid = stream_plugin_session(server, [], finish=False)
        with anyio.fail_after(15):
            await changed.wait()
        after = {str(r.uri) for r in (await session.list_resources()).resources}
        assert after - before == {"pytest://sessions/latest", f"pytest://sessions/{sid}"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_unknown_tool_is_invalid_params_naming_it_and_listing_the_tools(
    server: Server, transport: str
):
    async with connect(transport, server) as session:
        with pytest.raises(MCPError) as err:
            await session.call_tool("get_failurez", {})
        assert err.value.code == -32602
        assert "get_failurez" in err.value.message
        assert "get_failures" in err.value.message and "record_session_start" in err.value.message


INVALID = [
    ("record_test_outcome", {"nodeid": "t.py::a", "outcome": "exploded", "duration": 1}, "outcome"),
    ("record_test_outcome", {"nodeid": "t.py::a", "outcome": "passed", "duration": -1}, "duration"),
    ("record_test_outcome", {"nodeid": "t.py::a", "outcome": "passed", "duration": "slow"}, "duration"),
    ("record_test_outcome", {"outcome": "passed", "duration": 1}, "nodeid"),
    ("record_test_outcome", {"nodeid": " ", "outcome": "passed", "duration": 1}, "nodeid"),
    ("record_test_outcome", {"nodeid": "t.py::a", "outcome": "passed", "duration": 1,
                             "session_id": "not-a-uuid"}, "session_id"),
    ("record_session_start", {"environment": {"python_version": "3.12"}}, "environment"),
    ("record_session_start", {}, "environment"),
    ("record_session_finish", {"summary": {"total_tests": 1, "passed": 1, "failed": 0,
                                           "skipped": -1, "exitstatus": 0}}, "summary.skipped"),
    ("record_session_finish", {"summary": {"total_tests": 1, "passed": 2, "failed": 0,
                                           "skipped": 0, "exitstatus": 0}}, "summary.total_tests"),
    ("record_session_finish", {"summary": {"total_tests": 0, "passed": 0, "failed": 0,
                                           "skipped": 0}}, "exitstatus"),
    ("get_failures", {"session": "yesterday"}, "session"),
    ("get_test_history", {"nodeid": ""}, "nodeid"),
    ("compare_sessions", {"head": "nope"}, "head"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_invalid_argument_is_a_tool_error_naming_the_field(server: Server, transport: str):
    async with connect(transport, server) as session:
        for tool, arguments, field in INVALID:
            result = await session.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments)
            assert field in text_of(result), (tool, arguments, text_of(result))


async def test_recording_an_outcome_with_no_running_mcp_session_says_what_to_do(server: Server):
    async with connect("http", server) as session:
        result = await session.call_tool("record_test_outcome",
                                         {"nodeid": "t.py::a", "outcome": "passed", "duration": 0})
        assert result.is_error
        assert "record_session_start" in text_of(result)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resources_and_the_triage_prompt_show_the_latest_failures(server: Server, transport: str):
    sid = stream_plugin_session(server, [failed("tests/test_e.py::test_x", "KeyError: 'k'")])
    async with connect(transport, server) as session:
        latest = json.loads((await session.read_resource("pytest://sessions/latest")).contents[0].text)
        assert latest["session"]["id"] == sid
        failures = json.loads((await session.read_resource(f"pytest://sessions/{sid}/failures")).contents[0].text)
        assert failures["failures"][0]["message"] == "KeyError: 'k'"
        with pytest.raises(MCPError) as err:
            await session.read_resource("pytest://sessions/00000000-0000-4000-8000-000000000000")
        assert err.value.code == -32002
        prompt = await session.get_prompt("triage_failures", {"session": sid})
        text = prompt.messages[0].content.text
        assert "tests/test_e.py::test_x" in text and "KeyError" in text
        assert "get_test_history" in text
        # It starts from the causes.
        assert text.index("1 failure in 1 cluster") < text.index("The first failures")
        assert "in tests/test_e.py::test: KeyError: '<value>'" in text


def post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                  "clientInfo": {"name": "curl-like", "version": "1"}}}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_http_refuses_a_foreign_origin_even_with_a_good_host_and_serves_requests_without_origin(
    server: Server,
):
    assert post(server.mcp_url, {"Origin": "http://evil.example"}) == 403
    assert post(server.mcp_url, {"Origin": "http://127.0.0.1.evil.example:8080"}) == 403
    assert post(server.mcp_url, {}) == 200
    assert post(server.mcp_url, {"Origin": "http://localhost:6274"}) == 200
    port = server.mcp_url.split(":")[2].split("/")[0]
    assert post(server.mcp_url, {"Host": f"evil.example:{port}"}) == 403


def test_closing_an_http_session_answers_204_and_a_closed_one_is_gone(server: Server):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                  "clientInfo": {"name": "curl-like", "version": "1"}}}).encode()
    request = urllib.request.Request(server.mcp_url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    with urllib.request.urlopen(request, timeout=10) as response:
        session = response.headers["Mcp-Session-Id"]
    assert session

    def close() -> int:
        request = urllib.request.Request(server.mcp_url, method="DELETE",
                                         headers={"Mcp-Session-Id": session})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    # The official SDK logs "Session termination failed" unless 200 or 204.
    assert close() == 204
    assert close() == 204  # closing is idempotent
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    request = urllib.request.Request(server.mcp_url, data=ping, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 404, "the closed session still answers"


async def test_the_sdk_closes_its_http_session_without_complaint(server: Server, caplog):
    async with connect("http", server) as session:
        await session.list_tools()
    assert not [r for r in caplog.records if "termination failed" in r.getMessage()], caplog.text


def test_an_allowed_origin_is_served(tmp_path):
    from conftest import start_server

    s = start_server(tmp_path / "db.sqlite", "--allow-origin", "https://inspector.example:443")
    try:
        assert post(s.mcp_url, {"Origin": "https://inspector.example"}) == 200
        assert post(s.mcp_url, {"Origin": "https://other.example"}) == 403
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)


def test_new_sessions_beyond_the_cap_get_503(tmp_path):
    from conftest import start_server

    s = start_server(tmp_path / "db.sqlite", "--max-sessions", "2")
    try:
        assert [post(s.mcp_url, {}) for _ in range(3)] == [200, 200, 503]
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)


async def test_stdio_runs_its_own_grpc_listener_or_says_its_port_is_taken(server: Server, tmp_path):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from conftest import binary

    # An agent starts stdio in its project, whose sessions it then reads.
    project = tmp_path / "demo"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")

    async def run(grpc_addr: str, log_path, body) -> None:
        params = StdioServerParameters(
            command=binary(),
            args=["stdio", "--db", str(server.db), "--grpc-addr", grpc_addr],
            env={"RUST_LOG": "warn"},
            cwd=str(project),
        )
        with open(log_path, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await body(session)

    # The serve fixture holds this port: stdio serves MCP from the shared database.
    sid = stream_plugin_session(server, [failed("tests/test_f.py::test_shared", "AssertionError: shared")])
    taken = tmp_path / "taken.log"

    async def reads_shared(session) -> None:
        got = await call(session, "get_failures", {})
        assert got["session"]["id"] == sid

    await run(server.grpc_addr, taken, reads_shared)
    assert f"gRPC address {server.grpc_addr} is not available" in taken.read_text()

    # A free port: the plugin streams to the stdio process itself.
    free = tmp_path / "free.log"

    async def streams_in_process(session) -> None:
        with anyio.fail_after(10):
            while "gRPC listening on" not in free.read_text():
                await anyio.sleep(0.05)
        line = next(l for l in free.read_text().splitlines() if "gRPC listening on" in l)
        own = Server(process=None, db=server.db,
                     grpc_addr=line.split("gRPC listening on ")[1].split(",")[0])
        mine = stream_plugin_session(own, [failed("tests/test_f.py::test_own", "AssertionError: own")])
        got = await call(session, "get_failures", {"session": mine})
        assert [f["nodeid"] for f in got["failures"]] == ["tests/test_f.py::test_own"]

    await run("127.0.0.1:0", free, streams_in_process)
