//! MCP over streamable HTTP at `/mcp`, guarded against DNS rebinding and
//! against clients that never close their sessions.
//!
//! - Host: only loopback names (rmcp's default allow-list) are served.
//! - Origin: a request that carries one must come from a loopback origin
//!   (any port, http or https) or one allowed with `--allow-origin`; others
//!   get 403. A request without Origin (a command-line client) is fine.
//! - Credentials: with tokens configured, a request without a valid
//!   `Authorization: Bearer <token>` gets 401 before anything else is read.
//! - Sessions (handshake-era clients): at most [`HttpOptions::max_sessions`]
//!   live at once, counted where rmcp opens them, so every request that
//!   would open one (an `initialize` of any era, whatever its headers
//!   declare) gets 503 beyond that; a session idle for
//!   [`HttpOptions::idle_timeout`] is closed. Other MCP 2026-07-28 requests
//!   are stateless: each is served by a fresh handler and opens no session,
//!   and GET and DELETE answer 405 there.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError, SessionConfig,
};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Listeners, PytestMcp, Transport};
use crate::auth::{Grant, Refusal, Tokens};
use crate::policy::Gate;
use crate::store::Store;

/// The path the MCP endpoint is served at.
pub const PATH: &str = "/mcp";

/// Origins always allowed: pages served from this machine.
const LOOPBACK_ORIGINS: &[&str] = &[
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// Settings of the HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra origins allowed besides loopback ones, e.g. `https://inspector.example:443`.
    pub allowed_origins: Vec<String>,
    /// Most MCP sessions alive at once.
    pub max_sessions: usize,
    /// A session with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// With tokens, every request needs `Authorization: Bearer <token>` (401 otherwise).
    pub tokens: Option<Arc<Tokens>>,
    /// Serve any `Host`: for a non-loopback listener, which only runs with
    /// tokens. DNS rebinding gains a page nothing without the token.
    pub any_host: bool,
    /// Serve the web pages ([`crate::web`]) at `/` beside MCP.
    pub ui: bool,
    /// The listener is HTTPS (the pages' cookie is then `Secure`).
    pub tls: bool,
    /// The project MCP reads and the pages are about when they name none.
    pub default_project: crate::views::DefaultProject,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_sessions: 64,
            idle_timeout: Duration::from_secs(600),
            tokens: None,
            any_host: false,
            ui: true,
            tls: false,
            default_project: crate::views::DefaultProject::MostRecent,
        }
    }
}

/// Checks an `--allow-origin` value the way rmcp will read it, so a typo is
/// an error at startup rather than a silent 403 later.
pub fn check_origin(origin: &str) -> Result<(), String> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!(
            "{origin:?} is not an origin; write it as scheme://host[:port], e.g. https://app.example:443"
        ));
    };
    if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{origin:?} is not an origin; write it as scheme://host[:port] with no path"
        ));
    }
    Ok(())
}

/// The handshake sessions of the HTTP transport, at most `max` alive at
/// once.
///
/// The cap sits where rmcp creates a session rather than in a guess from the
/// request's headers: rmcp opens one for every `initialize`, whatever era its
/// `MCP-Protocol-Version` header names, so a header check let an
/// `initialize` declaring 2026-07-28 open sessions past the cap.
struct CappedSessions {
    inner: Arc<LocalSessionManager>,
    max: usize,
    // Counting and inserting are two steps; one opening at a time keeps
    // concurrent initializes from all seeing room for one more.
    opening: tokio::sync::Mutex<()>,
}

/// Why [`CappedSessions`] did not open or serve a session.
#[derive(Debug, thiserror::Error)]
enum SessionsError {
    /// The cap is reached: [`cap_sessions`] answers 503.
    #[error("too many MCP sessions are open (limit {max})")]
    Full {
        /// The cap, `--max-sessions`.
        max: usize,
    },
    /// rmcp's own session manager failed.
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
}

tokio::task_local! {
    /// Set when [`CappedSessions`] refused a session while serving the
    /// request [`cap_sessions`] runs in this task; rmcp reports any refusal
    /// as a 500, which [`cap_sessions`] turns into the 503 it is.
    static SESSION_REFUSED: std::cell::Cell<bool>;
}

impl SessionManager for CappedSessions {
    type Error = SessionsError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let _one_at_a_time = self.opening.lock().await;
        if self.inner.sessions.read().await.len() >= self.max {
            let _ = SESSION_REFUSED.try_with(|refused| refused.set(true));
            tracing::warn!(max = self.max, "refusing a new MCP session: too many open");
            return Err(SessionsError::Full { max: self.max });
        }
        Ok(self.inner.create_session().await?)
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.resume(id, last_event_id).await?)
    }
}

/// Answers 503 (with `Retry-After`) for a request that would have opened a
/// session past the cap; see [`CappedSessions`].
async fn cap_sessions(
    State(max_sessions): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (refused, response) = SESSION_REFUSED
        .scope(std::cell::Cell::new(false), async {
            let response = next.run(request).await;
            (SESSION_REFUSED.with(std::cell::Cell::get), response)
        })
        .await;
    if !refused {
        return response;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "30")],
        format!(
            "too many MCP sessions are open (limit {max_sessions}); close one (HTTP DELETE) or retry when idle ones expire"
        ),
    )
        .into_response()
}

