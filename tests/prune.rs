//! `pytest-mcp prune`, `pin` and `unpin`, and background pruning, through the
//! real binary on every backend: sessions go in over gRPC, the prune runs as a
//! subprocess (with the server stopped, or beside a running one on the same
//! database), and what remains is read back the way a person or a client
//! reads it.

#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::ops::RangeInclusive;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use pytest_mcp::grpc::pb;
use pytest_mcp::grpc::pb::recorder_client::RecorderClient;
use support::*;
use tonic::transport::Channel;

backend_tests! {
    async fn keep_sessions_keeps_the_newest_n_of_each_project_and_deletes_the_rest;
    async fn older_than_deletes_only_sessions_that_started_longer_ago;
    async fn project_limits_pruning_to_that_projects_sessions;
    async fn a_pinned_session_survives_every_prune_until_it_is_unpinned;
    async fn a_running_session_is_kept_while_prune_runs_beside_a_server_taking_its_outcomes;
    async fn a_dry_run_changes_nothing_and_prints_what_would_go;
    async fn pruning_big_sessions_deletes_them_and_shrinks_a_sqlite_file;
    async fn reads_and_new_sessions_work_on_what_remains_after_a_prune_beside_the_server;
    fn bad_prune_and_retention_arguments_are_refused_naming_the_flag;
    async fn serve_with_retain_sessions_prunes_an_existing_database_in_the_background;
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Runs `pytest-mcp ARGS... --db DB`.
fn cli(args: &[&str], db: impl AsRef<OsStr>) -> Output {
    Command::new(binary())
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("PYTEST_MCP_DB")
        .output()
        .expect("run pytest-mcp")
}

/// The stdout of a command that must have succeeded.
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The stderr of a command that must have failed.
fn refused(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure, got {:?}\nstdout:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The session ids `pytest-mcp sessions` lists, newest first.
fn listed(db: impl AsRef<OsStr>) -> Vec<String> {
    let text = ok(&cli(&["sessions", "--all-projects", "-n", "1000"], db));
    if text.starts_with("no sessions recorded") {
        return Vec::new();
    }
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The table row prune printed for `id`, if it printed one.
fn row<'a>(text: &'a str, id: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(id))
}

/// The summary line prune prints last.
fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

/// SIGTERM, waited for off this runtime's thread: the client's connection
/// tasks must keep running for the server to see them close.
async fn stop(server: Server) {
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Starts a session of `project` that started `age` ago.
async fn begin(c: &mut RecorderClient<Channel>, project: &str, age: Duration) -> String {
    let id = new_id();
    c.start_session(pb::StartSessionRequest {
        session_id: id.clone(),
        environment: Some(env(project)),
        started_at: Some((SystemTime::now() - age).into()),
        ..Default::default()
    })
    .await
    .unwrap();
    id
}

/// Streams the outcomes `make` builds for `seqs`, 200 a batch, and checks the last ack.
async fn send(
    c: &mut RecorderClient<Channel>,
    id: &str,
    seqs: RangeInclusive<u64>,
    make: impl Fn(u64) -> pb::Outcome,
) {
    let end = *seqs.end();
    let outcomes: Vec<pb::Outcome> = seqs.map(make).collect();
    let batches = outcomes.chunks(200).map(<[_]>::to_vec).collect();
    let acks = stream(c, id, batches).await.unwrap();
    assert_eq!(acks.last(), Some(&end));
}

/// A finished session of `project` that started `age` ago, with `n` numbered outcomes.
async fn recorded(c: &mut RecorderClient<Channel>, project: &str, age: Duration, n: u64) -> String {
    let id = begin(c, project, age).await;
    send(c, &id, 1..=n, numbered).await;
    finish(c, &id, n, 1).await.unwrap();
    id
}

async fn ids_via_grpc(c: &mut RecorderClient<Channel>) -> Vec<String> {
    c.list_sessions(pb::ListSessionsRequest {
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .sessions
    .into_iter()
    .map(|s| s.id)
    .collect()
}

async fn history(c: &mut RecorderClient<Channel>, nodeid: &str) -> Vec<pb::TestHistoryEntry> {
    c.get_test_history(pb::GetTestHistoryRequest {
        nodeid: nodeid.into(),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
}

async fn keep_sessions_keeps_the_newest_n_of_each_project_and_deletes_the_rest(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    // alpha started 1, 2, 3 and 4 hours ago; beta half an hour later each.
    let mut alpha = Vec::new();
    let mut beta = Vec::new();
    for h in 1..=4 {
        alpha.push(recorded(&mut c, "alpha", HOUR * h, 20).await);
    }
    for h in 1..=3 {
        beta.push(recorded(&mut c, "beta", HOUR * h + HOUR / 2, 20).await);
    }
    drop(c);
    stop(server).await;

    let out = ok(&cli(&["prune", "--keep-sessions", "2"], &db));
    for (id, project) in [
        (&alpha[2], "alpha"),
        (&alpha[3], "alpha"),
        (&beta[2], "beta"),
    ] {
        let r = row(&out, id).unwrap_or_else(|| panic!("{id} is not in the table:\n{out}"));
        assert!(
            r.contains(&format!("beyond the newest 2 of project {project}")),
            "{r}"
        );
        assert!(r.contains("finished"), "{r}");
    }
    for id in [&alpha[0], &alpha[1], &beta[0], &beta[1]] {
        assert!(row(&out, id).is_none(), "{id} should not be listed:\n{out}");
    }
    assert!(
        last_line(&out).starts_with("deleted 3 sessions (60 outcomes) in "),
        "{out}"
    );
    assert_eq!(
        listed(&db),
        [
            alpha[0].clone(),
            beta[0].clone(),
            alpha[1].clone(),
            beta[1].clone()
        ],
        "the newest two of each project, newest first"
    );

    // The same rule again finds nothing more, and prints no table.
    let again = ok(&cli(&["prune", "--keep-sessions", "2"], &db));
    assert!(
        again.starts_with("deleted 0 sessions (0 outcomes) in "),
        "{again}"
    );
    assert_eq!(again.lines().count(), 1, "{again}");
}

async fn older_than_deletes_only_sessions_that_started_longer_ago(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let days_40 = recorded(&mut c, "alpha", DAY * 40, 10).await;
    let days_10 = recorded(&mut c, "alpha", DAY * 10, 10).await;
    let hour = recorded(&mut c, "alpha", HOUR, 10).await;
    drop(c);
    stop(server).await;

    // Either rule is enough: keeping ten would spare it, its age does not.
    let out = ok(&cli(
        &["prune", "--older-than", "30d", "--keep-sessions", "10"],
        &db,
    ));
    let r = row(&out, &days_40).unwrap_or_else(|| panic!("{out}"));
    assert!(r.ends_with("older than 30d"), "{r}");
    assert!(
        row(&out, &days_10).is_none() && row(&out, &hour).is_none(),
        "{out}"
    );
    assert!(
        last_line(&out).starts_with("deleted 1 session (10 outcomes) in "),
        "{out}"
    );
    assert_eq!(listed(&db), [hour.clone(), days_10.clone()]);

    let out = ok(&cli(&["prune", "--older-than", "1w"], &db));
    assert!(
        row(&out, &days_10).unwrap().ends_with("older than 1w"),
        "{out}"
    );
    assert_eq!(listed(&db), vec![hour.clone()]);

    let out = ok(&cli(&["prune", "--older-than", "2h"], &db));
    assert!(out.starts_with("deleted 0 sessions"), "{out}");
    assert_eq!(listed(&db), vec![hour.clone()]);
}

async fn project_limits_pruning_to_that_projects_sessions(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let alpha_5 = recorded(&mut c, "alpha", DAY * 5, 10).await;
    let beta_5 = recorded(&mut c, "beta", DAY * 5 + HOUR, 10).await;
    let alpha_6 = recorded(&mut c, "alpha", DAY * 6, 10).await;
    let beta_6 = recorded(&mut c, "beta", DAY * 6 + HOUR, 10).await;
    drop(c);
    stop(server).await;

    let out = ok(&cli(
        &["prune", "--older-than", "1d", "--project", "alpha"],
        &db,
    ));
    assert!(row(&out, &alpha_5).is_some() && row(&out, &alpha_6).is_some());
    assert!(row(&out, &beta_5).is_none() && row(&out, &beta_6).is_none());
    assert!(last_line(&out).starts_with("deleted 2 sessions (20 outcomes)"));
    assert_eq!(listed(&db), [beta_5.clone(), beta_6.clone()]);

    // Keeping one of a project counts only that project's sessions.
    let out = ok(&cli(
        &["prune", "--keep-sessions", "1", "--project", "beta"],
        &db,
    ));
    assert!(
        row(&out, &beta_6)
            .unwrap()
            .contains("beyond the newest 1 of project beta"),
        "{out}"
    );
    assert_eq!(listed(&db), vec![beta_5.clone()]);
}

async fn a_pinned_session_survives_every_prune_until_it_is_unpinned(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let newest = recorded(&mut c, "alpha", HOUR, 20).await;
    let middle = recorded(&mut c, "alpha", HOUR * 2, 20).await;
    let oldest = recorded(&mut c, "alpha", HOUR * 3, 20).await;
    drop(c);
    stop(server).await;

    let out = ok(&cli(&["pin", &oldest], &db));
    assert!(out.contains(&format!("session {oldest} pinned")), "{out}");

    let out = ok(&cli(&["prune", "--keep-sessions", "1"], &db));
    assert!(row(&out, &middle).is_some(), "{out}");
    let r = row(&out, &oldest).unwrap_or_else(|| panic!("{out}"));
    assert!(r.contains("kept: it is pinned"), "{r}");
    assert!(
        last_line(&out)
            .starts_with("deleted 1 session (20 outcomes); 1 kept (running or pinned) in "),
        "{out}"
    );
    assert_eq!(listed(&db), [newest.clone(), oldest.clone()]);

    // A server sees the pin too.
    let server = Server::start(&db);
    let mut c = server.client().await;
    assert!(get_session(&mut c, &oldest).await.pinned);
    assert!(!get_session(&mut c, &newest).await.pinned);
    drop(c);
    stop(server).await;

    let out = ok(&cli(&["unpin", &oldest], &db));
    assert!(out.contains(&format!("session {oldest} unpinned")), "{out}");
    let out = ok(&cli(&["prune", "--keep-sessions", "1"], &db));
    assert!(!row(&out, &oldest).unwrap().contains("kept"), "{out}");
    assert!(last_line(&out).starts_with("deleted 1 session (20 outcomes) in "));
    assert_eq!(listed(&db), vec![newest.clone()]);

    // Pinning what is not there says so.
    let missing = new_id();
    let err = refused(&cli(&["pin", &missing], &db));
    assert!(err.contains(&missing), "{err}");
}

async fn a_running_session_is_kept_while_prune_runs_beside_a_server_taking_its_outcomes(
    db: TestDb,
) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let recent = recorded(&mut c, "alpha", HOUR, 20).await;
    // Big enough that deleting them takes a while.
    let old_3 = recorded(&mut c, "alpha", DAY * 3, 3000).await;
    let old_4 = recorded(&mut c, "alpha", DAY * 4, 3000).await;
    // Old enough for the rule, but still running.
    let running = begin(&mut c, "alpha", DAY * 2).await;

    // Keep streaming into the running session while prune runs on the same file.
    let db2 = db.arg().to_os_string();
    let prune = tokio::task::spawn_blocking(move || cli(&["prune", "--older-than", "1d"], db2));
    let mut next = 1u64;
    let mut during = 0;
    while !prune.is_finished() || next <= 3000 {
        if !prune.is_finished() {
            during += 1;
        }
        let end = next + 99;
        send(&mut c, &running, next..=end, numbered).await;
        next = end + 1;
    }
    let out = ok(&prune.await.unwrap());
    println!("{during} batches were streamed while prune ran");

    let r = row(&out, &running).unwrap_or_else(|| panic!("{out}"));
    assert!(r.contains("running"), "{r}");
    assert!(
        r.contains("kept: it is still running (older than 1d)"),
        "{r}"
    );
    assert!(row(&out, &old_3).is_some() && row(&out, &old_4).is_some());
    assert!(row(&out, &recent).is_none());
    assert!(
        last_line(&out)
            .starts_with("deleted 2 sessions (6000 outcomes); 1 kept (running or pinned) in "),
        "{out}"
    );

    // Everything streamed is there, once, in order.
    let sent = next - 1;
    let done = finish(&mut c, &running, sent, 1).await.unwrap();
    assert_eq!(done.status(), pb::SessionStatus::Finished);
    assert_eq!(done.outcomes_stored, sent);
    let outcomes = all_outcomes(&mut c, &running).await;
    assert!(
        outcomes.iter().map(|o| o.seq).eq(1..=sent),
        "seqs 1..={sent}"
    );
    assert_eq!(
        get_session(&mut c, &running).await.counts.unwrap().failed,
        sent / 10
    );
    assert_eq!(
        ids_via_grpc(&mut c).await,
        [recent.clone(), running.clone()]
    );

    // Finished now, it goes with the next prune.
    let out = ok(&cli(&["prune", "--older-than", "1d"], &db));
    assert!(
        last_line(&out).starts_with(&format!("deleted 1 session ({sent} outcomes) in ")),
        "{out}"
    );
    assert_eq!(ids_via_grpc(&mut c).await, vec![recent.clone()]);
}

async fn a_dry_run_changes_nothing_and_prints_what_would_go(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let newest = recorded(&mut c, "alpha", HOUR, 20).await;
    let middle = recorded(&mut c, "alpha", HOUR * 2, 20).await;
    let oldest = recorded(&mut c, "alpha", HOUR * 3, 20).await;
    let pinned = recorded(&mut c, "alpha", HOUR * 4, 20).await;
    drop(c);
    stop(server).await;
    ok(&cli(&["pin", &pinned], &db));

    let before = db.snapshot();
    let out = ok(&cli(&["prune", "--keep-sessions", "1", "--dry-run"], &db));
    assert!(
        row(&out, &middle).is_some() && row(&out, &oldest).is_some(),
        "{out}"
    );
    assert!(
        row(&out, &pinned).unwrap().contains("kept: it is pinned"),
        "{out}"
    );
    assert!(row(&out, &newest).is_none(), "{out}");
    assert_eq!(
        last_line(&out),
        "dry run: would delete 2 sessions (40 outcomes); 1 kept (running or pinned); nothing was changed"
    );
    assert!(db.snapshot() == before, "a dry run changed the database");
    assert_eq!(
        listed(&db),
        [
            newest.clone(),
            middle.clone(),
            oldest.clone(),
            pinned.clone()
        ]
    );
}

/// `len` characters a compressor cannot shrink much (64 symbols, xorshift).
fn noise(state: &mut u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            ALPHABET[(*state % 64) as usize] as char
        })
        .collect()
}

async fn pruning_big_sessions_deletes_them_and_shrinks_a_sqlite_file(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let small = recorded(&mut c, "alpha", HOUR, 20).await;
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    for h in 2..=4 {
        let id = begin(&mut c, "alpha", HOUR * h).await;
        let outcomes: Vec<pb::Outcome> = (1..=1000)
            .map(|seq| {
                let mut o = outcome(
                    seq,
                    &format!("tests/test_big.py::test_{seq}"),
                    pb::TestOutcome::Failed,
                );
                o.message = format!("AssertionError: {}", noise(&mut state, 60));
                o.longrepr = format!(
                    "Traceback:\n{}\nE   AssertionError",
                    noise(&mut state, 3000)
                );
                o
            })
            .collect();
        let acks = stream(
            &mut c,
            &id,
            outcomes.chunks(200).map(<[_]>::to_vec).collect(),
        )
        .await
        .unwrap();
        assert_eq!(acks.last(), Some(&1000));
        finish(&mut c, &id, 1000, 1).await.unwrap();
    }
    drop(c);
    stop(server).await;
    // Only a SQLite file gives the space back to the file system in place.
    let file = db.sqlite_path();
    let before = file.map(|f| std::fs::metadata(f).unwrap().len());
    if let Some(before) = before {
        assert!(
            before > 4 << 20,
            "only {before} bytes; the test needs a big file"
        );
    }

    let out = ok(&cli(&["prune", "--keep-sessions", "1"], &db));
    let last = last_line(&out);
    assert!(
        last.starts_with("deleted 3 sessions (3000 outcomes) in "),
        "{out}"
    );
    assert_eq!(listed(&db), vec![small.clone()]);
    let (Some(file), Some(before)) = (file, before) else {
        return;
    };
    assert!(!last.contains("cannot shrink"), "{last}");
    let (was, now) = last
        .split_once("; database ")
        .and_then(|(_, sizes)| sizes.split_once(" -> "))
        .unwrap_or_else(|| panic!("no sizes in {last:?}"));
    let mib = |s: &str| s.trim_end_matches(" MiB").parse::<f64>().unwrap();
    assert!(mib(now) < mib(was) / 2.0, "{last}");

    let after = std::fs::metadata(file).unwrap().len();
    println!("database file: {before} bytes before prune, {after} after");
    let wal = format!("{}-wal", file.display());
    assert!(
        after < before / 2,
        "the file is {after} bytes after prune, {before} before (wal: {:?})",
        std::fs::metadata(&wal).map(|m| m.len()).ok()
    );
}

async fn reads_and_new_sessions_work_on_what_remains_after_a_prune_beside_the_server(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    // Two old sessions with a test no newer session has.
    let gone = "tests/test_old.py::test_gone";
    let with_gone = |seq: u64| {
        if seq == 201 {
            outcome(seq, gone, pb::TestOutcome::Failed)
        } else {
            numbered(seq)
        }
    };
    let mut old = Vec::new();
    for days in [3, 2] {
        let id = begin(&mut c, "alpha", DAY * days).await;
        send(&mut c, &id, 1..=201, with_gone).await;
        finish(&mut c, &id, 201, 1).await.unwrap();
        old.push(id);
    }
    let kept = recorded(&mut c, "alpha", HOUR, 200).await;
    assert_eq!(history(&mut c, gone).await.len(), 2);

    let out = ok(&cli(&["prune", "--keep-sessions", "1"], &db));
    assert!(
        last_line(&out).starts_with("deleted 2 sessions (402 outcomes) in "),
        "{out}"
    );

    // The running server reads what remains.
    assert_eq!(ids_via_grpc(&mut c).await, vec![kept.clone()]);
    let h = history(&mut c, "tests/test_n.py::test_10").await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].session.as_ref().unwrap().id, kept);
    let o = h[0].outcome.as_ref().unwrap();
    assert_eq!(o.outcome(), pb::TestOutcome::Failed);
    assert_eq!(o.message, "AssertionError: assert 10 == 0");
    assert!(history(&mut c, gone).await.is_empty());
    let outcomes = all_outcomes(&mut c, &kept).await;
    assert!(outcomes.iter().map(|o| o.seq).eq(1..=200));
    assert!(
        outcomes
            .iter()
            .all(|o| o.nodeid == format!("tests/test_n.py::test_{}", o.seq)),
        "every remaining outcome keeps its nodeid"
    );
    let s = get_session(&mut c, &kept).await;
    assert_eq!((s.outcomes_stored, s.counts.unwrap().failed), (200, 20));

    // The test that only the pruned sessions had can be recorded again.
    let fresh = begin(&mut c, "alpha", Duration::ZERO).await;
    send(&mut c, &fresh, 1..=3, |seq| {
        if seq == 2 {
            outcome(seq, gone, pb::TestOutcome::Passed)
        } else {
            numbered(seq)
        }
    })
    .await;
    finish(&mut c, &fresh, 3, 0).await.unwrap();
    let check = |entries: Vec<pb::TestHistoryEntry>| {
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].session.as_ref().unwrap().id, fresh);
        let o = entries[0].outcome.as_ref().unwrap();
        assert_eq!((o.seq, o.nodeid.as_str()), (2, gone));
    };
    check(history(&mut c, gone).await);
    assert_eq!(all_outcomes(&mut c, &fresh).await[1].nodeid, gone);
    assert_eq!(history(&mut c, "tests/test_n.py::test_1").await.len(), 2);

    // And a fresh server process reads the same.
    drop(c);
    stop(server).await;
    let server = Server::start(&db);
    let mut c = server.client().await;
    check(history(&mut c, gone).await);
    assert_eq!(all_outcomes(&mut c, &kept).await.len(), 200);
}

