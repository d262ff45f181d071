"""Fixtures for the MCP tests: the real `pytest-mcp` binary on free ports.

The binary comes from $PYTEST_MCP_BIN, else target/debug/pytest-mcp. Servers
bind 127.0.0.1:0 and the tests read the ports from the stable stderr lines
`pytest-mcp: gRPC listening on ADDR, database PATH` and
`pytest-mcp: MCP HTTP listening on URL`.

Each test's database is a SQLite file in its tmp_path, or, with
PYTEST_MCP_TEST_DB_BACKEND=postgres, a fresh PostgreSQL database per file name
on the server whose maintenance database $PYTEST_MCP_TEST_PG names
(scripts/test starts one with scripts/pg-server), dropped after the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from mcp import Client, ClientSession, StdioServerParameters
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


BACKEND = os.environ.get("PYTEST_MCP_TEST_DB_BACKEND", "sqlite")


def pytest_configure(config: pytest.Config) -> None:
    if BACKEND not in ("sqlite", "postgres"):
        raise pytest.UsageError(
            f"PYTEST_MCP_TEST_DB_BACKEND={BACKEND!r}: the backends are sqlite and postgres")


def psql(url: str, sql: str) -> None:
    out = subprocess.run(
        [os.environ.get("PSQL", "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url,
         "-c", sql],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    assert out.returncode == 0, f"psql: {sql}: {out.stderr}"


@dataclass
class Databases:
    """The databases of one test: the PostgreSQL ones made for its file names."""

    label: str
    made: dict[Path, tuple[str, str]] = field(default_factory=dict)  # path -> (name, url)

    def db(self, path: Path) -> str:
        """What `--db` gets for the database a test keeps at `path`."""
        if BACKEND == "sqlite":
            return str(path)
        if path not in self.made:
            admin = os.environ.get("PYTEST_MCP_TEST_PG", "").strip()
            if not admin:
                pytest.fail(
                    "PYTEST_MCP_TEST_DB_BACKEND=postgres and PYTEST_MCP_TEST_PG is not set: run "
                    "the tests with scripts/test, or start a server (scripts/pg-server start DIR) "
                    "and set PYTEST_MCP_TEST_PG to the URL it prints")
            name = f"m_{uuid.uuid4().hex[:8]}_{self.label}"[:63]
            psql(admin, f'CREATE DATABASE "{name}"')
            self.made[path] = (name, urlunsplit(urlsplit(admin)._replace(path=f"/{name}")))
        return self.made[path][1]

    def drop_all(self) -> None:
        admin = os.environ.get("PYTEST_MCP_TEST_PG", "")
        for name, _ in self.made.values():
            # FORCE: a server or client the test left running lets go.
            psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_databases = Databases("")


@pytest.fixture(autouse=True)
def databases(request: pytest.FixtureRequest):
    """This test's databases; dropped after it unless it failed."""
    global _databases
    _databases = Databases(re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()))
    yield _databases
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for name, _ in _databases.made.values():
            print(f"kept the failed test's database {name}")
        return
    _databases.drop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@dataclass
class Server:
    """A running `pytest-mcp serve`."""

    process: subprocess.Popen
    db: str  # what --db got: a file's path or a PostgreSQL URL
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
    """Starts `serve` on the test's database kept at `db` (see Databases)."""
    db_arg = _databases.db(db)
    process = subprocess.Popen(
        [binary(), "serve", "--db", db_arg, "--grpc-addr", "127.0.0.1:0",
         "--http-addr", "127.0.0.1:0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn", **(env or {})},
    )
    server = Server(process=process, db=db_arg)
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
            # Started where no project is (as a desktop client starts it),
            # stdio reads the most recently active project, as serve does;
            # test_scope.py starts it inside projects.
            cwd="/",
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, message_handler=message_handler) as session:
                await session.initialize()
                yield session


