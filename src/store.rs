//! The store: the only place with SQL. Every transport reads and writes
//! pytest sessions through this API.
//!
//! Writes go to one writer thread that commits them in groups (see
//! [`writer`]); replies arrive after commit. Reads run on a small pool of
//! their own connections in `spawn_blocking`, so WAL lets them proceed while a
//! write batch is in progress, and no blocking connection is ever held across
//! an `.await`.

mod analysis;
mod audit;
mod rows;
mod schema;
mod writer;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

pub use analysis::{
    ComparedTest, Comparison, DurationChange, FlakyTest, Stability, Verdict, flakiness_verdict,
};
pub use audit::AuditEntry;
pub use schema::{SCHEMA_VERSION, Sync};

use crate::error::{Error, Result};
use crate::model::{
    DEFAULT_MAX_FIELD_BYTES, Environment, Outcome, Session, SessionRef, SessionStatus, Source,
    Summary, TestOutcome, Timestamp,
};
use rows::{OUTCOME_COLUMNS, SESSION_COLUMNS, outcome_rowid_range};
use writer::{ByteBudget, Queued, WriteCmd};

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file; created with its parent directories on first use.
    pub path: PathBuf,
    /// Durability of commits.
    pub sync: Sync,
    /// Bound for each traceback, message and captured output, in bytes.
    pub max_field_bytes: usize,
}

impl StoreConfig {
    /// A config with default settings for `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            sync: Sync::Normal,
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
        }
    }
}

/// The default database path: `pytest-mcp/pytest-mcp.db` in the per-user data directory.
pub fn default_db_path() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("pytest-mcp")
        .join("pytest-mcp.db")
}

/// Something changed in a session; sent after the change has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreEvent {
    /// The session.
    pub session: Uuid,
    /// Its status after the change.
    pub status: SessionStatus,
    /// Its highest contiguous stored seq after the change.
    pub outcomes_stored: u64,
}

/// Filters for [`Store::list_sessions`].
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only these statuses; empty means all.
    pub statuses: Vec<SessionStatus>,
    /// Only this project.
    pub project: Option<String>,
}

/// Filters for [`Store::list_outcomes`].
#[derive(Debug, Clone, Default)]
pub struct OutcomeFilter {
    /// Only these outcomes; empty means all.
    pub outcomes: Vec<TestOutcome>,
    /// Only nodeids containing this text.
    pub nodeid_contains: Option<String>,
}

/// One page of results and the cursor to the next, if there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Opaque cursor for the next page.
    pub next: Option<String>,
}

/// One entry of a test's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The session (counts included).
    pub session: Session,
    /// The test's outcome in it.
    pub outcome: Outcome,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writes: mpsc::Sender<Queued>,
    readers: Mutex<Vec<Connection>>,
    events: broadcast::Sender<StoreEvent>,
    /// Bounds the bytes of outcomes waiting for the writer.
    budget: ByteBudget,
    max_field_bytes: usize,
    sync: Sync,
}

/// Most read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

