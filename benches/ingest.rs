//! Ingest benchmark: how many outcomes per second reach the recorder, and
//! what that costs the server in memory.
//!
//! Two modes stream the same deterministic outcomes from a tonic client:
//! - `raw`: an in-process tonic server whose `StreamOutcomes` acks each batch
//!   at once and stores nothing — the ceiling set by gRPC alone;
//! - `store`: the real `pytest-mcp serve` binary over a fresh SQLite file in
//!   the temporary directory;
//!   the clock stops at the ack of the last seq, which the server sends only
//!   after the commit, and the session is read back to prove it is stored.
//!
//! Run with `cargo bench --bench ingest`. Environment variables change what
//! runs: `BENCH_OUTCOMES` (default 1000000), `BENCH_BATCH` (outcomes per
//! message, default 500), `BENCH_MODE` (`both`, `raw` or `store`),
//! `BENCH_ORDER` (`collection`, pytest's default order, or `random`, as with
//! pytest-randomly: the worst case for the nodeid index) and
//! `BENCH_SERVER_BIN` (another `pytest-mcp` binary to measure, for comparing
//! builds). It prints a table and never fails on a slow result: timing
//! verdicts are for people. It does fail when the server loses outcomes.

use std::io::{BufRead, BufReader};
use std::path::Path;
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
const TARGET_STORE_RATE: f64 = 200_000.0;
const TARGET_RATIO: f64 = 2.0;
const TARGET_PEAK_MIB: f64 = 50.0;

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

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Store => "store",
        }
    }
}

/// The order tests run in, which decides how local the nodeid index inserts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// pytest's default: module by module, each module's tests in file order.
    Collection,
    /// Shuffled across the whole suite, as with pytest-randomly.
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

struct Config {
    outcomes: u64,
    batch: usize,
    modes: Vec<Mode>,
    order: Order,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let outcomes = env_number("BENCH_OUTCOMES", 1_000_000)?;
        let batch = env_number("BENCH_BATCH", 500)?;
        ensure!(outcomes > 0, "BENCH_OUTCOMES must be at least 1");
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
        Ok(Config {
            outcomes,
            batch: usize::try_from(batch)?,
            modes,
            order,
        })
    }
}

/// Reads a positive integer such as `1000000` or `1_000_000` from `name`.
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

/// One measured run.
struct Measured {
    mode: Mode,
    outcomes: u64,
    wire_bytes: u64,
    elapsed: Duration,
    bench_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// CPU time other processes took meanwhile: a busy machine skews the numbers.
    other_cpu: Option<f64>,
    server: Option<ServerMemory>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.outcomes as f64 / self.elapsed.as_secs_f64()
    }
}

/// What the server process's memory looked like.
struct ServerMemory {
    /// The peak resident set: VmHWM (startup included) or the highest sample.
    peak_mib: f64,
    /// The highest VmRSS seen by sampling during the stream.
    sampled_max_mib: f64,
    /// VmRSS after the last ack.
    after_mib: f64,
    /// Database file plus WAL after the server stopped.
    db_mib: f64,
}

