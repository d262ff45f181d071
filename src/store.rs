//! The store: every transport reads and writes pytest sessions through this
//! API, and nothing else touches a database.
//!
//! The store validates and bounds what arrives, applies the captured-output
//! rule, bounds the bytes waiting to be committed, and hands the rest to a
//! storage backend ([`backend::Backend`]). The rules that are not SQL live
//! here once, above the backend: seq / ack / gap, status transitions and
//! counts in [`rules`], verdicts and comparisons in [`analysis`], pruning in
//! [`retention`]. The backend is SQLite ([`sqlite`], the default: one file)
//! or PostgreSQL ([`postgres`]: any number of replicas on one database),
//! chosen by the form of the [`Location`].
//!
//! Every write resolves only after it has committed; [`StoreEvent`]s are sent
//! after commit too.

pub mod affected;
pub(crate) mod analysis;
mod audit;
pub mod backend;
mod blob;
mod budget;
pub mod changes;
pub mod codes;
pub mod counters;
pub mod deps;
pub mod detail;
pub mod digest;
pub mod fingerprint;
pub mod location;
pub mod postgres;
pub mod quarantine;
pub mod retention;
pub mod rules;
pub mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

pub use analysis::{
    Causes, Change, ChangedCauses, CodeRule, ComparedTest, Comparison, Described, DurationChange,
    Evidence, Final, FlakyTest, Regression, RegressionRule, Regressions, Run, RunSession,
    Stability, Verdict, flakiness_verdict, regressions_of, stability_of,
};
pub use audit::AuditEntry;
pub use backend::{Backend, ProjectActivity, SessionMeta, StorageStats};
pub use location::{Location, PgUrl};
pub use sqlite::{SCHEMA_VERSION, Sync};

use crate::error::{Error, Result};
use crate::model::{
    CodeUnit, DEFAULT_MAX_FIELD_BYTES, Environment, Outcome, Project, Session, SessionRef,
    SessionStatus, Source, Summary, TestOutcome, Timestamp,
};
use budget::ByteBudget;
use rules::NewSession;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database: a SQLite file (created with its parent directories on
    /// first use) or a PostgreSQL URL.
    pub location: Location,
    /// Durability of SQLite's commits (PostgreSQL's are the server's).
    pub sync: Sync,
    /// Bound for each traceback, message and captured output, in bytes.
    pub max_field_bytes: usize,
    /// Keep the captured output of passing outcomes too (pytest shows it
    /// only for tests that did not pass, and so by default it is dropped).
    pub keep_passing_output: bool,
}

impl StoreConfig {
    /// A config with default settings for `location` (a path is SQLite).
    pub fn new(location: impl Into<Location>) -> Self {
        Self {
            location: location.into(),
            sync: Sync::Normal,
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            keep_passing_output: false,
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
    /// Only this project (each of its spellings); every project when `None`.
    pub project: Option<Project>,
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

/// Fills one page of a read, row by row, up to its row limit and
/// [`MAX_PAGE_BYTES`](crate::model::MAX_PAGE_BYTES): rows of 64 KiB
/// tracebacks would make a page of 10,000 rows hundreds of megabytes, so
/// both backends stop reading at the byte bound and hand out a next-page
/// token. A page holds at least one row, so paging always progresses.
pub(crate) struct PageFill<T> {
    items: Vec<T>,
    bytes: usize,
    limit: usize,
    more: bool,
}

impl<T> PageFill<T> {
    /// An empty page of at most `limit` rows.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
            limit: limit.max(1),
            more: false,
        }
    }

    /// Takes the next row of `size` bytes, or says the page is full (the
    /// row is left for the next page).
    pub(crate) fn offer(&mut self, item: T, size: usize) -> bool {
        let over_bytes = !self.items.is_empty()
            && self.bytes.saturating_add(size) > crate::model::MAX_PAGE_BYTES;
        if self.items.len() >= self.limit || over_bytes {
            self.more = true;
            return false;
        }
        self.bytes += size;
        self.items.push(item);
        true
    }

    /// The rows taken, and whether rows were left over.
    pub(crate) fn finish(self) -> (Vec<T>, bool) {
        (self.items, self.more)
    }

    /// The page: its rows turned into items by `item`, and when rows were
    /// left over, a next-page token made by `cursor` from the last row.
    pub(crate) fn into_page<U>(
        self,
        cursor: impl FnOnce(&T) -> String,
        item: impl FnMut(T) -> U,
    ) -> Page<U> {
        let next = self.items.last().filter(|_| self.more).map(cursor);
        Page {
            items: self.items.into_iter().map(item).collect(),
            next,
        }
    }
}

/// A project and how active it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectSummary {
    /// The project, with every spelling of its name.
    pub project: Project,
    /// Sessions recorded of it.
    pub sessions: u64,
    /// The start of its newest session.
    pub last_started: Timestamp,
}

