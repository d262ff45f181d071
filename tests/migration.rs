//! A database written by the release before schema 3 opens, migrates in
//! place, and reads back what that release read back: every session through
//! `export` (JSON and JUnit), `show`, gRPC (grpcurl) and the audit trail;
//! and its failures' causes are filled in.
//! See tests/fixtures/v2/make-expected.sh for how the file and the expected
//! reads were made.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2")
}

/// Drops what schema 3 added to an export when it holds its default, so the
/// rest can be compared with what the older release wrote.
fn without_new_defaults(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, default) in [
                ("subtest", serde_json::Value::Null),
                ("user_properties", serde_json::json!([])),
                ("pinned", serde_json::Value::Bool(false)),
            ] {
                if map.get(key) == Some(&default) {
                    map.remove(key);
                }
            }
            map.values_mut().for_each(without_new_defaults);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_new_defaults),
        _ => {}
    }
}

/// `show`'s text as its header and its failure blocks, sorted (blocks are
/// separated by blank lines; a traceback's own blank lines are prefixed).
fn blocks(text: &str) -> (String, Vec<String>) {
    let mut parts = text.trim_end().split("\n\n").map(str::to_string);
    let header = parts.next().unwrap_or_default();
    let mut rest: Vec<String> = parts.collect();
    rest.sort();
    (header, rest)
}

#[test]
fn a_database_written_by_the_previous_release_migrates_and_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("schema2.db");
    std::fs::copy(fixture().join("schema2.db"), &db).unwrap();
    let out = dir.path().join("out");
    let run = Command::new("bash")
        .arg(fixture().join("make-expected.sh"))
        .arg(support::binary())
        .arg(&db)
        .arg(&out)
        .env("GRPCURL", support::grpcurl())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "reading the migrated database failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let expected_dir = fixture().join("expected");
    let mut compared = 0;
    for entry in std::fs::read_dir(&expected_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected = std::fs::read_to_string(&path).unwrap();
        if let Some(stem) = name.strip_suffix(".json")
            && stem.starts_with("grpc-history-")
        {
            // The old release's history mixed projects; now each project's
            // is read on its own. Together, newest first, they are the same.
            let mut got: Vec<serde_json::Value> = Vec::new();
            for part in std::fs::read_dir(&out).unwrap() {
                let part = part.unwrap().path();
                let part_name = part.file_name().unwrap().to_string_lossy().into_owned();
                if part_name.starts_with(&format!("{stem}@")) {
                    let v: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&part).unwrap()).unwrap();
                    got.extend(v["entries"].as_array().cloned().unwrap_or_default());
                }
            }
            // Stable: a session's entries keep their order.
            got.sort_by(|a, b| {
                b["session"]["startedAt"]
                    .as_str()
                    .cmp(&a["session"]["startedAt"].as_str())
            });
            let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
            let expected = expected["entries"].as_array().cloned().unwrap_or_default();
            assert!(!got.is_empty(), "{name}: no history read");
            assert_eq!(got, expected, "{name} differs after the migration");
            compared += 1;
            continue;
        }
        let got = std::fs::read_to_string(out.join(&name))
            .unwrap_or_else(|e| panic!("{name}: not written by the new binary: {e}"));
        if name.starts_with("export-") {
            let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
            let mut got: serde_json::Value = serde_json::from_str(&got).unwrap();
            without_new_defaults(&mut got);
            assert_eq!(got, expected, "{name} differs after the migration");
        } else if name.starts_with("show-") {
            // `show` now ends a session with failures with a rerun command,
            // and names each cause (a line and a blank one) above its failures.
            // Its header says what the run came to before its status, and
            // names the code it tested.
            let mut kept = Vec::new();
            let mut lines = got.lines().peekable();
            while let Some(l) = lines.next() {
                if let Some(rest) = l.strip_prefix("result    ") {
                    let status = rest
                        .split_once("(status ")
                        .map(|(_, s)| s.replacen(", source ", " (source ", 1))
                        .unwrap_or_default();
                    kept.push(format!("status    {status}\n"));
                    continue;
                }
                if l.starts_with("code      ") {
                    continue;
                }
                if l.starts_with("cause     ") {
                    if lines.peek() == Some(&"") {
                        lines.next();
                    }
                    continue;
                }
                if !l.starts_with("rerun: pytest ") {
                    kept.push(format!("{l}\n"));
                }
            }
            let got: String = kept.concat();
            // Failures of tests known to be flaky are labelled now: the one
            // test whose rerun passed, and no test that only failed its
            // teardown after passing (both attempts failed).
            if got.contains("test_flaky_once") {
                assert!(
                    got.contains("FAILED (known flaky) test_shapes.py::test_flaky_once"),
                    "{got}"
                );
            }
            assert_eq!(
                got.matches(" (known flaky) ").count(),
                got.matches(" (known flaky) test_shapes.py::test_flaky_once ")
                    .count(),
                "only the test that passed on its rerun is flaky:\n{got}"
            );
            let got = got.replace(" (known flaky) ", " ");
            // Grouped by cause, the failures may come in another order: the
            // same header and the same failures, each once, is what counts.
            assert_eq!(
                blocks(&got),
                blocks(&expected),
                "{name} differs after the migration"
            );
        } else {
            assert_eq!(got, expected, "{name} differs after the migration");
        }
        compared += 1;
    }
    // Six sessions, each read four ways, and the session-independent reads.
    assert!(compared >= 28, "only {compared} reads compared");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, pytest_mcp::store::SCHEMA_VERSION);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // Schema 5 fingerprinted every failure the old release stored, and
    // recorded the causes of each closed session that had failures: a cause
    // both runs of the suite failed of is known from two sessions.
    let (failures, unkeyed): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(*) - count(cause) FROM outcomes WHERE kind IN (2, 4)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(failures >= 20, "{failures} failures");
    assert_eq!(unkeyed, 0, "failures left without a cause");
    let recorded: Vec<(String, i64)> = conn
        .prepare(
            "SELECT session, sum(failures) FROM cause_sessions GROUP BY session ORDER BY session",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let closed_with_failures: Vec<(String, i64)> = conn
        .prepare(
            "SELECT id, n_failed + n_errors FROM sessions
             WHERE status IN ('finished', 'interrupted') AND n_failed + n_errors > 0 ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recorded, closed_with_failures);
    let most_sessions: i64 = conn
        .query_row(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM cause_sessions GROUP BY cause_pk)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        most_sessions, 2,
        "no cause is known from both runs of the suite"
    );
    // Which tests each cause broke: every failing test of a closed session, once.
    let (pairs, expected): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM cause_tests),
                    (SELECT count(*) FROM (SELECT DISTINCT o.cause, t.nodeid FROM outcomes o
                     JOIN tests t ON t.id = o.test_id JOIN sessions s ON s.pk = o.session_pk
                     WHERE o.kind IN (2, 4) AND s.status IN ('finished', 'interrupted')))",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(pairs > 0);
    assert_eq!(pairs, expected);
    // The upgraded file can give pruned space back to the file system.
    let auto_vacuum: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto_vacuum, 2, "incremental vacuum is not on");
    // Every test is stored once however many sessions ran it.
    let (tests, distinct): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT nodeid || char(31) || subtest) FROM tests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(tests, distinct);
    assert!(tests > 20, "{tests} tests");
}

