//! The command line and grpcurl, as a person at a terminal uses them.

#![allow(clippy::unwrap_used)]

mod support;

use pytest_mcp::grpc::pb;
use std::ffi::OsStr;
use std::process::{Command, Output};
use support::*;

backend_tests! {
    async fn grpcurl_lists_describes_checks_health_and_calls_list_sessions;
    async fn junit_export_is_well_formed_with_one_testcase_per_outcome;
    async fn json_export_has_the_documented_shape;
    async fn sessions_and_show_print_what_a_person_needs;
    fn serve_refuses_a_non_loopback_address;
    fn importing_a_spool_file_twice_stores_nothing_twice;
    fn a_spool_file_cut_off_in_the_middle_of_a_character_still_imports_what_is_before_the_cut;
    async fn importing_completes_a_session_the_server_only_partly_received;
    fn a_malformed_spool_line_is_named_and_the_rest_is_imported;
    fn a_bad_outcome_mid_file_keeps_what_precedes_it_and_the_session_is_incomplete;
    async fn watch_prints_failures_as_they_arrive_and_exits_when_the_session_ends;
    async fn watch_latest_started_between_runs_waits_for_the_next_session;
}

/// Runs `pytest-mcp ARGS...` with `PYTEST_MCP_DB=DB`.
fn run(args: &[&str], db: impl AsRef<OsStr>) -> Output {
    Command::new(binary())
        .args(args)
        .env("PYTEST_MCP_DB", db)
        .output()
        .expect("run pytest-mcp")
}

/// Runs the binary in `dir`: a project's directory, whose project the
/// reading commands default to.
fn run_in(dir: &std::path::Path, args: &[&str], db: impl AsRef<OsStr>) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("PYTEST_MCP_DB", db)
        .env_remove("PYTEST_MCP_PROJECT")
        .output()
        .expect("run pytest-mcp")
}

/// A project directory named `name`, with a `pytest.ini` as its rootdir
/// marker and a `tests/` directory below it.
fn project_dir(parent: &std::path::Path, name: &str) -> std::path::PathBuf {
    let root = parent.join(name);
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join("pytest.ini"), "[pytest]\n").unwrap();
    root
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished session with a pass, a failure, a skip, an xfail and an error.
async fn recorded(server: &Server) -> String {
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    let mut fail = outcome(
        2,
        "tests/test_a.py::TestMath::test_add[1-2]",
        pb::TestOutcome::Failed,
    );
    fail.message = "AssertionError: assert 3 == 4".into();
    fail.longrepr =
        "def test_add(a, b):\n>       assert a + b == 4\nE       assert 3 == 4 & <tag> \u{1b}[31m"
            .into();
    fail.stdout = "debug <output>".into();
    let mut skip = outcome(3, "tests/test_a.py::test_skip", pb::TestOutcome::Skipped);
    skip.message = "needs network".into();
    let mut err = outcome(5, "tests/test_b.py::test_fixture", pb::TestOutcome::Error);
    err.phase = pb::Phase::Setup.into();
    err.message = "RuntimeError: fixture broke".into();
    err.longrepr = "E   RuntimeError: fixture broke".into();
    let batch = vec![
        outcome(1, "tests/test_a.py::test_ok", pb::TestOutcome::Passed),
        fail,
        skip,
        outcome(4, "tests/test_a.py::test_xfail", pb::TestOutcome::Xfailed),
        err,
    ];
    stream(&mut c, &id, vec![batch]).await.unwrap();
    finish(&mut c, &id, 5, 1).await.unwrap();
    id
}

