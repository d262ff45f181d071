//! The SQLite backend's single writer: one thread that owns the write
//! connection and commits whatever commands are queued in one transaction
//! (group commit).
//!
//! Invariants:
//! - A command's reply is sent only after the transaction holding it has
//!   committed, so an ack never runs ahead of what is on disk.
//! - A rejected command changes nothing and does not affect the others in
//!   its group. Commands check every rule before their first write, so a
//!   group runs without savepoints (they cost a copy of every page touched);
//!   if a storage error strikes in the middle of a command, the group is
//!   rolled back and run again with one savepoint per command.
//! - The rules ([`crate::store::rules`]) are applied to the session as read
//!   inside the write transaction, so two processes writing one file cannot
//!   store a seq twice.
//! - Cached test and marker-set ids are only those of committed rows: what a
//!   rolled-back savepoint added is forgotten, and the whole cache is dropped
//!   when another writer removed tests (the `tests_generation` in `meta`).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::{HashMap, HashSet};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::rows::{self, SESSION_COLUMNS, nullable, outcome_rowid, outcome_rowid_range};
use super::schema::{self, file_column, kind_code, phase_code};
use crate::error::{Error, Result};
use crate::model::{
    CodeUnit, QuarantineEntry, Session, SessionRef, SessionStatus, Summary, Timestamp,
    fold_project, unit_key_text,
};
use crate::store::StoreEvent;
use crate::store::audit::{self, AuditEntry};
use crate::store::backend::Reclaimed;
use crate::store::budget::QueuedBytes;
use crate::store::codes::unit_kind_code;
use crate::store::deps::{self, DepSet, SetDigest};
use crate::store::detail::NewOutcome;
use crate::store::fingerprint::StoredCause;
use crate::store::rules::{self, FinishPlan, NewSession};

/// Upper bound on outcomes committed in one transaction, so one group never
/// holds the write lock (or replies) for long.
const MAX_GROUP_OUTCOMES: usize = 50_000;

/// Most bytes of nodeids the test-id cache holds before it starts over.
const MAX_CACHED_TEST_BYTES: usize = 16 * 1024 * 1024;

/// Most cause keys the writer remembers having named.
const MAX_CACHED_CAUSES: usize = 100_000;

