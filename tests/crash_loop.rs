//! One long session streamed into a server that is SIGKILLed again and again
//! at random moments: whatever a client saw acknowledged survives every kill,
//! nothing is stored twice, the counts match the rows, and the file stays a
//! sound SQLite database.
//!
//! The delays come from a seeded PRNG; the seed is printed, and
//! `PYTEST_MCP_CRASH_SEED=0x...` repeats a run's delays (the kill still lands
//! wherever the server happens to be at that moment).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pytest_mcp::grpc::pb;
use pytest_mcp::grpc::pb::recorder_client::RecorderClient;
use support::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const KILLS: usize = 30;
const BATCH: u64 = 500;

/// xorshift64*: small, seedable, good enough to spread delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("PYTEST_MCP_CRASH_SEED") {
        Ok(text) => u64::from_str_radix(text.trim_start_matches("0x"), 16)
            .expect("PYTEST_MCP_CRASH_SEED is a hex number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            nanos as u64
        }
    }
    .max(1)
}

/// Streams numbered outcomes from `from` on, `BATCH` a request, until the
/// server goes away; returns the highest ack seen and the highest seq sent,
/// checking on the way that acks never go back and never pass what was ever
/// sent (`sent_before` by earlier streams).
async fn stream_until_killed(
    mut c: RecorderClient<Channel>,
    id: String,
    from: u64,
    sent_before: u64,
) -> (u64, u64) {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(sent_before));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feeder = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut seq = from;
            loop {
                let outcomes: Vec<pb::Outcome> = (seq..seq + BATCH).map(numbered).collect();
                seq += BATCH;
                sent.fetch_max(seq - 1, std::sync::atomic::Ordering::SeqCst);
                let req = pb::StreamOutcomesRequest {
                    session_id: id.clone(),
                    outcomes,
                    ..Default::default()
                };
                if tx.send(req).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut highest = 0;
    if let Ok(response) = c.stream_outcomes(ReceiverStream::new(rx)).await {
        let mut acks = response.into_inner();
        while let Ok(Some(ack)) = acks.message().await {
            assert!(
                ack.acked_seq >= highest,
                "ack {} after {highest}",
                ack.acked_seq
            );
            let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                ack.acked_seq <= sent,
                "ack {} but only {sent} sent",
                ack.acked_seq
            );
            highest = ack.acked_seq;
        }
    }
    feeder.abort();
    (highest, sent.load(std::sync::atomic::Ordering::SeqCst))
}

/// How far a session's rows have been read back and found right: a page
/// token the server issued after seq `upto`, and rows 1..=upto by kind.
#[derive(Clone, Default)]
struct Verified {
    token: String,
    upto: u64,
    by_kind: HashMap<pb::TestOutcome, u64>,
}

