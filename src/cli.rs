//! Command-line interface. Every flag can also be set through its
//! `PYTEST_MCP_*` environment variable; a flag on the command line wins.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Records pytest runs streamed over gRPC and shows them to people and AI agents.
#[derive(Debug, Parser)]
#[command(name = "pytest-mcp", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the database is; shared by every command.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// The database: a SQLite file, or postgres://USER@HOST:PORT/DB (also postgresql://;
    /// the password in the URL or PGPASSWORD; ?sslmode=require&sslrootcert=CA.pem for TLS)
    /// [default: pytest-mcp/pytest-mcp.db in the per-user data directory].
    #[arg(long, env = "PYTEST_MCP_DB", value_name = "PATH|URL")]
    pub db: Option<PathBuf>,
}

impl DbArgs {
    /// The database, explicit or the default file; a bad URL is an error
    /// naming `--db` (without the password).
    pub fn location(&self) -> anyhow::Result<crate::store::Location> {
        match &self.db {
            Some(value) => Ok(crate::store::Location::parse(value.as_os_str())?),
            None => Ok(crate::store::Location::Sqlite(
                crate::store::default_db_path(),
            )),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the recorder: gRPC for the pytest plugin and grpcurl, MCP over HTTP for agents.
    Serve(ServeArgs),
    /// Serve MCP on stdin/stdout for an agent that starts this process (plus the gRPC listener).
    Stdio(StdioArgs),
    /// List the projects recorded, the most recently active first.
    Projects(ProjectsArgs),
    /// List recent sessions as a table.
    Sessions(SessionsArgs),
    /// Show a session's summary and its failures with tracebacks.
    Show(ShowArgs),
    /// Tests that passed and failed on the same code lately (as find_flaky_tests).
    Flaky(FlakyArgs),
    /// The tests a change needs, each with its reason (as affected_tests).
    Affected(AffectedArgs),
    /// Compare two sessions: new failures, fixed, new causes, slower (as compare_sessions).
    Compare(CompareArgs),
    /// One test across the project's sessions, with its verdict (as get_test_history).
    History(HistoryArgs),
    /// A session's failures grouped by cause (as get_failure_clusters).
    Causes(CausesArgs),
    /// A session's slowest tests (as slowest_tests).
    Slowest(SlowestArgs),
    /// Tests that ran much slower than usual (as duration_regressions).
    Regressions(RegressionsArgs),
    /// Export a session as JSON or JUnit XML.
    Export(ExportArgs),
    /// Replay spool files written by the pytest plugin into the database (idempotent).
    Import(ImportArgs),
    /// Follow a session live: a progress line and each failure as it arrives.
    Watch(WatchArgs),
    /// Show the newest MCP tool calls: who called what, and what the policy decided.
    Audit(AuditArgs),
    /// Delete old sessions to keep the database small; running and pinned sessions are always kept.
    Prune(PruneArgs),
    /// Keep a session out of every pruning.
    Pin(PinArgs),
    /// Let pruning delete a pinned session again.
    Unpin(PinArgs),
    /// Quarantine tests: they still run, but in `pytest --mcp --mcp-quarantine`
    /// their failures do not fail the run.
    Quarantine(QuarantineArgs),
}

/// `quarantine` subcommands.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: QuarantineAction,
}

/// What `quarantine` does.
#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// Quarantine a test (a nodeid or an fnmatch pattern), or renew its entry.
    Add(QuarantineAddArgs),
    /// List the entries that apply now, and which can be released.
    List(QuarantineListArgs),
    /// End a test's quarantine.
    Remove(QuarantineRemoveArgs),
}

