"""Several recorders behind one ``--mcp-address`` list: the plugin records at the
first that answers, moves to the next when it loses it, and sends that one
everything not acknowledged, so a replica killed mid-run costs nothing.

The replicas are real ``pytest-mcp serve`` processes on one database file.
"""

from __future__ import annotations

import os
import signal
import textwrap

import pytest

from conftest import (
    INNER_TIMEOUT,
    Output,
    Server,
    assert_stored_exactly_once,
    counts_of,
    free_port,
    run_in_background,
    session_id_of,
    spool_path_of,
    stored_so_far,
    summary_counts,
    wait_until,
    warning_lines,
)
from pytest_mcp._proto import recorder_pb2 as pb

SMALL_SUITE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.parametrize("i", range(20))
    def test_numbers(i):
        assert i % 7 != 3
    """
)

# Tests 100 and 200 wait (at most a minute) for the outer test to open their
# gate, so it can act at known points of the run instead of racing it. A gate
# is "reached" once the sender has taken every result so far off its queue:
# it puts what it takes on the stream in the same step, so the results are
# then in flight, not still waiting in this process.
GATED_CONFTEST = textwrap.dedent(
    """
    import pathlib
    import time

    import pytest

    GATES = {"test_numbers[100]": "gate1", "test_numbers[200]": "gate2"}
    HERE = pathlib.Path(__file__).parent

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(item):
        gate = GATES.get(item.name)
        if gate is None:
            return
        deadline = time.monotonic() + 60
        queue = item.config.pluginmanager.get_plugin("mcp-reporter")._sender.queue
        while queue and time.monotonic() < deadline:
            time.sleep(0.005)
        (HERE / f"{gate}.reached").touch()
        while not (HERE / f"{gate}.open").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    """
)

GATED_SUITE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.parametrize("i", range(300))
    def test_numbers(i):
        assert i % 50 != 49
    """
)


@pytest.fixture
def replicas(tmp_path):
    """Two ``pytest-mcp serve`` processes on one database: (a, b)."""
    db = tmp_path / "shared.db"
    a = Server(db).start()
    b = Server(db).start()
    yield a, b
    for replica in (a, b):
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGCONT)  # a stopped one could not stop
        replica.stop()


def closing_line(result) -> str:
    """The plugin's last "pytest-mcp: session ..." line."""
    everything = result.outlines + result.errlines
    lines = [line for line in everything if line.startswith("pytest-mcp: session ")]
    assert lines, "\n".join(everything)
    return lines[-1]


def spooled_files(spool_dir):
    return sorted(spool_dir.glob("*.jsonl")) if spool_dir.exists() else []


def test_an_address_nobody_listens_on_is_skipped_for_the_next_one(
    pytester, server, spool_dir
):
    absent = f"127.0.0.1:{free_port()}"
    pytester.makepyfile(test_small=SMALL_SUITE)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--mcp",
        f"--mcp-address= {absent} , {server.addr} ",
        f"--mcp-spool={spool_dir}",
        timeout=INNER_TIMEOUT,
    )

    assert result.ret == 1
    (warning,) = warning_lines(result)
    assert f"cannot reach the recorder at {absent}" in warning, warning
    assert f"recording at {server.addr} instead" in warning, warning
    assert closing_line(result).endswith(f": 20 outcomes recorded at {server.addr}")
    assert spool_path_of(result) is None and spooled_files(spool_dir) == []
    session, _ = assert_stored_exactly_once(
        server, session_id_of(result), [f"test_small.py::test_numbers[{i}]" for i in range(20)]
    )
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert counts_of(session.counts) == summary_counts(result)


