//! The MCP front end: one rmcp handler ([`PytestMcp`]) with the record and
//! read tools, the `pytest://` resources with subscriptions, and the
//! `triage_failures` prompt, served over stdio ([`serve_stdio`]) and
//! streamable HTTP ([`http`]).
//!
//! Every tool call passes the policy gate ([`crate::policy`]) before it runs
//! (a denied tool is also left out of `tools/list`), and leaves one audit row
//! whatever happens to it. So does everything else that shows recorded data:
//! `resources/read` and `resources/subscribe` are gated as the tool that
//! answers the same (`get_session`, or `get_failures` for a session's
//! failures), `resources/list` as `list_sessions`, and `prompts/get
//! triage_failures` as both `get_failure_clusters` and `get_failures`, whose
//! output it embeds ([`Read`]).
//!
//! The grant a call counts for is chosen by the server, never by a client:
//! a token's grant, else the handshake-era MCP session the server issued,
//! else the transport (`stdio`, or `http`, shared by every stateless HTTP
//! caller without a token); see [`PytestMcp::grant_of`].
//!
//! Handlers are thin: parse arguments ([`args`]), call the store, convert the
//! answer ([`views`]). Store errors are mapped to MCP once, here: what the
//! client can fix becomes a tool result with `isError: true` naming the field
//! (or invalid params / resource not found outside tools); the rest is logged
//! and returned opaque.
//!
//! One handler speaks both eras of the protocol. MCP 2026-07-28 has no
//! handshake: each request carries its protocol version and client
//! capabilities in `_meta`, `server/discover` describes the server, HTTP is
//! stateless (a fresh handler per request), and live updates come through
//! `subscriptions/listen` ([`listen`]). The handshake-era versions
//! (2024-11-05 to 2025-11-25) negotiate with `initialize`, keep an MCP
//! session per client, and subscribe with `resources/subscribe`. rmcp routes
//! each request to its era; what differs here is live updates and the cache
//! hints 2026-07-28 results carry.

pub mod args;
pub mod http;
mod listen;
mod prompts;
mod resources;
mod tools;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams,
    InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig as ServerInfo, SubscribeRequestParams,
    SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Grant;
use crate::error::Error;
use crate::model::Timestamp;
use crate::policy::{Decision, Gate};
use crate::store::{AuditEntry, Store};
use crate::views::{DefaultProject, Scope};

pub use listen::Listeners;

/// The newest protocol revision spoken; every known one before it is too.
const NEWEST_VERSION: ProtocolVersion = ProtocolVersion::V_2026_07_28;

/// How long a 2026-07-28 client may keep lists that do not depend on the
/// data (tools, prompts, resource templates): they change only with the
/// binary, or the policy file for tools.
const STATIC_TTL_MS: u64 = 60_000;

/// The MCP handler: every transport serves this one type. A value is made per
/// handshake-era MCP session (per HTTP session, once for stdio), where it
/// holds that session's resource subscriptions, and per request on stateless
/// (2026-07-28) HTTP; what outlives a request is in the store and
/// [`Listeners`], which every value of a server shares.
#[derive(Clone)]
pub struct PytestMcp {
    store: Store,
    tool_router: ToolRouter<PytestMcp>,
    subscriptions: Arc<resources::Subscriptions>,
    listeners: Arc<Listeners>,
    shutdown: CancellationToken,
    gate: Arc<Gate>,
    transport: Transport,
    /// The project reads are about when they name none.
    default_project: Arc<DefaultProject>,
    /// Whether this handler answered `initialize`: it then serves one
    /// handshake-era MCP session, whose id the server issued.
    handshake: Arc<AtomicBool>,
}

/// The transport a handler serves, for the grant of calls that carry no
/// token and for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MCP on stdin/stdout: one client session per process.
    Stdio,
    /// Streamable HTTP: one handler per `Mcp-Session-Id`, or per request
    /// on 2026-07-28.
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
        }
    }
}

