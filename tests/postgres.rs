//! The PostgreSQL backend as replicas see it: two stores opened on one real
//! database (two replicas in one process), writing and reading at once.
//!
//! Needs `PYTEST_MCP_TEST_PG`, the URL of a PostgreSQL server whose
//! maintenance database it may create databases from (scripts/test starts
//! one with scripts/pg-server); without it these tests fail, saying so,
//! unless `PYTEST_MCP_TEST_BACKENDS=sqlite` leaves PostgreSQL out.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pytest_mcp::model::{Environment, Outcome, SessionRef, SessionStatus, Source, TestOutcome};
use pytest_mcp::policy::{Decision, Gate, Policy};
use pytest_mcp::store::{OutcomeFilter, Store, StoreConfig};
use support::{Backend, TestDb};
use uuid::Uuid;

/// A fresh database for the test `name` on the test server, and its URL;
/// `None` when PYTEST_MCP_TEST_BACKENDS leaves PostgreSQL out.
fn fresh_database(name: &str) -> Option<(TestDb, String)> {
    let db = TestDb::for_test(Backend::Postgres, name)?;
    let url = db.arg().to_str().unwrap().to_string();
    Some((db, url))
}

async fn open(url: &str) -> Store {
    Store::open(StoreConfig::new(
        pytest_mcp::store::Location::parse(url.as_ref()).unwrap(),
    ))
    .await
    .unwrap()
}

fn outcome(seq: u64, kind: TestOutcome) -> Outcome {
    let mut o = Outcome::new(seq, format!("tests/test_r.py::test_{seq}"), kind);
    o.duration = 0.01;
    if kind.is_failure() {
        o.message = format!("assert {seq} == 0");
        o.longrepr =
            format!("def test_{seq}():\n>       assert {seq} == 0\nE       AssertionError");
    }
    o
}

