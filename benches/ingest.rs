//! Ingest benchmark: how many outcomes per second reach the recorder once
//! its database holds history, what that costs the server in memory, and how
//! many bytes each stored outcome takes on disk.
//!
//! A suite of `BENCH_SUITE` tests (default 10,000; realistic nodeids, 2 %
//! failing with tracebacks and captured output, skips with reasons, xfails,
//! setup errors, markers, captured output on some passing tests) is run again
//! and again, each run a session of its own:
//! - `BENCH_HISTORY` runs (default 0) go into the database first, untimed, so
//!   it holds the history users live with;
//! - then `BENCH_OUTCOMES` outcomes (default 1,000,000, i.e. 100 runs of the
//!   default suite) are streamed on one connection, every session started
//!   first, and the clock stops at the ack of the last batch, which the
//!   server sends only after that batch is committed.
//!
//! `BENCH_ORDER=random` shuffles every run on its own, as pytest-randomly or
//! xdist do; `collection` (the default) keeps pytest's order.
//!
//! Modes (`BENCH_MODE`, default `both`):
//! - `raw`: the same streams into an in-process tonic server that acks each
//!   batch at once and stores nothing — the ceiling set by gRPC alone;
//! - `store`: the real `pytest-mcp serve` binary on a SQLite file in the
//!   temporary directory (or `BENCH_SERVER_BIN`, another binary to compare).
//!   When the configured run has history or a random order, the store is
//!   also measured in collection order into an empty database, the baseline
//!   the target compares with (`BENCH_BASELINE=0` skips it).
//!
//! `BENCH_DB=postgres://USER@HOST:PORT/DB` measures PostgreSQL too: each store
//! run gets a fresh database created on that server (the URL's database is
//! only connected to, to create it), and the store is measured with one
//! replica and with two `serve` processes on one database at once (the
//! measured runs split between them, streamed concurrently), beside SQLite
//! with the same history, in one table. `scripts/pg-server start DIR` makes
//! a throwaway server. `PYTEST_MCP_PG_BULK=unnest` (passed on to the server)
//! writes rows with INSERT … UNNEST instead of binary COPY.
//!
//! `BENCH_DEPS=1` has every outcome carry its test's dependencies, as the
//! plugin's `--mcp-deps` sends them: `BENCH_DEPS_UNITS` unit keys per test
//! (default 60) out of a project's pool of `BENCH_DEPS_POOL` units (default
//! 3,000), the same set for a test run after run, except one test in a
//! hundred whose set changes every tenth run (one of its units is edited: a
//! new unit). Each run declares each unit once, in its first batch that
//! names it, as a plugin does per session (`BENCH_DEPS_DECLARE=once`:
//! once per stream of runs instead, to see what declaring costs). Off by
//! default, so the figures without dependencies stay reproducible.
//!
//! Run with `cargo bench --bench ingest`; the figures in the README come from
//! `BENCH_HISTORY=200 BENCH_ORDER=random cargo bench --bench ingest`. It
//! prints a table and never fails on a slow result: timing verdicts are for
//! people. It does fail when the server loses or miscounts outcomes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use prost::Message;
use pytest_mcp::grpc::pb;
use pytest_mcp::grpc::pb::recorder_client::RecorderClient;
use pytest_mcp::grpc::pb::recorder_server::{Recorder, RecorderServer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The targets, printed next to the measurements.
const TARGET_STORE_RATE: f64 = 250_000.0;
const TARGET_BASELINE_RATIO: f64 = 1.3;
const TARGET_PEAK_MIB: f64 = 50.0;
const TARGET_PLAIN_BYTES: f64 = 80.0;
const TARGET_MIB_PER_MILLION: f64 = 100.0;
const TARGET_PG_RATE: f64 = 100_000.0;
/// "No loss of rate with history": within noise of the empty database.
const TARGET_PG_HISTORY_RATIO: f64 = 1.15;

/// Largest message either side accepts; the server binary uses the same bound.
const MAX_MESSAGE_BYTES: usize = pytest_mcp::grpc::MAX_MESSAGE_BYTES;

/// How often the server's resident memory is sampled during a run.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Store,
}

/// The order tests run in within one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// pytest's default: module by module, each module's tests in file order.
    Collection,
    /// Shuffled across the whole suite, a new order every run, as with pytest-randomly.
    Random,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Collection => "collection",
            Order::Random => "random",
        }
    }
}

/// What the suite's tests look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The realistic suite described in the module docs.
    Realistic,
    /// Every test passes and prints nothing: the floor of bytes per outcome.
    Plain,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Realistic => "realistic",
            Shape::Plain => "plain",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    outcomes: u64,
    suite: u64,
    history: u64,
    batch: usize,
    modes: Vec<Mode>,
    order: Order,
    shape: Shape,
    baseline: bool,
    /// A PostgreSQL server to measure as well (`BENCH_DB`).
    postgres: Option<String>,
    /// Dependencies per outcome (`BENCH_DEPS=1`): units per test and pool size.
    deps: Option<(u64, u64)>,
}

/// Which database a store run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Db {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on this PostgreSQL server, with this many replicas.
    Postgres { server: String, replicas: usize },
}

