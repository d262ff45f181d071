"""Live push on MCP 2026-07-28: `subscriptions/listen` through the official
Python SDK's `Client.listen`, against a real `pytest --mcp` run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated

from conftest import Server, binary, client, post_jsonrpc, start_pytest, start_server, \
    stream_plugin_session

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TRANSPORTS = ["stdio", "http"]
LATEST = "pytest://sessions/latest"


async def read_latest(c) -> dict:
    return json.loads((await c.read_resource(LATEST)).contents[0].text)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_listening_agent_sees_the_first_failure_while_the_run_is_held_open_then_its_finish(
    server: Server, tmp_path: Path, transport: str
):
    release = tmp_path / "release"
    async with client(transport, server, "2026-07-28") as c:
        async with c.listen(resource_subscriptions=[LATEST]) as sub:
            assert sub.honored.resource_subscriptions == [LATEST]
            run = start_pytest(server, tmp_path, release=release)
            try:
                events = aiter(sub)
                with anyio.fail_after(30):
                    while True:
                        event = await anext(events)
                        assert isinstance(event, ResourceUpdated) and event.uri == LATEST
                        seen = await read_latest(c)
                        if seen["first_failures"]:
                            break
                # The run is still blocked in its last test: the agent can start now.
                assert run.poll() is None, "the run ended before the agent saw its failure"
                assert seen["session"]["status"] == "running"
                assert [f["nodeid"] for f in seen["first_failures"]] == ["test_demo.py::test_fails"]

                release.touch()
                with anyio.fail_after(30):
                    while seen["session"]["status"] == "running":
                        event = await anext(events)
                        assert event.uri == LATEST
                        seen = await read_latest(c)
                out, _ = run.communicate(timeout=60)
                assert run.returncode == 1, out
            finally:
                release.touch()
                if run.poll() is None:
                    run.kill()
        assert seen["session"]["status"] == "finished"
        assert seen["session"]["counts"] == {**seen["session"]["counts"], "failed": 1, "passed": 2}


async def test_a_cancelled_listen_gets_no_more_events(server: Server):
    # On stdio the connection outlives the listen, so a late event would show.
    seen: list[str] = []

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            seen.append(str(message.params.uri))

    sid = stream_plugin_session(server, [], finish=False)
    uri = f"pytest://sessions/{sid}"
    async with client("stdio", server, "2026-07-28", message_handler=on_message) as c:
        async with c.listen(resource_subscriptions=[uri]) as sub:
            server.grpc("StreamOutcomes", {"session_id": sid, "outcomes": [
                {"nodeid": "t.py::a", "outcome": "TEST_OUTCOME_PASSED", "phase": "PHASE_CALL",
                 "duration": 0.1, "seq": 1, "attempt": 1}]})
            with anyio.fail_after(15):
                event = await anext(aiter(sub))
            assert event.uri == uri
        # Leaving the block cancels the listen (notifications/cancelled); the
        # copy the SDK hands to message_handler may still be on its way.
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.05)
        before = list(seen)
        server.grpc("FinishSession", {"session_id": sid, "outcomes_sent": 1,
                                      "summary": {"total_tests": 1, "passed": 1, "exitstatus": 0}})
        # Several coalescing windows and a poll: an event would have come by now.
        await anyio.sleep(2.5)
        body = json.loads((await c.read_resource(uri)).contents[0].text)
        assert body["session"]["status"] == "finished"
    assert seen == before == [uri]


async def test_a_closed_http_listen_ends_on_the_server(tmp_path: Path):
    s = start_server(tmp_path / "db.sqlite")
    try:
        async with client("http", s, "2026-07-28") as c:
            async with c.listen(resource_subscriptions=[LATEST]):
                pass
        # The stream was closed; a listen still open would hold up shutdown
        # ("MCP listens did not end in time").
        await anyio.sleep(0.5)
        s.process.send_signal(signal.SIGTERM)
        assert s.process.wait(timeout=15) == 0
        await anyio.sleep(0.2)
        assert not any("did not end in time" in line for line in s.stderr), s.stderr
    finally:
        if s.process.poll() is None:
            s.process.kill()


def stdio_pid(db: str) -> int:
    """The pid of the `pytest-mcp stdio` the SDK started on `db`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:1] == [binary().encode()] and b"stdio" in argv and db.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no pytest-mcp stdio on {db}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_shutting_the_server_down_ends_every_listen_gracefully(
    tmp_path: Path, transport: str
):
    s = start_server(tmp_path / "db.sqlite")
    try:
        async with client(transport, s, "2026-07-28") as c:
            async with c.listen(resource_subscriptions=[LATEST], resources_list_changed=True) as sub:
                started = stream_plugin_session(s, [], finish=False)
                with anyio.fail_after(15):
                    kinds = set()
                    async for event in sub:
                        kinds.add(type(event).__name__)
                        if kinds >= {"ResourceUpdated", "ResourcesListChanged"}:
                            break
                pid = s.process.pid if transport == "http" else stdio_pid(s.db)
                os.kill(pid, signal.SIGTERM)
                # The loop ends on the server's `complete` result; an abrupt
                # drop would raise SubscriptionLost instead.
                with anyio.fail_after(15):
                    rest = [event async for event in sub]
                assert all(isinstance(e, (ResourceUpdated, ResourcesListChanged))
                           for e in rest)
            assert started
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)


async def test_a_listen_needs_a_valid_token_like_every_request(tmp_path: Path):
    s = start_server(tmp_path / "db.sqlite", "--token", "s3cret-token")
    try:
        listen = {"notifications": {"resourceSubscriptions": [LATEST]}}
        assert post_jsonrpc(s, "subscriptions/listen", listen)[0] == 401
        assert post_jsonrpc(s, "subscriptions/listen", listen, token="wrong")[0] == 401
        # The SDK's client, without the token, is refused before any event.
        with pytest.raises(BaseExceptionGroup) as refused:
            async with client("http", s, "2026-07-28") as c:
                async with c.listen(resource_subscriptions=[LATEST]):
                    raise AssertionError("a listen without the token was acknowledged")
        assert refused.group_contains(MCPError), refused.value
        # With it, the listen is acknowledged and delivers.
        async with client("http", s, "2026-07-28", token="s3cret-token") as c:
            async with c.listen(resource_subscriptions=[LATEST]) as sub:
                assert sub.honored.resource_subscriptions == [LATEST]
                s.token = "s3cret-token"
                stream_plugin_session(s, [])
                with anyio.fail_after(15):
                    event = await anext(aiter(sub))
                assert event.uri == LATEST
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)
