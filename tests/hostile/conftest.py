"""Fixtures of the hostile-client tests: the real `pytest-mcp serve` on free
ports (the MCP tests' fixtures, reused), plus what these tests measure of it.

Each test plays one hostile peer against a running server and asserts the
bounded behaviour a healthy client sees meanwhile: memory, threads and open
descriptors read from /proc, and how long a healthy GetSession takes. The
tests are bounded in time and count; figures belong in benchmarks, so time
limits here are generous ceilings ("answers within 1 s"), never tuned ones.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The MCP tests' conftest is the one place servers are started from; load it
# under a name of its own (both files are called conftest).
_spec = importlib.util.spec_from_file_location("mcp_fixtures", ROOT / "tests" / "mcp" / "conftest.py")
mcp_fixtures = importlib.util.module_from_spec(_spec)
sys.modules["mcp_fixtures"] = mcp_fixtures
_spec.loader.exec_module(mcp_fixtures)

# Fixtures and hooks the MCP tests' servers rely on.
databases = mcp_fixtures.databases
pytest_runtest_makereport = mcp_fixtures.pytest_runtest_makereport
anyio_backend = mcp_fixtures.anyio_backend
server = mcp_fixtures.server
start_server = mcp_fixtures.start_server
Server = mcp_fixtures.Server
stream_plugin_session = mcp_fixtures.stream_plugin_session
post_jsonrpc = mcp_fixtures.post_jsonrpc
connect = mcp_fixtures.connect
passed = mcp_fixtures.passed
failed = mcp_fixtures.failed


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def threads(pid: int) -> int:
    """Number of threads of a process."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def open_fds(pid: int) -> int:
    """Number of open file descriptors of a process."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def recorder_stub(server):
    """A grpcio stub of the Recorder on `server` (the plugin's generated code)."""
    import grpc
    from pytest_mcp._proto import recorder_pb2_grpc

    channel = grpc.insecure_channel(
        server.grpc_addr,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    return channel, recorder_pb2_grpc.RecorderStub(channel)


def healthy_get_session(server, session_id: str, timeout: float = 10.0) -> float:
    """Seconds a fresh client's GetSession of `session_id` takes (it must succeed)."""
    from pytest_mcp._proto import recorder_pb2

    channel, stub = recorder_stub(server)
    try:
        started = time.monotonic()
        stub.GetSession(recorder_pb2.GetSessionRequest(session_id=session_id), timeout=timeout)
        return time.monotonic() - started
    finally:
        channel.close()
