//! The rules of recording, written once for every backend: what a repeated
//! start means, which outcomes of a batch are new and where a gap is, how a
//! session's status moves, what its counts become, which captured output is
//! kept, and which sessions may be pruned.
//!
//! Everything here is a pure function of what the backend read inside its
//! write transaction (the session as it is now) and of what arrived. A
//! backend loads, asks these functions, and stores what they decided; it
//! decides nothing itself. That is what keeps two backends in agreement.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    EXIT_INTERRUPTED, Environment, Outcome, OutcomeCounts, Session, SessionStatus, Source, Summary,
    TestOutcome, Timestamp,
};

/// Highest seq a session may hold.
pub const MAX_SEQ: u64 = 0xFFFF_FFFF;

/// A session to create, as a client asked for it.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Client-chosen id.
    pub id: Uuid,
    /// Where it comes from.
    pub source: Source,
    /// Machine and project.
    pub environment: Environment,
    /// Start time (now, when the client gave none).
    pub started_at: Timestamp,
    /// Whether the client gave `started_at` (and so a retry must match it).
    pub started_at_given: bool,
    /// The grant its client authenticated as, if tokens are in use.
    pub grant: Option<String>,
}

/// Decides what a start for a session that already exists means: a retry of
/// the same start (fine, nothing changes) or a reused id (refused).
pub fn check_restart(existing: &Session, new: &NewSession) -> Result<()> {
    let mut differs = Vec::new();
    if existing.source != new.source {
        differs.push("source");
    }
    if existing.environment != new.environment {
        differs.push("environment");
    }
    if new.started_at_given && existing.started_at != new.started_at {
        differs.push("started_at");
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(Error::AlreadyExists {
        field: "session_id".into(),
        message: format!(
            "session {} already exists with a different {}; choose a new id for a new session",
            new.id,
            differs.join(" and ")
        ),
    })
}

/// The error for outcomes of a session that does not exist.
pub fn no_session_for_outcomes(id: Uuid) -> Error {
    Error::not_found(
        "session_id",
        format!("no session {id}; call StartSession before streaming its outcomes"),
    )
}

/// The error for a session that does not exist.
pub fn no_session(id: Uuid) -> Error {
    Error::not_found("session_id", format!("no session {id}"))
}

/// What to store of an appended batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPlan {
    /// Index in the batch of the first outcome to store; the ones before it
    /// are stored already (a resend) and are acknowledged, not stored again.
    pub first: usize,
    /// How many outcomes from `first` on to store.
    pub count: usize,
    /// The session's highest contiguous stored seq afterwards.
    pub stored: u64,
    /// Its status afterwards (an incomplete session whose missing outcomes
    /// arrive completes).
    pub status: SessionStatus,
    /// What the new outcomes add to the session's counts.
    pub counts: OutcomeCounts,
}

/// Decides which outcomes of a batch (seqs increasing) are new for
/// `session`: `Ok(None)` when all are stored already, an error naming the
/// outcome on a gap, a decreasing seq or a closed session.
pub fn plan_append<O: AsRef<Outcome>>(
    session: &Session,
    outcomes: &[O],
) -> Result<Option<AppendPlan>> {
    let stored = session.outcomes_stored;
    let mut first = None;
    let mut next = stored + 1;
    let mut prev = 0u64;
    for (i, o) in outcomes.iter().map(AsRef::as_ref).enumerate() {
        if i > 0 && o.seq <= prev {
            return Err(Error::invalid(
                format!("outcomes[{i}].seq"),
                format!("{} after {prev}; seqs in a batch must increase", o.seq),
            ));
        }
        prev = o.seq;
        if o.seq <= stored {
            continue; // already stored: acknowledged again, not stored twice
        }
        if o.seq != next {
            return Err(Error::precondition(
                format!("outcomes[{i}].seq"),
                format!(
                    "expected seq {next}, got {}; seqs of a session are contiguous from 1 (resend from {next})",
                    o.seq
                ),
            ));
        }
        if o.seq > MAX_SEQ {
            return Err(Error::invalid(
                format!("outcomes[{i}].seq"),
                format!(
                    "{} is over the limit of {MAX_SEQ} outcomes per session",
                    o.seq
                ),
            ));
        }
        first.get_or_insert(i);
        next += 1;
    }
    let Some(first) = first else {
        return Ok(None);
    };
    if session.status.is_closed() {
        return Err(Error::precondition(
            "session_id",
            format!(
                "session {} is {}; it takes no new outcomes (seq {} and later were not stored)",
                session.id,
                session.status,
                outcomes[first].as_ref().seq
            ),
        ));
    }
    let count = outcomes.len() - first;
    let mut counts = OutcomeCounts::default();
    for o in outcomes[first..].iter().map(AsRef::as_ref) {
        if counts_toward_summary(o) {
            counts.add(o.outcome, 1);
        }
    }
    let new_stored = next - 1;
    // Missing outcomes of an incomplete session may arrive later (a replayed
    // spool file); once all are here, the session is what its finish said.
    let status = match (session.status, session.outcomes_expected) {
        (SessionStatus::Incomplete, Some(expected)) if new_stored >= expected => {
            closed_status(session.summary.as_ref())
        }
        (status, _) => status,
    };
    Ok(Some(AppendPlan {
        first,
        count,
        stored: new_stored,
        status,
        counts,
    }))
}