/// `quarantine add` options.
#[derive(Debug, Args)]
pub struct QuarantineAddArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// The test's nodeid, or an fnmatch pattern of nodeids ('tests/test_db.py::*').
    #[arg(value_name = "NODEID|PATTERN")]
    pub nodeid: String,
    /// Why it is quarantined.
    #[arg(long)]
    pub reason: String,
    /// How many days it lasts (1 to 90); it stops applying by itself then.
    #[arg(long, default_value_t = crate::store::quarantine::DEFAULT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::store::quarantine::MAX_DAYS)))]
    pub days: u32,
    /// Only for this project (the rootdir's name) [default: every project].
    #[arg(long)]
    pub project: Option<String>,
    /// Who is adding it [default: $USER].
    #[arg(long)]
    pub by: Option<String>,
}

/// `quarantine list` options.
#[derive(Debug, Args)]
pub struct QuarantineListArgs {
    /// Database and the project whose entries (its own and those for every project) apply.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Show expired entries too.
    #[arg(long)]
    pub all: bool,
}

/// `quarantine remove` options.
#[derive(Debug, Args)]
pub struct QuarantineRemoveArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// The nodeid or pattern exactly as it was added.
    #[arg(value_name = "NODEID|PATTERN")]
    pub nodeid: String,
    /// The project it was added for [default: the entry for every project].
    #[arg(long)]
    pub project: Option<String>,
}

/// `prune` options.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("rule").required(true).multiple(true).args(["keep_sessions", "older_than"])))]
pub struct PruneArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// Keep the newest N sessions of each project; delete the older ones.
    #[arg(long, value_name = "N")]
    pub keep_sessions: Option<usize>,
    /// Delete sessions that started longer ago than this: 30d, 12h, 90m, 45s or 2w.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Only prune this project's sessions.
    #[arg(long)]
    pub project: Option<String>,
    /// Print what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `pin` and `unpin` options.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Database and project.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// A session id (or its first 8+ hex digits), or `latest` of the project.
    pub session: String,
}

/// How much history `serve` and `stdio` keep, pruning in the background.
#[derive(Debug, Clone, Args)]
pub struct RetainArgs {
    /// Keep the newest N sessions of each project; older ones are pruned in the background.
    #[arg(long, env = "PYTEST_MCP_RETAIN_SESSIONS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_sessions: Option<u64>,
    /// Prune sessions that started more than D days ago, in the background.
    #[arg(long, env = "PYTEST_MCP_RETAIN_DAYS", value_name = "D", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_days: Option<u64>,
}

impl RetainArgs {
    /// The policy the background pruner follows (empty: keep everything).
    pub fn policy(&self) -> crate::store::retention::Policy {
        crate::store::retention::Policy {
            keep_sessions: self
                .retain_sessions
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            older_than: self
                .retain_days
                .map(|d| Duration::from_secs(d.saturating_mul(86_400))),
            project: None,
        }
    }
}

/// What is kept of captured output; shared by the commands that store outcomes.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Keep the captured stdout, stderr and log of passing tests too; by default only tests that did not pass keep theirs, as pytest shows it.
    #[arg(long, env = "PYTEST_MCP_KEEP_PASSING_OUTPUT")]
    pub keep_passing_output: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::store::retention::parse_duration(text)
}

/// `audit` options.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// How many calls to show, newest first.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
}

/// `import` options.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// Spool files (JSON lines, see docs/spool.md).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The source new sessions are recorded as: `import` (a replay), or
    /// `plugin` (the plugin's own local recording, when no recorder listened).
    #[arg(long, value_enum, default_value = "import", hide = true)]
    pub source: ImportSource,
    /// What is kept of captured output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What `import` records new sessions as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportSource {
    /// Replayed from a spool file.
    Import,
    /// The plugin's own run, stored locally because no recorder was listening.
    Plugin,
}

impl From<ImportSource> for crate::model::Source {
    fn from(s: ImportSource) -> Self {
        match s {
            ImportSource::Import => crate::model::Source::Import,
            ImportSource::Plugin => crate::model::Source::Plugin,
        }
    }
}

