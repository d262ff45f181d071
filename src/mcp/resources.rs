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
//! [`crate::store::changes::COALESCE`] so a fast run does not flood the client, and
//! `notifications/resources/list_changed` when a session starts. Handshake-era
//! clients subscribe with `resources/subscribe` ([`Subscriptions`], one
//! watcher task per MCP session); 2026-07-28 clients with
//! `subscriptions/listen` ([`super::listen`]). Both look with [`Changes`] and
//! [`Watched`].
//!
//! Every read, subscription and listing passes the policy gate as the tool
//! that answers the same ([`Target::gated_as`]; `list_sessions` for the list):
//! a policy that denies `get_failures` denies a session's failures here too.
//!
//! Cache hints (2026-07-28): the list names running sessions and `latest`
//! moves, so neither may be cached (`ttlMs: 0`); a closed session's resources
//! no longer change and may be kept for [`CLOSED_TTL_MS`]; the templates are
//! fixed for the binary. Session data is scoped `private` (it sits behind the
//! token); the templates are the same for everyone (`public`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ResourceUpdatedNotificationParam,
};
use rmcp::service::Peer;
use rmcp::{ErrorData, RoleServer};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{PytestMcp, protocol_error};
use crate::error::Error;
use crate::model::{SessionRef, SessionStatus};
use crate::store::changes::Changes;
use crate::store::{SessionFilter, Store};
use crate::views::{self, DefaultProject, Scope};

const PREFIX: &str = "pytest://sessions/";
const JSON: &str = "application/json";

/// Recent sessions listed as concrete resources (the rest via the templates).
const LISTED_SESSIONS: usize = 10;

/// What a `pytest://` URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    Session(SessionRef),
    Failures(SessionRef),
}

impl Target {
    pub(super) fn parse(uri: &str) -> Result<Target, Error> {
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

    /// The tools whose answer this resource shows, which the policy gate
    /// judges its reads and subscriptions as.
    pub(super) fn gated_as(&self) -> &'static [&'static str] {
        match self {
            Target::Session(_) => &["get_session"],
            Target::Failures(_) => &["get_failures"],
        }
    }

    pub(super) fn session(&self) -> SessionRef {
        match self {
            Target::Session(s) | Target::Failures(s) => s.clone(),
        }
    }
}

/// The resources listed: the latest session and the most recent ones. With
/// no session recorded, nothing is listed: every listed resource can be read
/// (the templates still name `latest`, and it can be subscribed to).
pub(super) async fn list(
    store: &Store,
    default: &DefaultProject,
) -> Result<ListResourcesResult, ErrorData> {
    let scope = Scope::resolve(store, None, default)
        .await
        .map_err(protocol_error)?;
    let filter = SessionFilter {
        project: Some(scope.project.clone()),
        ..SessionFilter::default()
    };
    let page = store
        .list_sessions(filter, LISTED_SESSIONS, None)
        .await
        .map_err(protocol_error)?;
    let mut out = Vec::with_capacity(page.items.len() + 1);
    if !page.items.is_empty() {
        out.push(
            Resource::new(format!("{PREFIX}latest"), "latest session")
                .with_description(
                    "The most recently started session of the server's project: status, \
                     counts, first failures",
                )
                .with_mime_type(JSON),
        );
    }
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

/// How long a 2026-07-28 client may keep a closed session's resource: it
/// takes no more outcomes (only `pytest-mcp pin` or pruning touch it).
pub(super) const CLOSED_TTL_MS: u64 = 60_000;

/// Reads one resource (`target`, parsed from `uri`) as JSON, with how long
/// it may be cached: not at all while its session runs, or when it is
/// `latest` (a new session moves it).
pub(super) async fn read(
    mcp: &PytestMcp,
    target: &Target,
    uri: &str,
) -> Result<(ReadResourceResult, u64), ErrorData> {
    let scope = mcp.scope(None).await.map_err(protocol_error)?;
    let session = target.session().to_string();
    let (text, session) = match target {
        Target::Session(_) => {
            let view = views::session::session_detail(&mcp.store, &scope, Some(&session))
                .await
                .map_err(protocol_error)?;
            (serde_json::to_string_pretty(&view), view.session)
        }
        Target::Failures(_) => {
            let query = views::FailuresQuery {
                session: Some(session),
                ..views::FailuresQuery::default()
            };
            let view = views::failures::failures(&mcp.store, &scope, &query)
                .await
                .map_err(protocol_error)?;
            (serde_json::to_string_pretty(&view), view.session)
        }
    };
    let text =
        text.map_err(|e| protocol_error(Error::Internal(format!("encoding a resource: {e}"))))?;
    let closed = session
        .status
        .parse::<SessionStatus>()
        .is_ok_and(SessionStatus::is_closed);
    let ttl_ms = if closed && !matches!(target.session(), SessionRef::Latest(_)) {
        CLOSED_TTL_MS
    } else {
        0
    };
    let result =
        ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type(JSON)]);
    Ok((result, ttl_ms))
}

/// What a watcher last saw of a resource's session: a change to any of
/// these is a change to the resource. `None`: no such session (yet, or any
/// more).
type Snapshot = Option<(Uuid, SessionStatus, u64)>;

