"""Real third-party test suites for the dependency benchmarks (bench/affected.py, bench/deps_cost.py).

Each project is pinned to one version, fetched as an sdist from the package index with
``pip download --no-binary :all:``, unpacked into ``.cache/bench-affected/<project>/src`` and
given its own virtual environment (``.cache/bench-affected/<project>/venv``) made with the
Python the caller names. The project is installed into that venv (for its metadata and runtime
dependencies), but every test run imports it from the unpacked tree: the tree's import root is
first on ``PYTHONPATH``, and ``check_imports`` verifies that, so an edit to the tree is what the
tests see. The repository's ``python-plugin/src`` (or ``$BENCH_PLUGIN_SRC``, to measure another
checkout's plugin) is on ``PYTHONPATH`` too, so the plugin under test is the working copy,
loaded with ``-p pytest_mcp.plugin``.

No test run writes bytecode (``PYTHONDONTWRITEBYTECODE=1``) and ``prepare`` removes every
``__pycache__`` of a tree: a mutant and its restore can share a file size and a modification
second, and a cached ``.pyc`` would then hide the mutant.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench-affected"
# The plugin under test: this checkout's, or another's (a branch in another worktree).
PLUGIN_SRC = Path(os.environ.get("BENCH_PLUGIN_SRC") or REPO / "python-plugin" / "src").resolve()
PROBE_DIR = REPO / "bench" / "probe"  # bench_probe.py, loaded with -p bench_probe
DEFAULT_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python"

# What every venv gets besides the project: the plugin's runtime needs, the tools the cost
# benchmark compares against, and pytest-timeout (a mutant that hangs one test must fail that
# test, not stop the run; idle unless --timeout is given). Unpinned on purpose: the versions
# installed are printed with every table.
COMMON_DEPS = ["pytest", "grpcio", "protobuf", "pytest-testmon", "coverage", "pytest-cov",
               "pytest-xdist", "pytest-timeout"]


@dataclass(frozen=True)
class Project:
    """One pinned third-party project whose own suite the benchmarks run."""

    name: str  # the name on the package index
    version: str
    package: str  # the import name, for --cov and the import check
    import_root: str  # the directory (relative to the unpacked tree) that holds the package
    sources: Sequence[str]  # library source directories to mutate, relative to the tree
    test_args: Sequence[str]  # what to pass pytest to run the project's whole suite
    exclude: Sequence[str] = ()  # path prefixes under `sources` that are not library source
    deps: Sequence[str] = ()  # test dependencies beyond COMMON_DEPS
    pytest_args: Sequence[str] = ()  # extra arguments every run gets (determinism)
    install: bool = True  # pip install the unpacked tree into the venv (metadata, deps)
    notes: str = ""

    @property
    def home(self) -> Path:
        return CACHE / self.name

    @property
    def tree(self) -> Path:
        """The unpacked sdist: the tree the tests run in and the mutants edit."""
        return self.home / "src"

    @property
    def venv(self) -> Path:
        return self.home / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


# Small enough for a hundred mutants each in minutes; the others are there for --projects.
DEFAULT_PROJECTS = ("tomlkit", "boltons", "toolz")

PROJECTS: Dict[str, Project] = {
    p.name: p
    for p in [
        Project(
            name="tomlkit", version="0.15.3", package="tomlkit", import_root=".",
            sources=["tomlkit"], test_args=["tests"],
            notes="style-preserving TOML parser; includes the toml-test corpus",
        ),
        Project(
            name="boltons", version="26.2.0", package="boltons", import_root=".",
            sources=["boltons"], test_args=["tests"],
            notes="30-odd independent utility modules",
        ),
        Project(
            name="python-dateutil", version="4.0.0", package="dateutil", import_root="src",
            sources=["src/dateutil"],
            # test_tzpath_data compares every zone with the machine's tzdata: 14 s of a 35 s
            # run in 10 tests, two of which fail on a machine whose tzdata differs.
            test_args=["tests", "--ignore=tests/test_tzpath_data.py"],
            deps=["hypothesis", "freezegun", "attrs"],
            pytest_args=["--hypothesis-seed=0"],
            notes="parser, rrule, relativedelta, tz; hypothesis seeded for repeatable runs",
        ),
        Project(
            name="toolz", version="1.2.0", package="toolz", import_root=".",
            sources=["toolz", "tlz"], test_args=["toolz"],
            exclude=["toolz/tests", "toolz/sandbox/tests"],
            notes="functional utilities; its tests live inside the package",
        ),
        # Not in the default set: its suite takes ~20 s and its source is two large modules.
        Project(
            name="more-itertools", version="11.2.1", package="more_itertools", import_root=".",
            sources=["more_itertools"], test_args=["tests"],
            notes="two large modules",
        ),
    ]
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_checked(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n"
                         + "\n".join(result.stdout.splitlines()[-25:]))
    return result


def remove_bytecode(tree: Path) -> None:
    for cache in tree.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def fetch(project: Project) -> None:
    """Downloads and unpacks the pinned sdist, unless the tree is already there."""
    marker = project.home / f".unpacked-{project.version}"
    if marker.exists() and project.tree.is_dir():
        return
    sdists = project.home / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    log(f"{project.name}: downloading the {project.version} sdist")
    run_checked([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                 f"{project.name}=={project.version}", "-d", str(sdists)])
    unpack(project, project.tree)
    for old in project.home.glob(".unpacked-*"):
        old.unlink()
    marker.touch()


def sdist_archive(project: Project) -> Path:
    sdists = project.home / "sdist"
    archives = [a for a in sdists.iterdir() if a.name.endswith(".tar.gz")
                and project.version in a.name] if sdists.is_dir() else []
    if len(archives) != 1:
        raise SystemExit(f"{project.name}: expected one sdist in {sdists}, found {archives}")
    return archives[0]


def unpack(project: Project, dest: Path) -> None:
    """Unpacks the sdist into `dest` (replacing it): a tree no other benchmark edits."""
    staging = dest.with_name(dest.name + ".unpack")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(sdist_archive(project)) as archive:
        try:
            archive.extractall(staging, filter="data")
        except TypeError:  # a Python from before extraction filters (3.11.4, 3.12)
            archive.extractall(staging)
    (top,) = list(staging.iterdir())
    top.rename(dest)
    staging.rmdir()


def make_venv(project: Project, python: str) -> None:
    """Creates the project's venv with the given interpreter, unless it exists for it."""
    wanted_deps = hashlib.sha256(repr((project.version, COMMON_DEPS, list(project.deps),
                                       project.install)).encode()).hexdigest()[:12]
    marker = project.venv / f".ready-{wanted_deps}"
    if marker.exists() and project.python.exists():
        wanted = subprocess.run([python, "-c", "import sys; print(sys.version)"],
                                stdout=subprocess.PIPE, text=True).stdout
        have = subprocess.run([str(project.python), "-c", "import sys; print(sys.version)"],
                              stdout=subprocess.PIPE, text=True).stdout
        if wanted == have:
            return
    log(f"{project.name}: making {project.venv} with {python}")
    shutil.rmtree(project.venv, ignore_errors=True)
    run_checked([python, "-m", "venv", str(project.venv)])
    pip = [str(project.python), "-m", "pip", "install", "-q"]
    run_checked(pip + COMMON_DEPS + list(project.deps))
    if project.install:
        # Build from a copy so the build leaves nothing (build/, *.egg-info) in the tree.
        staging = project.home / "build-copy"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(project.tree, staging)
        try:
            run_checked(pip + [str(staging)])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    marker.touch()


