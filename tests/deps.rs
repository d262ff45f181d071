//! Per-test dependencies on every backend: outcomes stream in over gRPC with
//! the code units they ran, through a real tonic client and the real
//! `pytest-mcp serve`; what is stored is read back through the store's own
//! reads and counted in the database.

#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::process::Command;

use pytest_mcp::grpc::pb;
use support::*;

backend_tests! {
    async fn a_set_shared_by_two_runs_is_stored_once_and_each_run_points_at_it;
    async fn an_undeclared_unit_is_refused_naming_its_field_and_nothing_of_the_batch_is_stored;
    async fn a_redeclared_unit_is_a_no_op_and_a_resent_batch_adds_nothing;
    async fn a_bad_unit_is_refused_naming_its_field;
    async fn units_are_shared_by_every_spelling_of_a_project_and_not_across_projects;
    fn a_spool_with_units_lines_imports_its_dependencies_and_importing_it_twice_adds_nothing;
    async fn the_snapshot_holds_each_tests_newest_closed_run_its_set_and_the_newest_watched_files;
    async fn a_database_taken_back_to_the_schema_before_dependencies_upgrades_and_takes_them;
    async fn passing_and_failing_with_the_same_dependencies_is_flaky_across_commits_by_that_rule;
    async fn dependencies_that_changed_between_a_pass_and_a_failure_are_a_regression_on_one_code_state;
    async fn pruning_removes_sets_no_outcome_uses_and_units_no_set_names_beside_a_running_server;
}

const A: &str = "tests/test_d.py::test_a";
const B: &str = "tests/test_d.py::test_b";

fn passed(seq: u64, nodeid: &str) -> pb::Outcome {
    outcome(seq, nodeid, pb::TestOutcome::Passed)
}

fn count(db: &TestDb, table: &str) -> i64 {
    db.query_i64(&format!("SELECT count(*) FROM {table}"))
}

async fn a_set_shared_by_two_runs_is_stored_once_and_each_run_points_at_it(db: TestDb) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let units: Vec<pb::CodeUnit> = (1..=4).map(|k| unit(k, "aa")).collect();
    for run in 0..2 {
        let id = new_id();
        start_session(&mut client, &id, "deps").await;
        // The first run declares the units; the second names them only.
        let declared = if run == 0 { units.clone() } else { Vec::new() };
        let acks = stream_units(
            &mut client,
            &id,
            vec![(
                vec![
                    with_deps(passed(1, A), &[3, 1, 2]),
                    with_deps(passed(2, B), &[1, 2, 3, 4]),
                ],
                declared,
            )],
        )
        .await
        .unwrap();
        assert_eq!(acks, [2]);
        finish(&mut client, &id, 2, 0).await.unwrap();
    }
    assert_eq!(count(&db, "dep_units"), 4);
    assert_eq!(count(&db, "dep_sets"), 2, "two distinct sets, each once");
    assert_eq!(
        db.query_i64("SELECT count(DISTINCT deps) FROM outcomes"),
        2,
        "four outcomes point at two sets"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM outcomes WHERE deps IS NULL"),
        0
    );
}