/// What `latest` in a resource URI names: the newest session of the
/// server's project.
async fn scoped(
    store: &Store,
    default: &DefaultProject,
    session: SessionRef,
) -> Result<SessionRef, Error> {
    match (&session, default) {
        // The newest session of the most recently active project is the
        // newest session: no need to find the project first.
        (SessionRef::Latest(None), DefaultProject::MostRecent) => Ok(session),
        (SessionRef::Latest(None), _) => {
            Ok(session.scoped(&Scope::resolve(store, None, default).await?.project))
        }
        _ => Ok(session),
    }
}

/// The session `session` names now. With `strict`, only `latest` may be
/// absent (subscribing to an unknown id is an error); otherwise any may.
pub(super) async fn snapshot(
    store: &Store,
    default: &DefaultProject,
    session: SessionRef,
    strict: bool,
) -> Result<Snapshot, Error> {
    let latest = matches!(session, SessionRef::Latest(_));
    let session = scoped(store, default, session).await?;
    match store.get_session(session).await {
        Ok(s) => Ok(Some((s.id, s.status, s.outcomes_stored))),
        Err(Error::NotFound { .. }) if !strict || latest => Ok(None),
        Err(e) => Err(e),
    }
}

/// The newest session's id: when it changes, a session started, and the
/// resource list (which names the latest sessions) changed.
pub(super) async fn newest_session(store: &Store, default: &DefaultProject) -> Option<Uuid> {
    match snapshot(store, default, SessionRef::Latest(None), false).await {
        Ok(seen) => seen.map(|(id, _, _)| id),
        Err(e) => {
            tracing::debug!(error = %e, "cannot look at the newest session");
            None
        }
    }
}

/// Watched resource URIs and what each showed when last looked at.
#[derive(Default)]
pub(super) struct Watched {
    uris: Mutex<HashMap<String, Snapshot>>,
}

impl Watched {
    pub(super) fn add(&self, uri: &str, seen: Snapshot) {
        if let Ok(mut uris) = self.uris.lock() {
            uris.insert(uri.to_string(), seen);
        }
    }

    /// Stops watching `uri` (an unknown one is ignored).
    pub(super) fn remove(&self, uri: &str) {
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

    /// Looks at every watched resource; returns those that changed since the
    /// last look (and are still watched).
    pub(super) async fn changed(&self, store: &Store, default: &DefaultProject) -> Vec<String> {
        let mut changed = Vec::new();
        for uri in self.uris() {
            let Ok(target) = Target::parse(&uri) else {
                continue;
            };
            let now = match snapshot(store, default, target.session(), false).await {
                Ok(now) => now,
                Err(e) => {
                    tracing::debug!(error = %e, %uri, "cannot check a watched resource");
                    continue;
                }
            };
            let moved = match self.uris.lock() {
                Ok(mut uris) => match uris.get_mut(&uri) {
                    Some(seen) if *seen != now => {
                        *seen = now;
                        true
                    }
                    _ => false,
                },
                Err(_) => false,
            };
            if moved {
                changed.push(uri);
            }
        }
        changed
    }
}

/// One handshake-era MCP session's live updates: its `resources/subscribe`
/// subscriptions, and `notifications/resources/list_changed` when a session
/// starts. One watcher task serves them all and ends with the MCP session.
#[derive(Default)]
pub(super) struct Subscriptions {
    watched: Watched,
    watching: Mutex<bool>,
}

impl Subscriptions {
    /// Starts the watcher unless it runs already: when the client has
    /// initialized, or at its first subscription.
    pub(super) fn start(
        self: &Arc<Self>,
        store: &Store,
        default: &Arc<DefaultProject>,
        peer: Peer<RoleServer>,
        shutdown: &CancellationToken,
    ) {
        let start = match self.watching.lock() {
            Ok(mut w) => !std::mem::replace(&mut *w, true),
            Err(_) => false,
        };
        if start {
            tokio::spawn(watch(
                self.clone(),
                store.clone(),
                default.clone(),
                peer,
                shutdown.child_token(),
            ));
        }
    }

    /// Adds a subscription.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        store: &Store,
        default: &Arc<DefaultProject>,
        uri: &str,
        peer: Peer<RoleServer>,
        shutdown: &CancellationToken,
    ) -> Result<(), ErrorData> {
        let target = Target::parse(uri).map_err(protocol_error)?;
        let seen = snapshot(store, default, target.session(), true)
            .await
            .map_err(protocol_error)?;
        self.watched.add(uri, seen);
        self.start(store, default, peer, shutdown);
        Ok(())
    }

    /// Removes a subscription (unknown URIs are ignored).
    pub(super) fn unsubscribe(&self, uri: &str) {
        self.watched.remove(uri);
    }
}

/// Tells a handshake-era client about changed subscriptions and new
/// sessions until it goes away or `stop` is cancelled.
async fn watch(
    subs: Arc<Subscriptions>,
    store: Store,
    default: Arc<DefaultProject>,
    peer: Peer<RoleServer>,
    stop: CancellationToken,
) {
    let mut changes = Changes::new(&store);
    let mut newest = newest_session(&store, &default).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            more = changes.next() => if !more { return },
        }
        if peer.is_transport_closed() {
            return; // the client is gone; its subscriptions end with it
        }
        for uri in subs.watched.changed(&store, &default).await {
            if peer
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                .await
                .is_err()
            {
                return;
            }
        }
        let now = newest_session(&store, &default).await;
        if now != newest {
            newest = now;
            if peer.notify_resource_list_changed().await.is_err() {
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
            Some(Target::Session(SessionRef::Latest(None)))
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