impl Db {
    fn name(&self) -> String {
        match self {
            Db::Sqlite => "sqlite".into(),
            Db::Postgres { replicas, .. } => format!("pg x{replicas}"),
        }
    }
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let outcomes = env_number("BENCH_OUTCOMES", 1_000_000)?;
        let suite = env_number("BENCH_SUITE", 10_000)?;
        let history = env_number("BENCH_HISTORY", 0)?;
        let batch = env_number("BENCH_BATCH", 500)?;
        ensure!(outcomes > 0, "BENCH_OUTCOMES must be at least 1");
        ensure!(suite > 0, "BENCH_SUITE must be at least 1");
        ensure!(batch > 0, "BENCH_BATCH must be at least 1");
        let modes = match std::env::var("BENCH_MODE").as_deref() {
            Err(_) | Ok("") | Ok("both") => vec![Mode::Raw, Mode::Store],
            Ok("raw") => vec![Mode::Raw],
            Ok("store") => vec![Mode::Store],
            Ok(other) => bail!("BENCH_MODE={other:?}: expected both, raw or store"),
        };
        let order = match std::env::var("BENCH_ORDER").as_deref() {
            Err(_) | Ok("") | Ok("collection") => Order::Collection,
            Ok("random") => Order::Random,
            Ok(other) => bail!("BENCH_ORDER={other:?}: expected collection or random"),
        };
        let shape = match std::env::var("BENCH_SHAPE").as_deref() {
            Err(_) | Ok("") | Ok("realistic") => Shape::Realistic,
            Ok("plain") => Shape::Plain,
            Ok(other) => bail!("BENCH_SHAPE={other:?}: expected realistic or plain"),
        };
        let baseline = match std::env::var("BENCH_BASELINE").as_deref() {
            Ok("0") => false,
            _ => history > 0 || order == Order::Random,
        };
        let deps = match std::env::var("BENCH_DEPS").as_deref() {
            Err(_) | Ok("") | Ok("0") => None,
            Ok("1") => {
                let units = env_number("BENCH_DEPS_UNITS", 60)?;
                let pool = env_number("BENCH_DEPS_POOL", 3_000)?;
                ensure!(
                    units > 0 && pool > 0,
                    "BENCH_DEPS_UNITS and BENCH_DEPS_POOL must be at least 1"
                );
                Some((units, pool))
            }
            Ok(other) => bail!("BENCH_DEPS={other:?}: expected 0 or 1"),
        };
        let postgres = std::env::var("BENCH_DB").ok().filter(|v| !v.is_empty());
        if let Some(url) = &postgres {
            ensure!(
                pytest_mcp::store::location::is_postgres_url(url),
                "BENCH_DB={url:?}: expected a postgres:// URL (SQLite is always measured)"
            );
        }
        Ok(Config {
            outcomes,
            suite,
            history,
            batch: usize::try_from(batch)?,
            modes,
            order,
            shape,
            baseline,
            postgres,
            deps,
        })
    }

    /// Runs of the suite the measured part streams.
    fn runs(&self) -> u64 {
        self.outcomes.div_ceil(self.suite)
    }
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={text:?} is not a whole number")),
        _ => Ok(default),
    }
}

// ---------------------------------------------------------------------------
// Outcome generation

/// A small deterministic generator (SplitMix64): the same outcomes every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const CLASSES: &[&str] = &[
    "TestThing",
    "TestApi",
    "TestModels",
    "TestSerializer",
    "TestCache",
    "TestAuthFlow",
    "TestQueryBuilder",
    "TestMigrations",
];
const NAMES: &[&str] = &[
    "test_case",
    "test_roundtrip",
    "test_rejects_bad_input",
    "test_handles_empty",
    "test_paginates",
    "test_retries_on_timeout",
    "test_default_values",
    "test_unicode_names",
];
const PARAMS: &[&str] = &["param", "sqlite", "postgres", "utf8", "large", "x"];
const SKIP_REASONS: &[&str] = &[
    "Skipped: requires postgres",
    "Skipped: not supported on this platform",
    "Skipped: slow test, use --runslow",
    "Skipped: network access disabled",
];

// ---------------------------------------------------------------------------
// The suite and its runs

/// Tests in one generated module, and modules in one package directory.
const TESTS_PER_MODULE: u64 = 250;
const MODULES_PER_PACKAGE: u64 = 100;

/// What a test of the suite does run after run.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Passes; prints a line now and then (5 % of its runs).
    Passer,
    /// Fails in 70 % of its runs (a traceback and captured output), else passes.
    Failer,
    /// Skipped in setup, always with the same reason.
    Skipper(&'static str),
    /// An expected failure, always.
    Xfailer(u64),
    /// Its fixture setup raises, always.
    Errorer,
}

/// One test of the suite.
#[derive(Debug, Clone)]
struct TestDef {
    nodeid: String,
    file: String,
    class: &'static str,
    name: &'static str,
    param: &'static str,
    line: u32,
    kind: Kind,
}

/// Stored outcomes counted by kind, to check what the server says it stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
    errors: u64,
    xfailed: u64,
}

/// Builds the suite: the same tests every time for the same size and shape.
fn build_suite(n: u64, shape: Shape) -> Vec<TestDef> {
    let mut rng = Rng(0x5EED_0F7E_5700);
    (0..n)
        .map(|i| {
            let (module, position) = (i / TESTS_PER_MODULE, i % TESTS_PER_MODULE);
            let file = format!(
                "tests/pkg_{:02}/test_mod_{:03}.py",
                module / MODULES_PER_PACKAGE,
                module % MODULES_PER_PACKAGE
            );
            // Classes hold 32 tests; each test function is parametrized 4 ways.
            let class = CLASSES[(position / 32) as usize % CLASSES.len()];
            let name = NAMES[(position / 4) as usize % NAMES.len()];
            let param = PARAMS[(position % 4) as usize];
            let nodeid = format!("{file}::{class}::{name}[{param}-{position}]");
            let line = 10 + (position / 4) as u32 * 12;
            let roll = rng.below(1000);
            let kind = match shape {
                Shape::Plain => Kind::Passer,
                Shape::Realistic if roll < 930 => Kind::Passer,
                Shape::Realistic if roll < 950 => Kind::Failer,
                Shape::Realistic if roll < 980 => Kind::Skipper(rng.pick(SKIP_REASONS)),
                Shape::Realistic if roll < 990 => Kind::Xfailer(rng.below(5000)),
                Shape::Realistic => Kind::Errorer,
            };
            TestDef {
                nodeid,
                file,
                class,
                name,
                param,
                line,
                kind,
            }
        })
        .collect()
}