async fn grpcurl_lists_describes_checks_health_and_calls_list_sessions(db: TestDb) {
    let server = Server::start(&db);
    let id = recorded(&server).await;
    let addr = server.addr.as_str();

    let (ok, out, err) = grpcurl_run(&["-plaintext", addr, "list"]);
    assert!(ok, "{err}");
    for service in [
        "pytest_mcp.v1.Recorder",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} missing from:\n{out}"
        );
    }

    let (ok, out, err) = grpcurl_run(&["-plaintext", addr, "describe", "pytest_mcp.v1.Outcome"]);
    assert!(ok, "{err}");
    assert!(out.contains("string nodeid = 3;"), "{out}");
    assert!(
        out.contains("pytest's node id"),
        "comments travel with reflection:\n{out}"
    );

    let (ok, out, err) = grpcurl_run(&[
        "-plaintext",
        addr,
        "describe",
        "pytest_mcp.v1.Recorder.StreamOutcomes",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("stream .pytest_mcp.v1.StreamOutcomesRequest"),
        "{out}"
    );

    let (ok, out, err) = grpcurl_run(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"SERVING\""), "{out}");
    let (ok, out, _) = grpcurl_run(&[
        "-plaintext",
        "-d",
        r#"{"service": "pytest_mcp.v1.Recorder"}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && out.contains("\"SERVING\""), "{out}");

    let (ok, out, err) = grpcurl_run(&[
        "-plaintext",
        "-d",
        "{}",
        addr,
        "pytest_mcp.v1.Recorder/ListSessions",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["sessions"][0]["id"], id.as_str());
    assert_eq!(json["sessions"][0]["status"], "SESSION_STATUS_FINISHED");

    // v1 reflection answers directly too (grpcurl 1.9 and newer use it).
    let (ok, out, err) = grpcurl_run(&[
        "-plaintext",
        "-d",
        r#"{"list_services": ""}"#,
        addr,
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("pytest_mcp.v1.Recorder"), "{out}");

    // Bad input through grpcurl shows the field.
    let (ok, _, err) = grpcurl_run(&[
        "-plaintext",
        "-d",
        r#"{"session_id": "nope"}"#,
        addr,
        "pytest_mcp.v1.Recorder/GetSession",
    ]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("session_id"),
        "{err}"
    );
}

async fn junit_export_is_well_formed_with_one_testcase_per_outcome(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&db);
    let id = recorded(&server).await;
    let out_file = dir.path().join("junit.xml");
    let o = run(
        &[
            "export",
            &id,
            "--format",
            "junit",
            "-o",
            out_file.to_str().unwrap(),
        ],
        &db,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let xml = std::fs::read_to_string(&out_file).unwrap();
    let doc =
        roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"));
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite.attribute("tests"), Some("5"));
    assert_eq!(suite.attribute("failures"), Some("1"));
    assert_eq!(suite.attribute("errors"), Some("1"));
    assert_eq!(suite.attribute("skipped"), Some("2"));
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 5);
    let failed = cases
        .iter()
        .find(|c| c.attribute("name") == Some("test_add[1-2]"))
        .unwrap();
    assert_eq!(failed.attribute("classname"), Some("tests.test_a.TestMath"));
    let failure = failed
        .children()
        .find(|n| n.has_tag_name("failure"))
        .unwrap();
    assert_eq!(
        failure.attribute("message"),
        Some("AssertionError: assert 3 == 4")
    );
    assert!(failure.text().unwrap().contains("assert 3 == 4 & <tag>"));
    let sysout = failed
        .children()
        .find(|n| n.has_tag_name("system-out"))
        .unwrap();
    assert_eq!(sysout.text(), Some("debug <output>"));
    let error = cases
        .iter()
        .find(|c| c.attribute("name") == Some("test_fixture"))
        .unwrap();
    assert!(error.children().any(|n| n.has_tag_name("error")));
    let xfail = cases
        .iter()
        .find(|c| c.attribute("name") == Some("test_xfail"))
        .unwrap();
    let skipped = xfail
        .children()
        .find(|n| n.has_tag_name("skipped"))
        .unwrap();
    assert_eq!(skipped.attribute("type"), Some("pytest.xfail"));

    // Same through stdout and `latest`.
    let o = run(
        &["export", "latest", "-f", "junit", "--project", "demo"],
        &db,
    );
    assert!(o.status.success());
    roxmltree::Document::parse(&stdout(&o)).unwrap();
}

async fn json_export_has_the_documented_shape(db: TestDb) {
    let server = Server::start(&db);
    let id = recorded(&server).await;
    let o = run(
        &["export", "latest", "--format", "json", "--project", "Demo"],
        &db,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let session = &doc["session"];
    assert_eq!(session["id"], id.as_str());
    assert_eq!(session["status"], "finished");
    assert_eq!(session["source"], "plugin");
    for key in ["started_at", "finished_at", "environment"] {
        assert!(!session[key].is_null(), "session.{key}");
    }
    assert_eq!(session["environment"]["python_version"], "3.11.7");
    let summary = session["summary"].as_object().unwrap();
    let mut keys: Vec<_> = summary.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "duration",
            "errors",
            "exitstatus",
            "failed",
            "passed",
            "skipped",
            "total_tests",
            "xfailed",
            "xpassed"
        ]
    );
    assert_eq!(summary["exitstatus"], 1);
    let outcomes = doc["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 5);
    let mut keys: Vec<_> = outcomes[0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "attempt",
            "duration",
            "file",
            "line",
            "log",
            "longrepr",
            "markers",
            "message",
            "nodeid",
            "outcome",
            "phase",
            "seq",
            "stderr",
            "stdout",
            "subtest",
            "user_properties",
            "worker"
        ]
    );
    assert_eq!(outcomes[1]["subtest"], serde_json::Value::Null);
    assert_eq!(outcomes[1]["user_properties"], serde_json::json!([]));
    assert!(
        outcomes[1].get("quarantined").is_none(),
        "only when quarantined"
    );
    assert_eq!(outcomes[1]["outcome"], "failed");
    assert_eq!(outcomes[1]["phase"], "call");
    assert_eq!(outcomes[4]["phase"], "setup");
    assert_eq!(outcomes[1]["line"], 10);
}

