//! A session's failures grouped by cause (`get_failure_clusters`, the
//! session page's causes, the causes `compare_sessions` finds new or fixed).

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::failures::FailureView;
use super::scope::Scope;
use super::session::SessionView;
use super::{FLAKY_LOOKUP, FLAKY_WINDOW, budget_text, count, fit_budget};
use crate::error::Result;
use crate::store::Store;

/// Failures that share one cause (a fingerprint: exception type, innermost
/// project frame, normalised message).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClusterView {
    /// The fingerprint's stable key (16 hex digits).
    pub fingerprint: String,
    /// The cause in words: `Type in file::function: message`.
    pub cause: String,
    /// The exception type, when known.
    pub exception: String,
    /// The innermost frame in the project's code, as `file::function`.
    pub frame: String,
    /// The message with what varies between runs replaced by placeholders.
    pub message: String,
    /// Failing outcomes in the cluster.
    pub failures: u64,
    /// The tests affected, in the order they failed (at most `tests_per_cluster`).
    pub tests: Vec<String>,
    /// Tests affected in all.
    pub tests_total: u64,
    /// The first failure of the cluster, with its traceback.
    pub representative: FailureView,
    /// A `pytest` command rerunning the tests named.
    pub rerun_command: String,
    /// Whether no other session of the project failed of this cause.
    pub new: bool,
    /// When it was first seen in another session of the project (RFC 3339).
    pub first_seen: Option<String>,
    /// Other sessions of the project that failed of it.
    pub seen_in_sessions: u64,
    /// When it was last seen in another session of the project (RFC 3339).
    pub last_seen: Option<String>,
    /// Failing outcomes of it in those other sessions.
    pub failures_in_other_sessions: u64,
    /// For a known cause: how many tests it has broken in the project's
    /// recorded sessions (0 for a new one).
    pub tests_ever: u64,
    /// The first of those tests by nodeid (at most 10).
    pub tests_ever_named: Vec<String>,
    /// How many of the tests it broke here (of its first 20) are known to
    /// be flaky in the project: they passed and failed on the same code lately.
    pub known_flaky_tests: u64,
}

/// Answer of `get_failure_clusters`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClustersView {
    /// The session.
    pub session: SessionView,
    /// Failures and errors looked at.
    pub failures: u64,
    /// Clusters found in all.
    pub clusters_total: u64,
    /// Largest first.
    pub clusters: Vec<ClusterView>,
    /// Whether clusters were left off (raise `limit`) or cut to the size budget.
    pub truncated: bool,
}

impl ClustersView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n{} in {}",
            self.session.line(),
            count(self.failures, "failure", "failures"),
            count(self.clusters_total, "cluster", "clusters")
        );
        for c in &self.clusters {
            let seen = match &c.first_seen {
                Some(first) if !c.new => {
                    format!(
                        "known since {first}, in {} ({}, {}), last {}",
                        count(c.seen_in_sessions, "other session", "other sessions"),
                        count(c.failures_in_other_sessions, "failure", "failures"),
                        count(c.tests_ever, "test", "tests"),
                        c.last_seen.as_deref().unwrap_or(first)
                    )
                }
                _ => "NEW".to_string(),
            };
            let flaky = match c.known_flaky_tests {
                0 => String::new(),
                n if n == c.tests_total => ", every test known flaky".to_string(),
                n => format!(", {n} known flaky"),
            };
            let _ = write!(
                out,
                "\n\n{}, {} ({seen}{flaky}): {}\n  {}",
                count(c.failures, "failure", "failures"),
                count(c.tests_total, "test", "tests"),
                c.cause,
                c.tests.join("\n  ")
            );
            if c.tests_total > c.tests.len() as u64 {
                let _ = write!(
                    out,
                    "\n  … and {} more",
                    c.tests_total - c.tests.len() as u64
                );
            }
        }
        budget_text(out)
    }
}