/// Base of every session's start: 2026-01-01T00:00:00Z.
const BASE_MICROS: i64 = 1_767_225_600_000_000;

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// What each test of the suite depends on (`BENCH_DEPS=1`).
struct Deps {
    /// Each test's unit keys (out of the pool, keys 1..=pool).
    base: Vec<Vec<u64>>,
    /// With `BENCH_DEPS_DECLARE=once`, the units declared so far on this
    /// stream of runs (each unit once per stream, not once per run).
    stream: Option<std::sync::Mutex<std::collections::HashSet<u64>>>,
}

impl Deps {
    fn new(suite: usize, units: u64, pool: u64) -> Deps {
        let mut rng = Rng(0xDE95_0001);
        let base = (0..suite)
            .map(|_| (0..units).map(|_| rng.below(pool) + 1).collect())
            .collect();
        let stream = (std::env::var("BENCH_DEPS_DECLARE").as_deref() == Ok("once"))
            .then(|| std::sync::Mutex::new(std::collections::HashSet::new()));
        Deps { base, stream }
    }

    /// Test `t`'s unit keys in run `run`: one test in a hundred has its
    /// first unit edited every tenth run (the edit is another unit).
    fn of(&self, t: usize, run: u64) -> Vec<u64> {
        let mut keys = self.base[t].clone();
        let version = if t.is_multiple_of(100) { run / 10 } else { 0 };
        if version > 0
            && let Some(first) = keys.first_mut()
        {
            *first |= version << 32;
        }
        keys
    }

    /// The unit a key stands for: an edited unit (high bits set) is the same
    /// function with other code.
    fn unit(key: u64) -> pb::CodeUnit {
        let base = key & 0xFFFF_FFFF;
        let line = (base % 300) as u32 * 10 + 1;
        pb::CodeUnit {
            key: key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995,
            code: (key ^ 0xC0DE).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            kind: pb::UnitKind::Function as i32,
            path: format!("src/pkg_{:02}/mod_{:03}.py", base % 20, base % 150),
            name: format!("Handler{}.method_{base}", base % 40),
            line_start: line,
            line_end: line + 8,
            checksum: format!("{:016x}{:016x}", key.wrapping_mul(31), key ^ 0xFEED),
        }
    }

    /// The wire key of a unit key (what outcomes name).
    fn wire_key(key: u64) -> u64 {
        Deps::unit(key).key
    }
}

/// One run of the suite as a session: its start, and its outcomes in `batch`-sized messages.
struct RunData {
    id: String,
    started_micros: i64,
    batches: Vec<pb::StreamOutcomesRequest>,
    counts: Counts,
    outcomes: u64,
}

/// Run number `run` of `suite`: each test's outcome depends on the run, not
/// on the order; the order is collection order or this run's own shuffle.
fn make_run(
    suite: &[TestDef],
    run: u64,
    order: Order,
    shape: Shape,
    batch: usize,
    deps: Option<&Deps>,
) -> RunData {
    let mut rng = Rng(0xC0FF_EE00 ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut positions: Vec<usize> = (0..suite.len()).collect();
    if order == Order::Random {
        for i in (1..positions.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            positions.swap(i, j);
        }
    }
    let started_micros = BASE_MICROS + run as i64 * 600_000_000;
    let id = uuid::Uuid::new_v4().to_string();
    let mut counts = Counts::default();
    let mut batches = Vec::with_capacity(suite.len().div_ceil(batch));
    let mut current = Vec::with_capacity(batch);
    // Units this run declared already, and those its current batch declares.
    let mut declared: std::collections::HashSet<u64> = deps
        .and_then(|d| d.stream.as_ref())
        .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner())))
        .unwrap_or_default();
    let mut units: Vec<pb::CodeUnit> = Vec::new();
    for (k, &p) in positions.iter().enumerate() {
        let seq = k as u64 + 1;
        let micros = started_micros + seq as i64 * 2_500;
        let mut o = outcome(&mut rng, &suite[p], seq, micros, shape, &mut counts);
        if let Some(deps) = deps {
            let keys = deps.of(p, run);
            for key in &keys {
                if declared.insert(*key) {
                    units.push(Deps::unit(*key));
                }
            }
            o.deps = Some(pb::TestDependencies {
                units: keys.into_iter().map(Deps::wire_key).collect(),
            });
        }
        current.push(o);
        if current.len() == batch || k + 1 == positions.len() {
            batches.push(pb::StreamOutcomesRequest {
                session_id: id.clone(),
                outcomes: std::mem::replace(&mut current, Vec::with_capacity(batch)),
                units: std::mem::take(&mut units),
            });
        }
    }
    if let Some(stream) = deps.and_then(|d| d.stream.as_ref()) {
        *stream.lock().unwrap_or_else(|p| p.into_inner()) = declared;
    }
    RunData {
        id,
        started_micros,
        batches,
        counts,
        outcomes: suite.len() as u64,
    }
}

fn outcome(
    rng: &mut Rng,
    t: &TestDef,
    seq: u64,
    micros: i64,
    shape: Shape,
    counts: &mut Counts,
) -> pb::Outcome {
    // Most tests take a millisecond or two; a few take much longer.
    let duration = 0.0002 + rng.unit().powi(4) * 0.5;
    let mut o = pb::Outcome {
        seq,
        nodeid: t.nodeid.clone(),
        outcome: pb::TestOutcome::Passed as i32,
        phase: pb::Phase::Call as i32,
        duration,
        line: t.line,
        markers: vec!["parametrize".to_string()],
        attempt: 1,
        started_at: Some(timestamp(micros)),
        file: t.file.clone(),
        ..Default::default()
    };
    let fails = matches!(t.kind, Kind::Failer) && rng.below(10) < 7;
    match t.kind {
        Kind::Passer | Kind::Failer if !fails => {
            counts.passed += 1;
            if shape == Shape::Realistic && rng.below(20) == 0 {
                o.stdout = format!("connecting to fixture db {}\nok\n", rng.below(100));
            }
        }
        Kind::Passer | Kind::Failer => {
            counts.failed += 1;
            let (got, want) = (rng.below(1000), rng.below(1000));
            o.outcome = pb::TestOutcome::Failed as i32;
            o.message = format!("AssertionError: assert {got} == {want}");
            o.longrepr = traceback(&t.file, t.class, t.name, t.param, t.line, got, want);
            o.stdout = format!(
                "request id {}\nresponse status {got}\nretrying once\nresponse status {got}\n",
                rng.next()
            );
        }
        Kind::Skipper(reason) => {
            counts.skipped += 1;
            o.outcome = pb::TestOutcome::Skipped as i32;
            o.phase = pb::Phase::Setup as i32;
            o.message = reason.to_string();
            o.markers.push("skipif".to_string());
        }
        Kind::Xfailer(bug) => {
            counts.xfailed += 1;
            o.outcome = pb::TestOutcome::Xfailed as i32;
            o.message = format!("reason: known bug #{bug}");
            o.markers.push("xfail".to_string());
        }
        Kind::Errorer => {
            counts.errors += 1;
            o.outcome = pb::TestOutcome::Error as i32;
            o.phase = pb::Phase::Setup as i32;
            o.message = "ConnectionRefusedError: [Errno 111] Connection refused".to_string();
            o.longrepr = traceback(&t.file, t.class, t.name, t.param, t.line, 111, 0);
        }
    }
    o
}