/// `watch` options.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Address of the running recorder.
    #[arg(long, env = "PYTEST_MCP_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: String,
    /// Bearer token, when the recorder requires one.
    #[arg(
        long,
        env = "PYTEST_MCP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The project whose `latest` to follow [default: the project of the
    /// current directory, found as pytest finds its rootdir].
    #[arg(long, env = "PYTEST_MCP_PROJECT", value_name = "NAME")]
    pub project: Option<String>,
    /// A session id (or its first 8+ hex digits), or `latest`: the
    /// project's running session, else the next one to start.
    #[arg(default_value = "latest")]
    pub session: String,
}

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// Survives a crash of the server process; a power loss may lose the last commits.
    Normal,
    /// fsync on every commit; survives a power loss.
    Full,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address for the gRPC listener (loopback only, unless tokens are configured).
    #[arg(long, env = "PYTEST_MCP_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Durability of each commit.
    #[arg(long, env = "PYTEST_MCP_SYNC", value_enum, default_value = "normal")]
    pub sync: SyncMode,
    /// Bound for each traceback, crash message and captured output, in bytes; longer text is cut with a marker.
    #[arg(long, env = "PYTEST_MCP_MAX_FIELD_BYTES", default_value_t = crate::model::DEFAULT_MAX_FIELD_BYTES)]
    pub max_field_bytes: usize,
    /// What is kept of captured output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How much history is kept.
    #[command(flatten)]
    pub retain: RetainArgs,
    /// MCP over HTTP.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Policy and credentials.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Connection limits of both listeners.
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// Connection limits, each applying to every listener on its own.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Most connections each listener (gRPC, MCP HTTP) holds at once. Past
    /// it, the oldest connection that has not sent a complete request is
    /// closed, else new ones wait. Lowered at start when the process's
    /// descriptor limit cannot hold both listeners' plus a reserve of 512.
    #[arg(long, env = "PYTEST_MCP_MAX_CONNECTIONS", default_value_t = crate::conn::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client has to send its HTTP request headers (or its gRPC
    /// connection preface); an HTTP connection idle between requests is
    /// closed after as long.
    #[arg(long, env = "PYTEST_MCP_HEADER_TIMEOUT_SECS", default_value_t = crate::conn::DEFAULT_HEADER_TIMEOUT.as_secs())]
    pub header_timeout_secs: u64,
}

impl ConnectionArgs {
    /// The limits these flags set, fitted to the descriptor limit for
    /// `listeners` listeners.
    pub fn limits(&self, listeners: u64) -> crate::conn::Limits {
        crate::conn::Limits {
            max_connections: self.max_connections.max(1),
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs.max(1)),
        }
        .fitted(listeners)
    }
}

/// The policy gate and credentials of `serve` and `stdio`.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// Policy file (PolicyLayer's policy.json format) deciding which MCP tools may be called, and how often; reloaded when it changes.
    #[arg(long, env = "PYTEST_MCP_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Bearer token every gRPC call and MCP HTTP request must carry (grant "default"); prefer the variable, a flag shows in `ps`.
    #[arg(
        long,
        env = "PYTEST_MCP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "tokens"
    )]
    pub token: Option<String>,
    /// JSON file mapping grant names to tokens, e.g. {"ci": "…", "agent": "…"}.
    #[arg(long, env = "PYTEST_MCP_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// PEM certificate chain: serve gRPC and MCP HTTP over TLS (with --tls-key).
    #[arg(
        long,
        env = "PYTEST_MCP_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "PYTEST_MCP_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// MCP streamable HTTP options of `serve`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address for MCP streamable HTTP, served at /mcp (loopback only unless tokens are configured; port 0 picks a free one).
    #[arg(long, env = "PYTEST_MCP_HTTP_ADDR", default_value = "127.0.0.1:8765")]
    pub http_addr: SocketAddr,
    /// Do not serve MCP over HTTP (nor the web pages, which share its listener).
    #[arg(long, env = "PYTEST_MCP_NO_HTTP")]
    pub no_http: bool,
    /// Do not serve the web pages at / on the HTTP listener (MCP stays at /mcp).
    #[arg(long, env = "PYTEST_MCP_NO_UI")]
    pub no_ui: bool,
    /// A browser origin allowed to call the MCP endpoint besides loopback ones, as scheme://host:port (repeatable).
    #[arg(long = "allow-origin", env = "PYTEST_MCP_ALLOW_ORIGIN", value_delimiter = ',', value_name = "ORIGIN", value_parser = parse_origin)]
    pub allow_origins: Vec<String>,
    /// The project MCP reads and the pages are about when they name none
    /// [default: the most recently active project].
    #[arg(long, env = "PYTEST_MCP_PROJECT", value_name = "NAME")]
    pub project: Option<String>,
    /// Most MCP HTTP sessions open at once; more get 503.
    #[arg(long, env = "PYTEST_MCP_MAX_SESSIONS", default_value_t = 64)]
    pub max_sessions: usize,
    /// Seconds after which an MCP HTTP session with no traffic is closed.
    #[arg(long, env = "PYTEST_MCP_SESSION_IDLE_SECS", default_value_t = 600)]
    pub session_idle_secs: u64,
}