fn bad_prune_and_retention_arguments_are_refused_naming_the_flag(db: TestDb) {
    let err = refused(&cli(&["prune", "--older-than", "soon"], &db));
    assert!(err.contains("--older-than"), "{err}");
    assert!(err.contains("\"soon\" is not a duration"), "{err}");

    let err = refused(&cli(&["prune", "--keep-sessions", "-1"], &db));
    assert!(err.contains("--keep-sessions"), "{err}");
    let err = refused(&cli(&["prune", "--keep-sessions=-1"], &db));
    assert!(
        err.contains("--keep-sessions") && err.contains("-1"),
        "{err}"
    );

    let err = refused(&cli(&["prune"], &db));
    assert!(
        err.contains("--keep-sessions") && err.contains("--older-than"),
        "{err}"
    );
    let err = refused(&cli(&["prune", "--dry-run", "--project", "alpha"], &db));
    assert!(err.contains("--keep-sessions"), "{err}");

    for flag in ["--retain-sessions", "--retain-days"] {
        let o = serve_command(&db)
            .args([flag, "0"])
            .env_remove("PYTEST_MCP_RETAIN_SESSIONS")
            .env_remove("PYTEST_MCP_RETAIN_DAYS")
            .output()
            .unwrap();
        let err = refused(&o);
        assert!(err.contains(flag) && err.contains('0'), "{err}");
    }

    // None of that touched (or created) the database.
    assert!(db.is_untouched());
    // A file that is not there is not made by a prune (a PostgreSQL database is always there).
    if db.sqlite_path().is_some() {
        let err = refused(&cli(&["prune", "--keep-sessions", "1"], &db));
        assert!(err.contains("no database at"), "{err}");
        assert!(db.is_untouched());
    }
}