/// A pytest-style long representation of about 1.5 KB.
fn traceback(
    file: &str,
    class: &str,
    name: &str,
    param: &str,
    line: u32,
    got: u64,
    want: u64,
) -> String {
    format!(
        "self = <{module}.{class} object at 0x7f3a2c1d{got:04x}>\n\
         {param}_value = '{param}-{want}'\n\
         client = <tests.conftest.ApiClient object at 0x7f3a2c1e{want:04x}>\n\
         \n\
         \x20   @pytest.mark.parametrize(\"{param}_value\", PARAMS)\n\
         \x20   def {name}(self, {param}_value, client):\n\
         \x20       payload = build_payload({param}_value, size=3)\n\
         \x20       response = client.post(\"/api/v1/items\", json=payload)\n\
         \x20       body = response.json()\n\
         >       assert response.status_code == {want}\n\
         E       AssertionError: assert {got} == {want}\n\
         E        +  where {got} = <Response [{got}]>.status_code\n\
         \n\
         {file}:{line}: AssertionError\n\
         \n\
         During handling of the above exception, another exception occurred:\n\
         \n\
         \x20   def post(self, path, json=None, timeout=5.0):\n\
         \x20       attempt = 0\n\
         \x20       while True:\n\
         \x20           try:\n\
         \x20               return self._session.post(self.base + path, json=json, timeout=timeout)\n\
         \x20           except ConnectionError as exc:\n\
         \x20               attempt += 1\n\
         \x20               if attempt > self.retries:\n\
         >                   raise ApiUnavailable(path, attempt) from exc\n\
         E                   tests.conftest.ApiUnavailable: POST {path} failed after {attempt} attempts\n\
         \n\
         tests/conftest.py:{conftest_line}: ApiUnavailable\n\
         ----------------------------- Captured log call ------------------------------\n\
         WARNING  tests.conftest:conftest.py:{conftest_line} retrying POST /api/v1/items ({got})\n\
         WARNING  tests.conftest:conftest.py:{conftest_line} retrying POST /api/v1/items ({got})\n",
        module = file.trim_end_matches(".py").replace('/', "."),
        path = "/api/v1/items",
        attempt = 3,
        conftest_line = 100 + got % 50,
    )
}

// ---------------------------------------------------------------------------
// Streaming

/// Streams `batches` on one stream and returns the time until the ack of the
/// last one; the client encodes each batch as the stream pulls it, inside the timing.
async fn stream_all<I>(client: &mut RecorderClient<Channel>, batches: I) -> anyhow::Result<Duration>
where
    I: Iterator<Item = pb::StreamOutcomesRequest> + Send + 'static,
{
    let (count_tx, count_rx) = std::sync::mpsc::channel();
    let counted = batches.inspect(move |_| {
        let _ = count_tx.send(());
    });
    let started = Instant::now();
    let mut acks = client
        .stream_outcomes(tokio_stream::iter(counted))
        .await
        .context("StreamOutcomes")?
        .into_inner();
    let mut received = 0usize;
    let mut elapsed = started.elapsed();
    while let Some(_ack) = acks.message().await.context("reading acks")? {
        received += 1;
        elapsed = started.elapsed();
    }
    let sent = count_rx.try_iter().count();
    ensure!(
        received == sent,
        "{received} acks for {sent} batches: the stream ended early"
    );
    Ok(elapsed)
}

async fn start_sessions(
    client: &mut RecorderClient<Channel>,
    runs: impl Iterator<Item = (String, i64)>,
) -> anyhow::Result<()> {
    for (id, started) in runs {
        client
            .start_session(pb::StartSessionRequest {
                session_id: id,
                source: pb::Source::Plugin as i32,
                environment: Some(pb::Environment {
                    os: "Linux-6.1.0-x86_64".into(),
                    python_version: "3.12.3".into(),
                    python_implementation: "CPython".into(),
                    pytest_version: "8.3.4".into(),
                    project: "ingest-bench".into(),
                    git_commit: format!("{:040x}", started),
                    git_branch: "main".into(),
                    ..Default::default()
                }),
                started_at: Some(timestamp(started)),
            })
            .await
            .context("StartSession")?;
    }
    Ok(())
}

