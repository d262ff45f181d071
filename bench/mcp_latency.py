#!/usr/bin/env python3
"""MCP read latency of every read tool over streamable HTTP, on a database
that holds the history a team lives with; and how long pruning it takes.

What it does:

1. Builds (or reuses) a database of 200 runs of one suite of 10,000 tests
   (2,000,000 outcomes), each run its own session and in its own order:
   - 93 % of the tests always pass; 2 % fail in seven runs out of ten with a
     pytest-like traceback of a few KB and captured output (flaky by any
     measure); 1 % always error in setup; 3 % are skipped; 1 % xfail;
   - every two runs share a git commit, so a test that passed and failed on
     one commit is flaky by the same-commit rule too.
   The data is written as a spool file (docs/spool.md) and loaded with
   `pytest-mcp import`; a `*.params.json` file beside the database records the
   sizes, so a later run with the same sizes reuses it (`--rebuild` forces a
   new one).
2. Builds the release binary (`cargo build --release --locked`, skip with
   `--no-build`) and starts `pytest-mcp serve` on free loopback ports.
3. Opens one MCP session with a lean client (the standard library's
   http.client: one keep-alive connection, `initialize` once, the
   `Mcp-Session-Id` reused), warms each tool up, then times `--calls` calls
   of each read tool, one after the other: `list_sessions`, `get_session`,
   `get_failures`, `get_test_history` (of a flaky test and of a test that
   always passes), `find_flaky_tests`, `compare_sessions` and
   `slowest_tests`, `get_failure_clusters` and `duration_regressions`, with
   the arguments an agent sends most (the defaults).
   A call is timed from sending the request to having read the whole
   response; decoding and checking the answer happen outside the timed span.
   Every answer is checked against what the generator knows (counts,
   verdicts, the flaky tests, the session compared), so an error response
   cannot pass as a fast one.
4. Times `pytest-mcp prune --keep-sessions 10` on a copy of the first 40 runs
   (400,000 outcomes), and prints the file size before and after.
5. Prints p50 / p99 / max per tool, whether p99 is under the target, the
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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNS = 200
SUITE = 10_000
PRUNE_RUNS = 40
PRUNE_KEEP = 10
PROTOCOL_VERSION = "2025-11-25"
TARGET_P99_MS = 20.0
FLAKY_WINDOW = 30  # find_flaky_tests' default
HISTORY_WINDOW = 50  # get_test_history's default

# Fixed ids, so a reused database is found again.
NAMESPACE = uuid.UUID("6d0c3f1e-2b7a-4e38-9a51-0c7f3b1e9d42")

CLASSES = ["TestThing", "TestApi", "TestModels", "TestSerializer", "TestCache", "TestAuthFlow",
           "TestQueryBuilder", "TestMigrations"]
NAMES = ["test_case", "test_roundtrip", "test_rejects_bad_input", "test_handles_empty",
         "test_paginates", "test_retries_on_timeout", "test_default_values", "test_unicode_names"]
PARAMS = ["sqlite", "postgres", "utf8", "large"]
SKIPS = ["requires postgres", "not supported on this platform", "slow test, use --runslow",
         "network access disabled"]


def session_id(run: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"run-{run}"))


def commit_of(run: int) -> str:
    return f"{run // 2:040x}"


def suite() -> list[tuple[str, str, int, str]]:
    """(nodeid, file, line, kind) of every test; kind is pass, flaky, error, skip or xfail."""
    rng = random.Random(20261201)
    tests = []
    for i in range(SUITE):
        module, position = divmod(i, 250)
        file = f"tests/pkg_{module // 100:02}/test_mod_{module % 100:03}.py"
        cls = CLASSES[(position // 32) % len(CLASSES)]
        name = NAMES[(position // 4) % len(NAMES)]
        nodeid = f"{file}::{cls}::{name}[{PARAMS[position % 4]}-{position}]"
        roll = rng.randrange(1000)
        kind = ("pass" if roll < 930 else "flaky" if roll < 950 else "skip" if roll < 980
                else "xfail" if roll < 990 else "error")
        tests.append((nodeid, file, 10 + (position // 4) * 12, kind))
    return tests


def fails(run: int, test: int) -> bool:
    """Whether a flaky test fails in a run: seven runs out of ten, fixed by (run, test)."""
    return random.Random(run * 1_000_003 + test).randrange(10) < 7


def traceback_text(rng: random.Random, nodeid: str, line: int) -> tuple[str, str]:
    """A pytest-style long traceback of a few KB and its one-line message."""
    path, _, func = nodeid.partition("::")
    expected, got = rng.randint(1, 500), rng.randint(501, 999)
    message = f"AssertionError: assert {got} == {expected}"
    frames = []
    for depth in range(5):
        body = "\n".join(
            f"    {'>' if k == 3 else ' '}   value = client.fetch_{k}(order_id={expected + k}, "
            f"retries={k}, timeout=5.0)" for k in range(10))
        frames.append(f"\n{body}\n\norder_id    = {expected}\nattempt     = {depth}\n\n"
                      f"{path if depth == 0 else 'src/shop/api/client.py'}:{line + depth * 17}: in fetch")
    text = "\n".join(frames) + f"\nE   {message}\n\n{path}:{line}: AssertionError"
    return text, message


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def environment(run: int) -> dict:
    return {"os": "Linux-6.8.0-x86_64-with-glibc2.39", "python_version": "3.12.7",
            "python_implementation": "CPython", "pytest_version": "8.3.4",
            "plugins": ["xdist-3.6.1", "randomly-3.15.0", "mcp-0.1.0"], "hostname": "ci-runner-07",
            "rootdir": "/home/ci/work/shop", "project": "shop", "invocation_args": ["-p", "randomly"],
            "git_commit": commit_of(run), "git_branch": "main", "git_dirty": False,
            "ci_provider": "github-actions", "xdist_workers": 0, "extra": {}}


def write_spool(path: Path, runs: int) -> None:
    """Writes `runs` runs of the suite as a spool file, oldest first, an hour apart."""
    tests = suite()
    rng = random.Random(1)
    first = datetime(2026, 6, 1, tzinfo=timezone.utc)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with path.open("w", encoding="utf-8") as f:
        for run in range(runs):
            sid = session_id(run)
            start = first + timedelta(hours=run)
            f.write(dumps({"type": "start", "session_id": sid, "started_at": rfc3339(start),
                           "environment": environment(run)}) + "\n")
            order = list(range(SUITE))
            random.Random(run).shuffle(order)
            counts = dict.fromkeys(("passed", "failed", "skipped", "errors", "xfailed"), 0)
            lines = []
            for seq, t in enumerate(order, 1):
                nodeid, file, line, kind = tests[t]
                record = {"type": "outcome", "session_id": sid, "seq": seq, "nodeid": nodeid,
                          "outcome": "passed", "phase": "call",
                          "duration": round(0.0002 + rng.random() ** 4 * 0.5, 6),
                          "file": file, "line": line, "markers": ["parametrize"],
                          "started_at": rfc3339(start + timedelta(milliseconds=seq * 2))}
                if (kind == "flaky" and fails(run, t)) or kind == "error":
                    record["longrepr"], record["message"] = traceback_text(rng, nodeid, line)
                    record["stdout"] = f"request id {rng.getrandbits(48)}\nresponse status 500\n"
                    if kind == "error":
                        record["outcome"], record["phase"] = "error", "setup"
                        counts["errors"] += 1
                    else:
                        record["outcome"] = "failed"
                        counts["failed"] += 1
                elif kind == "skip":
                    record["outcome"], record["phase"] = "skipped", "setup"
                    record["message"] = SKIPS[t % len(SKIPS)]
                    counts["skipped"] += 1
                elif kind == "xfail":
                    record["outcome"], record["message"] = "xfailed", f"reason: known bug #{t}"
                    counts["xfailed"] += 1
                else:
                    counts["passed"] += 1
                lines.append(dumps(record))
            f.write("\n".join(lines) + "\n")
            f.write(dumps({"type": "finish", "session_id": sid, "outcomes_sent": SUITE,
                           "finished_at": rfc3339(start + timedelta(minutes=20)),
                           "summary": {"total_tests": SUITE, **counts, "xpassed": 0,
                                       "exitstatus": 1, "duration": 1200.0}}) + "\n")


def data_params(runs: int) -> dict:
    return {"runs": runs, "suite": SUITE, "format": 3}


def ensure_database(binary: Path, db: Path, runs: int, rebuild: bool) -> str:
    """Builds the database unless one with the same sizes exists; says which."""
    marker = db.with_name(db.name + ".params.json")
    if not rebuild and db.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == data_params(runs):
                return "reused"
        except ValueError:
            pass
    for p in [db, marker, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]:
        p.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "bench.jsonl"
        t0 = time.monotonic()
        write_spool(spool, runs)
        t1 = time.monotonic()
        subprocess.run([str(binary), "import", "--db", str(db), str(spool)], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        t2 = time.monotonic()
    marker.write_text(json.dumps(data_params(runs), indent=1))
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
# What the generator knows, to check every answer: a fast error must not pass
# as a fast answer


class Expected:
    def __init__(self) -> None:
        self.tests = suite()
        self.flaky = [t for t, (_, _, _, k) in enumerate(self.tests) if k == "flaky"]
        self.errors = [t for t, (_, _, _, k) in enumerate(self.tests) if k == "error"]
        self.passer = next(t for t, (_, _, _, k) in enumerate(self.tests) if k == "pass")
        self.latest = RUNS - 1

    def failing(self, run: int) -> set[int]:
        return {t for t in self.flaky if fails(run, t)} | set(self.errors)

    def flaky_in_window(self, window: int) -> set[str]:
        """The tests find_flaky_tests must report, by the store's own rules."""
        runs = range(max(0, RUNS - window), RUNS)
        found = set()
        for t in self.flaky:
            seq = [fails(r, t) for r in runs]
            if not any(seq):
                continue
            # Flaky: passed and failed on the same code (each run is on a
            # clean checkout of its commit, so the commit is its code state).
            by_commit: dict[str, set[bool]] = {}
            for r, f in zip(runs, seq):
                by_commit.setdefault(commit_of(r), set()).add(f)
            if any(len(v) == 2 for v in by_commit.values()):
                found.add(self.tests[t][0])
        return found


