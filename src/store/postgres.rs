//! The PostgreSQL backend: any number of stateless replicas on one database.
//!
//! Guarantees:
//! - Every write is one transaction on a pooled connection, and its future
//!   resolves after commit. Writers of one session are serialized by a row
//!   lock on the session (`SELECT … FOR UPDATE`) taken first in the
//!   transaction, and the rules ([`crate::store::rules`]) are applied to the
//!   session as read under that lock: two replicas receiving the same
//!   session store every seq once. Writers of different sessions do not
//!   wait for each other.
//! - A session's batches commit in the order they arrived, one transaction
//!   at a time, while the stream reads on: batches that queue up meanwhile
//!   are committed together in the next transaction ([`Queues`]), the way
//!   SQLite's writer groups its commits. A group that a rule refuses is run
//!   again batch by batch, so one bad batch fails alone.
//! - A transaction that loses a deadlock or serialization race is run again.
//! - Changes are announced with `pg_notify` inside the transaction, so only
//!   committed ones are heard; every replica's listener ([`listen`]) turns
//!   them into [`StoreEvent`]s, its own commits included.
//! - The database being away (restarting, unreachable) is
//!   [`Error::Unavailable`]: the plugin resends, and health says NOT_SERVING.

mod listen;
mod reads;
mod rows;
mod schema;
mod writes;

use crate::store::affected::DepsSnapshot;
use crate::store::backend::KnownCause;
use crate::store::fingerprint::KeyedFailure;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

pub use schema::SCHEMA_VERSION;

use super::backend::{
    Backend, FlakyInput, Fut, Reclaimed, SessionFinals, SessionKey, SessionMeta, StorageStats,
    TestKey,
};
use super::location::{PgTls, PgUrl};
use super::{
    AuditEntry, HistoryEntry, OutcomeFilter, Page, Run, SessionFilter, StoreEvent,
    budget::QueuedBytes, detail::NewOutcome, rules::NewSession,
};
use crate::error::{Error, Result};
use crate::model::Project;
use crate::model::{
    CodeUnit, Outcome, QuarantineEntry, Session, SessionRef, Source, Summary, Timestamp,
};
use crate::store::backend::ProjectActivity;
use crate::store::counters::{Key as CounterKey, Update};

/// Connections a replica keeps to the database at most.
const POOL_SIZE: usize = 16;

/// How often a transaction that lost a race is run again.
const MAX_RETRIES: usize = 8;

/// The PostgreSQL backend; cheap to clone.
#[derive(Clone)]
pub struct PgBackend {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    url: PgUrl,
    /// Ids of tests and marker sets known to be committed.
    interned: Mutex<writes::Interned>,
    /// The batches waiting for each session's writer.
    queues: Mutex<Queues>,
    /// Set by shutdown: writes are refused from then on.
    closed: std::sync::atomic::AtomicBool,
    /// Stops the listener.
    stop: tokio_util::sync::CancellationToken,
    /// The database took no writes when it was opened (a standby, or
    /// `default_transaction_read_only`).
    read_only: bool,
}

/// Most outcomes one group transaction commits.
const MAX_GROUP_OUTCOMES: usize = 20_000;

/// A batch waiting to be committed.
struct Queued {
    outcomes: Vec<NewOutcome>,
    /// The code units the batch declared.
    units: Vec<CodeUnit>,
    /// Held until the batch is committed (or refused).
    _budget: QueuedBytes,
    reply: oneshot::Sender<Result<u64>>,
}

/// The batches waiting per session; a session is in the map while its
/// writer task runs.
#[derive(Default)]
struct Queues {
    waiting: HashMap<Uuid, std::collections::VecDeque<Queued>>,
}