impl ProjectSummary {
    /// Groups spellings that match case-insensitively; the newest
    /// session's spelling names the group. The most recently active first.
    pub fn group(activity: Vec<ProjectActivity>) -> Vec<ProjectSummary> {
        let mut groups: Vec<ProjectSummary> = Vec::new();
        // Each lower-cased name's group, so grouping is linear in the names.
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut sorted = activity;
        sorted.sort_by(|a, b| {
            b.last_started
                .cmp(&a.last_started)
                .then(a.name.cmp(&b.name))
        });
        for a in sorted {
            match at.entry(a.name.to_lowercase()) {
                std::collections::hash_map::Entry::Occupied(i) => {
                    let g = &mut groups[*i.get()];
                    g.project.spellings.push(a.name);
                    g.sessions += a.sessions;
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(groups.len());
                    groups.push(ProjectSummary {
                        project: Project::named(a.name),
                        sessions: a.sessions,
                        last_started: a.last_started,
                    });
                }
            }
        }
        groups
    }
}

/// One entry of a test's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The session (counts included).
    pub session: Session,
    /// The test's outcome in it (a subtest's carries its label).
    pub outcome: Outcome,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Box<dyn Backend>,
    location: Location,
    events: broadcast::Sender<StoreEvent>,
    /// Bounds the bytes of outcomes waiting for the writer.
    budget: ByteBudget,
    max_field_bytes: usize,
    keep_passing_output: bool,
    /// Each project's flaky tests as last judged, with what its newest
    /// session was then ([`analysis::FlakyCache`]).
    flaky: analysis::FlakyCache,
    /// Each project's dependency snapshot as last read ([`deps::SnapshotCache`]).
    snapshots: deps::SnapshotCache,
}

