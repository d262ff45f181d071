//! The read model: what every reader shows. Each view is a struct built
//! from the store for one question (a session, its failures, a test's
//! history, flaky tests, two sessions compared, ...), serializable (its
//! JSON Schema is the MCP tool's output schema), with a short text
//! rendering. MCP tools and resources, the CLI's commands and the web pages
//! all render these same structs; none of them queries the store in its own
//! way where a view answers the question.
//!
//! Every view is scoped to one project ([`scope`]): `latest`, histories,
//! flaky verdicts, causes and quarantine suggestions never mix projects.
//!
//! Invariants: a view that dropped items to fit the size budget says so
//! (`truncated: true`) and says how to get the rest (`next_cursor` or
//! `note`); every text from a test run is bounded.

pub mod affected;
pub mod causes;
pub mod compare;
pub mod durations;
pub mod failures;
pub mod flaky;
pub mod history;
pub mod quarantine;
pub mod record;
pub mod scope;
pub mod session;

pub use affected::{AffectedQuery, AffectedTestView, AffectedView, ChangeSpec};
pub use causes::{CauseView, ClusterView, ClustersQuery, ClustersView};
pub use compare::{CompareQuery, ComparedTestView, ComparisonCounts, ComparisonView, SlowerView};
pub use durations::{
    RegressionView, RegressionsQuery, RegressionsView, SlowTestView, SlowestQuery, SlowestView,
};
pub use failures::{FailureView, FailuresQuery, FailuresView, PropertyView};
pub use flaky::{FlakyQuery, FlakyTestView, FlakyView};
pub use history::{
    ChangeView, EvidenceView, HistoryEntryView, HistoryQuery, HistoryView, StabilityView,
};
pub use quarantine::{
    QuarantineEntryView, QuarantineListView, QuarantineStatusView, QuarantinedTestView,
    QuarantinedView, ReleasedView,
};
pub use record::{OutcomeRecordedView, SessionFinishedView, SessionStartedView};
pub use scope::{DefaultProject, ProjectView, ProjectsView, Scope};
pub use session::{
    CountsView, EnvironmentView, FailureBrief, SessionDetailView, SessionListView, SessionView,
    SessionsQuery,
};

use serde::Serialize;

use crate::model::truncate_marked;

/// Largest answer, in bytes of JSON, before lists are cut.
pub const BUDGET_BYTES: usize = 20 * 1024;

/// Sessions a failure's "known flaky" label looks back over: the window
/// `find_flaky_tests` uses by default.
pub const FLAKY_WINDOW: usize = 30;

/// Most tests of one cause looked up for flakiness: a cause is labelled by
/// its first ones (each lookup reads the test's runs in 30 sessions).
pub const FLAKY_LOOKUP: usize = 20;

/// Shortens `text` to `max` bytes, keeping the head and the tail.
fn excerpt(text: &str, max: usize) -> String {
    let mut t = text.to_string();
    truncate_marked(&mut t, max);
    t
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A nodeid with its subtest label, as pytest prints it: `t.py::test_x [m] (i=1)`.
fn display_name(nodeid: &str, subtest: &str) -> String {
    if subtest.is_empty() {
        nodeid.to_string()
    } else {
        format!("{nodeid} {subtest}")
    }
}

/// `1 failure`, `2 failures`: a count with its noun, singular or plural.
pub fn count(n: u64, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A page size: `default` when absent, at least 1, at most `max`.
pub fn limit(given: Option<u32>, default: usize, max: usize) -> usize {
    given.map_or(default, |n| (n as usize).clamp(1, max))
}

/// Quotes a nodeid for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A `pytest` command line that reruns exactly these nodeids.
pub fn rerun_command<'a>(nodeids: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut cmd = "pytest".to_string();
    for n in nodeids {
        if seen.insert(n) {
            cmd.push(' ');
            cmd.push_str(&shell_quote(n));
        }
    }
    cmd
}

/// Cuts a text rendering to the budget.
fn budget_text(mut text: String) -> String {
    truncate_marked(&mut text, BUDGET_BYTES);
    text
}

/// Size of a value as JSON.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// Drops items from the end of `list(view)` until `view` fits the budget;
/// returns how many were dropped.
pub fn fit_budget<V: Serialize, T>(view: &mut V, list: impl Fn(&mut V) -> &mut Vec<T>) -> usize {
    let mut dropped = 0;
    loop {
        let size = json_len(view);
        let items = list(view);
        if size <= BUDGET_BYTES || items.len() <= 1 {
            return dropped;
        }
        // Drop in proportion to the excess, at least one.
        let per_item = size / items.len();
        let excess = size - BUDGET_BYTES;
        let n = (excess / per_item.max(1) + 1).min(items.len() - 1);
        items.truncate(items.len() - n);
        dropped += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerun_command_quotes_parametrized_ids_and_drops_duplicates() {
        let cmd = rerun_command(["tests/a.py::t[x y]", "tests/a.py::u", "tests/a.py::u"]);
        assert_eq!(cmd, "pytest 'tests/a.py::t[x y]' tests/a.py::u");
        assert_eq!(rerun_command(["t.py::it's"]), r"pytest 't.py::it'\''s'");
    }

    #[test]
    fn fitting_the_budget_drops_items_and_keeps_at_least_one() {
        #[derive(Serialize)]
        struct V {
            items: Vec<String>,
        }
        let mut v = V {
            items: vec!["y".repeat(1000); 100],
        };
        let dropped = fit_budget(&mut v, |v| &mut v.items);
        assert!(dropped > 0);
        assert!(json_len(&v) <= BUDGET_BYTES);
        let mut one = V {
            items: vec!["z".repeat(BUDGET_BYTES * 2)],
        };
        assert_eq!(fit_budget(&mut one, |v| &mut v.items), 0);
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "failure", "failures"), "1 failure");
        assert_eq!(count(0, "failure", "failures"), "0 failures");
        assert_eq!(count(2, "cluster", "clusters"), "2 clusters");
    }
}
