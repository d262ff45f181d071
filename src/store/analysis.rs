//! Analytic reads over many outcomes: a test's stability across sessions,
//! flaky tests over a window, two sessions compared, the slowest tests.
//!
//! The rules that turn outcomes into a verdict (what counts as flaky) live
//! here once, as pure functions over rows, so every front end (MCP today)
//! says the same thing and the rules are unit-tested without a database.
//! Only pass/fail outcomes count toward stability: a skip says nothing about
//! whether a test is reliable.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::rows::{self, OUTCOME_COLUMNS, SESSION_COLUMNS, outcome_rowid_range};
use super::{Store, resolve};
use crate::error::Result;
use crate::model::{Outcome, Session, SessionRef, Source, TestOutcome};

/// Flips between pass and fail (oldest to newest) from which a test counts as
/// flaky even without a same-commit witness.
pub const FLAKY_FLIPS: u64 = 3;

/// What a test's recent outcomes say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No pass or fail outcome recorded.
    Unknown,
    /// Passed every time.
    Passing,
    /// Failed every time.
    Failing,
    /// Passed before, fails now, without flipping often: likely a real regression.
    Regressed,
    /// Failed before, passes now, without flipping often.
    Fixed,
    /// Passed and failed on the same commit or in the same session, or flips often.
    Flaky,
}

impl Verdict {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Passing => "passing",
            Verdict::Failing => "failing",
            Verdict::Regressed => "regressed",
            Verdict::Fixed => "fixed",
            Verdict::Flaky => "flaky",
        }
    }
}

/// Pass/fail statistics of one test over a window of runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stability {
    /// Pass or fail outcomes counted.
    pub runs: u64,
    /// Passed outcomes.
    pub passed: u64,
    /// Failed or error outcomes.
    pub failed: u64,
    /// Changes between pass and fail, oldest to newest.
    pub flips: u64,
    /// Commits on which the test both passed and failed.
    pub mixed_commits: u64,
    /// Sessions in which the test both passed and failed (reruns).
    pub mixed_sessions: u64,
    /// Whether the newest counted outcome is a failure.
    pub last_failed: Option<bool>,
}

/// Judges a test from its statistics.
pub fn flakiness_verdict(s: &Stability) -> Verdict {
    if s.runs == 0 {
        return Verdict::Unknown;
    }
    if s.mixed_commits > 0 || s.mixed_sessions > 0 || s.flips >= FLAKY_FLIPS {
        return Verdict::Flaky;
    }
    match (s.passed, s.failed, s.last_failed) {
        (_, 0, _) => Verdict::Passing,
        (0, _, _) => Verdict::Failing,
        (_, _, Some(true)) => Verdict::Regressed,
        _ => Verdict::Fixed,
    }
}

/// One pass/fail outcome of a test, as the stability rules see it.
#[derive(Debug, Clone)]
struct Run {
    session_pk: i64,
    commit: Option<String>,
    failed: bool,
}

/// Computes statistics from runs in chronological order.
fn stability_of(runs: &[Run]) -> Stability {
    let mut s = Stability::default();
    let mut by_commit: HashMap<&str, (bool, bool)> = HashMap::new();
    let mut by_session: HashMap<i64, (bool, bool)> = HashMap::new();
    let mut prev: Option<bool> = None;
    for r in runs {
        s.runs += 1;
        if r.failed {
            s.failed += 1;
        } else {
            s.passed += 1;
        }
        if prev.is_some_and(|p| p != r.failed) {
            s.flips += 1;
        }
        prev = Some(r.failed);
        let mark = |slot: &mut (bool, bool)| {
            if r.failed {
                slot.1 = true;
            } else {
                slot.0 = true;
            }
        };
        if let Some(c) = r.commit.as_deref().filter(|c| !c.is_empty()) {
            mark(by_commit.entry(c).or_default());
        }
        mark(by_session.entry(r.session_pk).or_default());
    }
    s.last_failed = prev;
    s.mixed_commits = by_commit.values().filter(|(p, f)| *p && *f).count() as u64;
    s.mixed_sessions = by_session.values().filter(|(p, f)| *p && *f).count() as u64;
    s
}