@asynccontextmanager
async def client(transport: str, server: Server, mode: str, *, token: str = "",
                 message_handler=None) -> AsyncIterator[Client]:
    """The SDK's high-level `Client` over `transport`, negotiating as `mode`
    says: "legacy" (initialize), "auto" (server/discover, falling back to
    initialize) or a pinned revision such as "2026-07-28"."""
    if transport == "http":
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with create_mcp_http_client(headers=headers) as http:
            async with Client(streamable_http_client(server.mcp_url, http_client=http), mode=mode,
                              message_handler=message_handler) as c:
                yield c
    else:
        params = StdioServerParameters(
            command=binary(),
            args=["stdio", "--db", str(server.db), "--no-grpc"],
            env={"RUST_LOG": "warn"},
            cwd="/",
        )
        async with Client(params, mode=mode, message_handler=message_handler) as c:
            yield c


MODERN = "2026-07-28"
_UNSET = object()


def post_jsonrpc(server: Server, method: str, params: dict, *, name: str | None = None,
                 method_header: str | None = None, version: str = MODERN,
                 capabilities=_UNSET, token: str = "") -> tuple[int, dict]:
    """One stateless MCP 2026-07-28 request over plain HTTP, with the
    per-request `_meta` and the `MCP-Protocol-Version` / `Mcp-Method` /
    `Mcp-Name` headers a 2026-07-28 client sends (each can be overridden to
    be wrong); returns the HTTP status and the JSON-RPC reply."""
    import httpx2 as httpx

    meta = {"io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"}}
    if capabilities is not None:
        meta["io.modelcontextprotocol/clientCapabilities"] = {} if capabilities is _UNSET else capabilities
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": version,
               "Mcp-Method": method_header or method}
    if name is not None:
        headers["Mcp-Name"] = name
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    with httpx.Client(timeout=30) as http:
        reply = http.post(server.mcp_url, headers=headers, json=body)
    if reply.status_code == 401:
        return 401, {}
    for line in reply.text.splitlines():
        data = line.removeprefix("data:").strip()
        if data.startswith("{") and ("result" in data or "error" in data):
            return reply.status_code, json.loads(data)
    raise AssertionError(f"no JSON-RPC reply: {reply.status_code} {reply.text!r}")


# A suite for a real `pytest --mcp` run: one pass, one failure, and a test
# that holds the run open until the driving test creates the release file.
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


def stream_plugin_session(server: Server, outcomes: list[dict], finish: bool = True, *,
                          project: str = "demo", code_state: str = "") -> str:
    """Records a session over gRPC, as the pytest plugin does; returns its id."""
    sid = str(uuid.uuid4())
    environment = {"os": "Linux", "python_version": "3.12.1", "project": project,
                   "git_commit": "abc123", "git_branch": "main"}
    if code_state:
        environment["code_state"] = code_state
    server.grpc("StartSession", {
        "session_id": sid,
        "source": "SOURCE_PLUGIN",
        "environment": environment,
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


# A nodeid two projects share: it passes in one and is flaky in the other.
SHARED = "tests/test_common.py::test_shared"


def two_projects(server: Server) -> dict[str, list[str]]:
    """Two projects in one database with a common nodeid: in "shop" it
    passes all ten runs (each on its own code) while test_cart fails in the
    newest; in "blog" it failed and passed on the same code (flaky), then
    failed again on new code, the newest session of all. Returns each
    project's session ids, oldest first."""
    ids: dict[str, list[str]] = {"shop": [], "blog": []}
    for i in range(10):
        cart = (failed("tests/test_shop.py::test_cart", "AssertionError: cart total 3 != 4")
                if i == 9 else passed("tests/test_shop.py::test_cart"))
        ids["shop"].append(stream_plugin_session(
            server, [passed(SHARED), cart], project="shop", code_state=f"{i:040x}"))
    flaked = failed(SHARED, "AssertionError: flaked")
    for outcome, code in [(flaked, "b" * 40), (passed(SHARED), "b" * 40), (flaked, "c" * 40)]:
        ids["blog"].append(stream_plugin_session(
            server, [outcome, passed("tests/test_blog.py::test_post")], project="blog",
            code_state=code))
    return ids