/// A TLS connector for `url`, or none.
pub(crate) fn tls_connector(
    url: &PgUrl,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    let PgTls::On { ca } = &url.tls else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                Error::invalid("--db", format!("sslrootcert {}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    Error::invalid("--db", format!("sslrootcert {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::invalid("--db", format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

impl PgBackend {
    /// Connects, migrates the schema (under an advisory lock) and starts
    /// the listener that feeds `events`.
    pub async fn open(url: PgUrl, events: broadcast::Sender<StoreEvent>) -> Result<Self> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls_connector(&url)? {
            Some(tls) => Manager::from_config(url.config.clone(), tls, manager_config),
            None => Manager::from_config(url.config.clone(), tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::Internal(format!("database pool: {e}")))?;
        let mut client = pool.get().await?;
        schema::migrate(&mut client).await?;
        // A standby, or a database set to read-only transactions: every
        // write would fail, so a writer refuses to start on it.
        let read_only = client
            .query_one("SHOW transaction_read_only", &[])
            .await?
            .get::<_, String>(0)
            == "on";
        drop(client);
        let stop = tokio_util::sync::CancellationToken::new();
        let shared = Arc::new(Shared {
            pool,
            url: url.clone(),
            interned: Mutex::new(writes::Interned::default()),
            queues: Mutex::new(Queues::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
            stop: stop.clone(),
            read_only,
        });
        listen::spawn(url, shared.pool.clone(), events, stop);
        Ok(PgBackend { shared })
    }

    fn check_open(shared: &Shared) -> Result<()> {
        if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable("the store is shut down".into()));
        }
        Ok(())
    }

    /// Runs `f` in a write transaction, again when it loses a race.
    fn write<T, F>(&self, f: F) -> Fut<T>
    where
        T: Send + 'static,
        F: for<'t> Fn(
                &'t deadpool_postgres::Transaction<'t>,
                &'t Shared,
            ) -> futures_util::future::BoxFuture<'t, Result<T>>
            + Send
            + Sync
            + 'static,
    {
        let shared = self.shared.clone();
        Box::pin(async move {
            Self::check_open(&shared)?;
            run_write(&shared, &f).await
        })
    }

    /// Runs `f` in a read-only transaction that sees one snapshot.
    fn read<T, F>(&self, f: F) -> Fut<T>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(
                &'t deadpool_postgres::Transaction<'t>,
            ) -> futures_util::future::BoxFuture<'t, Result<T>>
            + Send
            + 'static,
    {
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut client = shared.pool.get().await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let out = f(&tx).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    /// The number of connections that answered a probe; for health.
    pub async fn ping(&self) -> Result<()> {
        let client = self.shared.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Counts a call against rate counters in the database; see
    /// [`crate::store::counters`].
    pub fn count_calls(&self, keys: Vec<CounterKey>, update: Update) -> Fut<()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let keys = Arc::new(keys);
            run_write(&shared, &move |tx, _| {
                let keys = keys.clone();
                let update = update.clone();
                Box::pin(async move { writes::count_calls(tx, &keys, &update).await })
            })
            .await
        })
    }
}

/// Runs `f` in a transaction on a pooled connection and commits; a lost
/// race (deadlock, serialization failure) is retried.
async fn run_write<T, F>(shared: &Shared, f: &F) -> Result<T>
where
    F: for<'t> Fn(
            &'t deadpool_postgres::Transaction<'t>,
            &'t Shared,
        ) -> futures_util::future::BoxFuture<'t, Result<T>>
        + Send
        + Sync,
{
    let mut attempt = 0;
    loop {
        let result = async {
            let mut client = shared.pool.get().await?;
            let tx = client.transaction().await?;
            let out = f(&tx, shared).await?;
            tx.commit().await?;
            Ok(out)
        }
        .await;
        match result {
            Err(Error::Conflict(why)) if attempt < MAX_RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, %why, "a write lost a race; running it again");
                tokio::time::sleep(Duration::from_millis(2 << attempt.min(6))).await;
            }
            other => return other,
        }
    }
}

/// Boxes an async block for [`PgBackend::read`] and [`PgBackend::write`].
macro_rules! boxed {
    ($body:expr) => {
        Box::pin($body) as futures_util::future::BoxFuture<'_, _>
    };
}