/// A test judged flaky over a window of sessions.
#[derive(Debug, Clone)]
pub struct FlakyTest {
    /// The test.
    pub nodeid: String,
    /// Its statistics over the window.
    pub stability: Stability,
    /// Its verdict (always [`Verdict::Flaky`] in [`Store::flaky_tests`] results).
    pub verdict: Verdict,
    /// The newest failure message seen.
    pub last_message: String,
}

/// A test whose final outcome differs between two sessions (or that fails in both).
#[derive(Debug, Clone, PartialEq)]
pub struct ComparedTest {
    /// The test.
    pub nodeid: String,
    /// Final outcome in the base session, if it ran there.
    pub base: Option<TestOutcome>,
    /// Final outcome in the head session, if it ran there.
    pub head: Option<TestOutcome>,
    /// The head's failure message (or the base's, for a fixed test).
    pub message: String,
}

/// A test that got slower.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationChange {
    /// The test.
    pub nodeid: String,
    /// Seconds in the base session.
    pub base: f64,
    /// Seconds in the head session.
    pub head: f64,
}

/// Two sessions compared by each test's final outcome (its last attempt).
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The older session.
    pub base: Session,
    /// The newer session.
    pub head: Session,
    /// Failing in head, not failing (or absent) in base.
    pub new_failures: Vec<ComparedTest>,
    /// Failing in base, passing in head.
    pub fixed: Vec<ComparedTest>,
    /// Failing in both.
    pub still_failing: Vec<ComparedTest>,
    /// Run in head only.
    pub added: Vec<String>,
    /// Run in base only.
    pub removed: Vec<String>,
    /// Passed in both and took longer in head, slowest growth first.
    pub slower: Vec<DurationChange>,
}

/// The final outcome of one test in one session.
#[derive(Debug, Clone)]
struct Final {
    outcome: TestOutcome,
    duration: f64,
    message: String,
}

/// Compares final outcomes; `min_ratio` and `min_seconds` both bound what
/// counts as slower (noise on fast tests is not a regression).
fn compare_finals(
    base: &HashMap<String, Final>,
    head: &HashMap<String, Final>,
    min_ratio: f64,
    min_seconds: f64,
) -> Lists {
    let mut new_failures = Vec::new();
    let mut fixed = Vec::new();
    let mut still = Vec::new();
    let mut added = Vec::new();
    let mut slower = Vec::new();
    for (nodeid, h) in head {
        let b = base.get(nodeid);
        if b.is_none() {
            added.push(nodeid.clone());
        }
        let entry = |message: &str| ComparedTest {
            nodeid: nodeid.clone(),
            base: b.map(|b| b.outcome),
            head: Some(h.outcome),
            message: message.to_string(),
        };
        match (b.map(|b| b.outcome.is_failure()), h.outcome.is_failure()) {
            (Some(true), true) => still.push(entry(&h.message)),
            (_, true) => new_failures.push(entry(&h.message)),
            (Some(true), false) if h.outcome == TestOutcome::Passed => {
                fixed.push(entry(b.map(|b| b.message.as_str()).unwrap_or_default()))
            }
            _ => {}
        }
        if let Some(b) = b
            && b.outcome == TestOutcome::Passed
            && h.outcome == TestOutcome::Passed
            && h.duration - b.duration >= min_seconds
            && h.duration >= b.duration * min_ratio
        {
            slower.push(DurationChange {
                nodeid: nodeid.clone(),
                base: b.duration,
                head: h.duration,
            });
        }
    }
    let mut removed: Vec<String> = base
        .keys()
        .filter(|k| !head.contains_key(*k))
        .cloned()
        .collect();
    for list in [&mut new_failures, &mut fixed, &mut still] {
        list.sort_by(|a, b| a.nodeid.cmp(&b.nodeid));
    }
    added.sort();
    removed.sort();
    slower.sort_by(|a, b| {
        (b.head - b.base)
            .total_cmp(&(a.head - a.base))
            .then_with(|| a.nodeid.cmp(&b.nodeid))
    });
    Lists {
        new_failures,
        fixed,
        still_failing: still,
        added,
        removed,
        slower,
    }
}