/// `stdio` options.
#[derive(Debug, Args)]
pub struct StdioArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address for the gRPC listener run beside MCP (loopback only, unless tokens are configured).
    #[arg(long, env = "PYTEST_MCP_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Serve MCP only, without the gRPC listener.
    #[arg(long)]
    pub no_grpc: bool,
    /// The project MCP reads are about when they name none [default: the
    /// project of the current directory, found as pytest finds its rootdir].
    #[arg(long, env = "PYTEST_MCP_PROJECT", value_name = "NAME")]
    pub project: Option<String>,
    /// Durability of each commit.
    #[arg(long, env = "PYTEST_MCP_SYNC", value_enum, default_value = "normal")]
    pub sync: SyncMode,
    /// Bound for each traceback, crash message and captured output, in bytes.
    #[arg(long, env = "PYTEST_MCP_MAX_FIELD_BYTES", default_value_t = crate::model::DEFAULT_MAX_FIELD_BYTES)]
    pub max_field_bytes: usize,
    /// What is kept of captured output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How much history is kept.
    #[command(flatten)]
    pub retain: RetainArgs,
    /// Policy and credentials (tokens guard the gRPC listener; stdio itself needs none).
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Connection limits of the gRPC listener.
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

fn parse_origin(text: &str) -> Result<String, String> {
    crate::mcp::http::check_origin(text).map(|()| text.to_string())
}

/// How a reading command prints what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: the text the MCP tool answers with.
    Text,
    /// For programs: the MCP tool's structured result, as JSON.
    Json,
}

/// The database and the project a reading command reads; shared by them all.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// The project (its rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively) [default: the project of the current
    /// directory, found as pytest finds its rootdir].
    #[arg(long, env = "PYTEST_MCP_PROJECT", value_name = "NAME")]
    pub project: Option<String>,
}

impl ScopeArgs {
    /// The project reads default to when `--project` names none.
    pub fn default_project(&self) -> crate::views::DefaultProject {
        crate::views::DefaultProject::of_current_directory()
    }
}

/// Options of the commands that render a view.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// Database and project.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "text")]
    pub format: Format,
}

/// `projects` options.
#[derive(Debug, Args)]
pub struct ProjectsArgs {
    /// Database and project.
    #[command(flatten)]
    pub view: ViewArgs,
}

/// `sessions` options.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Database and project.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// How many sessions to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    /// Only sessions with this status.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<crate::model::SessionStatus>,
    /// Every project's sessions, not only one project's.
    #[arg(long, conflicts_with = "project")]
    pub all_projects: bool,
}