/// A write the writer thread performs.
pub enum WriteCmd {
    /// Create a session, or return it when it exists with the same content.
    Start {
        /// The session.
        new: Box<NewSession>,
        /// Where the result goes.
        reply: oneshot::Sender<Result<Session>>,
    },
    /// Append validated outcomes, in seq order.
    Append {
        /// Session id.
        id: Uuid,
        /// Outcomes, already validated, bounded and encoded.
        outcomes: Vec<NewOutcome>,
        /// The code units the request declared, validated.
        units: Vec<CodeUnit>,
        /// Their share of the queued-bytes budget, given back when the
        /// command (and with it the outcomes) is dropped.
        _budget: QueuedBytes,
        /// Receives the highest contiguous stored seq.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Append one validated outcome as the session's next seq.
    AppendNext {
        /// Session id.
        id: Uuid,
        /// The outcome; its `seq` is replaced by the next free one.
        outcome: Box<NewOutcome>,
        /// Receives the seq it was stored as.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Finish a session.
    Finish {
        /// Session id.
        id: Uuid,
        /// Summary.
        summary: Box<Summary>,
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
    /// Pin or unpin a session.
    Pin {
        /// The session.
        session: SessionRef,
        /// Pin (true) or unpin.
        pinned: bool,
        /// Receives the session.
        reply: oneshot::Sender<Result<Session>>,
    },
    /// Store a quarantine entry, replacing the one for its project and pattern.
    PutQuarantine {
        /// The entry.
        entry: Box<QuarantineEntry>,
        /// Whether one was replaced.
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Remove a quarantine entry.
    DeleteQuarantine {
        /// Its project ("" for every project).
        project: String,
        /// Its pattern.
        pattern: String,
        /// The entry removed.
        reply: oneshot::Sender<Result<Option<QuarantineEntry>>>,
    },
    /// Delete a session for readers, leaving its rows to `Reclaim`.
    Delete {
        /// The session.
        id: Uuid,
        /// Whether it was deleted.
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Remove some rows of deleted sessions.
    Reclaim {
        /// At most this many.
        max_rows: usize,
        /// What was done.
        reply: oneshot::Sender<Result<Reclaimed>>,
    },
    /// Remove tests that no outcome refers to any more.
    RemoveTests {
        /// Tests no outcome referred to when a reader looked.
        candidates: Vec<i64>,
        /// Sessions that could have gained outcomes since: pk above this ...
        newer_than_pk: i64,
        /// ... or one of these (open when the reader looked).
        open_sessions: Vec<i64>,
        /// How many were removed.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Remove dependency sets no outcome refers to and units no set names.
    RemoveDeps {
        /// Sets no outcome referred to when a reader looked.
        sets: Vec<i64>,
        /// Units only those sets (or none) named then.
        units: Vec<i64>,
        /// Sets newer than this may name the units.
        newer_than_set: i64,
        /// Sessions that could have gained outcomes since: pk above this ...
        newer_than_pk: i64,
        /// ... or one of these (open when the reader looked).
        open_sessions: Vec<i64>,
        /// How many rows were removed.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Return free pages to the file system.
    Shrink {
        /// At most this many bytes.
        max_bytes: u64,
        /// Bytes returned.
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

/// What a command answers.
enum Answer {
    Session(Box<Session>),
    Number(u64),
    Flag(bool),
    Reclaimed(Reclaimed),
    Entry(Option<Box<QuarantineEntry>>),
}

fn unexpected<T>() -> Result<T> {
    Err(Error::Internal(
        "the writer answered a command with the wrong kind of result".into(),
    ))
}

impl WriteCmd {
    /// Sends the command's result to whoever queued it.
    fn send(self, result: Result<Answer>) {
        fn session(r: Result<Answer>) -> Result<Session> {
            match r? {
                Answer::Session(s) => Ok(*s),
                _ => unexpected(),
            }
        }
        fn number(r: Result<Answer>) -> Result<u64> {
            match r? {
                Answer::Number(n) => Ok(n),
                _ => unexpected(),
            }
        }
        match self {
            WriteCmd::Start { reply, .. }
            | WriteCmd::Finish { reply, .. }
            | WriteCmd::Pin { reply, .. } => {
                let _ = reply.send(session(result));
            }
            WriteCmd::Append { reply, .. }
            | WriteCmd::AppendNext { reply, .. }
            | WriteCmd::Audit { reply, .. }
            | WriteCmd::RemoveTests { reply, .. }
            | WriteCmd::RemoveDeps { reply, .. }
            | WriteCmd::Shrink { reply, .. } => {
                let _ = reply.send(number(result));
            }
            WriteCmd::DeleteQuarantine { reply, .. } => {
                let _ = reply.send(match result {
                    Ok(Answer::Entry(e)) => Ok(e.map(|e| *e)),
                    Ok(_) => unexpected(),
                    Err(e) => Err(e),
                });
            }
            WriteCmd::Delete { reply, .. } | WriteCmd::PutQuarantine { reply, .. } => {
                let _ = reply.send(match result {
                    Ok(Answer::Flag(f)) => Ok(f),
                    Ok(_) => unexpected(),
                    Err(e) => Err(e),
                });
            }
            WriteCmd::Reclaim { reply, .. } => {
                let _ = reply.send(match result {
                    Ok(Answer::Reclaimed(r)) => Ok(r),
                    Ok(_) => unexpected(),
                    Err(e) => Err(e),
                });
            }
        }
    }
}

/// Whether an error is a rule refusing the command, which by construction
/// happens before the command's first write.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument { .. }
            | Error::NotFound { .. }
            | Error::FailedPrecondition { .. }
            | Error::AlreadyExists { .. }
    )
}

/// A cached test: (subtest label, test id, first session pk).
type CachedTest = (Box<str>, i64, i64);

/// Most dependency units and sets the writer remembers before it starts over.
const MAX_CACHED_DEPS: usize = 2_000_000;

/// A stored unit as the writer needs it: its id and its code.
type CachedUnit = (i64, u64);

/// Ids of tests and marker sets this writer has read or stored.
#[derive(Default)]
struct Interned {
    /// nodeid -> its test and subtests.
    tests: HashMap<Box<str>, Vec<CachedTest>>,
    test_bytes: usize,
    /// Marker list as JSON -> marker set id.
    markers: HashMap<Box<str>, i64>,
    /// What the current savepoint added, to forget if it is rolled back.
    added_tests: Vec<Box<str>>,
    added_markers: Vec<Box<str>>,
    /// (project, cause key) pairs named in `causes`. Causes are never
    /// deleted (they outlive pruning), so a committed entry stays true; a
    /// suite failing the same way run after run names nothing again.
    causes: HashMap<Box<str>, HashSet<Box<str>>>,
    cause_count: usize,
    added_causes: Vec<(Box<str>, Box<str>)>,
    generation: i64,
    /// Per folded project: unit key -> stored unit.
    units: HashMap<Box<str>, HashMap<u64, CachedUnit>>,
    /// Per folded project: set digest -> set id.
    sets: HashMap<Box<str>, HashMap<SetDigest, i64>>,
    dep_entries: usize,
    added_units: Vec<(Box<str>, u64)>,
    added_sets: Vec<(Box<str>, SetDigest)>,
    /// `deps_generation` in `meta` when the dependency caches were filled.
    deps_generation: i64,
}

impl Interned {
    fn clear(&mut self) {
        self.tests.clear();
        self.markers.clear();
        self.test_bytes = 0;
        self.added_tests.clear();
        self.added_markers.clear();
        self.causes.clear();
        self.cause_count = 0;
        self.added_causes.clear();
        self.clear_deps();
    }

    fn clear_deps(&mut self) {
        self.units.clear();
        self.sets.clear();
        self.dep_entries = 0;
        self.added_units.clear();
        self.added_sets.clear();
    }

    fn rollback(&mut self) {
        for (project, key) in self.added_units.drain(..) {
            if let Some(units) = self.units.get_mut(&project) {
                units.remove(&key);
            }
        }
        for (project, digest) in self.added_sets.drain(..) {
            if let Some(sets) = self.sets.get_mut(&project) {
                sets.remove(&digest);
            }
        }
        for nodeid in self.added_tests.drain(..) {
            self.tests.remove(&nodeid);
        }
        for m in self.added_markers.drain(..) {
            self.markers.remove(&m);
        }
        for (project, key) in self.added_causes.drain(..) {
            if let Some(keys) = self.causes.get_mut(&project) {
                keys.remove(&key);
            }
        }
    }

    fn keep(&mut self) {
        self.added_tests.clear();
        self.added_markers.clear();
        self.added_causes.clear();
        self.added_units.clear();
        self.added_sets.clear();
    }

    /// Makes room for one more dependency entry.
    fn note_dep_entry(&mut self) {
        if self.dep_entries >= MAX_CACHED_DEPS {
            self.clear_deps();
        }
        self.dep_entries += 1;
    }

    /// A unit of `project` this writer knows, or reads, or `None`.
    fn unit(&mut self, conn: &Connection, project: &str, key: u64) -> Result<Option<CachedUnit>> {
        if let Some(u) = self.units.get(project).and_then(|u| u.get(&key)) {
            return Ok(Some(*u));
        }
        let found: Option<(i64, i64)> = conn
            .prepare_cached("SELECT id, code FROM dep_units WHERE project = ?1 AND key = ?2")?
            .query_row(params![project, deps::to_sql(key)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(found.map(|(id, code)| {
            let unit = (id, deps::from_sql(code));
            self.remember_unit(project, key, unit);
            unit
        }))
    }

    fn remember_unit(&mut self, project: &str, key: u64, unit: CachedUnit) {
        self.note_dep_entry();
        self.added_units.push((project.into(), key));
        self.units
            .entry(project.into())
            .or_default()
            .insert(key, unit);
    }

    /// Stores a declared unit unless the project has it (a redeclaration
    /// is a no-op: the first declaration stays).
    fn declare_unit(&mut self, conn: &Connection, project: &str, u: &CodeUnit) -> Result<()> {
        if self.unit(conn, project, u.key)?.is_some() {
            return Ok(());
        }
        conn.prepare_cached(
            "INSERT INTO dep_units (project, key, code, kind, path, name, line_start, line_end,
                 checksum)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            project,
            deps::to_sql(u.key),
            deps::to_sql(u.code),
            unit_kind_code(u.kind),
            u.path,
            u.name,
            u.line_start,
            u.line_end,
            u.checksum,
        ])?;
        self.remember_unit(project, u.key, (conn.last_insert_rowid(), u.code));
        Ok(())
    }

    /// The id of a set of `project` this writer knows, or reads, or `None`.
    fn set_id(
        &mut self,
        conn: &Connection,
        project: &str,
        digest: &SetDigest,
    ) -> Result<Option<i64>> {
        if let Some(id) = self.sets.get(project).and_then(|s| s.get(digest)) {
            return Ok(Some(*id));
        }
        let found: Option<i64> = conn
            .prepare_cached("SELECT id FROM dep_sets WHERE project = ?1 AND digest = ?2")?
            .query_row(params![project, &digest[..]], |r| r.get(0))
            .optional()?;
        if let Some(id) = found {
            self.remember_set(project, digest, id);
        }
        Ok(found)
    }

    fn remember_set(&mut self, project: &str, digest: &SetDigest, id: i64) {
        self.note_dep_entry();
        self.added_sets.push((project.into(), *digest));
        self.sets
            .entry(project.into())
            .or_default()
            .insert(*digest, id);
    }

    /// Stores a new set of `project` whose units are all stored (checked
    /// before the command's first write) and returns its id.
    fn store_set(&mut self, conn: &Connection, project: &str, set: &DepSet) -> Result<i64> {
        if let Some(id) = self.set_id(conn, project, &set.digest)? {
            return Ok(id);
        }
        let mut ids = Vec::with_capacity(set.keys.len());
        let mut codes = Vec::with_capacity(set.keys.len());
        for key in &set.keys {
            let (id, code) = self.unit(conn, project, *key)?.ok_or_else(|| {
                Error::Internal(format!(
                    "unit {} vanished while its set was stored",
                    unit_key_text(*key)
                ))
            })?;
            ids.push(id);
            codes.push(code);
        }
        ids.sort_unstable();
        ids.dedup();
        conn.prepare_cached(
            "INSERT INTO dep_sets (project, digest, code, units) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            project,
            &set.digest[..],
            deps::to_sql(deps::code_digest(&mut codes)),
            deps::encode_units(&ids),
        ])?;
        let id = conn.last_insert_rowid();
        self.remember_set(project, &set.digest, id);
        Ok(id)
    }

    /// Names a cause of `project` in `causes` unless this writer did already.
    fn name_cause(&mut self, conn: &Connection, project: &str, cause: &StoredCause) -> Result<()> {
        if self
            .causes
            .get(project)
            .is_some_and(|keys| keys.contains(cause.key.as_str()))
        {
            return Ok(());
        }
        if self.cause_count >= MAX_CACHED_CAUSES {
            self.causes.clear();
            self.cause_count = 0;
        }
        conn.prepare_cached(
            "INSERT INTO causes (project, key, cause) VALUES (?1, ?2, ?3)
             ON CONFLICT (project, key) DO NOTHING",
        )?
        .execute(params![project, cause.key, cause.cause])?;
        let key: Box<str> = cause.key.as_str().into();
        self.added_causes.push((project.into(), key.clone()));
        self.causes.entry(project.into()).or_default().insert(key);
        self.cause_count += 1;
        Ok(())
    }

    /// The id of (nodeid, subtest), stored if new; moves its `first_pk`
    /// back when an older session gains it (a late import).
    fn test_id(
        &mut self,
        conn: &Connection,
        nodeid: &str,
        subtest: &str,
        session_pk: i64,
    ) -> Result<i64> {
        if let Some(entries) = self.tests.get_mut(nodeid)
            && let Some(entry) = entries.iter_mut().find(|e| &*e.0 == subtest)
        {
            if session_pk < entry.2 {
                conn.prepare_cached("UPDATE tests SET first_pk = ?2 WHERE id = ?1")?
                    .execute(params![entry.1, session_pk])?;
                entry.2 = session_pk;
            }
            return Ok(entry.1);
        }
        let found: Option<(i64, i64)> = conn
            .prepare_cached("SELECT id, first_pk FROM tests WHERE nodeid = ?1 AND subtest = ?2")?
            .query_row(params![nodeid, subtest], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (id, first) = match found {
            Some((id, first)) if first <= session_pk => (id, first),
            Some((id, _)) => {
                conn.prepare_cached("UPDATE tests SET first_pk = ?2 WHERE id = ?1")?
                    .execute(params![id, session_pk])?;
                (id, session_pk)
            }
            None => {
                conn.prepare_cached(
                    "INSERT INTO tests (nodeid, subtest, first_pk) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![nodeid, subtest, session_pk])?;
                (conn.last_insert_rowid(), session_pk)
            }
        };
        if self.test_bytes > MAX_CACHED_TEST_BYTES {
            self.clear();
        }
        self.test_bytes += nodeid.len() + subtest.len() + 64;
        let key: Box<str> = nodeid.into();
        self.added_tests.push(key.clone());
        self.tests
            .entry(key)
            .or_default()
            .push((subtest.into(), id, first));
        Ok(id)
    }

    fn marker_set(&mut self, conn: &Connection, markers: &[String]) -> Result<Option<i64>> {
        if markers.is_empty() {
            return Ok(None);
        }
        let json = serde_json::to_string(markers)
            .map_err(|e| Error::Internal(format!("encoding markers: {e}")))?;
        if let Some(id) = self.markers.get(json.as_str()) {
            return Ok(Some(*id));
        }
        let found: Option<i64> = conn
            .prepare_cached("SELECT id FROM marker_sets WHERE markers = ?1")?
            .query_row([&json], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                conn.prepare_cached("INSERT INTO marker_sets (markers) VALUES (?1)")?
                    .execute([&json])?;
                conn.last_insert_rowid()
            }
        };
        if self.markers.len() > 100_000 {
            self.markers.clear();
        }
        let key: Box<str> = json.into();
        self.added_markers.push(key.clone());
        self.markers.insert(key, id);
        Ok(Some(id))
    }
}

/// The writer's state between groups.
struct Writer {
    conn: Connection,
    interned: Interned,
    events: broadcast::Sender<StoreEvent>,
}

/// Runs the writer loop until a shutdown command arrives or every sender is gone.
pub fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Queued>,
    events: broadcast::Sender<StoreEvent>,
) {
    let mut writer = Writer {
        conn,
        interned: Interned::default(),
        events,
    };
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
            writer.commit_group(cmds);
        }
        if !shutdown.is_empty() {
            // Commands queued after the shutdown are dropped with the
            // receiver; their callers see the store as unavailable.
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                drop(cmd);
            }
            drop(writer);
            for tx in shutdown {
                let _ = tx.send(());
            }
            return;
        }
    }
}

impl Writer {
    fn commit_group(&mut self, mut cmds: Vec<WriteCmd>) {
        let mut changed: Vec<StoreEvent> = Vec::new();
        let outcome = match self.run_group(&mut cmds, false, &mut changed) {
            // A storage error in the middle of a command: nothing of the group
            // is stored; run it again with each command in a savepoint, so the
            // failing one cannot take the others with it.
            Err(e) if !is_refusal(&e) => {
                tracing::debug!(error = %e, "a write group failed; retrying it command by command");
                self.interned.clear();
                changed.clear();
                self.run_group(&mut cmds, true, &mut changed)
            }
            other => other,
        };
        match outcome {
            Ok(answers) => {
                for (cmd, answer) in cmds.into_iter().zip(answers) {
                    // A command's own storage error reaches its caller as
                    // what it means for a client, never SQLite's text.
                    cmd.send(answer.map_err(|e| if is_refusal(&e) { e } else { failure(&e) }));
                }
                for e in changed {
                    let _ = self.events.send(e);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write transaction failed; nothing in it was stored");
                // Ids read or stored in it may not exist.
                self.interned.clear();
                for cmd in cmds {
                    cmd.send(Err(failure(&e)));
                }
            }
        }
    }

    /// Runs every command in one transaction and commits it; returns each
    /// command's answer. Without savepoints, a command's storage error fails
    /// the whole group (`Err`); with them, only that command.
    fn run_group(
        &mut self,
        cmds: &mut [WriteCmd],
        savepoints: bool,
        changed: &mut Vec<StoreEvent>,
    ) -> Result<Vec<Result<Answer>>> {
        let Writer { conn, interned, .. } = self;
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let generation = schema::tests_generation(&tx)?;
        if generation != interned.generation {
            interned.clear();
            interned.generation = generation;
        }
        let deps_generation = schema::deps_generation(&tx)?;
        if deps_generation != interned.deps_generation {
            interned.clear_deps();
            interned.deps_generation = deps_generation;
        }
        let mut answers = Vec::with_capacity(cmds.len());
        for cmd in cmds.iter_mut() {
            if savepoints {
                let mut sp = tx.savepoint()?;
                let mut ctx = Ctx {
                    conn: &sp,
                    interned,
                    changed,
                };
                let noted = ctx.changed.len();
                let answer = ctx.apply(cmd);
                if answer.is_ok() {
                    sp.commit()?;
                    interned.keep();
                } else {
                    sp.rollback()?;
                    drop(sp);
                    interned.rollback();
                    changed.truncate(noted);
                }
                answers.push(answer);
            } else {
                let mut ctx = Ctx {
                    conn: &tx,
                    interned,
                    changed,
                };
                let answer = ctx.apply(cmd);
                match answer {
                    Err(e) if !is_refusal(&e) => return Err(e),
                    answer => {
                        interned.keep();
                        answers.push(answer);
                    }
                }
            }
        }
        tx.commit()?;
        Ok(answers)
    }
}

/// Rows per multi-row INSERT.
const ROWS_PER_INSERT: usize = 32;

/// Columns of an outcome row, in [`insert_sql`]'s order.
const COLUMNS: usize = 16;

/// `INSERT INTO outcomes ... VALUES (...), (...)` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO outcomes (id, session_pk, test_id, kind, phase, duration, attempt, \
         line, start_us, markers, message, worker, file, cause, quarantined, deps) VALUES ",
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * COLUMNS + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// One outcome row, ready to bind.
struct Row<'o> {
    id: i64,
    session_pk: i64,
    test_id: i64,
    kind: i64,
    phase: Option<i64>,
    duration: f64,
    attempt: u32,
    line: Option<u32>,
    start_us: Option<i64>,
    markers: Option<i64>,
    message: Option<&'o str>,
    worker: Option<&'o str>,
    file: Option<&'o str>,
    cause: Option<&'o str>,
    quarantined: bool,
    deps: Option<i64>,
}

impl Row<'_> {
    /// Binds the row's values from parameter `offset + 1` on.
    fn bind(&self, stmt: &mut rusqlite::CachedStatement<'_>, offset: usize) -> Result<()> {
        let at = |c: usize| offset + c + 1;
        stmt.raw_bind_parameter(at(0), self.id)?;
        stmt.raw_bind_parameter(at(1), self.session_pk)?;
        stmt.raw_bind_parameter(at(2), self.test_id)?;
        stmt.raw_bind_parameter(at(3), self.kind)?;
        stmt.raw_bind_parameter(at(4), self.phase)?;
        stmt.raw_bind_parameter(at(5), self.duration)?;
        stmt.raw_bind_parameter(at(6), self.attempt)?;
        stmt.raw_bind_parameter(at(7), self.line)?;
        stmt.raw_bind_parameter(at(8), self.start_us)?;
        stmt.raw_bind_parameter(at(9), self.markers)?;
        stmt.raw_bind_parameter(at(10), self.message)?;
        stmt.raw_bind_parameter(at(11), self.worker)?;
        stmt.raw_bind_parameter(at(12), self.file)?;
        stmt.raw_bind_parameter(at(13), self.cause)?;
        stmt.raw_bind_parameter(at(14), self.quarantined)?;
        stmt.raw_bind_parameter(at(15), self.deps)?;
        Ok(())
    }
}

/// What callers are told when a group's transaction failed: a full disk
/// is the one failure a client can act on (free space); anything else is
/// the server's, to retry.
fn failure(e: &Error) -> Error {
    if let Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) = e
        && f.code == rusqlite::ErrorCode::DiskFull
    {
        return Error::ResourceExhausted(
            "the recorder's disk is full; nothing of this write was stored".into(),
        );
    }
    // A file, directory or mount made read-only after the server opened
    // it: retrying does not help, so say what does.
    if let Error::Sqlite(e) = e
        && super::is_read_only(e)
    {
        return Error::precondition(
            "database",
            "the database is read-only (its file, directory or file system refuses writes); \
             nothing of this write was stored",
        );
    }
    Error::Internal("the write transaction failed; nothing was stored, retry".into())
}