async fn an_undeclared_unit_is_refused_naming_its_field_and_nothing_of_the_batch_is_stored(
    db: TestDb,
) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let id = new_id();
    start_session(&mut client, &id, "deps").await;
    let err = stream_units(
        &mut client,
        &id,
        vec![(
            vec![
                with_deps(passed(1, A), &[1]),
                passed(2, "tests/test_d.py::test_plain"),
                with_deps(passed(3, B), &[1, 2, 0x0123_4567_89ab_cdef]),
            ],
            vec![unit(1, "aa"), unit(2, "bb")],
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("outcomes[2].deps.units[2]: unit 0123456789abcdef was not declared"),
        "{}",
        err.message()
    );
    assert_eq!(get_session(&mut client, &id).await.outcomes_stored, 0);
    assert_eq!(count(&db, "outcomes"), 0);
    assert_eq!(
        count(&db, "dep_units"),
        0,
        "the batch's units were not kept"
    );
    assert_eq!(count(&db, "dep_sets"), 0);
    // The same batch with the unit declared is stored whole.
    let acks = stream_units(
        &mut client,
        &id,
        vec![(
            vec![
                with_deps(passed(1, A), &[1]),
                passed(2, "tests/test_d.py::test_plain"),
                with_deps(passed(3, B), &[1, 2, 0x0123_4567_89ab_cdef]),
            ],
            vec![
                unit(1, "aa"),
                unit(2, "bb"),
                unit(0x0123_4567_89ab_cdef, "cc"),
            ],
        )],
    )
    .await
    .unwrap();
    assert_eq!(acks, [3]);
    assert_eq!(count(&db, "dep_sets"), 2);
}

async fn a_redeclared_unit_is_a_no_op_and_a_resent_batch_adds_nothing(db: TestDb) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let id = new_id();
    start_session(&mut client, &id, "deps").await;
    let batch = (
        vec![with_deps(passed(1, A), &[1, 2])],
        vec![unit(1, "aa"), unit(2, "bb")],
    );
    stream_units(&mut client, &id, vec![batch.clone()])
        .await
        .unwrap();
    let before = (
        count(&db, "dep_units"),
        count(&db, "dep_sets"),
        count(&db, "outcomes"),
    );
    // Resent after a reconnect, with its units declared again (one of them
    // with other content: the first declaration stays).
    let mut again = batch.clone();
    again.1[0].checksum = "ff".into();
    let acks = stream_units(&mut client, &id, vec![again]).await.unwrap();
    assert_eq!(acks, [1]);
    // A new outcome redeclaring a stored unit.
    let acks = stream_units(
        &mut client,
        &id,
        vec![(vec![with_deps(passed(2, B), &[2, 1])], vec![unit(2, "bb")])],
    )
    .await
    .unwrap();
    assert_eq!(acks, [2]);
    let after = (
        count(&db, "dep_units"),
        count(&db, "dep_sets"),
        count(&db, "outcomes"),
    );
    assert_eq!(
        after,
        (before.0, before.1, before.2 + 1),
        "the same set again"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM dep_units WHERE checksum = 'aa'"),
        1
    );
}

async fn a_bad_unit_is_refused_naming_its_field(db: TestDb) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let id = new_id();
    start_session(&mut client, &id, "deps").await;
    let mut cases: Vec<(pb::CodeUnit, &str)> = Vec::new();
    cases.push((unit(9, "ABC"), "units[3].checksum"));
    cases.push((unit(9, &"a".repeat(65)), "units[3].checksum"));
    let mut u = unit(9, "aa");
    u.kind = pb::UnitKind::Unspecified.into();
    cases.push((u, "units[3].kind"));
    let mut u = unit(9, "aa");
    u.path = "p".repeat(4097);
    cases.push((u, "units[3].path"));
    let mut u = unit(9, "aa");
    u.name = "n".repeat(4097);
    cases.push((u, "units[3].name"));
    let mut u = unit(9, "aa");
    (u.line_start, u.line_end) = (7, 3);
    cases.push((u, "units[3].line_end"));
    for (bad, field) in cases {
        let mut units: Vec<pb::CodeUnit> = (1..=3).map(|k| unit(k, "aa")).collect();
        units.push(bad);
        let err = stream_units(
            &mut client,
            &id,
            vec![(vec![with_deps(passed(1, A), &[1, 9])], units)],
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let mut o = passed(1, A);
    o.deps = Some(pb::TestDependencies {
        units: vec![1; pytest_mcp::model::MAX_TEST_UNITS + 1],
    });
    let err = stream_units(&mut client, &id, vec![(vec![o], vec![unit(1, "aa")])])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("outcomes[0].deps.units"),
        "{}",
        err.message()
    );
    assert_eq!(count(&db, "dep_units"), 0);
    assert_eq!(count(&db, "outcomes"), 0);
}