/// Commits `id`'s queued batches, all that have queued up (to a bound) in
/// each transaction, until none is left; then leaves the map.
async fn write_session(shared: Arc<Shared>, id: Uuid) {
    loop {
        let group: Vec<Queued> = {
            let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(waiting) = queues.waiting.get_mut(&id) else {
                return;
            };
            if waiting.is_empty() {
                queues.waiting.remove(&id);
                return;
            }
            let mut group = Vec::new();
            let mut outcomes = 0;
            while let Some(next) = waiting.front() {
                if !group.is_empty() && outcomes + next.outcomes.len() > MAX_GROUP_OUTCOMES {
                    break;
                }
                outcomes += next.outcomes.len();
                group.extend(waiting.pop_front());
            }
            group
        };
        if group.len() == 1 {
            for q in group {
                let result = append_once(&shared, id, Arc::new((q.outcomes, q.units))).await;
                let _ = q.reply.send(result);
            }
            continue;
        }
        // Consecutive batches of one stream, in order: one transaction. The
        // outcomes move into one run and back out if it is refused.
        let mut group = group;
        let lengths: Vec<usize> = group.iter().map(|q| q.outcomes.len()).collect();
        let lasts: Vec<u64> = group
            .iter()
            .map(|q| q.outcomes.iter().map(|o| o.outcome.seq).max().unwrap_or(0))
            .collect();
        let mut all = Vec::with_capacity(lengths.iter().sum());
        let mut units = Vec::new();
        for q in &mut group {
            all.append(&mut q.outcomes);
            units.extend(q.units.iter().cloned());
        }
        let all = Arc::new((all, units));
        match append_once(&shared, id, all.clone()).await {
            Ok(stored) => {
                // Each batch is answered with the seqs up to its own last,
                // all stored now: never more than the group stored, and a
                // batch of seqs stored earlier may be answered lower than
                // alone, which a client only takes as less acknowledged.
                let mut upto = 0;
                for (q, last) in group.into_iter().zip(lasts) {
                    upto = upto.max(last);
                    let _ = q.reply.send(Ok(stored.min(upto)));
                }
            }
            // Refused (a gap, a resent overlap, a closed session) or failed:
            // batch by batch, so each gets its own answer.
            Err(_) => {
                let (mut all, _) = Arc::try_unwrap(all).unwrap_or_else(|shared| (*shared).clone());
                for (q, length) in group.iter_mut().zip(&lengths).rev() {
                    q.outcomes = all.split_off(all.len() - length);
                }
                for q in group {
                    let result = append_once(&shared, id, Arc::new((q.outcomes, q.units))).await;
                    let _ = q.reply.send(result);
                }
            }
        }
    }
}

/// A run of outcomes and the units it declares.
type Batch = (Vec<NewOutcome>, Vec<CodeUnit>);

/// Appends one run of outcomes in one transaction; caches what it learned.
async fn append_once(shared: &Shared, id: Uuid, batch: Arc<Batch>) -> Result<u64> {
    let (stored, learned): (u64, writes::Learned) = run_write(shared, &|tx, shared| {
        let batch = batch.clone();
        boxed!(async move { writes::append(tx, shared, id, &batch.0, &batch.1).await })
    })
    .await?;
    learned.keep(&shared.interned);
    Ok(stored)
}

impl Backend for PgBackend {
    fn read_only(&self) -> bool {
        self.shared.read_only
    }

    fn start_session(&self, new: NewSession) -> Fut<Session> {
        let new = Arc::new(new);
        self.write(move |tx, _| {
            let new = new.clone();
            boxed!(async move { writes::start(tx, &new).await })
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
            Self::check_open(&shared)?;
            let (reply, committed) = oneshot::channel();
            let start_writer = {
                let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
                let queued = Queued {
                    outcomes,
                    units,
                    _budget: budget,
                    reply,
                };
                match queues.waiting.get_mut(&id) {
                    Some(waiting) => {
                        waiting.push_back(queued);
                        false
                    }
                    None => {
                        queues.waiting.insert(id, [queued].into());
                        true
                    }
                }
            };
            if start_writer {
                tokio::spawn(write_session(shared.clone(), id));
            }
            let committed: Fut<u64> = Box::pin(async move {
                committed.await.map_err(|_| {
                    Error::Unavailable("the store shut down before committing".into())
                })?
            });
            Ok(committed)
        })
    }

    fn append_next(&self, id: Uuid, outcome: NewOutcome) -> Fut<u64> {
        let outcome = Arc::new(outcome);
        let shared = self.shared.clone();
        Box::pin(async move {
            Self::check_open(&shared)?;
            let (seq, learned): (u64, writes::Learned) = run_write(&shared, &|tx, shared| {
                let outcome = outcome.clone();
                boxed!(async move { writes::append_next(tx, shared, id, &outcome).await })
            })
            .await?;
            learned.keep(&shared.interned);
            Ok(seq)
        })
    }