/// Refuses a request without a configured bearer token with 401 and a
/// `WWW-Authenticate: Bearer` challenge; otherwise passes it on with its
/// [`Grant`] in the request extensions, where the handler finds it.
async fn authenticate(
    State(tokens): State<Option<Arc<Tokens>>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(tokens) = tokens else {
        return next.run(request).await;
    };
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match tokens.check(header) {
        Ok(grant) => {
            request.extensions_mut().insert::<Grant>(grant);
            next.run(request).await
        }
        Err(refusal) => {
            let challenge = match refusal {
                Refusal::Missing => r#"Bearer realm="pytest-mcp""#,
                Refusal::Invalid => r#"Bearer realm="pytest-mcp", error="invalid_token""#,
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                format!("{}\n", refusal.message()),
            )
                .into_response()
        }
    }
}

/// Answers a session close (HTTP DELETE) that succeeded with 204 No Content:
/// rmcp says 202, which clients (the official Python SDK among them) take
/// for a failure and log ("Session termination failed: 202").
async fn close_with_no_content(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let closing = request.method() == Method::DELETE;
    let response = next.run(request).await;
    if closing && response.status() == StatusCode::ACCEPTED {
        return StatusCode::NO_CONTENT.into_response();
    }
    response
}

/// The axum router serving MCP at [`PATH`], every tool call passing `gate`.
pub fn router(
    store: Store,
    gate: Arc<Gate>,
    options: &HttpOptions,
    shutdown: CancellationToken,
) -> axum::Router {
    let mut session_config = SessionConfig::default();
    session_config.keep_alive = Some(options.idle_timeout);
    let mut manager = LocalSessionManager::default();
    manager.session_config = session_config;
    let manager = Arc::new(CappedSessions {
        inner: Arc::new(manager),
        max: options.max_sessions.max(1),
        opening: tokio::sync::Mutex::new(()),
    });

    let origins: Vec<String> = LOOPBACK_ORIGINS
        .iter()
        .map(|o| o.to_string())
        .chain(options.allowed_origins.iter().cloned())
        .collect();
    let mut config = StreamableHttpServerConfig::default();
    if options.any_host {
        config = config.disable_allowed_hosts();
    }
    let (web_store, web_shutdown) = (store.clone(), shutdown.clone());
    // Every handler shares the listens; the transport stops after they have
    // sent their final result.
    let listeners = Listeners::new(shutdown);
    let default_project = Arc::new(options.default_project.clone());
    let config = config
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_cancellation_token(listeners.transport_token());
    let service = StreamableHttpService::new(
        move || {
            Ok(PytestMcp::new(
                store.clone(),
                gate.clone(),
                Transport::Http,
                listeners.clone(),
                default_project.clone(),
            ))
        },
        manager.clone(),
        config,
    );
    let max_sessions = options.max_sessions.max(1);
    let mcp = axum::Router::new()
        .route_service(PATH, service)
        .layer(axum::middleware::from_fn(close_with_no_content))
        .layer(axum::middleware::from_fn_with_state(
            max_sessions,
            cap_sessions,
        ))
        // Outermost: nothing else is looked at before the credential.
        .layer(axum::middleware::from_fn_with_state(
            options.tokens.clone(),
            authenticate,
        ));
    if !options.ui {
        return mcp;
    }
    // The pages have their own guard (a login form and a cookie besides the
    // header); both share the listener, its Host rules and its TLS.
    mcp.merge(crate::web::router(
        web_store,
        crate::web::WebOptions {
            tokens: options.tokens.clone(),
            any_host: options.any_host,
            allowed_origins: options.allowed_origins.clone(),
            secure_cookie: options.tls,
            default_project: options.default_project.clone(),
        },
        web_shutdown,
    ))
}

/// The listener MCP HTTP is served on.
pub enum Listener {
    /// Plain HTTP.
    Plain(TcpListener),
    /// HTTPS (`--tls-cert`): each connection's handshake runs in its own
    /// task, with a time limit, holding its connection slot.
    Tls(TcpListener, crate::tls::Tls),
}

/// Serves MCP over HTTP on `listener` until `shutdown` is cancelled, with
/// `limits` on its connections ([`crate::conn`]): at most
/// `max_connections`, each sending its request headers within
/// `header_timeout` and closed when idle that long between requests.
pub async fn serve(
    listener: Listener,
    store: Store,
    gate: Arc<Gate>,
    options: HttpOptions,
    limits: crate::conn::Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(store, gate, &options, shutdown.clone());
    let (listener, tls) = match listener {
        Listener::Plain(listener) => (listener, None),
        Listener::Tls(listener, tls) => (listener, Some(tls)),
    };
    let slots = crate::conn::Slots::new(limits.max_connections);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        // The slot first: at the limit, new connections wait in the kernel's
        // backlog rather than taking a descriptor each.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.acquire() => match slot {
                Some(slot) => slot,
                None => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting an MCP HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A streamed response is several small writes; with Nagle's algorithm the
        // second waits for the client's delayed ACK (about 40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on an MCP connection");
        }
        let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(tcp, app, slot, limits, shutdown).await,
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => serve_connection(stream, app, slot, limits, shutdown).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one HTTP/1.1 connection until it closes, is evicted, or, after
/// `shutdown`, finishes its request in flight.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    slot: crate::conn::Slot,
    limits: crate::conn::Limits,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = slot.served();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            // Its headers are in: no longer a silent connection to evict.
            served.store(true, std::sync::atomic::Ordering::Relaxed);
            tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new))
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        // Covers a half-sent request and, since hyper starts it when it
        // waits for the next request, an idle kept-alive connection too.
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "an MCP HTTP connection ended");
            }
        }
        _ = slot.evict.cancelled() => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_origins_must_be_scheme_host_and_port() {
        assert!(check_origin("https://app.example:443").is_ok());
        assert!(check_origin("http://localhost:*").is_ok());
        for bad in [
            "app.example",
            "https://",
            "https://app.example/path",
            "://x",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
