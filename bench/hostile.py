#!/usr/bin/env python3
"""What one hostile peer costs everyone else: issue 22's attacks, measured.

For each attack the script starts `pytest-mcp serve` on a fresh SQLite file
that already holds history (20 finished runs of a 500-test suite), starts the
attack, and meanwhile has a healthy client open a new gRPC connection every
100 ms and call GetSession (a user's `show` or an agent's first read), while
/proc is sampled every 50 ms for the server's memory, threads and open
descriptors. It prints, per attack and per binary:

- the healthy GetSession's p50 and slowest answer (ms; "x/y" when some of
  the y calls failed or timed out after 5 s),
- the server's peak resident memory (MB),
- what the attack itself saw (bytes answered, connections closed by the
  server, sessions refused, messages stored, what was left after it).

The attacks (sizes are options):

  outcomes   1,000 failures, each with a 64 KiB traceback, stdout and stderr
             of one repeated letter (a few MB on disk compressed); then two
             readers page through ListOutcomes at once (asking for pages of
             10,000), accepting up to 1 GiB.
  idle-http  5,000 HTTP connections that send half a request line and stop.
  texts      20 sessions whose failure messages are 64 KiB runs of `[`, of
             hex digits, `0x` + hex and `[1` (the fingerprint normaliser's
             worst cases), streamed at once.
  pattern    a quarantine pattern `*` + 4,095 `[` and a test `[`*4095 + `x`;
             four MCP get_session / list_quarantine calls at once.
  sessions   2,000 MCP `initialize` requests carrying the 2026-07-28 header
             against `--max-sessions 5`.
  events     2,000 `/sessions/{id}/events` page streams of a running
             session, opened and closed; threads and descriptors 5 s later.
  small      one gRPC stream of 100,000 one-outcome messages, then 50
             concurrent streams of 2,000 each.

Rerun:
  cargo build --release --locked
  .venv/bin/python bench/hostile.py [--bin target/release/pytest-mcp]
      [--baseline OLD/pytest-mcp] [--only outcomes,texts,...]
`--baseline` runs every attack against a second binary too (a build of an
earlier commit), paired in one table. Needs the plugin's grpcio stubs
(`pip install -e python-plugin`, as scripts/test does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pytest_mcp._proto import recorder_pb2 as pb
from pytest_mcp._proto import recorder_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
MODERN = "2026-07-28"


@dataclass
class Server:
    """A running `pytest-mcp serve` and what was sampled of it."""

    process: subprocess.Popen
    grpc_addr: str = ""
    http_url: str = ""  # http://127.0.0.1:PORT (MCP at /mcp)
    peak_rss_mb: float = 0.0
    stderr: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def proc(pid: int, what: str) -> int:
    if what == "threads":
        return len(os.listdir(f"/proc/{pid}/task"))
    if what == "fds":
        return len(os.listdir(f"/proc/{pid}/fd"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def start(binary: str, db: Path, *extra: str) -> Server:
    process = subprocess.Popen(
        [binary, "serve", "--db", str(db), "--grpc-addr", "127.0.0.1:0", "--http-addr",
         "127.0.0.1:0", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RUST_LOG": "error"},
    )
    server = Server(process)
    ready = threading.Event()

    def read() -> None:
        for line in process.stderr:
            server.stderr.append(line.rstrip())
            if line.startswith("pytest-mcp: gRPC listening on "):
                server.grpc_addr = line.split(" on ", 1)[1].split(",")[0].strip()
            if line.startswith("pytest-mcp: MCP HTTP listening on "):
                server.http_url = line.split(" on ", 1)[1].strip().removesuffix("/mcp")
            if server.grpc_addr and server.http_url:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or not server.http_url:
        process.kill()
        raise SystemExit(f"{binary} did not start: {server.stderr[-5:]}")

    def sample() -> None:
        while process.poll() is None:
            try:
                server.peak_rss_mb = max(server.peak_rss_mb, proc(process.pid, "rss"))
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    return server


def channel(server: Server) -> grpc.Channel:
    return grpc.insecure_channel(server.grpc_addr, options=[
        ("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)])


def outcome(seq: int, nodeid: str, failed: bool = False, text: str = "",
            big: int = 0) -> pb.Outcome:
    o = pb.Outcome(seq=seq, nodeid=nodeid, file=nodeid.split("::")[0], line=3, attempt=1,
                   duration=0.01, phase=pb.PHASE_CALL,
                   outcome=pb.TEST_OUTCOME_FAILED if failed else pb.TEST_OUTCOME_PASSED)
    if failed:
        o.message = text or "AssertionError: assert 1 == 2"
        o.longrepr = ("E" * big) if big else f"def test():\n>       assert f()\nE       {o.message}"
        if big:
            o.stdout, o.stderr = "o" * big, "e" * big
    return o


def record(server: Server, outcomes: list[pb.Outcome], project: str = "bench",
           finish: bool = True, batch: int = 200) -> str:
    """Records one session over gRPC as the plugin does; returns its id."""
    sid = str(uuid.uuid4())
    with channel(server) as ch:
        stub = pb_grpc.RecorderStub(ch)
        stub.StartSession(pb.StartSessionRequest(
            session_id=sid, source=pb.SOURCE_PLUGIN,
            environment=pb.Environment(os="Linux", python_version="3.12.1", project=project)),
            timeout=60)
        batches = [outcomes[i:i + batch] for i in range(0, len(outcomes), batch)]
        requests = (pb.StreamOutcomesRequest(session_id=sid, outcomes=b) for b in batches)
        for _ in stub.StreamOutcomes(requests, timeout=300):
            pass
        if finish:
            failed = sum(o.outcome == pb.TEST_OUTCOME_FAILED for o in outcomes)
            stub.FinishSession(pb.FinishSessionRequest(
                session_id=sid, outcomes_sent=len(outcomes),
                summary=pb.Summary(total_tests=len(outcomes), passed=len(outcomes) - failed,
                                   failed=failed, exitstatus=1 if failed else 0, duration=1.0)),
                timeout=60)
    return sid


def history(server: Server) -> str:
    """20 finished runs of a 500-test suite; returns the last one's id."""
    sid = ""
    for run in range(20):
        sid = record(server, [outcome(i + 1, f"tests/test_m{i % 25}.py::test_{i}",
                                      failed=(i + run) % 97 == 0) for i in range(500)])
    return sid


