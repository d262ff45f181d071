"""Two `pytest-mcp serve` replicas on one PostgreSQL database: two plugin runs
writing through them at once, a watcher on the other replica, one replica
SIGKILLed mid-run with results in flight; and the same seqs arriving at both
replicas at once.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid

import grpc
import pytest

from replica_support import (
    InnerRun,
    Watcher,
    assert_stored_exactly_once,
    counts_of,
    export_json,
    wait_until,
)
from pytest_mcp._proto import recorder_pb2 as pb

pytestmark = pytest.mark.timeout(120)

# Run X records at A, else B: 400 tests, 8 failing and 5 skipped, held at
# tests 100, 200 and 300.
X_SUITE = """
import pytest

@pytest.mark.parametrize("i", range(400))
def test_numbers(i):
    if i % 80 == 5:
        pytest.skip("every eightieth")
    assert i % 50 != 49
"""
X_GATES = {"test_numbers[100]": "gate1", "test_numbers[200]": "gate2", "test_numbers[300]": "gate3"}
X_NODEIDS = [f"test_x.py::test_numbers[{i}]" for i in range(400)]

# Run Y records at B, else A: 250 tests, 10 failing, held at test 100.
Y_SUITE = """
import pytest

@pytest.mark.parametrize("i", range(250))
def test_letters(i):
    assert i % 25 != 24
