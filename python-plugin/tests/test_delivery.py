"""The delivery contract: a missing, dying or slow recorder never changes the run,
and every outcome ends up stored exactly once (resent, or spooled and imported)."""

from __future__ import annotations

import json
import textwrap
import time

from conftest import (
    INNER_TIMEOUT,
    Output,
    Server,
    assert_stored_exactly_once,
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

    @pytest.mark.parametrize("i", range(30))
    def test_numbers(i):
        print("number", i)
        assert i % 7 != 3

    def test_skipped():
        pytest.skip("skip reason")
    """
)


def slow_suite(n: int, sleep: float) -> str:
    return textwrap.dedent(
        f"""
        import time
        import pytest

        @pytest.mark.parametrize("i", range({n}))
        def test_slowly(i):
            time.sleep({sleep})
            assert i % 50 != 49
        """
    )


def read_spool(path):
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines, "empty spool file"
    return lines


def test_without_a_server_the_run_is_unchanged_warns_once_and_spools(
    pytester, spool_dir, tmp_path
):
    pytester.makepyfile(test_small=SMALL_SUITE)
    bare = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    absent = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--mcp",
        f"--mcp-address={absent}",
        f"--mcp-spool={spool_dir}",
        "--mcp-timeout=120",
        timeout=INNER_TIMEOUT,
    )
    elapsed = time.monotonic() - started

    assert result.ret == bare.ret == 1
    assert summary_counts(result) == summary_counts(bare)
    (warning,) = warning_lines(result)
    assert absent in warning and "cannot reach the recorder" in warning
    # An absent server is not waited for: far less than the 120 s allowed for acks.
    assert elapsed < 60

    path = spool_path_of(result)
    assert path is not None and path.parent == spool_dir
    lines = read_spool(path)
    start, outcomes, finish = lines[0], lines[1:-1], lines[-1]
    assert start["type"] == "start" and start["environment"]["pytest_version"]
    assert [o["type"] for o in outcomes] == ["outcome"] * 31
    assert [o["seq"] for o in outcomes] == list(range(1, 32))
    assert finish["type"] == "finish" and finish["outcomes_sent"] == 31
    assert finish["summary"]["failed"] == 4 and finish["summary"]["exitstatus"] == 1
    assert {o["session_id"] for o in lines} == {start["session_id"]}
    # Captured output is kept as pytest shows it: for tests that did not pass.
    assert "stdout" not in outcomes[0] and outcomes[0]["outcome"] == "passed"
    assert outcomes[3]["outcome"] == "failed" and outcomes[3]["stdout"] == "number 3\n"

    # The spool replays into a database; a second import stores nothing twice.
    server = Server(tmp_path / "later.db").start()
    try:
        first = server.import_files(path)
        assert first.returncode == 0, first.stderr
        assert "31 outcomes read, 31 new, 31 stored" in first.stdout
        session = server.session(start["session_id"])
        assert session.status == pb.SESSION_STATUS_FINISHED
        assert session.source == pb.SOURCE_IMPORT
        assert session.summary.exitstatus == 1
        second = server.import_files(path)
        assert second.returncode == 0, second.stderr
        assert "31 outcomes read, 0 new, 31 stored" in second.stdout
        assert_stored_exactly_once(server, start["session_id"], [o["nodeid"] for o in outcomes])
    finally:
        server.stop()


def test_a_server_killed_mid_run_and_restarted_ends_with_every_outcome_once(
    pytester, server, spool_dir
):
    pytester.makepyfile(test_slow=slow_suite(300, 0.01))
    proc, out = run_in_background(pytester, server.addr, spool_dir)
    wait_until(lambda: stored_so_far(server) >= 40)
    session_id = server.session().id
    server.kill()
    time.sleep(0.5)  # results pile up while it is away
    server.restart()
    ret = proc.wait(INNER_TIMEOUT)
    result = Output(out, ret)

    assert ret == 1, "\n".join(result.outlines)
    assert summary_counts(result)["failed"] == 6
    assert len(warning_lines(result)) == 1, "\n".join(result.outlines)
    assert session_id_of(result) == session_id
    spool = spool_path_of(result)
    if spool is not None:  # what the resend could not deliver in time
        done = server.import_files(spool)
        assert done.returncode == 0, done.stderr
    session, _ = assert_stored_exactly_once(
        server, session_id, [f"test_slow.py::test_slowly[{i}]" for i in range(300)]
    )
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert session.summary.failed == 6


def test_a_server_killed_for_good_leaves_a_spool_that_completes_the_session(
    pytester, server, spool_dir
):
    pytester.makepyfile(test_slow=slow_suite(150, 0.01))
    proc, out = run_in_background(pytester, server.addr, spool_dir, "--mcp-timeout=1")
    wait_until(lambda: stored_so_far(server) >= 20)
    session_id = server.session().id
    server.kill()
    ret = proc.wait(INNER_TIMEOUT)
    result = Output(out, ret)

    assert ret == 1
    (warning,) = warning_lines(result)
    assert "lost the recorder" in warning
    spool = spool_path_of(result)
    assert spool is not None, "\n".join(result.outlines)
    lines = read_spool(spool)
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "finish"
    assert lines[-1]["outcomes_sent"] == 150

    server.restart()
    stored_before = server.session(session_id).outcomes_stored
    assert stored_before < 150
    assert server.session(session_id).status == pb.SESSION_STATUS_RUNNING
    done = server.import_files(spool)
    assert done.returncode == 0, done.stderr
    session, _ = assert_stored_exactly_once(
        server, session_id, [f"test_slow.py::test_slowly[{i}]" for i in range(150)]
    )
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert session.source == pb.SOURCE_PLUGIN


def test_past_the_memory_bound_results_go_to_the_spool_file(pytester, spool_dir, tmp_path):
    pytester.makeconftest(
        "import pytest_mcp._sender as sender\nsender.MAX_HELD = 20\n"
    )
    pytester.makepyfile(test_small=SMALL_SUITE)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--mcp",
        f"--mcp-address=127.0.0.1:{free_port()}",
        f"--mcp-spool={spool_dir}",
        timeout=INNER_TIMEOUT,
    )
    assert result.ret == 1
    assert len(warning_lines(result)) == 1
    lines = read_spool(spool_path_of(result))
    assert [line["type"] for line in lines] == ["start"] + ["outcome"] * 31 + ["finish"]
    assert [line["seq"] for line in lines[1:-1]] == list(range(1, 32))


def test_the_end_of_a_run_waits_for_acknowledgements_then_finishes_the_session(
    pytester, run_mcp, server
):
    pytester.makepyfile(test_many=slow_suite(500, 0))
    result = run_mcp()
    assert result.ret == 1
    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_FINISHED
    assert session.outcomes_stored == session.outcomes_expected == 500
    assert spool_path_of(result) is None
    assert summary_counts(result) == {
        "passed": 490, "failed": 10, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0
    }


def test_oversized_and_undecodable_content_is_bounded_and_still_delivered(
    pytester, run_mcp, keeping_server
):
    pytester.makepyfile(
        test_hostile=textwrap.dedent(
            """
            import pytest

            def test_lone_surrogate_in_the_message():
                raise ValueError("bad bytes: \\udc80")

            def test_megabytes_of_output():
                print("x" * 3_000_000 + "THE END")

            @pytest.mark.parametrize("name", ["n" * 6000], ids=lambda v: v)
            def test_very_long_nodeid(name):
                pass
            """
        )
    )
    # The server keeps passing tests' output, so the megabytes are sent.
    result = run_mcp("--tb=no", "-rN", address=keeping_server.addr)
    assert result.ret == 1
    assert warning_lines(result) == []
    server = keeping_server
    session = server.session(session_id_of(result))
    assert session.status == pb.SESSION_STATUS_FINISHED
    first, second, third = server.outcomes(session.id)
    assert first.message == "ValueError: bad bytes: ?"
    assert second.stdout.startswith("xxx") and second.stdout.rstrip().endswith("THE END")
    assert "truncated" in second.stdout and len(second.stdout) < 1_000_000
    assert len(third.nodeid.encode()) <= 4096 and "sha1" in third.nodeid