impl Store {
    /// Opens (creating if needed) the database, bringing its schema up to
    /// date. A PostgreSQL database that cannot be reached is
    /// [`Error::Unavailable`], naming the URL without its password.
    pub async fn open(config: StoreConfig) -> Result<Store> {
        let (events, _) = broadcast::channel(4096);
        let backend: Box<dyn Backend> = match &config.location {
            Location::Sqlite(path) => {
                let (path, sync, events) = (path.clone(), config.sync, events.clone());
                Box::new(
                    tokio::task::spawn_blocking(move || {
                        sqlite::SqliteBackend::open(&path, sync, events)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("opening the database: {e}")))??,
                )
            }
            Location::Postgres(url) => {
                Box::new(postgres::PgBackend::open((**url).clone(), events.clone()).await?)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                location: config.location,
                events,
                budget: ByteBudget::new(),
                max_field_bytes: config.max_field_bytes,
                keep_passing_output: config.keep_passing_output,
                flaky: analysis::FlakyCache::default(),
                snapshots: deps::SnapshotCache::default(),
            }),
        })
    }

    fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    /// Whether the database refused writes when it was opened (a read-only
    /// file, directory or mount): a writer (`serve`, `import`) refuses to
    /// start on it rather than fail every write.
    pub fn read_only(&self) -> bool {
        self.backend().read_only()
    }

    /// Where the database is.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// Whether the database answers; health turns NOT_SERVING when not.
    pub async fn ping(&self) -> Result<()> {
        self.backend().ping().await
    }

    /// Runs `update` on call counters shared through the database (see
    /// [`Backend::count_calls`]); `None` when each process counts its own.
    pub fn count_calls(
        &self,
        keys: Vec<counters::Key>,
        update: counters::Update,
    ) -> Option<backend::Fut<()>> {
        self.backend().count_calls(keys, update)
    }

    /// The bound for large text fields, in bytes.
    pub fn max_field_bytes(&self) -> usize {
        self.inner.max_field_bytes
    }

    /// Whether passing outcomes keep their captured output.
    pub fn keeps_passing_output(&self) -> bool {
        self.inner.keep_passing_output
    }

    /// Subscribes to committed changes.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
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
        // Every write path (gRPC, MCP, import) starts sessions here, so the
        // limits hold on all of them.
        environment.validate()?;
        if let Some(t) = started_at {
            crate::model::validate_time(t, "started_at")?;
        }
        self.backend()
            .start_session(NewSession {
                id,
                source,
                environment,
                started_at: started_at.unwrap_or_else(Timestamp::now),
                started_at_given: started_at.is_some(),
                grant,
            })
            .await
    }

    /// Stores one audit row (after commit) and returns its id.
    pub async fn record_audit(&self, entry: AuditEntry) -> Result<u64> {
        self.backend().record_audit(entry).await
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn recent_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.backend().recent_audit(limit).await
    }

    /// The grant a session was recorded under, if its client authenticated.
    pub async fn session_grant(&self, id: Uuid) -> Result<Option<String>> {
        self.backend().session_grant(id).await
    }

    /// Checks and bounds one outcome as every write path does; errors name
    /// fields relative to the outcome.
    pub fn prepare(&self, outcome: &mut Outcome) -> Result<()> {
        outcome.validate_and_bound(self.inner.max_field_bytes)?;
        rules::apply_output_rule(outcome, self.inner.keep_passing_output);
        Ok(())
    }

    /// Appends outcomes (validated and bounded here) and returns the highest
    /// contiguous seq stored, after it has committed.
    pub async fn append_outcomes(&self, id: Uuid, outcomes: Vec<Outcome>) -> Result<u64> {
        self.append_with_units(id, outcomes, Vec::new()).await
    }

    /// Appends outcomes with the code units their dependencies name that
    /// the store may not hold yet (validated here; a unit already stored
    /// for the project is a no-op). Every unit key an outcome names must be
    /// among `units` or already stored, else nothing is stored.
    pub async fn append_with_units(
        &self,
        id: Uuid,
        mut outcomes: Vec<Outcome>,
        units: Vec<CodeUnit>,
    ) -> Result<u64> {
        for (i, o) in outcomes.iter_mut().enumerate() {
            self.prepare(o)
                .map_err(|e| e.within(format_args!("outcomes[{i}]")))?;
        }
        self.append_prepared(id, outcomes, units).await
    }

    /// Like [`Store::append_with_units`] for outcomes the caller has already
    /// passed through [`Store::prepare`].
    pub async fn append_prepared(
        &self,
        id: Uuid,
        outcomes: Vec<Outcome>,
        units: Vec<CodeUnit>,
    ) -> Result<u64> {
        self.enqueue_append(id, outcomes, units).await?.await
    }

    /// Queues prepared outcomes (and the units they declare, validated
    /// here) without waiting for the commit, so a stream can read its next
    /// batch meanwhile; the returned future resolves after commit with the
    /// highest contiguous stored seq.
    pub async fn enqueue_append(
        &self,
        id: Uuid,
        outcomes: Vec<Outcome>,
        units: Vec<CodeUnit>,
    ) -> Result<backend::Fut<u64>> {
        for (i, u) in units.iter().enumerate() {
            u.validate()
                .map_err(|e| e.within(format_args!("units[{i}]")))?;
        }
        let budget = self.inner.budget.take(&outcomes).await;
        // Encoded (and failures fingerprinted) here, not on the backend's
        // writer: compressing tracebacks runs beside the writes. It is CPU
        // work on text a peer chose, so on a blocking thread, never on the
        // async runtime that answers every other client.
        let outcomes = split_off_runtime(outcomes).await?;
        self.backend()
            .enqueue_append(id, outcomes, units, budget)
            .await
    }

    /// Appends one outcome (validated and bounded here) as the session's next
    /// seq and returns that seq, after it has committed.
    pub async fn append_next(&self, id: Uuid, mut outcome: Outcome) -> Result<u64> {
        // The backend assigns the real seq; 1 only passes validation.
        outcome.seq = 1;
        // One outcome alone declares no units: it records no dependencies.
        outcome.deps = None;
        self.prepare(&mut outcome)
            .map_err(|e| e.within("outcome"))?;
        let Some(outcome) = split_off_runtime(vec![outcome]).await?.pop() else {
            return Err(Error::Internal("an outcome was lost while encoding".into()));
        };
        self.backend().append_next(id, outcome).await
    }

    /// Finishes a session with pytest's summary and the number of outcomes sent.
    pub async fn finish_session(
        &self,
        id: Uuid,
        summary: Summary,
        outcomes_sent: u64,
        finished_at: Option<Timestamp>,
    ) -> Result<Session> {
        // Every write path finishes sessions here, so these rules hold on all.
        summary.validate()?;
        crate::model::validate_count(outcomes_sent, "outcomes_sent")?;
        if let Some(t) = finished_at {
            crate::model::validate_time(t, "finished_at")?;
            match self.get_session(SessionRef::Id(id)).await {
                Ok(s) if t < s.started_at => {
                    return Err(Error::invalid(
                        "finished_at",
                        format!(
                            "{} is before the session started ({})",
                            t.to_rfc3339(),
                            s.started_at.to_rfc3339()
                        ),
                    ));
                }
                // A missing session is the backend's to report.
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.backend()
            .finish_session(
                id,
                summary,
                outcomes_sent,
                finished_at.unwrap_or_else(Timestamp::now),
            )
            .await
    }

    /// Of these cause keys of `session`'s project, those seen in other sessions.
    pub async fn known_causes(
        &self,
        session: &Session,
        keys: Vec<String>,
    ) -> Result<HashMap<String, backend::KnownCause>> {
        self.backend()
            .known_causes(session.environment.project.clone(), keys, session.id)
            .await
    }

    /// Pins a session (keeps it out of every pruning) or unpins it.
    pub async fn set_pinned(&self, session: SessionRef, pinned: bool) -> Result<Session> {
        self.backend().set_pinned(session, pinned).await
    }

    /// Commits everything queued, then stops taking writes; later writes
    /// fail with [`Error::Unavailable`]. Reads keep working.
    pub async fn shutdown(&self) {
        if let Err(e) = self.backend().shutdown().await {
            tracing::warn!(error = %e, "the store did not shut down cleanly");
        }
    }

    /// One session, with its counts.
    pub async fn get_session(&self, session: SessionRef) -> Result<Session> {
        self.backend().get_session(session).await
    }

    /// Sessions, newest first.
    pub async fn list_sessions(
        &self,
        filter: SessionFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<Session>> {
        self.backend().list_sessions(filter, limit, cursor).await
    }

    /// A session's outcomes in seq order.
    pub async fn list_outcomes(
        &self,
        session: SessionRef,
        filter: OutcomeFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Session, Page<Outcome>)> {
        self.backend()
            .list_outcomes(session, filter, limit, cursor)
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

    /// One test's outcomes across the sessions of `project`, newest
    /// session first; its subtests' outcomes are included, labelled.
    pub async fn test_history(
        &self,
        nodeid: String,
        project: &Project,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<HistoryEntry>> {
        crate::model::validate_nodeid(&nodeid, "nodeid")?;
        self.backend()
            .test_history(nodeid, project.clone(), limit, cursor)
            .await
    }

    /// Every project the database holds sessions of, each once however
    /// many spellings of its name were recorded (names match
    /// case-insensitively), the most recently active first.
    pub async fn projects(&self) -> Result<Vec<ProjectSummary>> {
        let activity = self.backend().projects().await?;
        Ok(ProjectSummary::group(activity))
    }

    /// How large the stored data is.
    pub async fn storage_stats(&self) -> Result<StorageStats> {
        self.backend().storage_stats().await
    }
}

/// Text in a batch below which it is encoded where it arrived.
///
/// Handing every batch to a blocking thread cost about 7% of the ingest
/// rate (a thread hop per message, and zstd contexts warmed on other
/// threads), for batches that take microseconds: a plugin's batch of
/// passing tests holds next to no text. Fingerprinting is linear and reads
/// at most 4 KiB of a message, so this much text costs at most a few
/// milliseconds even when every byte of it is pathological.
const INLINE_SPLIT_TEXT_BYTES: usize = 64 * 1024;

/// Fingerprints and encodes outcomes ([`detail::split`]): on a blocking
/// thread when they carry much text (bounded, but CPU work on text a peer
/// chose), else at once.
async fn split_off_runtime(outcomes: Vec<Outcome>) -> Result<Vec<detail::NewOutcome>> {
    let text: usize = outcomes
        .iter()
        .map(|o| o.message.len() + o.longrepr.len() + o.stdout.len() + o.stderr.len() + o.log.len())
        .sum();
    if text <= INLINE_SPLIT_TEXT_BYTES {
        return Ok(outcomes.into_iter().map(detail::split).collect());
    }
    tokio::task::spawn_blocking(move || outcomes.into_iter().map(detail::split).collect())
        .await
        .map_err(|e| Error::Internal(format!("encoding outcomes failed: {e}")))
}

/// A `A.B` page token (e.g. start time and pk) this server issued.
pub(crate) fn decode_cursor_pair(text: &str, field: &str) -> Result<(i64, i64)> {
    let (a, b) = text
        .split_once('.')
        .ok_or_else(|| bad_cursor(text, field))?;
    Ok((
        a.parse().map_err(|_| bad_cursor(text, field))?,
        b.parse().map_err(|_| bad_cursor(text, field))?,
    ))
}

/// A numeric page token (a seq, an offset) this server issued.
pub(crate) fn decode_cursor_number(text: &str, field: &str) -> Result<u64> {
    text.parse().map_err(|_| bad_cursor(text, field))
}

/// An error for a cursor this server did not issue, naming `field`.
pub fn bad_cursor(text: &str, field: &str) -> Error {
    Error::invalid(
        field,
        format!(
            "{} is not a token this server issued",
            crate::model::echo(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_PAGE_BYTES;

    #[test]
    fn a_page_ends_at_its_byte_bound_before_its_row_limit_and_says_more_remain() {
        let mut page = PageFill::new(100);
        let row = MAX_PAGE_BYTES / 4 + 1;
        let taken = (0..10).take_while(|i| page.offer(*i, row)).count();
        assert_eq!(taken, 3);
        assert_eq!(page.finish(), (vec![0, 1, 2], true));
    }

    #[test]
    fn a_page_always_holds_one_row_however_large() {
        let mut page = PageFill::new(100);
        assert!(page.offer("huge", MAX_PAGE_BYTES * 10));
        assert!(!page.offer("next", 1));
        assert_eq!(page.finish(), (vec!["huge"], true));
    }

    #[test]
    fn a_page_within_both_bounds_says_nothing_remains() {
        let mut page = PageFill::new(3);
        assert!(page.offer(1, 10) && page.offer(2, 10));
        assert_eq!(page.finish(), (vec![1, 2], false));
    }
}
