"""The official MCP TypeScript client (2.x) in 2026-07-28 mode: a tool call
and a listen, driven by tests/mcp/ts/listen.mjs under the tests' Node."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import ROOT, Server, failed, passed, send_outcomes, stream_plugin_session

pytestmark = pytest.mark.timeout(120)

PREFIX = ROOT / ".cache" / "npm"


def node() -> Path:
    path = PREFIX / "node_modules" / ".bin" / "node"
    if not path.exists() or not (PREFIX / "node_modules" / "@modelcontextprotocol" / "client").exists():
        pytest.fail("no Node or MCP TypeScript client in .cache/npm; run scripts/npm-tools")
    return path


class Lines:
    """The JSON lines a process prints, read in a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, event: str, timeout: float = 30) -> dict:
        """The next line of `event`, skipping none: the order is the contract."""
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"the client exited before {event!r}: {self.stderr()}"
        got = json.loads(line)
        assert got["event"] == event, got
        return got

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.poll() is not None else ""


def test_the_typescript_client_calls_tools_and_listens_in_2026_07_28_mode(server: Server):
    sid = stream_plugin_session(server, [passed("tests/test_t.py::test_ok")], finish=False)
    process = subprocess.Popen(
        [str(node()), str(ROOT / "tests" / "mcp" / "ts" / "listen.mjs"), server.mcp_url, str(PREFIX)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out = Lines(process)
        tools = out.next("tools")["names"]
        assert "get_failures" in tools and "record_session_start" in tools
        session = out.next("get_session")
        assert not session["isError"] and session["session"]["id"] == sid
        bad = out.next("bad_arguments")
        assert bad["isError"] and "outcome" in bad["text"]
        unknown = out.next("unknown_tool")
        assert unknown["code"] == -32602 and "get_failurez" in unknown["message"]
        acked = out.next("acknowledged")
        assert acked["honored"] == {"resourceSubscriptions": ["pytest://sessions/latest"]}

        send_outcomes(server, sid, [failed("tests/test_t.py::test_bad", "AssertionError: no")], 2)
        update = out.next("updated")
        assert update == {"event": "updated", "uri": "pytest://sessions/latest",
                          "status": "running", "failures": ["tests/test_t.py::test_bad"]}

        server.grpc("FinishSession", {"session_id": sid, "outcomes_sent": 2,
                                      "summary": {"total_tests": 2, "passed": 1, "failed": 1,
                                                  "exitstatus": 1}})
        update = out.next("updated")
        assert update["status"] == "finished"
        assert out.next("closed") == {"event": "closed", "how": "local"}
        assert process.wait(timeout=30) == 0, out.stderr()
    finally:
        if process.poll() is None:
            process.kill()
