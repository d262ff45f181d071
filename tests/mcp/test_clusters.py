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
import random, uuid
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
    {}["missing"]

def test_parse():
    raise ValueError("bad value 7")

def test_attribute():
    None.name

def test_convert():
    int("seven")
'''


def run_suite(server: Server, tmp_path: Path) -> str:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_causes.py").write_text(textwrap.dedent(SUITE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:randomly",
         "--mcp", "--mcp-address", server.grpc_addr, "test_causes.py"],
        cwd=suite, env=env, capture_output=True, text=True, timeout=90,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "5 failed" in run.stdout and "30 errors" in run.stdout, run.stdout
    return run.stdout


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_thirty_failures_of_one_broken_fixture_are_one_cluster_of_six(
    server: Server, tmp_path: Path, transport: str
):
    run_suite(server, tmp_path)
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
    assert {c["exception"] for c in rest} == {"AssertionError", "KeyError", "ValueError",
                                             "AttributeError"}
    assert {c["frame"] for c in rest} == {
        "test_causes.py::test_arithmetic", "test_causes.py::test_lookup",
        "test_causes.py::test_parse", "test_causes.py::test_attribute",
        "test_causes.py::test_convert"}
    # The text says the same, largest first.
    text = result.content[0].text
    assert "35 failures in 6 clusters" in text
    assert text.index("30 failures, 30 tests") < text.index("1 failures, 1 tests")


async def test_clusters_name_the_field_of_a_bad_argument(server: Server):
    async with client("http", server, "2026-07-28") as c:
        bad = await c.call_tool("get_failure_clusters", {"session": "yesterday"})
    assert bad.is_error and "session" in bad.content[0].text
