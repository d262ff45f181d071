//! Flaky tests of a project (`find_flaky_tests`, the flaky page): tests
//! that passed and failed on the same code in its newest sessions.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::history::{StabilityView, short_code};
use super::quarantine::{QuarantineStatusView, quarantine_text};
use super::scope::Scope;
use super::{budget_text, count, excerpt, fit_budget};
use crate::error::Result;
use crate::model::Timestamp;
use crate::store::quarantine;
use crate::store::{FlakyTest, Store};

/// A test judged flaky.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlakyTestView {
    /// pytest node id.
    pub nodeid: String,
    /// The statistics that make it flaky, and the code it passed and failed on.
    pub stability: StabilityView,
    /// Its newest failure message.
    pub last_message: String,
    /// A quarantine entry applies to it now (see `quarantine`).
    pub quarantined: bool,
}

impl From<&FlakyTest> for FlakyTestView {
    fn from(f: &FlakyTest) -> Self {
        FlakyTestView {
            nodeid: f.nodeid.clone(),
            stability: StabilityView::new(&f.stability, f.verdict),
            last_message: excerpt(&f.last_message, 500),
            quarantined: false,
        }
    }
}

/// What `find_flaky_tests` is asked.
#[derive(Debug, Clone, Default)]
pub struct FlakyQuery {
    /// How many of the project's newest sessions to look at (default 30, at most 1000).
    pub window_sessions: Option<u32>,
    /// Most tests to return (default 20, at most 100).
    pub limit: Option<u32>,
    /// Everything asked for, not cut to the answer budget (a page, which
    /// a person scrolls; MCP answers and the CLI are cut).
    pub whole: bool,
}

/// Answer of `find_flaky_tests`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlakyView {
    /// The project looked at.
    pub project: String,
    /// Sessions looked at.
    pub window_sessions: u64,
    /// Flaky tests found in all.
    pub total: u64,
    /// The flakiest first: the most codes (and sessions) it both passed and
    /// failed on, then the most flips.
    pub tests: Vec<FlakyTestView>,
    /// Whether tests were left off (raise `limit` to see more).
    pub truncated: bool,
    /// The quarantine entries that apply now, each with `release_suggested`
    /// when its tests passed their last 10 runs.
    pub quarantine: Vec<QuarantineStatusView>,
}

/// `find_flaky_tests`' answer for the scope's project.
pub async fn flaky(store: &Store, scope: &Scope, q: &FlakyQuery) -> Result<FlakyView> {
    let window = super::limit(q.window_sessions, 30, 1000);
    let limit = super::limit(q.limit, 20, 100);
    let ((total, found), statuses) = tokio::try_join!(
        store.flaky_tests(window, &scope.project, limit),
        store.quarantine_status(&scope.project, Timestamp::now()),
    )?;
    let quarantined = quarantine::covered(
        statuses.iter().map(|s| s.entry.pattern.clone()).collect(),
        found.iter().map(|f| f.nodeid.clone()).collect(),
    )
    .await?;
    let tests = found
        .iter()
        .zip(quarantined)
        .map(|(f, quarantined)| FlakyTestView {
            quarantined,
            ..FlakyTestView::from(f)
        })
        .collect();
    let mut view = FlakyView {
        project: scope.project.name.clone(),
        window_sessions: window as u64,
        total: total as u64,
        tests,
        truncated: total > found.len(),
        quarantine: statuses.iter().map(QuarantineStatusView::from).collect(),
    };
    if !q.whole && fit_budget(&mut view, |v| &mut v.tests) > 0 {
        view.truncated = true;
    }
    Ok(view)
}

impl FlakyView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} in the newest {} of project {} (passed and failed on the same code)",
            count(self.total, "flaky test", "flaky tests"),
            count(self.window_sessions, "session", "sessions"),
            self.project
        );
        for t in &self.tests {
            let s = &t.stability;
            let code = match s.evidence.as_ref() {
                Some(e) if e.rule == "same_dependencies" => e
                    .code_state
                    .as_deref()
                    .map(|c| format!(" with the same dependencies ({})", short_code(c)))
                    .unwrap_or_else(|| " with the same dependencies".into()),
                Some(e) => e
                    .code_state
                    .as_deref()
                    .map(|c| format!(" on code state {}", short_code(c)))
                    .unwrap_or_else(|| " in one session's reruns".into()),
                None => " in one session's reruns".into(),
            };
            let _ = write!(
                out,
                "\n{}{}: {} passed, {} failed{code}; last: {}",
                t.nodeid,
                if t.quarantined { " (quarantined)" } else { "" },
                s.passed,
                s.failed,
                t.last_message
            );
        }
        if self.truncated {
            out.push_str("\nmore: raise limit");
        }
        quarantine_text(&mut out, &self.quarantine);
        budget_text(out)
    }
}
