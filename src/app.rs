//! Wiring: opens the store, starts the listeners, runs the CLI commands, and
//! owns the one shutdown token every part watches.

use anyhow::{Context, bail};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::cli::{
    AuditArgs, Cli, Command, ExportArgs, ExportFormat, HttpArgs, ImportArgs, SecurityArgs,
    SessionsArgs, ShowArgs, StdioArgs, SyncMode,
};
use crate::mcp::PytestMcp;
use crate::mcp::http::HttpOptions;
use crate::model::{SessionRef, TestOutcome};
use crate::policy::{Gate, Policy};
use crate::store::{OutcomeFilter, SessionFilter, Store, StoreConfig, Sync};
use crate::tls::Tls;

/// How long a graceful shutdown may take before the server stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = store_config(args.db.path(), args.sync, args.max_field_bytes);
            let guard = Guard::from_args(&args.security)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let http = http_options(&args.http, &guard);
            serve_with_mcp(config, args.grpc_addr, http, guard, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stdio(args) => stdio(args).await,
        Command::Sessions(args) => sessions(args).await,
        Command::Show(args) => show(args).await,
        Command::Export(args) => export(args).await,
        Command::Import(args) => import(args).await,
        Command::Watch(args) => {
            crate::watch::watch(&args.grpc_addr, &args.session, args.token.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => audit(args).await,
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
    serve_with_mcp(config, grpc_addr, None, Guard::open(), shutdown).await
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
            },
        )
    })
}

