"""Fixtures for the MCP tests: the real `pytest-mcp` binary on free ports.

The binary comes from $PYTEST_MCP_BIN, else target/debug/pytest-mcp. Servers
bind 127.0.0.1:0 and the tests read the ports from the stable stderr lines
`pytest-mcp: gRPC listening on ADDR, database PATH` and
`pytest-mcp: MCP HTTP listening on URL`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    path = os.environ.get("PYTEST_MCP_BIN") or str(ROOT / "target" / "debug" / "pytest-mcp")
    if not Path(path).exists():
        pytest.fail(f"no pytest-mcp binary at {path}; run `cargo build` or set PYTEST_MCP_BIN")
    return path


def grpcurl() -> str:
    found = os.environ.get("GRPCURL") or shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl not found; scripts/test installs it into .venv")
    return found


@dataclass
class Server:
    """A running `pytest-mcp serve`."""

    process: subprocess.Popen
    db: Path
    grpc_addr: str = ""
    mcp_url: str = ""
    stderr: list[str] = field(default_factory=list)
    token: str = ""  # sent by grpc() when the server requires one

    def grpc(self, method: str, payload: dict) -> dict | list:
        """Calls a Recorder method with grpcurl (reflection, no proto file)."""
        auth = ["-H", f"authorization: Bearer {self.token}"] if self.token else []
        out = subprocess.run(
            [grpcurl(), "-plaintext", *auth, "-d", "@", self.grpc_addr,
             f"pytest_mcp.v1.Recorder/{method}"],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else {}


def start_server(db: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    process = subprocess.Popen(
        [binary(), "serve", "--db", str(db), "--grpc-addr", "127.0.0.1:0",
         "--http-addr", "127.0.0.1:0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn", **(env or {})},
    )
    server = Server(process=process, db=db)
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            line = line.rstrip("\n")
            server.stderr.append(line)
            if line.startswith("pytest-mcp: gRPC listening on "):
                server.grpc_addr = line.removeprefix("pytest-mcp: gRPC listening on ").split(",")[0]
            if line.startswith("pytest-mcp: MCP HTTP listening on "):
                server.mcp_url = line.removeprefix("pytest-mcp: MCP HTTP listening on ").strip()
            if server.grpc_addr and server.mcp_url:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or not server.mcp_url:
        process.kill()
        pytest.fail(f"server did not print its listening lines: {server.stderr}")
    return server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(tmp_path: Path):
    s = start_server(tmp_path / "pytest-mcp.db")
    yield s
    s.process.terminate()
    try:
        s.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        s.process.kill()


@asynccontextmanager
async def connect(transport: str, server: Server, message_handler=None, *, token: str = "",
                  stdio_args: tuple[str, ...] = ()) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session over `transport` (stdio or http);
    `token` goes in the HTTP Authorization header, `stdio_args` to `stdio`."""
    if transport == "http":
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(server.mcp_url, http_client=http) as (read, write):
                async with ClientSession(read, write, message_handler=message_handler) as session:
                    await session.initialize()
                    yield session
    else:
        params = StdioServerParameters(
            command=binary(),
            # The HTTP fixture already records into this database over gRPC.
            args=["stdio", "--db", str(server.db), "--no-grpc", *stdio_args],
            env={"RUST_LOG": "warn"},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, message_handler=message_handler) as session:
                await session.initialize()
                yield session


def stream_plugin_session(server: Server, outcomes: list[dict], finish: bool = True) -> str:
    """Records a session over gRPC, as the pytest plugin does; returns its id."""
    sid = str(uuid.uuid4())
    server.grpc("StartSession", {
        "session_id": sid,
        "source": "SOURCE_PLUGIN",
        "environment": {"os": "Linux", "python_version": "3.12.1", "project": "demo",
                        "git_commit": "abc123", "git_branch": "main"},
    })
    if outcomes:
        send_outcomes(server, sid, outcomes, first_seq=1)
    if finish:
        failed = sum(o["outcome"] == "TEST_OUTCOME_FAILED" for o in outcomes)
        server.grpc("FinishSession", {
            "session_id": sid,
            "outcomes_sent": len(outcomes),
            "summary": {"total_tests": len(outcomes), "passed": len(outcomes) - failed,
                        "failed": failed, "exitstatus": 1 if failed else 0, "duration": 1.0},
        })
    return sid


def send_outcomes(server: Server, sid: str, outcomes: list[dict], first_seq: int) -> None:
    numbered = [{**o, "seq": first_seq + i} for i, o in enumerate(outcomes)]
    server.grpc("StreamOutcomes", {"session_id": sid, "outcomes": numbered})


def passed(nodeid: str) -> dict:
    return {"nodeid": nodeid, "outcome": "TEST_OUTCOME_PASSED", "phase": "PHASE_CALL",
            "duration": 0.01, "file": nodeid.split("::")[0], "line": 3, "attempt": 1}


def failed(nodeid: str, message: str) -> dict:
    return {"nodeid": nodeid, "outcome": "TEST_OUTCOME_FAILED", "phase": "PHASE_CALL",
            "duration": 0.02, "file": nodeid.split("::")[0], "line": 7, "attempt": 1,
            "message": message,
            "longrepr": f"def test():\n>       assert compute() == 2\nE       {message}\n\n{nodeid.split('::')[0]}:7: AssertionError",
            "stdout": "captured line\n"}
