//! A session's failures with what is needed to understand them
//! (`get_failures`, the failures resource, the session page), in the order
//! they happened or grouped by cause.

use std::collections::HashMap;
use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::scope::Scope;
use super::session::{SessionView, labels};
use super::{FLAKY_WINDOW, budget_text, display_name, excerpt, fit_budget, non_empty};
use crate::error::{Error, Result};
use crate::model::{Outcome, Session, TestOutcome};
use crate::store::{OutcomeFilter, Store};

/// Bytes of captured output kept per stream in a failure.
const CAPTURE_EXCERPT_BYTES: usize = 1024;

/// One property a test recorded (`record_property`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PropertyView {
    /// Its name.
    pub name: String,
    /// Its value, as text.
    pub value: String,
}

fn properties(o: &Outcome) -> Vec<PropertyView> {
    o.user_properties
        .iter()
        .map(|(name, value)| PropertyView {
            name: name.clone(),
            value: excerpt(value, 500),
        })
        .collect()
}

/// One failing test with what is needed to understand it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailureView {
    /// Position in the session.
    pub seq: u64,
    /// pytest node id (of the test itself for a subtest, so pytest can select it).
    pub nodeid: String,
    /// The subtest that failed, e.g. `[even] (i=1)`, when it was one.
    pub subtest: Option<String>,
    /// failed or error.
    pub outcome: String,
    /// The phase that failed (setup, call, teardown), when known.
    pub phase: Option<String>,
    /// `file:line` of the test, or the file alone.
    pub location: String,
    /// One-line crash message.
    pub message: String,
    /// The traceback; its end (where the error is) is kept when cut.
    pub traceback: String,
    /// Whether `traceback` was cut to fit.
    pub traceback_truncated: bool,
    /// Excerpt of captured stdout.
    pub stdout: String,
    /// Excerpt of captured stderr.
    pub stderr: String,
    /// Excerpt of captured log.
    pub log: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Attempt number (reruns).
    pub attempt: u32,
    /// Properties the test recorded (`record_property`).
    pub user_properties: Vec<PropertyView>,
    /// Its cause in words, when the failures are grouped by cause
    /// (`group_by: "cluster"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The test was quarantined when it ran: this failure did not fail the run.
    pub quarantined: bool,
    /// The test is known to be flaky in this project: it passed and failed
    /// on the same code in recent sessions (see `find_flaky_tests`), so this
    /// failure may not be new breakage.
    pub known_flaky: bool,
}

impl FailureView {
    /// Converts an outcome, keeping at most `traceback_bytes` of its traceback.
    pub fn new(o: &Outcome, traceback_bytes: usize) -> Self {
        let file = if o.file.is_empty() {
            o.nodeid.split("::").next().unwrap_or_default().to_string()
        } else {
            o.file.clone()
        };
        let location = match o.line {
            Some(l) => format!("{file}:{l}"),
            None => file,
        };
        FailureView {
            seq: o.seq,
            nodeid: o.nodeid.clone(),
            subtest: non_empty(&o.subtest),
            outcome: o.outcome.to_string(),
            phase: o.phase.map(|p| p.to_string()),
            location,
            message: o.message.clone(),
            traceback: tail_excerpt(&o.longrepr, traceback_bytes),
            traceback_truncated: o.longrepr.len() > traceback_bytes,
            stdout: excerpt(&o.stdout, CAPTURE_EXCERPT_BYTES),
            stderr: excerpt(&o.stderr, CAPTURE_EXCERPT_BYTES),
            log: excerpt(&o.log, CAPTURE_EXCERPT_BYTES),
            duration: o.duration,
            attempt: o.attempt,
            user_properties: properties(o),
            cause: None,
            quarantined: o.quarantined,
            known_flaky: false,
        }
    }
}

/// Keeps the last `max` bytes of a traceback (the error line is at its end)
/// after a marker saying how much was cut.
fn tail_excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[pytest-mcp: first {start} bytes cut; ask for more with traceback_bytes]\n{}",
        &text[start..]
    )
}

