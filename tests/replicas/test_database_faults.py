"""The database going away under running `pytest-mcp serve` replicas, and one
that was never there: health says so, the plugin's resend completes the
session once PostgreSQL is back, a watcher on another replica follows it
through, and a password never reaches the output.
"""

from __future__ import annotations

import re
import subprocess

import grpc
import pytest

from replica_support import (
    InnerRun,
    Watcher,
    assert_stored_exactly_once,
    binary,
    clean_env,
    counts_of,
    free_port,
    wait_until,
)
from pytest_mcp._proto import recorder_pb2 as pb

pytestmark = pytest.mark.timeout(120)

SUITE = """
import pytest

@pytest.mark.parametrize("i", range(300))
def test_numbers(i):
    assert i % 50 != 49
"""
GATES = {"test_numbers[100]": "gate1", "test_numbers[200]": "gate2"}
RECORDER = "pytest_mcp.v1.Recorder"
NODEIDS = [f"test_restart.py::test_numbers[{i}]" for i in range(300)]


def health_of(replica) -> tuple:
    """Health of the server as a whole and of the Recorder service."""
    return replica.health(""), replica.health(RECORDER)


def test_a_run_across_a_postgresql_restart_is_stored_once_and_health_follows_the_database(
    tmp_path, own_pg, start_replica
):
    a = start_replica(own_pg.url, name="A")  # the run records here
    b = start_replica(own_pg.url, name="B")  # a watcher follows it here
    assert health_of(a) == health_of(b) == ("SERVING", "SERVING")
    run = InnerRun(tmp_path / "run", "test_restart", SUITE, GATES)
    watcher = None
    try:
        run.start(a.grpc_addr)
        session_id = run.reached("gate1")
        wait_until(lambda: a.stored(session_id) == 100, what="the first 100 stored")
        watcher = Watcher(b, session_id)
        wait_until(lambda: watcher.seqs() == list(range(1, 101)), what="the watcher's catch-up")

        own_pg.stop()
        for replica in (a, b):
            wait_until(
                lambda: health_of(replica) == ("NOT_SERVING", "NOT_SERVING"),
                timeout=10,
                what=f"{replica.name} reporting NOT_SERVING",
            )
        with pytest.raises(grpc.RpcError) as away:
            a.session(session_id)
        assert away.value.code() == grpc.StatusCode.UNAVAILABLE, away.value
        # Tests 100-199 run and are sent while there is nowhere to store them.
        run.open("gate1")
        run.reached("gate2")
        assert health_of(a) == ("NOT_SERVING", "NOT_SERVING")

        own_pg.start_again()
        for replica in (a, b):
            wait_until(
                lambda: health_of(replica) == ("SERVING", "SERVING"),
                timeout=15,
                what=f"{replica.name} reporting SERVING again",
            )
        # The plugin retries on its own (it may have resent already).
        run.open("gate2")
        run.wait()
        assert watcher.ended.wait(30), "the watch did not end with the session"
    finally:
        run.kill()
        if watcher is not None:
            watcher.close()

    assert a.alive() and b.alive(), (a.stderr, b.stderr)
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run.text()
    assert run.counts() == {"passed": 294, "failed": 6, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0}
    # One line said the recorder was lost and would get everything again.
    (warning,) = run.warnings()
    assert f"lost the recorder at {a.grpc_addr} (UNAVAILABLE" in warning, warning
    assert "resending when it is back" in warning, warning
    assert run.closing_line() == (
        f"pytest-mcp: session {session_id}: 300 outcomes recorded at {a.grpc_addr}"
    ), run.text()
    assert run.spooled() == []
    session, _ = assert_stored_exactly_once(b, session_id, NODEIDS)
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert counts_of(session.counts) == counts_of(session.summary) == run.counts()
    # The watcher on B lived through the restart: every outcome once, then the finish.
    assert watcher.error is None, watcher.error
    assert watcher.seqs() == list(range(1, 301))
    assert watcher.statuses() == [pb.SESSION_STATUS_RUNNING, pb.SESSION_STATUS_FINISHED]


def test_an_unreachable_database_stops_serve_with_one_line_that_hides_the_password():
    port = free_port()
    url = f"postgres://user:secret@127.0.0.1:{port}/x"
    out = subprocess.run(
        [binary(), "serve", "--db", url, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )
    assert out.returncode != 0
    assert "secret" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    # The URL as given, but for the password.
    assert re.search(rf"postgres://user(:\*+)?@127\.0\.0\.1:{port}/x\b", lines[0]), lines[0]
    assert "unreachable" in lines[0], lines[0]