/// One command's view of the open transaction.
struct Ctx<'a> {
    conn: &'a Connection,
    interned: &'a mut Interned,
    changed: &'a mut Vec<StoreEvent>,
}

impl Ctx<'_> {
    /// Applies one command. A refusal (a rule) comes before any write.
    fn apply(&mut self, cmd: &WriteCmd) -> Result<Answer> {
        Ok(match cmd {
            WriteCmd::Start { new, .. } => Answer::Session(Box::new(self.start(new)?)),
            WriteCmd::Append {
                id,
                outcomes,
                units,
                ..
            } => Answer::Number(self.append(*id, outcomes, units)?),
            WriteCmd::AppendNext { id, outcome, .. } => {
                Answer::Number(self.append_next(*id, outcome)?)
            }
            WriteCmd::Finish {
                id,
                summary,
                outcomes_sent,
                finished_at,
                ..
            } => Answer::Session(Box::new(self.finish(
                *id,
                summary,
                *outcomes_sent,
                *finished_at,
            )?)),
            WriteCmd::Audit { entry, .. } => Answer::Number(insert_audit(self.conn, entry)?),
            WriteCmd::Pin {
                session, pinned, ..
            } => Answer::Session(Box::new(self.pin(session.clone(), *pinned)?)),
            WriteCmd::Delete { id, .. } => Answer::Flag(self.delete(*id)?),
            WriteCmd::PutQuarantine { entry, .. } => {
                Answer::Flag(put_quarantine(self.conn, entry)?)
            }
            WriteCmd::DeleteQuarantine {
                project, pattern, ..
            } => Answer::Entry(delete_quarantine(self.conn, project, pattern)?.map(Box::new)),
            WriteCmd::Reclaim { max_rows, .. } => Answer::Reclaimed(self.reclaim(*max_rows)?),
            WriteCmd::RemoveTests {
                candidates,
                newer_than_pk,
                open_sessions,
                ..
            } => Answer::Number(self.remove_tests(candidates, *newer_than_pk, open_sessions)?),
            WriteCmd::RemoveDeps {
                sets,
                units,
                newer_than_set,
                newer_than_pk,
                open_sessions,
                ..
            } => Answer::Number(self.remove_deps(
                sets,
                units,
                *newer_than_set,
                *newer_than_pk,
                open_sessions,
            )?),
            WriteCmd::Shrink { max_bytes, .. } => Answer::Number(shrink(self.conn, *max_bytes)?),
        })
    }

    fn start(&mut self, new: &NewSession) -> Result<Session> {
        if let Some((_, existing)) = load_session(self.conn, new.id)? {
            rules::check_restart(&existing, new)?;
            return Ok(existing);
        }
        let env_json = serde_json::to_string(&new.environment)
            .map_err(|e| Error::Internal(format!("encoding environment: {e}")))?;
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id, source, status, started_at, project, git_commit,
                     environment, grant_name, code_state, git_branch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                new.id.to_string(),
                new.source.as_str(),
                SessionStatus::Running.as_str(),
                new.started_at.as_micros(),
                nullable(&new.environment.project),
                nullable(&new.environment.git_commit),
                env_json,
                new.grant,
                new.environment.code_identity(),
                nullable(&new.environment.git_branch),
            ])?;
        let (_, session) = load_session(self.conn, new.id)?
            .ok_or_else(|| Error::Internal("session vanished after insert".into()))?;
        self.changed.push(StoreEvent {
            session: new.id,
            status: session.status,
            outcomes_stored: 0,
        });
        Ok(session)
    }

    fn append_next(&mut self, id: Uuid, outcome: &NewOutcome) -> Result<u64> {
        // Numbered inside the write transaction, so two writers cannot take
        // the same seq.
        let (_, session) =
            load_session(self.conn, id)?.ok_or_else(|| rules::no_session_for_outcomes(id))?;
        let mut numbered = outcome.clone();
        numbered.outcome.seq = rules::next_seq(&session);
        let seq = numbered.outcome.seq;
        self.append(id, std::slice::from_ref(&numbered), &[])?;
        Ok(seq)
    }

    fn append(&mut self, id: Uuid, outcomes: &[NewOutcome], units: &[CodeUnit]) -> Result<u64> {
        let (pk, session) =
            load_session(self.conn, id)?.ok_or_else(|| rules::no_session_for_outcomes(id))?;
        let Some(plan) = rules::plan_append(&session, outcomes)? else {
            return Ok(session.outcomes_stored);
        };
        let new_outcomes = &outcomes[plan.first..plan.first + plan.count];
        let project = fold_project(&session.environment.project);
        let sets = self.check_sets(&project, plan.first, new_outcomes, units)?;
        // Checked: from here on the command writes.
        let sets = self.store_sets(&project, new_outcomes, units, sets)?;
        let started = session.started_at.as_micros();
        let mut insert_detail = self
            .conn
            .prepare_cached("INSERT INTO details (id, data) VALUES (?1, ?2)")?;
        // Rows go in statements of ROWS_PER_INSERT rows: per statement,
        // SQLite's setup and teardown cost about as much as a narrow row.
        let mut chunks = new_outcomes.chunks_exact(ROWS_PER_INSERT);
        let mut many = self.conn.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
        // Consecutive outcomes nearly always share their markers.
        let mut last_markers: Option<(&[String], Option<i64>)> = None;
        let mut set_of = sets.iter().copied();
        for chunk in chunks.by_ref() {
            for (i, new) in chunk.iter().enumerate() {
                let set = set_of.next().flatten();
                let row = self.row(pk, started, new, set, &mut last_markers)?;
                row.bind(&mut many, i * COLUMNS)?;
            }
            many.raw_execute()?;
            for new in chunk {
                if let Some(blob) = &new.detail {
                    insert_detail.execute(params![outcome_rowid(pk, new.outcome.seq), blob])?;
                }
            }
        }
        let mut one = self.conn.prepare_cached(&insert_sql(1))?;
        for new in chunks.remainder() {
            let set = set_of.next().flatten();
            let row = self.row(pk, started, new, set, &mut last_markers)?;
            row.bind(&mut one, 0)?;
            one.raw_execute()?;
            if let Some(blob) = &new.detail {
                insert_detail.execute(params![outcome_rowid(pk, new.outcome.seq), blob])?;
            }
        }
        // Each cause is named once per project, as it is first stored.
        for c in new_outcomes.iter().filter_map(|n| n.cause.as_ref()) {
            self.interned
                .name_cause(self.conn, &session.environment.project, c)?;
        }
        let c = plan.counts;
        self.conn
            .prepare_cached(
                "UPDATE sessions SET outcomes_stored = ?2, status = ?3,
                     n_passed = n_passed + ?4, n_failed = n_failed + ?5,
                     n_skipped = n_skipped + ?6, n_errors = n_errors + ?7,
                     n_xfailed = n_xfailed + ?8, n_xpassed = n_xpassed + ?9
                 WHERE pk = ?1",
            )?
            .execute(params![
                pk,
                i64::try_from(plan.stored).unwrap_or(i64::MAX),
                plan.status.as_str(),
                c.passed,
                c.failed,
                c.skipped,
                c.errors,
                c.xfailed,
                c.xpassed,
            ])?;
        if plan.status.is_closed() {
            // The missing outcomes of an incomplete session arrived: it is closed now.
            schema::index_closed_session(self.conn, pk)?;
        }
        self.changed.push(StoreEvent {
            session: id,
            status: plan.status,
            outcomes_stored: plan.stored,
        });
        Ok(plan.stored)
    }

    /// Before any write: each new outcome's dependency set, when the
    /// project stores it already (`Some`); else every key of a new set must
    /// be declared in `units` or stored, or the whole command is refused.
    fn check_sets(
        &mut self,
        project: &str,
        first: usize,
        new_outcomes: &[NewOutcome],
        units: &[CodeUnit],
    ) -> Result<Vec<Option<i64>>> {
        let mut sets = Vec::with_capacity(new_outcomes.len());
        let mut declared: Option<HashSet<u64>> = None;
        for (i, new) in new_outcomes.iter().enumerate() {
            let Some(set) = &new.deps else {
                sets.push(None);
                continue;
            };
            let known = self.interned.set_id(self.conn, project, &set.digest)?;
            if known.is_none() {
                let declared =
                    declared.get_or_insert_with(|| units.iter().map(|u| u.key).collect());
                for key in &set.keys {
                    if !declared.contains(key)
                        && self.interned.unit(self.conn, project, *key)?.is_none()
                    {
                        return Err(deps::undeclared(first + i, set, *key));
                    }
                }
            }
            sets.push(known);
        }
        Ok(sets)
    }

    /// Stores the declared units and the new sets; returns each new
    /// outcome's set id (`None`: no dependencies recorded).
    fn store_sets(
        &mut self,
        project: &str,
        new_outcomes: &[NewOutcome],
        units: &[CodeUnit],
        mut sets: Vec<Option<i64>>,
    ) -> Result<Vec<Option<i64>>> {
        if sets.iter().all(Option::is_some) && units.is_empty() {
            return Ok(sets);
        }
        for u in units {
            self.interned.declare_unit(self.conn, project, u)?;
        }
        for (slot, new) in sets.iter_mut().zip(new_outcomes) {
            if let (None, Some(set)) = (*slot, &new.deps) {
                *slot = Some(self.interned.store_set(self.conn, project, set)?);
            }
        }
        Ok(sets)
    }

    /// An outcome's row, interning its test and markers.
    fn row<'o>(
        &mut self,
        pk: i64,
        session_started: i64,
        new: &'o NewOutcome,
        deps: Option<i64>,
        last_markers: &mut Option<(&'o [String], Option<i64>)>,
    ) -> Result<Row<'o>> {
        let o = &new.outcome;
        let test_id = self
            .interned
            .test_id(self.conn, &o.nodeid, &o.subtest, pk)?;
        let markers = match *last_markers {
            Some((m, id)) if m == o.markers.as_slice() => id,
            _ => {
                let id = self.interned.marker_set(self.conn, &o.markers)?;
                *last_markers = Some((&o.markers, id));
                id
            }
        };
        Ok(Row {
            id: outcome_rowid(pk, o.seq),
            session_pk: pk,
            test_id,
            kind: kind_code(o.outcome),
            phase: o.phase.map(phase_code),
            duration: o.duration,
            attempt: o.attempt,
            line: o.line,
            start_us: o.started_at.map(|t| t.as_micros() - session_started),
            markers,
            message: nullable(&o.message),
            worker: nullable(&o.worker),
            file: file_column(&o.nodeid, &o.file),
            cause: new.cause.as_ref().map(|c| c.key.as_str()),
            quarantined: o.quarantined,
            deps,
        })
    }

    fn finish(
        &mut self,
        id: Uuid,
        summary: &Summary,
        outcomes_sent: u64,
        finished_at: Timestamp,
    ) -> Result<Session> {
        let (pk, session) = load_session(self.conn, id)?.ok_or_else(|| rules::no_session(id))?;
        let status = match rules::plan_finish(&session, summary, outcomes_sent)? {
            FinishPlan::Repeat => return Ok(session),
            FinishPlan::Close(status) => status,
        };
        let summary_json = serde_json::to_string(summary)
            .map_err(|e| Error::Internal(format!("encoding summary: {e}")))?;
        self.conn
            .prepare_cached(
                "UPDATE sessions SET status = ?2, finished_at = ?3, summary = ?4, exitstatus = ?5,
                     outcomes_expected = ?6
                 WHERE pk = ?1",
            )?
            .execute(params![
                pk,
                status.as_str(),
                finished_at.as_micros(),
                summary_json,
                summary.exitstatus,
                i64::try_from(outcomes_sent).unwrap_or(i64::MAX),
            ])?;
        if status.is_closed() {
            schema::index_closed_session(self.conn, pk)?;
        }
        let (_, session) = load_session(self.conn, id)?
            .ok_or_else(|| Error::Internal("session vanished after finish".into()))?;
        self.changed.push(StoreEvent {
            session: id,
            status: session.status,
            outcomes_stored: session.outcomes_stored,
        });
        Ok(session)
    }

    fn pin(&mut self, session: SessionRef, pinned: bool) -> Result<Session> {
        let (pk, mut s) = super::resolve(self.conn, session)?;
        self.conn
            .prepare_cached("UPDATE sessions SET pinned = ?2 WHERE pk = ?1")?
            .execute(params![pk, i64::from(pinned)])?;
        s.pinned = pinned;
        Ok(s)
    }

    fn delete(&mut self, id: Uuid) -> Result<bool> {
        let Some((pk, session)) = load_session(self.conn, id)? else {
            return Ok(false);
        };
        if rules::prune_refusal(session.status, session.pinned).is_some() {
            return Ok(false);
        }
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO doomed (pk) VALUES (?1)")?
            .execute([pk])?;
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE pk = ?1")?
            .execute([pk])?;
        self.conn
            .prepare_cached("DELETE FROM digests WHERE session_pk = ?1")?
            .execute([pk])?;
        Ok(true)
    }

    fn reclaim(&mut self, max_rows: usize) -> Result<Reclaimed> {
        let budget = max_rows.max(1) as u64;
        let mut removed = 0u64;
        let more = |rows| Ok(Reclaimed { rows, more: true });
        let doomed: Vec<i64> = self
            .conn
            .prepare_cached("SELECT pk FROM doomed ORDER BY pk")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for pk in doomed {
            let (lo, hi) = outcome_rowid_range(pk);
            // Seqs are contiguous, so rows [first, first + n) are at most n rows.
            let first: Option<i64> = self
                .conn
                .prepare_cached("SELECT min(id) FROM outcomes WHERE id BETWEEN ?1 AND ?2")?
                .query_row([lo, hi], |r| r.get(0))?;
            if let Some(first) = first {
                let n = i64::try_from(budget - removed).unwrap_or(i64::MAX);
                let last = first.saturating_add(n - 1).min(hi);
                removed += self
                    .conn
                    .prepare_cached("DELETE FROM outcomes WHERE id BETWEEN ?1 AND ?2")?
                    .execute([first, last])? as u64;
                if last < hi
                    && self
                        .conn
                        .prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM outcomes WHERE id BETWEEN ?1 AND ?2)",
                        )?
                        .query_row([last + 1, hi], |r| r.get::<_, bool>(0))?
                {
                    self.conn
                        .prepare_cached("DELETE FROM details WHERE id BETWEEN ?1 AND ?2")?
                        .execute([lo, last])?;
                    return more(removed);
                }
            }
            // Its rows are gone: then its details, and its index by test,
            // which goes in steps too (a big session has many entries).
            self.conn
                .prepare_cached("DELETE FROM details WHERE id BETWEEN ?1 AND ?2")?
                .execute([lo, hi])?;
            let left = i64::try_from(budget.saturating_sub(removed)).unwrap_or(i64::MAX);
            let cut: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT test_id FROM session_tests WHERE session_pk = ?1
                     ORDER BY test_id LIMIT 1 OFFSET ?2",
                )?
                .query_row(params![pk, left], |r| r.get(0))
                .optional()?;
            if let Some(cut) = cut {
                removed += self
                    .conn
                    .prepare_cached(
                        "DELETE FROM session_tests WHERE session_pk = ?1 AND test_id < ?2",
                    )?
                    .execute([pk, cut])? as u64;
                return more(removed);
            }
            removed += self
                .conn
                .prepare_cached("DELETE FROM session_tests WHERE session_pk = ?1")?
                .execute([pk])? as u64;
            self.conn
                .prepare_cached("DELETE FROM doomed WHERE pk = ?1")?
                .execute([pk])?;
            if removed >= budget {
                return more(removed);
            }
        }
        Ok(Reclaimed {
            rows: removed,
            more: false,
        })
    }

    fn remove_tests(
        &mut self,
        candidates: &[i64],
        newer_than_pk: i64,
        open_sessions: &[i64],
    ) -> Result<u64> {
        // Sessions that may have gained outcomes since the reader looked.
        let mut recheck: Vec<i64> = self
            .conn
            .prepare_cached("SELECT pk FROM sessions WHERE pk > ?1")?
            .query_map([newer_than_pk], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        recheck.extend_from_slice(open_sessions);
        let mut probe = self.conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM outcomes WHERE session_pk = ?1 AND test_id = ?2)",
        )?;
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM tests WHERE id = ?1")?;
        let mut removed = 0u64;
        'next: for &test in candidates {
            for &pk in &recheck {
                if probe.query_row([pk, test], |r| r.get::<_, bool>(0))? {
                    continue 'next;
                }
            }
            removed += delete.execute([test])? as u64;
        }
        if removed > 0 {
            self.conn.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'tests_generation'",
                [],
            )?;
            // This writer's own cache may name them; the generation check at
            // the next group clears other writers'.
            self.interned.clear();
            self.interned.generation += 1;
        }
        Ok(removed)
    }
}

