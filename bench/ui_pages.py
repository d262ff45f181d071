#!/usr/bin/env python3
"""How fast the web pages answer on a large session with history.

What it does:

1. Builds (or reuses) a database of 10 runs of one suite of 100,000 tests
   (1,000,000 outcomes; each session holds 100,000), each run in its own
   order, with the test mix of bench/mcp_latency.py (its generator, with a
   larger suite): 93 % pass, 2 % fail in seven runs out of ten with a
   traceback of a few KB, 1 % always error, 3 % skip, 1 % xfail.
2. Builds the release binary (skip with `--no-build`) and starts
   `pytest-mcp serve` on free loopback ports.
3. Over one keep-alive connection (the standard library's http.client),
   after warm-up requests, times `--requests` GETs of each page: the newest
   session's first page (its first 100 failures with their tracebacks, and
   the first 100 outcomes), that session filtered to its failures, the
   sessions list, a flaky test's page, flaky tests, compare, the grid and
   the trends. A request is timed from sending it to having read the whole
   body; each answer is checked to be the page asked for (status 200 and a
   marker of its content), so an error page cannot pass as a fast one.
4. Over MCP (one streamable HTTP session), times `get_failure_clusters` on
   that newest session, which has about 2,400 failures.
5. Prints p50 / p99 / max per page and whether the session's first page is
   under the target (200 ms), the clusters tool's p50 / p99 against its
   target (20 ms), the load average and the command to rerun it.

Rerun: .venv/bin/python bench/ui_pages.py   (--help for options)
"""

from __future__ import annotations

import argparse
import http.client
import os
import shlex
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mcp_latency as data  # noqa: E402  (the generator, the server and the helpers)

ROOT = data.ROOT
RUNS = 10
SUITE = 100_000
TARGET_MS = 200.0


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers={"Accept": "text/html"})
    reply = conn.getresponse()
    return reply.status, reply.read()


def measure(conn, path: str, marker: bytes, warmup: int, requests: int) -> tuple[list[float], int]:
    for _ in range(warmup):
        status, body = get(conn, path)
        if status != 200 or marker not in body:
            raise SystemExit(f"GET {path}: {status}, no {marker!r} in the page:\n{body[:2000]!r}")
    times = []
    size = 0
    for _ in range(requests):
        t0 = time.perf_counter()
        status, body = get(conn, path)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200 or marker not in body:
            raise SystemExit(f"GET {path}: {status}, no {marker!r} in the page")
        size = len(body)
    times.sort()
    return times, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, default=ROOT / "target" / "bench" / "ui_pages.db",
                    help="database to build or reuse (default: %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="build the database even if it exists")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "pytest-mcp",
                    help="server binary (default: %(default)s)")
    ap.add_argument("--no-build", action="store_true", help="skip `cargo build --release`")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured requests per page first")
    ap.add_argument("--requests", type=int, default=50, help="measured requests per page")
    args = ap.parse_args()
    if args.requests < 1 or args.warmup < 0:
        ap.error("--requests must be at least 1 and --warmup at least 0")

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    if not args.bin.exists():
        raise SystemExit(f"no binary at {args.bin}")
    data.SUITE = SUITE  # the generator reads it when it runs
    db_state = data.ensure_database(args.bin, args.db, RUNS, args.rebuild)

    tests = data.suite()
    newest = data.session_id(RUNS - 1)
    flaky = next(nodeid for nodeid, _, _, kind in tests if kind == "flaky")
    q = urllib.parse.quote
    pages = [
        ("session, first page", f"/sessions/{newest}", b"copy rerun command for all failures"),
        ("session, failures only", f"/sessions/{newest}?outcome=failed", b"<td><span class=\"status failed\">"),
        ("sessions list", "/", b"data-live-list"),
        ("a flaky test", f"/tests?nodeid={q(flaky, safe='')}", b"class=\"strip\""),
        ("flaky tests", "/flaky", b"flaky tests in the last"),
        ("compare", "/compare", b"New failures"),
        ("grid", "/grid?project=shop", b"class=\"grid\""),
        ("trends", "/trends?project=shop", b"svg class=\"chart\""),
    ]

    server = data.Server(args.bin, args.db)
    try:
        url = urllib.parse.urlsplit(server.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        load_before = data.loadavg()
        results = [(name, path, *measure(conn, path, marker, args.warmup, args.requests))
                   for name, path, marker in pages]
        conn.close()
        # The same session's causes over MCP: the failure-clusters tool on a
        # session with thousands of failures.
        mcp = data.McpHttp(server.url)
        mcp.initialize()

        def check_clusters(result: dict) -> None:
            assert not result.get("isError"), result
            got = result["structuredContent"]
            assert got["session"]["id"] == newest and got["failures"] > 1000, got["failures"]

        cluster_times, cluster_answer = data.measure(
            mcp, "get_failure_clusters", {}, check_clusters, args.warmup, args.requests)
        mcp.close()
        load_after = data.loadavg()
    finally:
        server.stop()

    cmd = [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable,
           "bench/ui_pages.py", *sys.argv[1:]]
    size = args.db.stat().st_size / 2**20
    print(f"web pages over HTTP: database {args.db} ({db_state}, {size:.0f} MiB); {RUNS} runs of a "
          f"{SUITE:,}-test suite ({RUNS * SUITE:,} outcomes), each in its own order")
    print(f"machine: {os.cpu_count()} cores; load average before {load_before}, after {load_after}")
    print(f"client: http.client, one keep-alive connection; {args.warmup} warm-up + "
          f"{args.requests} measured GETs per page, sequential, whole body read")
    print()
    print("| page | path | size | requests | p50 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, path, times, body in results:
        shown = path if len(path) <= 60 else path[:57] + "…"
        print(f"| {name} | `{shown}` | {body / 1024:.0f} KB | {len(times)} | "
              f"{data.percentile(times, 50):.1f} | {data.percentile(times, 99):.1f} | {times[-1]:.1f} |")
    first = results[0][2]
    p99 = data.percentile(first, 99)
    print()
    print(f"target: a session of {SUITE:,} outcomes renders its first page in under "
          f"{TARGET_MS:g} ms (p99 {p99:.1f} ms): {'met' if p99 < TARGET_MS else 'NOT met'}")
    c99 = data.percentile(cluster_times, 99)
    print(f"get_failure_clusters on that session over MCP ({cluster_answer}): "
          f"p50 {data.percentile(cluster_times, 50):.1f} ms, p99 {c99:.1f} ms "
          f"(target 20 ms: {'met' if c99 < 20 else 'NOT met'})")
    print(f"rerun: {shlex.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
