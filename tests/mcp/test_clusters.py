"""Failures grouped by cause (`get_failure_clusters`), on a real `pytest --mcp` run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Server, client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

# Thirty tests fail through one broken fixture, each message with its own
# port, run id and temporary directory; five fail for five other reasons.
SUITE = '''
import os, random, uuid
import pytest

@pytest.fixture
def db(tmp_path):
    port = random.randint(40000, 60000)
    raise ConnectionRefusedError(
        f"[Errno 111] cannot reach the database at 127.0.0.1:{port} for run {uuid.uuid4()} "
        f"(data in {tmp_path})")

@pytest.mark.parametrize("i", range(30))
def test_uses_the_database(db, i):
    pass

def test_arithmetic():
    assert 1 + 1 == 3

def test_lookup():
    if not os.environ.get("FIXED"):
        {}["missing"]

def test_parse():
    if not os.environ.get("FIXED"):
        raise ValueError("bad value 7")

def test_new_cause():
    if os.environ.get("NEW_CAUSE"):
        raise TimeoutError("the queue did not drain in 30 s")

def test_attribute():
    None.name

def test_convert():
    int("seven")
'''


def run_suite(server: Server, tmp_path: Path, **flags: str) -> str:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "test_causes.py").write_text(textwrap.dedent(SUITE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(flags)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:randomly",
         "--mcp", "--mcp-address", server.grpc_addr, "test_causes.py"],
        cwd=suite, env=env, capture_output=True, text=True, timeout=90,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "30 errors" in run.stdout, run.stdout
    return run.stdout


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_thirty_failures_of_one_broken_fixture_are_one_cluster_of_six(
    server: Server, tmp_path: Path, transport: str
):
    out = run_suite(server, tmp_path)
    assert "5 failed" in out, out
    async with client(transport, server, "2026-07-28") as c:
        result = await c.call_tool("get_failure_clusters", {})
        assert not result.is_error, result.content
        got = result.structured_content
    assert got["failures"] == 35
    assert got["clusters_total"] == 6
    big, *rest = got["clusters"]
    assert big["failures"] == 30 and big["tests_total"] == 30
    assert big["exception"] == "ConnectionRefusedError"
    assert big["frame"] == "test_causes.py::db"
    assert "<n>" in big["message"] and "<uuid>" in big["message"] and "<path>" in big["message"]
    assert len(big["tests"]) == 10  # tests_per_cluster's default; the count says 30
    assert big["tests"][0].startswith("test_causes.py::test_uses_the_database[")
    assert "ConnectionRefusedError" in big["representative"]["traceback"]
    assert big["rerun_command"].startswith("pytest ")
    assert [c["failures"] for c in rest] == [1, 1, 1, 1, 1]
    # The project's first run: every cause is new.
    assert all(c["new"] and c["first_seen"] is None and c["seen_in_sessions"] == 0
               for c in got["clusters"])
    assert {c["exception"] for c in rest} == {"AssertionError", "KeyError", "ValueError",
                                             "AttributeError"}
    assert {c["frame"] for c in rest} == {
        "test_causes.py::test_arithmetic", "test_causes.py::test_lookup",
        "test_causes.py::test_parse", "test_causes.py::test_attribute",
        "test_causes.py::test_convert"}
    # The text says the same, largest first.
    text = result.content[0].text
    assert "35 failures in 6 clusters" in text
    assert text.index("30 failures, 30 tests") < text.index("1 failure, 1 test ")


async def test_clusters_name_the_field_of_a_bad_argument(server: Server):
    async with client("http", server, "2026-07-28") as c:
        bad = await c.call_tool("get_failure_clusters", {"session": "yesterday"})
    assert bad.is_error and "session" in bad.content[0].text


async def test_a_test_five_times_slower_is_a_duration_regression_and_noise_is_not(server: Server):
    from conftest import passed, stream_plugin_session

    def run(slow: float, fast: float) -> str:
        return stream_plugin_session(server, [
            {**passed("tests/test_t.py::test_slow"), "duration": slow},
            {**passed("tests/test_t.py::test_fast"), "duration": fast},
            {**passed("tests/test_t.py::test_steady"), "duration": 0.5},
        ])

    for i in range(5):
        run(0.2 + 0.01 * i, 0.001)
    head = run(1.1, 0.006)  # 5x slower; the fast one 6x but 5 ms over: noise
    async with client("http", server, "2026-07-28") as c:
        result = await c.call_tool("duration_regressions", {})
        assert not result.is_error, result.content
        got = result.structured_content
        assert got["session"]["id"] == head
        assert got["baseline_sessions"] == 5
        assert got["total"] == 1
        [slow] = got["slower"]
        assert slow["nodeid"] == "tests/test_t.py::test_slow"
        assert slow["duration"] == 1.1 and abs(slow["median"] - 0.22) < 1e-9
        assert 4.9 < slow["ratio"] < 5.1 and slow["runs"] == 5
        assert "tests/test_t.py::test_slow" in result.content[0].text
        # A lower floor catches the millisecond test too; a bad ratio names its field.
        lower = (await c.call_tool("duration_regressions", {"floor_seconds": 0.001})).structured_content
        assert {r["nodeid"] for r in lower["slower"]} == {"tests/test_t.py::test_slow",
                                                           "tests/test_t.py::test_fast"}
        bad = await c.call_tool("duration_regressions", {"ratio": 0.5})
        assert bad.is_error and "ratio" in bad.content[0].text
        # compare_sessions has the same section, for head against its history.
        compared = await c.call_tool("compare_sessions", {})
        assert not compared.is_error, compared.content
        cmp = compared.structured_content
        assert cmp["head"]["id"] == head and cmp["counts"]["duration_regressions"] == 1
        assert [(r["nodeid"], r["duration"]) for r in cmp["duration_regressions"]] == [
            ("tests/test_t.py::test_slow", 1.1)]
        assert "REGRESSED tests/test_t.py::test_slow: 1.100s, 5.0x" in compared.content[0].text


async def test_compare_names_the_causes_fixed_and_the_new_one(server: Server, tmp_path: Path):
    run_suite(server, tmp_path)
    # Two of the causes fixed: compare names them, and no new cause.
    out = run_suite(server, tmp_path, FIXED="1")
    assert "3 failed" in out, out
    async with client("http", server, "2026-07-28") as c:
        got = (await c.call_tool("compare_sessions", {})).structured_content
        assert got["new_causes"] == []
        fixed = sorted(got["fixed_causes"], key=lambda c: c["cause"])
        assert [c["cause"].split(" in ")[0] for c in fixed] == ["KeyError", "ValueError"]
        assert [c["tests"] for c in fixed] == [["test_causes.py::test_lookup"],
                                               ["test_causes.py::test_parse"]]
        # The broken fixture's thirty failures are still one known cause, not new.
        assert all("ConnectionRefusedError" not in c["cause"] for c in got["fixed_causes"])
    # A new cause: reported as new.
    out = run_suite(server, tmp_path, FIXED="1", NEW_CAUSE="1")
    assert "4 failed" in out, out
    async with client("http", server, "2026-07-28") as c:
        result = await c.call_tool("compare_sessions", {})
        got = result.structured_content
        [new] = got["new_causes"]
        assert new["cause"] == ("TimeoutError in test_causes.py::test_new_cause: "
                                "the queue did not drain in <n> s")
        assert new["tests"] == ["test_causes.py::test_new_cause"]
        assert got["fixed_causes"] == []
        assert "NEW CAUSE (1 test): TimeoutError" in result.content[0].text


async def test_get_failures_grouped_by_cause_pages_through_every_failure_once(
    server: Server, tmp_path: Path
):
    run_suite(server, tmp_path)
    async with client("http", server, "2026-07-28") as c:
        seen, causes, cursor = [], [], None
        while True:
            args = {"group_by": "cluster", "limit": 8}
            if cursor:
                args["cursor"] = cursor
            page = (await c.call_tool("get_failures", args)).structured_content
            seen += [f["nodeid"] for f in page["failures"]]
            causes += [f["cause"] for f in page["failures"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 35
        # The broken fixture's thirty first, then one failure per other cause.
        assert len(set(causes[:30])) == 1 and "ConnectionRefusedError" in causes[0]
        assert len(set(causes[30:])) == 5
        bad = await c.call_tool("get_failures", {"group_by": "module"})
        assert bad.is_error and "group_by" in bad.content[0].text
        bad = await c.call_tool("get_failures", {"group_by": "cluster", "cursor": "12"})
        assert bad.is_error and "cursor" in bad.content[0].text


async def test_a_cause_seen_in_an_earlier_run_is_known_and_a_new_one_is_new(
    server: Server, tmp_path: Path
):
    run_suite(server, tmp_path)
    async with client("http", server, "2026-07-28") as c:
        first = (await c.call_tool("get_session", {})).structured_content["session"]
    run_suite(server, tmp_path, NEW_CAUSE="1")
    async with client("http", server, "2026-07-28") as c:
        result = await c.call_tool("get_failure_clusters", {"limit": 10})
        got = result.structured_content
    assert got["clusters_total"] == 7
    by_exception = {c["exception"]: c for c in got["clusters"]}
    new = by_exception["TimeoutError"]
    assert new["new"] and new["seen_in_sessions"] == 0 and new["first_seen"] is None
    known = [c for c in got["clusters"] if c["exception"] != "TimeoutError"]
    assert len(known) == 6
    assert all(not c["new"] and c["seen_in_sessions"] == 1 for c in known)
    assert {c["first_seen"] for c in known} == {first["started_at"]}
    # Only one earlier session: it is both the first and the last to have it.
    assert {c["last_seen"] for c in known} == {first["started_at"]}
    # The big fixture cause broke 30 tests there, each other cause one.
    assert sorted(c["failures_in_other_sessions"] for c in known) == [1, 1, 1, 1, 1, 30]
    # Which tests each known cause broke: the fixture's thirty, one for each other.
    assert sorted(c["tests_ever"] for c in known) == [1, 1, 1, 1, 1, 30]
    big = max(known, key=lambda c: c["tests_ever"])
    assert len(big["tests_ever_named"]) == 10 and big["tests_ever_named"] == sorted(big["tests_ever_named"])
    assert new["tests_ever"] == 0 and new["tests_ever_named"] == []
    assert "(NEW): TimeoutError" in result.content[0].text
    assert "known since " + first["started_at"] in result.content[0].text
