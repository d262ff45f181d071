//! Code states across an upgrade: sessions stored before the schema had
//! `code_state` and `git_branch` get them in place (a clean checkout's
//! commit is its code; a dirty one's commit says nothing), and the flaky
//! verdict and compare's default base read them.
//!
//! `tests/fixtures/v7/schema7.db` was written by the release before this
//! schema (fcc1dff, schema 7), by importing `spool.jsonl` beside it:
//! `pytest-mcp import --db schema7.db spool.jsonl` with that release's binary.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use pytest_mcp::model::{Environment, Outcome, Project, SessionRef, Source, Summary, TestOutcome};
use pytest_mcp::store::{Location, Store, StoreConfig};
use support::{TestDb, backend_tests};
use uuid::Uuid;

backend_tests! {
    async fn sessions_stored_before_code_states_get_them_from_a_clean_checkouts_commit;
}

const C1: &str = "c100000000000000000000000000000000000000";

fn session(n: u128) -> Uuid {
    Uuid::from_u128(0x7a000000_0000_4000_8000_000000000000 + n)
}

/// What the fixture's five sessions must read as: test_a passed on c1
/// (clean), failed on c1 with uncommitted changes, failed on c1 (clean):
/// flaky on c1, witnessed by the clean runs only; and the newest session,
/// on branch `feature`, is compared with the older `feature` one.
async fn check(store: &Store) {
    let fx = Project::named("fx");
    let (total, flaky) = store.flaky_tests(30, &fx, 10).await.unwrap();
    assert_eq!(total, 1, "{flaky:?}");
    assert_eq!(flaky[0].nodeid, "tests/test_fx.py::test_a");
    let evidence = flaky[0].stability.evidence.clone().unwrap();
    assert_eq!(evidence.code_state.as_deref(), Some(C1));
    assert_eq!(evidence.passed_in, [session(1)]);
    assert_eq!(
        evidence.failed_in,
        [session(3)],
        "the dirty run is not on c1's code"
    );
    let base = store
        .default_base(SessionRef::Id(session(4)))
        .await
        .unwrap();
    assert_eq!(
        base,
        SessionRef::Id(session(0)),
        "the session before on its branch"
    );
}

#[tokio::test]
async fn a_file_the_previous_release_wrote_gets_code_states_and_branches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("schema7.db");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v7/schema7.db");
    std::fs::copy(fixture, &db).unwrap();
    let store = Store::open(StoreConfig::new(db.clone())).await.unwrap();
    check(&store).await;
    store.shutdown().await;
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, pytest_mcp::store::SCHEMA_VERSION);
    let codes: Vec<(String, Option<String>, Option<String>)> = conn
        .prepare("SELECT id, code_state, git_branch FROM sessions ORDER BY started_at")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let dirty = &codes[2];
    assert_eq!(dirty.0, session(2).to_string());
    assert_eq!(dirty.1, None, "a dirty tree's commit is not its code");
    assert_eq!(codes[1].1.as_deref(), Some(C1));
    assert_eq!(
        codes.iter().map(|c| c.2.as_deref()).collect::<Vec<_>>(),
        [
            Some("feature"),
            Some("main"),
            Some("main"),
            Some("main"),
            Some("feature")
        ]
    );
}

/// The fixture's sessions recorded on `db`, then the database taken back
/// to the schema before code states; reopened, it is upgraded in place.
async fn sessions_stored_before_code_states_get_them_from_a_clean_checkouts_commit(db: TestDb) {
    let location = Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    let store = Store::open(StoreConfig::new(location.clone()))
        .await
        .unwrap();
    let c0 = "0".repeat(39) + "1";
    let c2 = "c2".to_string() + &"0".repeat(38);
    let runs = [
        ("feature", c0.as_str(), false, [true, true]),
        ("main", C1, false, [true, true]),
        ("main", C1, true, [false, true]),
        ("main", C1, false, [false, true]),
        ("feature", c2.as_str(), false, [true, false]),
    ];
    for (n, (branch, commit, dirty, passed)) in runs.into_iter().enumerate() {
        let id = session(n as u128);
        let env = Environment {
            project: "fx".into(),
            git_commit: commit.into(),
            git_branch: branch.into(),
            git_dirty: Some(dirty),
            ..Environment::default()
        };
        let start = pytest_mcp::model::Timestamp(1_000_000 * (n as i64 + 1));
        store
            .start_session(id, Source::Import, env, Some(start))
            .await
            .unwrap();
        let outcomes = ["tests/test_fx.py::test_a", "tests/test_fx.py::test_b"]
            .iter()
            .zip(passed)
            .enumerate()
            .map(|(i, (nodeid, ok))| {
                let kind = if ok {
                    TestOutcome::Passed
                } else {
                    TestOutcome::Failed
                };
                Outcome::new(i as u64 + 1, *nodeid, kind)
            })
            .collect();
        store.append_outcomes(id, outcomes).await.unwrap();
        store
            .finish_session(id, Summary::default(), 2, None)
            .await
            .unwrap();
    }
    store.shutdown().await;
    drop(store);
    // Back to the schema of the release before: no code states, no
    // branches, and none of what later schemas added (dependencies).
    let drop_columns = format!(
        "{}; ALTER TABLE sessions DROP COLUMN code_state; ALTER TABLE sessions DROP COLUMN git_branch",
        support::WITHOUT_DEPENDENCIES
    );
    match db.backend() {
        support::Backend::Sqlite => db.execute(&format!("{drop_columns}; PRAGMA user_version = 7")),
        support::Backend::Postgres => db.execute(&format!(
            "{drop_columns}; UPDATE pytest_mcp_schema SET version = 5"
        )),
    }
    let store = Store::open(StoreConfig::new(location)).await.unwrap();
    check(&store).await;
    store.shutdown().await;
}
