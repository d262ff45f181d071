//! Failure causes recorded at a session's finish, on every backend: a
//! repeated finish counts a session once, and a cause stays known after the
//! sessions that had it are pruned; failures a release stored before it
//! kept causes get theirs when the database is upgraded.
#![allow(clippy::unwrap_used)]

mod support;

use pytest_mcp::model::{
    Environment, Outcome, SessionRef, Source, Summary, TestOutcome, Timestamp,
};
use pytest_mcp::store::fingerprint::Fingerprint;
use pytest_mcp::store::retention::Policy;
use pytest_mcp::store::{Location, Store, StoreConfig};
use support::{TestDb, backend_tests};
use uuid::Uuid;

backend_tests! {
    async fn a_cause_is_known_from_other_sessions_once_each_and_outlives_pruning;
    async fn failures_stored_before_causes_were_kept_are_fingerprinted_by_the_upgrade;
}

fn failure(seq: u64, port: u16) -> Outcome {
    let mut o = Outcome::new(seq, "tests/test_db.py::test_query", TestOutcome::Failed);
    o.message = format!("ConnectionRefusedError: cannot reach 127.0.0.1:{port}");
    o.longrepr = format!(
        "    def db():\n>       return connect({port})\nE   ConnectionRefusedError: cannot reach \
         127.0.0.1:{port}\n\ntests/conftest.py:9: ConnectionRefusedError"
    );
    o
}

async fn run(store: &Store, start: i64, port: u16) -> Uuid {
    let id = Uuid::new_v4();
    let env = Environment {
        os: "Linux".into(),
        python_version: "3.12.1".into(),
        project: "shop".into(),
        ..Environment::default()
    };
    store
        .start_session(id, Source::Plugin, env, Some(Timestamp(start)))
        .await
        .unwrap();
    store
        .append_outcomes(id, vec![failure(1, port)])
        .await
        .unwrap();
    let summary = Summary {
        total_tests: 1,
        failed: 1,
        exitstatus: 1,
        ..Summary::default()
    };
    store
        .finish_session(id, summary.clone(), 1, None)
        .await
        .unwrap();
    // A repeated finish (a retrying client) must not count the session twice.
    store.finish_session(id, summary, 1, None).await.unwrap();
    id
}

async fn a_cause_is_known_from_other_sessions_once_each_and_outlives_pruning(db: TestDb) {
    let location = Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    let store = Store::open(StoreConfig::new(location)).await.unwrap();
    let key = Fingerprint::of(&failure(1, 5433)).key();
    assert_eq!(
        key,
        Fingerprint::of(&failure(1, 6012)).key(),
        "ports differ, cause does not"
    );

    let first = run(&store, 1_000_000, 5433).await;
    let first_session = store.get_session(SessionRef::Id(first)).await.unwrap();
    // Only its own session had it: not known from another.
    let known = store
        .known_causes(&first_session, vec![key.clone()])
        .await
        .unwrap();
    assert!(known.is_empty(), "{known:?}");

    let second = run(&store, 2_000_000, 6012).await;
    let third = run(&store, 3_000_000, 7001).await;
    let third_session = store.get_session(SessionRef::Id(third)).await.unwrap();
    let known = store
        .known_causes(&third_session, vec![key.clone()])
        .await
        .unwrap();
    let k = known.get(&key).unwrap();
    assert_eq!(k.sessions, 2, "the two earlier sessions, each once");
    assert_eq!(k.first_seen, Timestamp(1_000_000));
    assert_eq!(k.last_seen, Timestamp(2_000_000));
    assert_eq!(k.failures, 2, "one failure in each");
    assert_eq!(k.tests, 1);
    assert_eq!(k.some_tests, ["tests/test_db.py::test_query"]);

    // Prune all but the newest: the cause stays known, with its history.
    let policy = Policy {
        keep_sessions: Some(1),
        older_than: None,
        project: None,
    };
    let report = store.prune(&policy, false).await.unwrap();
    assert!(
        store.get_session(SessionRef::Id(second)).await.is_err(),
        "{report:?}"
    );
    let known = store
        .known_causes(&third_session, vec![key.clone()])
        .await
        .unwrap();
    assert_eq!(
        known.get(&key).map(|k| (k.sessions, k.first_seen)),
        Some((2, Timestamp(1_000_000)))
    );
    store.shutdown().await;
}

/// Takes the database back to the schema before failures' causes were
/// stored, as the previous release left it: no `cause` column, no recorded
/// causes (and no quarantine, code states or dependencies, which came after).
fn downgrade_to_unkeyed_failures(db: &TestDb) {
    let common = format!(
        "{}; {}",
        support::WITHOUT_DEPENDENCIES,
        "DROP TABLE cause_tests;
        ALTER TABLE sessions DROP COLUMN code_state; ALTER TABLE sessions DROP COLUMN git_branch;
        DROP TABLE quarantine; ALTER TABLE outcomes DROP COLUMN quarantined;
        DELETE FROM cause_sessions; DELETE FROM causes;
        DROP INDEX cause_sessions_by_session; ALTER TABLE outcomes DROP COLUMN cause"
    );
    match db.backend() {
        support::Backend::Sqlite => db.execute(&format!("{common}; PRAGMA user_version = 4")),
        support::Backend::Postgres => db.execute(&format!(
            "{common}; UPDATE pytest_mcp_schema SET version = 2"
        )),
    }
}

async fn failures_stored_before_causes_were_kept_are_fingerprinted_by_the_upgrade(db: TestDb) {
    let location = Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    let store = Store::open(StoreConfig::new(location.clone()))
        .await
        .unwrap();
    let first = run(&store, 1_000_000, 5433).await;
    let second = run(&store, 2_000_000, 6012).await;
    store.shutdown().await;
    drop(store);
    downgrade_to_unkeyed_failures(&db);

    let store = Store::open(StoreConfig::new(location)).await.unwrap();
    let key = Fingerprint::of(&failure(1, 5433)).key();
    let causes = store
        .session_causes(SessionRef::Id(second), None)
        .await
        .unwrap();
    assert_eq!(causes.failures, 1);
    assert_eq!(
        causes
            .clusters
            .iter()
            .map(|c| c.key.clone())
            .collect::<Vec<_>>(),
        vec![key.clone()]
    );
    // The upgrade recorded the older session's causes: the newer one's is known.
    let known = store
        .known_causes(&causes.session, vec![key.clone()])
        .await
        .unwrap();
    assert_eq!(
        known.get(&key).map(|k| (k.sessions, k.first_seen)),
        Some((1, Timestamp(1_000_000))),
        "{known:?}"
    );
    // And which tests the cause broke, from the failures already stored.
    assert_eq!(known[&key].some_tests, ["tests/test_db.py::test_query"]);
    let first = store.get_session(SessionRef::Id(first)).await.unwrap();
    let known = store.known_causes(&first, vec![key.clone()]).await.unwrap();
    assert_eq!(known.get(&key).map(|k| k.sessions), Some(1));
    store.shutdown().await;
}
