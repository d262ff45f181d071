//! How long reading what each test last ran takes (`Store::deps_snapshot`,
//! what affected-test selection starts from) on a SQLite database with
//! history: `BENCH_TESTS` tests (default 10,000), each run `BENCH_RUNS`
//! times (default 200, each run a closed session), each depending on
//! `BENCH_UNITS` units (default 60) out of a project's pool of
//! `BENCH_POOL` (default 3,000); 2 % of the runs fail, and every tenth run
//! one test in a hundred depends on other units than before.
//!
//! The database is filled in-process through the store (untimed), then the
//! snapshot is read `BENCH_READS` times (default 5), each time by a store
//! opened anew so that nothing is cached, and once more from the cache.
//! Run with `cargo bench --bench deps`; it prints a table and never fails
//! on a slow result.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pytest_mcp::model::{
    CodeUnit, Environment, Outcome, Project, Source, Summary, TestOutcome, Timestamp, UnitKind,
};
use pytest_mcp::store::affected::{ChangeInput, SelectRequest};
use pytest_mcp::store::{Store, StoreConfig};

fn env_or(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// A small deterministic generator (the same database every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn unit(key: u64) -> CodeUnit {
    CodeUnit {
        key,
        code: key.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        kind: UnitKind::Function,
        path: format!("pkg/mod_{}.py", key % 97),
        name: format!("func_{key}"),
        line_start: (key % 400) as u32 + 1,
        line_end: (key % 400) as u32 + 20,
        checksum: format!("{:016x}", key.wrapping_mul(31)),
    }
}

/// Test `t`'s units in its `version`-th form.
fn deps_of(t: u64, version: u64, per_test: u64, pool: u64) -> Vec<u64> {
    let mut g = Lcg(t * 1_000_003 + version);
    (0..per_test).map(|_| g.next() % pool + 1).collect()
}

fn main() -> anyhow::Result<()> {
    let tests = env_or("BENCH_TESTS", 10_000)?;
    let runs = env_or("BENCH_RUNS", 200)?;
    let per_test = env_or("BENCH_UNITS", 60)?;
    let pool = env_or("BENCH_POOL", 3_000)?;
    let reads = env_or("BENCH_READS", 5)?.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        // BENCH_DB_FILE keeps the filled database (and reuses it when it
        // exists), to measure the read again without filling it anew.
        let kept = std::env::var_os("BENCH_DB_FILE").map(std::path::PathBuf::from);
        let reuse = kept.as_ref().is_some_and(|p| p.exists());
        let path = kept.unwrap_or_else(|| dir.path().join("deps.db"));
        println!(
            "deps snapshot benchmark: {tests} tests x {runs} closed runs, {per_test} units per \
             test out of {pool}; database {} (set TMPDIR to measure another disk)",
            path.display()
        );
        let store = Store::open(StoreConfig::new(path.clone())).await?;
        let started = Instant::now();
        let mut versions = vec![0u64; tests as usize];
        let mut g = Lcg(7);
        for run in (0..runs).filter(|_| !reuse) {
            let id = uuid::Uuid::from_u128(0xde95_0000_0000_4000_8000_0000_0000_0000 + run as u128);
            let environment = Environment {
                project: "bench".into(),
                code_state: format!("{:040x}", run),
                ..Environment::default()
            };
            let start = Timestamp(1_700_000_000_000_000 + run as i64 * 600_000_000);
            store
                .start_session(id, Source::Plugin, environment, Some(start))
                .await?;
            if run % 10 == 9 {
                for v in versions.iter_mut() {
                    if g.next().is_multiple_of(100) {
                        *v += 1;
                    }
                }
            }
            let mut seq = 0u64;
            for chunk in (0..tests).collect::<Vec<_>>().chunks(1000) {
                let outcomes: Vec<Outcome> = chunk
                    .iter()
                    .map(|&t| {
                        seq += 1;
                        let kind = if g.next().is_multiple_of(50) {
                            TestOutcome::Failed
                        } else {
                            TestOutcome::Passed
                        };
                        let mut o =
                            Outcome::new(seq, format!("tests/test_m{}.py::test_{t}", t / 50), kind);
                        o.deps = Some(deps_of(t, versions[t as usize], per_test, pool));
                        o
                    })
                    .collect();
                // The whole pool once, with the first batch that needs it.
                let units = if run == 0 && seq <= 1000 {
                    (1..=pool).map(unit).collect()
                } else {
                    Vec::new()
                };
                store.append_with_units(id, outcomes, units).await?;
            }
            store
                .finish_session(id, Summary::default(), tests, None)
                .await?;
        }
        store.shutdown().await;
        drop(store);
        println!(
            "filled in {:.1} s; {} bytes on disk",
            started.elapsed().as_secs_f64(),
            std::fs::metadata(&path)?.len()
        );

        let project = Project::named("bench");
        let mut cold: Vec<Duration> = Vec::new();
        let mut selections: Vec<Duration> = Vec::new();
        let mut selections_kept: Vec<Duration> = Vec::new();
        let mut selected = 0;
        let mut last = None;
        for _ in 0..reads {
            let store = Store::open(StoreConfig::new(path.clone())).await?;
            let t = Instant::now();
            let snap = store.deps_snapshot(&project).await?;
            cold.push(t.elapsed());
            let t = Instant::now();
            let again = store.deps_snapshot(&project).await?;
            let warm = t.elapsed();
            ensure!(std::sync::Arc::ptr_eq(&snap, &again), "the snapshot was not kept");
            store.shutdown().await;
            // The whole selection, as `affected_tests` and `--mcp-affected`
            // make it: snapshot, flaky verdicts, rules; on a store opened
            // anew, then again with what it keeps.
            let store = Store::open(StoreConfig::new(path.clone())).await?;
            let change = SelectRequest {
                change: Some(ChangeInput::Files(vec![snap.units[0].path.clone()])),
                ..SelectRequest::default()
            };
            let t = Instant::now();
            let (_, selection) = store.affected(&project, &change).await?;
            selections.push(t.elapsed());
            let t = Instant::now();
            store.affected(&project, &change).await?;
            selections_kept.push(t.elapsed());
            selected = selection.tests.len();
            store.shutdown().await;
            last = Some((snap, warm));
        }
        selections.sort();
        selections_kept.sort();
        let (snap, warm) = last.context("no read")?;
        ensure!(
            snap.tests.len() as u64 == tests,
            "the snapshot holds {} tests, not {tests}",
            snap.tests.len()
        );
        cold.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!();
        println!("| read | ms |");
        println!("| --- | ---: |");
        println!("| deps_snapshot, cold (fastest of {reads}) | {:.1} |", ms(cold[0]));
        println!(
            "| deps_snapshot, cold (median of {reads}) | {:.1} |",
            ms(cold[cold.len() / 2])
        );
        println!("| deps_snapshot, kept (the newest session unchanged) | {:.3} |", ms(warm));
        println!(
            "| affected (one changed file: {selected} tests selected), cold (median of {reads}) | {:.1} |",
            ms(selections[selections.len() / 2])
        );
        println!(
            "| affected, again (snapshot and flaky verdicts kept) (median of {reads}) | {:.1} |",
            ms(selections_kept[selections_kept.len() / 2])
        );
        println!();
        println!(
            "snapshot: {} tests, {} sets, {} units (target: under 100 ms cold)",
            snap.tests.len(),
            snap.sets.len(),
            snap.units.len()
        );
        println!("rerun: cargo bench --bench deps (BENCH_TESTS BENCH_RUNS BENCH_UNITS BENCH_POOL BENCH_READS)");
        Ok(())
    })
}
