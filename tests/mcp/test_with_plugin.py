"""A real `pytest --mcp` run, read back by an agent through the MCP Python SDK.

The inner pytest runs in a subprocess with the pytest-mcp plugin (installed
into the same environment by scripts/test) and streams to the fixture's
server over gRPC, exactly as a user's run would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import anyio
import pytest
from mcp import types

from conftest import Server, binary, connect, start_pytest

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TRANSPORTS = ["stdio", "http"]

def structured(result: types.CallToolResult) -> dict:
    text = "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert not result.is_error, text
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_plugin_run_shows_its_real_traceback_in_get_failures(
    server: Server, tmp_path: Path, transport: str
):
    run = start_pytest(server, tmp_path, release=None)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 1, out
    assert "1 failed, 2 passed" in out, out

    async with connect(transport, server) as session:
        got = structured(await session.call_tool("get_failures", {"session": "latest"}))
    assert got["session"]["source"] == "plugin"
    assert got["session"]["status"] == "finished"
    [failure] = got["failures"]
    assert failure["nodeid"] == "test_demo.py::test_fails"
    assert failure["phase"] == "call"
    # pytest's own rendering of the assertion, with the line that failed.
    assert ">       assert answer == expected" in failure["traceback"]
    assert "E       assert 3 == 2" in failure["traceback"]
    assert failure["location"].startswith("test_demo.py:")
    assert "computing the answer" in failure["stdout"]
    assert got["rerun_command"] == "pytest test_demo.py::test_fails"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
async def test_a_subscribed_agent_hears_of_a_failure_while_the_plugin_run_is_still_going(
    server: Server, tmp_path: Path, transport: str
):
    updates: list[str] = []

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    release = tmp_path / "release"
    async with connect(transport, server, message_handler=on_message) as session:
        await session.subscribe_resource("pytest://sessions/latest")
        run = start_pytest(server, tmp_path, release=release)
        try:
            # Wait for the failure to be readable while the run is blocked in
            # its last test.
            with anyio.fail_after(30):
                while True:
                    if updates:
                        got = structured(await session.call_tool("get_failures", {}))
                        if got["failures"]:
                            break
                    await anyio.sleep(0.05)
            assert run.poll() is None, "the run ended before the agent saw its failure"
            assert "pytest://sessions/latest" in updates
            assert got["session"]["status"] == "running"
            assert [f["nodeid"] for f in got["failures"]] == ["test_demo.py::test_fails"]

            updates.clear()
            release.touch()
            out, _ = run.communicate(timeout=60)
            assert run.returncode == 1, out
        finally:
            release.touch()
            if run.poll() is None:
                run.kill()
        # The end of the run is an update too, and then the session is finished.
        with anyio.fail_after(15):
            while True:
                got = structured(await session.call_tool("get_session", {}))
                if updates and got["session"]["status"] == "finished":
                    break
                await anyio.sleep(0.05)
        assert got["session"]["counts"]["failed"] == 1
        assert got["session"]["counts"]["passed"] == 2
        assert got["session"]["exitstatus"] == 1


SUBTESTS_SUITE = '''
def test_numbers(subtests, record_property):
    record_property("ticket", "JIRA-7")
    for i in range(3):
        with subtests.test("odd", i=i):
            assert i % 2 == 0

def test_plain():
    pass
'''


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_failing_subtests_and_recorded_properties_reach_get_failures_and_the_exports(
    server: Server, tmp_path: Path, transport: str
):
    suite = tmp_path / "subsuite"
    suite.mkdir()
    (suite / "test_sub.py").write_text(textwrap.dedent(SUBTESTS_SUITE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--mcp",
         "--mcp-address", server.grpc_addr, "test_sub.py"],
        cwd=suite, env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr

    async with connect(transport, server) as session:
        got = structured(await session.call_tool("get_failures", {"session": "latest"}))
        history = structured(await session.call_tool(
            "get_test_history", {"nodeid": "test_sub.py::test_numbers"}))
    failures = {(f["nodeid"], f["subtest"]): f for f in got["failures"]}
    # The failing subtest and the test that holds it, both under pytest's own nodeid.
    assert set(failures) == {
        ("test_sub.py::test_numbers", "[odd] (i=1)"),
        ("test_sub.py::test_numbers", None),
    }
    sub = failures[("test_sub.py::test_numbers", "[odd] (i=1)")]
    assert sub["user_properties"] == [{"name": "ticket", "value": "JIRA-7"}]
    # A rerun command names a test pytest can select, once.
    assert got["rerun_command"] == "pytest test_sub.py::test_numbers"
    # The test's history holds its subtests, labelled.
    labels = sorted(e["subtest"] or "" for e in history["entries"])
    assert labels == ["", "[odd] (i=0)", "[odd] (i=1)", "[odd] (i=2)"]

    exported = subprocess.run(
        [binary(), "export", "--db", str(server.db), "latest", "--format", "json"],
        # In the suite's directory: `latest` is its project's.
        cwd=suite, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    doc = json.loads(exported)
    subs = [o for o in doc["outcomes"] if o["subtest"]]
    assert sorted(o["subtest"] for o in subs) == ["[odd] (i=0)", "[odd] (i=1)", "[odd] (i=2)"]
    assert {o["nodeid"] for o in subs} == {"test_sub.py::test_numbers"}
    tagged = [o for o in doc["outcomes"] if o["user_properties"]]
    assert tagged and all(o["user_properties"] == [["ticket", "JIRA-7"]] for o in tagged)

    junit = subprocess.run(
        [binary(), "export", "--db", str(server.db), "latest", "--format", "junit"],
        cwd=suite, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    cases = ElementTree.fromstring(junit).iter("testcase")
    by_name = {c.get("name"): c for c in cases}
    assert "test_numbers [odd] (i=1)" in by_name
    failing_sub = by_name["test_numbers [odd] (i=1)"]
    assert failing_sub.find("failure") is not None
    props = [(p.get("name"), p.get("value")) for p in failing_sub.iter("property")]
    assert props == [("ticket", "JIRA-7")]