    fn finish_session(
        &self,
        id: Uuid,
        summary: Summary,
        outcomes_sent: u64,
        finished_at: Timestamp,
    ) -> Fut<Session> {
        let summary = Arc::new(summary);
        self.write(move |tx, _| {
            let summary = summary.clone();
            boxed!(
                async move { writes::finish(tx, id, &summary, outcomes_sent, finished_at).await }
            )
        })
    }

    fn record_audit(&self, entry: AuditEntry) -> Fut<u64> {
        let entry = Arc::new(entry);
        self.write(move |tx, _| {
            let entry = entry.clone();
            boxed!(async move { writes::audit(tx, &entry).await })
        })
    }

    fn set_pinned(&self, session: SessionRef, pinned: bool) -> Fut<Session> {
        self.write(move |tx, _| {
            let session = session.clone();
            boxed!(async move { writes::pin(tx, session, pinned).await })
        })
    }

    fn put_quarantine(&self, entry: QuarantineEntry) -> Fut<bool> {
        let entry = Arc::new(entry);
        self.write(move |tx, _| {
            let entry = entry.clone();
            boxed!(async move { writes::put_quarantine(tx, &entry).await })
        })
    }

    fn delete_quarantine(&self, project: String, pattern: String) -> Fut<Option<QuarantineEntry>> {
        let key = Arc::new((project, pattern));
        self.write(move |tx, _| {
            let key = key.clone();
            boxed!(async move { writes::delete_quarantine(tx, &key.0, &key.1).await })
        })
    }

    fn delete_session(&self, id: Uuid) -> Fut<bool> {
        self.write(move |tx, _| boxed!(async move { writes::delete(tx, id).await }))
    }

    fn reclaim(&self, max_rows: usize) -> Fut<Reclaimed> {
        self.write(move |tx, _| boxed!(async move { writes::reclaim(tx, max_rows).await }))
    }

