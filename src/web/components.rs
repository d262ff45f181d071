//! Small pieces of markup the pages share: the layout, status badges, the
//! outcome bar, environment chips, a history strip, a duration sparkline.
//! Every text goes through maud, which escapes it; nothing here writes raw
//! HTML.

use std::time::{Duration, SystemTime};

use maud::{DOCTYPE, Markup, html};

pub use crate::commands::duration_text as seconds;
use crate::model::Timestamp;
use crate::views::{CountsView, FailureView, ProjectsView, SessionView};

/// A whole page: title, the navigation, then `body`.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pytest-mcp" }
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "pytest-mcp" }
                    a href="/" { "Sessions" }
                    a href="/flaky" { "Flaky tests" }
                    a href="/compare" { "Compare" }
                    a href="/grid" { "Grid" }
                    a href="/trends" { "Trends" }
                }
                main { (body) }
            }
        }
    }
}

/// What a session came to, as a coloured badge: `failed`, `passed`,
/// `interrupted`, `running`... (its [`SessionView::result`]); the live
/// script updates it.
pub fn result(s: &SessionView) -> Markup {
    let class = s.result.replace(' ', "-");
    html! { span.status.(class) data-field="result" title=(format!("status {}", s.status)) { (s.result) } }
}

/// A choice of project, for a filter form: every project recorded, the
/// current one selected.
pub fn switcher(projects: &ProjectsView) -> Markup {
    html! {
        label.switcher { "project "
            select name="project" data-autosubmit {
                @if projects.projects.iter().all(|p| p.name != projects.current) {
                    option value=(projects.current) selected { (projects.current) " (no sessions yet)" }
                }
                @for p in &projects.projects {
                    option value=(if p.name.is_empty() { crate::model::UNNAMED_PROJECT } else { &p.name })
                        selected[p.name == projects.current] {
                        @if p.name.is_empty() { (crate::model::UNNAMED_PROJECT) } @else { (p.name) }
                        " (" (p.sessions) ")"
                    }
                }
            }
        }
    }
}

/// Narrowest a failed or error segment of the outcome bar is, in percent.
pub const MIN_MARK: f64 = 2.0;

/// Proportional bar of a session's outcomes.
pub fn bar(c: &CountsView) -> Markup {
    let total = c.passed + c.failed + c.errors + c.skipped + c.xfailed + c.xpassed;
    let part = |n: u64| {
        if total == 0 {
            0.0
        } else {
            100.0 * n as f64 / total as f64
        }
    };
    let segments = [
        ("passed", c.passed),
        ("failed", c.failed),
        ("error", c.errors),
        ("skipped", c.skipped),
        ("xfailed", c.xfailed),
        ("xpassed", c.xpassed),
    ];
    let title = format!(
        "{} passed, {} failed, {} errors, {} skipped, {} xfailed, {} xpassed",
        c.passed, c.failed, c.errors, c.skipped, c.xfailed, c.xpassed
    );
    // (class, x, width) in percent, laid end to end. A failure or error is
    // never thinner than MIN_MARK percent, however many tests passed: one
    // failure in thousands must still be seen; the passes give way.
    let widths: Vec<(&str, f64)> = segments
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|&(class, n)| {
            let w = part(n);
            let marked = matches!(class, "failed" | "error");
            (class, if marked { w.max(MIN_MARK) } else { w })
        })
        .collect();
    let sum: f64 = widths.iter().map(|(_, w)| w).sum();
    let marks: f64 = widths
        .iter()
        .filter(|(c, _)| matches!(*c, "failed" | "error"))
        .map(|(_, w)| w)
        .sum();
    let rest_scale = if sum > 100.0 && sum > marks {
        (100.0 - marks).max(0.0) / (sum - marks)
    } else {
        1.0
    };
    let mut x = 0.0;
    let rects: Vec<(&str, f64, f64)> = widths
        .iter()
        .map(|&(class, w)| {
            let w = if matches!(class, "failed" | "error") {
                w
            } else {
                w * rest_scale
            };
            let at = x;
            x += w;
            (class, at, w)
        })
        .collect();
    // One SVG scaled to the bar's box: widths as attributes, since the CSP
    // allows no inline style.
    html! {
        svg.bar data-field="bar" viewBox="0 0 100 1" preserveAspectRatio="none" role="img" aria-label=(title) {
            title { (title) }
            @for (class, at, width) in rects {
                rect.(class) x=(format!("{at:.3}")) y="0" width=(format!("{width:.3}")) height="1" {}
            }
        }
    }
}

/// Pass rate of decided tests, as "97.5%", or "–" when none ran.
pub fn pass_rate(c: &CountsView) -> String {
    let decided = c.passed + c.failed + c.errors;
    if decided == 0 {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * c.passed as f64 / decided as f64)
    }
}

