"""A real `pytest --mcp` run, read back by an agent through the MCP Python SDK.

The inner pytest runs in a subprocess with the pytest-mcp plugin (installed
into the same environment by scripts/test) and streams to the fixture's
server over gRPC, exactly as a user's run would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from mcp import types

from conftest import Server, connect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TRANSPORTS = ["stdio", "http"]

SUITE = '''
import os, time

def test_passes():
    assert 1 + 1 == 2

def test_fails():
    expected = 2
    print("computing the answer")
    answer = 1 + 2
    assert answer == expected

def test_waits_for_release():
    # Holds the run open until the test that drives it says so.
    release = os.environ.get("RELEASE_FILE")
    deadline = time.monotonic() + 60
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
'''


def start_pytest(server: Server, tmp_path: Path, release: Path | None) -> subprocess.Popen:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "test_demo.py").write_text(textwrap.dedent(SUITE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    if release is not None:
        env["RELEASE_FILE"] = str(release)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--mcp",
         "--mcp-address", server.grpc_addr, "test_demo.py"],
        cwd=suite,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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