    fn remove_unused_tests(&self) -> Fut<u64> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let removed = run_write(&shared, &|tx, _| {
                boxed!(async move { writes::remove_unused_tests(tx).await })
            })
            .await?;
            if removed > 0 {
                shared
                    .interned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Ok(removed)
        })
    }

    fn remove_unused_deps(&self) -> Fut<u64> {
        self.write(move |tx, _| boxed!(async move { writes::remove_unused_deps(tx).await }))
    }

    fn shrink(&self, _max_bytes: u64) -> Fut<u64> {
        // PostgreSQL's (auto)vacuum reuses and returns the space of deleted rows.
        Box::pin(async { Ok(0) })
    }

    fn shutdown(&self) -> Fut<()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            shared
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // Wait for the batches still committing.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !shared
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .waiting
                .is_empty()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            shared.stop.cancel();
            Ok(())
        })
    }

    fn get_session(&self, session: SessionRef) -> Fut<Session> {
        self.read(move |tx| boxed!(async move { Ok(reads::resolve(tx, session).await?.1) }))
    }

    fn session_grant(&self, id: Uuid) -> Fut<Option<String>> {
        self.read(move |tx| boxed!(async move { reads::session_grant(tx, id).await }))
    }

    fn list_sessions(
        &self,
        filter: SessionFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<Page<Session>> {
        self.read(move |tx| {
            boxed!(async move { reads::list_sessions(tx, &filter, limit, cursor.as_deref()).await })
        })
    }

    fn list_outcomes(
        &self,
        session: SessionRef,
        filter: OutcomeFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<(Session, Page<Outcome>)> {
        self.read(move |tx| {
            boxed!(async move {
                reads::list_outcomes(tx, session, &filter, limit, cursor.as_deref()).await
            })
        })
    }

    fn test_history(
        &self,
        nodeid: String,
        project: Project,
        limit: usize,
        cursor: Option<String>,
    ) -> Fut<Page<HistoryEntry>> {
        self.read(move |tx| {
            boxed!(async move {
                reads::test_history(tx, &nodeid, &project, limit, cursor.as_deref()).await
            })
        })
    }

    fn test_runs(&self, nodeid: String, project: Project, window: usize) -> Fut<Vec<Run>> {
        self.read(move |tx| {
            boxed!(async move { reads::test_runs(tx, &nodeid, &project, window).await })
        })
    }

    fn runs_of(
        &self,
        nodeids: Vec<String>,
        project: Project,
        sessions: usize,
    ) -> Fut<HashMap<String, Vec<Run>>> {
        self.read(move |tx| {
            boxed!(async move { reads::runs_of(tx, &nodeids, &project, sessions).await })
        })
    }

    fn flaky_input(&self, window: usize, project: Project) -> Fut<FlakyInput> {
        self.read(move |tx| boxed!(async move { reads::flaky_input(tx, window, &project).await }))
    }

    fn projects(&self) -> Fut<Vec<ProjectActivity>> {
        self.read(move |tx| boxed!(async move { reads::projects(tx).await }))
    }

    fn deps_snapshot(&self, project: Project) -> Fut<DepsSnapshot> {
        self.read(move |tx| boxed!(async move { reads::deps_snapshot(tx, &project).await }))
    }

    fn session_finals(&self, session: SessionRef) -> Fut<SessionFinals> {
        self.read(move |tx| boxed!(async move { reads::session_finals(tx, session).await }))
    }

    fn test_names(&self, tests: Vec<TestKey>) -> Fut<HashMap<TestKey, (String, String)>> {
        self.read(move |tx| boxed!(async move { reads::test_names(tx, &tests).await }))
    }

    fn failure_messages(
        &self,
        of: Vec<(SessionKey, TestKey)>,
    ) -> Fut<HashMap<(SessionKey, TestKey), String>> {
        self.read(move |tx| boxed!(async move { reads::failure_messages(tx, &of).await }))
    }

    fn failure_keys(&self, session: SessionRef) -> Fut<(Session, Vec<KeyedFailure>)> {
        self.read(move |tx| boxed!(async move { reads::failure_keys(tx, session).await }))
    }

    fn outcomes_at(&self, session: Uuid, seqs: Vec<u64>) -> Fut<Vec<Outcome>> {
        let seqs = Arc::new(seqs);
        self.read(move |tx| {
            let seqs = seqs.clone();
            boxed!(async move { reads::outcomes_at(tx, session, &seqs).await })
        })
    }

    fn slowest(&self, session: SessionRef, limit: usize) -> Fut<(Session, Vec<Outcome>)> {
        self.read(move |tx| boxed!(async move { reads::slowest(tx, session, limit).await }))
    }

    fn latest_running(&self, source: Source, grant: Option<String>) -> Fut<Option<Session>> {
        self.read(move |tx| {
            let grant = grant.clone();
            boxed!(async move { reads::latest_running(tx, source, grant.as_deref()).await })
        })
    }

    fn previous_session(&self, head: Session, same_branch: bool) -> Fut<Option<Session>> {
        self.read(move |tx| {
            boxed!(async move { reads::previous_session(tx, &head, same_branch).await })
        })
    }

    fn quarantine_entries(&self, project: Option<String>) -> Fut<Vec<QuarantineEntry>> {
        self.read(move |tx| {
            let project = project.clone();
            boxed!(async move { reads::quarantine_entries(tx, project.as_deref()).await })
        })
    }

    fn recent_audit(&self, limit: usize) -> Fut<Vec<AuditEntry>> {
        self.read(move |tx| boxed!(async move { reads::recent_audit(tx, limit).await }))
    }

    fn known_causes(
        &self,
        project: String,
        keys: Vec<String>,
        session: Uuid,
    ) -> Fut<HashMap<String, KnownCause>> {
        let (project, keys) = (Arc::new(project), Arc::new(keys));
        self.read(move |tx| {
            let (project, keys) = (project.clone(), keys.clone());
            boxed!(async move { reads::known_causes(tx, &project, &keys, session).await })
        })
    }

    fn session_metas(&self) -> Fut<Vec<SessionMeta>> {
        self.read(move |tx| boxed!(async move { reads::session_metas(tx).await }))
    }

    fn storage_stats(&self) -> Fut<StorageStats> {
        self.read(move |tx| boxed!(async move { reads::storage_stats(tx).await }))
    }

    fn ping(&self) -> Fut<()> {
        let this = self.clone();
        Box::pin(async move { PgBackend::ping(&this).await })
    }

    fn count_calls(&self, keys: Vec<CounterKey>, update: Update) -> Option<Fut<()>> {
        Some(PgBackend::count_calls(self, keys, update))
    }

    fn describe(&self) -> String {
        self.shared.url.to_string()
    }
}
