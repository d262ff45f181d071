//! The storage backend interface: what a database must do for the store.
//!
//! The interface is narrow on purpose: store and fetch. Every rule that is
//! not SQL lives above it, once: seq / ack / gap, status transitions and
//! counts in [`super::rules`] (a backend calls them inside its write
//! transaction on the session as it read it), verdicts and comparisons in
//! [`super::analysis`] (computed from the rows a backend fetches), and which
//! sessions to prune in [`super::retention`]. A backend adds no rule of its
//! own; the transports see only [`super::Store`].
//!
//! Every method takes owned arguments and returns a boxed future, so the
//! store holds any backend as `Arc<dyn Backend>`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use super::affected::DepsSnapshot;
use super::analysis::{Final, Run};
use super::audit::AuditEntry;
use super::budget::QueuedBytes;
use super::counters::{Key as CounterKey, Update};
use super::detail::NewOutcome;
use super::fingerprint::KeyedFailure;
use super::rules::NewSession;
use super::{HistoryEntry, OutcomeFilter, Page, SessionFilter};
use crate::error::Result;
use crate::model::{
    CodeUnit, Outcome, Project, QuarantineEntry, Session, SessionRef, SessionStatus, Source,
    Summary, Timestamp,
};

/// What every backend method returns.
pub type Fut<T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// A backend's handle on one stored test (a nodeid, or one of its subtests).
pub type TestKey = i64;

/// A backend's handle on one stored session.
pub type SessionKey = i64;

/// The candidates of a flaky-test search: tests that failed at least once in
/// the window, each with its pass/fail runs there, oldest first.
#[derive(Debug, Default)]
pub struct FlakyInput {
    /// Sessions in the window.
    pub sessions: usize,
    /// Each candidate test and its runs.
    pub tests: Vec<(TestKey, Vec<Run>)>,
}

/// A session and the final outcome (last attempt) of each of its tests.
#[derive(Debug, Clone)]
pub struct SessionFinals {
    /// The session.
    pub session: Session,
    /// The backend's key of it.
    pub key: SessionKey,
    /// Each test's final outcome, sorted by test key.
    pub finals: Vec<(TestKey, Final)>,
}

/// What retention needs to know of a session.
#[derive(Debug, Clone)]
pub struct SessionMeta {
    /// The session.
    pub id: Uuid,
    /// Its project ("" when unknown): keep-N counts per project.
    pub project: String,
    /// Start time: "newest" and "older than" are by start.
    pub started_at: Timestamp,
    /// Running sessions are never pruned.
    pub status: SessionStatus,
    /// Pinned sessions are never pruned.
    pub pinned: bool,
    /// Outcomes stored, for the report.
    pub outcomes: u64,
}

/// How much of the deleted data is still to be removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Rows removed by this step.
    pub rows: u64,
    /// Whether rows of deleted sessions remain.
    pub more: bool,
}

/// The size of the stored data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes the database takes on disk (main file; the WAL comes and goes).
    pub bytes: u64,
    /// Bytes of it that are free pages, reusable or returnable to the file system.
    pub free_bytes: u64,
    /// Whether free pages can be returned to the file system in steps.
    pub can_shrink: bool,
}

/// One spelling of a project name, as its sessions recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectActivity {
    /// The name ("" for sessions recorded without one).
    pub name: String,
    /// Sessions recorded under it.
    pub sessions: u64,
    /// The start of the newest of them.
    pub last_started: Timestamp,
}

/// What was recorded of a cause in sessions other than the one asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCause {
    /// The start of the first session it was seen in.
    pub first_seen: Timestamp,
    /// How many sessions it was seen in.
    pub sessions: u64,
    /// The start of the newest session it was seen in.
    pub last_seen: Timestamp,
    /// Failing outcomes of it in those sessions.
    pub failures: u64,
    /// How many tests it has broken in the project's closed sessions.
    pub tests: u64,
    /// The first of them by nodeid (at most [`KNOWN_TESTS_NAMED`]).
    pub some_tests: Vec<String>,
}

/// Most tests a known cause names.
pub const KNOWN_TESTS_NAMED: usize = 10;