/// Whether an outcome counts in the session's counts as pytest counts it in
/// its terminal summary: every outcome of a test itself, and a subtest only
/// when it failed (pytest lists the others apart, as "3 subtests passed",
/// or not at all at the default verbosity).
pub fn counts_toward_summary(o: &Outcome) -> bool {
    !o.is_subtest() || o.outcome.is_failure()
}

/// The seq an outcome without one (an MCP `record_test_outcome`) is stored as.
pub fn next_seq(session: &Session) -> u64 {
    session.outcomes_stored + 1
}

/// The status of a session whose every announced outcome is stored.
pub fn closed_status(summary: Option<&Summary>) -> SessionStatus {
    match summary {
        Some(s) if s.exitstatus == EXIT_INTERRUPTED => SessionStatus::Interrupted,
        _ => SessionStatus::Finished,
    }
}

/// What a finish does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishPlan {
    /// A repeat of the finish already stored: nothing changes.
    Repeat,
    /// Close the session with this status.
    Close(SessionStatus),
}

/// Decides what finishing `session` with `summary` and `outcomes_sent` means.
pub fn plan_finish(session: &Session, summary: &Summary, outcomes_sent: u64) -> Result<FinishPlan> {
    if outcomes_sent < session.outcomes_stored {
        return Err(Error::invalid(
            "outcomes_sent",
            format!(
                "{outcomes_sent}, but {} outcomes of session {} are already stored",
                session.outcomes_stored, session.id
            ),
        ));
    }
    if session.status.is_closed() {
        if session.summary.as_ref() == Some(summary)
            && session.outcomes_expected == Some(outcomes_sent)
        {
            return Ok(FinishPlan::Repeat);
        }
        return Err(Error::precondition(
            "session_id",
            format!(
                "session {} is already {} with a different summary or outcome count",
                session.id, session.status
            ),
        ));
    }
    Ok(FinishPlan::Close(
        if session.outcomes_stored < outcomes_sent {
            SessionStatus::Incomplete
        } else {
            closed_status(Some(summary))
        },
    ))
}

/// Applies pytest's own rule for captured output: it is shown for tests that
/// did not pass, so it is kept for them; a passing outcome keeps its output
/// only when the store was asked to (`--keep-passing-output`).
pub fn apply_output_rule(outcome: &mut Outcome, keep_passing_output: bool) {
    if outcome.outcome == TestOutcome::Passed && !keep_passing_output {
        outcome.stdout.clear();
        outcome.stderr.clear();
        outcome.log.clear();
    }
}

