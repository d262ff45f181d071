#!/usr/bin/env python3
"""What recording dependencies (``pytest --mcp --mcp-deps``) costs a real suite.

Runs one project's test suite in three variants, in rounds with a rotating
order (after one warm-up round that is not counted), so drift in the
machine's load touches every variant alike:

    bare   pytest                       (the plugin loaded and idle)
    mcp    pytest --mcp                 (results recorded, no dependencies)
    deps   pytest --mcp --mcp-deps      (results and dependencies recorded)

Recording goes to an address nothing listens on, so the results land in a
spool file, which is read after each ``deps`` run for the units per test.
The table shows the median wall-clock and CPU time (user + system of the
pytest process, which a busy machine disturbs less) of each variant, their
ratios to ``bare`` (medians of the per-round ratios, each round's variants
run back to back), and units per test. It never fails on a slow result.

The suite's Python needs pytest, grpcio and protobuf, the project installed
(editable, so its code is under rootdir) with its test dependencies; the
plugin is taken from this checkout (PYTHONPATH) unless the venv has it:

    python3.12 -m venv /tmp/v312 && /tmp/v312/bin/pip install pytest grpcio protobuf
    /tmp/v312/bin/pip download --no-binary :all: --no-deps click -d /tmp && tar xzf /tmp/click-*.tar.gz -C /tmp
    /tmp/v312/bin/pip install -e /tmp/click-*/
    python3 bench/deps_overhead.py --python /tmp/v312/bin/python --project /tmp/click-8.5.1 --rounds 5

Extra pytest arguments follow ``--`` (default: none; the project's own
configuration picks the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("bare", "mcp", "deps")
SPOOL_LINE = re.compile(r"spooled to (\S+\.jsonl)")


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def plugin_installed(python: str) -> bool:
    done = subprocess.run(
        [python, "-c", "import importlib.metadata as m; "
         "print(any(e.name == 'mcp' for e in m.entry_points(group='pytest11')))"],
        capture_output=True, text=True,
    )
    return done.stdout.strip() == "True"


def run(python: str, project: Path, variant: str, extra: List[str], env: Dict[str, str]):
    args = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--no-header", *extra]
    spool = None
    if variant != "bare":
        spool = tempfile.mkdtemp(prefix="deps-bench-")
        args += ["--mcp", f"--mcp-address={dead_address()}", f"--mcp-spool={spool}", "--mcp-timeout=0.5"]
    if variant == "deps":
        args.append("--mcp-deps")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):
        sys.exit(f"{variant}: pytest exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    units = None
    if variant == "deps":
        match = SPOOL_LINE.search(done.stdout + done.stderr)
        if match is None:
            sys.exit(f"deps: no spool file named in:\n{done.stdout[-3000:]}")
        counts = []
        for line in Path(match.group(1)).read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            if obj["type"] == "outcome" and obj.get("deps") is not None:
                counts.append(len(obj["deps"]))
        units = (statistics.median(counts) if counts else 0, len(counts))
    return elapsed, cpu, units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="the suite's Python")
    parser.add_argument("--project", required=True, type=Path, help="the suite's rootdir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="pytest arguments (after --)")
    options = parser.parse_args()
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    if not plugin_installed(options.python):
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "python-plugin" / "src"), env.get("PYTHONPATH")) if p)
        env["PYTEST_PLUGINS"] = "pytest_mcp.plugin"
    version = subprocess.run([options.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    wall: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    cpu: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    wall_ratio: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    cpu_ratio: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    units: Optional[tuple] = None
    for round_index in range(options.rounds + 1):
        order = VARIANTS[round_index % 3:] + VARIANTS[:round_index % 3]
        this_round: Dict[str, tuple] = {}
        for variant in order:
            elapsed, spent, found = run(options.python, options.project, variant, options.extra, env)
            this_round[variant] = (elapsed, spent)
            if found is not None:
                units = found
        if round_index == 0:
            continue  # warm-up: caches, .pyc files
        for variant in VARIANTS:
            wall[variant].append(this_round[variant][0])
            cpu[variant].append(this_round[variant][1])
            wall_ratio[variant].append(this_round[variant][0] / this_round["bare"][0])
            cpu_ratio[variant].append(this_round[variant][1] / this_round["bare"][1])
        print(f"round {round_index}: " + ", ".join(
            f"{v} {this_round[v][0]:.2f}s ({this_round[v][1]:.2f}s cpu)" for v in order), file=sys.stderr)
    print(f"{options.project.name} on Python {version}, {options.rounds} rounds (medians)")
    print(f"{'variant':<8} {'wall s':>8} {'x bare':>8} {'cpu s':>8} {'x bare':>8}")
    for variant in VARIANTS:
        print(f"{variant:<8} {statistics.median(wall[variant]):>8.2f} "
              f"{statistics.median(wall_ratio[variant]):>8.3f} "
              f"{statistics.median(cpu[variant]):>8.2f} {statistics.median(cpu_ratio[variant]):>8.3f}")
    if units is not None:
        print(f"units per test (median): {units[0]:g} over {units[1]} outcomes")
    print(f"rerun: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
