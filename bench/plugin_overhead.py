#!/usr/bin/env python3
"""What recording with ``pytest --mcp`` costs a test run, next to pytest's own reporters.

Generates a suite of mostly trivial tests (by default 10,000: about 2 % fail
with a traceback, 3 % are skipped, 1 % xfail, half of them parametrized) in a
temporary directory and runs it in four variants:

    bare        pytest
    junitxml    pytest --junitxml=FILE
    report-log  pytest --report-log=FILE        (pytest-reportlog)
    mcp         pytest --mcp --mcp-address=...   (this project)

``mcp`` streams to a real ``pytest-mcp serve`` that this script starts on free
ports with a temporary database; after every ``mcp`` run it reads the session
back and fails unless the server stored every outcome pytest counted.

Every variant loads the same plugins (plugin autoloading off; pytest-reportlog
and pytest-mcp loaded explicitly, each idle unless its option is given; the
cache provider off), so the only difference between two variants is the
reporter at work. Variants run in interleaved rounds, in a rotating order,
after one warm-up round that is not counted, so drift in the machine's load
touches every variant alike. The table shows medians over the rounds; the
verdicts compare medians of wall-clock time. It prints what it measured and
never fails on a slow result: it exits 1 only when a run fails in an
unexpected way or the server lost outcomes.

Run it with the project's venv (pytest, pytest-reportlog, grpcio and the
plugin installed) after ``cargo build --release``:

    .venv/bin/python bench/plugin_overhead.py [--rounds 5] [--tests 10000]

Flags have environment equivalents: PLUGIN_BENCH_ROUNDS, PLUGIN_BENCH_TESTS,
PLUGIN_BENCH_VARIANTS, and PYTEST_MCP_BIN for the server binary.
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
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("bare", "junitxml", "report-log", "mcp")
TARGET_RATIO = 1.05  # the issue: --mcp at most 1.05x bare, and no slower than --junitxml
TESTS_PER_FILE = 250
SUMMARY_LINE = re.compile(r"^=+ (.*\bin [\d.]+s.*) =+$")
SESSION_LINE = re.compile(r"pytest-mcp: session ([0-9a-f-]{36}): (\d+) outcomes recorded")
COUNT_WORDS = {
    "passed": "passed",
    "failed": "failed",
    "skipped": "skipped",
    "xfailed": "xfailed",
    "xpassed": "xpassed",
    "error": "errors",
    "errors": "errors",
}


# ---- the generated suite -----------------------------------------------------


def _kind(k: int) -> str:
    """What test number k does: deterministic, so every run counts the same."""
    r = k % 100
    if r in (7, 57):
        return "fail"  # 2 %
    if r in (3, 33, 73):
        return "skip"  # 3 %
    if r == 41:
        return "xfail"  # 1 %
    return "pass"


def write_suite(root: Path, total: int) -> Dict[str, int]:
    """Writes test files under root; returns the counts pytest should report."""
    expected = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
    words = {"pass": "passed", "fail": "failed", "skip": "skipped", "xfail": "xfailed"}
    (root / "pyproject.toml").write_text(
        '[project]\nname = "plugin-bench-suite"\nversion = "0"\n'
        "[tool.pytest.ini_options]\n"
        'markers = ["slow: a marker, so records carry one"]\n'
    )
    k = 0
    file_no = 0
    while k < total:
        n = min(TESTS_PER_FILE, total - k)
        plain = n // 2
        params = n - plain
        lines = [
            "import pytest",
            "",
            "",
            "def check_total(values, expected):",
            "    total = sum(values)",
            "    assert total == expected, f'sum of {values!r} is {total}, not {expected}'",
            "",
        ]
        for i in range(plain):
            kind = _kind(k)
            expected[words[kind]] += 1
            name = f"test_case_{i}"
            if kind == "pass":
                if i % 10 == 0:
                    lines += ["@pytest.mark.slow"]
                lines += [f"def {name}():", f"    assert {i} + 1 == {i + 1}", ""]
            elif kind == "fail":
                lines += [f"def {name}():", f"    check_total([{i}, 1, 2], {i + 4})", ""]
            elif kind == "skip":
                lines += [f'@pytest.mark.skip(reason="not on this platform ({i})")',
                          f"def {name}():", "    pass", ""]
            else:
                lines += [f'@pytest.mark.xfail(reason="known bug {i}", strict=True)',
                          f"def {name}():", f"    assert {i} < 0", ""]
            k += 1
        # The other half: one parametrized test whose body decides by parameter.
        fails, skips, xfails = [], [], []
        for p in range(params):
            kind = _kind(k)
            expected[words[kind]] += 1
            {"fail": fails, "skip": skips, "xfail": xfails}.get(kind, []).append(p)
            k += 1
        lines += [
            f"FAILS = {set(fails) or 'set()'}",
            f"SKIPS = {set(skips) or 'set()'}",
            f"XFAILS = {set(xfails) or 'set()'}",
            "",
            f"@pytest.mark.parametrize('n', range({params}))",
            "def test_param(n):",
            "    if n in SKIPS:",
            "        pytest.skip(f'parameter {n} not supported')",
            "    if n in XFAILS:",
            "        pytest.xfail(f'parameter {n} is a known bug')",
            "    if n in FAILS:",
            "        check_total([n, n], n)",
            "    assert n >= 0",
            "",
        ]
        (root / f"test_gen_{file_no:03d}.py").write_text("\n".join(lines))
        file_no += 1
    return expected


# ---- the server --------------------------------------------------------------


class Server:
    """``pytest-mcp serve`` on free ports with a temporary database."""

    def __init__(self, binary: str, db: Path) -> None:
        self.binary = binary
        self.db = db
        self.address = ""
        self.proc: Optional[subprocess.Popen] = None
        self.stderr: List[str] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_MCP")}
        env["RUST_LOG"] = "warn"
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--db", str(self.db),
             "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line.rstrip("\n"))
                match = re.search(r"gRPC listening on (\S+),", line)
                if match:
                    self.address = match.group(1)
                    ready.set()
            ready.set()  # the server exited

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or not self.address:
            self.stop()
            sys.exit("pytest-mcp serve did not start:\n" + "\n".join(self.stderr))

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used so far (Linux), else 0."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return 0.0

    def check(self, session_id: str, expected: Dict[str, int]) -> Optional[str]:
        """None if the server stored the finished session with every outcome, else why not."""
        import grpc

        from pytest_mcp._proto import recorder_pb2 as pb
        from pytest_mcp._proto import recorder_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = recorder_pb2_grpc.RecorderStub(channel)
            session = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=30).session
        total = sum(expected.values())
        counts = {k: getattr(session.counts, k) for k in ("passed", "failed", "skipped", "xfailed")}
        status = pb.SessionStatus.Name(session.status)
        if status != "SESSION_STATUS_FINISHED" or session.outcomes_stored != total or counts != expected:
            return (f"session {session_id}: {status}, {session.outcomes_stored} of {total} outcomes "
                    f"stored, counts {counts}, pytest counted {expected}")
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- measuring -----------------------------------------------------------------


def busy_cpu_seconds() -> Optional[float]:
    """CPU time every process on the machine has used (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    ticks = [int(x) for x in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class Run:
    """One timed pytest run."""

    def __init__(self, variant: str, wall: float, cpu: float, other: Optional[float],
                 counts: Dict[str, int], session_id: Optional[str]) -> None:
        self.variant = variant
        self.wall = wall  # seconds, spawn to exit
        self.cpu = cpu  # user + system seconds of the pytest process
        self.other = other  # cores kept busy by everything else on the machine, on average
        self.counts = counts
        self.session_id = session_id


def parse_counts(output: str) -> Tuple[Dict[str, int], Optional[str]]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
    session_id = None
    summary = None
    for line in output.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if match:
            summary = match.group(1)
        match = SESSION_LINE.search(line)
        if match:
            session_id = match.group(1)
    if summary is None:
        raise ValueError("no summary line")
    for number, word in re.findall(r"(\d+) (\w+)", summary):
        key = COUNT_WORDS.get(word)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + int(number)
    return counts, session_id


def pytest_command(variant: str, workdir: Path, server: Optional[Server]) -> List[str]:
    common = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
              "-p", "pytest_reportlog.plugin", "-p", "pytest_mcp.plugin"]
    if variant == "bare":
        return common
    if variant == "junitxml":
        return common + [f"--junitxml={workdir / 'out' / 'junit.xml'}"]
    if variant == "report-log":
        return common + [f"--report-log={workdir / 'out' / 'report-log.jsonl'}"]
    assert server is not None
    return common + ["--mcp", f"--mcp-address={server.address}",
                     f"--mcp-spool={workdir / 'out' / 'spool'}"]


def child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_MCP") and k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    # The same plugin set for every variant, whatever else the venv holds.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONHASHSEED"] = "0"
    return env


