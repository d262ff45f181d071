"""What a recorded run holds: every outcome kind pytest has, read back over gRPC."""

from __future__ import annotations

import shlex
import subprocess
import textwrap

import pytest

from conftest import binary, counts_of, session_id_of, summary_counts, warning_lines
from pytest_mcp._proto import recorder_pb2 as pb

EVERY_KIND = textwrap.dedent(
    """
    import logging
    import sys

    import pytest

    def test_passes():
        print("to stdout")
        sys.stderr.write("to stderr\\n")
        logging.getLogger("inner").warning("a log record")

    def test_fails():
        print("before failing")
        logging.getLogger("inner").warning("a failing log record")
        assert 1 == 2

    @pytest.mark.slow
    def test_skips():
        pytest.skip("not on this machine")

    @pytest.mark.skipif(True, reason="condition holds")
    def test_skipif():
        pass

    @pytest.mark.xfail(reason="known bug")
    def test_xfails():
        raise ValueError("the known bug")

    @pytest.mark.xfail(reason="maybe fixed")
    def test_xpasses():
        pass

    @pytest.mark.xfail(reason="must fail", strict=True)
    def test_xpasses_strictly():
        pass

    @pytest.fixture
    def broken_setup():
        raise RuntimeError("setup broke")

    def test_setup_error(broken_setup):
        pass

    @pytest.fixture
    def broken_teardown():
        yield
        raise RuntimeError("teardown broke")

    def test_teardown_error(broken_teardown):
        pass

    def test_fails_then_teardown_error(broken_teardown):
        assert False, "call failed"

    @pytest.mark.parametrize("n", [1, 2])
    def test_parametrized(n):
        assert n
    """
)


def by_nodeid(outcomes):
    table = {}
    for o in outcomes:
        table.setdefault(o.nodeid, []).append(o)
    return table


def test_every_outcome_kind_is_recorded_with_its_phase_message_and_details(
    pytester, run_mcp, server
):
    pytester.makepyprojecttoml('[project]\nname = "inner-project"\n')
    pytester.makepyfile(test_kinds=EVERY_KIND)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow tests\n")
    result = run_mcp("-rA")
    assert result.ret == 1
    assert warning_lines(result) == []

    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert session.source == pb.SOURCE_PLUGIN
    outcomes = server.outcomes(session.id)
    assert [o.seq for o in outcomes] == list(range(1, len(outcomes) + 1))
    assert session.outcomes_expected == len(outcomes) == session.outcomes_stored
    table = by_nodeid(outcomes)

    def one(name):
        (o,) = table[f"test_kinds.py::{name}"]
        return o

    o = one("test_passes")
    assert (o.outcome, o.phase, o.message, o.longrepr) == (
        pb.TEST_OUTCOME_PASSED, pb.PHASE_CALL, "", ""
    )
    # pytest shows captured output only for tests that did not pass: by
    # default the recorder keeps none for a passing test, and the plugin
    # does not send it.
    assert (o.stdout, o.stderr, o.log) == ("", "", "")
    def_line = EVERY_KIND.strip().splitlines().index("def test_passes():") + 1
    assert (o.file, o.line, o.attempt, o.worker) == ("test_kinds.py", def_line, 1, "")
    assert o.started_at.seconds > 0 and o.duration > 0

    o = one("test_fails")
    assert (o.outcome, o.phase, o.message) == (pb.TEST_OUTCOME_FAILED, pb.PHASE_CALL, "assert 1 == 2")
    assert ">       assert 1 == 2" in o.longrepr and "AssertionError" in o.longrepr
    assert o.stdout == "before failing\n" and "a failing log record" in o.log

    o = one("test_skips")
    assert (o.outcome, o.phase, o.message) == (pb.TEST_OUTCOME_SKIPPED, pb.PHASE_CALL, "not on this machine")
    assert list(o.markers) == ["slow"]

    o = one("test_skipif")
    assert (o.outcome, o.phase, o.message) == (pb.TEST_OUTCOME_SKIPPED, pb.PHASE_SETUP, "condition holds")
    assert list(o.markers) == ["skipif"]

    o = one("test_xfails")
    assert (o.outcome, o.phase, o.message) == (pb.TEST_OUTCOME_XFAILED, pb.PHASE_CALL, "known bug")
    assert "ValueError: the known bug" in o.longrepr

    o = one("test_xpasses")
    assert (o.outcome, o.message) == (pb.TEST_OUTCOME_XPASSED, "maybe fixed")

    o = one("test_xpasses_strictly")  # pytest reports a strict xpass as a failure
    assert (o.outcome, o.message) == (pb.TEST_OUTCOME_FAILED, "[XPASS(strict)] must fail")

    o = one("test_setup_error")
    assert (o.outcome, o.phase, o.message) == (
        pb.TEST_OUTCOME_ERROR, pb.PHASE_SETUP, "RuntimeError: setup broke"
    )
    assert 'raise RuntimeError("setup broke")' in o.longrepr

    # pytest counts a teardown error as a result of its own, besides the test's.
    passed, error = table["test_kinds.py::test_teardown_error"]
    assert (passed.outcome, passed.phase) == (pb.TEST_OUTCOME_PASSED, pb.PHASE_CALL)
    assert (error.outcome, error.phase, error.message) == (
        pb.TEST_OUTCOME_ERROR, pb.PHASE_TEARDOWN, "RuntimeError: teardown broke"
    )
    failed, error = table["test_kinds.py::test_fails_then_teardown_error"]
    assert (failed.outcome, failed.message) == (pb.TEST_OUTCOME_FAILED, "AssertionError: call failed")
    assert (error.outcome, error.phase) == (pb.TEST_OUTCOME_ERROR, pb.PHASE_TEARDOWN)

    for n in (1, 2):
        o = one(f"test_parametrized[{n}]")
        assert o.outcome == pb.TEST_OUTCOME_PASSED and list(o.markers) == ["parametrize"]

    # The summary is pytest's own, and so are the stored counts here.
    expected = summary_counts(result)
    assert expected == {"passed": 4, "failed": 3, "skipped": 2, "errors": 3, "xfailed": 1, "xpassed": 1}
    assert counts_of(session.summary) == expected
    assert counts_of(session.counts) == expected
    assert session.summary.total_tests == sum(expected.values())
    assert session.summary.exitstatus == 1
    assert session.summary.duration > 0

    env = session.environment
    assert env.project == "inner-project"
    assert env.rootdir == str(pytester.path)
    assert env.pytest_version == pytest.__version__
    assert env.python_version and env.python_implementation and env.os and env.hostname
    assert "-rA" in env.invocation_args
    assert any(p.startswith("mcp-") for p in env.plugins)
    assert env.xdist_workers == 0


