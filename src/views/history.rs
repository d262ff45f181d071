//! One test across the sessions of its project (`get_test_history`, the
//! test page): its runs, newest first, and the verdict on it with the
//! evidence behind it.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::scope::Scope;
use super::{budget_text, excerpt, fit_budget, non_empty};
use crate::error::{Error, Result};
use crate::store::{
    Change, CodeRule, Evidence, HistoryEntry, Stability, Store, Verdict, flakiness_verdict,
};

/// Why a test is judged flaky: a code it both passed and failed on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EvidenceView {
    /// Which rule found the code the same: `same_dependencies` (the code of
    /// the units the test ran was the same, whatever else changed),
    /// `same_code_state` (no dependencies recorded: the same commit and
    /// uncommitted changes) or `same_session_reruns` (one session's reruns).
    pub rule: String,
    /// The code it passed and failed on: a code state, or `deps:` and the
    /// digest of its dependencies' code; absent when the evidence is the
    /// reruns of one session.
    pub code_state: Option<String>,
    /// Sessions it passed in on that code (newest first, at most 5).
    pub passed_in: Vec<String>,
    /// Sessions it failed in on that code (newest first, at most 5).
    pub failed_in: Vec<String>,
}

impl From<&Evidence> for EvidenceView {
    fn from(e: &Evidence) -> Self {
        let ids = |v: &[uuid::Uuid]| v.iter().map(uuid::Uuid::to_string).collect();
        EvidenceView {
            rule: e.rule.evidence_name().to_string(),
            code_state: e.code_state.as_deref().map(str::to_string),
            passed_in: ids(&e.passed_in),
            failed_in: ids(&e.failed_in),
        }
    }
}

/// A change between passing and failing that came with a change of code.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ChangeView {
    /// `regressed` (failed where it passed before) or `fixed`.
    pub change: String,
    /// The session of the first run after the change.
    pub session_id: String,
    /// Its code (a code state, or `deps:` and its dependencies' code
    /// digest), when known.
    pub code_state: Option<String>,
    /// What changed: `dependencies` (the code of the units the test ran,
    /// when both runs recorded them) or `code_state`.
    pub rule: String,
}

impl From<&Change> for ChangeView {
    fn from(c: &Change) -> Self {
        ChangeView {
            change: c.verdict.as_str().to_string(),
            session_id: c.session.to_string(),
            code_state: c.code_state.as_deref().map(str::to_string),
            rule: c.rule.change_name().to_string(),
        }
    }
}

/// The verdict on a test and the statistics behind it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StabilityView {
    /// passing, failing, regressed, fixed, flaky or unknown. `flaky` only
    /// when it passed and failed on the same code (the same code state, or
    /// the reruns of one session); passing and failing on different code is
    /// `regressed` or `fixed`.
    pub verdict: String,
    /// The verdict in one sentence, naming its evidence.
    pub why: String,
    /// Pass or fail outcomes counted (newest first, up to the window).
    pub runs: u64,
    /// Passed.
    pub passed: u64,
    /// Failed or errored.
    pub failed: u64,
    /// Changes between pass and fail, oldest to newest.
    pub flips: u64,
    /// Code states on which it both passed and failed.
    pub mixed_code_states: u64,
    /// Sessions in which it both passed and failed (reruns).
    pub mixed_sessions: u64,
    /// For a flaky test: the newest code it passed and failed on.
    pub evidence: Option<EvidenceView>,
    /// Where it went from passing to failing or back with a change of code
    /// (oldest first, at most 10): regressions and fixes, not flakiness.
    pub changes: Vec<ChangeView>,
}

/// A code state as it is shown: the commit's first 12 digits and the
/// digest of the uncommitted changes, if any.
pub fn short_code(code: &str) -> String {
    if code.starts_with(crate::store::deps::DEPS_PREFIX) {
        return code.to_string();
    }
    match code.split_once('+') {
        Some((commit, changes)) => format!("{}+{changes}", commit.get(..12).unwrap_or(commit)),
        None => code.get(..12).unwrap_or(code).to_string(),
    }
}