async fn connect(addr: &str) -> anyhow::Result<RecorderClient<Channel>> {
    let client = RecorderClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(client
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// One measured run.
struct Measured {
    label: String,
    mode: Mode,
    /// The database (store runs).
    db: Db,
    /// Earlier runs the database held.
    history: u64,
    outcomes: u64,
    wire_bytes: u64,
    elapsed: Duration,
    /// Time to finish the measured sessions afterwards (store only).
    finish: Option<Duration>,
    bench_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// CPU time other processes took meanwhile: a busy machine skews the numbers.
    other_cpu: Option<f64>,
    server: Option<ServerFigures>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.outcomes as f64 / self.elapsed.as_secs_f64()
    }
}

/// What the server process's memory and database looked like.
struct ServerFigures {
    /// The highest VmRSS sampled while the measured outcomes streamed.
    peak_mib: f64,
    /// VmHWM at the end: the peak over the whole life, history loading included.
    hwm_mib: f64,
    /// Database file plus WAL after the server stopped.
    db_bytes: u64,
    /// Outcomes the database holds: history and measured.
    stored: u64,
}

impl ServerFigures {
    fn bytes_per_outcome(&self) -> f64 {
        self.db_bytes as f64 / self.stored.max(1) as f64
    }
}

/// The measured runs, generated up front so generation is not timed.
fn measured_runs(config: &Config, suite: &[TestDef], order: Order) -> Vec<RunData> {
    let deps = config
        .deps
        .map(|(units, pool)| Deps::new(suite.len(), units, pool));
    (0..config.runs())
        .map(|r| {
            make_run(
                suite,
                config.history + r,
                order,
                config.shape,
                config.batch,
                deps.as_ref(),
            )
        })
        .collect()
}

async fn run_raw(config: &Config, suite: &[TestDef]) -> anyhow::Result<Measured> {
    let runs = measured_runs(config, suite, config.order);
    let outcomes: u64 = runs.iter().map(|r| r.outcomes).sum();
    let batches: Vec<pb::StreamOutcomesRequest> =
        runs.into_iter().flat_map(|r| r.batches).collect();
    let wire_bytes: u64 = batches.iter().map(|b| b.encoded_len() as u64).sum();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // TCP_NODELAY on the accepted socket: `Server::tcp_nodelay` does not
    // reach sockets from `serve_with_incoming*`, and without it Nagle holds
    // back small WINDOW_UPDATE frames until the peer's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RecorderServer::new(Sink).max_decoding_message_size(MAX_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    let mut client = connect(&addr).await?;
    let cpu_before = cpu_seconds("self");
    let machine_before = machine_busy_seconds();
    let elapsed = stream_all(&mut client, batches.into_iter()).await?;
    let cpu_after = cpu_seconds("self");
    let machine_after = machine_busy_seconds();
    let bench_cpu = cpu_after.zip(cpu_before).map(|(a, b)| a - b);
    drop(client);
    let _ = stop_tx.send(());
    server.await??;
    Ok(Measured {
        label: format!("raw {}", config.order.name()),
        mode: Mode::Raw,
        db: Db::Sqlite,
        history: 0,
        outcomes,
        wire_bytes,
        elapsed,
        finish: None,
        bench_cpu,
        server_cpu: None,
        other_cpu: others(machine_before, machine_after, &[bench_cpu]),
        server: None,
    })
}

/// `url` with its database name replaced by `name`.
fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs one SQL statement on `url`.
async fn pg_execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .with_context(|| sql.to_string())?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// The size of a PostgreSQL database, in bytes.
async fn pg_size(url: &str) -> anyhow::Result<u64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    // What a checkpoint leaves: the rows and indexes, not the WAL.
    client.batch_execute("CHECKPOINT").await.ok();
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

async fn run_store(
    config: &Config,
    suite: &Arc<Vec<TestDef>>,
    history: u64,
    order: Order,
    db: &Db,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let label = format!("{} h={history} {}", db.name(), order.name());
    let (target, replicas, pg_url): (std::ffi::OsString, usize, Option<String>) = match db {
        Db::Sqlite => {
            let file = dir.path().join("bench.db");
            println!(
                "{label}: database {} (set TMPDIR to measure another disk)",
                file.display()
            );
            (file.into_os_string(), 1, None)
        }
        Db::Postgres { server, replicas } => {
            let name = format!("pytest_mcp_bench_{}", uuid::Uuid::new_v4().simple());
            pg_execute(server, &format!("CREATE DATABASE {name}")).await?;
            let url = with_dbname(server, &name);
            println!("{label}: database {url}");
            (url.clone().into(), *replicas, Some(url))
        }
    };
    let mut servers: Vec<ServerProcess> = Vec::new();
    for _ in 0..replicas {
        servers.push(ServerProcess::start(&target)?);
    }
    let pids: Vec<u32> = servers.iter().map(ServerProcess::pid).collect();
    let mut clients = Vec::new();
    for server in &servers {
        clients.push(connect(&server.addr).await?);
    }
    let mut client = clients[0].clone();

    if history > 0 {
        let started = Instant::now();
        // Generated run by run while streaming, so history costs no memory.
        let ids: Vec<(String, i64)> = (0..history)
            .map(|r| {
                (
                    uuid::Uuid::new_v4().to_string(),
                    BASE_MICROS + r as i64 * 600_000_000,
                )
            })
            .collect();
        start_sessions(&mut client, ids.iter().cloned()).await?;
        let (suite2, shape, batch) = (suite.clone(), config.shape, config.batch);
        let deps = config
            .deps
            .map(|(units, pool)| Deps::new(suite.len(), units, pool));
        let lazy = ids
            .clone()
            .into_iter()
            .enumerate()
            .flat_map(move |(r, (id, _))| {
                let mut run = make_run(&suite2, r as u64, order, shape, batch, deps.as_ref());
                for b in &mut run.batches {
                    b.session_id = id.clone();
                }
                run.batches
            });
        stream_all(&mut client, lazy).await?;
        for (id, _) in &ids {
            finish(&mut client, id, suite.len() as u64).await?;
        }
        println!(
            "{label}: loaded {history} earlier runs ({} outcomes) in {:.1} s; streaming the measured runs...",
            history * suite.len() as u64,
            started.elapsed().as_secs_f64()
        );
    }

    let runs = measured_runs(config, suite, order);
    let outcomes: u64 = runs.iter().map(|r| r.outcomes).sum();
    let checks: Vec<(String, Counts, u64)> = runs
        .iter()
        .map(|r| (r.id.clone(), r.counts.clone(), r.outcomes))
        .collect();
    // Run i goes to replica i mod replicas, on that replica's connection.
    let mut shares: Vec<Vec<RunData>> = (0..replicas).map(|_| Vec::new()).collect();
    for (i, run) in runs.into_iter().enumerate() {
        shares[i % replicas].push(run);
    }
    let mut streams = Vec::new();
    let mut wire_bytes = 0u64;
    for (share, c) in shares.into_iter().zip(clients.iter_mut()) {
        start_sessions(c, share.iter().map(|r| (r.id.clone(), r.started_micros))).await?;
        let batches: Vec<pb::StreamOutcomesRequest> =
            share.into_iter().flat_map(|r| r.batches).collect();
        wire_bytes += batches.iter().map(|b| b.encoded_len() as u64).sum::<u64>();
        streams.push(batches);
    }

    let samplers: Vec<RssSampler> = pids.iter().map(|p| RssSampler::start(*p)).collect();
    let server_cpu_of = |pids: &[u32]| -> Option<f64> {
        pids.iter()
            .map(|p| cpu_seconds(&p.to_string()))
            .sum::<Option<f64>>()
    };
    let (bench_before, server_before) = (cpu_seconds("self"), server_cpu_of(&pids));
    let machine_before = machine_busy_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (batches, c) in streams.into_iter().zip(clients.iter()) {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            stream_all(&mut c, batches.into_iter()).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let (bench_after, server_after) = (cpu_seconds("self"), server_cpu_of(&pids));
    let machine_after = machine_busy_seconds();
    let bench_cpu = bench_after.zip(bench_before).map(|(a, b)| a - b);
    let server_cpu = server_after.zip(server_before).map(|(a, b)| a - b);
    let sampled_max_kib = samplers
        .into_iter()
        .map(RssSampler::stop)
        .max()
        .unwrap_or(0);
    let mut hwm_kib = 0;
    for pid in &pids {
        hwm_kib = hwm_kib.max(status_kib(&proc_status(*pid)?, "VmHWM:")?);
    }

    // Finishing is part of a run's cost: a session's index by test and its
    // digest are written when it closes. Timed apart, as the target is
    // about acknowledged outcomes.
    let finishing = Instant::now();
    for (i, (id, _, n)) in checks.iter().enumerate() {
        finish(&mut clients[i % replicas], id, *n).await?;
    }
    let finish_time = finishing.elapsed();
    // Every outcome is in the database, counted by the store itself.
    for (id, counts, n) in &checks {
        let stored = client
            .get_session(pb::GetSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            })
            .await
            .context("GetSession")?
            .into_inner()
            .session
            .context("GetSession returned no session")?;
        ensure!(
            stored.outcomes_stored == *n,
            "session {id}: the server stored {} outcomes, not {n}",
            stored.outcomes_stored
        );
        let c = stored.counts.unwrap_or_default();
        let got = Counts {
            passed: c.passed,
            failed: c.failed,
            skipped: c.skipped,
            errors: c.errors,
            xfailed: c.xfailed,
        };
        ensure!(
            &got == counts,
            "session {id}: stored counts {got:?} differ from sent {counts:?}"
        );
    }
    drop(client);
    drop(clients);

    for server in &mut servers {
        let exit = server.terminate()?;
        ensure!(
            exit.success(),
            "the server exited with {exit} after SIGTERM; its stderr: {:?}",
            server.stderr_tail()
        );
    }
    let db_bytes: u64 = match &pg_url {
        Some(url) => pg_size(url).await?,
        None => ["bench.db", "bench.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum(),
    };
    if let (Some(url), Db::Postgres { server, .. }) = (&pg_url, db) {
        let name = url.rsplit('/').next().unwrap_or_default();
        let name = name.split('?').next().unwrap_or_default();
        pg_execute(server, &format!("DROP DATABASE IF EXISTS {name}")).await?;
    }
    Ok(Measured {
        label,
        mode: Mode::Store,
        db: db.clone(),
        history,
        outcomes,
        wire_bytes,
        elapsed,
        finish: Some(finish_time),
        bench_cpu,
        server_cpu,
        other_cpu: others(machine_before, machine_after, &[bench_cpu, server_cpu]),
        server: Some(ServerFigures {
            peak_mib: sampled_max_kib as f64 / 1024.0,
            hwm_mib: hwm_kib as f64 / 1024.0,
            db_bytes,
            stored: outcomes + history * suite.len() as u64,
        }),
    })
}

async fn finish(client: &mut RecorderClient<Channel>, id: &str, n: u64) -> anyhow::Result<()> {
    let finished = client
        .finish_session(pb::FinishSessionRequest {
            session_id: id.to_string(),
            summary: Some(pb::Summary {
                total_tests: n,
                exitstatus: 1,
                duration: 12.5,
                ..Default::default()
            }),
            outcomes_sent: n,
            finished_at: None,
        })
        .await
        .context("FinishSession")?
        .into_inner()
        .session
        .context("FinishSession returned no session")?;
    ensure!(
        finished.status() == pb::SessionStatus::Finished,
        "session {id} is {:?} after finishing, not finished",
        finished.status()
    );
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    println!(
        "ingest benchmark: a {} suite of {} tests, {} earlier runs in the database, then {} runs \
         ({} outcomes) measured, batches of {}, {} order, {} CPU(s)",
        config.shape.name(),
        config.suite,
        config.history,
        config.runs(),
        config.runs() * config.suite,
        config.batch,
        config.order.name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match config.deps {
        Some((units, pool)) => {
            println!("dependencies: {units} units per test out of a pool of {pool} (BENCH_DEPS=1)")
        }
        None => println!("dependencies: none (BENCH_DEPS=1 sends them)"),
    }
    let suite = Arc::new(build_suite(config.suite, config.shape));
    let mut results = Vec::new();
    for mode in &config.modes {
        match mode {
            Mode::Raw => results.push(run_raw(&config, &suite).await?),
            Mode::Store => {
                let sqlite = Db::Sqlite;
                results
                    .push(run_store(&config, &suite, config.history, config.order, &sqlite).await?);
                if config.baseline {
                    results.push(run_store(&config, &suite, 0, Order::Collection, &sqlite).await?);
                }
                if let Some(server) = &config.postgres {
                    for replicas in [1, 2] {
                        let db = Db::Postgres {
                            server: server.clone(),
                            replicas,
                        };
                        results.push(
                            run_store(&config, &suite, config.history, config.order, &db).await?,
                        );
                    }
                    if config.baseline {
                        let db = Db::Postgres {
                            server: server.clone(),
                            replicas: 1,
                        };
                        results.push(run_store(&config, &suite, 0, Order::Collection, &db).await?);
                    }
                }
            }
        }
    }
    print_table(&results, &config);
    Ok(())
}

/// A Recorder that acks each batch at once and stores nothing.
struct Sink;

type AckStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::StreamOutcomesResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Recorder for Sink {
    async fn start_session(
        &self,
        _: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }

    type StreamOutcomesStream = AckStream;

    async fn stream_outcomes(
        &self,
        request: Request<Streaming<pb::StreamOutcomesRequest>>,
    ) -> Result<Response<Self::StreamOutcomesStream>, Status> {
        let acks = request.into_inner().map(|batch| {
            batch.map(|b| pb::StreamOutcomesResponse {
                acked_seq: b.outcomes.last().map_or(0, |o| o.seq),
                session_id: b.session_id,
            })
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn finish_session(
        &self,
        _: Request<pb::FinishSessionRequest>,
    ) -> Result<Response<pb::FinishSessionResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }

    async fn get_session(
        &self,
        _: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }

    async fn list_outcomes(
        &self,
        _: Request<pb::ListOutcomesRequest>,
    ) -> Result<Response<pb::ListOutcomesResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }

    async fn get_test_history(
        &self,
        _: Request<pb::GetTestHistoryRequest>,
    ) -> Result<Response<pb::GetTestHistoryResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }

    type WatchSessionStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchSessionResponse, Status>> + Send>,
    >;

    async fn watch_session(
        &self,
        _: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }
    async fn list_quarantine(
        &self,
        _: Request<pb::ListQuarantineRequest>,
    ) -> Result<Response<pb::ListQuarantineResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }
    async fn get_dependencies(
        &self,
        _: Request<pb::GetDependenciesRequest>,
    ) -> Result<Response<pb::GetDependenciesResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }
    async fn select_affected(
        &self,
        _: Request<pb::SelectAffectedRequest>,
    ) -> Result<Response<pb::SelectAffectedResponse>, Status> {
        Err(Status::unimplemented("the sink only streams"))
    }
}

// ---------------------------------------------------------------------------
// The server process

/// A `pytest-mcp serve` child on a free port; killed if dropped while running.
struct ServerProcess {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    fn start(db: &std::ffi::OsStr) -> anyhow::Result<ServerProcess> {
        let binary = std::env::var_os("BENCH_SERVER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_pytest-mcp").into());
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--grpc-addr", "127.0.0.1:0"])
            // MCP over HTTP on a free port, so a running recorder on the
            // default port does not stop the bench. Set through the
            // environment, which older binaries (BENCH_SERVER_BIN) ignore.
            .env("PYTEST_MCP_HTTP_ADDR", "127.0.0.1:0")
            .env_remove("PYTEST_MCP_NO_HTTP")
            // Settings a developer's shell might carry would skew the numbers.
            .env("RUST_LOG", "warn")
            .env_remove("PYTEST_MCP_SYNC")
            .env_remove("PYTEST_MCP_MAX_FIELD_BYTES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve", binary.to_string_lossy()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let kept = lines.clone();
        // Reads stderr to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("pytest-mcp: gRPC listening on ") {
                    let _ = addr_tx.send(rest.split(',').next().unwrap_or_default().to_string());
                }
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line);
                }
            }
        });
        let mut server = ServerProcess {
            child,
            addr: String::new(),
            stderr: lines,
        };
        match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.addr = addr,
            Err(_) => bail!(
                "the server printed no listening line; its stderr: {:?}",
                server.stderr_tail()
            ),
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> Vec<String> {
        self.stderr
            .lock()
            .map(|l| l.iter().rev().take(20).rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the server to exit.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill")?;
        ensure!(sent.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "the server did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// /proc readings

fn proc_status(pid: u32) -> anyhow::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))
}

