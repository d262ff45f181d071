"""A policy's rate limit is counted in the database, so it holds across
replicas together; and their audit rows land in one table. Through the
official MCP Python SDK over streamable HTTP.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import anyio
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from replica_support import binary, clean_env

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

POLICY = {
    "version": "1",
    "default": "allow",
    "tools": {
        "list_sessions": {
            "limits": [
                {"counter": "list_sessions_rate", "window": "minute", "max": 30, "scope": "grant"}
            ]
        }
    },
}
TOKEN = "tok-ci-shared-1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_limit_of_30_a_minute_per_grant_holds_across_two_replicas_together(
    tmp_path, database, start_replica
):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"ci": TOKEN}))
    args = ("--policy", str(policy), "--tokens", str(tokens))
    a = start_replica(database, *args, name="A")
    b = start_replica(database, *args, name="B")

    results: list[tuple[str, bool, str]] = []  # (replica, allowed, text)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        create_mcp_http_client(headers=headers) as http_a,
        create_mcp_http_client(headers=headers) as http_b,
        streamable_http_client(a.mcp_url, http_client=http_a) as (read_a, write_a),
        streamable_http_client(b.mcp_url, http_client=http_b) as (read_b, write_b),
        ClientSession(read_a, write_a) as at_a,
        ClientSession(read_b, write_b) as at_b,
    ):
        await at_a.initialize()
        await at_b.initialize()

        async def call(name: str, session: ClientSession) -> None:
            result = await session.call_tool("list_sessions", {})
            results.append((name, not result.is_error, text_of(result)))

        # All fifty in flight at once, half at each replica.
        async with anyio.create_task_group() as group:
            for _ in range(25):
                group.start_soon(call, "A", at_a)
                group.start_soon(call, "B", at_b)

    allowed = [r for r in results if r[1]]
    refused = [r for r in results if not r[1]]
    assert len(results) == 50
    assert (len(allowed), len(refused)) == (30, 20), Counter((r[0], r[1]) for r in results)
    for _, _, text in refused:
        assert "refused by policy" in text, text
        assert "limit of 30 calls per minute" in text, text
        assert "list_sessions_rate" in text, text
    # Each replica on its own would have let all 25 through.
    per_replica = Counter(name for name, ok, _ in allowed)
    assert per_replica["A"] >= 5 and per_replica["B"] >= 5, per_replica

    # One audit table for both: fifty rows, one per call, decisions as answered.
    out = subprocess.run(
        [binary(), "audit", "--db", database, "-n", "100"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "GRANT"], out.stdout
    rows = [line.split()[2:7] for line in lines[1:]]
    assert len(rows) == 50, out.stdout
    assert Counter(tuple(r) for r in rows) == {
        ("ci", "http", "list_sessions", "allowed", "ok"): 30,
        ("ci", "http", "list_sessions", "limited", "-"): 20,
    }, out.stdout
    assert sum("limit of 30 calls per minute" in line for line in lines[1:]) == 20, out.stdout