def run_once(variant: str, suite: Path, workdir: Path, server: Optional[Server],
             expected: Dict[str, int]) -> Run:
    command = pytest_command(variant, workdir, server)
    log = workdir / "out" / f"{variant}.txt"
    busy0 = busy_cpu_seconds()
    server_cpu0 = server.cpu_seconds() if server is not None else 0.0
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=suite, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=child_env())
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = busy_cpu_seconds()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    other = None
    if busy0 is not None and busy1 is not None:
        ours = cpu + (server.cpu_seconds() - server_cpu0 if server is not None else 0.0)
        other = max(0.0, (busy1 - busy0) - ours) / wall
    output = log.read_text(errors="replace")
    want_code = 1 if expected.get("failed") else 0
    try:
        counts, session_id = parse_counts(output)
    except ValueError:
        counts, session_id = {}, None
    if code != want_code or counts != expected:
        sys.exit(f"{variant}: exit code {code} (expected {want_code}), counts {counts} "
                 f"(expected {expected}); its output is in {log}\n"
                 + "\n".join(output.splitlines()[-15:]))
    if variant == "mcp":
        assert server is not None
        if "pytest-mcp: warning" in output or session_id is None:
            sys.exit(f"mcp: the plugin did not record the run; its output is in {log}")
        problem = server.check(session_id, expected)
        if problem is not None:
            sys.exit(f"mcp: the server lost outcomes: {problem}")
    return Run(variant, wall, cpu, other, counts, session_id)


