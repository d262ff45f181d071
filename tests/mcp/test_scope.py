"""One project at a time: two projects in one database, read through MCP
(the official Python SDK), the command line, and stdio started inside a
project, never mix; a known-flaky test's failure says so wherever failures
are read; unknown arguments are refused by name.

The history is conftest.two_projects: a nodeid shared by "shop" (where it
always passes) and "blog" (where it passed and failed on the same code).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mcp import StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp import ClientSession

from conftest import SHARED, Server, binary, client, two_projects

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(c, name: str, arguments: dict) -> dict:
    result = await c.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


def cli(server: Server, *args: str, cwd: Path | str = "/") -> subprocess.CompletedProcess:
    """The command line on the server's database, run in `cwd`."""
    return subprocess.run([binary(), *args, "--db", server.db], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def cli_json(server: Server, *args: str) -> dict:
    done = cli(server, *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_each_project_sees_only_its_own_runs_through_every_read(server: Server):
    ids = two_projects(server)
    shop, blog = ids["shop"], ids["blog"]
    async with client("http", server, "2026-07-28") as c:
        # The shared nodeid: passing in shop (ten runs, all shop's), flaky in
        # blog on one code state, named with its sessions.
        h = await call(c, "get_test_history", {"nodeid": SHARED, "project": "shop"})
        assert h["project"] == "shop"
        assert h["stability"]["verdict"] == "passing"
        assert {e["session_id"] for e in h["entries"]} <= set(shop)
        assert len(h["entries"]) == 10 and all(e["outcome"] == "passed" for e in h["entries"])
        h = await call(c, "get_test_history", {"nodeid": SHARED, "project": "BLOG"})
        assert h["project"] == "blog", "names match case-insensitively"
        assert [e["session_id"] for e in h["entries"]] == blog[::-1]
        s = h["stability"]
        assert s["verdict"] == "flaky"
        assert s["evidence"]["code_state"] == "b" * 40
        assert s["evidence"]["failed_in"] == [blog[0]] and s["evidence"]["passed_in"] == [blog[1]]
        assert "same code" in s["why"]

        # Flaky tests: none in shop, the shared one in blog.
        assert (await call(c, "find_flaky_tests", {"project": "shop"}))["total"] == 0
        flaky = await call(c, "find_flaky_tests", {"project": "blog"})
        assert [t["nodeid"] for t in flaky["tests"]] == [SHARED]

        # latest is each project's own newest; by default the most recently
        # active project's (blog's).
        assert (await call(c, "get_session", {"project": "shop"}))["session"]["id"] == shop[-1]
        assert (await call(c, "get_session", {}))["session"]["id"] == blog[-1]
        assert (await call(c, "list_sessions", {"project": "shop", "limit": 100}))["sessions"] \
            and all(x["project"] == "shop" for x in
                    (await call(c, "list_sessions", {"project": "shop", "limit": 100}))["sessions"])

        # Causes: each project's newest session's, known only from its own runs.
        shop_causes = await call(c, "get_failure_clusters", {"project": "shop"})
        assert [cl["tests"] for cl in shop_causes["clusters"]] == [["tests/test_shop.py::test_cart"]]
        blog_causes = await call(c, "get_failure_clusters", {"project": "blog"})
        assert [cl["tests"] for cl in blog_causes["clusters"]] == [[SHARED]]
        # blog's first run failed of it too: known, from blog's sessions only.
        assert not blog_causes["clusters"][0]["new"]
        assert blog_causes["clusters"][0]["seen_in_sessions"] == 1

        # compare: the base is the session before head in head's project.
        cmp = await call(c, "compare_sessions", {"project": "shop"})
        assert (cmp["base"]["id"], cmp["head"]["id"]) == (shop[-2], shop[-1])
        assert [t["nodeid"] for t in cmp["new_failures"]] == ["tests/test_shop.py::test_cart"]

        # Duration regressions compare with the project's own earlier runs.
        assert (await call(c, "duration_regressions", {"project": "shop"}))["baseline_sessions"] == 9
        assert (await call(c, "duration_regressions", {"project": "blog"}))["baseline_sessions"] == 2

        # Quarantine suggestions: the shared test passed its last ten runs in
        # shop, not in blog.
        await call(c, "quarantine_test", {"nodeid": SHARED, "reason": "flaky in blog"})
        q_shop = await call(c, "list_quarantine", {"project": "shop"})
        q_blog = await call(c, "list_quarantine", {"project": "blog"})
        assert q_shop["entries"][0]["release_suggested"] is True
        assert q_blog["entries"][0]["release_suggested"] is False

        # An unknown project is an error that lists the known ones.
        bad = await c.call_tool("get_failures", {"session": "latest", "project": "nope"})
        assert bad.is_error
        assert "project" in text_of(bad) and "blog (3 sessions)" in text_of(bad) \
            and "shop (10 sessions)" in text_of(bad), text_of(bad)
        projects = await call(c, "list_projects", {})
        assert [p["name"] for p in projects["projects"]] == ["blog", "shop"]


async def test_an_unknown_argument_is_refused_naming_it(server: Server):
    two_projects(server)
    async with client("http", server, "2026-07-28") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["get_failures"].input_schema.get("additionalProperties") is False
        bad = await c.call_tool("get_failures", {"session": "latest", "projekt": "shop"})
        assert bad.is_error
        assert "projekt" in text_of(bad), text_of(bad)
        # Nothing was read from another project meanwhile.
        assert "tests/test_" not in text_of(bad)


async def test_a_known_flaky_tests_failure_is_labelled_wherever_failures_are_read(server: Server):
    ids = two_projects(server)
    head = ids["blog"][-1]
    async with client("http", server, "2026-07-28") as c:
        got = await call(c, "get_failures", {"project": "blog"})
        assert [(f["nodeid"], f["known_flaky"]) for f in got["failures"]] == [(SHARED, True)]
        assert "(known flaky)" in text_of(await c.call_tool("get_failures", {"project": "blog"}))
        clusters = await call(c, "get_failure_clusters", {"project": "blog"})
        assert clusters["clusters"][0]["known_flaky_tests"] == 1
        assert clusters["clusters"][0]["representative"]["known_flaky"] is True
        session = await call(c, "get_session", {"project": "blog"})
        assert session["first_failures"][0]["known_flaky"] is True
        # compare: a new failure of a known-flaky test, and its cause,
        # labelled rather than announced as new breakage.
        cmp_result = await c.call_tool("compare_sessions", {"project": "blog"})
        cmp = cmp_result.structured_content
        assert [(t["nodeid"], t["known_flaky"]) for t in cmp["new_failures"]] == [(SHARED, True)]
        assert cmp["new_causes"] and all(cause["known_flaky"] for cause in cmp["new_causes"])
        assert "known flaky: likely not new breakage" in text_of(cmp_result)
        # shop's failure is not flaky and is not labelled.
        shop = await call(c, "get_failures", {"project": "shop"})
        assert [f["known_flaky"] for f in shop["failures"]] == [False]
    shown = cli(server, "show", head[:8])
    assert shown.returncode == 0, shown.stderr
    assert f"FAILED (known flaky) {SHARED}" in shown.stdout, shown.stdout
    shown = cli(server, "show", "latest", "--project", "shop")
    assert "FAILED tests/test_shop.py::test_cart" in shown.stdout, shown.stdout


async def test_each_new_command_prints_its_tools_structured_result_as_json(server: Server):
    ids = two_projects(server)
    cases = [
        (["flaky", "--project", "blog"], "find_flaky_tests", {"project": "blog"}),
        (["compare", "--project", "shop"], "compare_sessions", {"project": "shop"}),
        (["compare", ids["blog"][0], ids["blog"][-1][:8], "--project", "blog"],
         "compare_sessions", {"project": "blog", "base": ids["blog"][0], "head": ids["blog"][-1]}),
        (["history", SHARED, "--project", "blog"], "get_test_history",
         {"nodeid": SHARED, "project": "blog"}),
        (["causes", "--project", "shop"], "get_failure_clusters", {"project": "shop"}),
        (["slowest", ids["shop"][3][:8]], "slowest_tests", {"session": ids["shop"][3]}),
        (["regressions", "--project", "shop"], "duration_regressions", {"project": "shop"}),
        (["projects"], "list_projects", {}),
    ]
    async with client("http", server, "2026-07-28") as c:
        for args, tool, arguments in cases:
            assert cli_json(server, *args) == await call(c, tool, arguments), args
    # And their text is the tool's text.
    text = cli(server, "history", SHARED, "--project", "blog").stdout
    assert text.startswith(f"{SHARED} (project blog): flaky: passed and failed on the same code")


async def test_stdio_started_in_a_project_reads_that_project(server: Server, tmp_path: Path):
    ids = two_projects(server)
    shop_dir = tmp_path / "Shop"
    (shop_dir / "tests").mkdir(parents=True)
    (shop_dir / "pytest.ini").write_text("[pytest]\n")
    params = StdioServerParameters(
        command=binary(), args=["stdio", "--db", str(server.db), "--no-grpc"],
        env={"RUST_LOG": "warn"}, cwd=str(shop_dir / "tests"))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            latest = await call(session, "get_session", {})
            assert latest["session"]["id"] == ids["shop"][-1]
            listed = await call(session, "list_sessions", {"limit": 100})
            assert {s["id"] for s in listed["sessions"]} == set(ids["shop"])
            # The resource follows the directory's project too.
            read_back = await session.read_resource("pytest://sessions/latest")
            assert ids["shop"][-1] in read_back.contents[0].text
    # The command line in the same directory reads the same project.
    done = cli(server, "sessions", "-n", "100", cwd=shop_dir / "tests")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert set(listed) == set(ids["shop"])