class Probe:
    """A healthy client: a new gRPC connection and GetSession every 100 ms."""

    def __init__(self, server: Server, sid: str):
        self.server, self.sid = server, sid
        self.times: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with channel(self.server) as ch:
                    pb_grpc.RecorderStub(ch).GetSession(
                        pb.GetSessionRequest(session_id=self.sid), timeout=5)
                self.times.append(time.monotonic() - started)
            except grpc.RpcError:
                self.failures += 1
            self._stop.wait(0.1)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        if not self.times:
            return f"all {self.failures} failed"
        p50 = statistics.median(self.times) * 1000
        slowest = max(self.times) * 1000
        calls = len(self.times) + self.failures
        shown = f"{p50:.1f} / {slowest:.0f}"
        return shown if not self.failures else f"{shown} ({len(self.times)}/{calls} ok)"


def mcp(server: Server, method: str, params: dict, headers: dict | None = None,
        timeout: float = 60) -> tuple[int, dict]:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": {**params, "_meta": meta}}).encode()
    request = urllib.request.Request(server.http_url + "/mcp", data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN, "Mcp-Method": method,
        **({"Mcp-Name": params["name"]} if "name" in params else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read().decode()
            status = reply.status
    except urllib.error.HTTPError as e:
        return e.code, {}
    for line in text.splitlines():
        data = line.removeprefix("data:").strip()
        if data.startswith("{"):
            return status, json.loads(data)
    return status, {}


# --- the attacks: each returns what it saw --------------------------------------------------


def attack_outcomes(server: Server, args) -> str:
    big = 64 * 1024
    # A short message: 64 KiB of one letter there is the `texts` attack
    # (which kept the earlier build's ingest busy for minutes).
    sid = record(server, [outcome(i + 1, f"tests/test_big.py::test_{i}", failed=True,
                                  big=big) for i in range(args.big_failures)],
                 batch=50)
    largest, total = [0], [0]

    def read() -> None:
        with channel(server) as ch:
            stub = pb_grpc.RecorderStub(ch)
            token = ""
            while True:
                page = stub.ListOutcomes(pb.ListOutcomesRequest(session_id=sid, page_token=token,
                                                               page_size=10_000),
                                         timeout=300)
                size = page.ByteSize()
                largest[0] = max(largest[0], size)
                total[0] += size
                token = page.next_page_token
                if not token:
                    return

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(read), pool.submit(read)]:
            f.result()
    return f"largest page {largest[0] / 1e6:.1f} MB, {total[0] / 2e6:.0f} MB per reader"


def attack_idle_http(server: Server, args) -> str:
    port = int(server.http_url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(args.connections):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            sockets.append(s)
        except OSError:
            break
    opened = len(sockets)
    try:
        started = time.monotonic()
        status, _ = mcp(server, "tools/call", {"name": "list_sessions", "arguments": {}}, timeout=5)
        status = f"{status} in {(time.monotonic() - started) * 1000:.0f} ms"
    except OSError as e:
        status = f"no answer ({e})"
    time.sleep(args.hold)
    closed = 0
    for s in sockets:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return f"{opened} opened, MCP during: {status}, closed by server after {args.hold:.0f} s: {closed}"


def attack_texts(server: Server, args) -> str:
    texts = ["[" * 65536, "a" * 65536, "0x" + "f" * 65534, "AssertionError: " + "[1" * 32768]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: record(server, [
            outcome(i + 1, f"tests/test_t{n}.py::test_{i}", failed=True, text=t)
            for i, t in enumerate(texts)]), range(args.text_sessions)))
    return f"{args.text_sessions} sessions stored in {time.monotonic() - started:.1f} s"