fn kind_of(seq: u64) -> TestOutcome {
    if seq.is_multiple_of(7) {
        TestOutcome::Failed
    } else {
        TestOutcome::Passed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_writing_one_session_store_every_seq_once_with_exact_counts() {
    let Some((_db, url)) =
        fresh_database("two_replicas_writing_one_session_store_every_seq_once_with_exact_counts")
    else {
        return;
    };
    let (a, b) = (open(&url).await, open(&url).await);
    let id = Uuid::new_v4();
    let env = Environment {
        project: "replicas".into(),
        ..Default::default()
    };
    // Both replicas get the start (a plugin that reconnected elsewhere).
    a.start_session(id, Source::Plugin, env.clone(), None)
        .await
        .unwrap();
    b.start_session(id, Source::Plugin, env, None)
        .await
        .unwrap();
    // Each replica receives every batch, overlapping and out of step, as a
    // plugin resending its unacknowledged tail to another replica would.
    const N: u64 = 3000;
    let batches: Vec<Vec<Outcome>> = (0..N / 100)
        .map(|i| {
            (i * 100 + 1..=i * 100 + 100)
                .map(|s| outcome(s, kind_of(s)))
                .collect()
        })
        .collect();
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone()] {
        let batches = batches.clone();
        tasks.push(tokio::spawn(async move {
            let mut highest = 0;
            for batch in batches {
                // A gap is refused (the other replica is behind); resend
                // from what is stored, as the plugin does.
                loop {
                    match store.append_outcomes(id, batch.clone()).await {
                        Ok(stored) => {
                            highest = stored;
                            break;
                        }
                        Err(e) if e.to_string().contains("expected seq") => {
                            tokio::task::yield_now().await
                        }
                        Err(e) => panic!("append: {e}"),
                    }
                }
            }
            highest
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), N);
    }
    let s = a
        .finish_session(id, Default::default(), N, None)
        .await
        .unwrap();
    assert_eq!(s.status, SessionStatus::Finished);
    let read = b.get_session(SessionRef::Id(id)).await.unwrap();
    assert_eq!(read.outcomes_stored, N);
    let failed = (1..=N).filter(|s| s.is_multiple_of(7)).count() as u64;
    assert_eq!(
        (read.counts.passed, read.counts.failed),
        (N - failed, failed)
    );
    let (_, page) = b
        .list_outcomes(SessionRef::Id(id), OutcomeFilter::default(), 10_000, None)
        .await
        .unwrap();
    let seqs: Vec<u64> = page.items.iter().map(|o| o.seq).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    let (_, failures) = a
        .list_outcomes(
            SessionRef::Id(id),
            OutcomeFilter {
                outcomes: vec![TestOutcome::Failed],
                ..Default::default()
            },
            10_000,
            None,
        )
        .await
        .unwrap();
    assert_eq!(failures.items.len() as u64, failed);
    assert!(failures.items[0].longrepr.contains("AssertionError"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_hears_what_another_commits() {
    let Some((_db, url)) = fresh_database("a_replica_hears_what_another_commits") else {
        return;
    };
    let (a, b) = (open(&url).await, open(&url).await);
    // The listener connects in the background; give it a moment to LISTEN.
    let mut events = b.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = Uuid::new_v4();
    a.start_session(id, Source::Plugin, Environment::default(), None)
        .await
        .unwrap();
    let batch: Vec<Outcome> = (1..=50).map(|s| outcome(s, TestOutcome::Passed)).collect();
    let committed = Instant::now();
    a.append_outcomes(id, batch).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.session == id && e.outcomes_stored == 50 {
                return e;
            }
        }
    })
    .await
    .expect("replica B heard nothing of replica A's commit within a second");
    assert_eq!(heard.status, SessionStatus::Running);
    eprintln!("heard after {:?}", committed.elapsed());
    a.finish_session(id, Default::default(), 50, None)
        .await
        .unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.session == id && e.status.is_closed() {
                return e;
            }
        }
    })
    .await
    .expect("the finish was not heard");
    assert_eq!(finished.status, SessionStatus::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_replicas_together() {
    let Some((_db, url)) = fresh_database("a_rate_limit_holds_across_replicas_together") else {
        return;
    };
    let (a, b) = (open(&url).await, open(&url).await);
    let tools = vec!["get_session".to_string()];
    let policy = r#"{"version": "1", "default": "allow", "tools": {
        "get_session": {"limits": [{"counter": "reads", "window": "minute", "max": 30, "scope": "grant"}]}}}"#;
    let gate_a = Arc::new(Gate::new(Policy::parse(policy, &tools).unwrap()));
    let gate_b = Arc::new(Gate::new(Policy::parse(policy, &tools).unwrap()));
    let mut calls = Vec::new();
    for i in 0..50 {
        let (gate, store) = if i % 2 == 0 {
            (gate_a.clone(), a.clone())
        } else {
            (gate_b.clone(), b.clone())
        };
        calls.push(tokio::spawn(async move {
            gate.check_in(&store, "get_session", "ci").await
        }));
    }
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for c in calls {
        *tally.entry(c.await.unwrap().kind()).or_default() += 1;
    }
    assert_eq!(tally.get("allowed"), Some(&30), "{tally:?}");
    assert_eq!(tally.get("limited"), Some(&20), "{tally:?}");
    // Another grant has its own counter.
    assert_eq!(
        gate_b.check_in(&b, "get_session", "laptop").await,
        Decision::Allowed
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_passwords_stay_out_of_errors() {
    let Some((_db, url)) =
        fresh_database("a_newer_schema_is_refused_and_passwords_stay_out_of_errors")
    else {
        return;
    };
    let store = open(&url).await;
    store.shutdown().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("UPDATE pytest_mcp_schema SET version = version + 1")
        .await
        .unwrap();
    let err = Store::open(StoreConfig::new(
        pytest_mcp::store::Location::parse(url.as_ref()).unwrap(),
    ))
    .await
    .err()
    .expect("a newer schema is refused");
    assert!(err.to_string().contains("newer than this binary"), "{err}");

    let unreachable = "postgres://ci:hunter2@127.0.0.1:1/results";
    let err = Store::open(StoreConfig::new(
        pytest_mcp::store::Location::parse(unreachable.as_ref()).unwrap(),
    ))
    .await
    .err()
    .expect("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.contains("unreachable"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_read_only_database_is_named_read_only_and_serve_refuses_it() {
    let Some((_db, url)) =
        fresh_database("a_read_only_database_is_named_read_only_and_serve_refuses_it")
    else {
        return;
    };
    // A database with history, then set to read-only transactions (as a
    // standby is).
    let store = open(&url).await;
    let id = Uuid::new_v4();
    store
        .start_session(id, Source::Plugin, Environment::default(), None)
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    client
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();

    // A write on a connection opened before says read-only once the new
    // setting reaches it; on a new store, at once.
    store.shutdown().await;
    let store = open(&url).await;
    assert!(store.read_only());
    let err = store
        .start_session(Uuid::new_v4(), Source::Plugin, Environment::default(), None)
        .await
        .expect_err("a read-only database takes no writes");
    assert!(err.to_string().contains("read-only"), "{err}");
    // Reading still works.
    let s = store.get_session(SessionRef::Id(id)).await.unwrap();
    assert_eq!(s.id, id);
    store.shutdown().await;

    // `serve` refuses to start on it, saying why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pytest-mcp"))
        .args(["serve", "--db", &url, "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the database is read-only"), "{stderr}");
    assert!(stderr.contains("standby"), "{stderr}");

    client
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" SET default_transaction_read_only = off"
        ))
        .await
        .unwrap();
}