/// Like [`serve`], and also serves MCP streamable HTTP when `http` is given,
/// every tool call passing `guard`'s gate.
pub async fn serve_with_mcp(
    config: StoreConfig,
    grpc_addr: SocketAddr,
    http: Option<(SocketAddr, HttpOptions)>,
    guard: Guard,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    check_loopback(grpc_addr, "--grpc-addr", guard.tokens.is_some())?;
    if let Some((addr, _)) = &http {
        check_loopback(*addr, "--http-addr", guard.tokens.is_some())?;
    }
    let db = config.path.clone();
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
        "pytest-mcp: gRPC listening on {local}, database {}{}",
        db.display(),
        if guard.tls.is_some() { ", TLS" } else { "" }
    );
    tracing::info!(%local, db = %db.display(), "serving");
    guard.watch_policy(&shutdown);
    let server = tokio::spawn(crate::grpc::serve(
        listener,
        store.clone(),
        guard.tokens.clone(),
        guard.tls.as_ref().map(Tls::grpc_config),
        shutdown.clone(),
    ));
    let mcp_http = match http {
        Some((http_listener, options)) => {
            eprintln!(
                "pytest-mcp: MCP HTTP listening on {}://{}{}",
                if guard.tls.is_some() { "https" } else { "http" },
                http_listener.local_addr()?,
                crate::mcp::http::PATH
            );
            let http_listener = match &guard.tls {
                Some(tls) => crate::mcp::http::Listener::Tls(tls.listener(http_listener)?),
                None => crate::mcp::http::Listener::Plain(http_listener),
            };
            Some(tokio::spawn(crate::mcp::http::serve(
                http_listener,
                store.clone(),
                guard.gate.clone(),
                options,
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
    let db = args.db.path();
    let store = open_store(store_config(db.clone(), args.sync, args.max_field_bytes)).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    guard.watch_policy(&shutdown);
    let grpc = if args.no_grpc {
        None
    } else {
        check_loopback(args.grpc_addr, "--grpc-addr", guard.tokens.is_some())?;
        match TcpListener::bind(args.grpc_addr).await {
            Ok(listener) => {
                eprintln!(
                    "pytest-mcp: gRPC listening on {}, database {}{}",
                    listener.local_addr()?,
                    db.display(),
                    if guard.tls.is_some() { ", TLS" } else { "" }
                );
                Some(tokio::spawn(crate::grpc::serve(
                    listener,
                    store.clone(),
                    guard.tokens.clone(),
                    guard.tls.as_ref().map(Tls::grpc_config),
                    shutdown.clone(),
                )))
            }
            Err(e) => {
                eprintln!(
                    "pytest-mcp: gRPC address {} is not available ({e}); serving MCP from the \
                     shared database {} without a gRPC listener",
                    args.grpc_addr,
                    db.display()
                );
                None
            }
        }
    };
    let served = crate::mcp::serve_stdio(store.clone(), guard.gate.clone(), shutdown.clone()).await;
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
fn store_config(path: PathBuf, sync: SyncMode, max_field_bytes: usize) -> StoreConfig {
    StoreConfig {
        path,
        sync: match sync {
            SyncMode::Normal => Sync::Normal,
            SyncMode::Full => Sync::Full,
        },
        max_field_bytes,
    }
}

/// Opens (creating if needed) the store off the async runtime.
async fn open_store(config: StoreConfig) -> anyhow::Result<Store> {
    let db = config.path.clone();
    tokio::task::spawn_blocking(move || Store::open(config))
        .await?
        .with_context(|| format!("opening the database {}", db.display()))
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

/// Opens an existing database for a reading command.
async fn open_existing(path: &Path) -> anyhow::Result<Store> {
    if !path.exists() {
        bail!(
            "no database at {} (nothing recorded yet; start `pytest-mcp serve`, or pass --db)",
            path.display()
        );
    }
    open_store(StoreConfig::new(path)).await
}

fn short_time(t: crate::model::Timestamp) -> String {
    let text = t.to_rfc3339();
    // 2026-11-24T09:14:38.123456Z -> 2026-11-24 09:14:38
    text.get(..19).map(|s| s.replace('T', " ")).unwrap_or(text)
}

fn duration_text(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.2}s")
    } else {
        let s = seconds.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db.path()).await?;
    let filter = SessionFilter {
        statuses: args.status.into_iter().collect(),
        project: args.project,
    };
    let page = store.list_sessions(filter, args.limit.max(1), None).await?;
    let mut out = std::io::stdout().lock();
    if page.items.is_empty() {
        writeln!(out, "no sessions recorded in {}", store.path().display())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<19}  {:<11}  {:<6}  {:<16}  {:>7}  {:>7}  {:>6}  {:>6}  {:>7}  {:>9}",
        "ID",
        "STARTED (UTC)",
        "STATUS",
        "SOURCE",
        "PROJECT",
        "TESTS",
        "PASSED",
        "FAILED",
        "ERRORS",
        "SKIPPED",
        "DURATION"
    )?;
    for s in &page.items {
        let mut project = s.environment.project.clone();
        if project.chars().count() > 16 {
            project = project.chars().take(15).collect::<String>() + "…";
        }
        writeln!(
            out,
            "{:<36}  {:<19}  {:<11}  {:<6}  {:<16}  {:>7}  {:>7}  {:>6}  {:>6}  {:>7}  {:>9}",
            s.id,
            short_time(s.started_at),
            s.status.as_str(),
            s.source.as_str(),
            project,
            s.outcomes_stored,
            s.counts.passed,
            s.counts.failed,
            s.counts.errors,
            s.counts.skipped,
            s.summary
                .as_ref()
                .map(|x| duration_text(x.duration))
                .unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db.path()).await?;
    let session_ref = SessionRef::parse(&args.session, "SESSION")?;
    let s = store.get_session(session_ref).await?;
    let mut out = std::io::stdout().lock();
    let env = &s.environment;
    writeln!(out, "session   {}", s.id)?;
    writeln!(out, "status    {} (source {})", s.status, s.source)?;
    writeln!(
        out,
        "started   {}{}",
        short_time(s.started_at),
        s.finished_at
            .map(|f| format!("   finished {}", short_time(f)))
            .unwrap_or_default()
    )?;
    if let Some(grant) = store.session_grant(s.id).await? {
        writeln!(out, "grant     {grant}")?;
    }
    if !env.project.is_empty() || !env.rootdir.is_empty() {
        writeln!(out, "project   {}  {}", env.project, env.rootdir)?;
    }
    if !env.python_version.is_empty() || !env.os.is_empty() {
        writeln!(
            out,
            "python    {} {}  pytest {}  on {}",
            env.python_implementation, env.python_version, env.pytest_version, env.os
        )?;
    }
    if !env.git_commit.is_empty() {
        writeln!(
            out,
            "git       {} {}{}",
            env.git_branch,
            env.git_commit,
            if env.git_dirty == Some(true) {
                " (dirty)"
            } else {
                ""
            }
        )?;
    }
    let c = s.counts;
    writeln!(
        out,
        "stored    {} outcomes: {} passed, {} failed, {} errors, {} skipped, {} xfailed, {} xpassed",
        s.outcomes_stored, c.passed, c.failed, c.errors, c.skipped, c.xfailed, c.xpassed
    )?;
    if let Some(sum) = &s.summary {
        writeln!(
            out,
            "summary   {} tests: {} passed, {} failed, {} errors, {} skipped, {} xfailed, {} xpassed; exit status {}; {}",
            sum.total_tests,
            sum.passed,
            sum.failed,
            sum.errors,
            sum.skipped,
            sum.xfailed,
            sum.xpassed,
            sum.exitstatus,
            duration_text(sum.duration)
        )?;
    }
    if let Some(expected) = s.outcomes_expected
        && expected > s.outcomes_stored
    {
        writeln!(
            out,
            "missing   {} of {} outcomes the client sent are not stored",
            expected - s.outcomes_stored,
            expected
        )?;
    }
    let filter = OutcomeFilter {
        outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
        nodeid_contains: None,
    };
    let mut cursor = None;
    let mut shown = 0usize;
    loop {
        let (_, page) = store
            .list_outcomes(SessionRef::Id(s.id), filter.clone(), 500, cursor)
            .await?;
        for o in &page.items {
            shown += 1;
            writeln!(out)?;
            writeln!(
                out,
                "{} {} [{}{}] {}",
                o.outcome.as_str().to_uppercase(),
                o.nodeid,
                o.phase.map(|p| p.as_str()).unwrap_or("?"),
                if o.attempt > 1 {
                    format!(", attempt {}", o.attempt)
                } else {
                    String::new()
                },
                duration_text(o.duration)
            )?;
            if !o.message.is_empty() {
                writeln!(out, "  {}", o.message)?;
            }
            for line in o.longrepr.lines() {
                writeln!(out, "  | {line}")?;
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    if shown == 0 {
        writeln!(out, "\nno failures")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db.path()).await?;
    let session_ref = SessionRef::parse(&args.session, "SESSION")?;
    let session = store.get_session(session_ref).await?;
    let mut sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("--output: creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        ExportFormat::Json => crate::export::write_json(&store, &session, &mut sink).await?,
        ExportFormat::Junit => crate::export::write_junit(&store, &session, &mut sink).await?,
    }
    sink.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db.path()).await?;
    let rows = store.recent_audit(args.limit.max(1)).await?;
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(
            out,
            "no MCP tool calls recorded in {}",
            store.path().display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<19}  {:<24}  {:<9}  {:<22}  {:<8}  {:<6}  {:>9}  REASON",
        "TIME (UTC)", "GRANT", "TRANSPORT", "TOOL", "DECISION", "RESULT", "DURATION"
    )?;
    let cut = |text: &str, n: usize| -> String {
        if text.chars().count() > n {
            text.chars().take(n - 1).collect::<String>() + "…"
        } else {
            text.to_string()
        }
    };
    for r in &rows {
        let reason = r
            .reason
            .as_deref()
            .and_then(|t| t.lines().next())
            .unwrap_or("");
        writeln!(
            out,
            "{:<19}  {:<24}  {:<9}  {:<22}  {:<8}  {:<6}  {:>9}  {}",
            short_time(r.at),
            cut(&r.grant, 24),
            r.transport,
            cut(&r.tool, 22),
            r.decision,
            r.result.as_deref().unwrap_or("-"),
            format!("{:.1}ms", r.duration_us as f64 / 1000.0),
            cut(reason, 160),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(StoreConfig::new(args.db.path())).await?;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for file in &args.files {
        let report = crate::spool::import_file(&store, file).await?;
        for s in &report.sessions {
            writeln!(
                out,
                "{}: session {} {}: {} outcomes read, {} new, {} stored; {}",
                file.display(),
                s.id,
                if s.created { "created" } else { "existing" },
                s.outcomes_read,
                s.outcomes_new,
                s.outcomes_stored,
                s.status
            )?;
        }
        for e in &report.errors {
            eprintln!("pytest-mcp: import: {e}");
        }
        failed |= !report.errors.is_empty();
    }
    store.shutdown().await;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
