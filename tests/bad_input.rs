//! Every kind of bad input gets its gRPC status and a message naming the
//! field, and never harms what is already stored.

#![allow(clippy::unwrap_used)]

mod support;

use pytest_mcp::grpc::pb;
use support::*;
use tonic::Code;

backend_tests! {
    async fn each_bad_outcome_is_rejected_with_its_field_named_and_nothing_stored;
    async fn unknown_sessions_and_malformed_uuids_are_named;
    async fn outcomes_after_finish_are_refused_but_resends_are_acknowledged;
    async fn a_message_over_the_size_limit_is_resource_exhausted;
    async fn a_code_state_or_project_past_its_bound_is_refused_naming_it;
}

/// Streams one batch and returns the error it must cause.
async fn reject(
    c: &mut pb::recorder_client::RecorderClient<tonic::transport::Channel>,
    session_id: &str,
    outcomes: Vec<pb::Outcome>,
) -> tonic::Status {
    match stream(c, session_id, vec![outcomes]).await {
        Ok(acks) => panic!("expected an error, got acks {acks:?}"),
        Err(status) => status,
    }
}

fn assert_status(status: &tonic::Status, code: Code, field: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} does not name {field:?}",
        status.message()
    );
}

async fn each_bad_outcome_is_rejected_with_its_field_named_and_nothing_stored(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();

    let good = |seq| outcome(seq, "tests/test_x.py::test_ok", pb::TestOutcome::Passed);
    let mut cases: Vec<(&str, pb::Outcome, Code, &str)> = Vec::new();
    let mut o = good(4);
    o.nodeid = String::new();
    cases.push((
        "empty nodeid",
        o,
        Code::InvalidArgument,
        "outcomes[1].nodeid",
    ));
    let mut o = good(4);
    o.nodeid = "   ".into();
    cases.push((
        "blank nodeid",
        o,
        Code::InvalidArgument,
        "outcomes[1].nodeid",
    ));
    let mut o = good(4);
    o.nodeid = format!("tests/test_x.py::test_{}", "n".repeat(5000));
    cases.push((
        "nodeid over 4 KiB",
        o,
        Code::InvalidArgument,
        "outcomes[1].nodeid",
    ));
    let mut o = good(4);
    o.outcome = 99;
    cases.push((
        "unknown outcome",
        o,
        Code::InvalidArgument,
        "outcomes[1].outcome",
    ));
    let mut o = good(4);
    o.outcome = 0;
    cases.push((
        "unset outcome",
        o,
        Code::InvalidArgument,
        "outcomes[1].outcome",
    ));
    for d in [-0.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut o = good(4);
        o.duration = d;
        cases.push((
            "bad duration",
            o,
            Code::InvalidArgument,
            "outcomes[1].duration",
        ));
    }
    cases.push(("seq 0", good(0), Code::InvalidArgument, "outcomes[1].seq"));
    let mut o = good(4);
    o.phase = 42;
    cases.push((
        "unknown phase",
        o,
        Code::InvalidArgument,
        "outcomes[1].phase",
    ));
    let mut o = good(4);
    o.session_id = new_id();
    cases.push((
        "mismatched session",
        o,
        Code::InvalidArgument,
        "outcomes[1].session_id",
    ));

    for (what, bad, code, field) in cases {
        // A valid outcome first: the whole message is refused, not half of it.
        let status = reject(&mut c, &id, vec![good(4), bad]).await;
        assert_status(&status, code, field);
        let s = get_session(&mut c, &id).await;
        assert_eq!(s.outcomes_stored, 3, "{what}: stored outcomes changed");
    }

    // A gap names the seq expected.
    let status = reject(&mut c, &id, vec![good(5)]).await;
    assert_status(&status, Code::FailedPrecondition, "outcomes[0].seq");
    assert!(
        status.message().contains("expected seq 4"),
        "{}",
        status.message()
    );

    // Seqs inside one message must increase.
    let status = reject(&mut c, &id, vec![good(5), good(4)]).await;
    assert_status(&status, Code::InvalidArgument, "outcomes[1].seq");

    // Everything stored before is intact and the session still takes good input.
    assert_eq!(
        stream(&mut c, &id, vec![vec![good(4)]]).await.unwrap(),
        vec![4]
    );
    let all = all_outcomes(&mut c, &id).await;
    assert_eq!(
        all.iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

async fn unknown_sessions_and_malformed_uuids_are_named(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;

    let status = reject(&mut c, &new_id(), vec![numbered(1)]).await;
    assert_status(&status, Code::NotFound, "session_id");
    assert!(status.message().contains("StartSession"));

    let status = reject(&mut c, "not-a-uuid", vec![numbered(1)]).await;
    assert_status(&status, Code::InvalidArgument, "session_id");

    let err = c
        .start_session(pb::StartSessionRequest {
            session_id: "1234".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "session_id");
    let err = c
        .start_session(pb::StartSessionRequest::default())
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "session_id");

    let err = c
        .get_session(pb::GetSessionRequest {
            session_id: "zzz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "session_id");
    let err = c
        .get_session(pb::GetSessionRequest {
            session_id: new_id(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "session_id");
    let err = c
        .get_session(pb::GetSessionRequest {
            session_id: "latest".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "session_id");

    let err = finish(&mut c, &new_id(), 0, 0).await.unwrap_err();
    assert_status(&err, Code::NotFound, "session_id");
    let err = finish(&mut c, "x", 0, 0).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "session_id");

    let err = c
        .list_outcomes(pb::ListOutcomesRequest {
            session_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "session_id");
    let err = c
        .list_sessions(pb::ListSessionsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "page_token");
    let err = c
        .get_test_history(pb::GetTestHistoryRequest::default())
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "nodeid");
    let err = c
        .watch_session(pb::WatchSessionRequest {
            session_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "session_id");
}

async fn outcomes_after_finish_are_refused_but_resends_are_acknowledged(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();
    finish(&mut c, &id, 3, 1).await.unwrap();

    let status = reject(&mut c, &id, vec![numbered(4)]).await;
    assert_status(&status, Code::FailedPrecondition, "session_id");
    assert!(
        status.message().contains("finished"),
        "{}",
        status.message()
    );
    // A resend of what is already stored is still fine (at-least-once delivery).
    assert_eq!(
        stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
            .await
            .unwrap(),
        vec![3]
    );

    let err = finish(&mut c, &id, 2, 1).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "outcomes_sent");
    let err = finish(&mut c, &id, 3, 0).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "session_id");
    let err = c
        .finish_session(pb::FinishSessionRequest {
            session_id: id.clone(),
            outcomes_sent: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "summary");
    assert_eq!(get_session(&mut c, &id).await.outcomes_stored, 3);
}

async fn a_message_over_the_size_limit_is_resource_exhausted(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let id = new_id();
    start_session(&mut c, &id, "demo").await;
    stream(&mut c, &id, vec![(1..=3).map(numbered).collect()])
        .await
        .unwrap();

    // 17 MiB in one message, over the 16 MiB limit.
    let mut big = numbered(4);
    big.longrepr = "x".repeat(17 * 1024 * 1024);
    let status = reject(&mut c, &id, vec![big]).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );

    // A unary call over the limit too.
    let mut env = env("demo");
    env.extra
        .insert("blob".into(), "y".repeat(17 * 1024 * 1024));
    let err = c
        .start_session(pb::StartSessionRequest {
            session_id: new_id(),
            environment: Some(env),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // An environment under the message limit but over its own bound names the field.
    let mut env = support::env("demo");
    env.extra.insert("blob".into(), "y".repeat(1024 * 1024));
    let err = c
        .start_session(pb::StartSessionRequest {
            session_id: new_id(),
            environment: Some(env),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "environment");

    assert_eq!(get_session(&mut c, &id).await.outcomes_stored, 3);
    assert_eq!(
        stream(&mut c, &id, vec![vec![numbered(4)]]).await.unwrap(),
        vec![4]
    );
}

async fn a_code_state_or_project_past_its_bound_is_refused_naming_it(db: TestDb) {
    let server = Server::start(&db);
    let mut c = server.client().await;
    let cases: Vec<(&str, pb::Environment, &str)> = vec![
        (
            "a code state of 257 bytes",
            pb::Environment {
                code_state: "a".repeat(257),
                ..env("demo")
            },
            "environment.code_state",
        ),
        (
            "a code state with a space",
            pb::Environment {
                code_state: "abc def".into(),
                ..env("demo")
            },
            "environment.code_state",
        ),
        (
            "a project name of 10 KiB",
            env(&"p".repeat(10 * 1024)),
            "environment.project",
        ),
        (
            "a project name with a newline",
            env("shop\nblog"),
            "environment.project",
        ),
    ];
    for (what, environment, field) in cases {
        let id = new_id();
        let status = c
            .start_session(pb::StartSessionRequest {
                session_id: id.clone(),
                environment: Some(environment),
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_status(&status, Code::InvalidArgument, field);
        // Nothing was stored under that id.
        let missing = c
            .get_session(pb::GetSessionRequest {
                session_id: id,
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(missing.code(), Code::NotFound, "{what}");
    }
    // The bound itself is accepted.
    let id = new_id();
    c.start_session(pb::StartSessionRequest {
        session_id: id,
        environment: Some(pb::Environment {
            code_state: "c".repeat(256),
            ..env(&"p".repeat(256))
        }),
        ..Default::default()
    })
    .await
    .expect("a code state and a project name at their bounds");
}