async fn sessions_and_show_print_what_a_person_needs(db: TestDb) {
    let server = Server::start(&db);
    let id = recorded(&server).await;
    // Run where a person would: in the project, below its rootdir.
    let dirs = tempfile::tempdir().unwrap();
    let demo = project_dir(dirs.path(), "demo");
    let here = demo.join("tests");
    let run = |args: &[&str], db: &TestDb| run_in(&here, args, db);

    let o = run(&["sessions"], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("RESULT") && header.contains("FAILED"),
        "{text}"
    );
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&id) && row.contains("failed") && row.contains("demo"),
        "{text}"
    );

    // The pages' eight-digit id names the session too.
    let o = run(&["show", &id[..8]], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains(&format!("session   {id}")));

    let o = run(&["show", "latest"], &db);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains(&format!("session   {id}")), "{text}");
    assert!(
        text.contains("FAILED tests/test_a.py::TestMath::test_add[1-2]"),
        "{text}"
    );
    assert!(text.contains("  | E       assert 3 == 4"), "{text}");
    // Failures come grouped by cause, each cause named once above its failures.
    assert!(text.contains("\ncause     "), "{text}");
    let cause = text.find("\ncause     ").unwrap_or(usize::MAX);
    let failure = text.find("\nFAILED ").unwrap_or(0);
    assert!(cause < failure, "{text}");
    assert!(
        text.contains("ERROR tests/test_b.py::test_fixture [setup]"),
        "{text}"
    );
    assert!(
        !text.contains("test_ok"),
        "passing tests are not listed:\n{text}"
    );

    // --limit prints that many failures and says how many more there are.
    let o = run(&["show", "latest", "--limit", "1"], &db);
    let text = stdout(&o);
    assert!(text.contains("1 more failure not shown"), "{text}");
    assert_eq!(
        text.matches("\nFAILED ").count() + text.matches("\nERROR ").count(),
        1,
        "{text}"
    );

    let o = run(&["show", "not-a-session"], &db);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("SESSION"));

    // Another project's directory sees none of demo's sessions, and says
    // which projects there are.
    let other = project_dir(dirs.path(), "other");
    let o = run_in(&other, &["show", "latest"], &db);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no session of project other") && err.contains("demo (1 session)"),
        "{err}"
    );
    let o = run_in(&other, &["sessions", "--project", "DEMO"], &db);
    assert!(stdout(&o).contains(&id), "names match case-insensitively");
    let o = run_in(&other, &["sessions", "--project", "nope"], &db);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the projects are: demo"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn reading_commands_explain_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let o = run(&["sessions"], &db);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no database at"));
    assert!(
        !db.exists(),
        "a reading command must not create the database"
    );
}

#[test]
fn a_directory_given_as_the_database_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["sessions"][..],
        &["serve", "--grpc-addr", "127.0.0.1:0", "--no-http"],
    ] {
        let o = run(args, dir.path());
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("is a directory"), "{err}");
        assert_eq!(err.matches("directory").count(), 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

fn serve_refuses_a_non_loopback_address(db: TestDb) {
    let o = Command::new(binary())
        .args(["serve", "--grpc-addr", "0.0.0.0:0", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--grpc-addr") && err.contains("loopback"),
        "{err}"
    );
    assert!(db.is_untouched(), "refused before opening the database");
}

#[test]
fn every_command_has_help_and_flags_read_their_environment_variables() {
    for cmd in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["sessions", "--help"],
        vec!["show", "--help"],
        vec!["export", "--help"],
    ] {
        let o = Command::new(binary()).args(&cmd).output().unwrap();
        assert!(o.status.success(), "{cmd:?}");
        let text = stdout(&o);
        assert!(text.contains("Usage:"), "{cmd:?}: {text}");
        if cmd.len() == 2 {
            assert!(
                text.contains("PYTEST_MCP_DB"),
                "{cmd:?} documents its variable: {text}"
            );
        }
    }
    let o = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&o).contains("PYTEST_MCP_GRPC_ADDR"));

    // PYTEST_MCP_GRPC_ADDR is honoured: a non-loopback value is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(binary())
        .args(["serve"])
        .env("PYTEST_MCP_GRPC_ADDR", "0.0.0.0:0")
        .env("PYTEST_MCP_DB", dir.path().join("x.db"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("0.0.0.0:0"));
}