impl PytestMcp {
    /// A handler over `store` behind `gate`; its background work and its
    /// listens stop when the server's `listeners` are closed.
    pub fn new(
        store: Store,
        gate: Arc<Gate>,
        transport: Transport,
        listeners: Arc<Listeners>,
        default_project: Arc<DefaultProject>,
    ) -> Self {
        Self {
            store,
            tool_router: Self::tool_router(),
            subscriptions: Arc::new(resources::Subscriptions::default()),
            shutdown: listeners.closing().clone(),
            listeners,
            gate,
            transport,
            default_project,
            handshake: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The project a read is about: `given`, else this server's default.
    async fn scope(&self, given: Option<&str>) -> Result<Scope, Error> {
        Scope::resolve(&self.store, given, &self.default_project).await
    }

    /// The names of every tool the server has, sorted; what a policy file
    /// may name.
    pub fn all_tool_names() -> Vec<String> {
        let mut names: Vec<String> = Self::tool_router()
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Whom a call counts for, chosen by the server alone: the grant of its
    /// token; else, over HTTP, the handshake-era MCP session this handler
    /// serves (`mcp-session:ID`); else the transport: `stdio` (the one
    /// client of the process) or `http` (every stateless 2026-07-28 caller
    /// without a token, together).
    ///
    /// The `Mcp-Session-Id` header is believed only by a handler that
    /// answered `initialize`: rmcp hands such a handler only requests whose
    /// header names its own session, an id the server issued (an unknown id
    /// gets 404 before any handler). A stateless request is served by a fresh
    /// handler whatever header it carries, so there the header is the
    /// client's invention and names nothing.
    fn grant_of(&self, context: &RequestContext<RoleServer>) -> String {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        if let Some(Grant(name)) = parts.and_then(|p| p.extensions.get::<Grant>()) {
            return name.clone();
        }
        if self.transport == Transport::Http
            && self.handshake.load(Ordering::Acquire)
            && let Some(id) = parts
                .and_then(|p| p.headers.get("mcp-session-id"))
                .and_then(|v| v.to_str().ok())
        {
            return format!("mcp-session:{id}");
        }
        self.transport.as_str().to_string()
    }

    /// The grant recorded on sessions a call creates: only a token's grant
    /// names a credential; an MCP session id does not outlive the session.
    fn token_grant(context: &RequestContext<RoleServer>) -> Option<String> {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Grant>())
            .map(|g| g.0.clone())
    }

    /// Stores an audit row; a failure to store it is logged, not returned:
    /// the call itself has already been answered or refused.
    async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.store.record_audit(entry).await {
            tracing::error!(error = %e, "storing an audit row");
        }
    }

    /// An audit row for a call of `tool` by `grant` that arrived now.
    fn audit_entry(&self, grant: String, tool: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            at: Timestamp::now(),
            grant,
            transport: self.transport.as_str().to_string(),
            tool: tool.to_string(),
            decision: String::new(),
            result: None,
            reason: None,
            duration_us: 0,
        }
    }

    /// Audits a read that names nothing this server has (an unknown
    /// resource or prompt) and passes its error on.
    async fn unknown_read<T>(
        &self,
        context: &RequestContext<RoleServer>,
        method: &str,
        error: ErrorData,
    ) -> Result<T, ErrorData> {
        let arrived = Instant::now();
        let mut entry = self.audit_entry(self.grant_of(context), method);
        entry.decision = "unknown".into();
        entry.reason = Some(error.message.to_string());
        entry.duration_us = u64::try_from(arrived.elapsed().as_micros()).unwrap_or(0);
        self.audit(entry).await;
        Err(error)
    }

