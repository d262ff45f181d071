//! Retention: which sessions to prune, and pruning them without stalling
//! ingest.
//!
//! A policy keeps the newest N sessions of each project and/or nothing older
//! than a duration; a session goes when either rule says so. Running and
//! pinned sessions never go ([`super::rules::prune_refusal`], checked again
//! inside the delete transaction). Deleting is three kinds of small steps,
//! each its own short write, so ingest interleaves with them: hide the
//! session from readers at once, remove its rows a few thousand at a time,
//! then give the freed pages back to the file system.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Store;
use super::backend::SessionMeta;
use super::rules;
use crate::error::Result;
use crate::model::Timestamp;

/// Rows removed per reclaim step.
const RECLAIM_STEP_ROWS: usize = 5_000;

/// Bytes returned to the file system per shrink step.
const SHRINK_STEP_BYTES: u64 = 8 * 1024 * 1024;

/// Pause between the background pruner's steps, so it never holds up ingest.
const BACKGROUND_PAUSE: Duration = Duration::from_millis(20);

/// How often the background pruner looks again.
const BACKGROUND_EVERY: Duration = Duration::from_secs(10 * 60);

/// Which sessions to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest N sessions of each project.
    pub keep_sessions: Option<usize>,
    /// Delete sessions that started longer ago than this.
    pub older_than: Option<Duration>,
    /// Apply only to this project's sessions.
    pub project: Option<String>,
}

impl Policy {
    /// Whether the policy would never delete anything.
    pub fn is_empty(&self) -> bool {
        self.keep_sessions.is_none() && self.older_than.is_none()
    }
}

/// A session the policy would delete, and why.
#[derive(Debug, Clone)]
pub struct Doomed {
    /// The session.
    pub session: SessionMeta,
    /// Which rule picked it.
    pub reason: String,
    /// Why it is kept anyway (running, pinned), if it is.
    pub spared: Option<&'static str>,
}

/// Picks the sessions `policy` deletes from `sessions` (newest first), at `now`.
pub fn plan(sessions: &[SessionMeta], policy: &Policy, now: Timestamp) -> Vec<Doomed> {
    let cutoff = policy
        .older_than
        .map(|d| Timestamp(now.as_micros() - i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2)));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for s in sessions {
        if policy.project.as_deref().is_some_and(|p| p != s.project) {
            continue;
        }
        let rank = seen.entry(s.project.as_str()).or_insert(0);
        *rank += 1;
        let mut reasons = Vec::new();
        if let Some(keep) = policy.keep_sessions
            && *rank > keep
        {
            reasons.push(format!(
                "beyond the newest {keep} of project {}",
                if s.project.is_empty() {
                    "(none)"
                } else {
                    &s.project
                }
            ));
        }
        if let (Some(cutoff), Some(d)) = (cutoff, policy.older_than)
            && s.started_at < cutoff
        {
            reasons.push(format!("older than {}", format_duration(d)));
        }
        if !reasons.is_empty() {
            out.push(Doomed {
                session: s.clone(),
                reason: reasons.join(", "),
                spared: rules::prune_refusal(s.status, s.pinned),
            });
        }
    }
    out
}

/// Parses `30d`, `12h`, `90m`, `45s` or `2w`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: expected a whole number and a unit, such as 30d, 12h, 90m, 45s or 2w"
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// `30d`, `12h`...: the largest unit that divides the duration.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= size && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

/// What a prune did (or, on a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Every session the policy picked, spared ones included.
    pub planned: Vec<Doomed>,
    /// Sessions deleted.
    pub deleted: usize,
    /// Their outcomes.
    pub outcomes: u64,
    /// Database bytes before.
    pub bytes_before: u64,
    /// Database bytes after.
    pub bytes_after: u64,
    /// Whether the space could be returned to the file system.
    pub shrunk: bool,
    /// How long it took.
    pub elapsed: Duration,
}