/// Answer of `get_failures`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailuresView {
    /// Failures on this page whose tests are known to be flaky in the project.
    pub known_flaky: u64,
    /// The session.
    pub session: SessionView,
    /// Failures and errors on this page, in the order they happened.
    pub failures: Vec<FailureView>,
    /// Failures and errors stored in the session in all.
    pub total_failures: u64,
    /// A `pytest` command that reruns exactly the failures on this page.
    pub rerun_command: String,
    /// Whether failures were left off this page to stay within the size budget.
    pub truncated: bool,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl FailuresView {
    /// A page of `session`'s failures, before it is cut to the budget and
    /// labelled.
    fn of(session: &Session, failures: Vec<FailureView>, next_cursor: Option<String>) -> Self {
        FailuresView {
            known_flaky: 0,
            session: session.into(),
            failures,
            total_failures: session.counts.failed + session.counts.errors,
            rerun_command: String::new(),
            truncated: false,
            next_cursor,
        }
    }

    /// Text rendering: each failure with the end of its traceback.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n{} failures in all, {} here",
            self.session.line(),
            self.total_failures,
            self.failures.len()
        );
        for f in &self.failures {
            let _ = write!(
                out,
                "\n\n{}{} {} ({}, {})\n  {}",
                f.outcome.to_uppercase(),
                labels(f.quarantined, f.known_flaky),
                display_name(&f.nodeid, f.subtest.as_deref().unwrap_or_default()),
                f.location,
                f.phase.as_deref().unwrap_or("?"),
                f.message
            );
            for p in &f.user_properties {
                let _ = write!(out, "\n  property {} = {}", p.name, p.value);
            }
            let lines: Vec<&str> = f.traceback.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                let _ = write!(out, "\n  | {l}");
            }
        }
        if !self.failures.is_empty() {
            let _ = write!(out, "\n\nrerun: {}", self.rerun_command);
        }
        if let Some(c) = &self.next_cursor {
            let _ = write!(out, "\nmore: call get_failures again with cursor {c:?}");
        }
        budget_text(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracebacks_keep_their_end_when_cut() {
        let tb = format!("{}\nE   AssertionError: boom", "x".repeat(10_000));
        let cut = tail_excerpt(&tb, 100);
        assert!(cut.ends_with("E   AssertionError: boom"));
        assert!(cut.len() < 200);
    }
}

/// What `get_failures` is asked.
#[derive(Debug, Clone, Default)]
pub struct FailuresQuery {
    /// A session id or the start of one, or `latest` (the default).
    pub session: Option<String>,
    /// Failures per page (default 10, at most 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only failures whose nodeid contains this text.
    pub nodeid_contains: Option<String>,
    /// Bytes of each traceback, keeping its end (default 4000, at most 16000).
    pub traceback_bytes: Option<u32>,
    /// Ordered by cause, the largest first (else in the order they happened).
    pub by_cause: bool,
    /// Everything asked for, not cut to the answer budget (a page, which
    /// a person scrolls; MCP answers and the CLI are cut).
    pub whole: bool,
}

/// `get_failures`' answer; the failures resource's and the prompt's too.
pub async fn failures(store: &Store, scope: &Scope, q: &FailuresQuery) -> Result<FailuresView> {
    let session = scope.session(q.session.as_deref(), "session")?;
    let limit = super::limit(q.limit, 10, 100);
    let traceback_bytes = super::limit(q.traceback_bytes, 4000, 16_000);
    let mut view = if q.by_cause {
        failures_by_cause(store, scope, q, session, limit, traceback_bytes).await?
    } else {
        failures_in_order(store, scope, q, session, limit, traceback_bytes).await?
    };
    let project = scope.project_named(view.session.project.as_deref().unwrap_or_default());
    if !view.failures.is_empty() {
        let tests = view.failures.iter().map(|f| f.nodeid.clone()).collect();
        let flaky = store.known_flaky(FLAKY_WINDOW, &project, tests).await?;
        for f in &mut view.failures {
            f.known_flaky = flaky.contains_key(&f.nodeid);
        }
        view.known_flaky = view.failures.iter().filter(|f| f.known_flaky).count() as u64;
    }
    Ok(view)
}

