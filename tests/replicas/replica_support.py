"""Helpers of the replica and fault tests: PostgreSQL databases and servers,
`pytest-mcp serve` replicas on them, held inner pytest runs, and a watcher.

A module of its own (not `conftest`), so `from replica_support import ...`
finds these even when other test directories with their own `conftest`
modules are collected in the same run.

The binary is $PYTEST_MCP_BIN, else target/debug/pytest-mcp; the PostgreSQL
server the tests share is $PYTEST_MCP_TEST_PG (scripts/test starts one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from pytest_mcp._proto import recorder_pb2 as pb
from pytest_mcp._proto import recorder_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PG_SERVER = ROOT / "scripts" / "pg-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")  # where scripts/pg-server finds PostgreSQL
INNER_TIMEOUT = 60  # seconds an inner pytest run may take

WARNING = "pytest-mcp: warning:"
SPOOL_LINE = re.compile(r"spooled to (\S+\.jsonl)")
SESSION_LINE = re.compile(r"pytest-mcp: session ([0-9a-f-]{36}): ")
COUNT_NAMES = ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")

T = TypeVar("T")


def binary() -> str:
    path = os.environ.get("PYTEST_MCP_BIN") or str(ROOT / "target" / "debug" / "pytest-mcp")
    if not Path(path).exists():
        pytest.fail(f"no pytest-mcp binary at {path}: run `cargo build` or set PYTEST_MCP_BIN")
    return path


def grpcurl() -> str:
    found = os.environ.get("GRPCURL") or shutil.which("grpcurl")
    venv = Path(sys.executable).parent / "grpcurl"
    if not found and venv.exists():
        found = str(venv)
    if not found:
        pytest.fail("grpcurl not found: scripts/test installs it into .venv (or set GRPCURL)")
    return found


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
    """Polls `predicate` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        time.sleep(0.02)


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment without a developer's PYTEST_MCP* / PYTEST_ADDOPTS / CI settings."""
    ci = {"CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_MCP") and k != "PYTEST_ADDOPTS" and k not in ci
    }
    env.update(extra)
    return env


# -- PostgreSQL ------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def psql(url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"psql {sql!r}: {out.stderr}"
    return out.stdout