    /// Runs `run`, a read that is not a tool call, if the gate lets it
    /// through as `read.tools`, and leaves one audit row either way (its
    /// reason says what was read, or why it was refused). A refusal is a
    /// JSON-RPC error naming the tool whose rule refused it.
    async fn gated<T>(
        &self,
        context: &RequestContext<RoleServer>,
        read: Read<'_>,
        run: impl Future<Output = Result<T, ErrorData>>,
    ) -> Result<T, ErrorData> {
        let arrived = Instant::now();
        let grant = self.grant_of(context);
        let mut entry = self.audit_entry(grant.clone(), read.method);
        let what = format!("{} {}", read.method, read.what);
        let (decision, tool) = self
            .gate
            .check_in_all(&self.store, read.tools, &grant)
            .await;
        entry.decision = decision.kind().into();
        let elapsed = move || u64::try_from(arrived.elapsed().as_micros()).unwrap_or(0);
        if let Some(text) = decision.refusal_as(&what, tool) {
            entry.reason = Some(text.clone());
            entry.duration_us = elapsed();
            self.audit(entry).await;
            return Err(ErrorData::invalid_request(
                text,
                Some(serde_json::json!({ "policy": decision.kind(), "tool": tool })),
            ));
        }
        // Not failed, yet worth a row: what was read, and as which tools.
        entry.reason = Some(format!("{what} (as {})", read.tools.join(", ")));
        let answered = run.await;
        entry.duration_us = elapsed();
        match &answered {
            Ok(_) => entry.result = Some("ok".into()),
            Err(e) => {
                entry.result = Some("error".into());
                entry.reason = Some(format!("{what}: {}", e.message));
            }
        }
        self.audit(entry).await;
        answered
    }

    /// The names of every tool, sorted.
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }
}

/// A read that is not a tool call, as the gate and the audit trail see it.
struct Read<'a> {
    /// The MCP method: the audit row's tool column.
    method: &'static str,
    /// What it reads: a resource URI, a prompt's name.
    what: &'a str,
    /// The tools whose data it shows; it is gated as all of them.
    tools: &'a [&'a str],
}

/// Whether a request is on MCP 2026-07-28 or later, whose cacheable results
/// carry `ttlMs` and `cacheScope`; handshake-era results keep their shape.
fn cache_hinted(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= NEWEST_VERSION.as_str())
}

/// A successful tool result: the view as structured content and `text` as
/// its rendering.
fn structured<V: Serialize>(view: &V, text: String) -> Result<CallToolResult, ErrorData> {
    let value = serde_json::to_value(view).map_err(|e| {
        tracing::error!(error = %e, "encoding a tool result");
        ErrorData::internal_error("internal error; see the server log", None)
    })?;
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    Ok(result)
}

/// Maps an error inside a tool: what the client can act on is a tool result
/// with `isError: true` (its message names the field); the server's own
/// failures are logged and answered with an opaque internal error.
fn tool_failure(e: Error) -> Result<CallToolResult, ErrorData> {
    match e {
        Error::InvalidArgument { .. }
        | Error::NotFound { .. }
        | Error::FailedPrecondition { .. }
        | Error::AlreadyExists { .. }
        | Error::Unavailable(_)
        | Error::ResourceExhausted(_)
        | Error::Conflict(_) => Ok(CallToolResult::error(vec![ContentBlock::text(
            e.to_string(),
        )])),
        Error::Sqlite(_) | Error::Postgres(_) | Error::Internal(_) => Err(protocol_error(e)),
    }
}

/// Maps an error outside tools (resources, prompts) to a JSON-RPC error.
fn protocol_error(e: Error) -> ErrorData {
    match &e {
        Error::NotFound { .. } => ErrorData::resource_not_found(e.to_string(), None),
        Error::InvalidArgument { .. }
        | Error::FailedPrecondition { .. }
        | Error::AlreadyExists { .. } => ErrorData::invalid_params(e.to_string(), None),
        Error::Unavailable(_) | Error::Conflict(_) | Error::ResourceExhausted(_) => {
            ErrorData::internal_error(e.to_string(), None)
        }
        Error::Sqlite(_) | Error::Postgres(_) | Error::Internal(_) => {
            tracing::error!(error = %e, "internal error");
            ErrorData::internal_error("internal error; see the server log", None)
        }
    }
}

