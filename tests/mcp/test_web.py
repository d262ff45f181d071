"""The web pages at / on the HTTP listener, in a real browser: Playwright
for Python driving Debian's chromium (scripts/test installs both), against
the real binary and a real `pytest --mcp` run.

Screenshots of each page go to target/ui-screenshots/ (the README shows two).
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import ROOT, Server, failed, passed, send_outcomes, start_pytest, start_server, \
    stream_plugin_session

pytestmark = pytest.mark.timeout(180)

SHOTS = ROOT / "target" / "ui-screenshots"
# Chromium as root in a container, with nothing reaching out on its own.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if not executable:
        pytest.fail("chromium not found; scripts/test installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=FLAGS, headless=True)
        yield b
        b.close()


class Watched:
    """A page, with what it logged to the console and every URL it asked for."""

    def __init__(self, browser, base: str) -> None:
        origin = base.rstrip("/")
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self, base: str) -> None:
        try:
            assert self.errors == [], self.errors
            assert self.dialogs == [], self.dialogs
            leaving = [u for u in self.requests if not u.startswith(base)]
            assert leaving == [], leaving
        finally:
            self.context.close()


def base_of(server: Server) -> str:
    return server.mcp_url.removesuffix("mcp")


def test_the_pages_follow_a_real_run_while_it_is_held_open(browser, server: Server, tmp_path: Path):
    base = base_of(server)
    w = Watched(browser, base)
    page = w.page
    page.goto(base)
    assert "No sessions recorded yet" in page.inner_text("main")

    release = tmp_path / "release"
    run = start_pytest(server, tmp_path, release=release)
    try:
        # The list notices the run by itself: no reload.
        page.wait_for_selector("tbody tr a", timeout=30_000)
        assert "running" in page.inner_text("tbody tr")
        row = page.locator("tbody tr").first
        row.locator("a").first.click()
        page.wait_for_url("**/sessions/*")
        # The failure arrives while the run is still blocked in its last test.
        page.wait_for_selector("#failures article", timeout=30_000)
        assert run.poll() is None, "the run ended before the page showed its failure"
        assert page.inner_text("h1 .status") == "running"
        failure = page.locator("#failures article").first
        assert "test_demo.py::test_fails" in failure.inner_text()
        failure.locator("summary", has_text="traceback").click()
        traceback = failure.locator("pre").first
        assert ">       assert answer == expected" in traceback.inner_text()
        w.shot("session-running")

        release.touch()
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 1, out
        # Finished without a reload: the badge (what the run came to, not
        # just "finished"), counts and bar move live.
        # (expect, not wait_for_function: the page's CSP forbids eval, as it should.)
        expect(page.locator("h1 .status")).to_have_text("failed", timeout=30_000)
        assert page.locator("h1 .status").get_attribute("title") == "status finished"
        assert page.inner_text("[data-field=passed]") == "2"
        assert page.inner_text("[data-field=failed]") == "1"
        # Shown once, though it arrived live and the stream ended.
        assert page.locator("#failures article").count() == 1
        w.shot("session")

        # The copy button puts the rerun command on the clipboard.
        page.locator("#failures article button[data-copy]").first.click()
        assert page.evaluate("navigator.clipboard.readText()") == "pytest test_demo.py::test_fails"
        page.locator("[data-field=rerun-all]").click()
        assert page.evaluate("navigator.clipboard.readText()") == "pytest test_demo.py::test_fails"

        page.goto(base)
        assert page.locator("tbody tr").count() == 1
        assert "failed" in page.inner_text("tbody tr")

        # Two more real runs: the test's page has a cell for each of the three.
        for _ in range(2):
            again = start_pytest(server, tmp_path, release=release)
            out, _ = again.communicate(timeout=60)
            assert again.returncode == 1, out
        page.goto(base)
        assert page.locator("tbody tr").count() == 3
        w.shot("sessions")
        page.goto(f"{base}tests?nodeid={urllib.request.quote('test_demo.py::test_fails')}")
        cells = page.locator(".strip a")
        assert cells.count() == 3
        assert {cells.nth(i).get_attribute("class") for i in range(3)} == {"failed"}
        assert "assert 3 == 2" in page.inner_text("main")
        # The newest session's page names the cause, known from the two before.
        page.goto(f"{base}sessions/latest")
        causes = page.locator("table.causes tbody tr")
        assert causes.count() == 1
        row = causes.first.inner_text()
        assert "AssertionError in test_demo.py::test_fails: assert <n> == <n>" in row
        assert "in 2 other sessions" in row
    finally:
        release.touch()
        if run.poll() is None:
            run.kill()
    w.close(base)


def test_a_tests_page_has_one_cell_per_run_and_compare_shows_a_new_failure(browser, server: Server):
    base = base_of(server)
    nodeid = "tests/test_w.py::test_sometimes"
    stream_plugin_session(server, [passed(nodeid), passed("tests/test_w.py::test_steady")])
    stream_plugin_session(server, [passed(nodeid), passed("tests/test_w.py::test_steady")])
    stream_plugin_session(server, [failed(nodeid, "AssertionError: flaked"),
                                   passed("tests/test_w.py::test_steady")])
    w = Watched(browser, base)
    page = w.page
    page.goto(f"{base}tests?nodeid={urllib.request.quote(nodeid)}")
    assert page.locator(".strip a").count() == 3
    classes = [page.locator(".strip a").nth(i).get_attribute("class") for i in range(3)]
    assert classes == ["passed", "passed", "failed"]  # newest right
    assert "AssertionError: flaked" in page.inner_text("main")
    w.shot("test")

    page.goto(f"{base}compare")
    new = page.locator("h2", has_text="New failures")
    assert "(1)" in new.inner_text()
    assert nodeid in page.locator("h2:has-text('New failures') + table").inner_text()
    # Its cause is new too: the session before had no failure.
    causes = page.locator("h2:has-text('New causes') + table").inner_text()
    assert "AssertionError in tests/test_w.py::test: flaked" in causes  # def test() in its traceback
    w.shot("compare")

    page.goto(f"{base}flaky")
    w.shot("flaky")

    # The grid: the failing test's row, one cell per session, oldest left.
    page.goto(f"{base}grid?project=demo")
    row = page.locator("table.grid tbody tr").first
    assert nodeid in row.inner_text()
    cells = row.locator("td.cell a")
    assert [cells.nth(i).get_attribute("class") for i in range(cells.count())] == \
        ["passed", "passed", "failed"]
    # Its columns are labelled by when each session started and its commit,
    # and the table fits the page.
    heads = page.locator("table.grid th.session")
    assert heads.count() == 3
    assert re.fullmatch(r"\d\d-\d\d \d\d:\d\d", heads.first.locator(".when").inner_text())
    assert heads.first.locator(".commit").inner_text() == "abc123"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    w.shot("grid")

    page.goto(f"{base}trends?project=demo")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("svg.chart circle").count() == 6  # three sessions, two charts
    # A dated x axis, and a y scale spanning the values, not 0-100%: the
    # pass rate went from 100% to 50%.
    dates = page.locator("svg.chart").first.locator("text.date")
    assert dates.count() == 3
    assert re.fullmatch(r"\d\d-\d\d \d\d:\d\d", dates.first.text_content())
    labels = [t.text_content() for t in page.locator("svg.chart").first.locator("text:not(.date)").all()]
    assert labels[0] == "100.0%" and labels[-1] != "0.0%", labels
    w.shot("trends")

    page.goto(f"{base}sessions/latest/slowest")
    assert page.locator("tbody tr").count() == 2
    w.close(base)


def read_events(url: str, headers: dict[str, str], wanted: int) -> list[dict]:
    """The first `wanted` events of an SSE stream, as {event, id, data}."""
    import json as _json

    events, current = [], {}
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream", **headers})
    with urllib.request.urlopen(request, timeout=20) as stream:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in current:
                    current["data"] = _json.loads(current["data"])
                    events.append(current)
                    if len(events) == wanted:
                        return events
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            current[key] = value.removeprefix(" ")
    return events


def test_a_reconnecting_page_resumes_after_the_last_event_it_saw(server: Server):
    base = base_of(server)
    sid = stream_plugin_session(server, [failed("t.py::test_one", "AssertionError: one")],
                                finish=False)
    [first] = read_events(f"{base}sessions/{sid}/events?after=0", {}, 1)
    assert first["event"] == "progress" and first["id"] == "1"
    assert "t.py::test_one" in first["data"]["failures"]

    send_outcomes(server, sid, [passed("t.py::test_two"),
                                failed("t.py::test_three", "AssertionError: three")], 2)
    # The browser reconnects with the id of the last event it had.
    [again] = read_events(f"{base}sessions/{sid}/events", {"Last-Event-ID": first["id"]}, 1)
    assert again["id"] == "3"
    assert "t.py::test_three" in again["data"]["failures"]
    assert "t.py::test_one" not in again["data"]["failures"]  # not shown twice
    assert again["data"]["text"]["stored"] == "3"
    assert again["data"]["rerun"] == "pytest t.py::test_one t.py::test_three"

    server.grpc("FinishSession", {"session_id": sid, "outcomes_sent": 3,
                                  "summary": {"total_tests": 3, "passed": 1, "failed": 2,
                                              "exitstatus": 1}})
    [end] = read_events(f"{base}sessions/{sid}/events", {"Last-Event-ID": again["id"]}, 1)
    assert end["event"] == "end" and end["data"]["text"]["status"] == "finished"
    assert end["data"]["failures"] == ""



def test_hostile_test_output_renders_as_text(browser, server: Server):
    base = base_of(server)
    nodeid = 'tests/test_x.py::test_<script>alert("id")</script>[&amp;]'
    huge = "<b>not bold</b> & \"quoted\"\n" * 80_000  # about 2 MB
    sid = stream_plugin_session(server, [], finish=False)
    send_outcomes(server, sid, [{
        **failed(nodeid, "<img src=x onerror=alert(1)> & \"\""),
        "longrepr": "<script>alert('traceback')</script>\n" + "E   <i>&lt;</i>\n" * 200,
        "stdout": huge,
    }], 1)
    w = Watched(browser, base)
    page = w.page
    started = time.monotonic()
    page.goto(f"{base}sessions/{sid}")
    loaded = time.monotonic() - started
    article = page.locator("#failures article").first
    assert nodeid in article.inner_text()
    assert '<img src=x onerror=alert(1)> & ""' in article.inner_text()
    article.locator("summary", has_text="traceback").click()
    assert "<script>alert('traceback')</script>" in article.locator("pre").first.inner_text()
    # Nothing from the run became markup.
    assert page.locator("main script, main img, main i").count() == 0
    assert page.locator("main b", has_text="not bold").count() == 0
    article.locator("summary", has_text="captured stdout").click()
    assert '<b>not bold</b> & "quoted"' in article.locator("pre").nth(1).inner_text()
    assert page.evaluate("document.scripts.length") == 1  # /assets/app.js alone
    assert loaded < 30, loaded  # a sanity bound, not a benchmark
    w.close(base)


def lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as reply:
            return reply.status, reply.read(200_000).decode(errors="replace"), lower(reply.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), lower(e.headers)


def test_with_a_token_every_page_and_stream_needs_it(browser, tmp_path: Path):
    s = start_server(tmp_path / "db.sqlite", "--token", "page-token")
    try:
        s.token = "page-token"
        sid = stream_plugin_session(s, [failed("t.py::test_a", "AssertionError: secret detail")])
        base = base_of(s)
        for path in ["", f"sessions/{sid}", f"sessions/{sid}/events", "events",
                     "tests?nodeid=t.py::test_a", "flaky", "compare"]:
            status, body, _ = fetch(base + path)
            assert status == 401, (path, status)
            assert "secret detail" not in body
            status, _, headers = fetch(base + path, {"Accept": "text/html"})
            if path.endswith("events"):
                assert status == 401, (path, status)
            else:
                assert status in (302, 303, 307) and headers["location"].startswith("/login"), path
            status, _, _ = fetch(base + path, {"Authorization": "Bearer wrong"})
            assert status == 401, path
        status, body, _ = fetch(f"{base}sessions/{sid}", {"Authorization": "Bearer page-token"})
        assert status == 200 and "secret detail" in body

        # A person signs in once; the cookie carries the token from then on.
        w = Watched(browser, base)
        page = w.page
        page.goto(f"{base}sessions/{sid}")
        page.wait_for_url("**/login?next=*")
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        assert "That token is not valid" in page.inner_text("main")
        page.fill("#token", "page-token")
        page.click("button[type=submit]")
        page.wait_for_url(f"**/sessions/{sid}")
        assert "secret detail" in page.inner_text("main")
        [cookie] = w.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        w.close(base)
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)


def test_pages_answer_only_to_loopback_names_and_carry_a_strict_policy(server: Server):
    base = base_of(server)
    status, _, headers = fetch(base)
    assert status == 200
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    status, _, _ = fetch(base, {"Host": "evil.example"})
    assert status == 403
    status, body, _ = fetch(f"{base}sessions/{uuid.uuid4()}")
    assert status == 404 and "no session" in body
    status, body, _ = fetch(f"{base}sessions/nope")
    assert status == 400 and "session" in body


def test_no_ui_leaves_mcp_alone(tmp_path: Path):
    s = start_server(tmp_path / "db.sqlite", "--no-ui")
    try:
        status, _, _ = fetch(base_of(s))
        assert status == 404
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)


def test_one_failure_in_nine_hundred_is_a_failed_badge_and_a_red_mark_you_can_see(
    browser, server: Server
):
    base = base_of(server)
    sid = stream_plugin_session(server, [], finish=False)
    tests = [passed(f"tests/test_many.py::test_{i}") for i in range(899)]
    tests.insert(450, failed("tests/test_many.py::test_the_one", "AssertionError: the one"))
    for start in range(0, 900, 300):
        send_outcomes(server, sid, tests[start:start + 300], first_seq=start + 1)
    server.grpc("FinishSession", {
        "session_id": sid, "outcomes_sent": 900,
        "summary": {"total_tests": 900, "passed": 899, "failed": 1, "exitstatus": 1,
                    "duration": 9.0},
    })
    w = Watched(browser, base)
    page = w.page
    page.goto(f"{base}sessions/{sid[:8]}")
    assert page.inner_text("h1 .status") == "failed"
    # The red mark: at least 2% of the bar, and a few pixels, whatever the ratio.
    bar = page.locator("h1 ~ svg.bar, svg.bar").first.bounding_box()
    mark = page.locator("svg.bar rect.failed").first.bounding_box()
    assert bar and mark
    assert mark["width"] >= 0.02 * bar["width"] - 0.5 and mark["width"] >= 4, (mark, bar)
    # The headline is the failure, not a 99.9% pass rate.
    counts = page.locator(".counts")
    assert counts.locator("div").first.inner_text().startswith("1\n")
    assert "failed" in counts.locator("div").first.inner_text()
    w.shot("session-one-failure")
    # The list says it too.
    page.goto(base)
    row = page.locator("tbody tr").first
    assert row.locator(".status").inner_text() == "failed"
    assert row.locator("svg.bar rect.failed").first.bounding_box()["width"] >= 2
    w.close(base)


def test_each_project_has_its_own_pages_and_a_switcher(browser, server: Server):
    from conftest import SHARED, two_projects

    ids = two_projects(server)
    base = base_of(server)
    # serve says where its pages are.
    assert f"pytest-mcp: web pages at {base}" in server.stderr, server.stderr
    w = Watched(browser, base)
    page = w.page
    # The most recently active project by default, with a switcher to the other.
    page.goto(base)
    assert page.locator("tbody tr").count() == 3
    options = page.locator("select[name=project] option")
    assert [options.nth(i).inner_text() for i in range(options.count())] == \
        ["blog (3)", "shop (10)"]
    page.select_option("select[name=project]", "shop")
    page.wait_for_url("**/?project=shop*")
    assert page.locator("tbody tr").count() == 10
    # The shared test's page: passing in shop, flaky in blog, each with its own runs.
    quoted = urllib.request.quote(SHARED)
    page.goto(f"{base}tests?project=shop&nodeid={quoted}")
    assert page.locator(".strip a").count() == 10
    assert page.inner_text(".verdict").lower() == "passing"
    page.goto(f"{base}tests?project=blog&nodeid={quoted}")
    assert page.locator(".strip a").count() == 3
    assert page.inner_text(".verdict").lower() == "flaky"
    assert "same code" in page.inner_text("main")
    # Flaky tests, by project.
    page.goto(f"{base}flaky?project=shop")
    assert "No flaky tests." in page.inner_text("main")
    page.goto(f"{base}flaky?project=blog")
    assert SHARED in page.inner_text("table")
    # A known-flaky failure is labelled on the session and compare pages.
    page.goto(f"{base}sessions/{ids['blog'][-1]}")
    assert page.locator("#failures article .flaky").count() == 1
    page.goto(f"{base}compare?project=blog")
    new = page.locator("h2:has-text('New failures') + table")
    assert SHARED in new.inner_text() and "known flaky" in new.inner_text()
    assert "known flaky" in page.locator("h2:has-text('New causes') + table").inner_text()
    w.close(base)
    # An unknown project is a 404 that says which projects there are.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}grid?project=nope", timeout=10)
    assert refused.value.code == 404
    assert "the projects are: blog (3 sessions), shop (10 sessions)" in \
        refused.value.read().decode()


def test_a_page_shows_every_failure_it_lists_not_an_agents_twenty_kilobytes(browser, server: Server):
    base = base_of(server)
    long = "\n".join(f"    frame {i}: value = compute({i})" for i in range(80))
    failures = [{**failed(f"tests/test_big.py::test_{i}", f"AssertionError: case {i}"),
                 "longrepr": f"{long}\nE   AssertionError: case {i}"} for i in range(30)]
    sid = stream_plugin_session(server, failures)
    w = Watched(browser, base)
    page = w.page
    page.goto(f"{base}sessions/{sid}")
    # An MCP answer holds what fits 20 KB; a person's page lists them all.
    assert page.locator("#failures article").count() == 30
    assert "More failures than shown" not in page.inner_text("main")
    w.close(base)