async fn units_are_shared_by_every_spelling_of_a_project_and_not_across_projects(db: TestDb) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let first = new_id();
    start_session(&mut client, &first, "Deps").await;
    stream_units(
        &mut client,
        &first,
        vec![(vec![with_deps(passed(1, A), &[1])], vec![unit(1, "aa")])],
    )
    .await
    .unwrap();
    // Another spelling of the project names the unit without declaring it.
    let second = new_id();
    start_session(&mut client, &second, "deps").await;
    let acks = stream_units(
        &mut client,
        &second,
        vec![(vec![with_deps(passed(1, A), &[1])], Vec::new())],
    )
    .await
    .unwrap();
    assert_eq!(acks, [1]);
    // Another project must declare its own.
    let other = new_id();
    start_session(&mut client, &other, "other").await;
    let err = stream_units(
        &mut client,
        &other,
        vec![(vec![with_deps(passed(1, A), &[1])], Vec::new())],
    )
    .await
    .unwrap_err();
    assert!(
        err.message()
            .contains("outcomes[0].deps.units[0]: unit 0000000000000001 was not declared"),
        "{}",
        err.message()
    );
    assert_eq!(count(&db, "dep_sets"), 1);
}

/// Runs `pytest-mcp import FILE --db DB`; returns its stdout and stderr.
fn import(file: &std::path::Path, db: &OsStr) -> (String, String) {
    let out = Command::new(binary())
        .arg("import")
        .arg(file)
        .arg("--db")
        .arg(db)
        .env_remove("PYTEST_MCP_DB")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn a_spool_with_units_lines_imports_its_dependencies_and_importing_it_twice_adds_nothing(
    db: TestDb,
) {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.jsonl");
    let sid = "5d000000-0000-4000-8000-000000000001";
    let unit = |key: &str, name: &str| {
        serde_json::json!({"key": key, "code": format!("c{}", &key[1..]), "kind": "function",
            "path": "pkg/mod.py", "name": name, "line_start": 1, "line_end": 4,
            "checksum": "0af3"})
    };
    let lines = [
        serde_json::json!({"type": "start", "session_id": sid,
            "environment": {"project": "spooled", "os": "Linux", "python_version": "3.12"}}),
        serde_json::json!({"type": "units", "session_id": sid,
            "units": [unit("00000000000000a1", "f"), unit("00000000000000a2", "g")]}),
        serde_json::json!({"type": "outcome", "session_id": sid, "seq": 1, "nodeid": A,
            "outcome": "passed", "deps": ["00000000000000a1", "00000000000000a2"]}),
        serde_json::json!({"type": "units", "session_id": sid,
            "units": [{"key": "00000000000000b1", "code": "00000000000000c1", "kind": "file",
                       "path": "data/x.json", "checksum": "01"}]}),
        serde_json::json!({"type": "outcome", "session_id": sid, "seq": 2, "nodeid": B,
            "outcome": "failed", "deps": ["00000000000000a1", "00000000000000b1"]}),
        serde_json::json!({"type": "outcome", "session_id": sid, "seq": 3,
            "nodeid": "tests/test_d.py::test_c", "outcome": "passed"}),
        serde_json::json!({"type": "finish", "session_id": sid, "outcomes_sent": 3,
            "summary": {"total_tests": 3, "passed": 2, "failed": 1}}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&spool, text).unwrap();
    let (out, err) = import(&spool, db.arg());
    assert!(out.contains("3 new, 3 stored; finished"), "{out}\n{err}");
    let counts = |db: &TestDb| {
        (
            count(db, "dep_units"),
            count(db, "dep_sets"),
            count(db, "outcomes"),
            db.query_i64("SELECT count(*) FROM outcomes WHERE deps IS NOT NULL"),
        )
    };
    let first = counts(&db);
    assert_eq!(first, (3, 2, 3, 2));
    let (out, err) = import(&spool, db.arg());
    assert!(out.contains("0 new, 3 stored; finished"), "{out}\n{err}");
    assert_eq!(counts(&db), first, "a second import added something");

    // A unit no line declared: that outcome's line is named and it stops
    // its session there, as a malformed line does.
    let bad = "5d000000-0000-4000-8000-000000000002";
    let lines = [
        serde_json::json!({"type": "start", "session_id": bad,
            "environment": {"project": "spooled"}}),
        serde_json::json!({"type": "outcome", "session_id": bad, "seq": 1, "nodeid": A,
            "outcome": "passed", "deps": ["00000000000000a1"]}),
        serde_json::json!({"type": "outcome", "session_id": bad, "seq": 2, "nodeid": B,
            "outcome": "passed", "deps": ["00000000000000ee"]}),
        serde_json::json!({"type": "outcome", "session_id": bad, "seq": 3, "nodeid": B,
            "outcome": "passed", "deps": ["not hex"]}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&spool, text).unwrap();
    let (out, err) = import(&spool, db.arg());
    let all = format!("{out}\n{err}");
    assert!(
        all.contains(":3: outcome.deps.units[0]: unit 00000000000000ee was not declared"),
        "{all}"
    );
    assert!(all.contains(":4: outcome.deps[0]"), "{all}");
    assert!(all.contains("1 stored"), "{all}");
}

fn fixture_session(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x8d000000_0000_4000_8000_000000000000 + n)
}

/// `tests/fixtures/v8/schema8.db` was written by the release before
/// dependencies (08d9bae, schema 8) from the spool beside it, with
/// `pytest-mcp import --db schema8.db spool.jsonl`: project dx, three
/// closed sessions and a running one.
#[tokio::test]
async fn a_database_the_previous_release_wrote_upgrades_and_takes_dependencies() {
    use pytest_mcp::model::{CodeUnit, Outcome, Project, Summary, TestOutcome, UnitKind};
    use pytest_mcp::store::{Store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("schema8.db");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v8/schema8.db");
    std::fs::copy(fixture, &db).unwrap();
    let store = Store::open(StoreConfig::new(db.clone())).await.unwrap();
    let dx = Project::named("dx");
    // What the old release stored reads as before: test_a flaky on c1.
    let (total, flaky) = store.flaky_tests(30, &dx, 10).await.unwrap();
    assert_eq!(total, 2, "{flaky:?}");
    // The running session takes outcomes with dependencies now.
    let running = fixture_session(3);
    let unit = CodeUnit {
        key: 7,
        code: 70,
        kind: UnitKind::Function,
        path: "dx/core.py".into(),
        name: "work".into(),
        line_start: 1,
        line_end: 9,
        checksum: "abcd".into(),
    };
    let mut o = Outcome::new(2, "tests/test_dx.py::test_b", TestOutcome::Passed);
    o.deps = Some(vec![7]);
    store
        .append_with_units(running, vec![o], vec![unit])
        .await
        .unwrap();
    store
        .finish_session(running, Summary::default(), 2, None)
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, pytest_mcp::store::SCHEMA_VERSION);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (old, with_deps): (i64, i64) = conn
        .query_row(
            "SELECT count(*) - count(deps), count(deps) FROM outcomes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((old, with_deps), (12, 1));
    let sets: i64 = conn
        .query_row(
            "SELECT count(*) FROM dep_sets WHERE project = 'dx'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sets, 1);
}

/// Starts a session of `project` with this environment tweaked by `edit`.
async fn start_with(
    client: &mut pytest_mcp::grpc::pb::recorder_client::RecorderClient<tonic::transport::Channel>,
    project: &str,
    edit: impl FnOnce(&mut pb::Environment),
) -> String {
    let id = new_id();
    let mut environment = env(project);
    edit(&mut environment);
    client
        .start_session(pb::StartSessionRequest {
            session_id: id.clone(),
            environment: Some(environment),
            ..Default::default()
        })
        .await
        .unwrap();
    id
}

async fn the_snapshot_holds_each_tests_newest_closed_run_its_set_and_the_newest_watched_files(
    db: TestDb,
) {
    use pytest_mcp::model::{Project, SessionStatus, TestOutcome};
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let (c, d, e) = (
        "tests/test_d.py::test_c",
        "tests/test_d.py::test_d",
        "tests/test_d.py::test_e",
    );
    let failed = |seq, nodeid| outcome(seq, nodeid, pb::TestOutcome::Failed);
    // 1: every test; D passes but one of its subtests fails.
    let s1 = start_with(&mut client, "Snap", |_| {}).await;
    let mut sub = with_deps(failed(4, d), &[1]);
    sub.subtest = "(i=1)".into();
    stream_units(
        &mut client,
        &s1,
        vec![(
            vec![
                with_deps(passed(1, A), &[1, 2]),
                with_deps(failed(2, B), &[2, 3]),
                passed(3, c),
                sub,
                with_deps(passed(5, d), &[1]),
            ],
            (1..=4).map(|k| unit(k, "aa")).collect(),
        )],
    )
    .await
    .unwrap();
    finish(&mut client, &s1, 5, 1).await.unwrap();
    // 2: B fails, then passes its rerun on other units; watched files.
    let s2 = start_with(&mut client, "snap", |e| {
        e.watched_files = [("conftest.py".to_string(), "c0ffee".to_string())].into();
        e.packages = "pk1".into();
    })
    .await;
    let mut rerun = with_deps(passed(3, B), &[2, 3, 4]);
    rerun.attempt = 2;
    stream_units(
        &mut client,
        &s2,
        vec![(
            vec![
                with_deps(passed(1, A), &[2, 1]),
                with_deps(failed(2, B), &[2, 3]),
                rerun,
            ],
            Vec::new(),
        )],
    )
    .await
    .unwrap();
    finish(&mut client, &s2, 3, 0).await.unwrap();
    // 3: a partial run of C alone, closed.
    let s3 = start_with(&mut client, "snap", |e| {
        e.selection = "affected: 1 of 4".into();
    })
    .await;
    stream_units(
        &mut client,
        &s3,
        vec![(vec![with_deps(passed(1, c), &[3])], Vec::new())],
    )
    .await
    .unwrap();
    finish(&mut client, &s3, 1, 0).await.unwrap();
    // 4: still running: neither A's failure nor E counts.
    let s4 = start_with(&mut client, "snap", |_| {}).await;
    stream_units(
        &mut client,
        &s4,
        vec![(
            vec![with_deps(failed(1, A), &[1]), with_deps(passed(2, e), &[1])],
            Vec::new(),
        )],
    )
    .await
    .unwrap();

    let location = pytest_mcp::store::Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    let store = pytest_mcp::store::Store::open(pytest_mcp::store::StoreConfig::new(location))
        .await
        .unwrap();
    let project = Project {
        name: "snap".into(),
        spellings: vec!["snap".into(), "Snap".into()],
    };
    let snap = store.deps_snapshot(&project).await.unwrap();
    let names: Vec<&str> = snap.tests.iter().map(|t| t.nodeid.as_str()).collect();
    assert_eq!(names, [A, B, c, d]);
    let id = |s: &str| uuid::Uuid::parse_str(s).unwrap();
    let set_of = |t: &pytest_mcp::store::affected::LastRun| -> Vec<String> {
        let mut names: Vec<String> = snap.sets[t.set.unwrap()]
            .iter()
            .map(|u| snap.units[*u as usize].name.clone())
            .collect();
        names.sort();
        names
    };
    let [a_run, b_run, c_run, d_run] = &snap.tests[..] else {
        panic!("{snap:?}")
    };
    assert_eq!(
        (a_run.session, a_run.outcome, a_run.mixed),
        (id(&s2), TestOutcome::Passed, false)
    );
    assert_eq!(a_run.status, SessionStatus::Finished);
    assert_eq!(set_of(a_run), ["f1", "f2"]);
    assert_eq!(
        (b_run.session, b_run.outcome, b_run.mixed),
        (id(&s2), TestOutcome::Passed, true)
    );
    assert_eq!(set_of(b_run), ["f2", "f3", "f4"], "the last attempt's set");
    assert_eq!(
        (c_run.session, c_run.outcome),
        (id(&s3), TestOutcome::Passed)
    );
    assert_eq!(set_of(c_run), ["f3"]);
    assert_eq!(
        (d_run.session, d_run.outcome),
        (id(&s1), TestOutcome::Failed),
        "a failing subtest fails its test"
    );
    assert_eq!(set_of(d_run), ["f1"]);
    assert_eq!(snap.sets.len(), 4, "only the sets the newest runs use");
    assert_eq!(snap.units.len(), 4);
    assert_eq!(
        snap.watched_files,
        [("conftest.py".to_string(), "c0ffee".to_string())].into()
    );
    assert_eq!(snap.packages, "pk1");
    // Kept until the project's newest session changes.
    assert!(std::sync::Arc::ptr_eq(
        &snap,
        &store.deps_snapshot(&project).await.unwrap()
    ));
    finish(&mut client, &s4, 2, 1).await.unwrap();
    let after = store.deps_snapshot(&project).await.unwrap();
    let e_run = after.tests.iter().find(|t| t.nodeid == e).unwrap();
    assert_eq!(e_run.session, id(&s4));
    let a_now = after.tests.iter().find(|t| t.nodeid == A).unwrap();
    assert_eq!(a_now.outcome, TestOutcome::Failed);
    store.shutdown().await;
}

async fn a_database_taken_back_to_the_schema_before_dependencies_upgrades_and_takes_them(
    db: TestDb,
) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let old = new_id();
    start_session(&mut client, &old, "up").await;
    stream(&mut client, &old, vec![vec![passed(1, A), passed(2, B)]])
        .await
        .unwrap();
    finish(&mut client, &old, 2, 0).await.unwrap();
    drop(client);
    assert!(server.terminate().success());
    match db.backend() {
        Backend::Sqlite => db.execute(&format!("{WITHOUT_DEPENDENCIES}; PRAGMA user_version = 8")),
        Backend::Postgres => db.execute(&format!(
            "{WITHOUT_DEPENDENCIES}; UPDATE pytest_mcp_schema SET version = 6"
        )),
    }
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let new = new_id();
    start_session(&mut client, &new, "up").await;
    let acks = stream_units(
        &mut client,
        &new,
        vec![(vec![with_deps(passed(1, A), &[1])], vec![unit(1, "aa")])],
    )
    .await
    .unwrap();
    assert_eq!(acks, [1]);
    finish(&mut client, &new, 1, 0).await.unwrap();
    assert_eq!(count(&db, "dep_sets"), 1);
    let location = pytest_mcp::store::Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    let store = pytest_mcp::store::Store::open(pytest_mcp::store::StoreConfig::new(location))
        .await
        .unwrap();
    let snap = store
        .deps_snapshot(&pytest_mcp::model::Project::named("up"))
        .await
        .unwrap();
    let sets: Vec<(&str, bool)> = snap
        .tests
        .iter()
        .map(|t| (t.nodeid.as_str(), t.set.is_some()))
        .collect();
    assert_eq!(
        sets,
        [(A, true), (B, false)],
        "B's newest run is from before"
    );
    store.shutdown().await;
}

/// Opens the store on the test's database beside the server.
async fn open_store(db: &TestDb) -> pytest_mcp::store::Store {
    let location = pytest_mcp::store::Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    pytest_mcp::store::Store::open(pytest_mcp::store::StoreConfig::new(location))
        .await
        .unwrap()
}

async fn passing_and_failing_with_the_same_dependencies_is_flaky_across_commits_by_that_rule(
    db: TestDb,
) {
    use pytest_mcp::model::Project;
    use pytest_mcp::store::{CodeRule, Verdict, flakiness_verdict};
    use pytest_mcp::views::history::StabilityView;
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let failed = |seq, nodeid| outcome(seq, nodeid, pb::TestOutcome::Failed);
    // Two commits; the units A ran are the same code on both (unit 2 moved
    // down a few lines in the second: another key, the same code).
    let mut moved = unit(20, "bb");
    moved.code = unit(2, "bb").code;
    moved.line_start += 5;
    moved.line_end += 5;
    let runs = [
        (
            "c1",
            with_deps(passed(1, A), &[1, 2]),
            vec![unit(1, "aa"), unit(2, "bb")],
        ),
        ("c2", with_deps(failed(1, A), &[1, 20]), vec![moved]),
    ];
    let mut ids = Vec::new();
    for (commit, o, units) in runs {
        let id = start_with(&mut client, "fl", |e| {
            e.git_commit = commit.repeat(20);
            e.code_state = commit.repeat(20);
        })
        .await;
        stream_units(&mut client, &id, vec![(vec![o], units)])
            .await
            .unwrap();
        finish(&mut client, &id, 1, 0).await.unwrap();
        ids.push(uuid::Uuid::parse_str(&id).unwrap());
    }
    // And once more, still running, on a third commit: read from its rows.
    let open = start_with(&mut client, "fl", |e| e.code_state = "c3".repeat(20)).await;
    stream_units(
        &mut client,
        &open,
        vec![(vec![with_deps(failed(1, A), &[20, 1])], Vec::new())],
    )
    .await
    .unwrap();
    let open = uuid::Uuid::parse_str(&open).unwrap();

    let store = open_store(&db).await;
    let fl = Project::named("fl");
    let (total, flaky) = store.flaky_tests(30, &fl, 10).await.unwrap();
    assert_eq!(total, 1, "{flaky:?}");
    let evidence = flaky[0].stability.evidence.clone().unwrap();
    assert_eq!(evidence.rule, CodeRule::Dependencies);
    assert!(
        evidence.code_state.as_deref().unwrap().starts_with("deps:"),
        "{evidence:?}"
    );
    assert_eq!(evidence.passed_in, [ids[0]]);
    assert_eq!(evidence.failed_in, [open, ids[1]]);
    // A test's own history says the same, and so does the label on a failure.
    let stability = store.test_stability(A.into(), &fl, 50).await.unwrap();
    assert_eq!(flakiness_verdict(&stability), Verdict::Flaky);
    assert_eq!(
        stability.evidence.as_ref().map(|e| e.rule),
        Some(CodeRule::Dependencies)
    );
    let view = StabilityView::judged(&stability);
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["evidence"]["rule"], "same_dependencies", "{json}");
    assert!(
        view.why.contains("with the same dependencies"),
        "{}",
        view.why
    );
    let known = store.known_flaky(30, &fl, vec![A.into()]).await.unwrap();
    assert_eq!(
        known[A].evidence.as_ref().map(|e| e.rule),
        Some(CodeRule::Dependencies)
    );
    store.shutdown().await;
}

async fn dependencies_that_changed_between_a_pass_and_a_failure_are_a_regression_on_one_code_state(
    db: TestDb,
) {
    use pytest_mcp::model::Project;
    use pytest_mcp::store::{CodeRule, Verdict, flakiness_verdict};
    use pytest_mcp::views::history::StabilityView;
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let failed = |seq, nodeid| outcome(seq, nodeid, pb::TestOutcome::Failed);
    // One commit, one dirty tree, as far as the code state can tell; but
    // unit 2 changed (another checksum, another code) before the failure.
    let mut changed = unit(21, "cc");
    changed.name = "f2".into();
    let runs = [
        (
            with_deps(passed(1, A), &[1, 2]),
            vec![unit(1, "aa"), unit(2, "bb")],
        ),
        (with_deps(passed(1, A), &[1, 2]), Vec::new()),
        (with_deps(failed(1, A), &[1, 21]), vec![changed]),
        (with_deps(failed(1, A), &[1, 21]), Vec::new()),
    ];
    let mut ids = Vec::new();
    for (o, units) in runs {
        let id = start_with(&mut client, "rg", |e| {
            e.git_commit = "d".repeat(40);
            e.git_dirty = Some(true);
            e.code_state = format!("{}+{}", "d".repeat(40), "e".repeat(16));
        })
        .await;
        stream_units(&mut client, &id, vec![(vec![o], units)])
            .await
            .unwrap();
        finish(&mut client, &id, 1, 0).await.unwrap();
        ids.push(uuid::Uuid::parse_str(&id).unwrap());
    }
    let store = open_store(&db).await;
    let rg = Project::named("rg");
    let (total, flaky) = store.flaky_tests(30, &rg, 10).await.unwrap();
    assert_eq!(total, 0, "not flaky: {flaky:?}");
    let stability = store.test_stability(A.into(), &rg, 50).await.unwrap();
    assert_eq!(
        flakiness_verdict(&stability),
        Verdict::Regressed,
        "{stability:?}"
    );
    assert_eq!(stability.mixed_code_states, 0);
    let change = stability.changes.last().unwrap();
    assert_eq!(change.session, ids[2]);
    assert_eq!(change.rule, CodeRule::Dependencies);
    let json = serde_json::to_value(StabilityView::judged(&stability)).unwrap();
    assert_eq!(json["changes"][0]["rule"], "dependencies", "{json}");
    assert!(
        json["why"]
            .as_str()
            .unwrap()
            .contains("dependencies changed"),
        "{json}"
    );
    let known = store.known_flaky(30, &rg, vec![A.into()]).await.unwrap();
    assert!(known.is_empty(), "{known:?}");
    store.shutdown().await;
}

async fn pruning_removes_sets_no_outcome_uses_and_units_no_set_names_beside_a_running_server(
    db: TestDb,
) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let runs = [
        (
            vec![with_deps(passed(1, A), &[1, 2])],
            vec![unit(1, "aa"), unit(2, "bb")],
        ),
        (vec![with_deps(passed(1, A), &[1, 3])], vec![unit(3, "cc")]),
        (vec![with_deps(passed(1, A), &[3, 1])], Vec::new()),
    ];
    for batch in runs {
        let id = new_id();
        start_session(&mut client, &id, "pr").await;
        stream_units(&mut client, &id, vec![batch]).await.unwrap();
        finish(&mut client, &id, 1, 0).await.unwrap();
    }
    assert_eq!((count(&db, "dep_sets"), count(&db, "dep_units")), (2, 3));
    // Pruned by another process while the server (and its caches) runs.
    let out = Command::new(binary())
        .args(["prune", "--keep-sessions", "1", "--db"])
        .arg(db.arg())
        .env_remove("PYTEST_MCP_DB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        (count(&db, "dep_sets"), count(&db, "dep_units")),
        (1, 2),
        "the set {{1, 2}} and unit 2 only the pruned session used are gone"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM dep_units WHERE checksum = 'bb'"),
        0
    );
    // The server's writer stored them before; it stores them again.
    let id = new_id();
    start_session(&mut client, &id, "pr").await;
    let err = stream_units(
        &mut client,
        &id,
        vec![(vec![with_deps(passed(1, A), &[1, 2])], Vec::new())],
    )
    .await
    .unwrap_err();
    assert!(
        err.message()
            .contains("unit 0000000000000002 was not declared"),
        "{}",
        err.message()
    );
    let acks = stream_units(
        &mut client,
        &id,
        vec![(vec![with_deps(passed(1, A), &[1, 2])], vec![unit(2, "bb")])],
    )
    .await
    .unwrap();
    assert_eq!(acks, [1]);
    finish(&mut client, &id, 1, 0).await.unwrap();
    assert_eq!((count(&db, "dep_sets"), count(&db, "dep_units")), (2, 3));
    let store = open_store(&db).await;
    let snap = store
        .deps_snapshot(&pytest_mcp::model::Project::named("pr"))
        .await
        .unwrap();
    assert_eq!(snap.sets.len(), 1);
    assert_eq!(snap.units.len(), 2);
    store.shutdown().await;
}
