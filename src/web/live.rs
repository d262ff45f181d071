//! The pages' Server-Sent Events.
//!
//! - `/sessions/{id}/events`: while a session runs, `progress` events with
//!   its counts, its bar and the failures stored since the last event, each
//!   event's id being the highest contiguous outcome seq it covers. The
//!   browser sends that id back as `Last-Event-ID` when it reconnects (the
//!   page passes it as `?after=` the first time), so a failure is neither
//!   missed nor shown twice. An `end` event follows the finish, and the
//!   stream closes.
//! - `/events`: `changed` whenever anything is stored (coalesced), for the
//!   sessions list to refetch itself.
//!
//! Both follow the store's changes as MCP subscriptions do
//! ([`crate::store::changes`]).
//!
//! A stream costs nothing while its session is quiet, and nothing once its
//! browser has gone:
//! - One follower per session ([`Live`]) reads the session when the store
//!   changes and shares it with every stream of that session; a stream reads
//!   the database only for what changed (new failures, the rerun command).
//!   The follower ends with the last stream that watches it.
//! - Every task ends as soon as its browser disconnects, not at its next send.
//! - Page streams read through a few permits ([`READS`]), so a crowd of them
//!   opening at once queues instead of occupying every blocking thread.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::components::{bar, failure, pass_rate};
use crate::error::Error;
use crate::model::{Session, SessionRef, TestOutcome};
use crate::store::changes::{COALESCE, Changes};
use crate::store::{OutcomeFilter, Store};
use crate::views::{FailureView, SessionView, rerun_command};

/// Outcomes read per look while catching up.
const BATCH: usize = 1000;

/// Failures named in the rerun command, at most.
const RERUN_MAX: usize = 200;

/// Database reads the page streams make at once, at most.
pub const READS: usize = 4;

/// Traceback bytes shown per failure.
pub const TRACEBACK_BYTES: usize = 64 * 1024;

/// Bytes of failures' markup one event carries, about: a stream catching up
/// on a session of thousands of large failures sends them in events of
/// this size rather than building one event of them all in memory.
const EVENT_FAILURE_BYTES: usize = 256 * 1024;

#[derive(Serialize)]
struct Progress {
    text: std::collections::BTreeMap<&'static str, String>,
    bar: String,
    failures: String,
    rerun: String,
}

/// The latest read of a session, shared by its streams; `None` before the
/// first.
type Snapshot = Option<Arc<Session>>;

/// The pages' live state: a follower per watched session and the permits
/// page streams read through (see the module docs).
#[derive(Clone)]
pub struct Live {
    store: Store,
    stop: CancellationToken,
    followers: Arc<Mutex<HashMap<Uuid, watch::Sender<Snapshot>>>>,
    reads: Arc<Semaphore>,
}

impl Live {
    /// Live state over `store`, ended by `stop`.
    pub fn new(store: Store, stop: CancellationToken) -> Self {
        Self {
            store,
            stop,
            followers: Arc::default(),
            reads: Arc::new(Semaphore::new(READS)),
        }
    }

    /// Runs one database read under a permit.
    async fn read<T>(&self, read: impl Future<Output = T>) -> Option<T> {
        let _permit = self.reads.acquire().await.ok()?;
        Some(read.await)
    }