def attack_pattern(server: Server, args) -> str:
    nodeid = "[" * 4095 + "x"
    sid = record(server, [outcome(1, nodeid), outcome(2, "t.py::test_y")])
    status, reply = mcp(server, "tools/call", {"name": "quarantine_test", "arguments": {
        "nodeid": "*" + "[" * 4095, "reason": "bench", "project": "bench"}})
    if status != 200 or "error" in reply:
        return f"quarantine_test refused: {json.dumps(reply)[:200]}"
    started = time.monotonic()
    calls = [("get_session", {"session": sid}), ("list_quarantine", {"project": "bench"})] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: mcp(server, "tools/call", {
            "name": c[0], "arguments": c[1]}, timeout=120)[0], calls))
    return f"4 calls answered {answers} in {time.monotonic() - started:.1f} s"


def attack_sessions(server: Server, args) -> str:
    statuses: dict[int, int] = {}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": MODERN, "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}).encode()

    def one(_: int) -> None:
        request = urllib.request.Request(server.http_url + "/mcp", data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Accept": "application/json, text/event-stream",
                                                  "MCP-Protocol-Version": MODERN})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read(1)
                code = reply.status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            code = 0
        statuses[code] = statuses.get(code, 0) + 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(args.initializes)))
    return ", ".join(f"{n}x {code or 'no answer'}" for code, n in sorted(statuses.items()))


def attack_events(server: Server, args) -> str:
    sid = record(server, [outcome(1, "tests/test_live.py::test_a")], finish=False)
    pid = server.process.pid
    time.sleep(1)
    before = (proc(pid, "threads"), proc(pid, "fds"))
    port = int(server.http_url.rsplit(":", 1)[1])
    request = (f"GET /sessions/{sid}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    def one(_: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                seen = b""
                while b"event:" not in seen:  # the stream has started
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    seen += chunk
        except OSError:
            pass

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(args.streams)))
    peak = (proc(pid, "threads"), proc(pid, "fds"))
    time.sleep(5)
    after = (proc(pid, "threads"), proc(pid, "fds"))
    return (f"threads/fds before {before[0]}/{before[1]}, right after {peak[0]}/{peak[1]}, "
            f"5 s later {after[0]}/{after[1]}")