# ---- main --------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(env("PLUGIN_BENCH_ROUNDS", "5")),
                        help="counted rounds, each running every variant once (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and not counted (default 1)")
    parser.add_argument("--tests", type=int, default=int(env("PLUGIN_BENCH_TESTS", "10000")),
                        help="tests in the generated suite (default 10000)")
    parser.add_argument("--variants", default=env("PLUGIN_BENCH_VARIANTS", ",".join(VARIANTS)),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--binary", default=env("PYTEST_MCP_BIN")
                        or str(REPO / "target" / "release" / "pytest-mcp"),
                        help="the pytest-mcp server binary (default target/release/pytest-mcp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (suite, outputs, database)")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")  # every ratio is to bare
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def rerun_command(args: argparse.Namespace) -> str:
    python = sys.executable
    relative = os.path.relpath(python, REPO)
    if not relative.startswith(".."):
        python = relative
    parts = [python, "bench/plugin_overhead.py", "--rounds", str(args.rounds),
             "--tests", str(args.tests)]
    if args.variants != list(VARIANTS):
        parts += ["--variants", ",".join(args.variants)]
    return "cd " + shlex.quote(str(REPO)) + " && " + " ".join(shlex.quote(p) for p in parts)


def median(values: List[float]) -> float:
    return statistics.median(values)