impl Store {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(config: StoreConfig) -> Result<Store> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Internal(format!("creating {}: {e}", parent.display())))?;
        }
        let mut conn = Connection::open(&config.path)?;
        schema::configure(&conn, config.sync)?;
        schema::migrate(&mut conn)?;

        // Bounded: a client faster than the disk waits here (backpressure)
        // instead of growing memory.
        let (tx, rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(4096);
        let writer_events = events.clone();
        std::thread::Builder::new()
            .name("pytest-mcp-writer".into())
            .spawn(move || writer::run(conn, rx, writer_events))
            .map_err(|e| Error::Internal(format!("starting the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: config.path,
                writes: tx,
                readers: Mutex::new(Vec::new()),
                events,
                budget: ByteBudget::new(),
                max_field_bytes: config.max_field_bytes,
                sync: config.sync,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The bound for large text fields, in bytes.
    pub fn max_field_bytes(&self) -> usize {
        self.inner.max_field_bytes
    }

    /// Subscribes to committed changes.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    /// Queues a write (waiting while the queue is full) and returns where its
    /// result will arrive after commit.
    async fn enqueue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteCmd,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writes
            .send(Queued::Write(make(tx)))
            .await
            .map_err(|_| Error::Unavailable("the store is shut down".into()))?;
        Ok(rx)
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteCmd,
    ) -> Result<T> {
        self.enqueue(make)
            .await?
            .await
            .map_err(|_| Error::Unavailable("the store shut down before committing".into()))?
    }

    /// Creates a session, or returns it when it exists with the same content.
    pub async fn start_session(
        &self,
        id: Uuid,
        source: Source,
        environment: Environment,
        started_at: Option<Timestamp>,
    ) -> Result<Session> {
        self.start_session_as(id, source, environment, started_at, None)
            .await
    }

    /// Like [`Store::start_session`], tagging a new session with the grant
    /// its client authenticated as (a retry keeps the first tag).
    pub async fn start_session_as(
        &self,
        id: Uuid,
        source: Source,
        environment: Environment,
        started_at: Option<Timestamp>,
        grant: Option<String>,
    ) -> Result<Session> {
        self.write(|reply| WriteCmd::Start {
            id,
            source,
            environment: Box::new(environment),
            started_at: started_at.unwrap_or_else(Timestamp::now),
            started_at_given: started_at.is_some(),
            grant,
            reply,
        })
        .await
    }

    /// Stores one audit row (after commit) and returns its id.
    pub async fn record_audit(&self, entry: AuditEntry) -> Result<u64> {
        self.write(|reply| WriteCmd::Audit {
            entry: Box::new(entry),
            reply,
        })
        .await
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn recent_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read(move |c| audit::recent(c, limit)).await
    }

    /// The grant a session was recorded under, if its client authenticated.
    pub async fn session_grant(&self, id: Uuid) -> Result<Option<String>> {
        self.read(move |c| {
            c.prepare_cached("SELECT grant_name FROM sessions WHERE id = ?1")?
                .query_row([id.to_string()], |r| r.get::<_, Option<String>>(0))
                .optional()
                .map(Option::flatten)
                .map_err(Into::into)
        })
        .await
    }

    /// Appends outcomes (validated and bounded here) and returns the highest
    /// contiguous seq stored, after it has committed.
    pub async fn append_outcomes(&self, id: Uuid, mut outcomes: Vec<Outcome>) -> Result<u64> {
        for (i, o) in outcomes.iter_mut().enumerate() {
            o.validate_and_bound(self.inner.max_field_bytes)
                .map_err(|e| e.within(format_args!("outcomes[{i}]")))?;
        }
        self.append_validated(id, outcomes).await
    }

    /// Like [`Store::append_outcomes`] for outcomes the caller has already
    /// passed through [`Outcome::validate_and_bound`].
    pub async fn append_validated(&self, id: Uuid, outcomes: Vec<Outcome>) -> Result<u64> {
        let budget = self.inner.budget.take(&outcomes).await;
        self.write(|reply| WriteCmd::Append {
            id,
            outcomes,
            budget,
            reply,
        })
        .await
    }

    /// Queues validated outcomes without waiting for the commit, so a stream
    /// can read its next batch meanwhile; the receiver gets the highest
    /// contiguous stored seq after commit.
    pub async fn enqueue_append(
        &self,
        id: Uuid,
        outcomes: Vec<Outcome>,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let budget = self.inner.budget.take(&outcomes).await;
        self.enqueue(|reply| WriteCmd::Append {
            id,
            outcomes,
            budget,
            reply,
        })
        .await
    }

    /// Appends one outcome (validated and bounded here) as the session's next
    /// seq and returns that seq, after it has committed.
    pub async fn append_next(&self, id: Uuid, mut outcome: Outcome) -> Result<u64> {
        // The writer assigns the real seq; 1 only passes validation.
        outcome.seq = 1;
        outcome
            .validate_and_bound(self.inner.max_field_bytes)
            .map_err(|e| e.within("outcome"))?;
        self.write(|reply| WriteCmd::AppendNext {
            id,
            outcome: Box::new(outcome),
            reply,
        })
        .await
    }

    /// Finishes a session with pytest's summary and the number of outcomes sent.
    pub async fn finish_session(
        &self,
        id: Uuid,
        summary: Summary,
        outcomes_sent: u64,
        finished_at: Option<Timestamp>,
    ) -> Result<Session> {
        crate::model::validate_duration(summary.duration, "summary.duration")?;
        self.write(|reply| WriteCmd::Finish {
            id,
            summary,
            outcomes_sent,
            finished_at: finished_at.unwrap_or_else(Timestamp::now),
            reply,
        })
        .await
    }

    /// Commits everything queued, then stops the writer; later writes fail
    /// with [`Error::Unavailable`]. Reads keep working.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.writes.send(Queued::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Runs `f` on a read connection off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.readers.lock().ok().and_then(|mut r| r.pop()) {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    schema::configure(&c, inner.sync)?;
                    c.pragma_update(None, "query_only", "ON")?;
                    c
                }
            };
            let result = f(&conn);
            if let Ok(mut idle) = inner.readers.lock()
                && idle.len() < MAX_IDLE_READERS
            {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    /// One session, with its counts.
    pub async fn get_session(&self, session: SessionRef) -> Result<Session> {
        self.read(move |c| resolve(c, session).map(|(_, s)| s))
            .await
    }

    /// Sessions, newest first.
    pub async fn list_sessions(
        &self,
        filter: SessionFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<Session>> {
        self.read(move |c| {
            let after = cursor
                .as_deref()
                .map(|t| decode_cursor2(t, "page_token"))
                .transpose()?;
            let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if !filter.statuses.is_empty() {
                sql.push_str(" AND s.status IN (");
                for (i, st) in filter.statuses.iter().enumerate() {
                    sql.push_str(if i == 0 { "?" } else { ", ?" });
                    args.push(st.as_str().to_string().into());
                }
                sql.push(')');
            }
            if let Some(project) = &filter.project {
                sql.push_str(" AND s.project = ?");
                args.push(project.clone().into());
            }
            if let Some((started, pk)) = after {
                sql.push_str(" AND (s.started_at < ? OR (s.started_at = ? AND s.pk < ?))");
                args.extend([started.into(), started.into(), pk.into()]);
            }
            sql.push_str(" ORDER BY s.started_at DESC, s.pk DESC LIMIT ?");
            args.push(i64::try_from(limit + 1).unwrap_or(i64::MAX).into());
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows: Vec<(i64, Session)> = stmt
                .query_map(params_from_iter(args), |r| rows::session_from_row(r, 0))?
                .collect::<rusqlite::Result<_>>()?;
            let next = if rows.len() > limit {
                rows.truncate(limit);
                rows.last()
                    .map(|(pk, s)| format!("{}.{}", s.started_at.as_micros(), pk))
            } else {
                None
            };
            Ok(Page {
                items: rows.into_iter().map(|(_, s)| s).collect(),
                next,
            })
        })
        .await
    }

    /// A session's outcomes in seq order.
    pub async fn list_outcomes(
        &self,
        session: SessionRef,
        filter: OutcomeFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Session, Page<Outcome>)> {
        self.read(move |c| {
            let (pk, s) = resolve(c, session)?;
            let after_seq = match cursor.as_deref() {
                Some(t) => t
                    .parse::<u64>()
                    .map_err(|_| Error::invalid("page_token", format!("{t:?} is not a token this server issued")))?,
                None => 0,
            };
            let (lo, hi) = outcome_rowid_range(pk);
            let lo = lo + i64::try_from(after_seq).unwrap_or(0) + 1;
            let failures_only = !filter.outcomes.is_empty()
                && filter.outcomes.iter().all(|o| o.is_failure());
            let mut sql = format!("SELECT {OUTCOME_COLUMNS} FROM outcomes o");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if failures_only {
                // Served by the partial failures index instead of scanning the session.
                sql.push_str(" INDEXED BY outcomes_failures WHERE o.session_pk = ? AND o.seq > ? AND o.outcome IN ('failed', 'error')");
                args.push(pk.into());
                args.push(i64::try_from(after_seq).unwrap_or(0).into());
            } else {
                sql.push_str(" WHERE o.id BETWEEN ? AND ?");
                args.push(lo.into());
                args.push(hi.into());
            }
            if !filter.outcomes.is_empty() {
                sql.push_str(" AND o.outcome IN (");
                for (i, o) in filter.outcomes.iter().enumerate() {
                    sql.push_str(if i == 0 { "?" } else { ", ?" });
                    args.push(o.as_str().to_string().into());
                }
                sql.push(')');
            }
            if let Some(text) = filter.nodeid_contains.as_deref().filter(|t| !t.is_empty()) {
                sql.push_str(" AND instr(o.nodeid, ?) > 0");
                args.push(text.to_string().into());
            }
            sql.push_str(if failures_only { " ORDER BY o.seq LIMIT ?" } else { " ORDER BY o.id LIMIT ?" });
            args.push(i64::try_from(limit + 1).unwrap_or(i64::MAX).into());
            let mut stmt = c.prepare_cached(&sql)?;
            let mut items: Vec<Outcome> = stmt
                .query_map(params_from_iter(args), |r| rows::outcome_from_row(r, 0))?
                .collect::<rusqlite::Result<_>>()?;
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|o| o.seq.to_string())
            } else {
                None
            };
            Ok((s, Page { items, next }))
        })
        .await
    }

    /// Outcomes of a session with seq greater than `after_seq`, at most `limit`.
    pub async fn outcomes_after(
        &self,
        session: Uuid,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Outcome>> {
        let (_, page) = self
            .list_outcomes(
                SessionRef::Id(session),
                OutcomeFilter::default(),
                limit,
                Some(after_seq.to_string()),
            )
            .await?;
        Ok(page.items)
    }

    /// One test's outcomes across sessions, newest session first.
    pub async fn test_history(
        &self,
        nodeid: String,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<HistoryEntry>> {
        crate::model::validate_nodeid(&nodeid, "nodeid")?;
        self.read(move |c| {
            let offset = match cursor.as_deref() {
                Some(t) => t.parse::<u64>().map_err(|_| {
                    Error::invalid(
                        "page_token",
                        format!("{t:?} is not a token this server issued"),
                    )
                })?,
                None => 0,
            };
            // Two steps: order the test's rows by session start using only the
            // nodeid index (its rowid gives the session, see the schema), then
            // read the wide rows of the one page. Sorting the wide rows
            // themselves (environment JSON, tracebacks) costs ten times more
            // for a test with a long history.
            let sql = format!(
                "WITH page AS (
                     SELECT x.id AS oid, ps.pk AS spk, ps.started_at AS started
                     FROM outcomes x INDEXED BY outcomes_by_nodeid
                     JOIN sessions ps ON ps.pk = x.id >> 32
                     WHERE x.nodeid = ?1
                     ORDER BY ps.started_at DESC, ps.pk DESC, x.id ASC
                     LIMIT ?2 OFFSET ?3)
                 SELECT {SESSION_COLUMNS}, {OUTCOME_COLUMNS}
                 FROM page p
                 JOIN outcomes o ON o.id = p.oid
                 JOIN sessions s ON s.pk = p.spk
                 ORDER BY p.started DESC, p.spk DESC, p.oid ASC"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let mut items: Vec<HistoryEntry> = stmt
                .query_map(
                    rusqlite::params![
                        nodeid,
                        i64::try_from(limit + 1).unwrap_or(i64::MAX),
                        i64::try_from(offset).unwrap_or(0)
                    ],
                    |r| {
                        let (_, session) = rows::session_from_row(r, 0)?;
                        let outcome = rows::outcome_from_row(r, rows::SESSION_COLUMN_COUNT)?;
                        Ok(HistoryEntry { session, outcome })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            let next = if items.len() > limit {
                items.truncate(limit);
                Some((offset + limit as u64).to_string())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }
}

/// Finds a session by reference, with its pk.
fn resolve(c: &Connection, session: SessionRef) -> Result<(i64, Session)> {
    let found = match session {
        SessionRef::Id(id) => {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1");
            c.prepare_cached(&sql)?
                .query_row([id.to_string()], |r| rows::session_from_row(r, 0))
                .optional()?
        }
        SessionRef::Latest => {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
            );
            c.prepare_cached(&sql)?
                .query_row([], |r| rows::session_from_row(r, 0))
                .optional()?
        }
    };
    found.ok_or_else(|| match session {
        SessionRef::Id(id) => Error::not_found("session_id", format!("no session {id}")),
        SessionRef::Latest => Error::not_found("session_id", "no sessions are recorded yet"),
    })
}

fn decode_cursor2(text: &str, field: &str) -> Result<(i64, i64)> {
    let bad = || Error::invalid(field, format!("{text:?} is not a token this server issued"));
    let (a, b) = text.split_once('.').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}
