//! Wiring: opens the store, starts the listeners, runs the CLI commands, and
//! owns the one shutdown token every part watches.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::cli::{Cli, Command, HttpArgs, OutputArgs, SecurityArgs, StdioArgs, SyncMode};
use crate::commands::{self, open_store};
use crate::mcp::PytestMcp;
use crate::mcp::http::HttpOptions;
use crate::policy::{Gate, Policy};
use crate::store::{StoreConfig, Sync, retention};
use crate::tls::Tls;

/// How long a graceful shutdown may take before the server stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = store_config(
                args.db.location()?,
                args.sync,
                args.max_field_bytes,
                &args.output,
            );
            let guard = Guard::from_args(&args.security)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let http = http_options(&args.http, &guard);
            let retain = args.retain.policy();
            let listeners = if http.is_some() { 2 } else { 1 };
            let limits = args.connections.limits(listeners);
            serve_with_mcp(
                config,
                retain,
                args.grpc_addr,
                http,
                guard,
                limits,
                shutdown,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stdio(args) => stdio(args).await,
        Command::Projects(args) => commands::projects::run(args).await,
        Command::Sessions(args) => commands::sessions::run(args).await,
        Command::Show(args) => commands::show::run(args).await,
        Command::Flaky(args) => commands::flaky::run(args).await,
        Command::Affected(args) => commands::affected::run(args).await,
        Command::Compare(args) => commands::compare::run(args).await,
        Command::History(args) => commands::history::run(args).await,
        Command::Causes(args) => commands::causes::run(args).await,
        Command::Slowest(args) => commands::slowest::run(args).await,
        Command::Regressions(args) => commands::regressions::run(args).await,
        Command::Export(args) => commands::export::run(args).await,
        Command::Import(args) => commands::import::run(args).await,
        Command::Watch(args) => {
            let project = match &args.project {
                Some(name) => name.clone(),
                None => match crate::views::DefaultProject::of_current_directory() {
                    crate::views::DefaultProject::Directory { name, .. } => name,
                    _ => String::new(),
                },
            };
            crate::watch::watch(
                &args.grpc_addr,
                &args.session,
                &project,
                args.token.as_deref(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => commands::audit::run(args).await,
        Command::Prune(args) => commands::prune::run(args).await,
        Command::Pin(args) => commands::pin::run(args, true).await,
        Command::Unpin(args) => commands::pin::run(args, false).await,
        Command::Quarantine(args) => commands::quarantine::run(args).await,
    }
}

/// What guards a server: the policy gate in front of MCP tool calls, the
/// file it was read from (watched for changes), and the tokens, if any.
pub struct Guard {
    /// The gate every MCP handler of the process shares.
    pub gate: Arc<Gate>,
    /// The policy file, reloaded when it changes.
    pub policy_path: Option<PathBuf>,
    /// Configured tokens; `None` means no authentication (loopback only).
    pub tokens: Option<Arc<Tokens>>,
    /// TLS for both listeners.
    pub tls: Option<Tls>,
}

impl Guard {
    /// Everything allowed, no tokens: loopback only.
    pub fn open() -> Self {
        Self {
            gate: Arc::new(Gate::allow_all()),
            policy_path: None,
            tokens: None,
            tls: None,
        }
    }

    /// Reads `--policy` and `--token` / `--tokens`; a bad file stops the start.
    pub fn from_args(args: &SecurityArgs) -> anyhow::Result<Self> {
        let policy = match &args.policy {
            Some(path) => crate::policy::load(path, &PytestMcp::all_tool_names())?,
            None => Policy::allow_all(),
        };
        let tokens = match (&args.token, &args.tokens) {
            (Some(token), _) => Some(Tokens::single(token)?),
            (None, Some(path)) => Some(Tokens::from_file(path)?),
            (None, None) => None,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        Ok(Self {
            gate: Arc::new(Gate::new(policy)),
            policy_path: args.policy.clone(),
            tokens: tokens.map(Arc::new),
            tls,
        })
    }

    /// Starts reloading the policy file when it changes, until `shutdown`.
    fn watch_policy(&self, shutdown: &CancellationToken) {
        if let Some(path) = &self.policy_path {
            crate::policy::watch(
                self.gate.clone(),
                path.clone(),
                PytestMcp::all_tool_names(),
                shutdown.clone(),
            );
        }
    }
}

/// Refuses a non-loopback address unless tokens are configured: without
/// them anyone who can reach the port could read and write test results.
pub fn check_loopback(addr: SocketAddr, flag: &str, tokens: bool) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !tokens {
        bail!(
            "{flag}: refusing to listen on {addr}: it is not a loopback address and no token \
             is configured, so anyone who can reach it could read and write your test results; \
             set PYTEST_MCP_TOKEN (or --token, or --tokens FILE), or use 127.0.0.1 (or ::1)"
        );
    }
    Ok(())
}

/// Opens the store, serves gRPC on `grpc_addr` until `shutdown`, then
/// commits everything received and returns.
pub async fn serve(
    config: StoreConfig,
    grpc_addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_mcp(
        config,
        retention::Policy::default(),
        grpc_addr,
        None,
        Guard::open(),
        crate::conn::Limits::default(),
        shutdown,
    )
    .await
}

fn http_options(args: &HttpArgs, guard: &Guard) -> Option<(SocketAddr, HttpOptions)> {
    (!args.no_http).then(|| {
        (
            args.http_addr,
            HttpOptions {
                allowed_origins: args.allow_origins.clone(),
                max_sessions: args.max_sessions,
                idle_timeout: Duration::from_secs(args.session_idle_secs.max(1)),
                tokens: guard.tokens.clone(),
                any_host: !args.http_addr.ip().is_loopback() && guard.tokens.is_some(),
                ui: !args.no_ui,
                tls: guard.tls.is_some(),
                default_project: match &args.project {
                    Some(name) => crate::views::DefaultProject::Named(name.clone()),
                    None => crate::views::DefaultProject::MostRecent,
                },
            },
        )
    })
}

/// Like [`serve`], and also serves MCP streamable HTTP when `http` is given,
/// every tool call passing `guard`'s gate; each listener keeps to `limits`.
pub async fn serve_with_mcp(
    config: StoreConfig,
    retain: retention::Policy,
    grpc_addr: SocketAddr,
    http: Option<(SocketAddr, HttpOptions)>,
    guard: Guard,
    limits: crate::conn::Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    check_loopback(grpc_addr, "--grpc-addr", guard.tokens.is_some())?;
    if let Some((addr, _)) = &http {
        check_loopback(*addr, "--http-addr", guard.tokens.is_some())?;
    }
    let db = config.location.clone();
    let store = open_store(config).await?;
    // Bind every listener before announcing any, so a taken port fails the
    // start cleanly instead of leaving a half-started server behind.
    let listener = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("--grpc-addr: cannot listen on {grpc_addr}"))?;
    let local = listener.local_addr()?;
    let http = match http {
        Some((addr, options)) => {
            let http_listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("--http-addr: cannot listen on {addr}"))?;
            Some((http_listener, options))
        }
        None => None,
    };
    // Stable lines on stderr: people read them, and tests parse the ports.
    eprintln!(
        "pytest-mcp: gRPC listening on {local}, database {db}{}",
        if guard.tls.is_some() { ", TLS" } else { "" }
    );
    tracing::info!(%local, db = %db, "serving");
    guard.watch_policy(&shutdown);
    retention::spawn(store.clone(), retain, shutdown.clone());
    let server = tokio::spawn(crate::grpc::serve(
        listener,
        store.clone(),
        guard.tokens.clone(),
        guard.tls.as_ref().map(Tls::grpc_config),
        limits,
        shutdown.clone(),
    ));
    let mcp_http = match http {
        Some((http_listener, options)) => {
            let scheme = if guard.tls.is_some() { "https" } else { "http" };
            let local = http_listener.local_addr()?;
            eprintln!(
                "pytest-mcp: MCP HTTP listening on {scheme}://{local}{}",
                crate::mcp::http::PATH
            );
            if options.ui {
                eprintln!("pytest-mcp: web pages at {scheme}://{local}/");
            }
            let http_listener = match &guard.tls {
                Some(tls) => crate::mcp::http::Listener::Tls(http_listener, tls.clone()),
                None => crate::mcp::http::Listener::Plain(http_listener),
            };
            Some(tokio::spawn(crate::mcp::http::serve(
                http_listener,
                store.clone(),
                guard.gate.clone(),
                options,
                limits,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    shutdown.cancelled().await;
    if let Some(task) = mcp_http
        && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
    {
        tracing::warn!("MCP HTTP connections did not close in time; stopping anyway");
    }
    tracing::info!("shutting down: finishing open streams");
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("open connections did not close in time; stopping anyway"),
    }
    store.shutdown().await;
    eprintln!("pytest-mcp: stopped; everything acknowledged is stored");
    Ok(())
}

/// `stdio`: MCP on stdin/stdout until the client closes stdin, with the gRPC
/// listener beside it unless `--no-grpc` or its port is taken (another
/// server already records into the shared database then).
async fn stdio(args: StdioArgs) -> anyhow::Result<ExitCode> {
    let guard = Guard::from_args(&args.security)?;
    let db = args.db.location()?;
    let store = open_store(store_config(
        db.clone(),
        args.sync,
        args.max_field_bytes,
        &args.output,
    ))
    .await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    guard.watch_policy(&shutdown);
    retention::spawn(store.clone(), args.retain.policy(), shutdown.clone());
    let grpc = if args.no_grpc {
        None
    } else {
        check_loopback(args.grpc_addr, "--grpc-addr", guard.tokens.is_some())?;
        match TcpListener::bind(args.grpc_addr).await {
            Ok(listener) => {
                eprintln!(
                    "pytest-mcp: gRPC listening on {}, database {db}{}",
                    listener.local_addr()?,
                    if guard.tls.is_some() { ", TLS" } else { "" }
                );
                Some(tokio::spawn(crate::grpc::serve(
                    listener,
                    store.clone(),
                    guard.tokens.clone(),
                    guard.tls.as_ref().map(Tls::grpc_config),
                    args.connections.limits(1),
                    shutdown.clone(),
                )))
            }
            Err(e) => {
                eprintln!(
                    "pytest-mcp: gRPC address {} is not available ({e}); serving MCP from the \
                     shared database {db} without a gRPC listener",
                    args.grpc_addr,
                );
                None
            }
        }
    };
    let default_project = match &args.project {
        Some(name) => crate::views::DefaultProject::Named(name.clone()),
        None => crate::views::DefaultProject::of_current_directory(),
    };
    let served = crate::mcp::serve_stdio(
        store.clone(),
        guard.gate.clone(),
        default_project,
        shutdown.clone(),
    )
    .await;
    // Stopped by a signal rather than by the client closing stdin.
    let signalled = shutdown.is_cancelled();
    shutdown.cancel();
    if let Some(task) = grpc
        && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
    {
        tracing::warn!("open gRPC connections did not close in time; stopping anyway");
    }
    store.shutdown().await;
    served?;
    if signalled {
        // tokio reads stdin on a blocking thread that nothing can interrupt;
        // with the client's stdin still open the runtime would wait for it
        // forever on the way out. Everything is committed: leave now.
        eprintln!("pytest-mcp: stopped; everything acknowledged is stored");
        std::process::exit(0);
    }
    Ok(ExitCode::SUCCESS)
}

/// The store settings of `serve` and `stdio`.
fn store_config(
    location: crate::store::Location,
    sync: SyncMode,
    max_field_bytes: usize,
    output: &OutputArgs,
) -> StoreConfig {
    StoreConfig {
        location,
        sync: match sync {
            SyncMode::Normal => Sync::Normal,
            SyncMode::Full => Sync::Full,
        },
        max_field_bytes,
        keep_passing_output: output.keep_passing_output,
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let any: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let err = check_loopback(any, "--grpc-addr", false).expect_err("refused");
        assert!(err.to_string().contains("no token is configured"), "{err}");
        assert!(check_loopback(any, "--grpc-addr", true).is_ok());
        let local: SocketAddr = "[::1]:0".parse().expect("addr");
        assert!(check_loopback(local, "--http-addr", false).is_ok());
    }
}