def test_a_collection_error_is_an_error_outcome_with_its_traceback(pytester, run_mcp, server):
    pytester.makepyfile(
        test_broken="import no_such_module_here\n\ndef test_never():\n    pass\n",
        test_fine="def test_ok():\n    pass\n",
    )
    result = run_mcp()
    assert result.ret == 2  # pytest stops: "Interrupted: 1 error during collection"

    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_INTERRUPTED
    (o,) = server.outcomes(session.id)
    assert (o.nodeid, o.outcome, o.phase, o.file) == (
        "test_broken.py", pb.TEST_OUTCOME_ERROR, pb.PHASE_COLLECT, "test_broken.py"
    )
    assert o.message == "ModuleNotFoundError: No module named 'no_such_module_here'"
    assert "import no_such_module_here" in o.longrepr
    assert counts_of(session.summary) == summary_counts(result)


def test_a_run_that_continues_after_collection_errors_is_finished(pytester, run_mcp, server):
    pytester.makepyfile(
        test_broken="raise SystemError('module body fails')\n",
        test_fine="def test_ok():\n    pass\n",
        test_skipped_module=(
            "import pytest\npytest.skip('whole module', allow_module_level=True)\n"
        ),
    )
    result = run_mcp("--continue-on-collection-errors")
    assert result.ret == 1

    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_FINISHED
    table = by_nodeid(server.outcomes(session.id))
    (broken,) = table["test_broken.py"]
    assert (broken.outcome, broken.phase, broken.message) == (
        pb.TEST_OUTCOME_ERROR, pb.PHASE_COLLECT, "SystemError: module body fails"
    )
    (skipped,) = table["test_skipped_module.py"]
    assert (skipped.outcome, skipped.phase, skipped.message) == (
        pb.TEST_OUTCOME_SKIPPED, pb.PHASE_COLLECT, "whole module"
    )
    assert table["test_fine.py::test_ok"][0].outcome == pb.TEST_OUTCOME_PASSED
    assert counts_of(session.summary) == summary_counts(result) == counts_of(session.counts)


SUBTESTS = textwrap.dedent(
    """
    import unittest

    import pytest

    def test_numbers(subtests):
        for i in range(4):
            with subtests.test("even", i=i):
                print(f"checking {i}")
                assert i % 2 == 0

    def test_plain_subtests(subtests):
        with subtests.test():
            pass
        with subtests.test(msg="skipped one"):
            pytest.skip("not this one")

    def test_no_subtests():
        pass

    class TestUnit(unittest.TestCase):
        def test_words(self):
            for word in ["a", "b"]:
                with self.subTest(word=word):
                    self.assertEqual(word, "a")
    """
)


