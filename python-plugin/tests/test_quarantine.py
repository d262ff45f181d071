"""--mcp-quarantine: a quarantined test still runs and is recorded as what it
was, but its failure does not fail the run; with no list, nothing changes."""

from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest

from conftest import INNER_TIMEOUT, Server, binary, free_port, session_id_of, warning_lines
from pytest_mcp._proto import recorder_pb2 as pb

SUITE = """
import pytest

@pytest.fixture
def database():
    raise ConnectionError("cannot reach 127.0.0.1:5433")

def test_ok():
    pass

def test_flaky():
    assert 1 + 1 == 3

def test_needs_db(database):
    print("BODY RAN")

def test_broken():
    assert False, "really broken"

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n == 0
"""


def quarantine(server, nodeid: str, reason: str = "being fixed", *extra: str) -> None:
    """`pytest-mcp quarantine add` into the server's database, as a person would."""
    done = subprocess.run(
        [binary(), "quarantine", "add", nodeid, "--reason", reason, "--db", str(server.db), *extra],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr


def counts(result) -> dict:
    """The terminal's summary line, as pytest counted: {category: n}."""
    parsed = result.parseoutcomes()
    parsed.pop("deselected", None)
    return parsed


def stored(server, session_id: str) -> dict:
    return {
        (o.nodeid, o.outcome): o for o in server.outcomes(session_id)
    }


def test_a_quarantined_failure_is_stored_as_failed_but_does_not_fail_the_run(
    pytester, server, run_mcp
):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_flaky", "off by one, #42")
    result = run_mcp("--mcp-quarantine", "test_suite.py::test_ok", "test_suite.py::test_flaky", "-v")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "test_suite.py::test_flaky QUARANTINED" in out
    assert counts(result) == {"passed": 1, "quarantined": 1}
    assert "QUARANTINED test_suite.py::test_flaky: off by one, #42" in out
    assert warning_lines(result) == []

    outcomes = stored(server, session_id_of(result))
    flaky = outcomes[("test_suite.py::test_flaky", pb.TEST_OUTCOME_FAILED)]
    assert flaky.quarantined
    assert "assert (1 + 1) == 3" in flaky.longrepr
    assert flaky.message.startswith("assert")
    ok = outcomes[("test_suite.py::test_ok", pb.TEST_OUTCOME_PASSED)]
    assert not ok.quarantined
    session = server.session(session_id_of(result))
    assert session.summary.failed == 1 and session.summary.exitstatus == 0
    assert session.counts.failed == 1


def test_a_failure_that_is_not_quarantined_still_fails_the_run(pytester, server, run_mcp):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_flaky")
    result = run_mcp("--mcp-quarantine", "-k", "flaky or broken", "-rf")
    out = result.stdout.str()
    assert result.ret == 1, out
    assert counts(result) == {"failed": 1, "quarantined": 1}
    assert "FAILED test_suite.py::test_broken" in out


def test_a_quarantined_setup_error_does_not_run_the_test_body(pytester, server, run_mcp):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_needs_db", "db flaky")
    result = run_mcp("--mcp-quarantine", "-s", "test_suite.py::test_needs_db")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "BODY RAN" not in out
    assert counts(result) == {"quarantined": 1}
    assert "QUARANTINED test_suite.py::test_needs_db (in setup): db flaky" in out
    [error] = server.outcomes(session_id_of(result))
    assert error.outcome == pb.TEST_OUTCOME_ERROR and error.phase == pb.PHASE_SETUP
    assert error.quarantined
    assert "cannot reach 127.0.0.1:5433" in error.message


def test_patterns_match_like_fnmatch_and_parametrized_nodeids_match_themselves(
    pytester, server, run_mcp
):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_param[2]")  # brackets as written
    quarantine(server, "*::test_fl?ky")
    result = run_mcp("--mcp-quarantine", "-k", "param or flaky")
    out = result.stdout.str()
    assert result.ret == 1, out  # test_param[1] is not quarantined
    assert counts(result) == {"failed": 1, "quarantined": 2}
    flags = {o.nodeid: o.quarantined for o in server.outcomes(session_id_of(result))}
    assert flags == {
        "test_suite.py::test_flaky": True,
        "test_suite.py::test_param[1]": False,
        "test_suite.py::test_param[2]": True,
    }


def test_an_entry_for_another_project_or_an_expired_one_does_not_apply(
    pytester, server, run_mcp
):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_flaky", "elsewhere", "--project", "another-project")
    quarantine(server, "test_suite.py::test_broken", "expired")
    # Time runs out for the entry (as it does 14 days on).
    with sqlite3.connect(server.db, timeout=10) as db:
        db.execute("UPDATE quarantine SET expires_at = ? WHERE pattern = ?",
                   (int((time.time() - 60) * 1e6), "test_suite.py::test_broken"))
    result = run_mcp("--mcp-quarantine", "-k", "flaky or broken")
    assert result.ret == 1
    assert counts(result) == {"failed": 2}
    assert not any(o.quarantined for o in server.outcomes(session_id_of(result)))


def test_with_the_recorder_down_the_run_fails_as_without_the_plugin_with_one_warning(
    pytester, run_mcp
):
    pytester.makepyfile(test_suite=SUITE)
    result = run_mcp("--mcp-quarantine", "-k", "test_ok or flaky", address=f"127.0.0.1:{free_port()}")
    out = result.stdout.str()
    assert result.ret == 1, out
    assert counts(result) == {"failed": 1, "passed": 1}
    [warning] = warning_lines(result)
    assert "no test is quarantined" in warning, warning


def test_a_refused_quarantine_read_costs_one_warning_and_quarantines_nothing(
    pytester, tmp_path, spool_dir
):
    # The recorder wants a token the run does not have: the read is refused,
    # and the run is what it would be without quarantine.
    guarded = Server(tmp_path / "guarded.db", extra=["--token", "right-token"]).start()
    try:
        pytester.makepyfile(test_suite=SUITE)
        quarantine(guarded, "test_suite.py::test_flaky")
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--mcp", f"--mcp-address={guarded.addr}",
            f"--mcp-spool={spool_dir}", "--mcp-token", "wrong-token", "--mcp-quarantine",
            "-k", "flaky", timeout=INNER_TIMEOUT,
        )
    finally:
        guarded.stop()
    assert result.ret == 1
    assert counts(result) == {"failed": 1}
    about_quarantine = [w for w in warning_lines(result) if "quarantine" in w]
    assert len(about_quarantine) == 1, warning_lines(result)
    assert "UNAUTHENTICATED" in about_quarantine[0]