/// The lists of a [`Comparison`], before the sessions are attached.
struct Lists {
    new_failures: Vec<ComparedTest>,
    fixed: Vec<ComparedTest>,
    still_failing: Vec<ComparedTest>,
    added: Vec<String>,
    removed: Vec<String>,
    slower: Vec<DurationChange>,
}

fn finals_of(c: &Connection, session_pk: i64) -> Result<HashMap<String, Final>> {
    let (lo, hi) = outcome_rowid_range(session_pk);
    let mut stmt = c.prepare_cached(
        "SELECT o.nodeid, o.outcome, o.duration,
                CASE WHEN o.outcome IN ('failed', 'error') THEN o.message END
         FROM outcomes o WHERE o.id BETWEEN ?1 AND ?2 ORDER BY o.id",
    )?;
    let mut out = HashMap::new();
    let mut rows = stmt.query([lo, hi])?;
    while let Some(r) = rows.next()? {
        let outcome: String = r.get(1)?;
        let outcome = outcome.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                Box::<dyn std::error::Error + Send + Sync>::from(e),
            )
        })?;
        // A later attempt (rerun) replaces an earlier one: the last one is final.
        out.insert(
            r.get::<_, String>(0)?,
            Final {
                outcome,
                duration: r.get(2)?,
                message: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

impl Store {
    /// The most recently started session from `source` that is still running.
    pub async fn latest_running(&self, source: Source) -> Result<Option<Session>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s
                 WHERE s.source = ?1 AND s.status = 'running'
                 ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
            );
            Ok(c.prepare_cached(&sql)?
                .query_row([source.as_str()], |r| rows::session_from_row(r, 0))
                .optional()?
                .map(|(_, s)| s))
        })
        .await
    }

    /// The session of the same project started just before `head`.
    pub async fn previous_session(&self, head: &Session) -> Result<Option<Session>> {
        let id = head.id.to_string();
        let started = head.started_at.as_micros();
        let project = Some(head.environment.project.clone()).filter(|p| !p.is_empty());
        self.read(move |c| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s
                 WHERE s.project IS ?1
                   AND (s.started_at < ?2
                        OR (s.started_at = ?2 AND s.pk < (SELECT pk FROM sessions WHERE id = ?3)))
                 ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
            );
            Ok(c.prepare_cached(&sql)?
                .query_row(rusqlite::params![project, started, id], |r| {
                    rows::session_from_row(r, 0)
                })
                .optional()?
                .map(|(_, s)| s))
        })
        .await
    }

    /// Statistics of one test over its newest `window` pass/fail outcomes.
    pub async fn test_stability(&self, nodeid: String, window: usize) -> Result<Stability> {
        crate::model::validate_nodeid(&nodeid, "nodeid")?;
        self.read(move |c| {
            // The test's rows newest first, ordered using only the nodeid
            // index (its rowid gives the session, see the schema); then each
            // row's outcome is read until the window is full, so a long
            // history costs `window` row reads, not one per run stored.
            let mut ordered = c.prepare_cached(
                "SELECT o.id, s.pk, s.git_commit
                 FROM outcomes o INDEXED BY outcomes_by_nodeid
                 JOIN sessions s ON s.pk = o.id >> 32
                 WHERE o.nodeid = ?1
                 ORDER BY s.started_at DESC, s.pk DESC, o.id DESC",
            )?;
            let mut kind = c.prepare_cached(
                "SELECT outcome IN ('passed', 'failed', 'error'), outcome IN ('failed', 'error')
                 FROM outcomes WHERE id = ?1",
            )?;
            let mut runs: Vec<Run> = Vec::new();
            let mut rows = ordered.query([&nodeid])?;
            while runs.len() < window
                && let Some(r) = rows.next()?
            {
                let (counts, failed): (bool, bool) =
                    kind.query_row([r.get::<_, i64>(0)?], |k| Ok((k.get(0)?, k.get(1)?)))?;
                if counts {
                    runs.push(Run {
                        session_pk: r.get(1)?,
                        commit: r.get(2)?,
                        failed,
                    });
                }
            }
            runs.reverse();
            Ok(stability_of(&runs))
        })
        .await
    }

    /// Tests judged flaky over the newest `window` sessions (of `project`,
    /// when given), most flips first, at most `limit`.
    pub async fn flaky_tests(
        &self,
        window: usize,
        project: Option<String>,
        limit: usize,
    ) -> Result<(usize, Vec<FlakyTest>)> {
        self.read(move |c| {
            // Only tests that failed at least once in the window can be
            // flaky; the partial failures index finds them without a scan.
            let mut stmt = c.prepare_cached(
                "WITH recent AS (
                     SELECT s.pk, s.started_at, s.git_commit FROM sessions s
                     WHERE ?2 IS NULL OR s.project = ?2
                     ORDER BY s.started_at DESC, s.pk DESC LIMIT ?1),
                 failing AS (
                     SELECT DISTINCT f.nodeid FROM recent r
                     JOIN outcomes f INDEXED BY outcomes_failures ON f.session_pk = r.pk
                     WHERE f.outcome IN ('failed', 'error'))
                 SELECT o.nodeid, r.pk, r.git_commit, o.outcome IN ('failed', 'error'),
                        CASE WHEN o.outcome IN ('failed', 'error') THEN o.message END
                 FROM failing x
                 JOIN outcomes o INDEXED BY outcomes_by_nodeid ON o.nodeid = x.nodeid
                 JOIN recent r ON r.pk = o.session_pk
                 WHERE o.outcome IN ('passed', 'failed', 'error')
                 ORDER BY o.nodeid, r.started_at, r.pk, o.seq",
            )?;
            let window_i = i64::try_from(window).unwrap_or(i64::MAX);
            let mut rows = stmt.query(rusqlite::params![window_i, project])?;
            let mut found = Vec::new();
            let mut current: Option<(String, Vec<Run>, String)> = None;
            let mut flush = |entry: Option<(String, Vec<Run>, String)>| {
                if let Some((nodeid, runs, last_message)) = entry {
                    let stability = stability_of(&runs);
                    let verdict = flakiness_verdict(&stability);
                    if verdict == Verdict::Flaky {
                        found.push(FlakyTest {
                            nodeid,
                            stability,
                            verdict,
                            last_message,
                        });
                    }
                }
            };
            while let Some(r) = rows.next()? {
                let nodeid: String = r.get(0)?;
                let run = Run {
                    session_pk: r.get(1)?,
                    commit: r.get(2)?,
                    failed: r.get(3)?,
                };
                let message: Option<String> = r.get(4)?;
                if current.as_ref().is_none_or(|(n, _, _)| *n != nodeid) {
                    flush(current.take());
                    current = Some((nodeid, Vec::new(), String::new()));
                }
                if let Some((_, runs, last)) = current.as_mut() {
                    if let Some(m) = message.filter(|m| !m.is_empty()) {
                        *last = m;
                    }
                    runs.push(run);
                }
            }
            flush(current.take());
            found.sort_by(|a, b| {
                (b.stability.mixed_commits + b.stability.mixed_sessions)
                    .cmp(&(a.stability.mixed_commits + a.stability.mixed_sessions))
                    .then(b.stability.flips.cmp(&a.stability.flips))
                    .then_with(|| a.nodeid.cmp(&b.nodeid))
            });
            let total = found.len();
            found.truncate(limit);
            Ok((total, found))
        })
        .await
    }

    /// Compares two sessions by each test's final outcome. A test counts as
    /// slower when it passed in both and its duration grew by at least
    /// `min_seconds` and by a factor of at least `min_ratio`.
    pub async fn compare_sessions(
        &self,
        base: SessionRef,
        head: SessionRef,
        min_ratio: f64,
        min_seconds: f64,
    ) -> Result<Comparison> {
        self.read(move |c| {
            let (base_pk, base) = resolve(c, base).map_err(|e| rename_field(e, "base"))?;
            let (head_pk, head) = resolve(c, head).map_err(|e| rename_field(e, "head"))?;
            let b = finals_of(c, base_pk)?;
            let h = finals_of(c, head_pk)?;
            let Lists {
                new_failures,
                fixed,
                still_failing,
                added,
                removed,
                slower,
            } = compare_finals(&b, &h, min_ratio, min_seconds);
            Ok(Comparison {
                base,
                head,
                new_failures,
                fixed,
                still_failing,
                added,
                removed,
                slower,
            })
        })
        .await
    }

    /// A session's `limit` slowest outcomes, slowest first.
    pub async fn slowest_tests(
        &self,
        session: SessionRef,
        limit: usize,
    ) -> Result<(Session, Vec<Outcome>)> {
        self.read(move |c| {
            let (pk, s) = resolve(c, session)?;
            let (lo, hi) = outcome_rowid_range(pk);
            let sql = format!(
                "SELECT {OUTCOME_COLUMNS} FROM outcomes o WHERE o.id BETWEEN ?1 AND ?2
                 ORDER BY o.duration DESC, o.seq LIMIT ?3"
            );
            let items = c
                .prepare_cached(&sql)?
                .query_map(
                    rusqlite::params![lo, hi, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| rows::outcome_from_row(r, 0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok((s, items))
        })
        .await
    }
}

/// Re-labels a not-found error from `session_id` to the argument that named it.
fn rename_field(e: crate::error::Error, field: &str) -> crate::error::Error {
    match e {
        crate::error::Error::NotFound { message, .. } => crate::error::Error::NotFound {
            field: field.into(),
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, Timestamp};
    use crate::store::StoreConfig;
    use uuid::Uuid;

    /// Sessions oldest first; each `(start, commit, outcomes)` holds the
    /// tracked test's outcomes in seq order among other tests.
    async fn store_with_history(
        dir: &std::path::Path,
        sessions: &[(i64, &str, &[TestOutcome])],
    ) -> anyhow::Result<(Store, Vec<Uuid>)> {
        let store = Store::open(StoreConfig::new(dir.join("h.db")))?;
        let mut ids = Vec::new();
        for (start, commit, outcomes) in sessions {
            let id = Uuid::new_v4();
            let env = Environment {
                git_commit: commit.to_string(),
                ..Environment::default()
            };
            store
                .start_session(id, Source::Import, env, Some(Timestamp(*start)))
                .await?;
            let mut batch = vec![Outcome::new(1, "t.py::other", TestOutcome::Passed)];
            for (i, o) in outcomes.iter().enumerate() {
                let mut tracked = Outcome::new(i as u64 + 2, "t.py::tracked", *o);
                tracked.attempt = i as u32 + 1;
                batch.push(tracked);
            }
            store.append_outcomes(id, batch).await?;
            ids.push(id);
        }
        Ok((store, ids))
    }

    #[tokio::test]
    async fn history_and_stability_read_sessions_newest_first_and_reruns_in_order()
    -> anyhow::Result<()> {
        use TestOutcome::{Failed, Passed, Skipped};
        let dir = tempfile::tempdir()?;
        // The last two start at the same moment: the later stored one is newer.
        let (store, ids) = store_with_history(
            dir.path(),
            &[
                (1_000, "c1", &[Passed]),
                (2_000, "c2", &[Skipped]),
                (3_000, "c3", &[Failed, Passed]),
                (3_000, "c4", &[Failed]),
            ],
        )
        .await?;

        let page = store.test_history("t.py::tracked".into(), 3, None).await?;
        let seen: Vec<(Uuid, TestOutcome)> = page
            .items
            .iter()
            .map(|e| (e.session.id, e.outcome.outcome))
            .collect();
        assert_eq!(seen, [(ids[3], Failed), (ids[2], Failed), (ids[2], Passed)]);
        assert_eq!(page.items[0].session.environment.git_commit, "c4");
        let rest = store
            .test_history("t.py::tracked".into(), 3, page.next)
            .await?;
        let seen: Vec<Uuid> = rest.items.iter().map(|e| e.session.id).collect();
        assert_eq!(seen, [ids[1], ids[0]]);
        assert!(rest.next.is_none());

        // Oldest to newest: P (c1), F then P (c3, a rerun), F (c4); the skip is not a run.
        let all = store.test_stability("t.py::tracked".into(), 50).await?;
        assert_eq!((all.runs, all.passed, all.failed), (4, 2, 2));
        assert_eq!((all.flips, all.mixed_sessions), (3, 1));
        assert_eq!(all.last_failed, Some(true));
        // The window keeps the newest runs: P (c3, the rerun), F (c4).
        let newest = store.test_stability("t.py::tracked".into(), 2).await?;
        assert_eq!((newest.runs, newest.passed, newest.failed), (2, 1, 1));
        assert_eq!((newest.flips, newest.mixed_sessions), (1, 0));
        Ok(())
    }

    fn runs(pattern: &str, commit: Option<&str>) -> Vec<Run> {
        pattern
            .chars()
            .enumerate()
            .map(|(i, ch)| Run {
                session_pk: i as i64,
                commit: commit.map(|c| format!("{c}{i}")),
                failed: ch == 'F',
            })
            .collect()
    }

    #[test]
    fn a_test_that_always_passes_is_passing() {
        let s = stability_of(&runs("PPPP", Some("c")));
        assert_eq!(flakiness_verdict(&s), Verdict::Passing);
        assert_eq!(s.flips, 0);
    }

    #[test]
    fn one_change_to_failing_is_a_regression_not_flakiness() {
        let s = stability_of(&runs("PPPFF", Some("c")));
        assert_eq!(s.flips, 1);
        assert_eq!(flakiness_verdict(&s), Verdict::Regressed);
        let s = stability_of(&runs("FFP", Some("c")));
        assert_eq!(flakiness_verdict(&s), Verdict::Fixed);
    }

    #[test]
    fn passing_and_failing_on_one_commit_is_flaky() {
        let mut r = runs("PF", None);
        for x in &mut r {
            x.commit = Some("abc".into());
        }
        let s = stability_of(&r);
        assert_eq!(s.mixed_commits, 1);
        assert_eq!(flakiness_verdict(&s), Verdict::Flaky);
    }

    #[test]
    fn a_rerun_that_passes_in_the_same_session_is_flaky() {
        let mut r = runs("FP", None);
        r[1].session_pk = r[0].session_pk;
        let s = stability_of(&r);
        assert_eq!(s.mixed_sessions, 1);
        assert_eq!(flakiness_verdict(&s), Verdict::Flaky);
    }

    #[test]
    fn flipping_often_is_flaky_even_on_different_commits() {
        let s = stability_of(&runs("PFPF", Some("c")));
        assert_eq!(s.flips, 3);
        assert_eq!(flakiness_verdict(&s), Verdict::Flaky);
    }

    #[test]
    fn no_runs_is_unknown() {
        assert_eq!(flakiness_verdict(&Stability::default()), Verdict::Unknown);
    }

    fn fin(outcome: TestOutcome, duration: f64) -> Final {
        Final {
            outcome,
            duration,
            message: if outcome.is_failure() {
                "boom".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn comparison_sorts_tests_into_new_fixed_still_added_removed_and_slower() {
        let base: HashMap<String, Final> = [
            ("a", fin(TestOutcome::Passed, 1.0)),
            ("b", fin(TestOutcome::Failed, 1.0)),
            ("c", fin(TestOutcome::Failed, 1.0)),
            ("gone", fin(TestOutcome::Passed, 1.0)),
            ("slow", fin(TestOutcome::Passed, 1.0)),
            ("noise", fin(TestOutcome::Passed, 0.001)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let head: HashMap<String, Final> = [
            ("a", fin(TestOutcome::Failed, 1.0)),
            ("b", fin(TestOutcome::Passed, 1.0)),
            ("c", fin(TestOutcome::Error, 1.0)),
            ("new", fin(TestOutcome::Failed, 1.0)),
            ("slow", fin(TestOutcome::Passed, 3.0)),
            ("noise", fin(TestOutcome::Passed, 0.01)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let Lists {
            new_failures: new,
            fixed,
            still_failing: still,
            added,
            removed,
            slower,
        } = compare_finals(&base, &head, 1.5, 0.1);
        let names = |v: &[ComparedTest]| v.iter().map(|t| t.nodeid.clone()).collect::<Vec<_>>();
        assert_eq!(names(&new), ["a", "new"]);
        assert_eq!(names(&fixed), ["b"]);
        assert_eq!(names(&still), ["c"]);
        assert_eq!(added, ["new"]);
        assert_eq!(removed, ["gone"]);
        assert_eq!(slower.len(), 1);
        assert_eq!(slower[0].nodeid, "slow");
    }
}