def subtests_of(outcomes):
    return {(o.nodeid, o.subtest): o for o in outcomes if o.subtest}


@pytest.mark.skipif(not hasattr(pytest, "Subtests"), reason="native subtests need pytest 9")
def test_subtests_are_outcomes_of_their_test_and_the_rerun_command_selects_the_failures(
    pytester, run_mcp, server
):
    pytester.makepyfile(test_sub=SUBTESTS)
    result = run_mcp()
    assert result.ret == 1

    session = server.session(session_id_of(result))
    outcomes = server.outcomes(session.id)
    # Every outcome carries a nodeid pytest knows; the subtest is a label apart.
    assert {o.nodeid for o in outcomes} == {
        "test_sub.py::test_numbers",
        "test_sub.py::test_plain_subtests",
        "test_sub.py::test_no_subtests",
        "test_sub.py::TestUnit::test_words",
    }
    subs = subtests_of(outcomes)
    assert set(subs) == {
        *(("test_sub.py::test_numbers", f"[even] (i={i})") for i in range(4)),
        ("test_sub.py::test_plain_subtests", "(<subtest>)"),
        ("test_sub.py::test_plain_subtests", "[skipped one]"),
        ("test_sub.py::TestUnit::test_words", "(word='a')"),
        ("test_sub.py::TestUnit::test_words", "(word='b')"),
    }
    for i in range(4):
        o = subs[("test_sub.py::test_numbers", f"[even] (i={i})")]
        assert o.phase == pb.PHASE_CALL
        if i % 2:
            assert o.outcome == pb.TEST_OUTCOME_FAILED
            assert o.message == f"assert ({i} % 2) == 0"
            assert o.stdout == f"checking {i}\n"
        else:
            assert o.outcome == pb.TEST_OUTCOME_PASSED and o.stdout == ""
    o = subs[("test_sub.py::test_plain_subtests", "[skipped one]")]
    assert (o.outcome, o.message) == (pb.TEST_OUTCOME_SKIPPED, "not this one")
    assert subs[("test_sub.py::TestUnit::test_words", "(word='b')")].outcome == pb.TEST_OUTCOME_FAILED
    # The test that holds failed subtests fails too, as pytest reports it.
    (parent,) = [o for o in outcomes if o.nodeid == "test_sub.py::test_numbers" and not o.subtest]
    assert (parent.outcome, parent.message) == (pb.TEST_OUTCOME_FAILED, "contains 2 failed subtests")
    # Stored counts are pytest's: failed subtests count, the others are listed apart.
    assert counts_of(session.counts) == counts_of(session.summary) == summary_counts(result)

    # The rerun command names each failing test once, and pytest selects exactly them.
    shown = subprocess.run(
        [binary(), "show", "--db", str(server.db), session.id],
        capture_output=True, text=True, timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    (rerun,) = [line for line in shown.stdout.splitlines() if line.startswith("rerun: ")]
    args = shlex.split(rerun[len("rerun: "):])
    assert args[0] == "pytest"
    assert sorted(args[1:]) == ["test_sub.py::TestUnit::test_words", "test_sub.py::test_numbers"]
    collected = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co", "-q", *args[1:])
    assert collected.ret == 0
    assert [line for line in collected.outlines if "::" in line] == args[1:]

    # Under xdist the same subtests carry the same labels.
    parallel = run_mcp("-n", "2")
    assert parallel.ret == 1
    xdist_outcomes = server.outcomes(session_id_of(parallel))
    assert set(subtests_of(xdist_outcomes)) == set(subs)
    assert {o.worker for o in xdist_outcomes} <= {"gw0", "gw1"}


def test_user_properties_are_stored_with_the_outcome(pytester, run_mcp, server):
    pytester.makepyfile(
        test_props=textwrap.dedent(
            """
            def test_tagged(record_property):
                record_property("ticket", "JIRA-42")
                record_property("attempts", 3)
                assert False, "tagged failure"

            def test_untagged():
                pass
            """
        )
    )
    result = run_mcp()
    assert result.ret == 1
    tagged, untagged = server.outcomes(session_id_of(result))
    assert [(p.name, p.value) for p in tagged.user_properties] == [
        ("ticket", "JIRA-42"), ("attempts", "3")
    ]
    assert list(untagged.user_properties) == []


def test_a_server_that_keeps_passing_output_gets_it(pytester, run_mcp, keeping_server):
    pytester.makepyfile(test_out="def test_passes():\n    print('kept')\n")
    result = run_mcp(address=keeping_server.addr)
    assert result.ret == 0
    (o,) = keeping_server.outcomes(session_id_of(result))
    assert o.stdout == "kept\n"


FLAKY = textwrap.dedent(
    """
    from pathlib import Path

    def test_flaky():
        marker = Path(__file__).with_name("flaky.ran")
        if not marker.exists():
            marker.write_text("once")
            assert False, "first attempt fails"

    def test_always_fails():
        assert False, "every attempt fails"

    def test_stable():
        pass
    """
)


def test_rerunfailures_attempts_are_each_kept(pytester, run_mcp, server):
    pytester.makepyfile(test_flaky=FLAKY)
    result = run_mcp("--reruns", "2")
    assert result.ret == 1
    assert "1 failed, 2 passed, 3 rerun" in result.outlines[-1]

    session = server.session(session_id_of(result))
    table = by_nodeid(server.outcomes(session.id))
    assert [(o.attempt, o.outcome) for o in table["test_flaky.py::test_flaky"]] == [
        (1, pb.TEST_OUTCOME_FAILED),
        (2, pb.TEST_OUTCOME_PASSED),
    ]
    assert table["test_flaky.py::test_flaky"][0].message == "AssertionError: first attempt fails"
    assert [(o.attempt, o.outcome) for o in table["test_flaky.py::test_always_fails"]] == [
        (1, pb.TEST_OUTCOME_FAILED),
        (2, pb.TEST_OUTCOME_FAILED),
        (3, pb.TEST_OUTCOME_FAILED),
    ]
    assert [o.attempt for o in table["test_flaky.py::test_stable"]] == [1]
    # The summary is pytest's: the final result of each test.
    assert counts_of(session.summary) == summary_counts(result)
    assert (session.summary.passed, session.summary.failed) == (2, 1)


def test_xdist_workers_results_arrive_once_each_through_the_controller(
    pytester, run_mcp, server
):
    body = ["import pytest", ""]
    for i in range(40):
        if i % 10 == 3:
            body += [f"def test_{i}():", f"    assert {i} == 0", ""]
        elif i % 10 == 7:
            body += [f"def test_{i}():", f"    pytest.skip('skip {i}')", ""]
        else:
            body += [f"def test_{i}():", "    pass", ""]
    pytester.makepyfile(test_a="\n".join(body), test_b="\n".join(body), test_flaky=FLAKY)
    result = run_mcp("-n", "2", "--reruns", "1")
    assert result.ret == 1

    # Only the controller records: one session, not one per worker.
    assert len(server.sessions()) == 1
    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert session.environment.xdist_workers == 2
    outcomes = server.outcomes(session.id)
    assert {o.worker for o in outcomes} == {"gw0", "gw1"}
    table = by_nodeid(outcomes)
    for module in ("test_a", "test_b"):
        for i in range(40):
            attempts = [(o.attempt, o.outcome) for o in table[f"{module}.py::test_{i}"]]
            if i % 10 == 3:  # failing: rerun once, so two attempts
                assert attempts == [(1, pb.TEST_OUTCOME_FAILED), (2, pb.TEST_OUTCOME_FAILED)]
            elif i % 10 == 7:
                assert attempts == [(1, pb.TEST_OUTCOME_SKIPPED)]
            else:
                assert attempts == [(1, pb.TEST_OUTCOME_PASSED)]
    assert [(o.attempt, o.outcome) for o in table["test_flaky.py::test_flaky"]] == [
        (1, pb.TEST_OUTCOME_FAILED),
        (2, pb.TEST_OUTCOME_PASSED),
    ]
    assert counts_of(session.summary) == summary_counts(result)
    assert session.summary.exitstatus == 1


def test_a_keyboard_interrupt_leaves_an_interrupted_session(pytester, run_mcp, server):
    pytester.makepyfile(
        test_stop=textwrap.dedent(
            """
            def test_first():
                pass

            def test_second():
                assert False

            def test_interrupts():
                raise KeyboardInterrupt

            def test_never_runs():
                pass
            """
        )
    )
    result = run_mcp()
    assert result.ret == 2

    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_INTERRUPTED
    assert session.summary.exitstatus == 2
    assert [(o.nodeid, o.outcome) for o in server.outcomes(session.id)] == [
        ("test_stop.py::test_first", pb.TEST_OUTCOME_PASSED),
        ("test_stop.py::test_second", pb.TEST_OUTCOME_FAILED),
    ]
    assert counts_of(session.summary) == summary_counts(result)