    /// A session's progress from `after` on; the session must exist.
    pub async fn session(&self, session: SessionRef, after: u64) -> Result<Events, Error> {
        let watching = match self.watch(&session) {
            Some(rx) => rx,
            None => {
                let s = match self.read(self.store.get_session(session)).await {
                    Some(read) => read?,
                    None => return Err(Error::Internal("the server is shutting down".into())),
                };
                self.watch_read(Arc::new(s))
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let id = watching.borrow().as_ref().map(|s| s.id);
        if let Some(id) = id {
            tokio::spawn(follow_session(self.clone(), id, after, watching, tx));
        }
        Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
    }

    /// Joins the follower of a session named by id, if one runs.
    fn watch(&self, session: &SessionRef) -> Option<watch::Receiver<Snapshot>> {
        let SessionRef::Id(id) = session else {
            return None;
        };
        let followers = self.followers.lock().ok()?;
        followers.get(id).map(watch::Sender::subscribe)
    }

    /// Joins the follower of the session just read, starting it if none runs.
    fn watch_read(&self, s: Arc<Session>) -> watch::Receiver<Snapshot> {
        let Ok(mut followers) = self.followers.lock() else {
            // A poisoned map: serve this stream from its own follower.
            let (tx, rx) = watch::channel(Some(s.clone()));
            tokio::spawn(self.clone().follow(s.id, tx));
            return rx;
        };
        if let Some(running) = followers.get(&s.id) {
            return running.subscribe();
        }
        let (tx, rx) = watch::channel(Some(s.clone()));
        followers.insert(s.id, tx.clone());
        tokio::spawn(self.clone().follow(s.id, tx));
        rx
    }

    /// Reads session `id` whenever the store changes, for as long as a
    /// stream watches it and it runs.
    async fn follow(self, id: Uuid, tx: watch::Sender<Snapshot>) {
        let mut looks = Changes::new(&self.store);
        loop {
            let more = tokio::select! {
                _ = self.stop.cancelled() => false,
                _ = tx.closed() => {
                    // Joining happens under the map's lock: checked there,
                    // nobody can join a follower that is leaving.
                    let Ok(mut followers) = self.followers.lock() else { break };
                    if tx.receiver_count() > 0 {
                        continue;
                    }
                    if followers.get(&id).is_some_and(|f| f.same_channel(&tx)) {
                        followers.remove(&id);
                    }
                    return;
                }
                more = looks.next() => more,
            };
            if !more {
                break;
            }
            match self.read(self.store.get_session(SessionRef::Id(id))).await {
                Some(Ok(s)) => {
                    let closed = s.status.is_closed();
                    tx.send_if_modified(|seen| {
                        let changed = seen.as_deref() != Some(&s);
                        if changed {
                            *seen = Some(Arc::new(s));
                        }
                        changed
                    });
                    if closed {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, %id, "a page's event stream cannot read its session");
                }
                None => break,
            }
        }
        if let Ok(mut followers) = self.followers.lock()
            && followers.get(&id).is_some_and(|f| f.same_channel(&tx))
        {
            followers.remove(&id);
        }
    }
}

/// Sends the events of one stream from its session's follower, until the
/// session closes, the browser goes away, or the server stops.
async fn follow_session(
    live: Live,
    id: Uuid,
    mut after: u64,
    mut watching: watch::Receiver<Snapshot>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let store = &live.store;
    let mut last_status = String::new();
    loop {
        let Some(s) = watching.borrow_and_update().clone() else {
            break;
        };
        let mut shown = String::new();
        // Catch up to what is stored now, failures only, in order, an
        // event's worth at a time.
        let mut stalled = false;
        while after < s.outcomes_stored && shown.len() < EVENT_FAILURE_BYTES {
            let batch = match live.read(store.outcomes_after(id, after, BATCH)).await {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, %id, "reading outcomes for a page");
                    stalled = true;
                    break;
                }
                None => return,
            };
            let Some(last) = batch.last() else {
                stalled = true;
                break;
            };
            // Seqs may have gaps (an incomplete session): past the batch,
            // or up to what is stored, unless the event fills up first.
            let mut upto = last.seq.min(s.outcomes_stored);
            for o in batch.iter().take_while(|o| o.seq <= upto) {
                if matches!(o.outcome, TestOutcome::Failed | TestOutcome::Error) {
                    shown.push_str(
                        &failure(
                            &FailureView::new(o, TRACEBACK_BYTES),
                            &s.environment.project,
                        )
                        .into_string(),
                    );
                }
                if shown.len() >= EVENT_FAILURE_BYTES {
                    upto = o.seq;
                    break;
                }
            }
            after = upto;
        }
        // More is stored than sent: the next event follows at once.
        let behind = !stalled && after < s.outcomes_stored;
        let view = SessionView::from(&*s);
        let closed = s.status.is_closed() && !behind;
        if !shown.is_empty() || view.status != last_status || closed {
            let c = &view.counts;
            // Without a failure there is nothing to rerun, and nothing to read.
            let rerun = if c.failed + c.errors == 0 {
                String::new()
            } else {
                let failures = OutcomeFilter {
                    outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
                    nodeid_contains: None,
                };
                let listed = live
                    .read(store.list_outcomes(SessionRef::Id(id), failures, RERUN_MAX, None))
                    .await;
                match listed {
                    Some(Ok((_, page))) => {
                        rerun_command(page.items.iter().map(|o| o.nodeid.as_str()))
                    }
                    _ => String::new(),
                }
            };
            let rerun = if rerun == "pytest" {
                String::new()
            } else {
                rerun
            };
            let text = [
                ("status", view.status.clone()),
                ("result", view.result.clone()),
                ("stored", view.outcomes_stored.to_string()),
                ("passed", c.passed.to_string()),
                ("failed", c.failed.to_string()),
                ("errors", c.errors.to_string()),
                ("skipped", c.skipped.to_string()),
                ("xfailed", c.xfailed.to_string()),
                ("xpassed", c.xpassed.to_string()),
                ("rate", pass_rate(c)),
            ]
            .into_iter()
            .collect();
            let progress = Progress {
                text,
                bar: bar(c).into_string(),
                failures: shown,
                rerun,
            };
            let data = serde_json::to_string(&progress).unwrap_or_default();
            last_status = view.status.clone();
            let kind = if closed { "end" } else { "progress" };
            let event = Event::default()
                .event(kind)
                .id(after.to_string())
                .data(data);
            if tx.send(Ok(event)).await.is_err() || closed {
                break;
            }
        }
        if behind {
            continue;
        }
        // The browser's going away ends the stream now, not at the next send.
        tokio::select! {
            _ = live.stop.cancelled() => break,
            _ = tx.closed() => break,
            changed = watching.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
}

/// What the page handlers answer with: an event stream, ended when the
/// browser goes away (the sending task then stops).
pub type Events =
    Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

/// `changed` after anything is stored.
pub fn changes(store: Store, stop: CancellationToken) -> Events {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut events = store.subscribe();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                e = events.recv() => {
                    if matches!(e, Err(broadcast::error::RecvError::Closed)) { break }
                }
            }
            // Let a burst settle.
            tokio::time::sleep(COALESCE).await;
            while events.try_recv().is_ok() {}
            if tx
                .send(Ok(Event::default().event("changed").data("{}")))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}
