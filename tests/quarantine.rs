//! Quarantine on every backend: entries are added, renewed, listed and
//! released through the real CLI, an expired entry stops applying by itself,
//! the plugin's gRPC read returns only what applies to its project, an
//! outcome's quarantined flag is stored as sent, and an entry whose test
//! passed its last 10 runs is suggested for release.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use pytest_mcp::grpc::pb;
use pytest_mcp::model::{
    Environment, Outcome, Project, SessionRef, Source, Summary, TestOutcome, Timestamp,
};
use pytest_mcp::store::quarantine::NewQuarantine;
use pytest_mcp::store::{Location, Store, StoreConfig};
use support::*;
use uuid::Uuid;

backend_tests! {
    fn the_cli_adds_renews_lists_and_removes_entries_naming_what_is_wrong;
    async fn the_plugins_read_has_only_the_entries_that_apply_now_to_its_project;
    async fn a_quarantined_outcome_is_stored_with_its_real_outcome_and_flag;
    async fn an_entry_whose_test_passed_its_last_ten_runs_is_suggested_for_release;
}

const DAY_US: i64 = 86_400_000_000;

/// Runs `pytest-mcp quarantine ARGS... --db DB`.
fn quarantine(args: &[&str], db: &TestDb) -> Output {
    Command::new(binary())
        .arg("quarantine")
        .args(args)
        .arg("--db")
        .arg(db.arg())
        .env_remove("PYTEST_MCP_DB")
        .env("USER", "alice")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn the_cli_adds_renews_lists_and_removes_entries_naming_what_is_wrong(db: TestDb) {
    let out = quarantine(
        &[
            "add",
            "tests/test_db.py::test_query",
            "--reason",
            "db flaky",
        ],
        &db,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("quarantined: tests/test_db.py::test_query (every project) until "),
        "{stdout}"
    );
    assert!(stdout.contains("db flaky [by alice]"), "{stdout}");

    // Adding it again renews it with the new reason and duration.
    let out = quarantine(
        &[
            "add",
            "tests/test_db.py::test_query",
            "--reason",
            "still flaky",
            "--days",
            "30",
        ],
        &db,
    );
    assert!(text(&out).0.starts_with("renewed: "), "{:?}", text(&out));
    let out = quarantine(
        &[
            "add",
            "tests/test_api.py::*",
            "--reason",
            "API down",
            "--project",
            "shop",
        ],
        &db,
    );
    assert!(out.status.success(), "{:?}", text(&out));

    let (list, _) = text(&quarantine(&["list", "--project", "Shop"], &db));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("EXPIRES (UTC)"), "{list}");
    // Exact nodeids first, then patterns.
    assert!(
        lines[1].contains("tests/test_db.py::test_query  (still flaky)"),
        "{list}"
    );
    assert!(
        lines[1].contains("(every)") && lines[1].contains("alice"),
        "{list}"
    );
    assert!(
        lines[2].contains("tests/test_api.py::*  (API down)"),
        "{list}"
    );
    assert!(lines[2].contains("shop"), "{list}");
    // Another project's list leaves shop's entry out.
    let (list, _) = text(&quarantine(&["list", "--project", "blog"], &db));
    assert!(!list.contains("test_api"), "{list}");
    assert!(list.contains("test_db.py::test_query"), "{list}");

    // Bad input is refused, naming what is wrong; nothing changes.
    for (args, want) in [
        (
            vec!["add", "x.py::t", "--reason", "r", "--days", "91"],
            "--days",
        ),
        (
            vec!["add", "x.py::t", "--reason", "  "],
            "reason: must not be empty",
        ),
        (
            vec!["add", "", "--reason", "r"],
            "nodeid: must not be empty",
        ),
        (
            vec!["remove", "x.py::t"],
            "nodeid: \"x.py::t\" is not quarantined",
        ),
        (
            vec!["remove", "tests/test_api.py::*"],
            "it is quarantined for project \"shop\"",
        ),
    ] {
        let out = quarantine(&args, &db);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let (list, _) = text(&quarantine(&["list", "--project", "shop"], &db));
    assert_eq!(list.lines().count(), 3, "{list}");

    let out = quarantine(
        &["remove", "tests/test_api.py::*", "--project", "shop"],
        &db,
    );
    assert!(
        text(&out)
            .0
            .starts_with("released: tests/test_api.py::* (project shop)"),
        "{:?}",
        text(&out)
    );
    let out = quarantine(&["remove", "tests/test_db.py::test_query"], &db);
    assert!(out.status.success(), "{:?}", text(&out));
    let (list, _) = text(&quarantine(&["list"], &db));
    assert!(list.starts_with("no test is quarantined"), "{list}");
}

async fn open(db: &TestDb) -> Store {
    let location = Location::parse(db.arg().to_str().unwrap().as_ref()).unwrap();
    Store::open(StoreConfig::new(location)).await.unwrap()
}

fn entry(pattern: &str, project: &str) -> NewQuarantine {
    NewQuarantine {
        pattern: pattern.into(),
        project: project.into(),
        reason: format!("{pattern} is being fixed"),
        added_by: "tests".into(),
        days: None,
    }
}

async fn the_plugins_read_has_only_the_entries_that_apply_now_to_its_project(db: TestDb) {
    let store = open(&db).await;
    for (pattern, project) in [
        ("tests/a.py::test_every", ""),
        ("tests/a.py::test_shop", "shop"),
        ("tests/a.py::test_blog", "blog"),
        ("tests/a.py::test_expired", "shop"),
        ("tests/b.py::*", "shop"),
    ] {
        store.quarantine(entry(pattern, project)).await.unwrap();
    }
    store.shutdown().await;
    // An entry whose time is up, as it is a day after it ran out.
    let past = Timestamp::now().as_micros() - DAY_US;
    db.execute(&format!(
        "UPDATE quarantine SET expires_at = {past} WHERE pattern = 'tests/a.py::test_expired'"
    ));

    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let list = |project: &str| pb::ListQuarantineRequest {
        project: project.into(),
    };
    let shop = client
        .list_quarantine(list("shop"))
        .await
        .unwrap()
        .into_inner();
    let patterns: Vec<&str> = shop.entries.iter().map(|e| e.pattern.as_str()).collect();
    assert_eq!(
        patterns,
        [
            "tests/a.py::test_every",
            "tests/a.py::test_shop",
            "tests/b.py::*"
        ]
    );
    let e = &shop.entries[1];
    assert_eq!(
        (e.project.as_str(), e.reason.as_str(), e.added_by.as_str()),
        ("shop", "tests/a.py::test_shop is being fixed", "tests")
    );
    let (added, expires) = (
        e.added_at.as_ref().unwrap().seconds,
        e.expires_at.as_ref().unwrap().seconds,
    );
    assert_eq!(expires - added, 14 * 86_400, "14 days by default");

    let everything = client.list_quarantine(list("")).await.unwrap().into_inner();
    assert_eq!(everything.entries.len(), 4, "all but the expired one");
    let other = client
        .list_quarantine(list("other"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.entries.len(), 1);
    assert_eq!(other.entries[0].pattern, "tests/a.py::test_every");

    // grpcurl finds the read through reflection, with its documentation.
    let (ok, described, err) = grpcurl_run(&[
        "-plaintext",
        &server.addr,
        "describe",
        "pytest_mcp.v1.Recorder.ListQuarantine",
    ]);
    assert!(ok, "{err}");
    assert!(described.contains("Expired entries are"), "{described}");
    server.terminate();
}

async fn a_quarantined_outcome_is_stored_with_its_real_outcome_and_flag(db: TestDb) {
    let server = Server::start(db.arg());
    let mut client = server.client().await;
    let id = new_id();
    start_session(&mut client, &id, "shop").await;
    let mut failed = outcome(1, "tests/a.py::test_flaky", pb::TestOutcome::Failed);
    failed.quarantined = true;
    failed.longrepr = "E   assert 1 == 2\n\ntests/a.py:3: AssertionError".into();
    let mut passed = outcome(2, "tests/a.py::test_flaky_too", pb::TestOutcome::Passed);
    passed.quarantined = true;
    let plain = outcome(3, "tests/a.py::test_ok", pb::TestOutcome::Passed);
    stream(&mut client, &id, vec![vec![failed, passed, plain]])
        .await
        .unwrap();
    let session = finish(&mut client, &id, 3, 0).await.unwrap();
    assert_eq!(session.status, pb::SessionStatus::Finished as i32);
    assert_eq!(session.counts.unwrap().failed, 1, "the real outcome counts");

    let stored = all_outcomes(&mut client, &id).await;
    let flags: Vec<(&str, i32, bool)> = stored
        .iter()
        .map(|o| (o.nodeid.as_str(), o.outcome, o.quarantined))
        .collect();
    assert_eq!(
        flags,
        [
            (
                "tests/a.py::test_flaky",
                pb::TestOutcome::Failed as i32,
                true
            ),
            (
                "tests/a.py::test_flaky_too",
                pb::TestOutcome::Passed as i32,
                true
            ),
            ("tests/a.py::test_ok", pb::TestOutcome::Passed as i32, false),
        ]
    );
    assert!(stored[0].longrepr.contains("assert 1 == 2"));
    server.terminate();
}

/// Records one session of `project` with these (nodeid, failed) outcomes.
async fn run(store: &Store, start: i64, tests: &[(&str, bool)]) -> Uuid {
    let id = Uuid::new_v4();
    let env = Environment {
        project: "shop".into(),
        ..Environment::default()
    };
    store
        .start_session(id, Source::Plugin, env, Some(Timestamp(start)))
        .await
        .unwrap();
    let outcomes = tests
        .iter()
        .enumerate()
        .map(|(i, (nodeid, failed))| {
            let kind = if *failed {
                TestOutcome::Failed
            } else {
                TestOutcome::Passed
            };
            let mut o = Outcome::new(i as u64 + 1, *nodeid, kind);
            o.quarantined = nodeid.starts_with("tests/q");
            o
        })
        .collect();
    store.append_outcomes(id, outcomes).await.unwrap();
    let summary = Summary {
        total_tests: tests.len() as u64,
        ..Summary::default()
    };
    store
        .finish_session(id, summary, tests.len() as u64, None)
        .await
        .unwrap();
    id
}

async fn an_entry_whose_test_passed_its_last_ten_runs_is_suggested_for_release(db: TestDb) {
    let store = open(&db).await;
    store
        .quarantine(entry("tests/q.py::test_exact", "shop"))
        .await
        .unwrap();
    store
        .quarantine(entry("tests/q.py::test_p?", ""))
        .await
        .unwrap();
    // A parametrized nodeid, quarantined as written: brackets are not a class here.
    store
        .quarantine(entry("tests/qp.py::test_param[1]", ""))
        .await
        .unwrap();
    let now = Timestamp::now();
    // One failure, then nine passing runs: not yet.
    let tests = |failed: bool| {
        [
            ("tests/q.py::test_exact", failed),
            ("tests/q.py::test_p1", false),
            ("tests/q.py::test_p2", failed),
            ("tests/qp.py::test_param[1]", false),
            ("tests/other.py::test_ok", false),
        ]
    };
    run(&store, 1_000_000, &tests(true)).await;
    for i in 0..9 {
        run(&store, 2_000_000 + i, &tests(false)).await;
    }
    let status = store
        .quarantine_status(&Project::named("shop"), now)
        .await
        .unwrap();
    let by_pattern = |pattern: &str| {
        status
            .iter()
            .find(|s| s.entry.pattern == pattern)
            .unwrap()
            .clone()
    };
    let exact = by_pattern("tests/q.py::test_exact");
    assert_eq!(exact.tests.len(), 1);
    assert_eq!(
        (exact.tests[0].runs, exact.tests[0].passed_in_a_row),
        (10, 9)
    );
    assert!(!exact.release_suggested);
    let param = by_pattern("tests/qp.py::test_param[1]");
    assert!(param.release_suggested, "ten passing runs: {param:?}");
    let pattern = by_pattern("tests/q.py::test_p?");
    let names: Vec<&str> = pattern.tests.iter().map(|t| t.nodeid.as_str()).collect();
    assert_eq!(names, ["tests/q.py::test_p1", "tests/q.py::test_p2"]);
    assert!(!pattern.release_suggested, "test_p2 failed 10 runs ago");

    // The tenth passing run: every entry can be released.
    run(&store, 3_000_000, &tests(false)).await;
    let status = store
        .quarantine_status(&Project::named("shop"), now)
        .await
        .unwrap();
    assert!(
        status.iter().all(|s| s.release_suggested),
        "{:?}",
        status
            .iter()
            .map(|s| (&s.entry.pattern, s.release_suggested))
            .collect::<Vec<_>>()
    );

    // Two weeks on, every entry has expired: nothing applies any more.
    let later = Timestamp(now.as_micros() + 15 * DAY_US);
    assert!(
        store
            .quarantine_status(&Project::named("shop"), later)
            .await
            .unwrap()
            .is_empty()
    );
    let kept = store.quarantine_list(None, true, later).await.unwrap();
    assert_eq!(kept.len(), 3, "expired entries are kept until removed");
    let latest = store.get_session(SessionRef::Latest(None)).await.unwrap();
    assert_eq!(latest.counts.passed, 5);
    store.shutdown().await;
}