const INSTRUCTIONS: &str = "pytest-mcp records pytest runs, by project (the rootdir's name). Every \
read is about one project: the `project` argument, else the server's (the directory stdio was \
started in, or the most recently active one); list_projects names them. To find out what \
happened: get_session (default latest), get_failure_clusters (many failures grouped by cause: start \
there when many tests fail), get_failures (tracebacks and a rerun command), \
compare_sessions (new failures vs. the previous run), get_test_history and find_flaky_tests \
(is it flaky? only when it passed and failed on the same code), slowest_tests. After an edit, \
affected_tests says which tests the change needs (from the code each test ran). Session ids may \
be shortened to their first 8 hex digits. To record a run yourself: record_session_start, \
record_test_outcome for each test, record_session_finish. To keep a known-broken test from \
failing runs while it is fixed: quarantine_test (release_test ends it; list_quarantine). Resources pytest://sessions/latest, \
pytest://sessions/{id} and pytest://sessions/{id}/failures tell of each change while a run \
is in progress: subscribe with subscriptions/listen (MCP 2026-07-28) or resources/subscribe.";

impl ServerHandler for PytestMcp {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_prompts()
                .build(),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
        .with_server_info(
            Implementation::new("pytest-mcp", env!("CARGO_PKG_VERSION"))
                .with_title("pytest-mcp: pytest results for agents"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&NEWEST_VERSION))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // From now on this handler serves one MCP session the server
        // issued; see grant_of.
        self.handshake.store(true, Ordering::Release);
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A handshake-era client: tell it of new sessions from now on.
        self.subscriptions.start(
            &self.store,
            &self.default_project,
            context.peer,
            &self.shutdown,
        );
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(listen::accepted(requested))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        listen::run(&self.store, &self.default_project, &self.listeners, context).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arrived = Instant::now();
        let grant = self.grant_of(&context);
        let mut entry = self.audit_entry(grant.clone(), &request.name);
        let elapsed = move || u64::try_from(arrived.elapsed().as_micros()).unwrap_or(0);
        if self.tool_router.get(&request.name).is_none() {
            // MCP 2025-11-25: an unknown tool is a protocol error (invalid
            // params). Only tools the policy lets this caller see are named.
            let tools: Vec<String> = self
                .tool_names()
                .into_iter()
                .filter(|t| self.gate.visible(t))
                .collect();
            entry.decision = "unknown".into();
            entry.reason = Some("no such tool".into());
            entry.duration_us = elapsed();
            self.audit(entry).await;
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; the tools are: {}",
                    request.name,
                    tools.join(", ")
                ),
                Some(serde_json::json!({ "tool": request.name, "tools": tools })),
            ));
        }
        // Decided and counted before the tool runs: a call the gate lets
        // through counts whatever the tool then answers.
        let decision = self.gate.check_in(&self.store, &request.name, &grant).await;
        entry.decision = decision.kind().into();
        if let Some(text) = decision.refusal(&request.name) {
            if let Decision::Limited { .. } = decision {
                // Not a warning: a runaway loop would flood the log; the audit
                // trail has every refusal.
                tracing::info!(tool = %request.name, grant = %grant, "tool call over its policy limit");
            }
            entry.reason = Some(text.clone());
            entry.duration_us = elapsed();
            self.audit(entry).await;
            return Ok(CallToolResult::error(vec![ContentBlock::text(text)]).into());
        }
        let answered = self
            .tool_router
            .call(ToolCallContext::new(self, request, context))
            .await;
        entry.duration_us = elapsed();
        match &answered {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => {
                entry.result = Some("error".into());
                entry.reason = r
                    .content
                    .iter()
                    .find_map(|c| c.as_text().map(|t| t.text.clone()));
            }
            Ok(_) => entry.result = Some("ok".into()),
            Err(e) => {
                entry.result = Some("error".into());
                entry.reason = Some(e.message.to_string());
            }
        }
        self.audit(entry).await;
        answered
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // A denied or hidden tool is not shown at all.
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|t| self.gate.visible(&t.name))
            .collect();
        let mut result = ListToolsResult::with_all_items(tools);
        if cache_hinted(&context) {
            // The policy decides for every caller alike.
            result.ttl_ms = Some(STATIC_TTL_MS);
            result.cache_scope = Some(CacheScope::Public);
        }
        Ok(result)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let read = Read {
            method: "resources/list",
            what: "pytest://sessions/",
            tools: &["list_sessions"],
        };
        let mut result = self
            .gated(
                &context,
                read,
                resources::list(&self.store, &self.default_project),
            )
            .await?;
        if cache_hinted(&context) {
            // It names running sessions, and a new one may start any moment.
            result.ttl_ms = Some(0);
            result.cache_scope = Some(CacheScope::Private);
        }
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let mut result = resources::templates();
        if cache_hinted(&context) {
            result.ttl_ms = Some(STATIC_TTL_MS);
            result.cache_scope = Some(CacheScope::Public);
        }
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        // Both revisions ask for the URI in a not-found error's data.
        let with_uri = |mut e: ErrorData| {
            if e.data.is_none() && matches!(e.code.0, -32002 | -32602) {
                e.data = Some(serde_json::json!({ "uri": request.uri }));
            }
            e
        };
        let target = match resources::Target::parse(&request.uri) {
            Ok(target) => target,
            Err(e) => {
                let error = with_uri(protocol_error(e));
                return self.unknown_read(&context, "resources/read", error).await;
            }
        };
        let read = Read {
            method: "resources/read",
            what: &request.uri,
            tools: target.gated_as(),
        };
        let (mut result, ttl_ms) = self
            .gated(&context, read, resources::read(self, &target, &request.uri))
            .await
            .map_err(with_uri)?;
        if cache_hinted(&context) {
            result.ttl_ms = Some(ttl_ms);
            result.cache_scope = Some(CacheScope::Private);
        }
        Ok(result.into())
    }

    #[allow(deprecated)] // resources/subscribe is how handshake-era clients subscribe
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let target = match resources::Target::parse(&request.uri) {
            Ok(target) => target,
            Err(e) => {
                let error = protocol_error(e);
                return self
                    .unknown_read(&context, "resources/subscribe", error)
                    .await;
            }
        };
        let read = Read {
            method: "resources/subscribe",
            what: &request.uri,
            tools: target.gated_as(),
        };
        let subscribed = self.subscriptions.subscribe(
            &self.store,
            &self.default_project,
            &request.uri,
            context.peer.clone(),
            &self.shutdown,
        );
        self.gated(&context, read, subscribed).await
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions.unsubscribe(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        // Like a denied tool, a prompt the policy would refuse is not shown.
        let prompts = if prompts::GATED_AS.iter().all(|t| self.gate.visible(t)) {
            vec![prompts::triage()]
        } else {
            Vec::new()
        };
        let mut result = ListPromptsResult::with_all_items(prompts);
        if cache_hinted(&context) {
            result.ttl_ms = Some(STATIC_TTL_MS);
            result.cache_scope = Some(CacheScope::Public);
        }
        Ok(result)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != prompts::NAME {
            let error = prompts::unknown(&request.name);
            return self.unknown_read(&context, "prompts/get", error).await;
        }
        let name = request.name.clone();
        let read = Read {
            method: "prompts/get",
            what: &name,
            tools: prompts::GATED_AS,
        };
        self.gated(&context, read, prompts::get(self, request))
            .await
            .map(Into::into)
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin or `shutdown`
/// is cancelled. Nothing else may write to stdout meanwhile.
pub async fn serve_stdio(
    store: Store,
    gate: Arc<Gate>,
    default_project: DefaultProject,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listeners = Listeners::new(shutdown.clone());
    let stop = listeners.transport_token();
    let handler = PytestMcp::new(
        store,
        gate,
        Transport::Stdio,
        listeners,
        Arc::new(default_project),
    );
    let service = match handler.serve_with_ct(rmcp::transport::stdio(), stop).await {
        Ok(service) => service,
        // Stopped (a signal) before the client initialized: not an error.
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let reason = service.waiting().await?;
    tracing::info!(?reason, "MCP stdio session ended");
    Ok(())
}
