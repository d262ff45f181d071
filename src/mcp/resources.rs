//! The `pytest://` resources and their subscriptions.
//!
//! - `pytest://sessions/latest` and `pytest://sessions/{id}`: a session with
//!   its counts and first failures (what `get_session` answers);
//! - `pytest://sessions/{id}/failures`: its first page of failures (what
//!   `get_failures` answers).
//!
//! A subscribed client is sent `notifications/resources/updated` when the
//! session it names changes (new outcomes, a finish; for `latest`, also a
//! newer session), at most a few times a second: commits are coalesced for
//! [`COALESCE`] so a fast run does not flood the client. One watcher task per
//! MCP session serves all of its subscriptions and ends with the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ResourceUpdatedNotificationParam,
};
use rmcp::service::Peer;
use rmcp::{ErrorData, RoleServer};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::FailuresArgs;
use super::{PytestMcp, protocol_error};
use crate::error::Error;
use crate::model::{SessionRef, SessionStatus};
use crate::store::{SessionFilter, Store};

const PREFIX: &str = "pytest://sessions/";
const JSON: &str = "application/json";

/// How long changes are gathered before subscribers are told.
const COALESCE: Duration = Duration::from_millis(200);

/// How often subscribed resources are looked at even without a local commit.
const POLL: Duration = Duration::from_secs(1);

/// Recent sessions listed as concrete resources (the rest via the templates).
const LISTED_SESSIONS: usize = 10;

/// What a `pytest://` URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Session(SessionRef),
    Failures(SessionRef),
}

impl Target {
    fn parse(uri: &str) -> Result<Target, Error> {
        let bad = || {
            Error::not_found(
                "uri",
                format!(
                    "{uri:?} is not a resource of this server; try pytest://sessions/latest, \
                     pytest://sessions/{{id}} or pytest://sessions/{{id}}/failures"
                ),
            )
        };
        let rest = uri.strip_prefix(PREFIX).ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let session = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let session = SessionRef::parse(session, "uri").map_err(|_| bad())?;
        match (parts.next(), parts.next()) {
            (None, _) => Ok(Target::Session(session)),
            (Some("failures"), None) => Ok(Target::Failures(session)),
            _ => Err(bad()),
        }
    }

    fn session(self) -> SessionRef {
        match self {
            Target::Session(s) | Target::Failures(s) => s,
        }
    }
}

/// The resources listed: the latest session and the most recent ones.
pub(super) async fn list(store: &Store) -> Result<ListResourcesResult, ErrorData> {
    let mut out = vec![
        Resource::new(format!("{PREFIX}latest"), "latest session")
            .with_description("The most recently started session: status, counts, first failures")
            .with_mime_type(JSON),
    ];
    let page = store
        .list_sessions(SessionFilter::default(), LISTED_SESSIONS, None)
        .await
        .map_err(protocol_error)?;
    for s in &page.items {
        let name = format!(
            "session {} ({}{})",
            s.started_at.to_rfc3339(),
            s.status,
            if s.environment.project.is_empty() {
                String::new()
            } else {
                format!(", {}", s.environment.project)
            }
        );
        out.push(
            Resource::new(format!("{PREFIX}{}", s.id), name)
                .with_description("A session: status, counts, environment, first failures")
                .with_mime_type(JSON),
        );
    }
    Ok(ListResourcesResult::with_all_items(out))
}

/// The resource templates.
pub(super) fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new(format!("{PREFIX}{{id}}"), "session")
            .with_description(
                "A session by id (or `latest`): status, counts, environment, first failures",
            )
            .with_mime_type(JSON),
        ResourceTemplate::new(format!("{PREFIX}{{id}}/failures"), "session failures")
            .with_description(
                "A session's failures (first page) with tracebacks and a rerun command; \
                 the get_failures tool pages through the rest",
            )
            .with_mime_type(JSON),
    ])
}

/// Reads one resource as JSON.
pub(super) async fn read(mcp: &PytestMcp, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let target = Target::parse(uri).map_err(protocol_error)?;
    let text = match target {
        Target::Session(s) => {
            let view = super::tools::session_detail(mcp, s)
                .await
                .map_err(protocol_error)?;
            serde_json::to_string_pretty(&view)
        }
        Target::Failures(s) => {
            let args = FailuresArgs {
                session: Some(s.to_string()),
                ..FailuresArgs::default()
            };
            let view = super::tools::failures(mcp, &args)
                .await
                .map_err(protocol_error)?;
            serde_json::to_string_pretty(&view)
        }
    }
    .map_err(|e| protocol_error(Error::Internal(format!("encoding a resource: {e}"))))?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type(JSON),
    ]))
}

