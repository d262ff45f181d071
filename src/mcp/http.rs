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
//!   live at once (a new one beyond that gets 503), and a session idle for
//!   [`HttpOptions::idle_timeout`] is closed. MCP 2026-07-28 requests are
//!   stateless: each is served by a fresh handler and opens no session, so
//!   the cap does not apply to them, and GET and DELETE answer 405 there.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
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

#[derive(Clone)]
struct Limits {
    sessions: Arc<LocalSessionManager>,
    max_sessions: usize,
}

/// Whether a request may open a handshake-era session: a POST without
/// `Mcp-Session-Id` that does not declare MCP 2026-07-28 or later, whose
/// requests are stateless and open none.
fn opens_session(request: &axum::extract::Request) -> bool {
    let headers = request.headers();
    let stateless = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v >= super::NEWEST_VERSION.as_str());
    request.method() == Method::POST && !headers.contains_key("mcp-session-id") && !stateless
}

/// Refuses a new session once the cap is reached.
async fn cap_sessions(
    State(limits): State<Limits>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let opens_session = opens_session(&request);
    if opens_session && limits.sessions.sessions.read().await.len() >= limits.max_sessions {
        tracing::warn!(
            max = limits.max_sessions,
            "refusing a new MCP session: too many open"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "30")],
            format!(
                "too many MCP sessions are open (limit {}); close one (HTTP DELETE) or retry when idle ones expire",
                limits.max_sessions
            ),
        )
            .into_response();
    }
    next.run(request).await
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
    let manager = Arc::new(manager);

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
    let limits = Limits {
        sessions: manager,
        max_sessions: options.max_sessions.max(1),
    };
    let mcp = axum::Router::new()
        .route_service(PATH, service)
        .layer(axum::middleware::from_fn(close_with_no_content))
        .layer(axum::middleware::from_fn_with_state(limits, cap_sessions))
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
    /// HTTPS (`--tls-cert`); it sets TCP_NODELAY itself.
    Tls(crate::tls::TlsListener),
}

/// Serves MCP over HTTP on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: Listener,
    store: Store,
    gate: Arc<Gate>,
    options: HttpOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(store, gate, &options, shutdown.clone());
    match listener {
        Listener::Plain(listener) => {
            // A streamed response is several small writes; with Nagle's algorithm the
            // second waits for the client's delayed ACK (about 40 ms on Linux).
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "setting TCP_NODELAY on an MCP connection");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await?;
        }
        Listener::Tls(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await?;
        }
    }
    Ok(())
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
