//! The SQLite backend: one database file in WAL mode.
//!
//! Guarantees:
//! - Writes go to one writer thread that commits them in groups
//!   ([`writer`]); a write's future resolves after its group committed.
//! - Reads run on a small pool of their own connections in `spawn_blocking`,
//!   at most 16 at once;
//!   WAL lets them proceed while a write group is in progress, each read
//!   sees one committed snapshot, and no blocking connection is ever held
//!   across an `.await`.
//! - Several processes may open one file: writers wait for each other (busy
//!   timeout), and every rule is checked inside the write transaction.

mod reads;
mod rows;
mod schema;
mod writer;

use crate::store::affected::DepsSnapshot;
use crate::store::backend::KnownCause;
use crate::store::fingerprint::KeyedFailure;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

pub use schema::{SCHEMA_VERSION, Sync};

use super::backend::{
    Backend, FlakyInput, Fut, ProjectActivity, Reclaimed, SessionFinals, SessionKey, SessionMeta,
    StorageStats, TestKey,
};
use super::{
    AuditEntry, HistoryEntry, OutcomeFilter, Page, Run, SessionFilter, StoreEvent,
    budget::QueuedBytes, detail::NewOutcome, rules::NewSession,
};
use crate::error::{Error, Result};
use crate::model::{
    CodeUnit, Outcome, Project, QuarantineEntry, Session, SessionRef, Source, Summary, Timestamp,
};
use writer::{Queued, WriteCmd};

pub(crate) use reads::resolve;

/// Most read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// Most reads running at once. A read is a blocking thread and a connection
/// of its own; past this, readers wait (asynchronously) for a turn, so a
/// flood of readers (2,000 page streams, say) cannot pile up threads and
/// database handles.
const MAX_CONCURRENT_READS: usize = 16;

/// The SQLite backend; cheap to clone.
#[derive(Clone)]
pub struct SqliteBackend {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writes: mpsc::Sender<Queued>,
    readers: Mutex<Vec<Connection>>,
    read_turns: tokio::sync::Semaphore,
    sync: Sync,
    /// The file refused writes when it was opened.
    read_only: bool,
}

/// Whether the database refuses writes. SQLite opens a file it cannot write
/// read-only without a word (root included, for an immutable file or a
/// read-only mount), and only the first write would say so; a write
/// transaction begun and rolled back asks now. Another writer holding the
/// lock (busy) is not a refusal.
fn probe_read_only(conn: &Connection) -> Result<bool> {
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Ok(true);
    }
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Ok(()) => Ok(false),
        Err(e) if is_read_only(&e) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a SQLite error says the database cannot be written.
pub(crate) fn is_read_only(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ReadOnly)
}

impl SqliteBackend {
    /// Opens (creating if needed) the file, migrates it, and starts the writer thread.
    pub fn open(path: &Path, sync: Sync, events: broadcast::Sender<StoreEvent>) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Internal(format!("creating {}: {e}", parent.display())))?;
        }
        let mut conn = Connection::open(path)?;
        schema::configure(&conn, sync)?;
        schema::migrate(&mut conn)?;
        let read_only = probe_read_only(&conn)?;

        // Bounded: a client faster than the disk waits here (backpressure)
        // instead of growing memory.
        let (tx, rx) = mpsc::channel(64);
        std::thread::Builder::new()
            .name("pytest-mcp-writer".into())
            .spawn(move || writer::run(conn, rx, events))
            .map_err(|e| Error::Internal(format!("starting the writer thread: {e}")))?;
        Ok(SqliteBackend {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                writes: tx,
                readers: Mutex::new(Vec::new()),
                read_turns: tokio::sync::Semaphore::new(MAX_CONCURRENT_READS),
                sync,
                read_only,
            }),
        })
    }

    /// Queues a write and returns where its result arrives after commit.
    async fn enqueue<T>(
        writes: &mpsc::Sender<Queued>,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteCmd,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (tx, rx) = oneshot::channel();
        writes
            .send(Queued::Write(make(tx)))
            .await
            .map_err(|_| Error::Unavailable("the store is shut down".into()))?;
        Ok(rx)
    }

    async fn committed<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.await
            .map_err(|_| Error::Unavailable("the store shut down before committing".into()))?
    }

    fn write<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteCmd + Send + 'static,
    ) -> Fut<T> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let rx = Self::enqueue(&shared.writes, make).await?;
            Self::committed(rx).await
        })
    }

    /// Runs `f` on a read connection off the async runtime.
    fn read<T, F>(&self, f: F) -> Fut<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        Box::pin(async move {
            let _turn = shared
                .read_turns
                .acquire()
                .await
                .map_err(|_| Error::Unavailable("the store is shut down".into()))?;
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let conn = match shared.readers.lock().ok().and_then(|mut r| r.pop()) {
                    Some(c) => c,
                    None => {
                        let c = Connection::open_with_flags(
                            &shared.path,
                            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                        )?;
                        schema::configure_reader(&c, shared.sync)?;
                        c
                    }
                };
                let result = f(&conn);
                if let Ok(mut idle) = shared.readers.lock()
                    && idle.len() < MAX_IDLE_READERS
                {
                    idle.push(conn);
                }
                result
            })
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
        })
    }

    /// Removes tests no outcome refers to: a reader finds them on a snapshot
    /// without holding up writers, and the writer removes those that are
    /// still unreferenced, rechecking only sessions that could have gained
    /// outcomes since the snapshot.
    async fn remove_unreferenced_tests(&self) -> Result<u64> {
        let scan = self.read(reads::unreferenced_tests).await?;
        let mut removed = 0;
        for chunk in scan.candidates.chunks(1000) {
            let candidates = chunk.to_vec();
            let open = scan.open_sessions.clone();
            let newer = scan.max_session_pk;
            removed += self
                .write(move |reply| WriteCmd::RemoveTests {
                    candidates,
                    newer_than_pk: newer,
                    open_sessions: open,
                    reply,
                })
                .await?;
        }
        Ok(removed)
    }
}