/// What a subscriber last saw of a resource's session: a change to any of
/// these is a change to the resource.
type Snapshot = Option<(Uuid, SessionStatus, u64)>;

async fn snapshot(store: &Store, session: SessionRef) -> Result<Snapshot, Error> {
    match store.get_session(session).await {
        Ok(s) => Ok(Some((s.id, s.status, s.outcomes_stored))),
        Err(Error::NotFound { .. }) if session == SessionRef::Latest => Ok(None),
        Err(e) => Err(e),
    }
}

/// One MCP session's resource subscriptions.
#[derive(Default)]
pub(super) struct Subscriptions {
    uris: Mutex<HashMap<String, Snapshot>>,
    watching: Mutex<bool>,
}

impl Subscriptions {
    /// Adds a subscription, starting the watcher on the first one.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        store: &Store,
        uri: &str,
        peer: Peer<RoleServer>,
        shutdown: &CancellationToken,
    ) -> Result<(), ErrorData> {
        let target = Target::parse(uri).map_err(protocol_error)?;
        let seen = snapshot(store, target.session())
            .await
            .map_err(protocol_error)?;
        if let Ok(mut uris) = self.uris.lock() {
            uris.insert(uri.to_string(), seen);
        }
        let start = match self.watching.lock() {
            Ok(mut w) => !std::mem::replace(&mut *w, true),
            Err(_) => false,
        };
        if start {
            tokio::spawn(watch(
                self.clone(),
                store.clone(),
                peer,
                shutdown.child_token(),
            ));
        }
        Ok(())
    }

    /// Removes a subscription (unknown URIs are ignored).
    pub(super) fn unsubscribe(&self, uri: &str) {
        if let Ok(mut uris) = self.uris.lock() {
            uris.remove(uri);
        }
    }

    fn uris(&self) -> Vec<String> {
        self.uris
            .lock()
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Records what `uri` shows now; true when that differs from before
    /// (and the URI is still subscribed).
    fn changed(&self, uri: &str, now: Snapshot) -> bool {
        match self.uris.lock() {
            Ok(mut uris) => match uris.get_mut(uri) {
                Some(seen) if *seen != now => {
                    *seen = now;
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }
}

/// Tells the client about changed subscriptions. It looks when this process
/// commits something (coalesced for [`COALESCE`]) and every [`POLL`], which
/// also catches changes written by another process sharing the database.
async fn watch(
    subs: Arc<Subscriptions>,
    store: Store,
    peer: Peer<RoleServer>,
    stop: CancellationToken,
) {
    let mut events = store.subscribe();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = poll.tick() => {}
            event = events.recv() => {
                if matches!(event, Err(broadcast::error::RecvError::Closed)) {
                    return; // the store is shut down
                }
                // Let a burst of commits settle into one notification.
                let window = tokio::time::sleep(COALESCE);
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        _ = &mut window => break,
                        _ = stop.cancelled() => return,
                        more = events.recv() => {
                            if matches!(more, Err(broadcast::error::RecvError::Closed)) {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if peer.is_transport_closed() {
            return; // the client is gone; its subscriptions end with it
        }
        for uri in subs.uris() {
            let Ok(target) = Target::parse(&uri) else {
                continue;
            };
            let now = match snapshot(&store, target.session()).await {
                Ok(now) => now,
                Err(e) => {
                    tracing::debug!(error = %e, %uri, "cannot check a subscribed resource");
                    continue;
                }
            };
            if subs.changed(&uri, now)
                && peer
                    .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_parse_into_sessions_and_failures() {
        let id = Uuid::new_v4();
        assert_eq!(
            Target::parse("pytest://sessions/latest").ok(),
            Some(Target::Session(SessionRef::Latest))
        );
        assert_eq!(
            Target::parse(&format!("pytest://sessions/{id}/failures")).ok(),
            Some(Target::Failures(SessionRef::Id(id)))
        );
        for bad in [
            "pytest://sessions/",
            "pytest://sessions/nope",
            "pytest://sessions/latest/other",
            "file:///etc/passwd",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