@pytest.mark.parametrize("how", ["ini", "env"])
def test_the_ini_and_environment_switches_turn_quarantine_on(
    pytester, server, run_mcp, monkeypatch, how
):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_flaky")
    if how == "ini":
        pytester.makeini("[pytest]\nmcp_quarantine = true\n")
    else:
        monkeypatch.setenv("PYTEST_MCP_QUARANTINE", "1")
    result = run_mcp("-k", "flaky")
    assert result.ret == 0, result.stdout.str()
    assert counts(result) == {"quarantined": 1}


def test_without_the_switch_nothing_is_fetched_or_flagged(pytester, server, run_mcp):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_flaky")
    result = run_mcp("-k", "flaky or test_ok")
    assert result.ret == 1
    assert counts(result) == {"failed": 1, "passed": 1}
    assert not any(o.quarantined for o in server.outcomes(session_id_of(result)))


def test_a_quarantined_test_that_passes_shows_as_passed_and_is_flagged(
    pytester, server, run_mcp
):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_ok")
    result = run_mcp("--mcp-quarantine", "-k", "test_ok")
    assert result.ret == 0
    assert counts(result) == {"passed": 1}
    [ok] = server.outcomes(session_id_of(result))
    assert ok.outcome == pb.TEST_OUTCOME_PASSED and ok.quarantined


def test_junit_xml_xdist_and_maxfail_work_with_quarantined_failures(
    pytester, server, run_mcp
):
    pytester.makepyfile(test_suite=SUITE)
    quarantine(server, "test_suite.py::test_flaky")
    quarantine(server, "test_suite.py::test_needs_db")
    # -x would stop at the first failure: quarantined ones are not failures.
    result = run_mcp("--mcp-quarantine", "-x", "--junitxml=out.xml", "-k", "not broken and not param")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert counts(result) == {"passed": 1, "quarantined": 2}
    xml = (pytester.path / "out.xml").read_text()
    assert 'message="quarantined: being fixed"' in xml, xml

    result = run_mcp("--mcp-quarantine", "-n", "2", "-k", "not broken and not param")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert counts(result) == {"passed": 1, "quarantined": 2}
    flags = {o.nodeid: (o.outcome, o.quarantined) for o in server.outcomes(session_id_of(result))}
    assert flags["test_suite.py::test_flaky"] == (pb.TEST_OUTCOME_FAILED, True)
    assert flags["test_suite.py::test_needs_db"] == (pb.TEST_OUTCOME_ERROR, True)
    assert flags["test_suite.py::test_ok"] == (pb.TEST_OUTCOME_PASSED, False)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_stop_on_first_failure_skips_quarantined_failures_but_not_real_ones(
    pytester, server, run_mcp, workers
):
    # Quarantined failures first: with -x, neither the run nor a worker may
    # stop on them; the real failure after them still stops the run.
    pytester.makepyfile(test_order="""
        def test_a_quarantined():
            assert 0, "known"

        def test_b_quarantined():
            assert 0, "known too"

        def test_c_passes():
            pass
    """)
    quarantine(server, "test_order.py::test_?_quarantined")
    args = ["--mcp-quarantine", "-x", "-p", "no:randomly"]
    if workers != "0":
        args += ["-n", workers]
    result = run_mcp(*args)
    assert result.ret == 0, result.stdout.str()
    assert counts(result) == {"passed": 1, "quarantined": 2}

    pytester.makepyfile(test_order="""
        def test_a_real():
            assert 0, "real"

        def test_b_quarantined():
            assert 0, "known"
    """)
    result = run_mcp(*args)
    # xdist reports a stop on -x as an interruption (2), as it does without the plugin.
    assert result.ret == (1 if workers == "0" else 2), result.stdout.str()
    assert counts(result).get("failed") == 1