impl Ctx<'_> {
    /// Removes the sets and units a reader found unreferenced, except those
    /// that sessions which could have gained outcomes since (and sets
    /// stored since) refer to.
    fn remove_deps(
        &mut self,
        sets: &[i64],
        units: &[i64],
        newer_than_set: i64,
        newer_than_pk: i64,
        open_sessions: &[i64],
    ) -> Result<u64> {
        let mut recheck: Vec<i64> = self
            .conn
            .prepare_cached("SELECT pk FROM sessions WHERE pk > ?1")?
            .query_map([newer_than_pk], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        recheck.extend_from_slice(open_sessions);
        let mut kept_sets: HashSet<i64> = HashSet::new();
        {
            let mut used = self.conn.prepare_cached(
                "SELECT DISTINCT deps FROM outcomes
                 WHERE id BETWEEN ?1 AND ?2 AND deps IS NOT NULL",
            )?;
            for pk in recheck {
                let (lo, hi) = outcome_rowid_range(pk);
                let mut rows = used.query([lo, hi])?;
                while let Some(r) = rows.next()? {
                    kept_sets.insert(r.get(0)?);
                }
            }
        }
        // Units of sets kept after all, or stored since, stay.
        let mut kept_units: HashSet<i64> = HashSet::new();
        {
            let mut newer = self
                .conn
                .prepare_cached("SELECT id, units FROM dep_sets WHERE id > ?1")?;
            let mut rows = newer.query([newer_than_set])?;
            while let Some(r) = rows.next()? {
                kept_units.extend(deps::decode_units(&r.get::<_, Vec<u8>>(1)?)?);
            }
            let mut one = self
                .conn
                .prepare_cached("SELECT units FROM dep_sets WHERE id = ?1")?;
            for id in sets.iter().filter(|s| kept_sets.contains(s)) {
                if let Some(blob) = one.query_row([id], |r| r.get::<_, Vec<u8>>(0)).optional()? {
                    kept_units.extend(deps::decode_units(&blob)?);
                }
            }
        }
        let mut removed = 0u64;
        let mut delete_set = self
            .conn
            .prepare_cached("DELETE FROM dep_sets WHERE id = ?1")?;
        for id in sets.iter().filter(|s| !kept_sets.contains(s)) {
            removed += delete_set.execute([id])? as u64;
        }
        let mut delete_unit = self
            .conn
            .prepare_cached("DELETE FROM dep_units WHERE id = ?1")?;
        for id in units.iter().filter(|u| !kept_units.contains(u)) {
            removed += delete_unit.execute([id])? as u64;
        }
        if removed > 0 {
            self.conn.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'deps_generation'",
                [],
            )?;
            // This writer's own cache may name them; the generation check at
            // the next group clears other writers'.
            self.interned.clear_deps();
            self.interned.deps_generation += 1;
        }
        Ok(removed)
    }
}

