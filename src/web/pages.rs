//! The pages: each a function from a view struct to markup. The views are
//! the read model every reader renders ([`crate::views`]), gathered by the
//! handlers in [`super`]; nothing here reads the store.

use maud::{Markup, html};

use super::components::{
    Cell, ago, bar, counts, failure, layout, pass_rate, problem, query_escape, result, seconds,
    short_commit, sparkline, strip, switcher, test_href,
};
use crate::views::history::short_code;
use crate::views::{
    ClustersView, ComparedTestView, ComparisonView, EnvironmentView, FailureView, ProjectsView,
    SessionView, SlowestView, StabilityView, count,
};

/// The sessions list.
pub struct SessionsPage {
    /// The projects there are, for the switcher.
    pub projects: ProjectsView,
    /// Newest first.
    pub sessions: Vec<SessionView>,
    /// The project shown.
    pub project: String,
    /// The status filter, if any.
    pub status: String,
    /// The cursor of the next (older) page.
    pub next: Option<String>,
}

/// Sessions, newest first, updated live.
pub fn sessions(p: &SessionsPage) -> Markup {
    let statuses = ["", "running", "finished", "interrupted", "incomplete"];
    let body = html! {
        h1 { "Sessions" @if !p.project.is_empty() { " · " (p.project) } }
        form.filters method="get" action="/" {
            (switcher(&p.projects))
            label { "status "
                select name="status" {
                    @for s in statuses {
                        option value=(s) selected[s == p.status] { @if s.is_empty() { "any" } @else { (s) } }
                    }
                }
            }
            button type="submit" { "filter" }
        }
        // Always a table, so that the live script has one to refill.
        table data-live-list="/events" {
            thead { tr {
                th { "result" } th { "session" } th { "started" } th { "branch" } th { "commit" }
                th { "outcomes" } th.num { "failed" } th.num { "errors" } th.num { "passed" }
                th.num { "skipped" } th.num { "duration" }
            } }
            tbody {
                @if p.sessions.is_empty() {
                    tr { td.empty colspan="11" { "No sessions recorded yet. Run " code { "pytest --mcp" } " in your project." } }
                }
                @for s in &p.sessions {
                    tr {
                        td { a href=(format!("/sessions/{}", s.id)) { (result(s)) } }
                        td.mono { a href=(format!("/sessions/{}", s.id)) { (s.short_id()) } }
                        td { (ago(&s.started_at)) }
                        td { (s.git_branch.as_deref().unwrap_or("")) }
                        td.mono { (short_commit(s.git_commit.as_deref().unwrap_or(""))) }
                        td { (bar(&s.counts)) }
                        td.num { (s.counts.failed) }
                        td.num { (s.counts.errors) }
                        td.num { (s.counts.passed) }
                        td.num { (s.counts.skipped) }
                        td.num { @if let Some(d) = s.duration { (seconds(d)) } }
                    }
                }
            }
        }
        @if let Some(next) = &p.next {
            div.pager {
                a.button href=(format!("/?project={}&status={}&cursor={}", query_escape(&p.project), query_escape(&p.status), query_escape(next))) { "older sessions →" }
            }
        }
    };
    layout("Sessions", body)
}

/// One outcome row of a session's table.
pub struct OutcomeRow {
    /// Its seq.
    pub seq: u64,
    /// pytest node id.
    pub nodeid: String,
    /// Subtest label, if any.
    pub subtest: String,
    /// The outcome.
    pub outcome: String,
    /// Seconds.
    pub duration: f64,
    /// One-line message.
    pub message: String,
    /// The test ran under quarantine.
    pub quarantined: bool,
}

/// One session.
pub struct SessionPage {
    /// The session.
    pub session: SessionView,
    /// Where it ran.
    pub environment: EnvironmentView,
    /// Who recorded it (the token's grant), when known.
    pub grant: Option<String>,
    /// The causes of its failures, the largest first.
    pub causes: ClustersView,
    /// Its failures and errors, in the order they happened.
    pub failures: Vec<FailureView>,
    /// Failures beyond those shown.
    pub more_failures: bool,
    /// The command rerunning every failure shown.
    pub rerun_all: String,
    /// The page of outcomes asked for.
    pub outcomes: Vec<OutcomeRow>,
    /// The outcome filter.
    pub outcome_filter: String,
    /// The nodeid search.
    pub search: String,
    /// The next page's cursor.
    pub next: Option<String>,
}

