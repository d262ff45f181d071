//! What fingerprinting a failure costs on the receive path, beside what
//! encoding it costs anyway: both run for every failing outcome before it is
//! queued for the writer (`detail::split`).
//!
//! The failures have the ingest benchmark's shape: a 1.5 KB chained
//! traceback, a message with numbers, captured stdout. Run with
//! `cargo bench --bench fingerprint` (`BENCH_FAILURES=N`, default 20000).

use std::time::Instant;

use pytest_mcp::model::{Outcome, TestOutcome};
use pytest_mcp::store::detail;
use pytest_mcp::store::fingerprint::StoredCause;

fn traceback(got: u64, want: u64) -> String {
    format!(
        "self = <tests.api.test_items.TestItems object at 0x7f3a2c1d{got:04x}>\n\
         size_value = 'size-{want}'\n\
         client = <tests.conftest.ApiClient object at 0x7f3a2c1e{want:04x}>\n\
         \n\
         \x20   @pytest.mark.parametrize(\"size_value\", PARAMS)\n\
         \x20   def test_create(self, size_value, client):\n\
         \x20       payload = build_payload(size_value, size=3)\n\
         \x20       response = client.post(\"/api/v1/items\", json=payload)\n\
         >       assert response.status_code == {want}\n\
         E       AssertionError: assert {got} == {want}\n\
         E        +  where {got} = <Response [{got}]>.status_code\n\
         \n\
         tests/api/test_items.py:120: AssertionError\n\
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
         E                   tests.conftest.ApiUnavailable: POST /api/v1/items failed after 3 attempts\n\
         \n\
         tests/conftest.py:{line}: ApiUnavailable\n\
         ----------------------------- Captured log call ------------------------------\n\
         WARNING  tests.conftest:conftest.py:120 retrying POST /api/v1/items ({got})\n",
        line = 100 + got % 50,
    )
}

fn main() {
    let n: u64 = std::env::var("BENCH_FAILURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let failures: Vec<Outcome> = (0..n)
        .map(|i| {
            let nodeid = format!("tests/api/test_items.py::TestItems::test_create[size-{i}]");
            let mut o = Outcome::new(i + 1, nodeid, TestOutcome::Failed);
            let (got, want) = (i % 1000, (i * 7) % 1000);
            o.message = format!("AssertionError: assert {got} == {want}");
            o.longrepr = traceback(got, want);
            o.stdout = format!("request id {}\nresponse status {got}\n", i * 7919);
            o
        })
        .collect();
    println!(
        "{:<6} {:>16} {:>22} {:>8}",
        "round", "fingerprint µs", "split (encode+fp) µs", "share"
    );
    let mut keys = 0usize;
    for round in 1..=5 {
        let t = Instant::now();
        for o in &failures {
            keys += StoredCause::of(o).map_or(0, |c| c.key.len());
        }
        let fingerprint = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let copies = failures.clone();
        let t = Instant::now();
        for o in copies {
            keys += detail::split(o).detail.map_or(0, |d| d.len()) & 1;
        }
        let split = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "{round:<6} {fingerprint:>16.2} {split:>22.2} {:>7.1}%",
            100.0 * fingerprint / split
        );
    }
    // Keeps the work from being optimised away.
    assert!(keys > 0);
    println!(
        "per failing outcome; {n} failures. rerun: BENCH_FAILURES={n} cargo bench --bench fingerprint"
    );
}