/// The failures in the order they happened, paged by seq.
async fn failures_in_order(
    store: &Store,
    scope: &Scope,
    q: &FailuresQuery,
    session: crate::model::SessionRef,
    limit: usize,
    traceback_bytes: usize,
) -> Result<FailuresView> {
    let filter = OutcomeFilter {
        outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
        nodeid_contains: q.nodeid_contains.clone().filter(|t| !t.is_empty()),
    };
    let cursor = q.cursor.clone().filter(|c| !c.is_empty());
    let (s, p) = store
        .list_outcomes(session, filter, limit, cursor)
        .await
        .map_err(|e| match e {
            Error::InvalidArgument { field, message } if field == "page_token" => {
                Error::InvalidArgument {
                    field: "cursor".into(),
                    message,
                }
            }
            other => scope.explain(other.named("session")),
        })?;
    let mut view = FailuresView::of(
        &s,
        p.items
            .iter()
            .map(|o| FailureView::new(o, traceback_bytes))
            .collect(),
        p.next,
    );
    if !q.whole && fit_budget(&mut view, |v| &mut v.failures) > 0 {
        view.truncated = true;
        // The store's cursor is the last seq returned.
        view.next_cursor = view.failures.last().map(|f| f.seq.to_string());
    }
    view.rerun_command = super::rerun_command(view.failures.iter().map(|f| f.nodeid.as_str()));
    Ok(view)
}

/// Every failure (bounded) read, grouped by cause, and paged by position
/// (`c<offset>` cursors).
async fn failures_by_cause(
    store: &Store,
    scope: &Scope,
    q: &FailuresQuery,
    session: crate::model::SessionRef,
    limit: usize,
    traceback_bytes: usize,
) -> Result<FailuresView> {
    let offset: usize = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Error::invalid(
                    "cursor",
                    format!(
                        "{} is not a cursor of failures grouped by cause",
                        crate::model::echo(c)
                    ),
                )
            })?,
        None => 0,
    };
    let causes = store
        .session_causes(session, q.nodeid_contains.as_deref())
        .await
        .map_err(|e| scope.explain(e.named("session")))?;
    let s = &causes.session;
    // Each cause's failures in the order they happened, the largest cause
    // first: (cluster, seq).
    let ordered: Vec<(usize, u64)> = causes
        .clusters
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.seqs.iter().map(move |&seq| (i, seq)))
        .collect();
    let page: Vec<(usize, u64)> = ordered.iter().skip(offset).take(limit).copied().collect();
    let mut on_page: Vec<usize> = page.iter().map(|(i, _)| *i).collect();
    on_page.dedup();
    let shown: Vec<_> = on_page
        .iter()
        .map(|&i| causes.clusters[i].clone())
        .collect();
    let named: HashMap<String, String> = store
        .describe(s.id, &shown)
        .await?
        .into_iter()
        .map(|d| (d.cluster.key, d.fingerprint.describe()))
        .collect();
    let outcomes: HashMap<u64, Outcome> = store
        .outcomes_at(s.id, page.iter().map(|(_, seq)| *seq).collect())
        .await?
        .into_iter()
        .map(|o| (o.seq, o))
        .collect();
    let mut view = FailuresView::of(
        s,
        page.iter()
            .filter_map(|(i, seq)| {
                let mut f = FailureView::new(outcomes.get(seq)?, traceback_bytes);
                f.cause = named.get(&causes.clusters[*i].key).cloned();
                Some(f)
            })
            .collect(),
        None,
    );
    if !q.whole {
        fit_budget(&mut view, |v| &mut v.failures);
    }
    let next = offset + view.failures.len();
    if next < ordered.len() {
        view.next_cursor = Some(format!("c{next}"));
        view.truncated = view.failures.len() < limit;
    }
    view.rerun_command = super::rerun_command(view.failures.iter().map(|f| f.nodeid.as_str()));
    Ok(view)
}