/// A `kB` line such as `VmHWM: 12345 kB` from /proc/PID/status.
fn status_kib(status: &str, key: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} line in /proc/PID/status"))
}

/// User plus system CPU seconds of a process (`self` or a pid), all threads.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds the whole machine has spent busy (not idle, not waiting for I/O).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy / clock_ticks())
}

/// Machine CPU time between two readings not spent by the `ours` processes.
fn others(before: Option<f64>, after: Option<f64>, ours: &[Option<f64>]) -> Option<f64> {
    let ours: f64 = ours.iter().copied().sum::<Option<f64>>()?;
    Some((after? - before? - ours).max(0.0))
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Samples a process's VmRSS on a thread of its own and keeps the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(kib) = proc_status(pid).and_then(|s| status_kib(&s, "VmRSS:")) {
                    max = max.max(kib);
                }
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            max
        });
        RssSampler { stop, thread }
    }

    /// The highest VmRSS seen, in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Report

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn opt(value: Option<f64>, precision: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.precision$}"))
}

fn print_table(results: &[Measured], config: &Config) {
    println!();
    println!(
        "{:<24} {:>9} {:>8} {:>11} {:>8} {:>10} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "run",
        "outcomes",
        "seconds",
        "outcomes/s",
        "finish s",
        "wire MiB/s",
        "bench CPU",
        "server CPU",
        "other CPU",
        "peak MiB",
        "VmHWM MiB",
        "db MiB",
        "B/outcome"
    );
    for r in results {
        let s = r.server.as_ref();
        println!(
            "{:<24} {:>9} {:>8.3} {:>11.0} {:>8} {:>10.1} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r.label,
            r.outcomes,
            r.elapsed.as_secs_f64(),
            r.rate(),
            opt(r.finish.map(|f| f.as_secs_f64()), 3),
            mib(r.wire_bytes) / r.elapsed.as_secs_f64(),
            opt(r.bench_cpu, 2),
            opt(r.server_cpu, 2),
            opt(r.other_cpu, 2),
            opt(s.map(|m| m.peak_mib), 1),
            opt(s.map(|m| m.hwm_mib), 1),
            opt(s.map(|m| mib(m.db_bytes)), 1),
            opt(s.map(ServerFigures::bytes_per_outcome), 1),
        );
    }
    println!();
    println!(
        "bench/server/other CPU: user+system seconds during the measured stream, of the bench"
    );
    println!(
        "  process (client, and in raw mode the sink too), the server, and everything else on"
    );
    println!("  the machine (near 0 on a quiet machine; more means the numbers are skewed).");
    println!(
        "peak MiB: highest server VmRSS sampled every {} ms during the measured stream; VmHWM:",
        RSS_SAMPLE_EVERY.as_millis()
    );
    println!("  the server's peak over its whole life, history loading included.");
    println!("db MiB: database and WAL after the server stopped; B/outcome: that over every");
    println!("  outcome it holds (earlier runs and measured runs).");

    let raw = results.iter().find(|r| r.mode == Mode::Raw);
    let mut stores = results
        .iter()
        .filter(|r| r.mode == Mode::Store && r.db == Db::Sqlite);
    let store = stores.next();
    let baseline = stores.next();
    print_postgres_verdicts(results, config);
    println!();
    if let Some(store) = store {
        println!(
            "{}: {:.0} acknowledged outcomes/s  (target >= {TARGET_STORE_RATE:.0}: {})",
            store.label,
            store.rate(),
            verdict(store.rate() >= TARGET_STORE_RATE)
        );
        if let Some(f) = store.finish {
            let total = store.elapsed + f;
            println!(
                "{}: {:.0} outcomes/s counting the time to finish every session too",
                store.label,
                store.outcomes as f64 / total.as_secs_f64()
            );
        }
        if let Some(base) = baseline {
            let ratio = base.rate() / store.rate();
            println!(
                "{} vs {}: {ratio:.2}x slower  (target <= {TARGET_BASELINE_RATIO}x: {})",
                store.label,
                base.label,
                verdict(ratio <= TARGET_BASELINE_RATIO)
            );
        }
        if let Some(s) = &store.server {
            println!(
                "server peak memory while streaming: {:.1} MiB  (target < {TARGET_PEAK_MIB:.0} MiB: {})",
                s.peak_mib,
                verdict(s.peak_mib < TARGET_PEAK_MIB)
            );
            let per = s.bytes_per_outcome();
            match config.shape {
                Shape::Plain => println!(
                    "database: {per:.1} bytes per outcome of plain passing tests  (target <= \
                     {TARGET_PLAIN_BYTES:.0}: {})",
                    verdict(per <= TARGET_PLAIN_BYTES)
                ),
                Shape::Realistic => {
                    let per_million = per * 1e6 / (1024.0 * 1024.0);
                    println!(
                        "database: {per:.1} bytes per outcome, {per_million:.1} MiB per million \
                         outcomes  (target <= {TARGET_MIB_PER_MILLION:.0} MiB: {})",
                        verdict(per_million <= TARGET_MIB_PER_MILLION)
                    );
                }
            }
        }
        if let Some(raw) = raw {
            println!(
                "raw/store: {:.2}x  (gRPC alone against gRPC plus the store; see the README for \
                 what bounds it)",
                raw.rate() / store.rate()
            );
        }
    }
    println!();
    println!(
        "rerun: BENCH_HISTORY={} BENCH_ORDER={} BENCH_SUITE={} BENCH_OUTCOMES={} BENCH_SHAPE={} \
         cargo bench --bench ingest   (also BENCH_BATCH, BENCH_MODE=both|raw|store, \
         BENCH_BASELINE=0, BENCH_SERVER_BIN=path/to/pytest-mcp, BENCH_DB=postgres://...)",
        config.history,
        config.order.name(),
        config.suite,
        config.outcomes,
        config.shape.name()
    );
}

