#!/usr/bin/env python3
"""MCP read latency of `get_failures` and `get_test_history` over streamable HTTP.

What it does:

1. Builds (or reuses) a database with
   - one session of 100,000 outcomes, 1,000 of them failures and errors with
     pytest-like tracebacks of a few KB each;
   - 1,000 older sessions that each contain the test `HISTORY_NODEID`, failing
     in one run in five, so `get_test_history` computes a verdict (flaky) over
     its window.
   The data is written as a spool file (docs/spool.md) and loaded with
   `pytest-mcp import`; a `*.params.json` file beside the database records the
   sizes, so a later run with the same sizes reuses it (`--rebuild` forces a new one).
2. Builds the release binary (`cargo build --release --locked`, skip with
   `--no-build`) and starts `pytest-mcp serve` on free loopback ports.
3. Opens one MCP session with a lean client (the standard library's
   http.client: one keep-alive connection, `initialize` once, the
   `Mcp-Session-Id` reused), warms each tool up, then times `--calls` calls
   of each, one after the other. A call is timed from sending the request to
   having read the whole response; decoding and checking the answer happen
   outside the timed span. Every answer is checked (not an error; failures
   carry tracebacks; the history spans the sessions and has a verdict), so
   an error response cannot pass as a fast one.
4. Prints p50 / p99 / max per tool, whether p99 is under the target, the
   load average before and after, and the command to rerun it.

Latency on a shared machine is noisy: compare runs by their load average.

Rerun: .venv/bin/python bench/mcp_latency.py   (--help for options)
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BIG_OUTCOMES = 100_000
BIG_FAILURES = 1_000
HISTORY_SESSIONS = 1_000
# Outcomes of each history session besides the tracked test.
HISTORY_OTHER_TESTS = 9
HISTORY_NODEID = "tests/api/test_auth.py::test_login_refreshes_token[postgres]"
PROTOCOL_VERSION = "2025-11-25"
TARGET_P99_MS = 20.0

# Fixed ids, so a reused database is found again.
NAMESPACE = uuid.UUID("6d0c3f1e-2b7a-4e38-9a51-0c7f3b1e9d42")
BIG_SESSION = uuid.uuid5(NAMESPACE, "big-session")


def history_session(i: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"history-{i}")


def history_fails(i: int) -> bool:
    """Whether the tracked test fails in history session `i` (0 = oldest)."""
    return i % 5 == 2


# --------------------------------------------------------------------------
# Data


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def environment(project: str, commit: str) -> dict:
    return {
        "os": "Linux-6.8.0-x86_64-with-glibc2.39",
        "python_version": "3.12.7",
        "python_implementation": "CPython",
        "pytest_version": "8.3.4",
        "plugins": ["xdist-3.6.1", "cov-5.0.0", "mcp-0.1.0"],
        "hostname": "ci-runner-07",
        "rootdir": "/home/ci/work/shop",
        "project": project,
        "invocation_args": ["-n", "4", "-q", "tests"],
        "git_commit": commit,
        "git_branch": "main",
        "git_dirty": False,
        "ci_provider": "github-actions",
        "xdist_workers": 4,
        "extra": {},
    }


def traceback_text(rng: random.Random, nodeid: str, line: int) -> tuple[str, str]:
    """A pytest-style long traceback of a few KB and its one-line message."""
    path, _, func = nodeid.partition("::")
    func = func.split("[")[0]
    expected, got = rng.randint(1, 500), rng.randint(501, 999)
    message = rng.choice(
        [
            f"AssertionError: assert {got} == {expected}",
            f"KeyError: 'order_{expected}'",
            f"ValueError: invalid literal for int() with base 10: 'x{got}'",
            "TimeoutError: timed out after 5.0s waiting for the worker",
        ]
    )
    frames = []
    helper_files = ["src/shop/orders.py", "src/shop/db/session.py", "src/shop/api/client.py",
                    "src/shop/cache.py", "src/shop/payments/gateway.py"]
    for depth in range(rng.randint(3, 8)):
        file = path if depth == 0 else rng.choice(helper_files)
        fn = func if depth == 0 else rng.choice(["fetch", "commit", "_request", "load", "charge", "apply"])
        body = "\n".join(
            f"    {'>' if k == 3 else ' '}   {rng.choice(['result', 'row', 'resp', 'value'])} = "
            f"{rng.choice(['self', 'client', 'session', 'cache'])}.{fn}_{k}(order_id={expected + k}, "
            f"retries={k}, timeout={rng.random():.2f})"
            for k in range(rng.randint(6, 14))
        )
        locals_ = "\n".join(
            f"{name}    = {value!r}"
            for name, value in [("order_id", expected), ("attempt", depth), ("payload", {"sku": f"SKU-{got}", "qty": depth + 1})]
        )
        frames.append(
            f"{'' if depth == 0 else '_' * 20 + ' ' + fn + ' ' + '_' * 20 + chr(10)}"
            f"\n{body}\n\n{locals_}\n\n{file}:{line + depth * 17}: in {fn}"
        )
    text = "\n".join(frames) + f"\nE   {message}\nE    +  where {got} = len([...])\n\n{path}:{line}: {message.split(':')[0]}"
    return text, message


def write_spool(path: Path) -> None:
    """Writes the benchmark's sessions as a spool file."""
    rng = random.Random(20261124)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with path.open("w", encoding="utf-8") as f:
        def put(record: dict) -> None:
            f.write(json.dumps(record, separators=(",", ":")))
            f.write("\n")

        # History sessions, oldest first, one hour apart, ending before the big one.
        first = now - timedelta(hours=HISTORY_SESSIONS + 1)
        for i in range(HISTORY_SESSIONS):
            sid = str(history_session(i))
            start = first + timedelta(hours=i)
            put({"type": "start", "session_id": sid, "started_at": rfc3339(start),
                 "environment": environment("shop", f"{i:040x}")})
            counts = {"passed": 0, "failed": 0}
            for seq in range(1, HISTORY_OTHER_TESTS + 2):
                if seq == 1:
                    nodeid, failed = HISTORY_NODEID, history_fails(i)
                else:
                    nodeid, failed = f"tests/api/test_auth.py::test_case_{seq}", False
                record = {"type": "outcome", "session_id": sid, "seq": seq, "nodeid": nodeid,
                          "outcome": "failed" if failed else "passed", "phase": "call",
                          "duration": round(0.05 + rng.random() * 0.2, 4),
                          "file": "tests/api/test_auth.py", "line": 10 + seq * 12,
                          "worker": f"gw{seq % 4}", "attempt": 1,
                          "started_at": rfc3339(start + timedelta(seconds=seq))}
                if failed:
                    record["longrepr"], record["message"] = traceback_text(rng, nodeid, 42)
                    counts["failed"] += 1
                else:
                    counts["passed"] += 1
                put(record)
            n = HISTORY_OTHER_TESTS + 1
            put({"type": "finish", "session_id": sid, "outcomes_sent": n,
                 "finished_at": rfc3339(start + timedelta(minutes=5)),
                 "summary": {"total_tests": n, **counts, "skipped": 0, "errors": 0,
                             "xfailed": 0, "xpassed": 0,
                             "exitstatus": 1 if counts["failed"] else 0, "duration": 300.0}})

        # The big session: every hundredth outcome failed (every tenth of those in setup).
        sid = str(BIG_SESSION)
        start = now - timedelta(minutes=30)
        put({"type": "start", "session_id": sid, "started_at": rfc3339(start),
             "environment": environment("shop", "f" * 40)})
        step = BIG_OUTCOMES // BIG_FAILURES
        counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
        for seq in range(1, BIG_OUTCOMES + 1):
            module = seq // 250
            nodeid = f"tests/pkg_{module // 20}/test_module_{module}.py::test_behaviour_{seq % 250}[case-{seq % 7}]"
            record = {"type": "outcome", "session_id": sid, "seq": seq, "nodeid": nodeid,
                      "phase": "call", "duration": round(rng.expovariate(20.0), 5),
                      "file": nodeid.split("::")[0], "line": 10 + (seq % 250) * 9,
                      "worker": f"gw{seq % 4}", "attempt": 1,
                      "started_at": rfc3339(start + timedelta(milliseconds=seq * 15))}
            if seq % step == 0:
                error = (seq // step) % 10 == 0
                record["outcome"] = "error" if error else "failed"
                record["phase"] = "setup" if error else "call"
                record["longrepr"], record["message"] = traceback_text(rng, nodeid, record["line"])
                record["stdout"] = f"connecting to postgres://localhost/shop_test_{seq}\n" * 3
                record["log"] = f"WARNING shop.db:session.py:88 slow query ({seq % 900} ms)\n"
                counts["errors" if error else "failed"] += 1
            elif seq % 97 == 0:
                record["outcome"] = "skipped"
                record["message"] = "Skipped: needs redis"
                counts["skipped"] += 1
            else:
                record["outcome"] = "passed"
                counts["passed"] += 1
            put(record)
        put({"type": "finish", "session_id": sid, "outcomes_sent": BIG_OUTCOMES,
             "finished_at": rfc3339(start + timedelta(minutes=25)),
             "summary": {"total_tests": BIG_OUTCOMES, **counts, "xfailed": 0, "xpassed": 0,
                         "exitstatus": 1, "duration": 1500.0}})


def data_params() -> dict:
    return {"big_outcomes": BIG_OUTCOMES, "big_failures": BIG_FAILURES,
            "history_sessions": HISTORY_SESSIONS, "history_other_tests": HISTORY_OTHER_TESTS,
            "history_nodeid": HISTORY_NODEID, "big_session": str(BIG_SESSION), "format": 1}


def ensure_database(binary: Path, db: Path, rebuild: bool) -> str:
    """Builds the database unless one with the same sizes exists; says which."""
    marker = db.with_name(db.name + ".params.json")
    if not rebuild and db.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == data_params():
                return "reused"
        except ValueError:
            pass
    for p in [db, marker, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]:
        p.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "bench.jsonl"
        t0 = time.monotonic()
        write_spool(spool)
        t1 = time.monotonic()
        subprocess.run([str(binary), "import", "--db", str(db), str(spool)], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        t2 = time.monotonic()
    marker.write_text(json.dumps(data_params(), indent=1))
    return f"built (spool {t1 - t0:.1f} s, import {t2 - t1:.1f} s)"


# --------------------------------------------------------------------------
# Server


class Server:
    """A `pytest-mcp serve` on free loopback ports."""

    def __init__(self, binary: Path, db: Path) -> None:
        self.process = subprocess.Popen(
            [str(binary), "serve", "--db", str(db), "--grpc-addr", "127.0.0.1:0",
             "--http-addr", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "RUST_LOG": "warn"},
        )
        self.url = ""
        self.log: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line.rstrip("\n"))
                m = re.search(r"MCP HTTP listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or not self.url:
            self.stop()
            raise SystemExit("the server did not start:\n" + "\n".join(self.log))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------
# Lean MCP client


class McpHttp:
    """One MCP session over one keep-alive HTTP connection."""

    def __init__(self, url: str) -> None:
        m = re.fullmatch(r"http://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise SystemExit(f"unexpected MCP URL {url!r}")
        self.path = m.group(3)
        self.conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=30)
        self.headers = {"Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream"}
        self.next_id = 0

    def post(self, message: dict) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps(message).encode()
        self.conn.request("POST", self.path, body=body, headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def request_bytes(self, method: str, params: dict) -> tuple[int, bytes, str, str]:
        """Sends a request and returns (status, raw body, content type, id)."""
        self.next_id += 1
        rid = self.next_id
        status, headers, data = self.post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return status, data, headers.get("content-type", ""), str(rid)

    @staticmethod
    def decode(status: int, data: bytes, content_type: str, rid: str) -> dict:
        """The JSON-RPC response with id `rid` out of a JSON or SSE body."""
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:500]!r}")
        if content_type.startswith("application/json"):
            candidates = [json.loads(data)]
        else:
            candidates = []
            for event in data.decode().replace("\r\n", "\n").split("\n\n"):
                payload = "\n".join(l[5:].lstrip(" ") for l in event.split("\n") if l.startswith("data:"))
                if payload.strip():
                    candidates.append(json.loads(payload))
        for c in candidates:
            if str(c.get("id")) == rid:
                if "error" in c:
                    raise RuntimeError(f"JSON-RPC error: {c['error']}")
                return c["result"]
        raise RuntimeError(f"no response with id {rid} in {data[:500]!r}")

    def initialize(self) -> dict:
        self.next_id += 1
        rid = str(self.next_id)
        status, headers, data = self.post({
            "jsonrpc": "2.0", "id": self.next_id, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": "pytest-mcp-bench", "version": "1"}}})
        result = self.decode(status, data, headers.get("content-type", ""), rid)
        session = headers.get("mcp-session-id")
        if not session:
            raise RuntimeError("initialize answered without an Mcp-Session-Id")
        self.headers["Mcp-Session-Id"] = session
        self.headers["MCP-Protocol-Version"] = result["protocolVersion"]
        status, _, data = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if status not in (200, 202):
            raise RuntimeError(f"notifications/initialized: HTTP {status} {data[:200]!r}")
        return result

    def close(self) -> None:
        try:
            self.conn.request("DELETE", self.path, headers=self.headers)
            self.conn.getresponse().read()
        except OSError:
            pass
        self.conn.close()


# --------------------------------------------------------------------------
# Checks: a fast error must not pass as a fast answer


def check_failures(result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["session"]["id"] == str(BIG_SESSION), s["session"]
    assert s["session"]["outcomes_stored"] == BIG_OUTCOMES, s["session"]
    assert s["total_failures"] == BIG_FAILURES, s["total_failures"]
    assert s["failures"], "no failures returned"
    for f in s["failures"]:
        assert f["outcome"] in ("failed", "error"), f
        assert len(f["traceback"]) > 1000 and "\nE   " in f["traceback"], f["traceback"][:200]
    assert s["rerun_command"].startswith("pytest "), s["rerun_command"]
    assert all(f["nodeid"] in s["rerun_command"] for f in s["failures"]), s["rerun_command"]
    assert s["next_cursor"], "a session with 1,000 failures has a next page"


def check_history(result: dict, window: int) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["nodeid"] == HISTORY_NODEID
    st = s["stability"]
    window = min(window, HISTORY_SESSIONS)
    newest = range(HISTORY_SESSIONS - window, HISTORY_SESSIONS)
    assert st["runs"] == window, st
    assert st["failed"] == sum(history_fails(i) for i in newest), st
    assert st["verdict"] == "flaky", st
    entries = s["entries"]
    assert len(entries) >= 10, len(entries)
    expected = [str(history_session(HISTORY_SESSIONS - 1 - k)) for k in range(len(entries))]
    assert [e["session_id"] for e in entries] == expected, "history is not newest first"
    assert s["next_cursor"], "1,000 sessions do not fit one page"


# --------------------------------------------------------------------------
# Measurement


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, math.ceil(p / 100 * len(sorted_ms)) - 1)
    return sorted_ms[k]


def measure(client: McpHttp, name: str, arguments: dict, check, warmup: int,
            calls: int) -> tuple[list[float], str]:
    """Sorted latencies in ms, and what the last answer held."""
    params = {"name": name, "arguments": arguments}
    times: list[float] = []
    answer = ""
    for i in range(warmup + calls):
        t0 = time.perf_counter()
        status, data, ctype, rid = client.request_bytes("tools/call", params)
        elapsed = (time.perf_counter() - t0) * 1000
        result = client.decode(status, data, ctype, rid)
        check(result)
        if i >= warmup:
            times.append(elapsed)
        s = result["structuredContent"]
        items = s.get("failures", s.get("entries", []))
        answer = f"{len(items)} {'failures' if 'failures' in s else 'entries'}, {len(data) / 1024:.1f} KB"
    return sorted(times), answer


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, default=ROOT / "target" / "bench" / "mcp_latency.db",
                    help="database to build or reuse (default: %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="build the database even if it exists")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "pytest-mcp",
                    help="server binary (default: %(default)s)")
    ap.add_argument("--no-build", action="store_true", help="skip `cargo build --release`")
    ap.add_argument("--warmup", type=int, default=50, help="unmeasured calls per tool first")
    ap.add_argument("--calls", type=int, default=500, help="measured calls per tool")
    args = ap.parse_args()
    if args.calls < 1 or args.warmup < 0:
        ap.error("--calls must be at least 1 and --warmup at least 0")

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    if not args.bin.exists():
        raise SystemExit(f"no binary at {args.bin}")
    db_state = ensure_database(args.bin, args.db, args.rebuild)

    failures_args = {"session": str(BIG_SESSION)}
    history_args = {"nodeid": HISTORY_NODEID}
    history_window = 50  # the tool's default

    server = Server(args.bin, args.db)
    try:
        client = McpHttp(server.url)
        info = client.initialize()
        load_before = loadavg()
        results = {
            "get_failures": measure(client, "get_failures", failures_args, check_failures,
                                    args.warmup, args.calls),
            "get_test_history": measure(client, "get_test_history", history_args,
                                        lambda r: check_history(r, history_window),
                                        args.warmup, args.calls),
        }
        load_after = loadavg()
        client.close()
    finally:
        server.stop()

    cmd = [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable,
           "bench/mcp_latency.py", *sys.argv[1:]]
    print(f"MCP latency over streamable HTTP: {info['serverInfo']['name']} "
          f"{info['serverInfo'].get('version', '')}, protocol {info['protocolVersion']}")
    print(f"database: {args.db} ({db_state}); session of {BIG_OUTCOMES:,} outcomes with "
          f"{BIG_FAILURES:,} failures; {HISTORY_SESSIONS:,} sessions containing the tracked test")
    print(f"machine: {os.cpu_count()} cores; load average before {load_before}, after {load_after}")
    print(f"client: http.client, one keep-alive connection, one MCP session; "
          f"{args.warmup} warm-up + {args.calls} measured calls per tool, sequential")
    print()
    print(f"| tool | arguments | answer | calls | p50 ms | p99 ms | max ms | p99 < {TARGET_P99_MS:g} ms |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    all_met = True
    for (name, (times, answer)), arguments in zip(results.items(), [failures_args, history_args]):
        p99 = percentile(times, 99)
        met = p99 < TARGET_P99_MS
        all_met &= met
        shown = {k: ("<big session>" if v == str(BIG_SESSION) else v) for k, v in arguments.items()}
        print(f"| `{name}` | `{json.dumps(shown)}` | {answer} | {len(times)} | {percentile(times, 50):.2f} | "
              f"{p99:.2f} | {times[-1]:.2f} | {'met' if met else 'NOT met'} |")
    print()
    print(f"target p99 < {TARGET_P99_MS:g} ms for both: {'met' if all_met else 'NOT met'}")
    print(f"rerun: {shlex.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