"""
Y_GATES = {"test_letters[100]": "gate1"}
Y_NODEIDS = [f"test_y.py::test_letters[{i}]" for i in range(250)]


def test_two_runs_through_two_replicas_lose_nothing_when_one_is_killed_and_a_watcher_on_the_other_sees_it_live(
    tmp_path, database, start_replica
):
    a = start_replica(database, name="A")
    b = start_replica(database, name="B")
    x = InnerRun(tmp_path / "x", "test_x", X_SUITE, X_GATES)
    y = InnerRun(tmp_path / "y", "test_y", Y_SUITE, Y_GATES)
    watcher = None
    try:
        x.start(f"{a.grpc_addr},{b.grpc_addr}")
        y.start(f"{b.grpc_addr},{a.grpc_addr}")

        # Both runs hold at test 100, everything before it committed, X's
        # through A and Y's through B.
        x_id = x.reached("gate1")
        y_id = y.reached("gate1")
        wait_until(lambda: a.stored(x_id) == 100, what="A storing X's first 100")
        wait_until(lambda: b.stored(y_id) == 100, what="B storing Y's first 100")
        assert b.session(x_id).status == pb.SESSION_STATUS_RUNNING

        # A watcher on B follows X, which B has not received a byte of.
        watcher = Watcher(b, x_id)
        wait_until(lambda: watcher.seqs() == list(range(1, 101)), what="the watcher's catch-up")

        # Tests 100-199 are committed by A and pushed to the watcher on B
        # while X is still held at test 200: live, across replicas.
        x.open("gate1")
        x.reached("gate2")
        wait_until(lambda: len(watcher.seqs()) >= 200, what="the watcher on B seeing A's commits")
        assert watcher.seqs() == list(range(1, 201))
        assert watcher.statuses() == [pb.SESSION_STATUS_RUNNING]
        assert b.session(x_id).status == pb.SESSION_STATUS_RUNNING
        assert a.stored(x_id) == 200

        # Stopped, A takes tests 200-299 without storing or acknowledging
        # any, then dies with them in flight: only a resend to B stores them.
        os.kill(a.proc.pid, signal.SIGSTOP)
        x.open("gate2")
        x.reached("gate3")
        assert b.stored(x_id) == 200
        a.kill()
        # Y goes on at B while X fails over to it.
        x.open("gate3")
        y.open("gate1")
        x.wait()
        y.wait()
        assert watcher.ended.wait(30), "the watch did not end with the session"
    finally:
        x.kill()
        y.kill()
        if watcher is not None:
            watcher.close()

    # What the person running pytest sees: the exit codes and summaries of
    # the tests alone, one line about the move, and where everything went.
    assert x.ret == pytest.ExitCode.TESTS_FAILED, x.text()
    assert y.ret == pytest.ExitCode.TESTS_FAILED, y.text()
    assert x.counts() == {"passed": 387, "failed": 8, "skipped": 5, "errors": 0, "xfailed": 0, "xpassed": 0}
    assert y.counts() == {"passed": 240, "failed": 10, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0}
    (warning,) = x.warnings()
    assert f"lost the recorder at {a.grpc_addr}" in warning, warning
    assert f"moved to {b.grpc_addr}, resending what was not acknowledged" in warning, warning
    assert y.warnings() == [], y.text()
    assert x.closing_line() == f"pytest-mcp: session {x_id}: 400 outcomes recorded at {b.grpc_addr}"
    assert y.closing_line() == f"pytest-mcp: session {y_id}: 250 outcomes recorded at {b.grpc_addr}"
    assert x.spooled() == [] and y.spooled() == []

    # What the database holds, read through B: each session finished, every
    # outcome once, counts as pytest counted them.
    for run, session_id, nodeids in ((x, x_id, X_NODEIDS), (y, y_id, Y_NODEIDS)):
        session, outcomes = assert_stored_exactly_once(b, session_id, nodeids)
        assert session.status == pb.SESSION_STATUS_FINISHED
        assert counts_of(session.counts) == counts_of(session.summary) == run.counts()
        assert session.summary.exitstatus == 1
    failed = [o.nodeid for o in b.outcomes(x_id) if o.outcome == pb.TEST_OUTCOME_FAILED]
    assert failed == [f"test_x.py::test_numbers[{i}]" for i in range(49, 400, 50)]

    # `pytest-mcp export --db URL` reads the same from the database directly.
    exported = export_json(database, x_id)
    assert exported["session"]["status"] == "finished"
    assert [o["seq"] for o in exported["outcomes"]] == list(range(1, 401))
    assert exported["session"]["summary"]["failed"] == 8

    # The watcher on B saw all of X once, in order, and then its finish.
    assert watcher.error is None, watcher.error
    assert watcher.seqs() == list(range(1, 401))
    assert watcher.statuses() == [pb.SESSION_STATUS_RUNNING, pb.SESSION_STATUS_FINISHED]
    assert watcher.events[-1] == ("session", pb.SESSION_STATUS_FINISHED)


def test_the_same_outcomes_streamed_through_both_replicas_at_once_are_stored_once(
    database, start_replica
):
    # What a run that fails over while its old stream is still committing
    # looks like to the database, four times over: two streams at each
    # replica carry the same seqs 1..1000, in the same batches, at once.
    a = start_replica(database, name="A")
    b = start_replica(database, name="B")
    session_id = str(uuid.uuid4())
    a.stub.StartSession(
        pb.StartSessionRequest(
            session_id=session_id,
            source=pb.SOURCE_PLUGIN,
            environment=pb.Environment(os="Linux", python_version="3.12.1"),
        ),
        timeout=10,
    )

    def outcome(seq: int) -> pb.Outcome:
        failing = seq % 10 == 0
        return pb.Outcome(
            seq=seq,
            nodeid=f"test_same.py::test_{seq}",
            outcome=pb.TEST_OUTCOME_FAILED if failing else pb.TEST_OUTCOME_PASSED,
            phase=pb.PHASE_CALL,
            duration=0.001 * seq,
            file="test_same.py",
            line=seq,
            attempt=1,
            message=f"assert {seq} % 10 != 0" if failing else "",
        )

    batches = [
        pb.StreamOutcomesRequest(session_id=session_id, outcomes=[outcome(s) for s in range(i, i + 25)])
        for i in range(1, 1001, 25)
    ]
    streams = [a, a, b, b]
    start = threading.Barrier(len(streams))
    acked = [0] * len(streams)
    errors: list = []

    def stream(index: int) -> None:
        def requests():
            start.wait(10)
            yield from batches

        try:
            for response in streams[index].stub.StreamOutcomes(requests(), timeout=60):
                acked[index] = max(acked[index], response.acked_seq)
        except grpc.RpcError as error:
            errors.append(error)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == []
    assert acked == [1000] * 4

    finished = b.stub.FinishSession(
        pb.FinishSessionRequest(
            session_id=session_id,
            outcomes_sent=1000,
            summary=pb.Summary(total_tests=1000, passed=900, failed=100, exitstatus=1, duration=1.0),
        ),
        timeout=10,
    ).session
    assert finished.status == pb.SESSION_STATUS_FINISHED
    session, outcomes = assert_stored_exactly_once(
        a, session_id, [f"test_same.py::test_{s}" for s in range(1, 1001)]
    )
    assert counts_of(session.counts) == {
        "passed": 900, "failed": 100, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0
    }
    assert [o.line for o in outcomes] == list(range(1, 1001))