/// A cause of failures, in brief.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CauseView {
    /// The fingerprint's stable key.
    pub fingerprint: String,
    /// The cause in words: `Type in file::function: message`.
    pub cause: String,
    /// Failing outcomes of it.
    pub failures: u64,
    /// Tests it broke, in all.
    pub tests_total: u64,
    /// The first few of them.
    pub tests: Vec<String>,
    /// Every test it broke (of its first 20) is known to be flaky in the
    /// project: likely not new breakage.
    pub known_flaky: bool,
}

/// What `get_failure_clusters` is asked.
#[derive(Debug, Clone, Default)]
pub struct ClustersQuery {
    /// A session id or the start of one, or `latest` (the default).
    pub session: Option<String>,
    /// Clusters to return, largest first (default 20, at most 100).
    pub limit: Option<u32>,
    /// Nodeids named per cluster (default 10, at most 100).
    pub tests_per_cluster: Option<u32>,
    /// Bytes of each representative traceback (default 2000, at most 16000).
    pub traceback_bytes: Option<u32>,
    /// Everything asked for, not cut to the answer budget (a page, which
    /// a person scrolls; MCP answers and the CLI are cut).
    pub whole: bool,
}

/// `get_failure_clusters`' answer; the prompt's and the session page's too.
pub async fn clusters(store: &Store, scope: &Scope, q: &ClustersQuery) -> Result<ClustersView> {
    let session = scope.session(q.session.as_deref(), "session")?;
    let limit = super::limit(q.limit, 20, 100);
    let per_cluster = super::limit(q.tests_per_cluster, 10, 100);
    let traceback_bytes = super::limit(q.traceback_bytes, 2000, 16_000);
    let causes = store
        .session_causes(session, None)
        .await
        .map_err(|e| scope.explain(e.named("session")))?;
    let s = &causes.session;
    let shown = &causes.clusters[..causes.clusters.len().min(limit)];
    let project = scope.project_of(s);
    // Each cause's tests looked up for flakiness, at most FLAKY_LOOKUP of it.
    let tests: Vec<String> = shown
        .iter()
        .flat_map(|c| c.tests.iter().take(FLAKY_LOOKUP).cloned())
        .collect();
    let (described, known, flaky) = tokio::try_join!(
        store.describe(s.id, shown),
        store.known_causes(s, shown.iter().map(|c| c.key.clone()).collect()),
        store.known_flaky(FLAKY_WINDOW, &project, tests),
    )?;
    let mut view = ClustersView {
        session: s.into(),
        failures: causes.failures,
        clusters_total: causes.clusters.len() as u64,
        truncated: causes.clusters.len() > limit,
        clusters: described
            .iter()
            .map(|d| {
                let (g, f) = (&d.cluster, &d.fingerprint);
                let named: Vec<String> = g.tests.iter().take(per_cluster).cloned().collect();
                let k = known.get(&g.key);
                ClusterView {
                    fingerprint: g.key.clone(),
                    cause: f.describe(),
                    exception: f.exception.clone(),
                    frame: f.frame.clone(),
                    message: f.message.clone(),
                    failures: g.failures(),
                    tests_total: g.tests.len() as u64,
                    rerun_command: super::rerun_command(named.iter().map(String::as_str)),
                    tests: named,
                    representative: FailureView {
                        known_flaky: flaky.contains_key(&d.representative.nodeid),
                        ..FailureView::new(&d.representative, traceback_bytes)
                    },
                    new: k.is_none(),
                    first_seen: k.map(|k| k.first_seen.to_rfc3339()),
                    seen_in_sessions: k.map_or(0, |k| k.sessions),
                    last_seen: k.map(|k| k.last_seen.to_rfc3339()),
                    failures_in_other_sessions: k.map_or(0, |k| k.failures),
                    tests_ever: k.map_or(0, |k| k.tests),
                    tests_ever_named: k.map(|k| k.some_tests.clone()).unwrap_or_default(),
                    known_flaky_tests: g
                        .tests
                        .iter()
                        .take(FLAKY_LOOKUP)
                        .filter(|t| flaky.contains_key(*t))
                        .count() as u64,
                }
            })
            .collect(),
    };
    if !q.whole && fit_budget(&mut view, |v| &mut v.clusters) > 0 {
        view.truncated = true;
    }
    Ok(view)
}