/// The PostgreSQL targets: one replica's rate, with history as without.
fn print_postgres_verdicts(results: &[Measured], config: &Config) {
    let pg = |replicas: usize, history: u64| {
        results.iter().find(|r| {
            matches!(&r.db, Db::Postgres { replicas: n, .. } if *n == replicas)
                && r.history == history
        })
    };
    let Some(one) = pg(1, config.history) else {
        return;
    };
    println!();
    println!(
        "{}: {:.0} acknowledged outcomes/s  (target >= {TARGET_PG_RATE:.0}: {})",
        one.label,
        one.rate(),
        verdict(one.rate() >= TARGET_PG_RATE)
    );
    if let Some(two) = pg(2, config.history) {
        println!(
            "{}: {:.0} acknowledged outcomes/s, both replicas together ({:.2}x one replica)",
            two.label,
            two.rate(),
            two.rate() / one.rate()
        );
    }
    if config.history > 0
        && let Some(empty) = pg(1, 0)
    {
        let ratio = empty.rate() / one.rate();
        println!(
            "{} vs {}: {ratio:.2}x slower  (target: no loss of rate with history, <= \
             {TARGET_PG_HISTORY_RATIO}x: {})",
            one.label,
            empty.label,
            verdict(ratio <= TARGET_PG_HISTORY_RATIO)
        );
    }
    if let Some(sqlite) = results
        .iter()
        .find(|r| r.db == Db::Sqlite && r.mode == Mode::Store && r.history == config.history)
    {
        println!(
            "{} vs {}: {:.2}x the rate",
            one.label,
            sqlite.label,
            one.rate() / sqlite.rate()
        );
    }
    println!(
        "PostgreSQL's own CPU is in \"other CPU\" (its processes are not the server's); bulk \
         writes: {}",
        match std::env::var("PYTEST_MCP_PG_BULK").as_deref() {
            Ok("unnest") => "INSERT ... UNNEST (PYTEST_MCP_PG_BULK=unnest)",
            _ => "binary COPY (the default)",
        }
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