impl Backend for SqliteBackend {
    fn read_only(&self) -> bool {
        self.shared.read_only
    }

    fn start_session(&self, new: NewSession) -> Fut<Session> {
        self.write(move |reply| WriteCmd::Start {
            new: Box::new(new),
            reply,
        })
    }

    fn enqueue_append(
        &self,
        id: Uuid,
        outcomes: Vec<NewOutcome>,
        units: Vec<CodeUnit>,
        budget: QueuedBytes,
    ) -> Fut<Fut<u64>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let rx = Self::enqueue(&shared.writes, move |reply| WriteCmd::Append {
                id,
                outcomes,
                units,
                _budget: budget,
                reply,
            })
            .await?;
            let done: Fut<u64> = Box::pin(Self::committed(rx));
            Ok(done)
        })
    }

    fn append_next(&self, id: Uuid, outcome: NewOutcome) -> Fut<u64> {
        self.write(move |reply| WriteCmd::AppendNext {
            id,
            outcome: Box::new(outcome),
            reply,
        })
    }

    fn finish_session(
        &self,
        id: Uuid,
        summary: Summary,
        outcomes_sent: u64,
        finished_at: Timestamp,
    ) -> Fut<Session> {
        self.write(move |reply| WriteCmd::Finish {
            id,
            summary: Box::new(summary),
            outcomes_sent,
            finished_at,
            reply,
        })
    }

    fn record_audit(&self, entry: AuditEntry) -> Fut<u64> {
        self.write(move |reply| WriteCmd::Audit {
            entry: Box::new(entry),
            reply,
        })
    }

    fn set_pinned(&self, session: SessionRef, pinned: bool) -> Fut<Session> {
        self.write(move |reply| WriteCmd::Pin {
            session,
            pinned,
            reply,
        })
    }

    fn put_quarantine(&self, entry: QuarantineEntry) -> Fut<bool> {
        self.write(move |reply| WriteCmd::PutQuarantine {
            entry: Box::new(entry),
            reply,
        })
    }

    fn delete_quarantine(&self, project: String, pattern: String) -> Fut<Option<QuarantineEntry>> {
        self.write(move |reply| WriteCmd::DeleteQuarantine {
            project,
            pattern,
            reply,
        })
    }

    fn delete_session(&self, id: Uuid) -> Fut<bool> {
        self.write(move |reply| WriteCmd::Delete { id, reply })
    }

    fn reclaim(&self, max_rows: usize) -> Fut<Reclaimed> {
        self.write(move |reply| WriteCmd::Reclaim { max_rows, reply })
    }

    fn remove_unused_tests(&self) -> Fut<u64> {
        let this = self.clone();
        Box::pin(async move { this.remove_unreferenced_tests().await })
    }

    fn remove_unused_deps(&self) -> Fut<u64> {
        let this = self.clone();
        Box::pin(async move {
            let scan = this.read(reads::unreferenced_deps).await?;
            if scan.sets.is_empty() && scan.units.is_empty() {
                return Ok(0);
            }
            this.write(move |reply| WriteCmd::RemoveDeps {
                sets: scan.sets,
                units: scan.units,
                newer_than_set: scan.max_set_id,
                newer_than_pk: scan.max_session_pk,
                open_sessions: scan.open_sessions,
                reply,
            })
            .await
        })
    }

    fn shrink(&self, max_bytes: u64) -> Fut<u64> {
        self.write(move |reply| WriteCmd::Shrink { max_bytes, reply })
    }

    fn shutdown(&self) -> Fut<()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if shared.writes.send(Queued::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
            Ok(())
        })
    }

    fn get_session(&self, session: SessionRef) -> Fut<Session> {
        self.read(move |c| resolve(c, session).map(|(_, s)| s))
    }

    fn session_grant(&self, id: Uuid) -> Fut<Option<String>> {
        self.read(move |c| reads::session_grant(c, id))
    }

    fn list_sessions(
        &self,
        filter: SessionFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<Page<Session>> {
        self.read(move |c| reads::list_sessions(c, &filter, limit, cursor.as_deref()))
    }

    fn list_outcomes(
        &self,
        session: SessionRef,
        filter: OutcomeFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<(Session, Page<Outcome>)> {
        self.read(move |c| reads::list_outcomes(c, session, &filter, limit, cursor.as_deref()))
    }

    fn test_history(
        &self,
        nodeid: String,
        project: Project,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<Page<HistoryEntry>> {
        self.read(move |c| reads::test_history(c, &nodeid, &project, limit, cursor.as_deref()))
    }

    fn test_runs(&self, nodeid: String, project: Project, window: usize) -> Fut<Vec<Run>> {
        self.read(move |c| reads::test_runs(c, &nodeid, &project, window))
    }

    fn runs_of(
        &self,
        nodeids: Vec<String>,
        project: Project,
        sessions: usize,
    ) -> Fut<HashMap<String, Vec<Run>>> {
        self.read(move |c| reads::runs_of(c, &nodeids, &project, sessions))
    }

    fn flaky_input(&self, window: usize, project: Project) -> Fut<FlakyInput> {
        self.read(move |c| reads::flaky_input(c, window, &project))
    }

    fn projects(&self) -> Fut<Vec<ProjectActivity>> {
        self.read(reads::projects)
    }

    fn deps_snapshot(&self, project: Project) -> Fut<DepsSnapshot> {
        self.read(move |c| reads::deps_snapshot(c, &project))
    }

    fn session_finals(&self, session: SessionRef) -> Fut<SessionFinals> {
        self.read(move |c| reads::session_finals(c, session))
    }

    fn test_names(&self, tests: Vec<TestKey>) -> Fut<HashMap<TestKey, (String, String)>> {
        self.read(move |c| reads::test_names(c, &tests))
    }

    fn failure_messages(
        &self,
        of: Vec<(SessionKey, TestKey)>,
    ) -> Fut<HashMap<(SessionKey, TestKey), String>> {
        self.read(move |c| reads::failure_messages(c, &of))
    }

    fn failure_keys(&self, session: SessionRef) -> Fut<(Session, Vec<KeyedFailure>)> {
        self.read(move |c| reads::failure_keys(c, session))
    }

    fn outcomes_at(&self, session: Uuid, seqs: Vec<u64>) -> Fut<Vec<Outcome>> {
        self.read(move |c| reads::outcomes_at(c, session, &seqs))
    }

    fn slowest(&self, session: SessionRef, limit: usize) -> Fut<(Session, Vec<Outcome>)> {
        self.read(move |c| reads::slowest(c, session, limit))
    }

    fn latest_running(&self, source: Source, grant: Option<String>) -> Fut<Option<Session>> {
        self.read(move |c| reads::latest_running(c, source, grant.as_deref()))
    }

    fn previous_session(&self, head: Session, same_branch: bool) -> Fut<Option<Session>> {
        self.read(move |c| reads::previous_session(c, &head, same_branch))
    }

    fn recent_audit(&self, limit: usize) -> Fut<Vec<AuditEntry>> {
        self.read(move |c| reads::recent_audit(c, limit))
    }

    fn known_causes(
        &self,
        project: String,
        keys: Vec<String>,
        session: Uuid,
    ) -> Fut<HashMap<String, KnownCause>> {
        self.read(move |c| reads::known_causes(c, &project, &keys, session))
    }

    fn quarantine_entries(&self, project: Option<String>) -> Fut<Vec<QuarantineEntry>> {
        self.read(move |c| reads::quarantine_entries(c, project.as_deref()))
    }

    fn session_metas(&self) -> Fut<Vec<SessionMeta>> {
        self.read(reads::session_metas)
    }

    fn storage_stats(&self) -> Fut<StorageStats> {
        self.read(reads::storage_stats)
    }

    fn describe(&self) -> String {
        self.shared.path.display().to_string()
    }
}