impl StabilityView {
    /// Converts statistics and their verdict.
    pub fn new(s: &Stability, verdict: Verdict) -> Self {
        StabilityView {
            verdict: verdict.as_str().to_string(),
            why: why(s, verdict),
            runs: s.runs,
            passed: s.passed,
            failed: s.failed,
            flips: s.flips,
            mixed_code_states: s.mixed_code_states,
            mixed_sessions: s.mixed_sessions,
            evidence: s.evidence.as_ref().map(EvidenceView::from),
            changes: s.changes.iter().map(ChangeView::from).collect(),
        }
    }

    /// Judges statistics and converts them.
    pub fn judged(s: &Stability) -> Self {
        Self::new(s, flakiness_verdict(s))
    }
}

/// The verdict in a sentence.
fn why(s: &Stability, verdict: Verdict) -> String {
    let short = |id: &uuid::Uuid| id.to_string()[..8].to_string();
    match verdict {
        Verdict::Unknown => "no pass or fail run is recorded".into(),
        Verdict::Passing => format!("passed all {} runs", s.runs),
        Verdict::Failing => format!("failed all {} runs", s.runs),
        Verdict::Flaky => match &s.evidence {
            Some(Evidence {
                rule: CodeRule::Dependencies,
                code_state: Some(code),
                passed_in,
                failed_in,
            }) => format!(
                "passed and failed with the same dependencies (their code {}), whatever else \
                 changed: passed in {}, failed in {}",
                short_code(code),
                passed_in.iter().map(short).collect::<Vec<_>>().join(", "),
                failed_in.iter().map(short).collect::<Vec<_>>().join(", "),
            ),
            Some(Evidence {
                code_state: Some(code),
                passed_in,
                failed_in,
                ..
            }) => format!(
                "passed and failed on the same code, code state {}: passed in {}, failed in {}",
                short_code(code),
                passed_in.iter().map(short).collect::<Vec<_>>().join(", "),
                failed_in.iter().map(short).collect::<Vec<_>>().join(", "),
            ),
            Some(Evidence { failed_in, .. }) => format!(
                "failed and passed within one session (a rerun), session {}",
                failed_in.first().map(short).unwrap_or_default()
            ),
            None => "passed and failed on the same code".into(),
        },
        Verdict::Regressed | Verdict::Fixed => {
            let what = if verdict == Verdict::Regressed {
                "fails since"
            } else {
                "passes since"
            };
            match s.changes.last() {
                Some(c) if c.rule == CodeRule::Dependencies => format!(
                    "{what} session {}, where its dependencies changed{}; it never passed and \
                     failed with the same dependencies: not flaky",
                    short(&c.session),
                    c.code_state
                        .as_deref()
                        .map(|code| format!(" (their code {})", short_code(code)))
                        .unwrap_or_default()
                ),
                Some(c) => format!(
                    "{what} session {}{}; it never passed and failed on the same code, so the \
                     code changed: not flaky",
                    short(&c.session),
                    c.code_state
                        .as_deref()
                        .map(|code| format!(" (code state {})", short_code(code)))
                        .unwrap_or_default()
                ),
                None => format!("{what} its newest runs; never both on the same code"),
            }
        }
    }
}

/// One run of a test.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HistoryEntryView {
    /// The session.
    pub session_id: String,
    /// The subtest this entry is for, when it is one (else the test itself).
    pub subtest: Option<String>,
    /// Session start, RFC 3339.
    pub started_at: String,
    /// Git commit, when known.
    pub git_commit: Option<String>,
    /// Git branch, when known.
    pub git_branch: Option<String>,
    /// The code the run tested, when known.
    pub code_state: Option<String>,
    /// The outcome.
    pub outcome: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Attempt number (reruns).
    pub attempt: u32,
    /// One-line crash message, for failures.
    pub message: String,
}