async fn serve_with_retain_sessions_prunes_an_existing_database_in_the_background(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let mut finished = Vec::new();
    for h in 1..=5 {
        finished.push(recorded(&mut c, "alpha", HOUR * h, 30).await);
    }
    let pinned = recorded(&mut c, "alpha", HOUR * 6, 30).await;
    let running = begin(&mut c, "alpha", HOUR * 7).await;
    send(&mut c, &running, 1..=30, numbered).await;
    let other = recorded(&mut c, "beta", HOUR * 8, 30).await;
    drop(c);
    stop(server).await;
    ok(&cli(&["pin", &pinned], &db));

    let server = Server::start_with(&db, &["--retain-sessions", "2"]);
    let mut c = server.client().await;
    let expected = [
        finished[0].clone(),
        finished[1].clone(),
        pinned.clone(),
        running.clone(),
        other.clone(),
    ];
    let started = Instant::now();
    let mut ids = ids_via_grpc(&mut c).await;
    while ids != expected && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ids = ids_via_grpc(&mut c).await;
    }
    assert_eq!(
        ids,
        expected,
        "after {:?}: the newest 2 of alpha, the pinned and the running one, and beta's",
        started.elapsed()
    );
    // The running session still takes outcomes, and its first ones are all there.
    send(&mut c, &running, 31..=60, numbered).await;
    assert!(
        all_outcomes(&mut c, &running)
            .await
            .iter()
            .map(|o| o.seq)
            .eq(1..=60)
    );
}
