"""Fixtures of the replica and fault tests: `pytest-mcp serve` replicas on a
fresh PostgreSQL database each, and a PostgreSQL server of a test's own for
the faults that stop it.

The shared server's URL comes from $PYTEST_MCP_TEST_PG (scripts/test starts
one with scripts/pg-server); without it these tests fail rather than skip,
so a run that was meant to cover PostgreSQL cannot pass without doing so.
Helpers live in replica_support.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List

import pytest

from replica_support import PgServer, Replica, create_database, drop_database


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("PYTEST_MCP_TEST_PG", "").strip()
    if not url:
        pytest.fail(
            "PYTEST_MCP_TEST_PG is not set: run these tests through scripts/test, or start a "
            "server (scripts/pg-server start DIR) and set PYTEST_MCP_TEST_PG to the URL it prints"
        )
    return url


@pytest.fixture
def database(pg_url: str):
    """The URL of a new, empty database on the shared server, dropped afterwards."""
    url = create_database(pg_url)
    yield url
    drop_database(pg_url, url)


@pytest.fixture
def start_replica() -> Callable[..., Replica]:
    """Starts `pytest-mcp serve --db DB EXTRA...`; every one is stopped at the end."""
    started: List[Replica] = []

    def start(db: str, *extra: str, name: str = "") -> Replica:
        replica = Replica(db, *extra, name=name)
        started.append(replica)
        return replica.start()

    yield start
    for replica in started:
        replica.stop()


@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own, which it may stop and start.

    Its directory is outside pytest's tmp_path, which the `postgres` user
    (the server's, when the tests run as root) may not enter.
    """
    directory = Path(tempfile.mkdtemp(prefix="pytest-mcp-pg-"))
    server = PgServer(directory)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
