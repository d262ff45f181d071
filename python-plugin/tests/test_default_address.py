"""With no address configured, the plugin goes to the default address: a
recorder there that refuses the run is answered as a configured one would be
(one warning, a spool file, its database untouched); only when nothing
listens there is the run stored in the local default database, by the
bundled binary, as a session of source ``plugin``.

The inner runs use a virtual environment laid out as an install is (the
plugin's interpreter with ``pytest-mcp`` beside it, here $PYTEST_MCP_BIN),
XDG_DATA_HOME in a temporary directory, and the internal
PYTEST_MCP_DEFAULT_ADDRESS to move "the default address" off the real port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import INNER_TIMEOUT, WARNING, Server, binary, free_port
from pytest_mcp._proto import recorder_pb2 as pb

TOKEN = "default-address-token-0815"
FAILING = "def test_ok():\n    pass\n\ndef test_broken():\n    assert 1 == 2\n"
PASSING = "def test_ok():\n    pass\n"
SPOOLED = re.compile(r"; spooled to (\S+\.jsonl)$")
RECORDED = re.compile(
    r"pytest-mcp: session ([0-9a-f-]{36}): (\d+) outcomes recorded in (.+) \(no recorder was running\)"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with this test run's packages and ``bin/pytest-mcp``;
    returns its interpreter."""
    venv = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    # The packages of the environment running these tests (pytest, grpcio,
    # the plugin's entry point); PYTHONPATH still puts the plugin under test first.
    Path(purelib, "outer.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n"
    )
    os.symlink(binary(), venv / "bin" / "pytest-mcp")
    return python


@pytest.fixture
def data_home(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def default_database(data_home: Path) -> Path:
    return data_home / "pytest-mcp" / "pytest-mcp.db"


def run(installed: Path, project: Path, data_home: Path, default_address: str, *args: str):
    """An inner ``pytest --mcp`` with no address configured; (exit code, output lines)."""
    env = dict(os.environ)
    env["XDG_DATA_HOME"] = str(data_home)
    env["PYTEST_MCP_DEFAULT_ADDRESS"] = default_address
    done = subprocess.run(
        [str(installed), "-m", "pytest", "-p", "no:cacheprovider", "--mcp", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=INNER_TIMEOUT,
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


@pytest.fixture
def refusing(data_home):
    """A recorder that wants a token, serving the default database itself: the
    database the plugin would store the run in if nothing listened."""
    server = Server(default_database(data_home), extra=["--token", TOKEN]).start()
    yield server
    server.stop()


def stored_sessions(server: Server):
    return list(
        server.stub.ListSessions(
            pb.ListSessionsRequest(page_size=100),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=10,
        ).sessions
    )


def assert_spooled_with_a_replay_hint(lines) -> Path:
    spooled = [m for m in map(SPOOLED.search, lines) if m]
    assert len(spooled) == 1, lines
    spool = Path(spooled[0].group(1))
    assert spool.is_file(), spool
    assert f"pytest-mcp: replay with: pytest-mcp import {spool}" in lines, lines
    return spool


@pytest.mark.parametrize(
    "token, suite, exit_code",
    [(None, FAILING, 1), ("not-the-token", PASSING, 0)],
    ids=["no-token", "wrong-token"],
)
def test_a_recorder_at_the_default_address_that_refuses_the_run_is_not_bypassed(
    pytester, installed, data_home, refusing, token, suite, exit_code
):
    pytester.makepyfile(suite)
    args = [f"--mcp-token={token}"] if token else []
    code, lines = run(installed, pytester.path, data_home, refusing.addr, *args)
    out = "\n".join(lines)
    assert code == exit_code, out
    warnings = [line for line in lines if WARNING in line]
    assert len(warnings) == 1, out
    said = "invalid token" if token else "missing authorization metadata"
    assert "UNAUTHENTICATED" in warnings[0] and said in warnings[0], warnings[0]
    assert "no recorder" not in out and "recorded in" not in out, out
    spool = assert_spooled_with_a_replay_hint(lines)
    assert spool.parent == data_home / "pytest-mcp" / "spool"
    # The default database is the recorder's: it holds no session, the token
    # was not bypassed.
    assert stored_sessions(refusing) == []


def test_quarantine_from_a_refusing_recorder_at_the_default_address_claims_no_absence(
    pytester, installed, data_home, refusing
):
    pytester.makepyfile(FAILING)
    code, lines = run(installed, pytester.path, data_home, refusing.addr, "--mcp-quarantine")
    out = "\n".join(lines)
    assert code == 1, out  # nothing was quarantined
    warnings = [line for line in lines if WARNING in line]
    assert warnings and all("UNAUTHENTICATED" in line for line in warnings), out
    assert "could not fetch the quarantine list" in out, out
    for claim in ("no recorder", "cannot reach", "recorded in"):
        assert claim not in out, out
    assert_spooled_with_a_replay_hint(lines)
    assert stored_sessions(refusing) == []


def test_with_nothing_listening_at_the_default_address_the_run_is_stored_locally_as_plugin(
    pytester, installed, data_home
):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pytester.makepyfile(FAILING)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.invalid",
                  "-c", "commit.gpgsign=false", "commit", "-q", "-m", "suite"]):
        subprocess.run(["git", *args], cwd=pytester.path, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pytester.path, capture_output=True,
                            text=True, check=True).stdout.strip()
    nothing = f"127.0.0.1:{free_port()}"
    code, lines = run(installed, pytester.path, data_home, nothing)
    out = "\n".join(lines)
    assert code == 1, out
    assert not [line for line in lines if WARNING in line], out
    recorded = [m for m in map(RECORDED.search, lines) if m]
    assert len(recorded) == 1, out
    session_id, outcomes, where = recorded[0].groups()
    database = default_database(data_home)
    assert (outcomes, where) == ("2", str(database)), out
    assert not list((data_home / "pytest-mcp" / "spool").glob("*.jsonl")), "the spool file stayed"
    exported = subprocess.run(
        [binary(), "export", session_id, "--db", str(database), "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    session = json.loads(exported.stdout)["session"]
    # The plugin's own run, not a replay a person started with `pytest-mcp import`.
    assert session["source"] == "plugin"
    assert session["status"] == "finished"
    # The code state travels through the spool file too.
    assert session["environment"]["code_state"] == commit
