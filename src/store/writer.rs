//! The store's single writer: one thread that owns the write connection and
//! commits whatever commands are queued in one transaction (group commit).
//!
//! Invariants:
//! - A command's reply is sent only after the transaction holding it has
//!   committed, so an ack never runs ahead of what is on disk.
//! - Each command runs in its own savepoint: a rejected command changes
//!   nothing and does not affect the others in its group.
//! - Seq rules are checked against the database inside the write
//!   transaction, so two processes writing one file cannot store a seq twice.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::StoreEvent;
use super::audit::{self, AuditEntry};
use super::rows::{self, MAX_SEQ, nullable, outcome_rowid};
use crate::error::{Error, Result};
use crate::model::{
    EXIT_INTERRUPTED, Environment, Outcome, Session, SessionStatus, Source, Summary, Timestamp,
};

/// Upper bound on outcomes committed in one transaction, so one group never
/// holds the write lock (or replies) for long.
const MAX_GROUP_OUTCOMES: usize = 50_000;

/// Bytes of outcomes that may wait in the queue or in the writer at once, so
/// a client sending large messages fast cannot grow the server's memory: a
/// sender past the budget waits (backpressure), as it does for a full queue.
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// The budget is counted in KiB, which fits a semaphore's `u32` permits.
const BUDGET_UNIT: usize = 1024;

/// The queued-bytes budget shared by every sender.
#[derive(Clone)]
pub struct ByteBudget(Arc<Semaphore>);

/// A share of the [`ByteBudget`], released when dropped.
pub struct QueuedBytes {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    /// A budget of [`MAX_QUEUED_BYTES`].
    pub fn new() -> Self {
        ByteBudget(Arc::new(Semaphore::new(MAX_QUEUED_BYTES / BUDGET_UNIT)))
    }

    /// Waits until `outcomes` fit in the budget and takes their share; a
    /// batch larger than the whole budget takes all of it.
    pub async fn take(&self, outcomes: &[Outcome]) -> QueuedBytes {
        let bytes: usize = outcomes.iter().map(approximate_size).sum();
        let units = bytes
            .div_ceil(BUDGET_UNIT)
            .clamp(1, MAX_QUEUED_BYTES / BUDGET_UNIT);
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = self.0.clone().acquire_many_owned(units as u32).await.ok();
        QueuedBytes { _permit: permit }
    }
}

/// Heap bytes an outcome holds, near enough for a memory budget.
fn approximate_size(o: &Outcome) -> usize {
    std::mem::size_of::<Outcome>()
        + o.nodeid.len()
        + o.message.len()
        + o.longrepr.len()
        + o.stdout.len()
        + o.stderr.len()
        + o.log.len()
        + o.file.len()
        + o.worker.len()
        + o.markers.iter().map(|m| m.len() + 24).sum::<usize>()
}