def attack_small(server: Server, args) -> str:
    results = []

    def stream(count: int) -> int:
        sid = str(uuid.uuid4())
        with channel(server) as ch:
            stub = pb_grpc.RecorderStub(ch)
            stub.StartSession(pb.StartSessionRequest(
                session_id=sid, environment=pb.Environment(project="bench")), timeout=60)
            requests = (pb.StreamOutcomesRequest(session_id=sid, outcomes=[
                outcome(i + 1, f"tests/test_s.py::test_{i}")]) for i in range(count))
            acked = 0
            try:
                for reply in stub.StreamOutcomes(requests, timeout=600):
                    acked = max(acked, reply.acked_seq)
            except grpc.RpcError as e:
                results.append(f"{e.code().name}: {e.details()[:60]}")
            return acked

    started = time.monotonic()
    one = stream(args.small_messages)
    single = time.monotonic() - started
    with ThreadPoolExecutor(50) as pool:
        many = list(pool.map(stream, [args.small_per_stream] * 50))
    complete = sum(m == args.small_per_stream for m in many)
    errors = f"; errors: {results[:2]}" if results else ""
    return (f"1 stream: {one}/{args.small_messages} acked in {single:.1f} s; "
            f"50 streams: {complete}/50 complete{errors}")


ATTACKS = {
    "outcomes": (attack_outcomes, ()),
    "idle-http": (attack_idle_http, ()),
    "texts": (attack_texts, ()),
    "pattern": (attack_pattern, ()),
    "sessions": (attack_sessions, ("--max-sessions", "5")),
    "events": (attack_events, ()),
    "small": (attack_small, ()),
}


def run(binary: str, name: str, args) -> tuple[str, float, str]:
    attack, extra = ATTACKS[name]
    with tempfile.TemporaryDirectory() as tmp:
        server = start(binary, Path(tmp) / "bench.db", *extra)
        try:
            healthy = history(server)
            probe = Probe(server, healthy)
            try:
                seen = attack(server, args)
            except Exception as e:  # an attack that breaks the server is a result too
                seen = f"attack failed: {type(e).__name__}: {str(e)[:120]}"
            time.sleep(0.5)
            latency = probe.stop()
            if server.process.poll() is not None:
                seen += f"; server exited {server.process.returncode}"
            return latency, server.peak_rss_mb, seen
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=str(ROOT / "target" / "release" / "pytest-mcp"))
    parser.add_argument("--baseline", help="a second binary (an earlier build) to pair against")
    parser.add_argument("--only", help="comma-separated attacks: " + ",".join(ATTACKS))
    parser.add_argument("--big-failures", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--hold", type=float, default=12.0, help="seconds idle connections are held")
    parser.add_argument("--text-sessions", type=int, default=20)
    parser.add_argument("--initializes", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--small-messages", type=int, default=100_000)
    parser.add_argument("--small-per-stream", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    binaries = [("this", args.bin)] + ([("baseline", args.baseline)] if args.baseline else [])
    names = args.only.split(",") if args.only else list(ATTACKS)
    rows = []
    for name in names:
        for label, binary in binaries:
            print(f"... {name} against {label}", file=sys.stderr, flush=True)
            latency, rss, seen = run(binary, name, args)
            rows.append((name, label, latency, f"{rss:.0f}", seen))

    header = ("attack", "binary", "healthy GetSession p50 / max ms", "peak RSS MB", "what the attack saw")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    print()
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    print()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores; server binaries: " + ", ".join(f"{l}={b}" for l, b in binaries))
    print("rerun: .venv/bin/python bench/hostile.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