async fn session_count(
    client: &mut pytest_mcp::grpc::pb::recorder_client::RecorderClient<tonic::transport::Channel>,
) -> usize {
    client
        .list_sessions(pytest_mcp::grpc::pb::ListSessionsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions
        .len()
}

#[tokio::test]
async fn a_migrated_database_takes_new_sessions_and_keeps_its_old_ones() {
    use pytest_mcp::grpc::pb;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("schema2.db");
    std::fs::copy(fixture().join("schema2.db"), &db).unwrap();
    let server = support::Server::start(&db);
    let mut client = server.client().await;
    let before = session_count(&mut client).await;
    let id = support::new_id();
    support::start_session(&mut client, &id, "suite").await;
    let acks = support::stream(
        &mut client,
        &id,
        vec![vec![support::numbered(1), support::numbered(2)]],
    )
    .await
    .unwrap();
    assert_eq!(acks.last(), Some(&2));
    // A test the old release stored gains a run in the new session.
    let mut old_test = support::outcome(3, "test_shapes.py::test_fails", pb::TestOutcome::Passed);
    old_test.line = 16;
    support::stream(&mut client, &id, vec![vec![old_test]])
        .await
        .unwrap();
    let history = client
        .get_test_history(pb::GetTestHistoryRequest {
            nodeid: "test_shapes.py::test_fails".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(history[0].session.as_ref().unwrap().id, id);
    assert!(history.len() >= 3, "{} entries", history.len());
    let after = session_count(&mut client).await;
    assert_eq!(after, before + 1);
}
