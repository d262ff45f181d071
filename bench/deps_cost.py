#!/usr/bin/env python3
"""What recording per-test dependencies (``pytest --mcp --mcp-deps``) costs a real suite,
next to bare pytest and the tools that record the same kind of thing.

For each real third-party suite (pinned sdists, see bench/_suites.py; the suite's own tests,
importing the unpacked tree) it runs, in interleaved rounds:

    bare       pytest
    mcp        pytest --mcp                  results only, for reference
    mcp-deps   pytest --mcp --mcp-deps       results and each test's dependencies (issue 23)
    testmon    pytest --testmon              pytest-testmon's first run: a fresh data file
                                             every time, so it traces every test
    cov-ctx    pytest --cov=PKG --cov-context=test --cov-report=
                                             coverage.py with a context per test (pytest-cov),
                                             measuring only; no report is written

``mcp`` and ``mcp-deps`` stream to one ``pytest-mcp serve`` started on free ports with a fresh
database for the project; it keeps every round's session, so later rounds record into a
database with history, as users' do. Every variant runs with the same plugins installed and
loaded (the venv's pytest-testmon, pytest-cov and pytest-xdist autoload; the plugin under test
is loaded with ``-p pytest_mcp.plugin`` in every variant, idle unless --mcp is given) and the
cache provider and pytest-timeout (there for bench/affected.py) off, so two variants differ only in the option at work. The suite runs in a
fresh unpacking of the sdist of its own, so bench/affected.py can run meanwhile (though not
for figures to rely on: the machine should be idle).

One warm-up round is not counted. In each counted round every variant runs once, in a rotating
order, and its time is divided by bare's time in the same round: the table shows the median
wall time of each variant and the median of those per-round ratios, which drift in the
machine's load touches alike. A run whose counts (passed, failed, ...) differ from bare's
stops the benchmark: a variant that changes what runs is not measuring the same thing.

Until the plugin has --mcp-deps, its row says "not available" and the rest is measured.

    python3 bench/deps_cost.py [--projects tomlkit,boltons] [--rounds 7]

Target (issue 23): mcp-deps at most 1.10x bare on Python 3.12+.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _suites  # noqa: E402
from _suites import Project  # noqa: E402

REPO = _suites.REPO
VARIANTS = ("bare", "mcp", "mcp-deps", "testmon", "cov-ctx")
DEFAULT_PROJECTS = ("tomlkit", "boltons")
TARGET_RATIO = 1.10
SUMMARY_LINE = re.compile(r"^=+ (.*\bin [\d.]+s.*) =+$|^(\d+ \w+.* in [\d.]+s.*)$")
COUNT_WORDS = {"passed", "failed", "skipped", "xfailed", "xpassed", "error", "errors",
               "deselected", "warnings", "warning", "subtests"}


def busy_cpu_seconds() -> Optional[float]:
    """CPU time every process on the machine has used (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    ticks = [int(x) for x in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    wall: float
    cpu: float  # user + system of pytest and its children
    other: Optional[float]  # CPUs other processes kept busy meanwhile, on average
    counts: Dict[str, int]


def parse_counts(output: str) -> Dict[str, int]:
    summary = None
    for line in output.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if match:
            summary = match.group(1) or match.group(2)
    if summary is None:
        return {}
    counts: Dict[str, int] = {}
    # "21194 subtests passed" counts subtests, not tests: keep them apart.
    for number, word in re.findall(r"(\d+) (subtests \w+|\w+)", summary):
        if word.split()[0] in COUNT_WORDS and not word.startswith("warning"):
            counts[word] = counts.get(word, 0) + int(number)
    return counts


@dataclass
class Bench:
    project: Project
    variants: List[str]
    tree: Path
    server: Optional[_suites.Server] = None
    binary: Optional[str] = None
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-deps-cost-")))
    expected: Optional[Dict[str, int]] = None

    def command(self, variant: str) -> List[str]:
        p = self.project
        base = [str(p.python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:timeout",
                "-p", "pytest_mcp.plugin", *p.pytest_args]
        if variant == "bare":
            extra: List[str] = []
        elif variant in ("mcp", "mcp-deps"):
            assert self.server is not None
            extra = ["--mcp", f"--mcp-address={self.server.address}",
                     f"--mcp-spool={self.tmp / 'spool'}"]
            if variant == "mcp-deps":
                extra.append("--mcp-deps")
        elif variant == "testmon":
            extra = ["--testmon"]
        elif variant == "cov-ctx":
            extra = [f"--cov={p.package}", "--cov-context=test", "--cov-report="]
        else:
            raise ValueError(variant)
        return base + extra + list(p.test_args)

    def env(self, variant: str) -> Dict[str, str]:
        env = _suites.child_env(self.project, self.tree)
        # Each run's data files are fresh: testmon's first run, coverage's one measurement.
        env["TESTMON_DATAFILE"] = str(self.tmp / "testmondata" / ".testmondata")
        env["COVERAGE_FILE"] = str(self.tmp / "coverage" / ".coverage")
        if self.binary:
            env["PYTEST_MCP_BIN"] = self.binary
        return env

    def run(self, variant: str) -> Run:
        for name in ("testmondata", "coverage"):
            shutil.rmtree(self.tmp / name, ignore_errors=True)
            (self.tmp / name).mkdir()
        log = self.tmp / f"{variant}.txt"
        busy0 = busy_cpu_seconds()
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.call(self.command(variant), cwd=self.tree, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self.env(variant))
        wall = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1 = busy_cpu_seconds()
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        other = None
        if busy0 is not None and busy1 is not None:
            other = max(0.0, (busy1 - busy0) - cpu) / wall  # includes the recorder's own CPU
        output = log.read_text(errors="replace")
        counts = parse_counts(output)
        problem = None
        if code not in (0, 1) or not counts:
            problem = f"exit code {code}, no summary"
        elif self.expected is not None and counts != self.expected:
            problem = f"counts {counts}, bare counted {self.expected}"
        elif variant.startswith("mcp") and "pytest-mcp: warning" in output:
            problem = "the plugin warned (the recorder did not take the run)"
        if problem:
            sys.exit(f"{self.project.name} {variant}: {problem}; output in {log}\n"
                     + "\n".join(output.splitlines()[-15:]))
        if variant == "bare" and self.expected is None:
            self.expected = counts
        return Run(wall, cpu, other, counts)


def deps_unavailable(project: Project, tree: Path) -> Optional[str]:
    help_text = subprocess.run(
        [str(project.python), "-m", "pytest", "-p", "pytest_mcp.plugin", "--help"],
        cwd=tree, env=_suites.child_env(project, tree), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    if "--mcp-deps" not in help_text:
        return (f"the plugin in {_suites.plugin_label()} has no --mcp-deps "
                "option yet")
    return None


@dataclass
class Result:
    project: Project
    variants: List[str]
    unavailable: Dict[str, str]
    runs: Dict[str, List[Run]]
    ratios: Dict[str, List[float]]
    counts: Dict[str, int]


def bench_project(project: Project, args: argparse.Namespace, binary: Optional[str]) -> Result:
    _suites.prepare(project, args.python)
    # A tree of its own, fresh from the sdist: bench/affected.py edits the shared one.
    tree = project.home / "cost-tree"
    _suites.unpack(project, tree)
    _suites.check_imports(project, tree)
    unavailable: Dict[str, str] = {}
    variants = list(args.variants)
    if "mcp-deps" in variants:
        why = deps_unavailable(project, tree)
        if why:
            unavailable["mcp-deps"] = why
    needs_server = any(v.startswith("mcp") and v not in unavailable for v in variants)
    if needs_server and binary is None:
        for v in variants:
            if v.startswith("mcp"):
                unavailable.setdefault(v, "no pytest-mcp binary (cargo build --release, "
                                          "or set PYTEST_MCP_BIN)")
        needs_server = False
    variants = [v for v in variants if v not in unavailable]
    bench = Bench(project, variants, tree, binary=binary)
    runs: Dict[str, List[Run]] = {v: [] for v in variants}
    ratios: Dict[str, List[float]] = {v: [] for v in variants}
    try:
        if needs_server:
            assert binary is not None
            bench.server = _suites.Server(binary, bench.tmp / "recorder.db")
            bench.server.start()
        bench.run("bare")  # sets the counts every run must match
        for round_no in range(args.warmup + args.rounds):
            counted = round_no >= args.warmup
            shift = round_no % len(variants)
            order = variants[shift:] + variants[:shift]
            this_round = {v: bench.run(v) for v in order}
            label = (f"round {round_no - args.warmup + 1}/{args.rounds}" if counted
                     else "warm-up")
            _suites.log(f"{project.name} {label}: "
                        + ", ".join(f"{v} {this_round[v].wall:.2f}s" for v in order))
            if counted:
                for v in variants:
                    runs[v].append(this_round[v])
                    ratios[v].append(this_round[v].wall / this_round["bare"].wall)
    finally:
        if bench.server is not None:
            bench.server.stop()
        shutil.rmtree(bench.tmp, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
    return Result(project, list(args.variants), unavailable, runs, ratios, bench.expected or {})


def print_results(results: List[Result], args: argparse.Namespace, started: str,
                  load_before: List[str], load_after: List[str]) -> None:
    first = results[0].project
    print()
    print(f"recording cost on real suites: medians of {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up round(s), started {started}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}; Python "
          f"{_suites.python_version(first)}; "
          + _suites.versions(first, ["pytest", "pytest-testmon", "coverage", "pytest-cov"]))
    print(f"plugin: {_suites.plugin_label()}; server: {_suites.find_binary() or 'none'}")
    if load_before:
        print(f"load average (1/5/15 min): {' '.join(load_before)} before, "
              f"{' '.join(load_after)} after")
    all_other: List[float] = []
    for result in results:
        p = result.project
        counts = ", ".join(f"{n} {w}" for w, n in result.counts.items())
        print()
        print(f"{p.name} {p.version}: {counts}  (pytest {' '.join(p.test_args)})")
        rows = [("variant", "wall s", "min-max", "x bare", "ratio min-max", "CPU s")]
        for v in result.variants:
            if v in result.unavailable:
                rows.append((v, "not available", "", "", "", ""))
                continue
            walls = [r.wall for r in result.runs[v]]
            ratios = result.ratios[v]
            all_other += [r.other for r in result.runs[v] if r.other is not None]
            rows.append((v, f"{statistics.median(walls):.2f}", f"{min(walls):.2f}-{max(walls):.2f}",
                         f"{statistics.median(ratios):.3f}x",
                         f"{min(ratios):.2f}-{max(ratios):.2f}",
                         f"{statistics.median(r.cpu for r in result.runs[v]):.2f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for n, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            print("| " + " | ".join(cells) + " |")
            if n == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for v, why in result.unavailable.items():
            print(f"  {v}: not available: {why}")
    print()
    print("wall s: median seconds from spawn to exit; x bare: median over rounds of the run's")
    print("  wall time / bare's in the same round; CPU s: user+system of pytest and its children")
    print("  (not the recorder's). Every variant: python -m pytest -p no:cacheprovider -p no:timeout")
    print("  -p pytest_mcp.plugin, the venv's other plugins autoloaded, plus the variant's options.")
    if all_other:
        other = statistics.median(all_other)
        print(f"noise: other processes (the recorder included) kept {other:.2f} of "
              f"{os.cpu_count()} CPUs busy during the runs (median)")
        if other > 0.3:
            print("WARNING: the machine was busy: for figures to rely on, rerun on an idle one.")
    for result in results:
        if "mcp-deps" in result.ratios and result.ratios["mcp-deps"]:
            ratio = statistics.median(result.ratios["mcp-deps"])
            verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
            print(f"target: {result.project.name}: mcp-deps at most {TARGET_RATIO:.2f}x bare: "
                  f"{verdict} ({ratio:.3f}x)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", default=",".join(DEFAULT_PROJECTS),
                        help=f"comma-separated, from {', '.join(_suites.PROJECTS)} "
                             f"(default {','.join(DEFAULT_PROJECTS)})")
    parser.add_argument("--rounds", type=int, default=7, help="counted rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)} (bare is always run)")
    parser.add_argument("--python", default=_suites.DEFAULT_PYTHON,
                        help=f"the interpreter of the projects' venvs (default {_suites.DEFAULT_PYTHON})")
    args = parser.parse_args()
    args.projects = [p.strip() for p in args.projects.split(",") if p.strip()]
    unknown = [n for n in args.projects if n not in _suites.PROJECTS]
    if unknown or not args.projects:
        parser.error(f"--projects: unknown {unknown}; choose from {', '.join(_suites.PROJECTS)}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def rerun_command(args: argparse.Namespace) -> str:
    parts = ["python3", "bench/deps_cost.py", "--projects", ",".join(args.projects),
             "--rounds", str(args.rounds)]
    if args.variants != list(VARIANTS):
        parts += ["--variants", ",".join(args.variants)]
    if args.python != _suites.DEFAULT_PYTHON:
        parts += ["--python", args.python]
    return ("cd " + shlex.quote(str(REPO)) + " && " + _suites.env_prefix()
            + " ".join(shlex.quote(p) for p in parts))


def main() -> int:
    args = parse_args()
    binary = _suites.find_binary()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    loadavg = Path("/proc/loadavg")
    load_before = loadavg.read_text().split()[:3] if loadavg.exists() else []
    results = [bench_project(_suites.PROJECTS[name], args, binary) for name in args.projects]
    load_after = loadavg.read_text().split()[:3] if loadavg.exists() else []
    print_results(results, args, started, load_before, load_after)
    print()
    print("rerun with:")
    print(f"  {rerun_command(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
