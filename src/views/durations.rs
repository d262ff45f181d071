//! How long tests took: a session's slowest tests (`slowest_tests`) and
//! the tests that ran much slower than usual (`duration_regressions`).

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::scope::Scope;
use super::session::SessionView;
use super::{budget_text, count, display_name, fit_budget, non_empty};
use crate::error::{Error, Result};
use crate::model::{Outcome, Session};
use crate::store::{RegressionRule, Store};

/// A test that ran much slower than usual.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RegressionView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// Seconds in this session.
    pub duration: f64,
    /// Median seconds of its passing runs in the earlier sessions.
    pub median: f64,
    /// `duration / median`.
    pub ratio: f64,
    /// Earlier passing runs the median is of.
    pub runs: u64,
}

impl From<&crate::store::Regression> for RegressionView {
    fn from(r: &crate::store::Regression) -> Self {
        RegressionView {
            nodeid: r.nodeid.clone(),
            subtest: non_empty(&r.subtest),
            duration: r.duration,
            median: r.median,
            // A median of 0 s (a test too fast to time) keeps the ratio finite.
            ratio: r.duration / r.median.max(1e-6),
            runs: r.runs as u64,
        }
    }
}

/// Answer of `duration_regressions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RegressionsView {
    /// The session.
    pub session: SessionView,
    /// Earlier sessions compared with (same project, same branch when known).
    pub baseline_sessions: u64,
    /// The rule: more than `ratio` times the median and `floor_seconds` over it.
    pub ratio: f64,
    /// See `ratio`.
    pub floor_seconds: f64,
    /// Slower tests found in all.
    pub total: u64,
    /// The largest excess over the median first.
    pub slower: Vec<RegressionView>,
    /// Whether tests were left off (raise `limit`) or cut to the size budget.
    pub truncated: bool,
}

impl RegressionsView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n{} slower than {}x their median over {} (and {:.2}s over it)",
            self.session.line(),
            count(self.total, "test", "tests"),
            self.ratio,
            count(
                self.baseline_sessions,
                "earlier session",
                "earlier sessions"
            ),
            self.floor_seconds
        );
        for r in &self.slower {
            let _ = write!(
                out,
                "\n{:>9.3}s vs {:.3}s median ({:.1}x, {} runs) {}",
                r.duration,
                r.median,
                r.ratio,
                r.runs,
                display_name(&r.nodeid, r.subtest.as_deref().unwrap_or_default())
            );
        }
        budget_text(out)
    }
}

/// One slow test.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowTestView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// The outcome.
    pub outcome: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Position in the session.
    pub seq: u64,
}

/// Answer of `slowest_tests`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowestView {
    /// The session.
    pub session: SessionView,
    /// Slowest first.
    pub tests: Vec<SlowTestView>,
}

impl SlowestView {
    /// Converts a session and its slowest outcomes.
    pub fn new(s: &Session, outcomes: &[Outcome]) -> Self {
        SlowestView {
            session: s.into(),
            tests: outcomes
                .iter()
                .map(|o| SlowTestView {
                    nodeid: o.nodeid.clone(),
                    subtest: non_empty(&o.subtest),
                    outcome: o.outcome.to_string(),
                    duration: o.duration,
                    seq: o.seq,
                })
                .collect(),
        }
    }

    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = self.session.line();
        for t in &self.tests {
            let _ = write!(out, "\n{:>9.3}s {} {}", t.duration, t.outcome, t.nodeid);
        }
        budget_text(out)
    }
}

/// What `duration_regressions` is asked.
#[derive(Debug, Clone, Default)]
pub struct RegressionsQuery {
    /// A session id or the start of one, or `latest` (the default).
    pub session: Option<String>,
    /// Earlier sessions whose passing durations make each test's median (default 10, at most 100).
    pub window: Option<u32>,
    /// Slower means more than this many times the median (default 3).
    pub ratio: Option<f64>,
    /// ...and more than this many seconds over it (default 0.25).
    pub floor_seconds: Option<f64>,
    /// Earlier passing runs a test needs before it is judged (default 3).
    pub min_runs: Option<u32>,
    /// Tests to return, the largest excess first (default 20, at most 200).
    pub limit: Option<u32>,
}

/// `duration_regressions`' answer.
pub async fn regressions(
    store: &Store,
    scope: &Scope,
    q: &RegressionsQuery,
) -> Result<RegressionsView> {
    let session = scope.session(q.session.as_deref(), "session")?;
    let ratio = q.ratio.unwrap_or(3.0);
    let floor = q.floor_seconds.unwrap_or(0.25);
    crate::model::validate_duration(floor, "floor_seconds")?;
    if !(ratio.is_finite() && ratio >= 1.0) {
        return Err(Error::invalid(
            "ratio",
            format!("must be a number of at least 1, got {ratio}"),
        ));
    }
    let rule = RegressionRule {
        window: super::limit(q.window, 10, 100),
        ratio,
        floor,
        min_runs: super::limit(q.min_runs, 3, 100),
    };
    let found = store
        .duration_regressions(session, rule)
        .await
        .map_err(|e| scope.explain(e.named("session")))?;
    let limit = super::limit(q.limit, 20, 200);
    let mut view = RegressionsView {
        session: (&found.session).into(),
        baseline_sessions: found.baseline.len() as u64,
        ratio,
        floor_seconds: floor,
        total: found.slower.len() as u64,
        truncated: found.slower.len() > limit,
        slower: found
            .slower
            .iter()
            .take(limit)
            .map(RegressionView::from)
            .collect(),
    };
    if fit_budget(&mut view, |v| &mut v.slower) > 0 {
        view.truncated = true;
    }
    Ok(view)
}

/// What `slowest_tests` is asked.
#[derive(Debug, Clone, Default)]
pub struct SlowestQuery {
    /// A session id or the start of one, or `latest` (the default).
    pub session: Option<String>,
    /// How many tests (default 10, at most 100).
    pub limit: Option<u32>,
}

/// `slowest_tests`' answer.
pub async fn slowest(store: &Store, scope: &Scope, q: &SlowestQuery) -> Result<SlowestView> {
    let session = scope.session(q.session.as_deref(), "session")?;
    let (s, outcomes) = store
        .slowest_tests(session, super::limit(q.limit, 10, 100))
        .await
        .map_err(|e| scope.explain(e.named("session")))?;
    Ok(SlowestView::new(&s, &outcomes))
}