def test_a_replica_killed_mid_run_loses_nothing_the_next_one_stores_every_outcome_once(
    pytester, replicas, spool_dir
):
    a, b = replicas
    pytester.makeconftest(GATED_CONFTEST)
    pytester.makepyfile(test_gated=GATED_SUITE)
    gates = pytester.path
    proc, out = run_in_background(pytester, f"{a.addr},{b.addr}", spool_dir)
    try:
        # The run waits at test 100 with tests 0-99 done: the plugin is on a,
        # which has stored all of them.
        wait_until(lambda: (gates / "gate1.reached").exists())
        wait_until(lambda: stored_so_far(a) >= 100)
        session_id = a.session().id
        assert a.session(session_id).outcomes_stored == 100
        # Stopped, a takes the next hundred results without acknowledging any...
        os.kill(a.proc.pid, signal.SIGSTOP)
        (gates / "gate1.open").touch()
        wait_until(lambda: (gates / "gate2.reached").exists())
        assert b.session(session_id).outcomes_stored == 100  # one database: nothing new
        # ...and dies with them in flight: only a resend to b can store them.
        a.kill()
        (gates / "gate2.open").touch()
        ret = proc.wait(INNER_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = Output(out, ret)
    text = "\n".join(result.outlines)

    assert ret == 1, text
    assert summary_counts(result) == {
        "passed": 294, "failed": 6, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0
    }
    (warning,) = warning_lines(result)
    assert f"lost the recorder at {a.addr}" in warning, warning
    assert f"moved to {b.addr}, resending what was not acknowledged" in warning, warning
    assert session_id_of(result) == session_id
    assert closing_line(result).endswith(f": 300 outcomes recorded at {b.addr}"), text
    assert spool_path_of(result) is None and spooled_files(spool_dir) == []
    session, outcomes = assert_stored_exactly_once(
        b, session_id, [f"test_gated.py::test_numbers[{i}]" for i in range(300)]
    )
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert session.source == pb.SOURCE_PLUGIN
    assert counts_of(session.counts) == counts_of(session.summary) == summary_counts(result)
    failed = [o.nodeid for o in outcomes if o.outcome == pb.TEST_OUTCOME_FAILED]
    assert failed == [f"test_gated.py::test_numbers[{i}]" for i in range(49, 300, 50)]


def test_the_list_wraps_around_to_a_replica_that_came_back(pytester, replicas, spool_dir):
    a, b = replicas
    pytester.makeconftest(GATED_CONFTEST)
    pytester.makepyfile(test_gated=GATED_SUITE)
    gates = pytester.path
    proc, out = run_in_background(pytester, f"{a.addr},{b.addr}", spool_dir)
    try:
        wait_until(lambda: (gates / "gate1.reached").exists())
        wait_until(lambda: stored_so_far(a) >= 100)
        session_id = a.session().id
        a.kill()  # the plugin moves on to b...
        a.restart()
        (gates / "gate1.open").touch()
        wait_until(lambda: (gates / "gate2.reached").exists())
        wait_until(lambda: b.session(session_id).outcomes_stored >= 200)
        b.kill()  # ...and past the end of the list, back to a
        (gates / "gate2.open").touch()
        ret = proc.wait(INNER_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = Output(out, ret)
    text = "\n".join(result.outlines)

    assert ret == 1, text
    (warning,) = warning_lines(result)  # one per run: the first move
    assert f"lost the recorder at {a.addr}" in warning and f"moved to {b.addr}" in warning
    assert closing_line(result).endswith(f": 300 outcomes recorded at {a.addr}"), text
    assert spool_path_of(result) is None and spooled_files(spool_dir) == []
    session, _ = assert_stored_exactly_once(
        a, session_id, [f"test_gated.py::test_numbers[{i}]" for i in range(300)]
    )
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert counts_of(session.counts) == summary_counts(result)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--mcp-address=127.0.0.1:1,,127.0.0.1:2"], {}, "--mcp-address: empty address in"),
        (["--mcp-address=127.0.0.1:1, "], {}, "--mcp-address: empty address in"),
        (
            ["--mcp-address=127.0.0.1:1,not an address"],
            {},
            "--mcp-address: 'not an address' is not HOST:PORT",
        ),
        ([], {"PYTEST_MCP_ADDRESS": "127.0.0.1:1,ftp://x:2"}, "--mcp-address: 'ftp://x:2' is not"),
        (["--mcp-address=127.0.0.1:99999"], {}, "--mcp-address: '127.0.0.1:99999' is not"),
    ],
)
def test_an_empty_or_malformed_address_in_the_list_is_a_usage_error(
    pytester, monkeypatch, args, env, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mcp", *args, timeout=INNER_TIMEOUT
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()
    assert "1 passed" not in result.stdout.str()


def test_with_every_address_down_the_run_is_unchanged_and_spools(pytester, spool_dir):
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    pytester.makepyfile(test_small=SMALL_SUITE)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--mcp",
        f"--mcp-address={first},{second}",
        f"--mcp-spool={spool_dir}",
        timeout=INNER_TIMEOUT,
    )

    assert result.ret == 1
    assert summary_counts(result)["failed"] == 3
    (warning,) = warning_lines(result)
    assert f"cannot reach the recorder at {first}" in warning, warning
    assert f"cannot reach the recorder at {second}" in warning, warning
    assert "spooled if none answers" in warning, warning
    assert f"20 of 20 outcomes not acknowledged, session not finished at {first}, {second}" in (
        closing_line(result)
    )
    path = spool_path_of(result)
    assert path is not None and spooled_files(spool_dir) == [path]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 20 + 1  # start, the outcomes, finish