/// Turns TLS on in the test server with a fresh self-signed certificate for
/// 127.0.0.1 and returns that certificate's PEM file (the CA to trust).
async fn server_with_tls(url: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    // Outlives the test: the server rereads these files when reloaded.
    let dir = std::env::temp_dir().join(format!("pytest-mcp-pg-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        // The server runs as postgres and must own its key.
        let ok = std::process::Command::new("chown")
            .arg("postgres:")
            .args([&cert, &key])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres: the certificate files");
    }
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // One statement each: ALTER SYSTEM may not run in a (batch's) transaction.
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        client.simple_query(&sql).await.unwrap();
    }
    // The reload is asynchronous: wait until the server says TLS is on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let on: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not turn TLS on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cert
}

#[tokio::test]
async fn sslmode_require_checks_the_server_against_the_given_ca() {
    let Some((_db, url)) = fresh_database("sslmode_require_checks_the_server_against_the_given_ca")
    else {
        return;
    };
    let ca = server_with_tls(&url).await;
    let tls_url = format!("{url}?sslmode=require&sslrootcert={}", ca.display());
    let store = open(&tls_url).await;
    let id = Uuid::new_v4();
    store
        .start_session(id, Source::Plugin, Environment::default(), None)
        .await
        .unwrap();
    store
        .append_outcomes(id, vec![outcome(1, TestOutcome::Passed)])
        .await
        .unwrap();
    assert_eq!(
        store
            .get_session(SessionRef::Id(id))
            .await
            .unwrap()
            .outcomes_stored,
        1
    );
    store.shutdown().await;

    // A server whose certificate the given CA did not sign is refused.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let err = Store::open(StoreConfig::new(
        pytest_mcp::store::Location::parse(
            format!("{url}?sslmode=require&sslrootcert={}", wrong.display()).as_ref(),
        )
        .unwrap(),
    ))
    .await
    .err()
    .expect("an untrusted server certificate is refused");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_that_lost_its_connection_catches_up_on_what_it_missed() {
    let Some((_db, url)) =
        fresh_database("a_listener_that_lost_its_connection_catches_up_on_what_it_missed")
    else {
        return;
    };
    let a = open(&url).await;
    let b = open(&format!("{url}?application_name=replica-b")).await;
    let mut events = b.subscribe();
    let id = Uuid::new_v4();
    a.start_session(id, Source::Plugin, Environment::default(), None)
        .await
        .unwrap();
    // Cut replica B's listening connection, then commit on A while B is deaf.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cut = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'replica-b (listen)'",
                &[],
            )
            .await
            .unwrap();
        if !cut.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "replica B never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batch: Vec<Outcome> = (1..=20).map(|s| outcome(s, TestOutcome::Passed)).collect();
    a.append_outcomes(id, batch).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.session == id && e.outcomes_stored == 20 {
                return e;
            }
        }
    })
    .await
    .expect("replica B never heard of the outcomes committed while it was not listening");
    assert_eq!(heard.status, SessionStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    let Some((_db, url)) = fresh_database("replicas_starting_together_migrate_once") else {
        return;
    };
    // Six replicas open an empty database at the same moment: the advisory
    // lock lets one create the schema while the others wait, then find it.
    let opened = futures_util::future::join_all((0..6).map(|_| open(&url))).await;
    let id = Uuid::new_v4();
    opened[0]
        .start_session(id, Source::Plugin, Environment::default(), None)
        .await
        .unwrap();
    for store in &opened {
        assert_eq!(store.get_session(SessionRef::Id(id)).await.unwrap().id, id);
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query("SELECT version FROM pytest_mcp_schema", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one schema version row");
}