fn spool_line(v: serde_json::Value) -> String {
    format!("{v}\n")
}

fn spool(id: &str, seqs: std::ops::RangeInclusive<u64>, finish_sent: Option<u64>) -> String {
    let mut text = spool_line(serde_json::json!({
        "type": "start", "session_id": id, "started_at": "2026-11-24T09:00:00Z",
        "environment": {"os": "Linux", "python_version": "3.11.7", "project": "spooled"}
    }));
    for seq in seqs {
        let failed = seq.is_multiple_of(4);
        text += &spool_line(serde_json::json!({
            "type": "outcome", "session_id": id, "seq": seq,
            "nodeid": format!("tests/test_s.py::test_{seq}"),
            "outcome": if failed { "failed" } else { "passed" },
            "phase": "call", "duration": 0.01,
            "message": if failed { "AssertionError: boom" } else { "" },
            "longrepr": if failed { "E   AssertionError: boom" } else { "" },
            "line": seq, "markers": ["m"], "attempt": 1, "started_at": null
        }));
    }
    if let Some(sent) = finish_sent {
        text += &spool_line(serde_json::json!({
            "type": "finish", "session_id": id, "outcomes_sent": sent,
            "finished_at": "2026-11-24T09:01:00Z",
            "summary": {"total_tests": sent, "passed": sent - sent / 4, "failed": sent / 4,
                        "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0, "exitstatus": 1, "duration": 60.0}
        }));
    }
    text
}

fn importing_a_spool_file_twice_stores_nothing_twice(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id();
    let file = dir.path().join("spool.jsonl");
    std::fs::write(&file, spool(&id, 1..=8, Some(8))).unwrap();

    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "session {id} created: 8 outcomes read, 8 new, 8 stored; finished"
        )),
        "{text}"
    );

    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "session {id} existing: 8 outcomes read, 0 new, 8 stored; finished"
        )),
        "{text}"
    );

    let o = run(&["export", &id, "-f", "json"], &db);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["outcomes"].as_array().unwrap().len(), 8);
    assert_eq!(doc["session"]["source"], "import");
    assert_eq!(doc["session"]["started_at"], "2026-11-24T09:00:00Z");
    assert_eq!(doc["outcomes"][3]["message"], "AssertionError: boom");
}

fn a_spool_file_cut_off_in_the_middle_of_a_character_still_imports_what_is_before_the_cut(
    db: TestDb,
) {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id();
    let file = dir.path().join("cut.jsonl");
    let mut bytes = spool(&id, 1..=5, None).into_bytes();
    // What a crash while writing can leave: half of a two-byte character.
    bytes.extend_from_slice(
        format!(r#"{{"type":"outcome","session_id":"{id}","seq":6,"nodeid":"t.py::caf"#).as_bytes(),
    );
    bytes.push(0xC3);
    std::fs::write(&file, bytes).unwrap();

    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(!o.status.success(), "a bad line makes the import fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cut.jsonl:7: the line is not valid UTF-8"),
        "{err}"
    );
    assert!(
        stdout(&o).contains("5 outcomes read, 5 new, 5 stored; running"),
        "{}",
        stdout(&o)
    );
}

