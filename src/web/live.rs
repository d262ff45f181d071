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

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::components::{bar, failure, pass_rate};
use crate::model::{SessionRef, TestOutcome};
use crate::store::changes::{COALESCE, Changes};
use crate::store::{OutcomeFilter, Store};
use crate::views::{FailureView, SessionView, rerun_command};

/// Outcomes read per look while catching up.
const BATCH: usize = 1000;

/// Failures named in the rerun command, at most.
const RERUN_MAX: usize = 200;

/// Traceback bytes shown per failure.
pub const TRACEBACK_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct Progress {
    text: std::collections::BTreeMap<&'static str, String>,
    bar: String,
    failures: String,
    rerun: String,
}

/// Waits for the next time to look; false when the store has shut down or
/// `stop` was cancelled.
async fn next_look(changes: &mut Changes, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        more = changes.next() => more,
    }
}

/// A session's progress from `after` on.
pub fn session(store: Store, id: Uuid, after: u64, stop: CancellationToken) -> Events {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(follow_session(store, id, after, stop, tx));
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// What the page handlers answer with: an event stream, ended when the
/// browser goes away (the sending task then stops).
pub type Events =
    Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

async fn follow_session(
    store: Store,
    id: Uuid,
    mut after: u64,
    stop: CancellationToken,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut looks = Changes::new(&store);
    let mut last_status = String::new();
    loop {
        let s = match store.get_session(SessionRef::Id(id)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, %id, "a page's event stream cannot read its session");
                break;
            }
        };
        let mut shown = String::new();
        // Catch up to what is stored now, failures only, in order.
        while after < s.outcomes_stored {
            let batch = match store.outcomes_after(id, after, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, %id, "reading outcomes for a page");
                    break;
                }
            };
            let Some(last) = batch.last() else { break };
            let upto = last.seq.min(s.outcomes_stored);
            for o in batch.iter().filter(|o| o.seq <= upto) {
                if matches!(o.outcome, TestOutcome::Failed | TestOutcome::Error) {
                    shown.push_str(
                        &failure(
                            &FailureView::new(o, TRACEBACK_BYTES),
                            &s.environment.project,
                        )
                        .into_string(),
                    );
                }
            }
            after = upto;
        }
        let view = SessionView::from(&s);
        let closed = s.status.is_closed();
        if !shown.is_empty() || view.status != last_status || closed {
            let rerun = match store
                .list_outcomes(
                    SessionRef::Id(id),
                    OutcomeFilter {
                        outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
                        nodeid_contains: None,
                    },
                    RERUN_MAX,
                    None,
                )
                .await
            {
                Ok((_, page)) => rerun_command(page.items.iter().map(|o| o.nodeid.as_str())),
                Err(_) => String::new(),
            };
            let rerun = if rerun == "pytest" {
                String::new()
            } else {
                rerun
            };
            let c = &view.counts;
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
        if !next_look(&mut looks, &stop).await {
            break;
        }
    }
}

/// `changed` after anything is stored.
pub fn changes(store: Store, stop: CancellationToken) -> Events {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut events = store.subscribe();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
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