async fn run(config: Config) -> anyhow::Result<()> {
    println!(
        "ingest benchmark: {} outcomes in batches of {}, {} order, {} CPU(s)",
        config.outcomes,
        config.batch,
        config.order.name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results = Vec::new();
    for mode in &config.modes {
        let started = Instant::now();
        let (batches, counts) = generate(config.outcomes, config.batch, config.order);
        let wire_bytes: u64 = batches.iter().map(|b| b.encoded_len() as u64).sum();
        let lengths = batches
            .iter()
            .flat_map(|b| &b.outcomes)
            .map(|o| o.nodeid.len());
        let (shortest, longest, total) = lengths.fold((usize::MAX, 0, 0), |(lo, hi, sum), n| {
            (lo.min(n), hi.max(n), sum + n)
        });
        println!(
            "{}: generated {} batches ({:.1} MiB encoded, nodeids {shortest}..{longest} bytes, \
             mean {:.0}) in {:.2} s; streaming...",
            mode.name(),
            batches.len(),
            mib(wire_bytes),
            total as f64 / config.outcomes as f64,
            started.elapsed().as_secs_f64()
        );
        let measured = match mode {
            Mode::Raw => run_raw(batches, config.outcomes, wire_bytes).await?,
            Mode::Store => run_store(batches, &counts, config.outcomes, wire_bytes).await?,
        };
        results.push(measured);
    }
    print_table(&results, &config);
    Ok(())
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

/// Tests in one generated module, and modules in one package directory.
const TESTS_PER_MODULE: u64 = 250;
const MODULES_PER_PACKAGE: u64 = 100;

/// Stored outcomes counted by kind, to check what the server says it stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
    errors: u64,
    xfailed: u64,
}

/// Builds `n` outcomes of realistic shape, `batch` to a request.
fn generate(n: u64, batch: usize, order: Order) -> (Vec<pb::StreamOutcomesRequest>, Counts) {
    // The session id is filled in per run; the same length keeps sizes equal.
    let session_id = uuid::Uuid::nil().to_string();
    let mut rng = Rng(0x5EED_0F7E_5700);
    let mut counts = Counts::default();
    let base_micros: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    let mut batches = Vec::with_capacity((n as usize).div_ceil(batch));
    let mut current = Vec::with_capacity(batch);
    let modules = n.div_ceil(TESTS_PER_MODULE);
    for seq in 1..=n {
        // Where the test sits in the suite: module, then position in it.
        let (module, position) = match order {
            Order::Collection => ((seq - 1) / TESTS_PER_MODULE, (seq - 1) % TESTS_PER_MODULE),
            Order::Random => (rng.below(modules), rng.below(TESTS_PER_MODULE)),
        };
        current.push(outcome(
            &mut rng,
            seq,
            module,
            position,
            base_micros,
            &mut counts,
        ));
        if current.len() == batch || seq == n {
            batches.push(pb::StreamOutcomesRequest {
                session_id: session_id.clone(),
                outcomes: std::mem::replace(&mut current, Vec::with_capacity(batch)),
            });
        }
    }
    (batches, counts)
}

fn outcome(
    rng: &mut Rng,
    seq: u64,
    module: u64,
    position: u64,
    base_micros: i64,
    counts: &mut Counts,
) -> pb::Outcome {
    let file = format!(
        "tests/pkg_{:02}/test_mod_{:03}.py",
        module / MODULES_PER_PACKAGE,
        module % MODULES_PER_PACKAGE
    );
    // Classes hold 32 tests; each test function is parametrized 4 ways.
    let class = CLASSES[(position / 32) as usize % CLASSES.len()];
    let name = NAMES[(position / 4) as usize % NAMES.len()];
    let param = rng.pick(PARAMS);
    let nodeid = format!("{file}::{class}::{name}[{param}-{}]", rng.below(10_000));
    let line = 10 + (position / 4) as u32 * 12;
    // Most tests take a millisecond or two; a few take much longer.
    let duration = 0.0002 + rng.unit().powi(4) * 0.5;
    let micros = base_micros + (seq as i64) * 2_500;
    let mut o = pb::Outcome {
        seq,
        nodeid,
        outcome: pb::TestOutcome::Passed as i32,
        phase: pb::Phase::Call as i32,
        duration,
        line,
        markers: vec!["parametrize".to_string()],
        attempt: 1,
        started_at: Some(prost_types::Timestamp {
            seconds: micros / 1_000_000,
            nanos: ((micros % 1_000_000) * 1000) as i32,
        }),
        ..Default::default()
    };
    let roll = rng.below(1000);
    if roll < 930 {
        counts.passed += 1;
        if rng.below(20) == 0 {
            o.stdout = format!("connecting to fixture db {}\nok\n", rng.below(100));
        }
    } else if roll < 950 {
        counts.failed += 1;
        let (got, want) = (rng.below(1000), rng.below(1000));
        o.outcome = pb::TestOutcome::Failed as i32;
        o.message = format!("AssertionError: assert {got} == {want}");
        o.longrepr = traceback(&file, class, name, param, line, got, want);
        o.stdout = format!(
            "request id {}\nresponse status {got}\nretrying once\nresponse status {got}\n",
            rng.next()
        );
    } else if roll < 980 {
        counts.skipped += 1;
        o.outcome = pb::TestOutcome::Skipped as i32;
        o.phase = pb::Phase::Setup as i32;
        o.message = rng.pick(SKIP_REASONS).to_string();
        o.markers.push("skipif".to_string());
    } else if roll < 990 {
        counts.xfailed += 1;
        o.outcome = pb::TestOutcome::Xfailed as i32;
        o.message = format!("reason: known bug #{}", rng.below(5000));
        o.markers.push("xfail".to_string());
    } else {
        counts.errors += 1;
        o.outcome = pb::TestOutcome::Error as i32;
        o.phase = pb::Phase::Setup as i32;
        o.message = "ConnectionRefusedError: [Errno 111] Connection refused".to_string();
        o.longrepr = traceback(&file, class, name, param, line, 111, 0);
    }
    o.file = file;
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

/// Streams `batches` and returns the time until the ack of seq `n`; the
/// client encodes each batch as the stream pulls it, inside the timing.
async fn stream_all(
    client: &mut RecorderClient<Channel>,
    batches: Vec<pb::StreamOutcomesRequest>,
    n: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut acks = client
        .stream_outcomes(tokio_stream::iter(batches))
        .await
        .context("StreamOutcomes")?
        .into_inner();
    let mut elapsed = None;
    while let Some(ack) = acks.message().await.context("reading acks")? {
        if ack.acked_seq >= n && elapsed.is_none() {
            elapsed = Some(started.elapsed());
        }
    }
    elapsed.with_context(|| format!("the ack stream ended before seq {n} was acknowledged"))
}

fn with_session(
    mut batches: Vec<pb::StreamOutcomesRequest>,
    id: &str,
) -> Vec<pb::StreamOutcomesRequest> {
    for b in &mut batches {
        b.session_id = id.to_string();
    }
    batches
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
}

async fn connect(addr: &str) -> anyhow::Result<RecorderClient<Channel>> {
    let client = RecorderClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(client
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn run_raw(
    batches: Vec<pb::StreamOutcomesRequest>,
    n: u64,
    wire_bytes: u64,
) -> anyhow::Result<Measured> {
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
    let batches = with_session(batches, &uuid::Uuid::new_v4().to_string());
    let cpu_before = cpu_seconds("self");
    let machine_before = machine_busy_seconds();
    let elapsed = stream_all(&mut client, batches, n).await?;
    let cpu_after = cpu_seconds("self");
    let machine_after = machine_busy_seconds();
    let bench_cpu = cpu_after.zip(cpu_before).map(|(a, b)| a - b);
    drop(client);
    let _ = stop_tx.send(());
    server.await??;
    Ok(Measured {
        mode: Mode::Raw,
        outcomes: n,
        wire_bytes,
        elapsed,
        bench_cpu,
        server_cpu: None,
        other_cpu: others(machine_before, machine_after, &[bench_cpu]),
        server: None,
    })
}

async fn run_store(
    batches: Vec<pb::StreamOutcomesRequest>,
    counts: &Counts,
    n: u64,
    wire_bytes: u64,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    println!(
        "store: database {} (set TMPDIR to measure another disk)",
        db.display()
    );
    let mut server = ServerProcess::start(&db)?;
    let pid = server.pid();
    let mut client = connect(&server.addr).await?;

    let id = uuid::Uuid::new_v4().to_string();
    client
        .start_session(pb::StartSessionRequest {
            session_id: id.clone(),
            source: pb::Source::Plugin as i32,
            environment: Some(pb::Environment {
                os: "Linux-6.1.0-x86_64".into(),
                python_version: "3.12.3".into(),
                python_implementation: "CPython".into(),
                pytest_version: "8.3.4".into(),
                project: "ingest-bench".into(),
                ..Default::default()
            }),
            started_at: None,
        })
        .await
        .context("StartSession")?;

    let batches = with_session(batches, &id);
    let sampler = RssSampler::start(pid);
    let (bench_before, server_before) = (cpu_seconds("self"), cpu_seconds(&pid.to_string()));
    let machine_before = machine_busy_seconds();
    let elapsed = stream_all(&mut client, batches, n).await?;
    let (bench_after, server_after) = (cpu_seconds("self"), cpu_seconds(&pid.to_string()));
    let machine_after = machine_busy_seconds();
    let bench_cpu = bench_after.zip(bench_before).map(|(a, b)| a - b);
    let server_cpu = server_after.zip(server_before).map(|(a, b)| a - b);
    let sampled_max_kib = sampler.stop();
    let status = proc_status(pid)?;
    let peak_kib = status_kib(&status, "VmHWM:")?;
    let after_kib = status_kib(&status, "VmRSS:")?;

    // Durability check: the session is finished and every outcome is in the
    // database, counted by the store itself.
    let finished = client
        .finish_session(pb::FinishSessionRequest {
            session_id: id.clone(),
            summary: Some(pb::Summary {
                total_tests: n,
                passed: counts.passed,
                failed: counts.failed,
                skipped: counts.skipped,
                errors: counts.errors,
                exitstatus: 1,
                duration: elapsed.as_secs_f64(),
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
        "the session is {:?} after finishing, not finished",
        finished.status()
    );
    let stored = client
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await
        .context("GetSession")?
        .into_inner()
        .session
        .context("GetSession returned no session")?;
    ensure!(
        stored.outcomes_stored == n,
        "the server stored {} outcomes, not {n}",
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
        "stored counts {got:?} differ from sent {counts:?}"
    );
    drop(client);

    let exit = server.terminate()?;
    ensure!(
        exit.success(),
        "the server exited with {exit} after SIGTERM; its stderr: {:?}",
        server.stderr_tail()
    );
    let db_bytes: u64 = ["bench.db", "bench.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(Measured {
        mode: Mode::Store,
        outcomes: n,
        wire_bytes,
        elapsed,
        bench_cpu,
        server_cpu,
        other_cpu: others(machine_before, machine_after, &[bench_cpu, server_cpu]),
        server: Some(ServerMemory {
            // VmHWM is updated lazily and can trail a sampled VmRSS slightly.
            peak_mib: peak_kib.max(sampled_max_kib) as f64 / 1024.0,
            sampled_max_mib: sampled_max_kib as f64 / 1024.0,
            after_mib: after_kib as f64 / 1024.0,
            db_mib: mib(db_bytes),
        }),
    })
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
    fn start(db: &Path) -> anyhow::Result<ServerProcess> {
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
        "{:<6} {:>9} {:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "mode",
        "outcomes",
        "seconds",
        "outcomes/s",
        "wire MiB/s",
        "bench CPU",
        "server CPU",
        "other CPU",
        "peak MiB",
        "max RSS",
        "end RSS",
        "db MiB"
    );
    for r in results {
        let mem = r.server.as_ref();
        println!(
            "{:<6} {:>9} {:>8.3} {:>11.0} {:>10.1} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            r.mode.name(),
            r.outcomes,
            r.elapsed.as_secs_f64(),
            r.rate(),
            mib(r.wire_bytes) / r.elapsed.as_secs_f64(),
            opt(r.bench_cpu, 2),
            opt(r.server_cpu, 2),
            opt(r.other_cpu, 2),
            opt(mem.map(|m| m.peak_mib), 1),
            opt(mem.map(|m| m.sampled_max_mib), 1),
            opt(mem.map(|m| m.after_mib), 1),
            opt(mem.map(|m| m.db_mib), 1),
        );
    }
    println!();
    println!("bench/server/other CPU: user+system seconds during the stream, of the bench process");
    println!("  (client, and in raw mode the sink too), the server, and everything else on the");
    println!("  machine (near 0 on a quiet machine; more means the numbers are skewed).");
    println!(
        "peak MiB: the server's VmHWM (or max RSS when higher); max RSS: highest VmRSS sampled \
         every {} ms;",
        RSS_SAMPLE_EVERY.as_millis()
    );
    println!(
        "  end RSS: VmRSS after the last ack; db MiB: database and WAL after the server stopped."
    );

    let raw = results.iter().find(|r| r.mode == Mode::Raw);
    let store = results.iter().find(|r| r.mode == Mode::Store);
    println!();
    if let (Some(raw), Some(store)) = (raw, store) {
        let ratio = raw.rate() / store.rate();
        println!(
            "raw/store: {ratio:.2}x  (target <= {TARGET_RATIO:.0}x: {})",
            verdict(ratio <= TARGET_RATIO)
        );
    }
    if let Some(store) = store {
        println!(
            "store rate: {:.0} outcomes/s  (target >= {TARGET_STORE_RATE:.0}: {})",
            store.rate(),
            verdict(store.rate() >= TARGET_STORE_RATE)
        );
        if let Some(mem) = &store.server {
            println!(
                "server peak memory: {:.1} MiB  (target < {TARGET_PEAK_MIB:.0} MiB: {})",
                mem.peak_mib,
                verdict(mem.peak_mib < TARGET_PEAK_MIB)
            );
        }
    }
    println!();
    println!(
        "rerun: cargo bench --bench ingest   (env: BENCH_OUTCOMES={} BENCH_BATCH={} \
         BENCH_ORDER={} BENCH_MODE=both|raw|store BENCH_SERVER_BIN=path/to/pytest-mcp)",
        config.outcomes,
        config.batch,
        config.order.name()
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
