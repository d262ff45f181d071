//! `subscriptions/listen` (MCP 2026-07-28): live push of `pytest://`
//! resource changes on one long-lived request.
//!
//! A listen names what it wants: `resourceSubscriptions` (any `pytest://`
//! URI, even of a session that does not exist yet) and `resourcesListChanged`
//! (a session started). rmcp sends the acknowledgement with the accepted
//! subset; [`run`] then sends `notifications/resources/updated` (tagged with
//! the listen's id) when a subscribed session changes, coalesced as for
//! `resources/subscribe`, until the client cancels (closes the HTTP stream,
//! or `notifications/cancelled` on stdio) or the server shuts down, which
//! ends every listen with the graceful `complete` result.
//!
//! Over stateless HTTP each request gets a fresh handler, so nothing here is
//! per handler: store events come from the store every handler shares, and
//! the open listens are counted in [`Listeners`], which every handler of a
//! server holds, so that shutdown can wait for their final results.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::SubscriptionFilter;
use rmcp::service::{SubscriptionContext, SubscriptionSendError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::resources::{Target, Watched, newest_session, snapshot};
use crate::store::Store;
use crate::store::changes::Changes;
use crate::views::DefaultProject;

/// Longest a shutdown waits for open listens to send their final result.
const DRAIN: Duration = Duration::from_secs(2);

/// Time left for a final result to be written after its listen ended and
/// before the transport is stopped.
const FLUSH: Duration = Duration::from_millis(100);

/// The open listens of one server, and the token that ends them.
pub struct Listeners {
    closing: CancellationToken,
    open: watch::Sender<usize>,
}

impl Listeners {
    /// Listens that end gracefully when `closing` is cancelled.
    pub fn new(closing: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            closing,
            open: watch::Sender::new(0),
        })
    }

    /// A token for the transport to stop on: cancelled once `closing` is and
    /// every open listen has sent its final result (or after [`DRAIN`]).
    /// Stopping the transport at once would drop those results.
    pub fn transport_token(self: &Arc<Self>) -> CancellationToken {
        let token = CancellationToken::new();
        let this = self.clone();
        let stop = token.clone();
        tokio::spawn(async move {
            this.closing.cancelled().await;
            let mut open = this.open.subscribe();
            let drained = tokio::time::timeout(DRAIN, async {
                // The guard it returns may not live across an await.
                open.wait_for(|n| *n == 0).await.map(drop)
            })
            .await;
            if drained.is_err() {
                tracing::warn!("MCP listens did not end in time; stopping anyway");
            }
            tokio::time::sleep(FLUSH).await;
            stop.cancel();
        });
        token
    }

    /// The token whose cancellation ends every listen (the server's shutdown).
    pub(super) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    fn enter(self: &Arc<Self>) -> Open {
        self.open.send_modify(|n| *n += 1);
        Open(self.clone())
    }
}

/// One open listen; counted until dropped.
struct Open(Arc<Listeners>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What this server can send on a listen out of what `requested` asks for:
/// updates of any well-formed `pytest://` URI, and the resource list.
pub(super) fn accepted(requested: &SubscriptionFilter) -> SubscriptionFilter {
    let mut filter = SubscriptionFilter::new();
    filter.resources_list_changed = requested.resources_list_changed.filter(|on| *on);
    filter.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
        uris.iter()
            .filter(|uri| Target::parse(uri).is_ok())
            .cloned()
            .collect()
    });
    filter
}

/// Serves one acknowledged listen until the client cancels it (`Ok`, nothing
/// more is sent) or the server shuts down (`Ok`: rmcp sends `complete`).
pub(super) async fn run(
    store: &Store,
    default: &DefaultProject,
    listeners: &Arc<Listeners>,
    listen: SubscriptionContext,
) -> Result<(), ErrorData> {
    let _open = listeners.enter();
    let sink = listen.sink().clone();
    let accepted = listen.accepted();
    let list_changed = accepted.resources_list_changed == Some(true);
    // Before the first look, so that no commit falls between it and the loop.
    let mut changes = Changes::new(store);
    let watched = Watched::default();
    for uri in accepted.resource_subscriptions.iter().flatten() {
        if let Ok(target) = Target::parse(uri) {
            // A session that cannot be looked at now counts as absent: its
            // first sight is then a change.
            let seen = snapshot(store, default, target.session(), false)
                .await
                .unwrap_or(None);
            watched.add(uri, seen);
        }
    }
    let mut newest = newest_session(store, default).await;
    loop {
        tokio::select! {
            biased;
            _ = listeners.closing.cancelled() => return Ok(()),
            _ = listen.cancelled() => return Ok(()),
            more = changes.next() => if !more { return Ok(()) },
        }
        for uri in watched.changed(store, default).await {
            if let Err(e) = sink.notify_resource_updated(uri).await {
                return ended(e);
            }
        }
        if list_changed {
            let now = newest_session(store, default).await;
            if now != newest {
                newest = now;
                if let Err(e) = sink.notify_resource_list_changed().await {
                    return ended(e);
                }
            }
        }
    }
}

/// A send that failed: the listen is over (the client went away).
fn ended(e: SubscriptionSendError) -> Result<(), ErrorData> {
    tracing::debug!(error = %e, "an MCP listen ended while sending");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_is_granted_well_formed_pytest_uris_and_the_resource_list_only() {
        let mut requested = SubscriptionFilter::new();
        requested.resources_list_changed = Some(true);
        requested.tools_list_changed = Some(true);
        requested.resource_subscriptions = Some(vec![
            "pytest://sessions/latest".into(),
            "pytest://sessions/nope".into(),
            "file:///etc/passwd".into(),
        ]);
        let got = accepted(&requested);
        assert_eq!(got.resources_list_changed, Some(true));
        assert_eq!(got.tools_list_changed, None);
        assert_eq!(
            got.resource_subscriptions,
            Some(vec!["pytest://sessions/latest".to_string()])
        );
        assert_eq!(
            accepted(&SubscriptionFilter::new()),
            SubscriptionFilter::new()
        );
    }
}