/// Returns up to `max_bytes` of free pages to the file system (nothing when
/// the file has no incremental vacuum); returns the bytes returned.
fn shrink(conn: &Connection, max_bytes: u64) -> Result<u64> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let before: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if before == 0 {
        return Ok(0);
    }
    let max_pages = (max_bytes / u64::try_from(page_size.max(512)).unwrap_or(4096)).max(1);
    // incremental_vacuum returns a row per page; stepping through them runs it.
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({max_pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    let after: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(u64::try_from((before - after) * page_size).unwrap_or(0))
}

/// Records a session's causes, replacing what it recorded before.
/// Stores a quarantine entry; returns whether it replaced one.
fn put_quarantine(conn: &Connection, e: &QuarantineEntry) -> Result<bool> {
    let existed = conn
        .prepare_cached("SELECT 1 FROM quarantine WHERE project = ?1 AND pattern = ?2")?
        .exists(params![e.project, e.pattern])?;
    conn.prepare_cached(
        "INSERT INTO quarantine (project, pattern, reason, added_by, added_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (project, pattern) DO UPDATE SET reason = excluded.reason,
             added_by = excluded.added_by, added_at = excluded.added_at,
             expires_at = excluded.expires_at",
    )?
    .execute(params![
        e.project,
        e.pattern,
        e.reason,
        e.added_by,
        e.added_at.as_micros(),
        e.expires_at.as_micros()
    ])?;
    Ok(existed)
}

/// Removes a quarantine entry and returns it.
fn delete_quarantine(
    conn: &Connection,
    project: &str,
    pattern: &str,
) -> Result<Option<QuarantineEntry>> {
    let sql = format!(
        "DELETE FROM quarantine WHERE project = ?1 AND pattern = ?2 RETURNING {}",
        rows::QUARANTINE_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![project, pattern], rows::quarantine_from_row)
        .optional()?)
}

fn insert_audit(conn: &Connection, entry: &AuditEntry) -> Result<u64> {
    conn.prepare_cached(
        "INSERT INTO audit (at, grant_name, transport, tool, decision, result, reason, duration_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        entry.at.as_micros(),
        entry.grant,
        entry.transport,
        audit::bounded(&entry.tool),
        entry.decision,
        entry.result,
        entry.reason.as_deref().map(audit::bounded),
        i64::try_from(entry.duration_us).unwrap_or(i64::MAX),
    ])?;
    Ok(u64::try_from(conn.last_insert_rowid()).unwrap_or(0))
}

/// The session with its pk, as the open transaction sees it.
pub fn load_session(conn: &Connection, id: Uuid) -> Result<Option<(i64, Session)>> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id.to_string()], |r| rows::session_from_row(r, 0))
        .optional()?)
}