/// A storage backend; see the module docs for what it may and may not decide.
pub trait Backend: Send + Sync + 'static {
    // ---- writes: each commits before its future resolves ----

    /// Creates a session, or returns it when the same start is repeated
    /// ([`super::rules::check_restart`]).
    fn start_session(&self, new: NewSession) -> Fut<Session>;

    /// Queues validated outcomes (seqs increasing) and the units they
    /// declare, and resolves once queued; the inner future resolves after
    /// commit with the highest contiguous stored seq
    /// ([`super::rules::plan_append`]). In the same transaction, before any
    /// write, every unit key a new outcome names must be among `units` or
    /// stored for the session's project ([`super::deps::undeclared`]);
    /// units already stored are left as they are. `budget` is held until
    /// the outcomes are dropped.
    fn enqueue_append(
        &self,
        id: Uuid,
        outcomes: Vec<NewOutcome>,
        units: Vec<CodeUnit>,
        budget: QueuedBytes,
    ) -> Fut<Fut<u64>>;

    /// Stores one validated outcome as the session's next seq and returns it.
    fn append_next(&self, id: Uuid, outcome: NewOutcome) -> Fut<u64>;

    /// Finishes a session ([`super::rules::plan_finish`]).
    fn finish_session(
        &self,
        id: Uuid,
        summary: Summary,
        outcomes_sent: u64,
        finished_at: Timestamp,
    ) -> Fut<Session>;

    /// Stores one audit row and returns its id.
    fn record_audit(&self, entry: AuditEntry) -> Fut<u64>;

    /// Pins or unpins a session and returns it.
    fn set_pinned(&self, session: SessionRef, pinned: bool) -> Fut<Session>;

    /// Deletes a session at once for every reader, if
    /// [`super::rules::prune_refusal`] allows it inside the transaction;
    /// its rows are removed later by [`Backend::reclaim`]. Returns whether
    /// it was deleted (false: refused, or gone already).
    fn delete_session(&self, id: Uuid) -> Fut<bool>;

    /// Stores a quarantine entry, replacing the one for the same project
    /// and pattern; returns whether one was replaced.
    fn put_quarantine(&self, entry: QuarantineEntry) -> Fut<bool>;

    /// Removes the quarantine entry for `project` and `pattern` and returns it.
    fn delete_quarantine(&self, project: String, pattern: String) -> Fut<Option<QuarantineEntry>>;

    /// Removes up to `max_rows` rows of deleted sessions.
    fn reclaim(&self, max_rows: usize) -> Fut<Reclaimed>;

    /// Removes the tests no outcome refers to any more; returns how many.
    fn remove_unused_tests(&self) -> Fut<u64>;

    /// Removes the dependency sets no outcome refers to any more and the
    /// units no remaining set names; returns how many rows.
    fn remove_unused_deps(&self) -> Fut<u64>;

    /// Returns up to `max_bytes` of free space to the file system; returns the bytes returned.
    fn shrink(&self, max_bytes: u64) -> Fut<u64>;

    /// Commits everything queued, then stops taking writes. Reads keep working.
    fn shutdown(&self) -> Fut<()>;

    // ---- reads ----

    /// One session with its counts.
    fn get_session(&self, session: SessionRef) -> Fut<Session>;

    /// The grant a session was recorded under.
    fn session_grant(&self, id: Uuid) -> Fut<Option<String>>;

    /// Sessions, newest first; `cursor` is a `next` this backend returned.
    fn list_sessions(
        &self,
        filter: SessionFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<Page<Session>>;

    /// A session's outcomes in seq order.
    fn list_outcomes(
        &self,
        session: SessionRef,
        filter: OutcomeFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<(Session, Page<Outcome>)>;

    /// One test's outcomes (its subtests' included) across the sessions of
    /// `project`, newest session first.
    fn test_history(
        &self,
        nodeid: String,
        project: Project,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<Page<HistoryEntry>>;

    /// The newest `window` pass/fail outcomes of a test itself (not its
    /// subtests) in the sessions of `project`, oldest first.
    fn test_runs(&self, nodeid: String, project: Project, window: usize) -> Fut<Vec<Run>>;

    /// The pass/fail runs (attempts) of each of these tests itself in the
    /// newest `sessions` sessions of `project`, oldest first; a test with
    /// none is left out.
    fn runs_of(
        &self,
        nodeids: Vec<String>,
        project: Project,
        sessions: usize,
    ) -> Fut<HashMap<String, Vec<Run>>>;

    /// The newest `window` sessions of `project`, and every test that
    /// failed in one of them with its pass/fail runs in them.
    fn flaky_input(&self, window: usize, project: Project) -> Fut<FlakyInput>;

    /// Every project name its sessions were recorded under, with activity.
    fn projects(&self) -> Fut<Vec<ProjectActivity>>;

    /// What each test of `project` last ran: its kept closed sessions
    /// scanned newest first ([`super::deps::SnapshotScan`]) and put together
    /// by [`super::deps::assemble`].
    fn deps_snapshot(&self, project: Project) -> Fut<DepsSnapshot>;

    /// A session, its key, and the final outcome (last attempt) of each of
    /// its tests, sorted by test key.
    /// A session and the final outcome (last attempt) of each of its tests.
    fn session_finals(&self, session: SessionRef) -> Fut<SessionFinals>;

    /// The nodeid and subtest label of each test.
    fn test_names(&self, tests: Vec<TestKey>) -> Fut<HashMap<TestKey, (String, String)>>;

    /// The crash message of each test's last failed attempt in a session.
    fn failure_messages(
        &self,
        of: Vec<(SessionKey, TestKey)>,
    ) -> Fut<HashMap<(SessionKey, TestKey), String>>;

    /// A session's failures and errors in seq order, each with its
    /// cause's key (stored with it when it was written).
    fn failure_keys(&self, session: SessionRef) -> Fut<(Session, Vec<KeyedFailure>)>;

    /// These outcomes of a session, whole, in seq order; seqs it does not
    /// hold are left out.
    fn outcomes_at(&self, session: Uuid, seqs: Vec<u64>) -> Fut<Vec<Outcome>>;

    /// A session's `limit` slowest outcomes, slowest first.
    fn slowest(&self, session: SessionRef, limit: usize) -> Fut<(Session, Vec<Outcome>)>;

    /// The newest session from `source` recorded under `grant` (`None`:
    /// under no token) that is still running.
    fn latest_running(&self, source: Source, grant: Option<String>) -> Fut<Option<Session>>;

    /// Of these cause keys of `project`, those recorded for sessions other
    /// than `session`, with when and how often.
    fn known_causes(
        &self,
        project: String,
        keys: Vec<String>,
        session: Uuid,
    ) -> Fut<HashMap<String, KnownCause>>;

    /// The session of the same project started just before `head`; on
    /// `head`'s branch too when `same_branch` (and `head` has one).
    fn previous_session(&self, head: Session, same_branch: bool) -> Fut<Option<Session>>;

    /// The stored quarantine entries, expired ones too: those for `project`
    /// and for every project, or every entry when `None`.
    fn quarantine_entries(&self, project: Option<String>) -> Fut<Vec<QuarantineEntry>>;

    /// The newest `limit` audit rows, newest first.
    fn recent_audit(&self, limit: usize) -> Fut<Vec<AuditEntry>>;

    /// Every session, for retention to choose from.
    fn session_metas(&self) -> Fut<Vec<SessionMeta>>;

    /// How large the stored data is.
    fn storage_stats(&self) -> Fut<StorageStats>;

    // ---- shared state ----

    /// Whether the database refuses writes (a read-only file, directory or
    /// mount), as found when it was opened.
    fn read_only(&self) -> bool {
        false
    }

    /// Whether the database answers (health checks).
    fn ping(&self) -> Fut<()> {
        Box::pin(async { Ok(()) })
    }

    /// Runs `update` on call counters kept in the database, shared by every
    /// process on it, inside the transaction that holds the counters'
    /// locks. `None`: this backend does not share counters, and each
    /// process counts its own.
    fn count_calls(&self, keys: Vec<CounterKey>, update: Update) -> Option<Fut<()>> {
        let _ = (keys, update);
        None
    }

    /// Where the data is, for messages (never with a password).
    fn describe(&self) -> String;
}