/// Why a session may not be pruned, if it may not.
pub fn prune_refusal(status: SessionStatus, pinned: bool) -> Option<&'static str> {
    if status == SessionStatus::Running {
        Some("it is still running")
    } else if pinned {
        Some("it is pinned (pytest-mcp unpin ID releases it)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stored: u64, status: SessionStatus) -> Session {
        Session {
            id: Uuid::nil(),
            source: Source::Plugin,
            status,
            started_at: Timestamp(0),
            finished_at: None,
            environment: Environment::default(),
            summary: None,
            outcomes_stored: stored,
            outcomes_expected: None,
            counts: OutcomeCounts::default(),
            pinned: false,
        }
    }

    fn batch(seqs: &[u64]) -> Vec<Outcome> {
        seqs.iter()
            .map(|&s| Outcome::new(s, format!("t.py::t{s}"), TestOutcome::Passed))
            .collect()
    }

    #[test]
    fn a_resent_prefix_is_acknowledged_and_only_the_rest_is_stored() {
        let s = session(3, SessionStatus::Running);
        let plan = plan_append(&s, &batch(&[2, 3, 4, 5])).unwrap().unwrap();
        assert_eq!((plan.first, plan.count, plan.stored), (2, 2, 5));
        assert_eq!(plan.counts.passed, 2);
        assert_eq!(plan_append(&s, &batch(&[1, 2, 3])).unwrap(), None);
    }

    #[test]
    fn only_failed_subtests_count_as_pytest_counts_them() {
        let s = session(0, SessionStatus::Running);
        let mut outcomes = batch(&[1, 2, 3, 4]);
        outcomes[1].subtest = "(i=0)".into();
        outcomes[2].subtest = "(i=1)".into();
        outcomes[2].outcome = TestOutcome::Failed;
        outcomes[3].outcome = TestOutcome::Failed;
        let plan = plan_append(&s, &outcomes).unwrap().unwrap();
        assert_eq!((plan.counts.passed, plan.counts.failed), (1, 2));
        assert_eq!(plan.stored, 4);
    }

    #[test]
    fn a_gap_names_the_outcome_and_the_seq_expected() {
        let s = session(3, SessionStatus::Running);
        let err = plan_append(&s, &batch(&[4, 6])).unwrap_err().to_string();
        assert!(
            err.starts_with("outcomes[1].seq: expected seq 5, got 6"),
            "{err}"
        );
        let err = plan_append(&s, &batch(&[4, 4])).unwrap_err().to_string();
        assert!(err.starts_with("outcomes[1].seq: 4 after 4"), "{err}");
    }

    #[test]
    fn a_closed_session_takes_nothing_new_but_acknowledges_a_resend() {
        let s = session(2, SessionStatus::Finished);
        assert_eq!(plan_append(&s, &batch(&[1, 2])).unwrap(), None);
        let err = plan_append(&s, &batch(&[3])).unwrap_err().to_string();
        assert!(
            err.contains("is finished; it takes no new outcomes"),
            "{err}"
        );
    }

    #[test]
    fn an_incomplete_session_completes_when_its_missing_outcomes_arrive() {
        let mut s = session(1, SessionStatus::Incomplete);
        s.outcomes_expected = Some(3);
        s.summary = Some(Summary {
            exitstatus: EXIT_INTERRUPTED,
            ..Summary::default()
        });
        let partial = plan_append(&s, &batch(&[2])).unwrap().unwrap();
        assert_eq!(partial.status, SessionStatus::Incomplete);
        let all = plan_append(&s, &batch(&[2, 3])).unwrap().unwrap();
        assert_eq!(all.status, SessionStatus::Interrupted);
    }

    #[test]
    fn finishing_with_outcomes_missing_is_incomplete_and_a_repeat_changes_nothing() {
        let s = session(2, SessionStatus::Running);
        let summary = Summary::default();
        assert_eq!(
            plan_finish(&s, &summary, 3).unwrap(),
            FinishPlan::Close(SessionStatus::Incomplete)
        );
        assert_eq!(
            plan_finish(&s, &summary, 2).unwrap(),
            FinishPlan::Close(SessionStatus::Finished)
        );
        assert!(plan_finish(&s, &summary, 1).is_err());
        let mut done = session(2, SessionStatus::Finished);
        done.summary = Some(summary.clone());
        done.outcomes_expected = Some(2);
        assert_eq!(plan_finish(&done, &summary, 2).unwrap(), FinishPlan::Repeat);
        assert!(plan_finish(&done, &summary, 3).is_err());
    }

    #[test]
    fn passing_outcomes_lose_their_output_unless_asked_and_failures_keep_it() {
        let mut passed = Outcome::new(1, "t.py::a", TestOutcome::Passed);
        passed.stdout = "out".into();
        passed.log = "log".into();
        let mut kept = passed.clone();
        apply_output_rule(&mut passed, false);
        assert!(passed.stdout.is_empty() && passed.log.is_empty());
        apply_output_rule(&mut kept, true);
        assert_eq!(kept.stdout, "out");
        for kind in [
            TestOutcome::Failed,
            TestOutcome::Error,
            TestOutcome::Skipped,
        ] {
            let mut o = Outcome::new(1, "t.py::a", kind);
            o.stderr = "err".into();
            apply_output_rule(&mut o, false);
            assert_eq!(o.stderr, "err", "{kind}");
        }
    }

    #[test]
    fn running_and_pinned_sessions_may_not_be_pruned() {
        assert!(prune_refusal(SessionStatus::Running, false).is_some());
        assert!(prune_refusal(SessionStatus::Finished, true).is_some());
        assert!(prune_refusal(SessionStatus::Incomplete, false).is_none());
    }
}