async fn importing_completes_a_session_the_server_only_partly_received(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    // Started when the spool says, as the plugin does: a finish before the
    // start is refused.
    c.start_session(pb::StartSessionRequest {
        session_id: id.clone(),
        environment: Some(env("spooled")),
        started_at: Some(prost_types::Timestamp {
            seconds: 1_795_510_800, // 2026-11-24T09:00:00Z
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();

    // The spool holds what was not acknowledged (and, by format, the start).
    let file = dir.path().join("spool.jsonl");
    let mut text = spool(&id, 4..=10, Some(10));
    text = text.replacen("\"project\":\"spooled\"", "\"project\":\"different\"", 1);
    std::fs::write(&file, text).unwrap();
    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("existing: 7 outcomes read, 7 new, 10 stored; finished"),
        "{}",
        stdout(&o)
    );

    let s = get_session(&mut c, &id).await;
    assert_eq!(s.status(), pb::SessionStatus::Finished);
    assert_eq!(s.source(), pb::Source::Plugin, "the stored start is kept");
    assert_eq!(all_outcomes(&mut c, &id).await.len(), 10);
}

fn a_malformed_spool_line_is_named_and_the_rest_is_imported(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id();
    let mut text = spool(&id, 1..=3, None);
    text += "{not json\n";
    text += &spool_line(
        serde_json::json!({"type": "outcome", "session_id": id, "seq": 4,
        "nodeid": "t.py::x", "outcome": "exploded"}),
    );
    text += &spool_line(
        serde_json::json!({"type": "outcome", "session_id": id, "seq": 4,
        "nodeid": "t.py::x", "outcome": "passed", "duration": -1.0}),
    );
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, text).unwrap();
    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:5:"), "{err}");
    assert!(
        err.contains("bad.jsonl:6:") && err.contains("exploded"),
        "{err}"
    );
    assert!(
        err.contains("bad.jsonl:7:") && err.contains("duration"),
        "{err}"
    );
    assert!(stdout(&o).contains("3 stored; running"), "{}", stdout(&o));
}

fn a_bad_outcome_mid_file_keeps_what_precedes_it_and_the_session_is_incomplete(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let id = new_id();
    // Line 4 holds seq 3 with a negative duration; seqs 4..6 follow it.
    let text = spool(&id, 1..=6, Some(6)).replacen(
        "\"duration\":0.01,\"line\":3,",
        "\"duration\":-1.0,\"line\":3,",
        1,
    );
    assert!(text.contains("-1.0"), "the fixture changed: {text}");
    let file = dir.path().join("gap.jsonl");
    std::fs::write(&file, text).unwrap();
    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("gap.jsonl:4: outcome.duration"), "{err}");
    assert!(
        err.contains("seq 3 is missing or malformed, so the 3 outcome(s) after it were not stored"),
        "{err}"
    );
    assert!(
        stdout(&o).contains("2 stored; incomplete"),
        "{}",
        stdout(&o)
    );

    // Fixing the line and importing again completes the session.
    std::fs::write(&file, spool(&id, 1..=6, Some(6))).unwrap();
    let o = run(&["import", file.to_str().unwrap()], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("4 new, 6 stored; finished"),
        "{}",
        stdout(&o)
    );
}

async fn watch_prints_failures_as_they_arrive_and_exits_when_the_session_ends(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=5).map(numbered).collect()])
        .await
        .unwrap();

    let child = Command::new(binary())
        .args([
            "watch",
            "latest",
            "--project",
            "demo",
            "--grpc-addr",
            &server.addr,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for seq in 6..=20u64 {
        stream(&mut c, &id, vec![vec![numbered(seq)]])
            .await
            .unwrap();
    }
    finish(&mut c, &id, 20, 1).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("watching session {id} demo (running)")),
        "{text}"
    );
    for seq in [10, 20] {
        assert!(
            text.contains(&format!(
                "FAILED tests/test_n.py::test_{seq}\n  AssertionError: assert {seq} == 0"
            )),
            "{text}"
        );
    }
    assert!(text.contains("20 tests: 18 passed, 2 failed"), "{text}");
    assert!(
        text.contains(&format!("session {id} finished, exit status 1")),
        "{text}"
    );
}

#[test]
fn watch_names_the_address_when_no_server_runs() {
    let o = Command::new(binary())
        .args(["watch", "--grpc-addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("127.0.0.1:1"));
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_command(dir.path().join("log.db"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    // The info line "serving" follows the listening lines.
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let done = line.contains("serving");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape codes in a piped log: {text:?}"
    );
}

async fn watch_latest_started_between_runs_waits_for_the_next_session(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let done = new_id();
    start_session(&mut c, &done, "demo").await;
    stream(&mut c, &done, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();
    finish(&mut c, &done, 3, 0).await.unwrap();
    // Another project's run must not be taken for demo's next one.
    let elsewhere = new_id();
    start_session(&mut c, &elsewhere, "other").await;

    let child = Command::new(binary())
        .args([
            "watch",
            "latest",
            "--project",
            "demo",
            "--grpc-addr",
            &server.addr,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give it time to see the finished run and start waiting.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let next = new_id();
    start_session(&mut c, &next, "demo").await;
    stream(&mut c, &next, vec![(1..=10).map(numbered).collect()])
        .await
        .unwrap();
    finish(&mut c, &next, 10, 1).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("waiting for the next session of project demo"),
        "{err}"
    );
    assert!(text.contains(&format!("session {next}")), "{text}");
    assert!(
        !text.contains(&done) && !text.contains(&elsewhere),
        "{text}"
    );
    assert!(text.contains("10 tests: 9 passed, 1 failed"), "{text}");
}