/// A write the writer thread performs.
pub enum WriteCmd {
    /// Create a session, or return it when it exists with the same content.
    Start {
        /// Session id.
        id: Uuid,
        /// Source.
        source: Source,
        /// Environment (boxed: it is most of the command's size).
        environment: Box<Environment>,
        /// Start time.
        started_at: Timestamp,
        /// Whether `started_at` was given by the client (and so must match on a retry).
        started_at_given: bool,
        /// The grant the client authenticated as, if tokens are in use.
        grant: Option<String>,
        /// Where the result goes.
        reply: oneshot::Sender<Result<Session>>,
    },
    /// Append validated outcomes, in seq order.
    Append {
        /// Session id.
        id: Uuid,
        /// Outcomes, already validated and bounded.
        outcomes: Vec<Outcome>,
        /// Their share of the queued-bytes budget, given back when the
        /// command (and with it the outcomes) is dropped.
        budget: QueuedBytes,
        /// Receives the highest contiguous stored seq.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Append one validated outcome as the session's next seq (for clients,
    /// such as the MCP record tools, that do not number their outcomes).
    AppendNext {
        /// Session id.
        id: Uuid,
        /// The outcome; its `seq` is replaced by the next free one.
        outcome: Box<Outcome>,
        /// Receives the seq it was stored as.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Finish a session.
    Finish {
        /// Session id.
        id: Uuid,
        /// Summary.
        summary: Summary,
        /// Outcomes the client sent.
        outcomes_sent: u64,
        /// End time.
        finished_at: Timestamp,
        /// Where the result goes.
        reply: oneshot::Sender<Result<Session>>,
    },
    /// Store one audit row.
    Audit {
        /// The row.
        entry: Box<AuditEntry>,
        /// Receives the row's id.
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// What travels on the writer's queue.
pub enum Queued {
    /// A write.
    Write(WriteCmd),
    /// Stop after committing everything queued before this; told once stopped.
    Shutdown(oneshot::Sender<()>),
}

impl Queued {
    fn weight(&self) -> usize {
        match self {
            Queued::Write(WriteCmd::Append { outcomes, .. }) => outcomes.len().max(1),
            _ => 1,
        }
    }
}

/// A reply to send once the group has committed.
enum Pending {
    Session(oneshot::Sender<Result<Session>>, Box<Result<Session>>),
    Seq(oneshot::Sender<Result<u64>>, Result<u64>),
}

impl Pending {
    fn fail(self, message: &str) {
        match self {
            Pending::Session(tx, _) => {
                let _ = tx.send(Err(Error::Internal(message.to_string())));
            }
            Pending::Seq(tx, _) => {
                let _ = tx.send(Err(Error::Internal(message.to_string())));
            }
        }
    }

    fn send(self) {
        match self {
            Pending::Session(tx, r) => {
                let _ = tx.send(*r);
            }
            Pending::Seq(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// Runs the writer loop until a shutdown command arrives or every sender is gone.
pub fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Queued>,
    events: broadcast::Sender<StoreEvent>,
) {
    let mut group: Vec<Queued> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut weight = first.weight();
        group.push(first);
        while weight < MAX_GROUP_OUTCOMES {
            match rx.try_recv() {
                Ok(cmd) => {
                    weight += cmd.weight();
                    group.push(cmd);
                }
                Err(_) => break,
            }
        }
        let mut shutdown = Vec::new();
        let cmds: Vec<WriteCmd> = group
            .drain(..)
            .filter_map(|c| match c {
                Queued::Shutdown(reply) => {
                    shutdown.push(reply);
                    None
                }
                Queued::Write(cmd) => Some(cmd),
            })
            .collect();
        if !cmds.is_empty() {
            commit_group(&mut conn, cmds, &events);
        }
        if !shutdown.is_empty() {
            // Commands queued after the shutdown are dropped with the
            // receiver; their callers see the store as unavailable.
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                drop(cmd);
            }
            drop(conn);
            for tx in shutdown {
                let _ = tx.send(());
            }
            return;
        }
    }
}

fn commit_group(
    conn: &mut Connection,
    cmds: Vec<WriteCmd>,
    events: &broadcast::Sender<StoreEvent>,
) {
    let mut pending = Vec::with_capacity(cmds.len());
    let mut changed: Vec<StoreEvent> = Vec::new();
    let outcome = (|| -> rusqlite::Result<()> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for cmd in cmds {
            let mut sp = tx.savepoint()?;
            let result = apply(&sp, cmd, &mut changed);
            match result {
                Ok(p) => {
                    sp.commit()?;
                    pending.push(p);
                }
                Err(p) => {
                    sp.rollback()?;
                    drop(sp);
                    pending.push(p);
                }
            }
        }
        tx.commit()
    })();
    match outcome {
        Ok(()) => {
            for p in pending {
                p.send();
            }
            for e in changed {
                let _ = events.send(e);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "write transaction failed; nothing in it was stored");
            for p in pending {
                p.fail("the write transaction failed; nothing was stored, retry");
            }
        }
    }
}

/// Applies one command; a rejected command's reply comes back as `Err`, and
/// its savepoint is rolled back.
fn apply(
    conn: &Connection,
    cmd: WriteCmd,
    changed: &mut Vec<StoreEvent>,
) -> std::result::Result<Pending, Pending> {
    match cmd {
        WriteCmd::Start {
            id,
            source,
            environment,
            started_at,
            started_at_given,
            grant,
            reply,
        } => match start(
            conn,
            id,
            source,
            &environment,
            started_at,
            started_at_given,
            grant.as_deref(),
        ) {
            Ok((session, created)) => {
                if created {
                    changed.push(StoreEvent {
                        session: id,
                        status: session.status,
                        outcomes_stored: 0,
                    });
                }
                Ok(Pending::Session(reply, Box::new(Ok(session))))
            }
            Err(e) => Err(Pending::Session(reply, Box::new(Err(e)))),
        },
        WriteCmd::Append {
            id,
            outcomes,
            budget: _budget,
            reply,
        } => match append_noting(conn, id, &outcomes, changed) {
            Ok(stored) => Ok(Pending::Seq(reply, Ok(stored))),
            Err(e) => Err(Pending::Seq(reply, Err(e))),
        },
        WriteCmd::AppendNext {
            id,
            mut outcome,
            reply,
        } => {
            // Numbered inside the write transaction, so two writers cannot
            // take the same seq.
            let next = match load_session(conn, id) {
                Ok(Some((_, s))) => s.outcomes_stored + 1,
                Ok(None) => 1, // `append` reports the missing session
                Err(e) => return Err(Pending::Seq(reply, Err(e))),
            };
            outcome.seq = next;
            match append_noting(conn, id, std::slice::from_ref(&*outcome), changed) {
                Ok(_) => Ok(Pending::Seq(reply, Ok(next))),
                Err(e) => Err(Pending::Seq(reply, Err(e))),
            }
        }
        WriteCmd::Finish {
            id,
            summary,
            outcomes_sent,
            finished_at,
            reply,
        } => match finish(conn, id, &summary, outcomes_sent, finished_at) {
            Ok((session, did_change)) => {
                if did_change {
                    changed.push(StoreEvent {
                        session: id,
                        status: session.status,
                        outcomes_stored: session.outcomes_stored,
                    });
                }
                Ok(Pending::Session(reply, Box::new(Ok(session))))
            }
            Err(e) => Err(Pending::Session(reply, Box::new(Err(e)))),
        },
        WriteCmd::Audit { entry, reply } => match audit::insert(conn, &entry) {
            Ok(id) => Ok(Pending::Seq(reply, Ok(id))),
            Err(e) => Err(Pending::Seq(reply, Err(e))),
        },
    }
}

fn load_session(conn: &Connection, id: Uuid) -> Result<Option<(i64, Session)>> {
    let sql = format!(
        "SELECT {} FROM sessions s WHERE s.id = ?1",
        rows::SESSION_COLUMNS
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    Ok(stmt
        .query_row([id.to_string()], |r| rows::session_from_row(r, 0))
        .optional()?)
}

fn start(
    conn: &Connection,
    id: Uuid,
    source: Source,
    environment: &Environment,
    started_at: Timestamp,
    started_at_given: bool,
    grant: Option<&str>,
) -> Result<(Session, bool)> {
    if let Some((_, existing)) = load_session(conn, id)? {
        let mut differs = Vec::new();
        if existing.source != source {
            differs.push("source");
        }
        if &existing.environment != environment {
            differs.push("environment");
        }
        if started_at_given && existing.started_at != started_at {
            differs.push("started_at");
        }
        if differs.is_empty() {
            return Ok((existing, false));
        }
        return Err(Error::AlreadyExists {
            field: "session_id".into(),
            message: format!(
                "session {id} already exists with a different {}; choose a new id for a new session",
                differs.join(" and ")
            ),
        });
    }
    let env_json = serde_json::to_string(environment)
        .map_err(|e| Error::Internal(format!("encoding environment: {e}")))?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO sessions (id, source, status, started_at, project, git_commit, environment,
             grant_name)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        id.to_string(),
        source.as_str(),
        SessionStatus::Running.as_str(),
        started_at.as_micros(),
        nullable(&environment.project),
        nullable(&environment.git_commit),
        env_json,
        grant,
    ])?;
    let (_, session) = load_session(conn, id)?
        .ok_or_else(|| Error::Internal("session vanished after insert".into()))?;
    Ok((session, true))
}

/// [`append`], noting a change for subscribers when the session grew;
/// returns the highest contiguous stored seq.
fn append_noting(
    conn: &Connection,
    id: Uuid,
    outcomes: &[Outcome],
    changed: &mut Vec<StoreEvent>,
) -> Result<u64> {
    let (stored, status, grew) = append(conn, id, outcomes)?;
    if grew {
        changed.push(StoreEvent {
            session: id,
            status,
            outcomes_stored: stored,
        });
    }
    Ok(stored)
}

fn append(conn: &Connection, id: Uuid, outcomes: &[Outcome]) -> Result<(u64, SessionStatus, bool)> {
    let (pk, session) = load_session(conn, id)?.ok_or_else(|| {
        Error::not_found(
            "session_id",
            format!("no session {id}; call StartSession before streaming its outcomes"),
        )
    })?;
    let stored = session.outcomes_stored;
    // First pass: skip what is already stored, find gaps, before writing anything.
    let mut next = stored + 1;
    let mut new = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        if o.seq < next {
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
        new.push(o);
        next += 1;
    }
    if new.is_empty() {
        return Ok((stored, session.status, false));
    }
    if session.status.is_closed() {
        return Err(Error::precondition(
            "session_id",
            format!(
                "session {id} is {}; it takes no new outcomes (seq {} and later were not stored)",
                session.status, new[0].seq
            ),
        ));
    }

    let mut insert = conn.prepare_cached(
        "INSERT INTO outcomes (id, session_pk, seq, nodeid, outcome, phase, duration, message,
             longrepr, stdout, stderr, log, file, line, markers, worker, attempt, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?;
    let mut counts = crate::model::OutcomeCounts::default();
    for o in &new {
        let markers = if o.markers.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&o.markers).unwrap_or_default())
        };
        insert.execute(params![
            outcome_rowid(pk, o.seq),
            pk,
            i64::try_from(o.seq).unwrap_or(i64::MAX),
            o.nodeid,
            o.outcome.as_str(),
            o.phase.map(|p| p.as_str()),
            o.duration,
            nullable(&o.message),
            nullable(&o.longrepr),
            nullable(&o.stdout),
            nullable(&o.stderr),
            nullable(&o.log),
            nullable(&o.file),
            o.line,
            markers,
            nullable(&o.worker),
            o.attempt,
            o.started_at.map(Timestamp::as_micros),
        ])?;
        counts.add(o.outcome, 1);
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
    let mut update = conn.prepare_cached(
        "UPDATE sessions SET outcomes_stored = ?2, status = ?3,
             n_passed = n_passed + ?4, n_failed = n_failed + ?5, n_skipped = n_skipped + ?6,
             n_errors = n_errors + ?7, n_xfailed = n_xfailed + ?8, n_xpassed = n_xpassed + ?9
         WHERE pk = ?1",
    )?;
    update.execute(params![
        pk,
        i64::try_from(new_stored).unwrap_or(i64::MAX),
        status.as_str(),
        counts.passed,
        counts.failed,
        counts.skipped,
        counts.errors,
        counts.xfailed,
        counts.xpassed,
    ])?;
    Ok((new_stored, status, true))
}

fn closed_status(summary: Option<&Summary>) -> SessionStatus {
    match summary {
        Some(s) if s.exitstatus == EXIT_INTERRUPTED => SessionStatus::Interrupted,
        _ => SessionStatus::Finished,
    }
}

fn finish(
    conn: &Connection,
    id: Uuid,
    summary: &Summary,
    outcomes_sent: u64,
    finished_at: Timestamp,
) -> Result<(Session, bool)> {
    let (pk, session) = load_session(conn, id)?
        .ok_or_else(|| Error::not_found("session_id", format!("no session {id}")))?;
    if outcomes_sent < session.outcomes_stored {
        return Err(Error::invalid(
            "outcomes_sent",
            format!(
                "{outcomes_sent}, but {} outcomes of session {id} are already stored",
                session.outcomes_stored
            ),
        ));
    }
    if session.status.is_closed() {
        if session.summary.as_ref() == Some(summary)
            && session.outcomes_expected == Some(outcomes_sent)
        {
            return Ok((session, false));
        }
        return Err(Error::precondition(
            "session_id",
            format!(
                "session {id} is already {} with a different summary or outcome count",
                session.status
            ),
        ));
    }
    let status = if session.outcomes_stored < outcomes_sent {
        SessionStatus::Incomplete
    } else {
        closed_status(Some(summary))
    };
    let summary_json = serde_json::to_string(summary)
        .map_err(|e| Error::Internal(format!("encoding summary: {e}")))?;
    let mut stmt = conn.prepare_cached(
        "UPDATE sessions SET status = ?2, finished_at = ?3, summary = ?4, exitstatus = ?5,
             outcomes_expected = ?6
         WHERE pk = ?1",
    )?;
    stmt.execute(params![
        pk,
        status.as_str(),
        finished_at.as_micros(),
        summary_json,
        summary.exitstatus,
        i64::try_from(outcomes_sent).unwrap_or(i64::MAX),
    ])?;
    let (_, session) = load_session(conn, id)?
        .ok_or_else(|| Error::Internal("session vanished after finish".into()))?;
    Ok((session, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TestOutcome;
    use std::time::Duration;

    fn batch(outcomes: usize, longrepr_bytes: usize) -> Vec<Outcome> {
        (1..=outcomes as u64)
            .map(|seq| {
                let mut o = Outcome::new(seq, format!("t.py::test_{seq}"), TestOutcome::Failed);
                o.longrepr = "x".repeat(longrepr_bytes);
                o
            })
            .collect()
    }

    #[tokio::test]
    async fn a_sender_past_the_byte_budget_waits_until_the_writer_frees_it() {
        let budget = ByteBudget::new();
        // Three quarters of the budget, then a second batch that does not fit.
        let first = budget.take(&batch(3, MAX_QUEUED_BYTES / 4)).await;
        let second = batch(2, MAX_QUEUED_BYTES / 4);
        let waiting = tokio::time::timeout(Duration::from_millis(100), budget.take(&second)).await;
        assert!(
            waiting.is_err(),
            "the second batch did not wait for the budget"
        );
        // Small batches still fit in the quarter that is left.
        let small =
            tokio::time::timeout(Duration::from_secs(5), budget.take(&batch(10, 100))).await;
        assert!(small.is_ok(), "a small batch waited although it fits");
        drop(first);
        let freed = tokio::time::timeout(Duration::from_secs(5), budget.take(&second)).await;
        assert!(
            freed.is_ok(),
            "the second batch still waits after the first was freed"
        );
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_whole_budget_takes_all_of_it_instead_of_waiting_forever() {
        let budget = ByteBudget::new();
        let huge = batch(4, MAX_QUEUED_BYTES / 2);
        let taken = tokio::time::timeout(Duration::from_secs(5), budget.take(&huge)).await;
        assert!(taken.is_ok());
    }
}