def child_env(project: Project, tree: Optional[Path] = None) -> Dict[str, str]:
    """The environment of every pytest run of the project in `tree` (default: its tree)."""
    tree = tree or project.tree
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COV_", "COVERAGE_")) and k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str((tree / project.import_root).resolve()), str(PLUGIN_SRC), str(PROBE_DIR)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    return env


def check_imports(project: Project, tree: Optional[Path] = None) -> None:
    """Fails unless the project and the plugin import from the trees the benchmark edits."""
    tree = (tree or project.tree).resolve()
    code = (f"import {project.package} as p, pytest_mcp as m; "
            "print(p.__file__); print(m.__file__)")
    out = run_checked([str(project.python), "-c", code], cwd=tree,
                      env=child_env(project, tree)).stdout.split()
    where, plugin = Path(out[-2]).resolve(), Path(out[-1]).resolve()
    if tree not in where.parents:
        raise SystemExit(f"{project.name} imports from {where}, not from the tree {tree}")
    if PLUGIN_SRC.resolve() not in plugin.parents:
        raise SystemExit(f"pytest_mcp imports from {plugin}, not from {PLUGIN_SRC}")


def prepare(project: Project, python: str) -> None:
    """Fetches, unpacks and installs the project, then checks where its imports come from."""
    fetch(project)
    make_venv(project, python)
    remove_bytecode(project.tree)
    check_imports(project)


def versions(project: Project, names: Sequence[str]) -> str:
    """`name version` of the given distributions in the project's venv, for the report."""
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: print(n, 'missing')\n")
    out = subprocess.run([str(project.python), "-c", code, *names], stdout=subprocess.PIPE,
                         text=True).stdout
    return ", ".join(line for line in out.splitlines() if line)


def python_version(project: Project) -> str:
    return subprocess.run([str(project.python), "-c",
                           "import platform; print(platform.python_version())"],
                          stdout=subprocess.PIPE, text=True).stdout.strip()


def find_binary() -> Optional[str]:
    """The pytest-mcp server: $PYTEST_MCP_BIN, else this repository's release, then debug build."""
    explicit = os.environ.get("PYTEST_MCP_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "pytest-mcp"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class Server:
    """``pytest-mcp serve`` on free ports (the OS picks them) with a fresh database; its
    gRPC address is read from its log line, so no port is guessed and no race is lost."""

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
            text=True, env=env)
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
            raise RuntimeError("pytest-mcp serve did not start: " + " / ".join(self.stderr[-5:]))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def plugin_label() -> str:
    """Where the plugin under test comes from, for messages."""
    try:
        return str(PLUGIN_SRC.relative_to(REPO.resolve()))
    except ValueError:
        return str(PLUGIN_SRC)


def env_prefix() -> str:
    """The environment settings a rerun command needs to measure the same plugin and server."""
    parts = []
    for name in ("BENCH_PLUGIN_SRC", "PYTEST_MCP_BIN"):
        value = os.environ.get(name)
        if value:
            parts.append(f"{name}={shlex.quote(value)} ")
    return "".join(parts)