/// One session: environment, summary, failures first, then every outcome.
pub fn session(p: &SessionPage) -> Markup {
    let s = &p.session;
    let e = &p.environment;
    let running = s.status == "running";
    let base = format!("/sessions/{}", s.id);
    let project = s.project.as_deref().unwrap_or("");
    let mut chips: Vec<(&str, String)> = Vec::new();
    for (label, value) in [
        ("project", s.project.clone()),
        ("branch", s.git_branch.clone()),
        (
            "commit",
            s.git_commit.as_deref().map(|c| short_commit(c).to_string()),
        ),
        ("code state", s.code_state.as_deref().map(short_code)),
        ("CI", Some(e.ci_provider.clone())),
        (
            "Python",
            Some(
                format!("{} {}", e.python_implementation, e.python_version)
                    .trim()
                    .to_string(),
            ),
        ),
        ("pytest", Some(e.pytest_version.clone())),
        ("os", Some(e.os.clone())),
        ("host", Some(e.hostname.clone())),
        ("grant", p.grant.clone()),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            chips.push((label, v));
        }
    }
    if let Some(dirty) = e.git_dirty {
        chips.push((
            "work tree",
            if dirty {
                "dirty".into()
            } else {
                "clean".into()
            },
        ));
    }
    if e.xdist_workers > 0 {
        chips.push(("xdist workers", e.xdist_workers.to_string()));
    }
    let outcomes = [
        "", "passed", "failed", "error", "skipped", "xfailed", "xpassed",
    ];
    let body = html! {
        div data-live-session=[running.then(|| format!("{base}/events"))] data-after=(s.outcomes_stored) {
            h1 { (result(s)) " session " span.mono { (s.id) } }
            p.muted {
                a href=(format!("{base}/slowest")) { "slowest tests" } " · "
                a href=(format!("/compare?project={}&head={}", query_escape(project), s.id)) { "compare with the one before" } " · "
                a href=(format!("/?project={}", query_escape(project))) { "sessions of " (project) } " · "
                a href=(format!("/trends?project={}", query_escape(project))) { "trends" } " · "
                a href=(format!("/grid?project={}", query_escape(project))) { "test grid" }
            }
            ul.chips {
                @for (label, value) in &chips { li { b { (label) } " " (value) } }
                li { b { "started" } " " (ago(&s.started_at)) }
                @if let Some(d) = s.duration { li { b { "duration" } " " (seconds(d)) } }
                @if let Some(x) = s.exitstatus { li { b { "exit status" } " " (x) } }
                @if s.pinned { li { "pinned" } }
            }
            (bar(&s.counts))
            (counts(s))
            @if !p.causes.clusters.is_empty() {
                h2 { "Causes " span.muted { "(" (p.causes.clusters_total) ")" } }
                table.causes {
                    thead { tr { th { "cause" } th.num { "failures" } th.num { "tests" } th { "seen before" } } }
                    tbody {
                        @for c in &p.causes.clusters {
                            tr {
                                td.mono { (c.cause) }
                                td.num { (c.failures) }
                                td.num { (c.tests_total) }
                                td {
                                    @match &c.first_seen {
                                        Some(first) => { "in " (count(c.seen_in_sessions, "other session", "other sessions")) ", first " (ago(first)) }
                                        None => { span.status.new { "new" } }
                                    }
                                    @if c.known_flaky_tests > 0 {
                                        " " span.flaky { @if c.known_flaky_tests == c.tests_total { "known flaky" } @else { (c.known_flaky_tests) " known flaky" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Failures"
                " "
                button type="button" data-field="rerun-all" data-copy=(p.rerun_all) hidden[p.rerun_all.is_empty()] {
                    "copy rerun command for all failures"
                }
            }
            section #failures {
                @if p.failures.is_empty() { p.empty { "No failures." } }
                @for f in &p.failures { (failure(f, project)) }
            }
            @if p.more_failures {
                p.muted { "More failures than shown: filter the outcomes below by " code { "failed" } "." }
            }
        }
        h2 #outcomes { "Outcomes" }
        form.filters method="get" action=(base) {
            label { "outcome "
                select name="outcome" {
                    @for o in outcomes {
                        option value=(o) selected[o == p.outcome_filter] { @if o.is_empty() { "any" } @else { (o) } }
                    }
                }
            }
            label { "nodeid contains " input type="search" name="q" value=(p.search); }
            button type="submit" { "filter" }
        }
        @if p.outcomes.is_empty() {
            p.empty { "No outcomes match." }
        } @else {
            table {
                thead { tr { th.num { "#" } th { "test" } th { "outcome" } th.num { "duration" } th { "message" } } }
                tbody {
                    @for o in &p.outcomes {
                        tr {
                            td.num { (o.seq) }
                            td.mono { a href=(test_href(&o.nodeid, project)) { (o.nodeid) } @if !o.subtest.is_empty() { " " (o.subtest) } }
                            td { span.status.(o.outcome) { (o.outcome) } @if o.quarantined { " " span.quarantined title="quarantined: this failure did not fail the run" { "quarantined" } } }
                            td.num { (seconds(o.duration)) }
                            td { (o.message) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &p.next {
            div.pager {
                a.button href=(format!("{base}?outcome={}&q={}&cursor={}#outcomes", query_escape(&p.outcome_filter), query_escape(&p.search), query_escape(next))) { "next outcomes →" }
            }
        }
    };
    layout(&format!("Session {}", short_commit(&s.id)), body)
}

/// One test's history entry.
pub struct TestRun {
    /// The session.
    pub session_id: String,
    /// When the session started.
    pub started_at: String,
    /// The outcome.
    pub outcome: String,
    /// Seconds.
    pub duration: f64,
    /// Its subtest label, if any.
    pub subtest: String,
}

/// A distinct failure message of one test.
pub struct MessageSeen {
    /// The message.
    pub message: String,
    /// When it was first seen (RFC 3339).
    pub first: String,
    /// When it was last seen.
    pub last: String,
    /// In how many outcomes.
    pub times: usize,
}

/// One test across sessions.
pub struct TestPage {
    /// The projects there are, for the switcher.
    pub projects: ProjectsView,
    /// The project whose sessions these are.
    pub project: String,
    /// pytest node id.
    pub nodeid: String,
    /// Its statistics and verdict.
    pub stability: StabilityView,
    /// Oldest first.
    pub runs: Vec<TestRun>,
    /// Its distinct failure messages, newest first.
    pub messages: Vec<MessageSeen>,
}

/// One test: a strip of its runs, durations, verdict and failure messages.
pub fn test(p: &TestPage) -> Markup {
    let cells: Vec<Cell> = p
        .runs
        .iter()
        .map(|r| Cell {
            outcome: r.outcome.clone(),
            href: format!("/sessions/{}", r.session_id),
            title: format!(
                "{} {} {}{}",
                r.started_at,
                r.outcome,
                seconds(r.duration),
                if r.subtest.is_empty() {
                    String::new()
                } else {
                    format!(" {}", r.subtest)
                }
            ),
        })
        .collect();
    let durations: Vec<f64> = p
        .runs
        .iter()
        .filter(|r| r.subtest.is_empty())
        .map(|r| r.duration)
        .collect();
    let st = &p.stability;
    let body = html! {
        h1.mono { (p.nodeid) }
        p.muted { "in the sessions of project " b { (p.project) } }
        form.filters method="get" action="/tests" {
            (switcher(&p.projects))
            input type="hidden" name="nodeid" value=(p.nodeid);
            button type="submit" { "show" }
        }
        p { span.verdict.(st.verdict) { (st.verdict) } " · " (st.why) }
        p.muted { (st.runs) " runs, " (st.passed) " passed, " (st.failed) " failed, " (st.flips) " flips" }
        @if !st.changes.is_empty() {
            ul.changes {
                @for c in &st.changes {
                    li { span.verdict.(c.change) { (c.change) } " in "
                        a.mono href=(format!("/sessions/{}", c.session_id)) { (c.session_id.get(..8).unwrap_or(&c.session_id)) }
                        @if let Some(code) = &c.code_state {
                            @if c.rule == "dependencies" { " where its dependencies changed, their code " } @else { " on code state " }
                            span.mono { (short_code(code)) }
                        }
                    }
                }
            }
        }
        @if p.runs.is_empty() {
            (problem("No runs of this test are recorded."))
        } @else {
            h2 { "History " span.muted { "(oldest left, newest right)" } }
            p { (strip(&cells)) }
            h2 { "Duration" }
            p { (sparkline(&durations)) }
        }
        h2 { "Failure messages" }
        @if p.messages.is_empty() { p.empty { "It has not failed in these runs." } }
        @else {
            table {
                thead { tr { th { "message" } th.num { "times" } th { "first seen" } th { "last seen" } } }
                tbody {
                    @for m in &p.messages {
                        tr { td.mono { (m.message) } td.num { (m.times) } td { (ago(&m.first)) } td { (ago(&m.last)) } }
                    }
                }
            }
        }
    };
    layout(&p.nodeid, body)
}

/// One flaky test with its recent runs.
pub struct FlakyRow {
    /// Statistics and verdict.
    pub stability: StabilityView,
    /// pytest node id.
    pub nodeid: String,
    /// Its newest failure message.
    pub last_message: String,
    /// Its recent runs, oldest first.
    pub runs: Vec<Cell>,
    /// A quarantine entry applies to it now.
    pub quarantined: bool,
}

/// The flaky tests page.
pub struct FlakyPage {
    /// The projects there are, for the switcher.
    pub projects: ProjectsView,
    /// Sessions looked at.
    pub window: u64,
    /// The project filter.
    pub project: String,
    /// Flaky tests found in all.
    pub total: u64,
    /// The flakiest first.
    pub tests: Vec<FlakyRow>,
}

/// Flaky tests: a sortable table, each with its strip.
pub fn flaky(p: &FlakyPage) -> Markup {
    let body = html! {
        h1 { "Flaky tests" @if !p.project.is_empty() { " · " (p.project) } }
        form.filters method="get" action="/flaky" {
            (switcher(&p.projects))
            label { "sessions " input type="number" name="window" min="1" max="1000" value=(p.window); }
            button type="submit" { "look" }
        }
        p.muted { (p.total) " flaky tests in the last " (p.window) " sessions of " (p.project) ": each passed and failed on the same code (the same commit and uncommitted changes, or reruns in one session)." }
        @if p.tests.is_empty() { p.empty { "No flaky tests." } }
        @else {
            table {
                thead { tr {
                    th data-sort="text" { "test" } th data-sort="number" class="num" { "runs" }
                    th data-sort="number" class="num" { "failed" } th data-sort="number" class="num" { "flips" }
                    th data-sort="number" class="num" { "same code" } th { "code state" } th { "recent runs" } th { "last failure" }
                } }
                tbody {
                    @for t in &p.tests {
                        tr {
                            td.mono { a href=(test_href(&t.nodeid, &p.project)) { (t.nodeid) }
                                @if t.quarantined { " " span.quarantined { "quarantined" } } }
                            td.num { (t.stability.runs) } td.num { (t.stability.failed) }
                            td.num { (t.stability.flips) } td.num { (t.stability.mixed_code_states) }
                            td.mono { @match t.stability.evidence.as_ref().map(|e| (e.rule.as_str(), e.code_state.as_deref())) {
                                Some(("same_dependencies", Some(code))) => { "same dependencies " (short_code(code)) }
                                Some((_, Some(code))) => { (short_code(code)) }
                                _ => { "reruns" }
                            } }
                            td { (strip(&t.runs)) }
                            td { (t.last_message) }
                        }
                    }
                }
            }
        }
    };
    layout("Flaky tests", body)
}

/// Two sessions compared.
pub fn compare(c: &ComparisonView, projects: &ProjectsView) -> Markup {
    let project = c.head.project.as_deref().unwrap_or("");
    let list = |title: &str, tests: &[ComparedTestView]| {
        html! {
            h2 { (title) " " span.muted { "(" (tests.len()) ")" } }
            @if tests.is_empty() { p.empty { "None." } }
            @else {
                table {
                    thead { tr { th { "test" } th { "base" } th { "head" } th { "message" } } }
                    tbody {
                        @for t in tests {
                            tr {
                                td.mono { a href=(test_href(&t.nodeid, project)) { (t.nodeid) } @if let Some(s) = &t.subtest { " " (s) }
                                    @if t.known_flaky { " " span.flaky { "known flaky" } } }
                                td { (t.base.as_deref().unwrap_or("–")) }
                                td { (t.head.as_deref().unwrap_or("–")) }
                                td { (t.message) }
                            }
                        }
                    }
                }
            }
        }
    };
    let names = |title: &str, tests: &[String]| {
        html! {
            h2 { (title) " " span.muted { "(" (tests.len()) ")" } }
            @if tests.is_empty() { p.empty { "None." } }
            @else { ul { @for t in tests { li.mono { a href=(test_href(t, project)) { (t) } } } } }
        }
    };
    let body = html! {
        h1 { "Compare sessions" @if !project.is_empty() { " · " (project) } }
        form.filters method="get" action="/compare" {
            (switcher(projects))
            label { "base " input type="text" name="base" value=(c.base.id) size="38"; }
            label { "head " input type="text" name="head" value=(c.head.id) size="38"; }
            button type="submit" { "compare" }
        }
        table {
            thead { tr { th { "" } th { "session" } th { "started" } th { "outcomes" } th.num { "failed" } th.num { "pass rate" } } }
            tbody {
                @for (label, s) in [("base", &c.base), ("head", &c.head)] {
                    tr {
                        td { (label) }
                        td { a href=(format!("/sessions/{}", s.id)) { (result(s)) " " span.mono { (s.short_id()) } } }
                        td { (ago(&s.started_at)) }
                        td { (bar(&s.counts)) }
                        td.num { (s.counts.failed + s.counts.errors) }
                        td.num { (pass_rate(&s.counts)) }
                    }
                }
            }
        }
        @for (title, causes) in [("New causes", &c.new_causes), ("Fixed causes", &c.fixed_causes)] {
            h2 { (title) " " span.muted { "(" (causes.len()) ")" } }
            @if causes.is_empty() { p.empty { "None." } }
            @else {
                table {
                    thead { tr { th { "cause" } th.num { "failures" } th.num { "tests" } th { "first tests" } } }
                    tbody {
                        @for cause in causes.iter() {
                            tr {
                                td.mono { (cause.cause) @if cause.known_flaky { " " span.flaky title="every test of this cause is known flaky: likely not new breakage" { "known flaky" } } }
                                td.num { (cause.failures) }
                                td.num { (cause.tests_total) }
                                td { @for t in &cause.tests { a.mono href=(test_href(t, project)) { (t) } " " } }
                            }
                        }
                    }
                }
            }
        }
        (list("New failures", &c.new_failures))
        (list("Fixed", &c.fixed))
        (list("Still failing", &c.still_failing))
        (names("Added", &c.added))
        (names("Removed", &c.removed))
        h2 { "Slower " span.muted { "(" (c.slower.len()) ")" } }
        @if c.slower.is_empty() { p.empty { "None." } }
        @else {
            table {
                thead { tr { th { "test" } th.num { "base" } th.num { "head" } } }
                tbody { @for t in &c.slower { tr { td.mono { a href=(test_href(&t.nodeid, project)) { (t.nodeid) } } td.num { (seconds(t.base)) } td.num { (seconds(t.head)) } } } }
            }
        }
        h2 { "Slower than usual " span.muted { "(" (c.counts.duration_regressions) ", against each test's median over earlier runs)" } }
        @if c.duration_regressions.is_empty() { p.empty { "None." } }
        @else {
            table {
                thead { tr { th { "test" } th.num { "head" } th.num { "median" } th.num { "ratio" } th.num { "runs" } } }
                tbody { @for r in &c.duration_regressions { tr { td.mono { a href=(test_href(&r.nodeid, project)) { (r.nodeid) } } td.num { (seconds(r.duration)) } td.num { (seconds(r.median)) } td.num { (format!("{:.1}×", r.ratio)) } td.num { (r.runs) } } } }
            }
        }
        @if let Some(note) = &c.note { p.muted { (note) } }
    };
    layout("Compare", body)
}

/// Asks for the token (the pages sit behind it).
pub fn login(next: &str, failed: bool) -> Markup {
    let body = html! {
        form.login method="post" action="/login" {
            h1 { "Sign in" }
            p.muted { "This server requires a token (the one agents and the plugin use)." }
            @if failed { (problem("That token is not valid.")) }
            label for="token" { "token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            input type="hidden" name="next" value=(next);
            button type="submit" { "sign in" }
        }
    };
    layout("Sign in", body)
}

/// An error page's body.
pub fn error(title: &str, message: &str) -> Markup {
    layout(title, html! { h1 { (title) } (problem(message)) })
}

/// A session's slowest tests.
pub fn slowest(v: &SlowestView) -> Markup {
    let s = &v.session;
    let body = html! {
        h1 { "Slowest tests of " a href=(format!("/sessions/{}", s.id)) { "session " span.mono { (short_commit(&s.id)) } } }
        @if v.tests.is_empty() { p.empty { "No outcomes." } }
        @else {
            table {
                thead { tr { th.num { "#" } th { "test" } th { "outcome" } th.num data-sort="number" { "duration" } } }
                tbody {
                    @for t in &v.tests {
                        tr {
                            td.num { (t.seq) }
                            td.mono { a href=(test_href(&t.nodeid, s.project.as_deref().unwrap_or(""))) { (t.nodeid) } @if let Some(sub) = &t.subtest { " " (sub) } }
                            td { span.status.(t.outcome) { (t.outcome) } }
                            td.num data-value=(t.duration) { (seconds(t.duration)) }
                        }
                    }
                }
            }
        }
    };
    layout("Slowest tests", body)
}

/// Tests × the last sessions of a project.
pub struct GridPage {
    /// The projects there are, for the switcher.
    pub projects: ProjectsView,
    /// The project shown.
    pub project: String,
    /// The sessions, oldest left.
    pub sessions: Vec<SessionView>,
    /// Rows, the most failing first: nodeid, failures, and a cell per session.
    pub rows: Vec<(String, usize, Vec<Option<String>>)>,
}

/// The grid of tests × sessions.
pub fn grid(p: &GridPage) -> Markup {
    let body = html! {
        h1 { "Test grid" @if !p.project.is_empty() { " · " (p.project) } }
        form.filters method="get" action="/grid" {
            (switcher(&p.projects))
            button type="submit" { "show" }
        }
        p.muted { "Tests that failed in the last " (p.sessions.len()) " sessions, the most failing first; oldest session left." }
        @if p.rows.is_empty() { p.empty { "No failures in these sessions." } }
        @else {
            table.grid {
                thead { tr {
                    th.test { "test" } th.num { "failures" }
                    // Each column is a session: when it started and on what
                    // commit, its result as the colour of its mark.
                    @for s in &p.sessions {
                        th.session {
                            a href=(format!("/sessions/{}", s.id))
                              title=(format!("{} {} {}", s.started_at, s.result, s.git_commit.as_deref().unwrap_or("")))
                              aria-label=(format!("session {} {}", s.short_id(), s.result)) {
                                span.mark.(s.result.replace(' ', "-")) {}
                                span.when { (month_day_time(&s.started_at)) }
                                span.commit { (s.git_commit.as_deref().map(|c| c.get(..7).unwrap_or(c)).unwrap_or("")) }
                            }
                        }
                    }
                } }
                tbody {
                    @for (nodeid, failures, cells) in &p.rows {
                        tr {
                            td.mono.test { a href=(test_href(nodeid, &p.project)) title=(nodeid) { (nodeid) } }
                            td.num { (failures) }
                            @for (s, c) in p.sessions.iter().zip(cells) {
                                @let outcome = c.as_deref().unwrap_or("none");
                                td.cell { a.(outcome) href=(format!("/sessions/{}", s.id)) title=(format!("{} {outcome}", s.started_at)) aria-label=(outcome) {} }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Test grid", body)
}

/// Pass rate and duration per session of a project.
pub struct TrendsPage {
    /// The projects there are, for the switcher.
    pub projects: ProjectsView,
    /// The project shown.
    pub project: String,
    /// Sessions, oldest first.
    pub sessions: Vec<SessionView>,
}

/// Trends: a project's pass rate and duration per session, as SVG.
pub fn trends(p: &TrendsPage) -> Markup {
    let rates: Vec<f64> = p
        .sessions
        .iter()
        .map(|s| {
            let c = &s.counts;
            let decided = c.passed + c.failed + c.errors;
            if decided == 0 {
                100.0
            } else {
                100.0 * c.passed as f64 / decided as f64
            }
        })
        .collect();
    let durations: Vec<f64> = p
        .sessions
        .iter()
        .map(|s| s.duration.unwrap_or(0.0))
        .collect();
    let body = html! {
        h1 { "Trends" @if !p.project.is_empty() { " · " (p.project) } }
        form.filters method="get" action="/trends" {
            (switcher(&p.projects))
            button type="submit" { "show" }
        }
        @if p.sessions.len() < 2 { p.empty { "Trends need two sessions or more." } }
        @else {
            h2 { "Pass rate per session" }
            (chart(&rates, y_range(&rates, Some(0.0), Some(100.0)), |v| format!("{v:.1}%"), &p.sessions))
            h2 { "Duration per session" }
            (chart(&durations, y_range(&durations, Some(0.0), None), seconds, &p.sessions))
        }
    };
    layout("Trends", body)
}

/// `12-07 17:32` of an RFC 3339 time (UTC), for axis and column labels.
fn month_day_time(rfc3339: &str) -> String {
    match (rfc3339.get(5..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time}"),
        _ => rfc3339.to_string(),
    }
}

/// The range a chart's y axis spans: the values' own, padded, so that a
/// change from 99.6% to 98.9% is a visible step rather than a flat line at
/// the top of a 0-100 scale; within `floor..=ceiling` when given.
fn y_range(values: &[f64], floor: Option<f64>, ceiling: Option<f64>) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi - lo > f64::EPSILON {
        (hi - lo) * 0.15
    } else {
        (hi.abs() * 0.05).max(1e-3)
    };
    let mut lo = lo - pad;
    let mut hi = hi + pad;
    if let Some(f) = floor {
        lo = lo.max(f);
    }
    if let Some(c) = ceiling {
        hi = hi.min(c);
    }
    if hi - lo <= f64::EPSILON {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// A line chart with a dot per session (linking to it), oldest left: its y
/// axis spans the values (labelled at both ends and the middle), its x axis
/// is labelled with the sessions' start times.
fn chart(
    values: &[f64],
    (lo, hi): (f64, f64),
    label: impl Fn(f64) -> String,
    sessions: &[SessionView],
) -> Markup {
    // Room on the left for the y labels, below for the dates.
    let (w, h, pad, left, bottom) = (900.0, 200.0, 16.0, 72.0, 36.0);
    let step = (w - left - pad) / (values.len().max(2) - 1) as f64;
    let plot = h - pad - bottom;
    let at = |i: usize, v: f64| {
        (
            left + i as f64 * step,
            pad + plot * (1.0 - (v - lo) / (hi - lo)),
        )
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (x, y) = at(i, *v);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    // At most six dated ticks, the first and the last among them.
    let n = values.len();
    let ticks: Vec<usize> = if n <= 6 {
        (0..n).collect()
    } else {
        (0..6).map(|k| k * (n - 1) / 5).collect()
    };
    let base = h - bottom;
    html! {
        svg.chart viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(format!("from {} to {}", label(values[0]), label(values[values.len() - 1]))) {
            line x1=(left) y1=(base) x2=(w - pad) y2=(base) {}
            @for v in [hi, (lo + hi) / 2.0, lo] {
                @let (_, y) = at(0, v);
                line.grid x1=(left) y1=(format!("{y:.1}")) x2=(w - pad) y2=(format!("{y:.1}")) {}
                text x="2" y=(format!("{:.1}", y + 4.0)) { (label(v)) }
            }
            @for i in ticks {
                @let (x, _) = at(i, lo);
                // The last label ends at its point, so it is not cut at the edge.
                @let anchor = if i + 1 == n && n > 1 { "end" } else { "middle" };
                text.date x=(format!("{x:.1}")) y=(format!("{:.1}", base + 16.0)) text-anchor=(anchor) { (month_day_time(&sessions[i].started_at)) }
            }
            polyline points=(points.join(" ")) {}
            @for (i, (v, s)) in values.iter().zip(sessions).enumerate() {
                @let (x, y) = at(i, *v);
                a href=(format!("/sessions/{}", s.id)) {
                    circle.(s.result.replace(' ', "-")) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3.5" {
                        title { (s.started_at) " " (s.result) ": " (label(*v)) }
                    }
                }
            }
        }
    }
}