/// What a restarted server shows: at least everything acked, seqs 1..=stored
/// once each, and counts that match the rows by kind. Reads the rows after
/// `from` (pass the default to read them all) and returns outcomes_stored
/// and how far the rows are now verified.
async fn check_restarted(
    c: &mut RecorderClient<Channel>,
    id: &str,
    acked: u64,
    kills: usize,
    from: &Verified,
) -> (u64, Verified) {
    let s = get_session(c, id).await;
    assert_eq!(s.status(), pb::SessionStatus::Running, "after kill {kills}");
    let stored = s.outcomes_stored;
    assert!(
        stored >= acked,
        "after kill {kills}: {acked} were acked but only {stored} are stored"
    );
    let mut at = from.clone();
    let mut seq = from.upto;
    let mut by_kind = from.by_kind.clone();
    let mut token = from.token.clone();
    loop {
        let page = c
            .list_outcomes(pb::ListOutcomesRequest {
                session_id: id.into(),
                page_size: 2_000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for o in &page.outcomes {
            seq += 1;
            assert_eq!(
                o.seq, seq,
                "after kill {kills}: seqs 1..={stored} in order, once each"
            );
            assert_eq!(o.nodeid, format!("tests/test_n.py::test_{seq}"));
            *by_kind.entry(o.outcome()).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        at = Verified {
            token: token.clone(),
            upto: seq,
            by_kind: by_kind.clone(),
        };
    }
    assert_eq!(seq, stored, "after kill {kills}: the last row listed");
    let counts = s.counts.unwrap();
    let rows = |k| by_kind.get(&k).copied().unwrap_or(0);
    assert_eq!(
        (counts.passed, counts.failed, counts.skipped, counts.errors),
        (
            rows(pb::TestOutcome::Passed),
            rows(pb::TestOutcome::Failed),
            rows(pb::TestOutcome::Skipped),
            rows(pb::TestOutcome::Error)
        ),
        "after kill {kills}: the session's counts match its rows"
    );
    assert_eq!(counts.failed, stored / 10, "every tenth outcome failed");
    (stored, at)
}

fn integrity_check(db: &Path, kills: usize) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, ["ok"], "after kill {kills}");
}

/// Starts `serve` and SIGKILLs it `after` later, whether or not it has
/// opened the database or printed its listening line yet.
fn kill_during_startup(db: &Path, after: Duration) {
    let mut child = serve_command(db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_outcome_survives_thirty_sigkills_and_none_is_stored_twice() {
    let seed = seed();
    println!("crash loop: seed {seed:#018x} (PYTEST_MCP_CRASH_SEED repeats it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let id = new_id();
    let started = Instant::now();
    let mut acked = 0u64;
    let mut sent = 0u64;
    let mut stored = 0u64;
    let mut startup_kills = 0;
    let mut verified = Verified::default();

    for kills in 0..KILLS {
        if kills > 0 && rng.between(0, 3) == 0 {
            kill_during_startup(&db, Duration::from_millis(rng.between(0, 40)));
            startup_kills += 1;
            integrity_check(&db, kills);
        }
        let server = Server::start(&db);
        let mut c = server.client().await;
        if kills > 0 {
            // Every row again now and then; otherwise the rows after what
            // earlier rounds read (integrity_check covers the file itself).
            let from = if kills % 10 == 0 {
                Verified::default()
            } else {
                verified.clone()
            };
            let (now, upto) = check_restarted(&mut c, &id, acked, kills, &from).await;
            assert!(
                now >= stored,
                "after kill {kills}: {stored} rows were stored before, now {now}"
            );
            (stored, verified) = (now, upto);
        }
        start_session(&mut c, &id, "crash").await;

        let streaming = tokio::spawn(stream_until_killed(c, id.clone(), acked + 1, sent));
        tokio::time::sleep(Duration::from_millis(rng.between(20, 1000))).await;
        // The feeder never stops: a stream that ended already was ended by the
        // server, refusing something.
        assert!(
            !streaming.is_finished(),
            "before kill {}: the server ended the stream; its log: {:?}",
            kills + 1,
            server.stderr_tail.lock().unwrap()
        );
        server.kill9();
        let (seen, now_sent) = tokio::time::timeout(Duration::from_secs(30), streaming)
            .await
            .expect("the stream ends once the server is gone")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        acked = acked.max(seen);
        sent = now_sent;
        integrity_check(&db, kills + 1);
    }

    let server = Server::start(&db);
    let mut c = server.client().await;
    let (now, _) = check_restarted(&mut c, &id, acked, KILLS, &Verified::default()).await;
    assert!(now >= stored, "{stored} rows were stored before, now {now}");
    stored = now;
    let done = finish(&mut c, &id, stored, 0).await.unwrap();
    assert_eq!(done.status(), pb::SessionStatus::Finished);
    assert_eq!(done.outcomes_stored, stored);
    assert!(stored > 0, "nothing was ever stored");
    println!(
        "crash loop: {startup_kills} more kills during startup; {acked} acked; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "crash loop: {KILLS} kills survived, {stored} outcomes stored, {} lost, seed {seed:#018x}",
        acked.saturating_sub(stored)
    );
}
