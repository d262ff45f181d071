"""Test support: a real ``pytest-mcp serve`` on a free port with a temporary
database, read back through the gRPC read rpcs with the plugin's own stubs,
and inner pytest runs (pytester, in subprocesses) that record into it.

The binary is $PYTEST_MCP_BIN, else ../target/debug/pytest-mcp (build it with
``cargo build``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

import grpc
import pytest

from pytest_mcp._proto import recorder_pb2 as pb
from pytest_mcp._proto import recorder_pb2_grpc

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
INNER_TIMEOUT = 120  # seconds an inner pytest run may take before the test fails

WARNING = "pytest-mcp: warning:"
SPOOL_LINE = re.compile(r"spooled to (\S+\.jsonl)")
SESSION_LINE = re.compile(r"pytest-mcp: session ([0-9a-f-]{36}): ")


def binary() -> str:
    path = os.environ.get("PYTEST_MCP_BIN") or str(REPO / "target" / "debug" / "pytest-mcp")
    if not os.path.exists(path):
        pytest.fail(f"no pytest-mcp binary at {path}: run `cargo build` or set PYTEST_MCP_BIN")
    return path


_SERVE_EXTRA: Optional[List[str]] = None


def serve_extra_args() -> List[str]:
    """Keeps any other listener of ``serve`` (the MCP HTTP endpoint) off fixed ports."""
    global _SERVE_EXTRA
    if _SERVE_EXTRA is None:
        help_text = subprocess.run(
            [binary(), "serve", "--help"], capture_output=True, text=True, timeout=30
        ).stdout
        _SERVE_EXTRA = ["--http-addr", "127.0.0.1:0"] if "--http-addr" in help_text else []
    return _SERVE_EXTRA


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``pytest-mcp serve`` and a gRPC client for it."""

    def __init__(self, db: Path, extra: Sequence[str] = ()) -> None:
        """``extra``: more ``serve`` arguments, e.g. ``("--token", TOKEN)``."""
        self.db = db
        self.extra = list(extra)
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.stderr: List[str] = []
        self._channel = None
        self.stub = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> "Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_MCP")}
        env["RUST_LOG"] = "warn"
        self.stderr = []
        self.proc = subprocess.Popen(
            [binary(), "serve", "--grpc-addr", f"127.0.0.1:{port}", "--db", str(self.db)]
            + self.extra
            + serve_extra_args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        listening = threading.Event()

        def read(stream, lines):
            for line in stream:
                lines.append(line.rstrip("\n"))
                match = re.match(r"pytest-mcp: gRPC listening on 127\.0\.0\.1:(\d+)", line)
                if match:
                    self.port = int(match.group(1))
                    listening.set()

        threading.Thread(target=read, args=(self.proc.stderr, self.stderr), daemon=True).start()
        if not listening.wait(30) or self.proc.poll() is not None:
            self.proc.kill()
            pytest.fail(f"pytest-mcp serve did not start: {self.stderr}")
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.addr,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 500),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
            self.stub = recorder_pb2_grpc.RecorderStub(self._channel)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def restart(self) -> None:
        """Starts again on the same port and database, with a fresh client connection."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.start(self.port)

    def stop(self) -> None:
        # The client first: a graceful shutdown waits for open connections to go.
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- reads, through the gRPC read rpcs ---------------------------------

    def session(self, session_id: str = "latest") -> pb.Session:
        return self.stub.GetSession(
            pb.GetSessionRequest(session_id=session_id), timeout=10, wait_for_ready=True
        ).session

    def sessions(self) -> List[pb.Session]:
        return list(
            self.stub.ListSessions(pb.ListSessionsRequest(page_size=1000), timeout=10).sessions
        )

    def outcomes(self, session_id: str = "latest") -> List[pb.Outcome]:
        out: List[pb.Outcome] = []
        token = ""
        while True:
            page = self.stub.ListOutcomes(
                pb.ListOutcomesRequest(session_id=session_id, page_size=10000, page_token=token),
                timeout=30,
            )
            out.extend(page.outcomes)
            token = page.next_page_token
            if not token:
                return out

    def import_files(self, *files) -> subprocess.CompletedProcess:
        """``pytest-mcp import FILE... --db DB`` into this server's database."""
        return subprocess.run(
            [binary(), "import", *map(str, files), "--db", str(self.db)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Inner runs must not pick up a developer's PYTEST_MCP* or PYTEST_ADDOPTS settings."""
    for name in list(os.environ):
        if name.startswith("PYTEST_MCP") and name != "PYTEST_MCP_BIN":
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    for name in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "recorder.db").start()
    yield srv
    srv.stop()


@pytest.fixture
def keeping_server(tmp_path):
    """A server that keeps the captured output of passing tests too."""
    srv = Server(tmp_path / "keeping.db", extra=["--keep-passing-output"]).start()
    yield srv
    srv.stop()


@pytest.fixture
def spool_dir(tmp_path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def run_mcp(pytester, server, spool_dir):
    """Runs pytest in a subprocess with recording on into ``server``."""

    def run(*args, address: Optional[str] = None, timeout: float = INNER_TIMEOUT):
        return pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "--mcp",
            f"--mcp-address={address or server.addr}",
            f"--mcp-spool={spool_dir}",
            *args,
            timeout=timeout,
        )

    return run


def session_id_of(result) -> str:
    """The session id the plugin printed at the end of the run."""
    for line in result.outlines + result.errlines:
        match = SESSION_LINE.search(line)
        if match:
            return match.group(1)
    raise AssertionError("no 'pytest-mcp: session ...' line in:\n" + "\n".join(result.outlines))


def warning_lines(result) -> List[str]:
    return [line for line in result.outlines + result.errlines if WARNING in line]


def spool_path_of(result) -> Optional[Path]:
    for line in result.outlines + result.errlines:
        match = SPOOL_LINE.search(line)
        if match:
            return Path(match.group(1))
    return None


def summary_counts(result) -> dict:
    """pytest's terminal summary as the Summary / OutcomeCounts field names."""
    parsed = result.parseoutcomes()
    return {
        "passed": parsed.get("passed", 0),
        "failed": parsed.get("failed", 0),
        "skipped": parsed.get("skipped", 0),
        "errors": parsed.get("errors", 0),
        "xfailed": parsed.get("xfailed", 0),
        "xpassed": parsed.get("xpassed", 0),
    }


def counts_of(message) -> dict:
    """The six counts of a Summary or OutcomeCounts message."""
    return {k: getattr(message, k) for k in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")}


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def stored_so_far(server) -> int:
    """Outcomes stored in the latest session, 0 before there is one."""
    try:
        return server.session().outcomes_stored
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise


def assert_stored_exactly_once(server, session_id, nodeids_expected):
    """Every outcome once: seqs 1..N without gaps, each test's nodeid once."""
    session = server.session(session_id)
    outcomes = server.outcomes(session_id)
    assert [o.seq for o in outcomes] == list(range(1, len(outcomes) + 1))
    nodeids = [o.nodeid for o in outcomes]
    assert sorted(nodeids) == sorted(nodeids_expected)
    assert session.outcomes_stored == session.outcomes_expected == len(outcomes)
    return session, outcomes


def run_in_background(pytester, address: str, spool_dir, *args):
    """Starts an inner pytest run that records at ``address``; returns (process, output file)."""
    out = pytester.path / "inner-output.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--mcp",
            f"--mcp-address={address}",
            f"--mcp-spool={spool_dir}",
            *args,
        ],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, out


class Output:
    """The parts of pytester's RunResult that the helpers in conftest read."""

    def __init__(self, path, ret):
        self.outlines = path.read_text().splitlines()
        self.errlines = []
        self.ret = ret

    def parseoutcomes(self):
        from _pytest.pytester import RunResult

        return RunResult.parse_summary_nouns(self.outlines)