impl From<&HistoryEntry> for HistoryEntryView {
    fn from(e: &HistoryEntry) -> Self {
        HistoryEntryView {
            session_id: e.session.id.to_string(),
            subtest: non_empty(&e.outcome.subtest),
            started_at: e.session.started_at.to_rfc3339(),
            git_commit: non_empty(&e.session.environment.git_commit),
            git_branch: non_empty(&e.session.environment.git_branch),
            code_state: e.session.environment.code_identity().map(str::to_string),
            outcome: e.outcome.outcome.to_string(),
            duration: e.outcome.duration,
            attempt: e.outcome.attempt,
            message: excerpt(&e.outcome.message, 500),
        }
    }
}

/// What `get_test_history` is asked.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// The test's nodeid.
    pub nodeid: String,
    /// Entries per page, newest session first (default 20, at most 200).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Newest pass/fail outcomes the verdict is based on (default 50, at most 1000).
    pub window: Option<u32>,
    /// Everything asked for, not cut to the answer budget (a page, which
    /// a person scrolls; MCP answers and the CLI are cut).
    pub whole: bool,
}

/// Answer of `get_test_history`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HistoryView {
    /// The test.
    pub nodeid: String,
    /// The project whose sessions these are.
    pub project: String,
    /// The verdict on it, and why.
    pub stability: StabilityView,
    /// Its runs, newest session first.
    pub entries: Vec<HistoryEntryView>,
    /// Whether entries were left off to stay within the size budget.
    pub truncated: bool,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `get_test_history`'s answer: the test in the sessions of one project.
pub async fn history(store: &Store, scope: &Scope, q: &HistoryQuery) -> Result<HistoryView> {
    let limit = super::limit(q.limit, 20, 200);
    let window = super::limit(q.window, 50, 1000);
    let cursor = q.cursor.clone().filter(|c| !c.is_empty());
    let offset: u64 = match cursor.as_deref() {
        Some(c) => c.parse().map_err(|_| {
            Error::invalid(
                "cursor",
                format!(
                    "{} is not a cursor this server issued",
                    crate::model::echo(c)
                ),
            )
        })?,
        None => 0,
    };
    let (page, stability) = tokio::try_join!(
        store.test_history(q.nodeid.clone(), &scope.project, limit, cursor),
        store.test_stability(q.nodeid.clone(), &scope.project, window),
    )?;
    let mut view = HistoryView {
        nodeid: q.nodeid.clone(),
        project: scope.project.name.clone(),
        stability: StabilityView::judged(&stability),
        entries: page.items.iter().map(HistoryEntryView::from).collect(),
        truncated: false,
        next_cursor: page.next,
    };
    if !q.whole && fit_budget(&mut view, |v| &mut v.entries) > 0 {
        view.truncated = true;
        view.next_cursor = Some((offset + view.entries.len() as u64).to_string());
    }
    Ok(view)
}

impl HistoryView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let s = &self.stability;
        let mut out = format!(
            "{} (project {}): {}: {} ({} runs: {} passed, {} failed)",
            self.nodeid, self.project, s.verdict, s.why, s.runs, s.passed, s.failed,
        );
        for c in &s.changes {
            let what = if c.rule == "dependencies" {
                "dependencies changed, their code"
            } else {
                "code state"
            };
            let _ = write!(
                out,
                "\n{} in session {}{}",
                c.change,
                c.session_id,
                c.code_state
                    .as_deref()
                    .map(|code| format!(" ({what} {})", short_code(code)))
                    .unwrap_or_default()
            );
        }
        for e in &self.entries {
            let _ = write!(
                out,
                "\n{} {} {}{} {:.3}s{}",
                e.started_at,
                e.session_id,
                e.subtest
                    .as_deref()
                    .map(|l| format!("subtest {l} "))
                    .unwrap_or_default(),
                e.outcome,
                e.duration,
                if e.message.is_empty() {
                    String::new()
                } else {
                    format!(" {}", e.message)
                }
            );
        }
        if let Some(c) = &self.next_cursor {
            let _ = write!(out, "\nmore: pass cursor {c:?} for the next page");
        }
        budget_text(out)
    }
}
