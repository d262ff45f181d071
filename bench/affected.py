#!/usr/bin/env python3
"""Does ``pytest --mcp-affected`` select every test a change breaks, and how few tests?

For each real third-party project (pinned sdists, see bench/_suites.py) it:

1. runs the project's whole suite once on the unmutated tree (the clean run: which tests
   exist, how long each takes, which already fail on this machine);
2. draws single-point mutants of the library's own source (bench/_mutants.py: operator,
   boolean, comparison, constant and statement edits, reproducible from --seed) and runs the
   whole suite on each (the full run: no -x, so every failing test is known; a test that takes
   more than --timeout-factor times the slowest clean test fails (pytest-timeout) and the run
   goes on; a run that takes more than --timeout-factor times the clean run + 60 s is stopped
   and counted as killed by timeout, apart from the rest). A mutant is kept when at least one
   test that passes in the clean run fails (or its module stops importing). Full runs are
   cached in .cache/bench-affected/<project>/full-runs.jsonl, so a rerun runs only what is new;
3. records the dependency baseline: a ``pytest-mcp serve`` on free ports with a fresh
   database, and one ``pytest --mcp --mcp-deps`` run of the unmutated tree into it;
4. for each kept mutant, applies it and asks the plugin which tests it would run:
   ``pytest --mcp --mcp-affected --collect-only -q`` (the same code path as a real
   ``pytest --mcp-affected`` run up to the point where tests would start); the selection is
   the items left after collection (read by bench/probe/bench_probe.py, and checked against
   the node ids pytest printed).

A miss is a test that fails in a mutant's full run but is not in its selection. For each
project it prints: mutants tried, kept (killed), killed by timeout, misses, the median and p90
of the selected fraction (selected / all tests), the median test time saved (1 - the clean
run's durations of the selected tests over all tests' durations) and the median wall time of
the selection run itself. Targets (issue 23): 0 misses; median selected fraction at most 10 %.

Until the plugin has --mcp-deps and --mcp-affected, steps 1 and 2 run and step 3 says
"selection unavailable: <why>".

Run it with any Python 3 (each project gets its own venv, made with --python):

    python3 bench/affected.py [--projects tomlkit,boltons,toolz] [--mutants 100] [--seed 1]
    python3 bench/affected.py --list       # the mutants the seed draws, without running them

The server binary is $PYTEST_MCP_BIN, else target/release/pytest-mcp, else target/debug.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _mutants  # noqa: E402
import _suites  # noqa: E402
from _mutants import Mutant  # noqa: E402
from _suites import Project  # noqa: E402

REPO = _suites.REPO
TARGET_MISSES = 0
TARGET_MEDIAN_FRACTION = 0.10
# Node ids pytest prints with --collect-only -q: "path::name" or a bare path (doctest files).
NODEID_LINE = re.compile(r"^\S+(::\S.*|\.py|\.txt|\.rst)$")


# ---- pytest runs ---------------------------------------------------------------


@dataclass
class RunResult:
    """What one pytest run reported through the probe."""

    wall: float
    exitstatus: Optional[int]  # None: stopped by the timeout
    collected: List[str] = field(default_factory=list)
    deselected: int = 0
    failed: List[str] = field(default_factory=list)
    collect_errors: List[str] = field(default_factory=list)
    durations: Dict[str, float] = field(default_factory=dict)
    output: str = ""

    @property
    def timed_out(self) -> bool:
        return self.exitstatus is None


def run_pytest(project: Project, tree: Path, extra: Sequence[str], timeout: Optional[float],
               env_extra: Optional[Dict[str, str]] = None, with_tests: bool = True) -> RunResult:
    """Runs the project's suite in `tree` with the probe; the probe's report is the result."""
    fd, probe_out = tempfile.mkstemp(prefix="bench-probe-", suffix=".json")
    os.close(fd)
    os.unlink(probe_out)
    env = _suites.child_env(project, tree)
    env["BENCH_PROBE_OUT"] = probe_out
    env.update(env_extra or {})
    command = [str(project.python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "bench_probe",
               "--continue-on-collection-errors", *project.pytest_args, *extra]
    if with_tests:
        command += list(project.test_args)
    started = time.perf_counter()
    # A session of its own, so a timeout stops the tests' own child processes too.
    proc = subprocess.Popen(command, cwd=tree, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        status: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = None
    wall = time.perf_counter() - started
    result = RunResult(wall=wall, exitstatus=status, output=output)
    try:
        with open(probe_out) as f:
            data = json.load(f)
        os.unlink(probe_out)
    except (OSError, ValueError):
        return result
    result.collected = data["collected"]
    result.deselected = data["deselected"]
    result.failed = data["failed"]
    result.collect_errors = data["collect_errors"]
    result.durations = data["durations"]
    return result


# ---- full runs -------------------------------------------------------------------


class FullRuns:
    """The cache of full runs, one JSON line per (version, mutant id, run configuration)."""

    def __init__(self, project: Project, config: str) -> None:
        self.path = project.home / "full-runs.jsonl"
        self.prefix = f"{project.version}|{config}|"
        self.entries: Dict[str, dict] = {}
        self.lock = threading.Lock()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                self.entries[entry["key"]] = entry

    def get(self, mutant: Mutant) -> Optional[dict]:
        return self.entries.get(self.prefix + mutant.id)

    def put(self, mutant: Mutant, entry: dict) -> None:
        entry = dict(entry, key=self.prefix + mutant.id, id=mutant.id)
        with self.lock:
            self.entries[entry["key"]] = entry
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")


@dataclass(frozen=True)
class Limits:
    """How long a mutant may run: per test (pytest-timeout fails the test and the run goes
    on, so a hang in one test still leaves every other failure known), and for the whole run
    (a backstop for a hang outside any test, e.g. at import)."""

    per_test: float
    run: float

    @staticmethod
    def from_clean(clean: "RunResult", factor: float) -> "Limits":
        slowest = max(clean.durations.values(), default=0.0)
        return Limits(per_test=max(10.0, factor * slowest), run=factor * clean.wall + 60)


def full_run(project: Project, tree: Path, mutant: Mutant, limits: Limits,
             clean_broken: set) -> dict:
    """Runs the suite with the mutant applied to `tree`; returns the cache entry."""
    journal = tree.parent / f".{tree.name}.mutant-journal"
    with _mutants.Applied(tree, mutant, journal):
        # --tb=no: formatting thousands of tracebacks is most of a badly broken run's time.
        result = run_pytest(project, tree, ["-q", "--tb=no", f"--timeout={limits.per_test:.0f}",
                                            "--timeout-method=signal"], limits.run)
    if result.timed_out:
        status = "timeout"
    elif result.exitstatus in (0, 1, 2) and (result.collected or result.collect_errors):
        broken = [n for n in result.failed + result.collect_errors if n not in clean_broken]
        status = "killed" if broken else "survived"
    else:
        # pytest could not run the suite at all (usage error, internal error, a conftest that
        # no longer imports): every test is broken, though no test id says so.
        status = "killed-all"
    return {"status": status, "wall": round(result.wall, 3), "exitstatus": result.exitstatus,
            "failed": [n for n in result.failed if n not in clean_broken],
            "collect_errors": [n for n in result.collect_errors if n not in clean_broken],
            "tail": "" if status in ("killed", "survived") else result.output[-2000:]}


def worker_trees(project: Project, jobs: int) -> List[Path]:
    """The tree, plus jobs - 1 fresh copies of it for parallel full runs."""
    trees = [project.tree]
    for k in range(1, jobs):
        copy = project.home / f"work-{k}"
        journal = copy.parent / f".{copy.name}.mutant-journal"
        journal.unlink(missing_ok=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(project.tree, copy, ignore=shutil.ignore_patterns("__pycache__",
                                                                           ".hypothesis"))
        _suites.check_imports(project, copy)
        trees.append(copy)
    return trees


def run_full_runs(project: Project, mutants: List[Mutant], cache: FullRuns, limits: Limits,
                  clean_broken: set, jobs: int) -> Dict[str, dict]:
    results: Dict[str, dict] = {}
    todo = []
    for mutant in mutants:
        cached = cache.get(mutant)
        if cached is not None:
            results[mutant.id] = cached
        else:
            todo.append(mutant)
    if not todo:
        return results
    _suites.log(f"{project.name}: {len(todo)} full runs to do ({len(results)} cached), "
                f"{jobs} at a time, timeouts {limits.per_test:.0f}s a test, {limits.run:.0f}s a run")
    trees = worker_trees(project, min(jobs, len(todo)))
    free = list(trees)
    lock = threading.Lock()
    done = [0]

    def one(mutant: Mutant) -> None:
        with lock:
            tree = free.pop()
        try:
            entry = full_run(project, tree, mutant, limits, clean_broken)
        finally:
            with lock:
                free.append(tree)
        cache.put(mutant, entry)
        results[mutant.id] = cache.get(mutant) or entry
        with lock:
            done[0] += 1
            _suites.log(f"  [{done[0]}/{len(todo)}] {mutant.id} {mutant.file}:{mutant.line} "
                        f"{mutant.kind}: {entry['status']} "
                        f"({len(entry['failed']) + len(entry['collect_errors'])} failing, "
                        f"{entry['wall']:.1f}s)")

    pool = ThreadPoolExecutor(max_workers=len(trees))
    try:
        for future in [pool.submit(one, m) for m in todo]:
            future.result()
    finally:
        # On Ctrl-C: drop what has not started, let the runs under way end and restore.
        pool.shutdown(wait=True, cancel_futures=True)
        for tree in trees[1:]:
            shutil.rmtree(tree, ignore_errors=True)
    return results


# ---- selection ---------------------------------------------------------------------


def selection_unavailable(project: Project, binary: Optional[str]) -> Optional[str]:
    """Why selection cannot be measured with this plugin and binary, or None if it can."""
    why = []
    help_text = subprocess.run(
        [str(project.python), "-m", "pytest", "-p", "pytest_mcp.plugin", "--help"],
        cwd=project.tree, env=_suites.child_env(project), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    missing = [flag for flag in ("--mcp-deps", "--mcp-affected") if flag not in help_text]
    if missing:
        why.append(f"the plugin in {_suites.plugin_label()} has no "
                   f"{' or '.join(missing)} option yet (pytest --help)")
    if binary is None:
        why.append("no pytest-mcp binary (cargo build --release, or set PYTEST_MCP_BIN)")
    elif not os.access(binary, os.X_OK):
        why.append(f"{binary} is not an executable")
    return "; ".join(why) or None


def mcp_env(binary: str) -> Dict[str, str]:
    return {"PYTEST_MCP_BIN": binary}


def mcp_args(address: str, spool: Path) -> List[str]:
    """Recording options shared by the baseline and the selection runs."""
    return ["-p", "pytest_mcp.plugin", "--mcp", f"--mcp-address={address}",
            f"--mcp-spool={spool}"]


@dataclass
class Selection:
    selected: List[str]
    wall: float
    printed: int  # node ids pytest printed, as a cross-check of the probe
    deselected: int
    collect_errors: List[str]
    broken: bool  # pytest stopped before collecting (a conftest that no longer imports)


def select(project: Project, address: str, binary: str, spool: Path, mutated: bool,
           timeout: float) -> Selection:
    """The tests `pytest --mcp --mcp-affected` would run on the tree as it is now."""
    result = run_pytest(project, project.tree,
                        mcp_args(address, spool) + ["--mcp-affected", "--collect-only", "-q"],
                        timeout=timeout, env_extra=mcp_env(binary))
    if result.timed_out:
        raise RuntimeError(f"the selection run did not finish in {timeout:.0f}s")
    broken = result.exitstatus in (3, 4) and mutated
    if result.exitstatus not in (0, 1, 2, 5) and not broken:
        raise RuntimeError(f"the selection run exited {result.exitstatus}:\n"
                           + "\n".join(result.output.splitlines()[-20:]))
    printed = sum(1 for line in result.output.splitlines() if NODEID_LINE.match(line.strip()))
    return Selection(selected=result.collected, wall=result.wall, printed=printed,
                     deselected=result.deselected, collect_errors=result.collect_errors,
                     broken=broken)


def record_baseline(project: Project, address: str, binary: str, spool: Path,
                    timeout: float) -> RunResult:
    result = run_pytest(project, project.tree, mcp_args(address, spool) + ["--mcp-deps", "-q"],
                        timeout=timeout, env_extra=mcp_env(binary))
    if result.timed_out or "pytest-mcp: warning" in result.output:
        raise RuntimeError("the baseline run with --mcp --mcp-deps failed:\n"
                           + "\n".join(result.output.splitlines()[-20:]))
    return result


# ---- the report --------------------------------------------------------------------


@dataclass
class Miss:
    mutant: Mutant
    test: str
    alone: str  # what the test did when rerun alone with the mutant: "fails", "passes", ...


@dataclass
class ProjectReport:
    project: Project
    tests: int = 0
    clean_wall: float = 0.0
    clean_broken: List[str] = field(default_factory=list)
    candidates: int = 0
    tried: int = 0
    killed: int = 0
    killed_all: int = 0
    timeouts: int = 0
    by_kind: Dict[str, List[int]] = field(default_factory=dict)  # kind -> [tried, killed]
    selection_note: Optional[str] = None
    baseline_wall: Optional[float] = None
    unchanged_selected: Optional[int] = None  # what --mcp-affected selects with no change at all
    failing: List[float] = field(default_factory=list)  # failing / tests, per kept mutant
    fractions: List[float] = field(default_factory=list)
    saved: List[float] = field(default_factory=list)
    selection_walls: List[float] = field(default_factory=list)
    misses: List[Miss] = field(default_factory=list)
    mutants_missed: int = 0
    full_run_seconds: float = 0.0
    wall: float = 0.0


def nearest_rank(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def confirm_alone(project: Project, mutant: Mutant, tests: List[str], timeout: float) -> Dict[str, str]:
    """Reruns missed tests alone with the mutant applied: does each fail by itself?"""
    journal = project.tree.parent / f".{project.tree.name}.mutant-journal"
    with _mutants.Applied(project.tree, mutant, journal):
        result = run_pytest(project, project.tree, ["-q", "--tb=no", *tests], timeout,
                            with_tests=False)
    if result.timed_out:
        return {t: "times out" for t in tests}
    failing = set(result.failed) | set(result.collect_errors)
    return {t: "fails alone" if t in failing or t.split("::")[0] in failing
            else "passes alone (fails only in the full run)" for t in tests}


def tree_digest(project: Project) -> str:
    """A hash of the library source, to prove every mutant was put back."""
    digest = hashlib.sha256()
    for path in _mutants.source_files(project.tree, project.sources, project.exclude):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def bench_project(project: Project, args: argparse.Namespace, binary: Optional[str]) -> ProjectReport:
    report = ProjectReport(project)
    started = time.perf_counter()
    # One run per tree at a time: another would see (and "restore") this one's mutants.
    project.home.mkdir(parents=True, exist_ok=True)
    lock = open(project.home / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"{project.name}: another bench/affected.py is using {project.tree}")
    _suites.prepare(project, args.python)
    journal = project.tree.parent / f".{project.tree.name}.mutant-journal"
    leftover = _mutants.restore_leftover(journal)
    if leftover:
        _suites.log(f"{project.name}: restored {leftover}, left mutated by a killed run")

    before = tree_digest(project)

    _suites.log(f"{project.name}: clean run")
    clean = run_pytest(project, project.tree, ["-q"], timeout=1800)
    if clean.timed_out or not clean.collected:
        raise SystemExit(f"{project.name}: the clean run did not run the suite:\n"
                         + "\n".join(clean.output.splitlines()[-20:]))
    report.tests = len(clean.collected)
    report.clean_wall = clean.wall
    report.clean_broken = sorted(set(clean.failed) | set(clean.collect_errors))
    clean_broken = set(report.clean_broken)
    limits = Limits.from_clean(clean, args.timeout_factor)
    timeout = limits.run

    candidates = _mutants.enumerate_mutants(project.tree, project.sources, project.exclude)
    report.candidates = len(candidates)
    mutants = _mutants.sample(candidates, project.tree, args.mutants, args.seed, project.name)
    report.tried = len(mutants)
    config = hashlib.sha256(repr((project.pytest_args, project.test_args, "full-v2",
                                  args.timeout_factor, _suites.python_version(project))
                                 ).encode()).hexdigest()[:8]
    cache = FullRuns(project, config)
    full = run_full_runs(project, mutants, cache, limits, clean_broken, args.jobs)
    kept: List[Tuple[Mutant, dict]] = []
    for mutant in mutants:
        entry = full[mutant.id]
        counts = report.by_kind.setdefault(mutant.kind, [0, 0])
        counts[0] += 1
        report.full_run_seconds += entry["wall"]
        if entry["status"] == "timeout":
            report.timeouts += 1
        elif entry["status"] in ("killed", "killed-all"):
            counts[1] += 1
            report.killed += 1
            report.failing.append((len(entry["failed"]) + len(entry["collect_errors"]))
                                  / report.tests)
            if entry["status"] == "killed-all":
                report.killed_all += 1
            kept.append((mutant, entry))

    report.selection_note = selection_unavailable(project, binary)
    if report.selection_note is None:
        assert binary is not None
        measure_selection(project, binary, kept, clean, timeout, report)
    if tree_digest(project) != before:
        raise SystemExit(f"{project.name}: the library source differs from before the run: "
                         "a mutant was not put back (delete the tree to unpack it again)")
    lock.close()
    report.wall = time.perf_counter() - started
    return report


def measure_selection(project: Project, binary: str, kept: List[Tuple[Mutant, dict]],
                      clean: RunResult, timeout: float, report: ProjectReport) -> None:
    total_time = sum(clean.durations.values()) or 1.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-affected-"))
    server = _suites.Server(binary, tmp / "bench.db")
    journal = project.tree.parent / f".{project.tree.name}.mutant-journal"
    try:
        server.start()
        _suites.log(f"{project.name}: recording the baseline with --mcp --mcp-deps")
        baseline = record_baseline(project, server.address, binary, tmp / "spool", timeout)
        report.baseline_wall = baseline.wall
        unchanged = select(project, server.address, binary, tmp / "spool", mutated=False,
                           timeout=timeout)
        report.unchanged_selected = len(unchanged.selected)
        for n, (mutant, entry) in enumerate(kept, 1):
            with _mutants.Applied(project.tree, mutant, journal):
                sel = select(project, server.address, binary, tmp / "spool", mutated=True,
                             timeout=timeout)
            if sel.printed != len(sel.selected):
                _suites.log(f"  {mutant.id}: pytest printed {sel.printed} node ids, the probe "
                            f"saw {len(sel.selected)} items")
            chosen = set(sel.selected)
            chosen_files = {n.split("::")[0] for n in chosen} | set(sel.collect_errors)
            # A module that no longer imports is "selected" when the selection run meets the
            # same collection error: the user sees it.
            missed = [t for t in entry["failed"] if t not in chosen]
            missed += [c for c in entry["collect_errors"] if c not in chosen_files]
            if sel.broken:
                missed = []  # pytest itself fails, as in the full run: nothing goes unseen
            elif entry["status"] == "killed-all" and not chosen and not sel.collect_errors:
                missed.append("(the whole suite: pytest could not run it)")
            report.fractions.append(len(chosen) / report.tests)
            report.saved.append(1 - sum(clean.durations.get(t, 0.0) for t in chosen) / total_time)
            report.selection_walls.append(sel.wall)
            if missed:
                report.mutants_missed += 1
                alone = confirm_alone(project, mutant, [t for t in missed if not t.startswith("(")],
                                      timeout)
                report.misses += [Miss(mutant, t, alone.get(t, "")) for t in missed]
            _suites.log(f"  [{n}/{len(kept)}] {mutant.id}: selected {len(chosen)}, "
                        f"missed {len(missed)}, {sel.wall:.1f}s")
    except RuntimeError as exc:
        report.selection_note = f"selection failed: {exc}"
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def print_table(rows: List[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("| " + " | ".join(cells) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def print_report(reports: List[ProjectReport], args: argparse.Namespace, started: str,
                 elapsed: float, binary: Optional[str]) -> None:
    first = reports[0].project
    print()
    print(f"affected-test selection on real suites: seed {args.seed}, {args.mutants} mutants "
          f"tried per project, started {started}, took {elapsed / 60:.1f} min")
    print(f"plugin: {_suites.plugin_label()}; server: {binary or 'none'}")
    print(f"Python {_suites.python_version(first)}; "
          + _suites.versions(first, ["pytest", "hypothesis"]).replace("hypothesis missing", "")
          .rstrip(", "))
    print()
    rows: List[Sequence[str]] = [("project", "tests", "clean s", "tried", "killed", "timeout",
                                  "fail median", "misses", "sel median", "sel p90", "time saved",
                                  "select s")]
    all_fractions: List[float] = []
    all_failing = [f for r in reports for f in r.failing]
    all_saved: List[float] = []
    all_walls: List[float] = []
    any_selection = False
    for r in reports:
        have = r.selection_note is None
        any_selection |= have
        all_fractions += r.fractions
        all_saved += r.saved
        all_walls += r.selection_walls
        rows.append((
            f"{r.project.name} {r.project.version}", str(r.tests), f"{r.clean_wall:.1f}",
            str(r.tried), f"{r.killed} ({r.killed / r.tried:.0%})" if r.tried else "0",
            str(r.timeouts),
            pct(statistics.median(r.failing)) if r.failing else "n/a",
            str(len(r.misses)) if have else "n/a",
            pct(statistics.median(r.fractions)) if r.fractions else "n/a",
            pct(nearest_rank(r.fractions, 0.9)) if r.fractions else "n/a",
            pct(statistics.median(r.saved)) if r.saved else "n/a",
            f"{statistics.median(r.selection_walls):.2f}" if r.selection_walls else "n/a"))
    tried = sum(r.tried for r in reports)
    killed = sum(r.killed for r in reports)
    rows.append(("total", str(sum(r.tests for r in reports)), "", str(tried),
                 f"{killed} ({killed / tried:.0%})" if tried else "0",
                 str(sum(r.timeouts for r in reports)),
                 pct(statistics.median(all_failing)) if all_failing else "n/a",
                 str(sum(len(r.misses) for r in reports)) if any_selection else "n/a",
                 pct(statistics.median(all_fractions)) if all_fractions else "n/a",
                 pct(nearest_rank(all_fractions, 0.9)) if all_fractions else "n/a",
                 pct(statistics.median(all_saved)) if all_saved else "n/a",
                 f"{statistics.median(all_walls):.2f}" if all_walls else "n/a"))
    print_table(rows)
    print()
    print("tests: items in the clean run; clean s: its wall time; killed: mutants that made at")
    print("  least one test fail that passes in the clean run (kept for selection); timeout: full")
    print(f"  runs stopped after {args.timeout_factor:g}x the clean run + 60 s, not kept (one test")
    print(f"  fails alone after {args.timeout_factor:g}x the slowest clean test, at least 10 s);")
    print("  fail median: failing tests / tests per kept mutant, the least a selection without")
    print("  misses can select; misses: tests failing in a mutant's full run but not selected;")
    print("  sel: selected / tests per kept mutant; time saved: median of 1 - (clean-run")
    print("  durations of the selected tests / all tests');")
    print("  select s: median wall time of the `--mcp-affected --collect-only` run.")

    print()
    kinds = _mutants.KINDS
    rows = [("killed / tried",) + kinds]
    for r in reports:
        rows.append((r.project.name,) + tuple(
            f"{r.by_kind.get(k, [0, 0])[1]}/{r.by_kind.get(k, [0, 0])[0]}" for k in kinds))
    print_table(rows)

    print()
    for r in reports:
        extra = []
        if r.killed_all:
            extra.append(f"{r.killed_all} of the killed broke the whole run (no test ids)")
        if r.clean_broken:
            extra.append(f"{len(r.clean_broken)} tests fail on the unmutated tree here and are "
                         f"left out: {', '.join(r.clean_broken[:3])}"
                         + (" ..." if len(r.clean_broken) > 3 else ""))
        line = (f"{r.project.name}: {r.candidates} candidate mutants, {r.tried} tried; full runs "
                f"{r.full_run_seconds / 60:.1f} min of test time")
        if r.baseline_wall is not None:
            line += f"; the --mcp --mcp-deps baseline took {r.baseline_wall:.1f}s"
        if r.unchanged_selected is not None:
            line += f"; with no change --mcp-affected selects {r.unchanged_selected} tests"
        print(line + (("; " + "; ".join(extra)) if extra else ""))
        if r.selection_note is not None:
            print(f"  selection unavailable: {r.selection_note}")

    misses = [m for r in reports for m in r.misses]
    if any_selection:
        print()
        verdict = "met" if len(misses) <= TARGET_MISSES else "NOT met"
        print(f"target: {TARGET_MISSES} misses: {verdict} ({len(misses)} tests in "
              f"{sum(r.mutants_missed for r in reports)} mutants)")
        if all_fractions:
            med = statistics.median(all_fractions)
            verdict = "met" if med <= TARGET_MEDIAN_FRACTION else "NOT met"
            print(f"target: median selected fraction at most {TARGET_MEDIAN_FRACTION:.0%}: "
                  f"{verdict} ({med:.1%})")
    if misses:
        print()
        print("misses (mutant, where, kind, scope, edit, test, alone):")
        for m in misses:
            mu = m.mutant
            print(f"  {mu.id} {mu.file}:{mu.line} {mu.kind} ({mu.scope}) {mu.description}: "
                  f"{m.test} [{m.alone}]")


def rerun_command(args: argparse.Namespace) -> str:
    parts = ["python3", "bench/affected.py", "--projects", ",".join(args.projects),
             "--mutants", str(args.mutants), "--seed", str(args.seed)]
    if args.jobs != min(2, os.cpu_count() or 1):
        parts += ["--jobs", str(args.jobs)]
    if args.python != _suites.DEFAULT_PYTHON:
        parts += ["--python", args.python]
    if args.timeout_factor != 5.0:
        parts += ["--timeout-factor", str(args.timeout_factor)]
    return ("cd " + shlex.quote(str(REPO)) + " && " + _suites.env_prefix()
            + " ".join(shlex.quote(p) for p in parts))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", default=",".join(_suites.DEFAULT_PROJECTS),
                        help=f"comma-separated, from {', '.join(_suites.PROJECTS)} "
                             f"(default {','.join(_suites.DEFAULT_PROJECTS)}; 'all' for every one)")
    parser.add_argument("--mutants", type=int, default=100,
                        help="mutants tried per project (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="names the mutants (default 1)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="full runs at a time, each in its own copy of the tree (default: "
                             "2, or 1 on one CPU); the selection runs one at a time")
    parser.add_argument("--timeout-factor", type=float, default=5.0,
                        help="a test fails after this many times the slowest clean test (at least "
                             "10 s); a full run stops after this many times the clean run + 60 s")
    parser.add_argument("--python", default=_suites.DEFAULT_PYTHON,
                        help=f"the interpreter of the projects' venvs (default {_suites.DEFAULT_PYTHON})")
    parser.add_argument("--json", help="also write the per-mutant results to this file")
    parser.add_argument("--list", action="store_true",
                        help="print the mutants the seed draws (id, file:line, kind, scope, edit) "
                             "and run nothing")
    args = parser.parse_args()
    names = list(_suites.PROJECTS) if args.projects == "all" else \
        [p.strip() for p in args.projects.split(",") if p.strip()]
    unknown = [n for n in names if n not in _suites.PROJECTS]
    if unknown or not names:
        parser.error(f"--projects: unknown {unknown}; choose from {', '.join(_suites.PROJECTS)}")
    args.projects = names
    if args.mutants < 1 or args.jobs < 1:
        parser.error("--mutants and --jobs: at least 1")
    return args


def write_json(path: str, reports: List[ProjectReport]) -> None:
    data = []
    for r in reports:
        data.append({
            "project": r.project.name, "version": r.project.version, "tests": r.tests,
            "clean_wall": r.clean_wall, "tried": r.tried, "killed": r.killed,
            "timeouts": r.timeouts, "by_kind": r.by_kind, "selection_note": r.selection_note,
            "fractions": r.fractions, "saved": r.saved, "selection_walls": r.selection_walls,
            "misses": [{"mutant": json.loads(m.mutant.to_json()), "test": m.test, "alone": m.alone}
                       for m in r.misses],
        })
    Path(path).write_text(json.dumps(data, indent=1))


def main() -> int:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so every `with Applied(...)` puts its file back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.list:
        for name in args.projects:
            project = _suites.PROJECTS[name]
            _suites.fetch(project)
            drawn = _mutants.sample(
                _mutants.enumerate_mutants(project.tree, project.sources, project.exclude),
                project.tree, args.mutants, args.seed, project.name)
            for m in drawn:
                print(f"{project.name} {m.id} {m.file}:{m.line} {m.kind} ({m.scope}) "
                      f"{m.description}")
        return 0
    binary = _suites.find_binary()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.perf_counter()
    reports = [bench_project(_suites.PROJECTS[name], args, binary) for name in args.projects]
    print_report(reports, args, started, time.perf_counter() - t0, binary)
    if args.json:
        write_json(args.json, reports)
    print()
    print("rerun with:")
    print(f"  {rerun_command(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
