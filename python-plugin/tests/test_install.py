"""One install for Python users: the distribution brings the binary, and
``pytest --mcp`` records with no recorder running.

Each test builds what a user would get, in fresh virtual environments:
``pip install ./python-plugin`` (built from the repository with cargo) and
a wheel from ``pip wheel ./python-plugin`` installed with no Rust toolchain
on PATH. The binary is built with the dev profile (MATURIN_PEP517_ARGS), so
it reuses the test run's cargo build; a user's build is the release one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, Server

SUITE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.parametrize("i", range(12))
    def test_numbers(i):
        assert i % 5 != 3, "three modulo five"

    def test_skipped():
        pytest.skip("no network here")
    """
)

RECORDED = re.compile(
    r"pytest-mcp: session ([0-9a-f-]{36}): (\d+) outcomes recorded in "
    r"~/\.local/share/pytest-mcp/pytest-mcp\.db \(no recorder was running\)"
)

DEFAULT_PORT = 50051


def _build_env() -> dict:
    env = dict(os.environ)
    env["MATURIN_PEP517_ARGS"] = "--profile dev"
    env.setdefault("CARGO_TARGET_DIR", str(REPO / "target"))
    return env


def _no_cargo_env(home: Path, venv: Path) -> dict:
    """A user's shell: the venv first, system directories, no Rust toolchain."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_MCP", "CARGO", "RUSTUP", "PYTEST_ADDOPTS", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env["HOME"] = str(home)
    env.pop("XDG_DATA_HOME", None)
    return env


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path


def _pip(venv: Path, *args: str, env: dict) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _default_port_is_free() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", DEFAULT_PORT)) != 0


def _run(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _check_records_locally(venv: Path, home: Path, project: Path) -> None:
    """`pytest --mcp` with nothing at the default address records into the
    default database, twice; `pytest-mcp show latest` shows the failures."""
    env = _no_cargo_env(home, venv)
    assert shutil.which("cargo", path=env["PATH"]) is None
    for command in (["pytest-mcp", "--version"], ["python", "-m", "pytest_mcp", "--version"]):
        done = _run(command, env, project)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("pytest-mcp "), done.stdout

    bare = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], env, project)
    sessions = []
    for _ in range(2):
        done = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mcp"], env, project)
        out = done.stdout + done.stderr
        assert done.returncode == bare.returncode == 1, out
        match = RECORDED.search(out)
        assert match, out
        assert match.group(2) == "13", out
        assert "spooled to" not in out and "warning" not in out, out
        sessions.append(match.group(1))
    spool = home / ".local" / "share" / "pytest-mcp" / "spool"
    assert not spool.exists() or not list(spool.iterdir()), "the spool files were not removed"

    shown = _run(["pytest-mcp", "show", "latest"], env, project)
    assert shown.returncode == 0, shown.stderr
    assert sessions[1] in shown.stdout
    assert "FAILED test_suite.py::test_numbers[3]" in shown.stdout, shown.stdout
    assert "three modulo five" in shown.stdout
    listed = _run(["pytest-mcp", "sessions"], env, project)
    assert all(s in listed.stdout for s in sessions), listed.stdout


@pytest.fixture
def project(tmp_path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    (p / "test_suite.py").write_text(SUITE)
    return p


def test_pip_install_from_the_repository_and_a_wheel_without_cargo_both_record_locally(
    tmp_path, project
):
    if not _default_port_is_free():
        pytest.skip(f"something listens on the default address 127.0.0.1:{DEFAULT_PORT}")
    build = _build_env()
    # 1. `pip install ./python-plugin`, built with cargo.
    source_venv = _venv(tmp_path / "from-source")
    _pip(source_venv, str(REPO / "python-plugin"), env=build)
    home = tmp_path / "home-source"
    home.mkdir()
    _check_records_locally(source_venv, home, project)

    # A local database this binary cannot use: the spool stays, one line says why.
    home = tmp_path / "home-newer"
    db = home / ".local" / "share" / "pytest-mcp" / "pytest-mcp.db"
    db.parent.mkdir(parents=True)
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("PRAGMA user_version = 99")
    env = _no_cargo_env(home, source_venv)
    done = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mcp"], env, project)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    why = [line for line in out.splitlines() if line.startswith("pytest-mcp: could not record in ")]
    assert len(why) == 1, out
    assert "newer than this binary" in why[0] and "stay in the spool file" in why[0], why[0]
    assert "spooled to" in out and "replay with: pytest-mcp import" in out, out

    # 2. A platform wheel, installed where no Rust toolchain is.
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO / "python-plugin")],
        env=build,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("pytest_mcp-*.whl")
    assert "linux" in wheel.name or "macos" in wheel.name or "win" in wheel.name, wheel.name
    wheel_venv = _venv(tmp_path / "from-wheel")
    home = tmp_path / "home-wheel"
    home.mkdir()
    _pip(wheel_venv, str(wheel), env=_no_cargo_env(home, wheel_venv))
    _check_records_locally(wheel_venv, home, project)

    # An address someone set is where results belong: spool and explain, as before.
    env = _no_cargo_env(home, wheel_venv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        absent = f"127.0.0.1:{s.getsockname()[1]}"
    done = _run(
        ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mcp", f"--mcp-address={absent}"],
        env,
        project,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "spooled to" in out and "replay with: pytest-mcp import" in out, out
    assert "recorded in" not in out, out


def test_a_recorder_with_a_full_disk_is_named_and_the_run_spools(pytester, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        server = Server(disk / "recorder.db").start()
        try:
            # Leave the database nowhere to grow.
            filler = disk / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            pytester.makepyfile(
                test_big=textwrap.dedent(
                    """
                    import pytest

                    @pytest.mark.parametrize("i", range(400))
                    def test_output(i):
                        print("x" * 4000 + str(i))
                        assert i % 2 == 0, "odd " + "y" * 3000
                    """
                )
            )
            spool = tmp_path / "spool"
            bare = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
            result = pytester.runpytest_subprocess(
                "-p",
                "no:cacheprovider",
                "--mcp",
                f"--mcp-address={server.addr}",
                f"--mcp-spool={spool}",
                timeout=120,
            )
            out = "\n".join(result.outlines + result.errlines)
            assert result.ret == bare.ret == 1, out
            warnings = [line for line in out.splitlines() if "pytest-mcp: warning:" in line]
            assert len(warnings) == 1, out
            assert "RESOURCE_EXHAUSTED" in warnings[0], warnings[0]
            assert "the recorder's disk is full" in warnings[0], warnings[0]
            assert "spooled to" in out, out
            assert list(spool.glob("*.jsonl")), "no spool file"
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
