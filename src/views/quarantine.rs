//! Quarantine entries and how their tests did lately (`list_quarantine`,
//! the `quarantine` sections of `get_session` and `find_flaky_tests`, and
//! the answers of `quarantine_test` and `release_test`).

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::budget_text;
use crate::model::QuarantineEntry;
use crate::store::quarantine::{QuarantineStatus, RELEASE_AFTER};

/// A quarantine entry.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantineEntryView {
    /// A node id, or an fnmatch pattern of node ids.
    pub pattern: String,
    /// The project it is for; absent for every project.
    pub project: Option<String>,
    /// Why the test is quarantined.
    pub reason: String,
    /// Who quarantined it.
    pub added_by: String,
    /// When it was added or last renewed (RFC 3339).
    pub added_at: String,
    /// When it stops applying (RFC 3339).
    pub expires_at: String,
}

impl From<&QuarantineEntry> for QuarantineEntryView {
    fn from(e: &QuarantineEntry) -> Self {
        QuarantineEntryView {
            pattern: e.pattern.clone(),
            project: (!e.project.is_empty()).then(|| e.project.clone()),
            reason: e.reason.clone(),
            added_by: e.added_by.clone(),
            added_at: e.added_at.to_rfc3339(),
            expires_at: e.expires_at.to_rfc3339(),
        }
    }
}

impl QuarantineEntryView {
    /// `PATTERN (project P) until TIME: REASON [by WHO]`.
    pub fn line(&self) -> String {
        let scope = match &self.project {
            Some(p) => format!(" (project {p})"),
            None => String::new(),
        };
        format!(
            "{}{scope} until {}: {} [by {}]",
            self.pattern,
            self.expires_at.get(..16).unwrap_or(&self.expires_at),
            self.reason,
            self.added_by
        )
    }
}

/// How one quarantined test did lately.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantinedTestView {
    /// pytest node id.
    pub nodeid: String,
    /// Its newest pass/fail runs looked at (at most 10).
    pub runs: u64,
    /// How many of the newest of them passed in a row.
    pub passed_in_a_row: u64,
}

/// A quarantine entry that applies now, its tests, and whether to release it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantineStatusView {
    /// The entry.
    pub entry: QuarantineEntryView,
    /// Its tests: its node id, or for a pattern the matching tests of the
    /// project's latest session (at most 50).
    pub tests: Vec<QuarantinedTestView>,
    /// Every one of its tests passed its last 10 runs: release it with `release_test`.
    pub release_suggested: bool,
}

impl From<&QuarantineStatus> for QuarantineStatusView {
    fn from(s: &QuarantineStatus) -> Self {
        QuarantineStatusView {
            entry: (&s.entry).into(),
            tests: s
                .tests
                .iter()
                .map(|t| QuarantinedTestView {
                    nodeid: t.nodeid.clone(),
                    runs: t.runs as u64,
                    passed_in_a_row: t.passed_in_a_row as u64,
                })
                .collect(),
            release_suggested: s.release_suggested,
        }
    }
}

impl QuarantineStatusView {
    /// One line: the entry, and the release suggestion or how its tests do.
    pub fn line(&self) -> String {
        let mut out = self.entry.line();
        if self.release_suggested {
            let _ = write!(
                out,
                "; release suggested: passed its last {RELEASE_AFTER} runs"
            );
        } else if let [t] = self.tests.as_slice() {
            let _ = write!(
                out,
                "; passed {} of its last {} runs in a row",
                t.passed_in_a_row, t.runs
            );
        } else if !self.tests.is_empty() {
            let _ = write!(out, "; {} tests", self.tests.len());
        }
        out
    }
}

/// Appends a "quarantined:" section (nothing when there are no entries).
pub(super) fn quarantine_text(out: &mut String, entries: &[QuarantineStatusView]) {
    if entries.is_empty() {
        return;
    }
    let _ = write!(out, "\nquarantined ({}):", entries.len());
    for e in entries {
        let _ = write!(out, "\n  {}", e.line());
    }
}

/// Answer of `quarantine_test`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantinedView {
    /// The entry as stored.
    pub entry: QuarantineEntryView,
    /// It replaced an entry for the same pattern and project (a renewal).
    pub renewed: bool,
}

/// Answer of `release_test`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReleasedView {
    /// The entry that was removed.
    pub entry: QuarantineEntryView,
}

/// Answer of `list_quarantine`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantineListView {
    /// The entries that apply now: exact node ids first, then patterns.
    pub entries: Vec<QuarantineStatusView>,
}

impl QuarantineListView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = match self.entries.len() {
            0 => "no test is quarantined".to_string(),
            n => format!("{n} quarantine entries"),
        };
        for e in &self.entries {
            let _ = write!(out, "\n{}", e.line());
        }
        budget_text(out)
    }
}