/// "5 min ago" for an RFC 3339 time, the time itself as the tooltip.
pub fn ago(rfc3339: &str) -> Markup {
    let text = Timestamp::parse_rfc3339(rfc3339)
        .and_then(|t| {
            let then = SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(t.0).ok()?);
            SystemTime::now().duration_since(then).ok()
        })
        .map(|d| human_age(d.as_secs()))
        .unwrap_or_else(|| rfc3339.to_string());
    html! { time datetime=(rfc3339) title=(rfc3339) { (text) } }
}

fn human_age(secs: u64) -> String {
    match secs {
        0..60 => "just now".into(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A short commit hash.
pub fn short_commit(c: &str) -> &str {
    c.get(..10).unwrap_or(c)
}

/// The counts of a session as labelled figures (each updatable live). A
/// run with failures leads with them; its pass rate comes last and small.
pub fn counts(s: &SessionView) -> Markup {
    let c = &s.counts;
    let failing = c.failed + c.errors > 0;
    let figures = [
        ("failed", "failed", c.failed),
        ("errors", "errors", c.errors),
        ("passed", "passed", c.passed),
        ("skipped", "skipped", c.skipped),
        ("xfailed", "xfailed", c.xfailed),
        ("xpassed", "xpassed", c.xpassed),
        ("stored", "outcomes", s.outcomes_stored),
    ];
    html! {
        div.counts.failing[failing] {
            @for (field, label, n) in figures {
                div.(format!("count-{field}")) { strong data-field=(field) { (n) } (label) }
            }
            div.rate { span data-field="rate" { (pass_rate(c)) } " passed" }
        }
    }
}

/// One failure: what failed, where, its message; traceback and captured
/// output folded; a button copying the command that reruns it.
pub fn failure(f: &FailureView, project: &str) -> Markup {
    let rerun = crate::views::rerun_command([f.nodeid.as_str()]);
    html! {
        article.failure.(f.outcome) id=(format!("failure-{}", f.seq)) data-seq=(f.seq) {
            div.what {
                span.nodeid { a href=(test_href(&f.nodeid, project)) { (f.nodeid) } }
                @if f.known_flaky { span.flaky title="this test passed and failed on the same code lately" { "known flaky" } }
                @if f.quarantined { span.quarantined title="quarantined: this failure did not fail the run" { "quarantined" } }
                @if let Some(sub) = &f.subtest { span.mono { (sub) } }
                span.muted { (f.outcome) @if let Some(p) = &f.phase { " in " (p) } }
                span.muted.mono { (f.location) }
                @if f.attempt > 1 { span.muted { "attempt " (f.attempt) } }
                span.muted { (seconds(f.duration)) }
                button type="button" data-copy=(rerun) title=(rerun) { "copy rerun command" }
            }
            @if !f.message.is_empty() { div.message { (f.message) } }
            @if !f.traceback.is_empty() {
                details { summary { "traceback" } pre { (f.traceback) } }
            }
            @for (label, text) in [("stdout", &f.stdout), ("stderr", &f.stderr), ("log", &f.log)] {
                @if !text.is_empty() {
                    details { summary { "captured " (label) } pre { (text) } }
                }
            }
            @if !f.user_properties.is_empty() {
                ul.chips {
                    @for p in &f.user_properties { li { b { (p.name) } " " (p.value) } }
                }
            }
        }
    }
}

/// The link to a test's page, in its project.
pub fn test_href(nodeid: &str, project: &str) -> String {
    format!(
        "/tests?project={}&nodeid={}",
        query_escape(project),
        query_escape(nodeid)
    )
}

/// Escapes a value for a URL query (every byte outside the unreserved set).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One cell of a history strip.
pub struct Cell {
    /// The outcome's CSS class (passed, failed, …).
    pub outcome: String,
    /// Where the cell links (the session).
    pub href: String,
    /// Its tooltip.
    pub title: String,
}

/// A strip of coloured cells, oldest left, newest right.
pub fn strip(cells: &[Cell]) -> Markup {
    html! {
        span.strip role="list" {
            @for c in cells {
                a.(c.outcome) role="listitem" href=(c.href) title=(c.title) aria-label=(c.title) {}
            }
        }
    }
}

/// A sparkline of durations (oldest left), scaled to the slowest.
pub fn sparkline(durations: &[f64]) -> Markup {
    let (w, h) = (160.0, 28.0);
    let max = durations.iter().copied().fold(0.0_f64, f64::max);
    if durations.len() < 2 || max <= 0.0 {
        return html! {};
    }
    let step = w / (durations.len() - 1) as f64;
    let points: Vec<String> = durations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 2.0 - (h - 4.0) * d / max
            )
        })
        .collect();
    let label = format!("durations, slowest {}", seconds(max));
    html! {
        svg.spark width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            title { (label) }
            polyline points=(points.join(" ")) {}
        }
    }
}

/// A problem to show instead of a page's content (bad input, nothing found).
pub fn problem(message: &str) -> Markup {
    html! { p.problem { (message) } }
}