def check_list_sessions(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]["sessions"]
    assert s and s[0]["id"] == session_id(e.latest), s[:1]
    assert all(x["outcomes_stored"] == SUITE for x in s), "a listed session is not complete"


def check_get_session(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]["session"]
    assert s["id"] == session_id(e.latest) and s["outcomes_stored"] == SUITE, s
    failing = e.failing(e.latest)
    assert s["counts"]["failed"] + s["counts"]["errors"] == len(failing), s["counts"]


def check_failures(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["session"]["id"] == session_id(e.latest), s["session"]["id"]
    failing = e.failing(e.latest)
    assert s["total_failures"] == len(failing), (s["total_failures"], len(failing))
    names = {e.tests[t][0] for t in failing}
    assert s["failures"] and all(f["nodeid"] in names for f in s["failures"]), "a listed failure did not fail"
    for f in s["failures"]:
        assert len(f["traceback"]) > 1000 and "\nE   " in f["traceback"], f["traceback"][:200]
    assert s["rerun_command"].startswith("pytest "), s["rerun_command"]
    assert s["next_cursor"], "a session with this many failures has a next page"


def check_history(e: Expected, t: int, verdict: str, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["nodeid"] == e.tests[t][0], s["nodeid"]
    st = s["stability"]
    assert st["runs"] == HISTORY_WINDOW, st
    newest = range(RUNS - HISTORY_WINDOW, RUNS)
    expected_failed = sum(fails(r, t) for r in newest) if verdict == "flaky" else 0
    assert st["failed"] == expected_failed, (st, expected_failed)
    assert st["verdict"] == verdict, st
    entries = s["entries"]
    expected = [session_id(RUNS - 1 - k) for k in range(len(entries))]
    assert entries and [x["session_id"] for x in entries] == expected, "history is not newest first"
    assert s["next_cursor"], "200 sessions do not fit one page"


def check_flaky(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    expected = e.flaky_in_window(FLAKY_WINDOW)
    assert s["window_sessions"] == FLAKY_WINDOW, s["window_sessions"]
    assert s["total"] == len(expected), (s["total"], len(expected))
    assert s["tests"] and all(x["nodeid"] in expected for x in s["tests"]), "a listed test is not flaky"
    assert all(x["stability"]["verdict"] == "flaky" for x in s["tests"])


def check_compare(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["head"]["id"] == session_id(e.latest), s["head"]["id"]
    assert s["base"]["id"] == session_id(e.latest - 1), s["base"]["id"]
    head, base = e.failing(e.latest), e.failing(e.latest - 1)
    c = s["counts"]
    assert c["new_failures"] == len(head - base), (c, len(head - base))
    assert c["fixed"] == len(base - head), (c, len(base - head))
    assert c["still_failing"] == len(head & base), (c, len(head & base))
    assert c["added"] == c["removed"] == 0, c


def check_clusters(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["session"]["id"] == session_id(e.latest)
    failing = e.failing(e.latest)
    assert s["failures"] == len(failing), (s["failures"], len(failing))
    # The generated tracebacks end in the test's own file with the same
    # message shape, so a cause is an AssertionError in one test function.
    causes: dict[tuple[str, str], int] = {}
    for t in failing:
        nodeid = e.tests[t][0]
        key = (nodeid.split("::")[0], nodeid.split("::")[-1].split("[")[0])
        causes[key] = causes.get(key, 0) + 1
    assert s["clusters_total"] == len(causes), (s["clusters_total"], len(causes))
    sizes = [c["failures"] for c in s["clusters"]]
    assert sizes == sorted(causes.values(), reverse=True)[:len(sizes)], sizes
    assert all(c["exception"] == "AssertionError" and c["message"] == "assert <n> == <n>"
               for c in s["clusters"]), s["clusters"][0]["cause"]


def check_regressions(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["session"]["id"] == session_id(e.latest)
    assert s["baseline_sessions"] == 10, s["baseline_sessions"]
    for r in s["slower"]:
        assert r["duration"] > 3 * r["median"] and r["duration"] - r["median"] > 0.25, r


def check_slowest(e: Expected, result: dict) -> None:
    assert not result.get("isError"), result
    s = result["structuredContent"]
    assert s["session"]["id"] == session_id(e.latest)
    durations = [t["duration"] for t in s["tests"]]
    assert len(durations) == 10 and durations == sorted(durations, reverse=True), durations


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
        kind = next((k for k in ("failures", "entries", "sessions", "tests", "new_failures", "clusters",
                                 "slower") if isinstance(s.get(k), list)), "")
        answer = (f"{len(s[kind])} {kind.replace('_', ' ')}, " if kind else "") + f"{len(data) / 1024:.1f} KB"
    return sorted(times), answer


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def time_prune(binary: Path, source: Path) -> str:
    """Times `prune --keep-sessions 10` on a copy of `source`; one line of figures."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "prune.db"
        shutil.copy(source, db)
        before = db.stat().st_size
        t0 = time.monotonic()
        done = subprocess.run([str(binary), "prune", "--db", str(db), "--keep-sessions", str(PRUNE_KEEP)],
                              capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
        elapsed = time.monotonic() - t0
        if done.returncode != 0:
            raise SystemExit(f"prune failed: {done.stderr}")
        after = db.stat().st_size
        last = done.stdout.strip().splitlines()[-1]
    return (f"prune --keep-sessions {PRUNE_KEEP} of {PRUNE_RUNS} runs ({PRUNE_RUNS * SUITE:,} outcomes): "
            f"{elapsed:.2f} s wall, file {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB; it said: {last}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, default=ROOT / "target" / "bench" / "mcp_latency.db",
                    help="database to build or reuse (default: %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="build the databases even if they exist")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "pytest-mcp",
                    help="server binary (default: %(default)s)")
    ap.add_argument("--no-build", action="store_true", help="skip `cargo build --release`")
    ap.add_argument("--no-prune", action="store_true", help="skip timing prune")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured calls per tool first")
    ap.add_argument("--calls", type=int, default=200, help="measured calls per tool")
    args = ap.parse_args()
    if args.calls < 1 or args.warmup < 0:
        ap.error("--calls must be at least 1 and --warmup at least 0")

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    if not args.bin.exists():
        raise SystemExit(f"no binary at {args.bin}")
    db_state = ensure_database(args.bin, args.db, RUNS, args.rebuild)
    e = Expected()
    # A test the store must call flaky over the history's window.
    flaky_test = next(t for t in e.flaky
                      if e.tests[t][0] in e.flaky_in_window(HISTORY_WINDOW))
    tools = [
        ("list_sessions", {}, lambda r: check_list_sessions(e, r)),
        ("get_session", {}, lambda r: check_get_session(e, r)),
        ("get_failures", {}, lambda r: check_failures(e, r)),
        ("get_test_history", {"nodeid": e.tests[flaky_test][0]},
         lambda r: check_history(e, flaky_test, "flaky", r)),
        ("get_test_history", {"nodeid": e.tests[e.passer][0]},
         lambda r: check_history(e, e.passer, "passing", r)),
        ("find_flaky_tests", {}, lambda r: check_flaky(e, r)),
        ("compare_sessions", {}, lambda r: check_compare(e, r)),
        ("slowest_tests", {}, lambda r: check_slowest(e, r)),
        ("get_failure_clusters", {}, lambda r: check_clusters(e, r)),
        ("duration_regressions", {}, lambda r: check_regressions(e, r)),
    ]

    server = Server(args.bin, args.db)
    try:
        client = McpHttp(server.url)
        info = client.initialize()
        load_before = loadavg()
        results = [(name, arguments, *measure(client, name, arguments, check, args.warmup, args.calls))
                   for name, arguments, check in tools]
        load_after = loadavg()
        client.close()
    finally:
        server.stop()
    prune_line = None
    if not args.no_prune:
        prune_db = args.db.with_name(args.db.stem + f"_{PRUNE_RUNS}runs.db")
        ensure_database(args.bin, prune_db, PRUNE_RUNS, args.rebuild)
        prune_line = time_prune(args.bin, prune_db)

    cmd = [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable,
           "bench/mcp_latency.py", *sys.argv[1:]]
    size = args.db.stat().st_size / 2**20
    print(f"MCP latency over streamable HTTP: {info['serverInfo']['name']} "
          f"{info['serverInfo'].get('version', '')}, protocol {info['protocolVersion']}")
    print(f"database: {args.db} ({db_state}, {size:.0f} MiB); {RUNS} runs of a {SUITE:,}-test suite "
          f"({RUNS * SUITE:,} outcomes), each in its own order")
    print(f"machine: {os.cpu_count()} cores; load average before {load_before}, after {load_after}")
    print(f"client: http.client, one keep-alive connection, one MCP session; "
          f"{args.warmup} warm-up + {args.calls} measured calls per tool, sequential")
    print()
    print(f"| tool | arguments | answer | calls | p50 ms | p99 ms | max ms | p99 < {TARGET_P99_MS:g} ms |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    all_met = True
    for name, arguments, times, answer in results:
        p99 = percentile(times, 99)
        met = p99 < TARGET_P99_MS
        all_met &= met
        print(f"| `{name}` | `{json.dumps(arguments)}` | {answer} | {len(times)} | "
              f"{percentile(times, 50):.2f} | {p99:.2f} | {times[-1]:.2f} | {'met' if met else 'NOT met'} |")
    print()
    print(f"target p99 < {TARGET_P99_MS:g} ms for every read tool: {'met' if all_met else 'NOT met'}")
    if prune_line:
        print(prune_line)
    print(f"rerun: {shlex.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
