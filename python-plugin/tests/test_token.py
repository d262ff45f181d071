"""A recorder that requires a token: the right one records, a wrong or missing
one costs one clear warning line and leaves the run as it was."""

from __future__ import annotations

import subprocess

import pytest

from conftest import Server, binary, session_id_of, spool_path_of, warning_lines

TOKEN = "plugin-test-token-4711"


@pytest.fixture
def guarded(tmp_path):
    """``pytest-mcp serve`` with a token; yields its gRPC address."""
    server = Server(tmp_path / "guarded.db", extra=["--token", TOKEN]).start()
    yield server.addr
    server.stop()


SUITE = """
def test_one():
    pass

def test_two():
    assert False
"""


@pytest.mark.parametrize("token", ["not-the-token", None])
def test_a_wrong_or_missing_token_gives_one_clear_warning_and_the_run_is_unchanged(
    pytester, guarded, tmp_path, token
):
    pytester.makepyfile(SUITE)
    args = ["-p", "no:cacheprovider", "--mcp", f"--mcp-address={guarded}",
            f"--mcp-spool={tmp_path / 'spool'}"]
    if token:
        args.append(f"--mcp-token={token}")
    result = pytester.runpytest_subprocess(*args, timeout=120)
    assert result.ret == 1
    result.assert_outcomes(passed=1, failed=1)
    warnings = warning_lines(result)
    assert len(warnings) == 1, warnings
    expected = "invalid token" if token else "missing authorization metadata"
    assert "UNAUTHENTICATED" in warnings[0] and expected in warnings[0], warnings[0]
    assert "did not accept this run's token" in warnings[0], warnings[0]
    assert TOKEN not in "\n".join(result.outlines + result.errlines)
    # What could not be delivered is kept for `pytest-mcp import`.
    assert spool_path_of(result) is not None


def test_the_right_token_records_the_run(pytester, guarded, tmp_path):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mcp", f"--mcp-address={guarded}", f"--mcp-token={TOKEN}",
        f"--mcp-spool={tmp_path / 'spool'}", timeout=120,
    )
    assert result.ret == 1
    assert warning_lines(result) == []
    session_id = session_id_of(result)
    shown = subprocess.run([binary(), "show", session_id, "--db", str(tmp_path / "guarded.db")],
                           capture_output=True, text=True, timeout=30)
    assert "grant     default" in shown.stdout, shown.stdout
    assert "test_two" in shown.stdout