def create_database(server_url: str) -> str:
    """A new, empty database on the server at `server_url`; returns its URL."""
    name = f"pytest_mcp_{uuid.uuid4().hex[:16]}"
    psql(server_url, f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    psql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgServer:
    """A PostgreSQL server of one test's own (scripts/pg-server), for faults."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.url = ""

    def _as_owner(self, *command: str) -> subprocess.CompletedProcess:
        # As root, PostgreSQL must run as `postgres`; the same as scripts/pg-server.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *command], cwd="/", capture_output=True, text=True, timeout=90
        )

    def start(self) -> "PgServer":
        out = subprocess.run(
            [str(PG_SERVER), "start", str(self.dir)], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, f"scripts/pg-server start: {out.stderr}"
        self.url = out.stdout.strip().splitlines()[-1]
        return self

    def stop(self) -> None:
        """Fast shutdown; clients are disconnected."""
        out = subprocess.run(
            [str(PG_SERVER), "stop", str(self.dir)], capture_output=True, text=True, timeout=90
        )
        assert out.returncode == 0, out.stderr

    def start_again(self) -> None:
        """Starts the stopped cluster on its data directory (same port, same data);
        scripts/pg-server's `start` only creates new ones."""
        out = self._as_owner(
            str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"),
            "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start",
        )
        assert out.returncode == 0, f"pg_ctl start: {out.stdout}{out.stderr}"


# -- the recorder ------------------------------------------------------------

GRPC_LINE = re.compile(r"pytest-mcp: gRPC listening on (\S+?),? ")
HTTP_LINE = re.compile(r"pytest-mcp: MCP HTTP listening on (\S+)")


class Replica:
    """A running `pytest-mcp serve` on a database, with a gRPC client for it."""

    def __init__(self, db: str, *extra: str, name: str = "") -> None:
        self.db = db
        self.extra = list(extra)
        self.name = name
        self.grpc_addr = ""
        self.mcp_url = ""
        self.stderr: List[str] = []
        self.proc: Optional[subprocess.Popen] = None
        self._channel: Optional[grpc.Channel] = None
        self.stub: Optional[recorder_pb2_grpc.RecorderStub] = None

    def start(self) -> "Replica":
        self.proc = subprocess.Popen(
            [binary(), "serve", "--db", self.db, "--grpc-addr", "127.0.0.1:0",
             "--http-addr", "127.0.0.1:0", *self.extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(RUST_LOG="warn"),
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                line = line.rstrip("\n")
                self.stderr.append(line)
                if match := GRPC_LINE.match(line):
                    self.grpc_addr = match.group(1)
                if match := HTTP_LINE.match(line):
                    self.mcp_url = match.group(1)
                if self.grpc_addr and self.mcp_url:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or not (self.grpc_addr and self.mcp_url):
            self.proc.kill()
            pytest.fail(f"pytest-mcp serve did not start: {self.stderr}")
        self._channel = grpc.insecure_channel(
            self.grpc_addr, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.stub = recorder_pb2_grpc.RecorderStub(self._channel)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to flush, answer or say goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process could not stop
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- reads, through the gRPC read rpcs ---------------------------------

    def session(self, session_id: str) -> pb.Session:
        return self.stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10).session

    def outcomes(self, session_id: str) -> List[pb.Outcome]:
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

    def stored(self, session_id: str) -> int:
        """Outcomes stored in the session; 0 before its StartSession is."""
        try:
            return self.session(session_id).outcomes_stored
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise

    def health(self, service: str = "") -> str:
        """What `grpcurl ... grpc.health.v1.Health/Check` says of `service` (""
        is the server as a whole): SERVING or NOT_SERVING."""
        out = subprocess.run(
            [grpcurl(), "-plaintext", "-max-time", "5", "-d", json.dumps({"service": service}),
             self.grpc_addr, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["status"]


def counts_of(message) -> Dict[str, int]:
    """The six counts of a Summary or OutcomeCounts message."""
    return {k: getattr(message, k) for k in COUNT_NAMES}


def assert_stored_exactly_once(replica: Replica, session_id: str, nodeids: Sequence[str]):
    """Every outcome once: seqs 1..N without gaps, each nodeid once; returns both."""
    session = replica.session(session_id)
    outcomes = replica.outcomes(session_id)
    assert [o.seq for o in outcomes] == list(range(1, len(outcomes) + 1))
    assert sorted(o.nodeid for o in outcomes) == sorted(nodeids)
    assert session.outcomes_stored == session.outcomes_expected == len(outcomes) == len(nodeids)
    return session, outcomes


def export_json(db: str, session_id: str) -> dict:
    """`pytest-mcp export --db URL SESSION`, parsed."""
    out = subprocess.run(
        [binary(), "export", "--db", db, session_id],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# -- inner pytest runs, held at known points ---------------------------------

# A test named in GATES waits (at most a minute) for the outer test to open
# its gate, so the outer test acts at known points of the run instead of
# racing it. A gate is "reached" once the sender has taken every result so
# far off its queue: it puts what it takes on the stream in the same step, so
# they are in flight, no longer waiting in this process. The .reached file
# holds the session id (written whole, then renamed into place).
_GATED_CONFTEST = """
import os
import pathlib
import time

import pytest

GATES = {gates!r}
HERE = pathlib.Path(__file__).parent

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    gate = GATES.get(item.name)
    if gate is None:
        return
    deadline = time.monotonic() + 60
    sender = item.config.pluginmanager.get_plugin("mcp-reporter")._sender
    while sender.queue and time.monotonic() < deadline:
        time.sleep(0.005)
    (HERE / f"{{gate}}.tmp").write_text(sender.session_id)
    os.replace(HERE / f"{{gate}}.tmp", HERE / f"{{gate}}.reached")
    while not (HERE / f"{{gate}}.open").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
"""


class InnerRun:
    """A pytest run in a subprocess, recording with the plugin, with gates."""

    def __init__(self, directory: Path, module: str, suite: str, gates: Dict[str, str]) -> None:
        """`gates`: test name (e.g. "test_numbers[100]") -> gate name."""
        self.dir = directory
        self.dir.mkdir(parents=True)
        (self.dir / "conftest.py").write_text(_GATED_CONFTEST.format(gates=gates))
        (self.dir / f"{module}.py").write_text(textwrap.dedent(suite))
        self.spool_dir = self.dir / "spool"
        self.output = self.dir / "output.txt"
        self.proc: Optional[subprocess.Popen] = None
        self.ret: Optional[int] = None
        self.lines: List[str] = []

    def start(self, address: str, *args: str) -> "InnerRun":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mcp",
             f"--mcp-address={address}", f"--mcp-spool={self.spool_dir}", *args],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self.output.open("w"),
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        return self

    def reached(self, gate: str) -> str:
        """Waits until the run holds at `gate`; returns the session id."""
        path = self.dir / f"{gate}.reached"

        def there() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the inner run ended before {gate}:\n{self.text()}")
            return path.exists()

        wait_until(there, what=f"the inner run in {self.dir.name} reaching {gate}")
        return path.read_text()

    def open(self, gate: str) -> None:
        (self.dir / f"{gate}.open").touch()

    def wait(self) -> "InnerRun":
        assert self.proc is not None
        try:
            self.ret = self.proc.wait(INNER_TIMEOUT)
        finally:
            self.kill()
        self.lines = self.text().splitlines()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    # -- what the run printed ------------------------------------------------

    def counts(self) -> Dict[str, int]:
        """pytest's terminal summary as the Summary field names."""
        from _pytest.pytester import RunResult

        parsed = RunResult.parse_summary_nouns(self.lines)
        return {k: parsed.get(k, 0) for k in COUNT_NAMES}

    def warnings(self) -> List[str]:
        return [line for line in self.lines if WARNING in line]

    def closing_line(self) -> str:
        """The plugin's last "pytest-mcp: session ..." line."""
        found = [line for line in self.lines if SESSION_LINE.match(line)]
        assert found, self.text()
        return found[-1]

    def spooled(self) -> List[Path]:
        files = sorted(self.spool_dir.glob("*.jsonl")) if self.spool_dir.exists() else []
        return files + [Path(m.group(1)) for line in self.lines if (m := SPOOL_LINE.search(line))]


class Watcher:
    """Follows a session over WatchSession on one replica, on a thread of its
    own, remembering each event and when it arrived."""

    def __init__(self, replica: Replica, session_id: str) -> None:
        self.events: List[tuple] = []  # ("outcome", seq) or ("session", status), in order
        self.error: Optional[grpc.RpcError] = None
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._call = replica.stub.WatchSession(
            pb.WatchSessionRequest(session_id=session_id), timeout=INNER_TIMEOUT * 2
        )
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            for response in self._call:
                kind = response.WhichOneof("event")
                value = response.outcome.seq if kind == "outcome" else response.session.status
                with self._lock:
                    self.events.append((kind, value))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error
        finally:
            self.ended.set()

    def seqs(self) -> List[int]:
        with self._lock:
            return [value for kind, value in self.events if kind == "outcome"]

    def statuses(self) -> List[int]:
        with self._lock:
            return [value for kind, value in self.events if kind == "session"]

    def close(self) -> None:
        self._call.cancel()
