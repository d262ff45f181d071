//! The recorder through its real gRPC API: a `pytest-mcp serve` process on a
//! free port, a tonic client, and a database of the test's own, on every
//! backend.

#![allow(clippy::unwrap_used)]

mod support;

use pytest_mcp::grpc::pb;
use support::*;

backend_tests! {
    async fn streamed_outcomes_come_back_through_every_read_rpc;
    async fn a_late_watcher_gets_stored_outcomes_then_live_ones_then_the_finish;
    async fn resending_after_a_dropped_stream_stores_each_outcome_once;
    async fn acks_never_run_ahead_of_what_a_restarted_server_finds_after_sigkill;
    async fn start_session_is_idempotent_and_refuses_a_reused_id_with_other_content;
    async fn finish_marks_missing_outcomes_incomplete_until_they_arrive;
    async fn long_tracebacks_and_output_are_truncated_with_a_visible_marker;
    async fn sigterm_turns_health_off_sends_final_acks_and_exits_zero;
    async fn two_server_processes_can_share_one_database;
}

async fn streamed_outcomes_come_back_through_every_read_rpc(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;

    // An older session of another project, for filters and history.
    let old = new_id();
    start_session(&mut c, &old, "other").await;
    stream(
        &mut c,
        &old,
        vec![vec![outcome(
            1,
            "tests/test_a.py::test_shared",
            pb::TestOutcome::Passed,
        )]],
    )
    .await
    .unwrap();
    finish(&mut c, &old, 1, 0).await.unwrap();

    let id = new_id();
    let started = start_session(&mut c, &id, "demo").await;
    assert_eq!(started.status(), pb::SessionStatus::Running);
    let mut shared_fail = outcome(3, "tests/test_a.py::test_shared", pb::TestOutcome::Failed);
    shared_fail.message = "AssertionError: assert 1 == 2".into();
    shared_fail.longrepr =
        "def test_shared():\n>       assert 1 == 2\nE       assert 1 == 2".into();
    shared_fail.stdout = "printed before failing".into();
    shared_fail.markers = vec!["slow".into()];
    let mut skipped = outcome(4, "tests/test_b.py::test_skip", pb::TestOutcome::Skipped);
    skipped.message = "no network".into();
    let batches = vec![
        vec![
            outcome(1, "tests/test_a.py::test_one", pb::TestOutcome::Passed),
            outcome(2, "tests/test_a.py::test_two[x]", pb::TestOutcome::Passed),
        ],
        vec![shared_fail, skipped],
        vec![outcome(
            5,
            "tests/test_b.py::test_err",
            pb::TestOutcome::Error,
        )],
    ];
    let acks = stream(&mut c, &id, batches).await.unwrap();
    assert_eq!(
        acks,
        vec![2, 4, 5],
        "one ack per batch, in order, with the highest committed seq"
    );

    let done = finish(&mut c, &id, 5, 1).await.unwrap();
    assert_eq!(done.status(), pb::SessionStatus::Finished);
    assert!(done.finished_at.is_some());

    // GetSession by id and as latest.
    for key in [id.as_str(), "latest"] {
        let s = get_session(&mut c, key).await;
        assert_eq!(s.id, id);
        assert_eq!(s.outcomes_stored, 5);
        let counts = s.counts.unwrap();
        assert_eq!(
            (counts.passed, counts.failed, counts.skipped, counts.errors),
            (2, 1, 1, 1)
        );
        assert_eq!(s.summary.unwrap().exitstatus, 1);
        assert_eq!(s.environment.unwrap().project, "demo");
    }

    // ListSessions: newest first, filters, paging.
    let all = c
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = all.sessions.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, vec![id.clone(), old.clone()]);
    let demo = c
        .list_sessions(pb::ListSessionsRequest {
            project: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(demo.sessions.len(), 1);
    assert_eq!(demo.sessions[0].id, old);
    let running = c
        .list_sessions(pb::ListSessionsRequest {
            status: vec![pb::SessionStatus::Running.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running.sessions.is_empty());
    let first = c
        .list_sessions(pb::ListSessionsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.sessions[0].id, id);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .list_sessions(pb::ListSessionsRequest {
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.sessions[0].id, old);
    assert!(second.next_page_token.is_empty());

    // ListOutcomes: everything, failures only, by nodeid, paged.
    let outcomes = all_outcomes(&mut c, &id).await;
    assert_eq!(
        outcomes.iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let failed = &outcomes[2];
    assert_eq!(failed.nodeid, "tests/test_a.py::test_shared");
    assert_eq!(failed.message, "AssertionError: assert 1 == 2");
    assert!(failed.longrepr.contains("assert 1 == 2"));
    assert_eq!(failed.stdout, "printed before failing");
    assert_eq!(failed.markers, vec!["slow".to_string()]);
    assert_eq!(failed.session_id, id);
    assert_eq!(outcomes[3].message, "no network");

    let failures = c
        .list_outcomes(pb::ListOutcomesRequest {
            session_id: "latest".into(),
            outcomes: vec![
                pb::TestOutcome::Failed.into(),
                pb::TestOutcome::Error.into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        failures
            .outcomes
            .iter()
            .map(|o| o.nodeid.as_str())
            .collect::<Vec<_>>(),
        vec!["tests/test_a.py::test_shared", "tests/test_b.py::test_err"]
    );
    let by_name = c
        .list_outcomes(pb::ListOutcomesRequest {
            session_id: id.clone(),
            nodeid_contains: "test_b.py".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.outcomes.len(), 2);
    let page = c
        .list_outcomes(pb::ListOutcomesRequest {
            session_id: id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.outcomes.len(), 2);
    assert!(!page.next_page_token.is_empty());

    // GetTestHistory: one nodeid across one project's sessions, newest
    // first; the same nodeid in another project is another test.
    let history = |project: &str| {
        let mut c = c.clone();
        let project = project.to_string();
        async move {
            let entries = c
                .get_test_history(pb::GetTestHistoryRequest {
                    nodeid: "tests/test_a.py::test_shared".into(),
                    project,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .entries;
            Ok::<_, tonic::Status>(
                entries
                    .iter()
                    .map(|e| {
                        (
                            e.session.as_ref().unwrap().id.clone(),
                            e.outcome.as_ref().unwrap().outcome(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    // By default, the most recently active project's.
    assert_eq!(
        history("").await.unwrap(),
        vec![(id.clone(), pb::TestOutcome::Failed)]
    );
    assert_eq!(
        history("OTHER").await.unwrap(),
        vec![(old.clone(), pb::TestOutcome::Passed)]
    );
    let unknown = history("nope").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("the projects are:"),
        "{}",
        unknown.message()
    );
    // `latest` of a project named is that project's newest session.
    let latest_other = c
        .get_session(pb::GetSessionRequest {
            session_id: "latest".into(),
            project: "other".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(latest_other.id, old);
    // And an id's first eight digits name it.
    let by_prefix = c
        .get_session(pb::GetSessionRequest {
            session_id: old[..8].to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(by_prefix.id, old);
}

async fn a_late_watcher_gets_stored_outcomes_then_live_ones_then_the_finish(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();

    let mut watch = c
        .watch_session(pb::WatchSessionRequest {
            session_id: "latest".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut writer = server.client().await;
    let id2 = id.clone();
    let producer = tokio::spawn(async move {
        for seq in 4..=10u64 {
            stream(&mut writer, &id2, vec![vec![numbered(seq)]])
                .await
                .unwrap();
        }
        finish(&mut writer, &id2, 10, 1).await.unwrap();
    });

    let mut seqs = Vec::new();
    let mut statuses = Vec::new();
    let watched = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(ev) = watch.message().await.unwrap() {
            match ev.event.unwrap() {
                pb::watch_session_response::Event::Outcome(o) => seqs.push(o.seq),
                pb::watch_session_response::Event::Session(s) => statuses.push(s.status()),
            }
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "the watch did not end after the session finished"
    );
    producer.await.unwrap();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "every outcome once, in order"
    );
    assert_eq!(
        statuses,
        vec![pb::SessionStatus::Running, pb::SessionStatus::Finished]
    );
}

async fn resending_after_a_dropped_stream_stores_each_outcome_once(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;

    let acks = stream(&mut c, &id, vec![(1..=100).map(numbered).collect()])
        .await
        .unwrap();
    assert_eq!(acks, vec![100]);
    // The client did not see that ack (say) and resends overlapping batches.
    let acks = stream(
        &mut c,
        &id,
        vec![
            (50..=120).map(numbered).collect(),
            (1..=150).map(numbered).collect(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(acks, vec![120, 150]);
    // A batch of nothing but duplicates is acknowledged again.
    let acks = stream(&mut c, &id, vec![(1..=10).map(numbered).collect()])
        .await
        .unwrap();
    assert_eq!(acks, vec![150]);

    let outcomes = all_outcomes(&mut c, &id).await;
    assert_eq!(outcomes.len(), 150);
    assert_eq!(
        outcomes.iter().map(|o| o.seq).collect::<Vec<_>>(),
        (1..=150).collect::<Vec<_>>()
    );
    let s = get_session(&mut c, &id).await;
    assert_eq!(s.counts.unwrap().failed, 15);
}

async fn acks_never_run_ahead_of_what_a_restarted_server_finds_after_sigkill(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;

    // Stream batches continuously and kill the server mid-stream.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let id2 = id.clone();
    let feeder = tokio::spawn(async move {
        let mut seq = 0u64;
        loop {
            let batch: Vec<pb::Outcome> = (0..200)
                .map(|_| {
                    seq += 1;
                    numbered(seq)
                })
                .collect();
            let req = pb::StreamOutcomesRequest {
                session_id: id2.clone(),
                outcomes: batch,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return;
            }
        }
    });
    let mut acks = c
        .stream_outcomes(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut last_ack = 0;
    while let Ok(Some(ack)) = acks.message().await {
        last_ack = ack.acked_seq;
        if last_ack >= 20_000 {
            break;
        }
    }
    server.kill9();
    // Drain acks that were already in flight when the process died.
    while let Ok(Some(ack)) = acks.message().await {
        last_ack = ack.acked_seq;
    }
    feeder.abort();
    assert!(last_ack >= 20_000);

    let server = Server::start(&db);
    let mut c = server.client().await;
    let s = get_session(&mut c, &id).await;
    assert!(
        s.outcomes_stored >= last_ack,
        "acked {last_ack} but only {} survived SIGKILL",
        s.outcomes_stored
    );
    let outcomes = all_outcomes(&mut c, &id).await;
    assert_eq!(outcomes.len() as u64, s.outcomes_stored);
    assert!(
        outcomes
            .iter()
            .enumerate()
            .all(|(i, o)| o.seq == i as u64 + 1),
        "seqs are contiguous"
    );

    // The client resends everything unacknowledged and more; nothing doubles.
    let next = s.outcomes_stored;
    let acks = stream(
        &mut c,
        &id,
        vec![((last_ack + 1)..=(next + 500)).map(numbered).collect()],
    )
    .await
    .unwrap();
    assert_eq!(acks, vec![next + 500]);
    assert_eq!(all_outcomes(&mut c, &id).await.len() as u64, next + 500);
}

async fn start_session_is_idempotent_and_refuses_a_reused_id_with_other_content(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    let first = start_session(&mut c, &id, "demo").await;
    let again = start_session(&mut c, &id, "demo").await;
    assert_eq!(
        first, again,
        "the same call again returns the stored session"
    );
    let err = c
        .start_session(pb::StartSessionRequest {
            session_id: id.clone(),
            environment: Some(env("another")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(
        err.message().contains("session_id") && err.message().contains("environment"),
        "{}",
        err.message()
    );
    let list = c
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 1);
}

async fn finish_marks_missing_outcomes_incomplete_until_they_arrive(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();
    let s = finish(&mut c, &id, 5, 1).await.unwrap();
    assert_eq!(s.status(), pb::SessionStatus::Incomplete);
    assert_eq!(s.outcomes_expected, Some(5));

    // The rest arrives later (a replayed spool): the session completes.
    stream(&mut c, &id, vec![(1..=5).map(numbered).collect()])
        .await
        .unwrap();
    let s = get_session(&mut c, &id).await;
    assert_eq!(s.status(), pb::SessionStatus::Finished);
    // Finishing again with the same content is a no-op.
    let again = finish(&mut c, &id, 5, 1).await.unwrap();
    assert_eq!(again.status(), pb::SessionStatus::Finished);

    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=2).map(numbered).collect()])
        .await
        .unwrap();
    let s = finish(&mut c, &id, 2, 2).await.unwrap();
    assert_eq!(
        s.status(),
        pb::SessionStatus::Interrupted,
        "exit status 2 is an interrupted run"
    );
}

async fn long_tracebacks_and_output_are_truncated_with_a_visible_marker(db: TestDb) {
    let server = Server::start_with(&db, &["--max-field-bytes", "4096"]);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    let mut o = outcome(1, "tests/test_big.py::test_big", pb::TestOutcome::Failed);
    o.longrepr = format!("START{}E   AssertionError: the end", "x".repeat(100_000));
    o.stdout = "y".repeat(50_000);
    stream(&mut c, &id, vec![vec![o]]).await.unwrap();
    let stored = &all_outcomes(&mut c, &id).await[0];
    assert!(stored.longrepr.len() <= 4096, "{}", stored.longrepr.len());
    assert!(stored.longrepr.starts_with("START"));
    assert!(
        stored.longrepr.ends_with("E   AssertionError: the end"),
        "the error line at the end is kept"
    );
    assert!(stored.longrepr.contains("[pytest-mcp: truncated"));
    assert!(stored.stdout.len() <= 4096 && stored.stdout.contains("[pytest-mcp: truncated"));
}

async fn sigterm_turns_health_off_sends_final_acks_and_exits_zero(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = c
        .stream_outcomes(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::StreamOutcomesRequest {
        session_id: id.clone(),
        outcomes: (1..=50).map(numbered).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().acked_seq, 50);

    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "pytest_mcp.v1.Recorder".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1, "SERVING");

    let started = std::time::Instant::now();
    // Not a blocking join on this runtime's thread: the client's connection
    // tasks must keep running for the server to see its streams finish.
    let waiter = tokio::task::spawn_blocking(move || server.terminate());
    // Health flips to NOT_SERVING before the server goes away.
    let update = watch.message().await.unwrap().expect("a health update");
    assert_eq!(update.status, 2, "NOT_SERVING");
    drop(watch);
    // The open stream ends with UNAVAILABLE, telling the client to resend elsewhere.
    let end = acks.message().await;
    match end {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("shutting down"));
        }
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    drop(tx);
    let exit = waiter.await.unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    eprintln!("shutdown took {:?}", started.elapsed());

    let server = Server::start(&db);
    let mut c = server.client().await;
    assert_eq!(get_session(&mut c, &id).await.outcomes_stored, 50);
}

async fn two_server_processes_can_share_one_database(db: TestDb) {
    let a = Server::start(&db);
    let b = Server::start(&db);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let (ia, ib) = (new_id(), new_id());
    start_session(&mut ca, &ia, "a").await;
    start_session(&mut cb, &ib, "b").await;
    let batches = |n: u64| -> Vec<Vec<pb::Outcome>> {
        (0..n)
            .map(|k| (k * 100 + 1..=(k + 1) * 100).map(numbered).collect())
            .collect()
    };
    let (ra, rb) = tokio::join!(
        stream(&mut ca, &ia, batches(40)),
        stream(&mut cb, &ib, batches(40)),
    );
    assert_eq!(ra.unwrap().last(), Some(&4000));
    assert_eq!(rb.unwrap().last(), Some(&4000));
    // The same session written through both processes: still stored once each.
    let ra = stream(&mut cb, &ia, vec![(3990..=4100).map(numbered).collect()])
        .await
        .unwrap();
    assert_eq!(ra, vec![4100]);
    let ra = stream(&mut ca, &ia, vec![(4000..=4200).map(numbered).collect()])
        .await
        .unwrap();
    assert_eq!(ra, vec![4200]);
    assert_eq!(all_outcomes(&mut ca, &ia).await.len(), 4200);
    assert_eq!(all_outcomes(&mut cb, &ib).await.len(), 4000);
}