impl Store {
    /// Prunes what `policy` picks: all of it, then returns the freed space.
    /// With `dry_run`, only reports what would go.
    pub async fn prune(&self, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
        let started = Instant::now();
        let before = self.storage_stats().await?;
        let metas = self.backend().session_metas().await?;
        let planned = plan(&metas, policy, Timestamp::now());
        let mut report = PruneReport {
            bytes_before: before.bytes,
            bytes_after: before.bytes,
            shrunk: before.can_shrink,
            ..PruneReport::default()
        };
        if !dry_run {
            self.delete_planned(&planned, &mut report, Duration::ZERO)
                .await?;
            report.bytes_after = self.storage_stats().await?.bytes;
        }
        report.planned = planned;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    async fn delete_planned(
        &self,
        planned: &[Doomed],
        report: &mut PruneReport,
        pause: Duration,
    ) -> Result<()> {
        for d in planned.iter().filter(|d| d.spared.is_none()) {
            if self.backend().delete_session(d.session.id).await? {
                report.deleted += 1;
                report.outcomes += d.session.outcomes;
            }
            pause_for(pause).await;
        }
        if report.deleted > 0 {
            // A snapshot may name runs of the deleted sessions.
            self.inner.snapshots.clear();
        }
        // A crash may have left rows of earlier deletions: always reclaim.
        let mut reclaimed = 0;
        loop {
            let step = self.backend().reclaim(RECLAIM_STEP_ROWS).await?;
            reclaimed += step.rows;
            pause_for(pause).await;
            if !step.more {
                break;
            }
        }
        // Only a deletion can leave a test that no outcome refers to; finding
        // them reads every session's tests, so not on a round that deleted nothing.
        if report.deleted > 0 || reclaimed > 0 {
            self.backend().remove_unused_tests().await?;
            pause_for(pause).await;
            self.backend().remove_unused_deps().await?;
            pause_for(pause).await;
        }
        while self.backend().shrink(SHRINK_STEP_BYTES).await? > 0 {
            pause_for(pause).await;
        }
        Ok(())
    }
}

async fn pause_for(pause: Duration) {
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

/// Prunes by `policy` in the background until `shutdown`: shortly after the
/// start, then every ten minutes, in small steps with pauses between them.
pub fn spawn(store: Store, policy: Policy, shutdown: CancellationToken) {
    if policy.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = BACKGROUND_EVERY;
            let round = async {
                let metas = store.backend().session_metas().await?;
                let planned = plan(&metas, &policy, Timestamp::now());
                let mut report = PruneReport::default();
                store
                    .delete_planned(&planned, &mut report, BACKGROUND_PAUSE)
                    .await?;
                Ok::<_, crate::error::Error>(report)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                done = round => match done {
                    Ok(r) if r.deleted > 0 => tracing::info!(
                        sessions = r.deleted, outcomes = r.outcomes, "pruned old sessions"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "background pruning failed; trying again later"),
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionStatus;

    fn meta(project: &str, age_days: i64, status: SessionStatus, pinned: bool) -> SessionMeta {
        let now = Timestamp(1_000_000_000_000_000);
        SessionMeta {
            id: uuid::Uuid::new_v4(),
            project: project.into(),
            started_at: Timestamp(now.as_micros() - age_days * 86_400_000_000),
            status,
            pinned,
            outcomes: 10,
        }
    }

    const NOW: Timestamp = Timestamp(1_000_000_000_000_000);

    #[test]
    fn keep_n_counts_per_project_and_spares_running_and_pinned_sessions() {
        use SessionStatus::{Finished, Running};
        let sessions = vec![
            meta("a", 0, Finished, false),
            meta("b", 1, Finished, false),
            meta("a", 2, Running, false),
            meta("a", 3, Finished, true),
            meta("a", 4, Finished, false),
            meta("b", 5, Finished, false),
        ];
        let policy = Policy {
            keep_sessions: Some(1),
            ..Policy::default()
        };
        let doomed = plan(&sessions, &policy, NOW);
        let ids: Vec<_> = doomed.iter().map(|d| d.session.id).collect();
        assert_eq!(
            ids,
            [
                sessions[2].id,
                sessions[3].id,
                sessions[4].id,
                sessions[5].id
            ]
        );
        let spared: Vec<_> = doomed.iter().map(|d| d.spared.is_some()).collect();
        assert_eq!(spared, [true, true, false, false]);
        assert!(doomed[2].reason.contains("newest 1 of project a"));
    }

    #[test]
    fn older_than_and_project_narrow_what_goes() {
        use SessionStatus::Finished;
        let sessions = vec![
            meta("a", 1, Finished, false),
            meta("b", 40, Finished, false),
            meta("a", 40, Finished, false),
        ];
        let policy = Policy {
            older_than: Some(Duration::from_secs(30 * 86_400)),
            project: Some("a".into()),
            ..Policy::default()
        };
        let doomed = plan(&sessions, &policy, NOW);
        assert_eq!(doomed.len(), 1);
        assert_eq!(doomed[0].session.id, sessions[2].id);
        assert_eq!(doomed[0].reason, "older than 30d");
    }

    #[tokio::test]
    async fn pruning_removes_the_tests_only_the_pruned_sessions_ran() -> anyhow::Result<()> {
        use crate::model::{Environment, Outcome, Source, Summary, TestOutcome};
        use crate::store::StoreConfig;
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("r.db");
        let store = Store::open(StoreConfig::new(&db)).await?;
        for (i, names) in [["gone", "kept"], ["kept", "new"]].iter().enumerate() {
            let id = uuid::Uuid::new_v4();
            let start = Timestamp(1_000_000 * (i as i64 + 1));
            store
                .start_session(id, Source::Import, Environment::default(), Some(start))
                .await?;
            let outcomes = names
                .iter()
                .enumerate()
                .map(|(k, n)| Outcome::new(k as u64 + 1, format!("t.py::{n}"), TestOutcome::Passed))
                .collect();
            store.append_outcomes(id, outcomes).await?;
            store
                .finish_session(id, Summary::default(), 2, None)
                .await?;
        }
        let tests = || -> anyhow::Result<Vec<String>> {
            let c = rusqlite::Connection::open(&db)?;
            let mut stmt = c.prepare("SELECT nodeid FROM tests ORDER BY nodeid")?;
            let names = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(names)
        };
        assert_eq!(tests()?, ["t.py::gone", "t.py::kept", "t.py::new"]);
        let policy = Policy {
            keep_sessions: Some(1),
            ..Policy::default()
        };
        let report = store.prune(&policy, false).await?;
        assert_eq!(report.deleted, 1);
        assert_eq!(tests()?, ["t.py::kept", "t.py::new"]);
        // A round that deletes nothing leaves the tests alone.
        assert_eq!(store.prune(&policy, false).await?.deleted, 0);
        assert_eq!(tests()?, ["t.py::kept", "t.py::new"]);
        store.shutdown().await;
        Ok(())
    }

    #[test]
    fn durations_need_a_number_and_a_unit() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["soon", "30", "d", "-1d", "1.5d", "30 days", ""] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    }
}