def report(args: argparse.Namespace, runs: Dict[str, List[Run]], expected: Dict[str, int],
           started: str, load_before: List[str], load_after: List[str]) -> None:
    """Prints the table, the noise it was measured under, and the verdicts."""
    import pytest  # the version of what was measured

    total = sum(expected.values())
    bare_wall = median([r.wall for r in runs["bare"]])
    bare_cpu = median([r.cpu for r in runs["bare"]])
    print()
    print(f"pytest-mcp plugin overhead: {total} tests ({expected['passed']} passed, "
          f"{expected['failed']} failed, {expected['skipped']} skipped, {expected['xfailed']} xfailed)")
    print(f"medians of {args.rounds} interleaved rounds after {args.warmup} warm-up round(s), "
          f"started {started}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} "
          f"{platform.release()}; Python {platform.python_version()}, pytest {pytest.__version__}")
    if load_before:
        print(f"load average (1/5/15 min): {' '.join(load_before)} before, {' '.join(load_after)} after")
    print()
    rows = [("variant", "wall s", "x bare", "wall min-max", "pytest CPU s", "x bare", "other CPU")]
    medians: Dict[str, float] = {}
    others_all: List[float] = []
    for variant in args.variants:
        rs = runs[variant]
        walls = [r.wall for r in rs]
        wall = median(walls)
        cpu = median([r.cpu for r in rs])
        others = [r.other for r in rs if r.other is not None]
        others_all += others
        medians[variant] = wall
        rows.append((variant, f"{wall:.2f}", f"{wall / bare_wall:.3f}x",
                     f"{min(walls):.2f}-{max(walls):.2f}", f"{cpu:.2f}", f"{cpu / bare_cpu:.3f}x",
                     f"{median(others):.2f}" if others else "n/a"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("| " + " | ".join(cells) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    print("wall s: median time from spawn to exit of pytest (mcp: including the end-of-run wait")
    print("  for the server's acknowledgements); pytest CPU s: user+system CPU of the pytest")
    print("  process and its children, not the server's; other CPU: CPUs kept busy by other processes")
    print("  during the runs (median; near 0 on a quiet machine).")
    print("each run: PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -p no:cacheprovider")
    print("  -p pytest_reportlog.plugin -p pytest_mcp.plugin, plus nothing (bare), --junitxml=FILE,")
    print("  --report-log=FILE, or --mcp --mcp-address=ADDR of a `pytest-mcp serve` this script ran.")

    bare_walls = [r.wall for r in runs["bare"]]
    noise = (max(bare_walls) - min(bare_walls)) / bare_wall if len(bare_walls) > 1 else 0.0
    other = median(others_all) if others_all else None
    print()
    print(f"noise: bare's wall time varied by {noise:.1%} between rounds"
          + (f"; other processes kept {other:.2f} of {os.cpu_count()} CPUs busy" if other is not None else ""))
    quiet = noise <= 0.03 and (other is None or other <= 0.1)
    if not quiet:
        why = []
        if other is not None and other > 0.1:
            why.append("other processes were using the CPUs")
        if noise > 0.03:
            why.append(f"bare alone varied by {noise:.0%} between rounds")
        print(f"WARNING: unstable timings ({'; '.join(why)}): differences smaller than that")
        print("  are noise. For figures to rely on, rerun on an idle machine, with more --rounds.")
    if "mcp" in medians:
        mcp = medians["mcp"]
        ratio = mcp / bare_wall
        unsure = "" if quiet or abs(ratio - TARGET_RATIO) > noise else "  (inconclusive: within the noise)"
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print()
        print(f"target: --mcp at most {TARGET_RATIO:.2f}x bare: {verdict} ({ratio:.3f}x){unsure}")
        if "junitxml" in medians:
            junit = medians["junitxml"]
            verdict = "met" if mcp <= junit else "NOT met"
            unsure = "" if quiet or abs(mcp / junit - 1) > noise else "  (inconclusive: within the noise)"
            print(f"target: --mcp no slower than --junitxml: {verdict} "
                  f"({mcp:.2f}s vs {junit:.2f}s, {mcp / junit:.3f}x){unsure}")
        print(f"every --mcp run was read back from the server: {total} outcomes stored, "
              "session finished")


def main() -> int:
    args = parse_args()
    if "mcp" in args.variants and not os.access(args.binary, os.X_OK):
        sys.exit(f"no server binary at {args.binary}: run `cargo build --release` or pass --binary")
    tmp = Path(tempfile.mkdtemp(prefix="pytest-mcp-plugin-bench-"))
    suite = tmp / "suite"
    suite.mkdir()
    (tmp / "out").mkdir()
    expected = write_suite(suite, args.tests)
    server = None
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    runs: Dict[str, List[Run]] = {v: [] for v in args.variants}
    try:
        if "mcp" in args.variants:
            server = Server(args.binary, tmp / "recorder.db")
            server.start()
        total_rounds = args.warmup + args.rounds
        for round_no in range(total_rounds):
            counted = round_no >= args.warmup
            # Rotate the order, so no variant always runs first after a pause.
            shift = round_no % len(args.variants)
            order = args.variants[shift:] + args.variants[:shift]
            label = f"round {round_no - args.warmup + 1}/{args.rounds}" if counted else "warm-up"
            cells = []
            for variant in order:
                run = run_once(variant, suite, tmp, server if variant == "mcp" else None, expected)
                if counted:
                    runs[variant].append(run)
                cells.append(f"{variant} {run.wall:.2f}s")
            print(f"{label}: " + ", ".join(cells), file=sys.stderr, flush=True)
    except (SystemExit, KeyboardInterrupt):
        args.keep = True  # the message names files in it
        raise
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []

    report(args, runs, expected, started, load_before, load_after)
    print()
    print("rerun with:")
    print(f"  {rerun_command(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