/// `show` options.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Database and project.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// A session id (or its first 8+ hex digits), or `latest` of the project.
    #[arg(default_value = "latest")]
    pub session: String,
    /// Most failures to print with their tracebacks; the rest are counted.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
}

/// `flaky` options.
#[derive(Debug, Args)]
pub struct FlakyArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// How many of the project's newest sessions to look at (at most 1000).
    #[arg(long, default_value_t = 30)]
    pub window: u32,
    /// Most tests to list (at most 100).
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: u32,
}

/// `affected` options. With none of --diff, --files and --rev, the working
/// tree of the current directory's project is compared with the code each
/// test last ran (this needs the project's Python with the plugin).
#[derive(Debug, Args)]
pub struct AffectedArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// The change as a unified diff in FILE (`-`: standard input), e.g. `git diff main | pytest-mcp affected --diff -`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["files", "rev"])]
    pub diff: Option<PathBuf>,
    /// The change as changed files (relative to the rootdir).
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "rev")]
    pub files: Vec<String>,
    /// The change as a git revision (the working tree against it) or range BASE..HEAD.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// The node ids collected now, one per line in FILE (`pytest --collect-only -q`), to select new tests.
    #[arg(long, value_name = "FILE")]
    pub collected: Option<PathBuf>,
    /// A glob of files whose change selects every test (repeatable; replaces the defaults).
    #[arg(long, value_name = "GLOB")]
    pub watch: Vec<String>,
    /// The Python that reads the working tree (one with the pytest-mcp plugin installed).
    #[arg(long, env = "PYTEST_MCP_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// List every selected test, not only what fits an agent's answer.
    #[arg(long)]
    pub all: bool,
}

/// `compare` options.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// The older session [default: the one before HEAD, on its branch when it has one].
    pub base: Option<String>,
    /// The newer session [default: latest].
    pub head: Option<String>,
    /// Most entries per list (at most 500).
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: u32,
}

/// `history` options.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// The test's pytest node id.
    pub nodeid: String,
    /// Most runs to list, newest first (at most 200).
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: u32,
    /// How many of the newest pass/fail runs the verdict is based on (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub window: u32,
    /// Where the previous page ended (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `causes` options.
#[derive(Debug, Args)]
pub struct CausesArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// A session id (or its first 8+ hex digits), or `latest` of the project.
    #[arg(default_value = "latest")]
    pub session: String,
    /// Most causes to list, the largest first (at most 100).
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: u32,
}

/// `slowest` options.
#[derive(Debug, Args)]
pub struct SlowestArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// A session id (or its first 8+ hex digits), or `latest` of the project.
    #[arg(default_value = "latest")]
    pub session: String,
    /// How many tests (at most 100).
    #[arg(long, short = 'n', default_value_t = 10)]
    pub limit: u32,
}

/// `regressions` options.
#[derive(Debug, Args)]
pub struct RegressionsArgs {
    /// Database, project and format.
    #[command(flatten)]
    pub view: ViewArgs,
    /// A session id (or its first 8+ hex digits), or `latest` of the project.
    #[arg(default_value = "latest")]
    pub session: String,
    /// Slower means more than this many times a test's median...
    #[arg(long, default_value_t = 3.0)]
    pub ratio: f64,
    /// ...and more than this many seconds over it.
    #[arg(long, default_value_t = 0.25)]
    pub floor: f64,
    /// Earlier sessions (same project and branch) whose passing runs make the median.
    #[arg(long, default_value_t = 10)]
    pub window: u32,
    /// Most tests to list (at most 200).
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: u32,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The session and every outcome as one JSON document.
    Json,
    /// JUnit XML, one testcase per outcome, for CI dashboards.
    Junit,
}

/// `export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Database and project.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// A session id (or its first 8+ hex digits), or `latest` of the project.
    #[arg(default_value = "latest")]
    pub session: String,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "json")]
    pub format: ExportFormat,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn parse_status(text: &str) -> Result<crate::model::SessionStatus, String> {
    text.parse()
}
