//! Credentials and the policy file at start-up, through the real binary:
//! tokens on gRPC (tonic and grpcurl), grants on sessions, the refusal of a
//! non-loopback listener without a token, and malformed policy files.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use pytest_mcp::grpc::pb;
use pytest_mcp::grpc::pb::recorder_client::RecorderClient;
use support::{Server, TestDb, backend_tests, binary, grpcurl_run, new_id, serve_command};
use tonic::transport::Channel;

backend_tests! {
    async fn grpc_without_or_with_a_wrong_token_is_unauthenticated_and_with_the_right_one_works;
    fn grpcurl_shows_unauthenticated_without_a_token_and_works_with_one;
    fn a_non_loopback_listener_without_a_token_is_refused_at_start_up;
    fn each_malformed_policy_file_is_refused_at_start_up_naming_the_field;
    fn a_tokens_file_with_an_empty_or_a_shared_token_is_refused_without_showing_tokens;
    fn watch_sends_its_token;
    async fn grpc_over_tls_needs_the_certificate_and_the_token;
}

const ALICE: &str = "tok-alice-0123456789";
const BOB: &str = "tok-bob-9876543210";

/// A server on `db` with two grants, alice and bob; its tokens file is in `dir`.
fn guarded(db: &TestDb, dir: &Path) -> Server {
    let tokens = dir.join("tokens.json");
    std::fs::write(
        &tokens,
        format!(r#"{{"alice": "{ALICE}", "bob": "{BOB}"}}"#),
    )
    .unwrap();
    Server::start_with(db, &["--tokens", tokens.to_str().unwrap()])
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn start(
    client: &mut RecorderClient<Channel>,
    token: Option<&str>,
) -> Result<pb::Session, tonic::Status> {
    let request = pb::StartSessionRequest {
        session_id: new_id(),
        environment: Some(support::env("auth")),
        ..Default::default()
    };
    Ok(client
        .start_session(with_token(request, token))
        .await?
        .into_inner()
        .session
        .unwrap())
}

async fn grpc_without_or_with_a_wrong_token_is_unauthenticated_and_with_the_right_one_works(
    db: TestDb,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = guarded(&db, dir.path());
    let mut client = server.client().await;

    let missing = start(&mut client, None).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        missing.message(),
        "missing authorization metadata: expected `authorization: Bearer <token>`"
    );
    let wrong = start(&mut client, Some("tok-mallory")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert_eq!(wrong.message(), "invalid token");

    // Streams are guarded too, not only unary calls.
    let denied = client
        .stream_outcomes(with_token(
            tokio_stream::iter(Vec::<pb::StreamOutcomesRequest>::new()),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);

    let alice = start(&mut client, Some(ALICE)).await.unwrap();
    let bob = start(&mut client, Some(BOB)).await.unwrap();

    // Nothing was stored for the refused calls.
    let listed = client
        .list_sessions(with_token(pb::ListSessionsRequest::default(), Some(BOB)))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 2);

    // The plugin's sessions are tagged with their grant.
    for (session, grant) in [(&alice, "alice"), (&bob, "bob")] {
        let out = Command::new(binary())
            .args(["show", &session.id, "--db"])
            .arg(&server.db)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("grant     {grant}\n")), "{text}");
    }
    let tail = server.stderr_tail.lock().unwrap().join("\n");
    assert!(
        !tail.contains(ALICE) && !tail.contains("tok-mallory"),
        "{tail}"
    );
}

fn grpcurl_shows_unauthenticated_without_a_token_and_works_with_one(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = guarded(&db, dir.path());
    let addr = server.addr.as_str();
    let method = "pytest_mcp.v1.Recorder/ListSessions";

    let (ok, _, err) = grpcurl_run(&["-plaintext", "-d", "{}", addr, method]);
    assert!(!ok);
    assert!(
        err.contains("Code: Unauthenticated\n  Message: missing authorization metadata: expected `authorization: Bearer <token>`"),
        "{err}"
    );

    let wrong = "authorization: Bearer nope";
    let (ok, _, err) = grpcurl_run(&["-plaintext", "-H", wrong, "-d", "{}", addr, method]);
    assert!(!ok);
    assert!(
        err.contains("Unauthenticated") && err.contains("invalid token"),
        "{err}"
    );

    let right = format!("authorization: Bearer {ALICE}");
    let (ok, out, err) = grpcurl_run(&["-plaintext", "-H", &right, "-d", "{}", addr, method]);
    assert!(ok, "{err}");
    assert_eq!(out.split_whitespace().collect::<String>(), "{}");
    // Reflection (the API's shape) and the health check stay open.
    let (ok, out, err) = grpcurl_run(&["-plaintext", addr, "list"]);
    assert!(ok && out.contains("pytest_mcp.v1.Recorder"), "{err}");
    let (ok, out, err) = grpcurl_run(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{err}");
}

fn a_non_loopback_listener_without_a_token_is_refused_at_start_up(db: TestDb) {
    for (flag, extra) in [
        ("--grpc-addr", ["--http-addr", "127.0.0.1:0"]),
        ("--http-addr", ["--grpc-addr", "127.0.0.1:0"]),
    ] {
        let out = Command::new(binary())
            .args(["serve", flag, "0.0.0.0:0"])
            .args(extra)
            .arg("--db")
            .arg(&db)
            .env_remove("PYTEST_MCP_TOKEN")
            .env_remove("PYTEST_MCP_TOKENS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "{flag}: refusing to listen on 0.0.0.0:0: it is not a loopback address and no token is configured"
            )),
            "{err}"
        );
    }
    let out = Command::new(binary())
        .args(["stdio", "--grpc-addr", "0.0.0.0:0", "--db"])
        .arg(&db)
        .env_remove("PYTEST_MCP_TOKEN")
        .env_remove("PYTEST_MCP_TOKENS")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no token is configured"), "{err}");
}

/// Each malformed policy file stops `serve` with a message naming the place.
fn each_malformed_policy_file_is_refused_at_start_up_naming_the_field(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"version": "1", "default": "deny", "tools": {"record_session_finish": {"limits": [
                {"counter": "r", "window": "fortnight", "max": 30, "scope": "grant"}]}}}"#,
            "tools.record_session_finish.limits[0].window: unknown variant `fortnight`, expected one of `second`, `minute`, `hour`, `day`",
        ),
        (
            r#"{"version": "1", "default": "deny", "tools": {"record_session_finish": {"limits": [
                {"counter": "r", "window": "minute", "max": -5, "scope": "grant"}]}}}"#,
            "tools.record_session_finish.limits[0].max: invalid value: integer `-5`",
        ),
        (
            r#"{"version": "1", "default": "deny", "tools": {"record_session_finis": {}}}"#,
            "tools.record_session_finis: unknown tool \"record_session_finis\"; the tools are: affected_tests, compare_sessions, duration_regressions, find_flaky_tests",
        ),
        (
            r#"{"version": "1", "default": "deny", "tool": {}}"#,
            "tool: unknown field `tool`",
        ),
        (
            r#"{"version": "1", "default": "deny", "tools": {"get_session": {"limit": []}}}"#,
            "tools.get_session.limit: unknown field `limit`",
        ),
        (
            r#"{"version": "1", "default": "deny", "tools": {"get_session": {"limits": [
                {"counter": "r", "window": "minute", "max": 3, "scope": "team"}]}}}"#,
            "tools.get_session.limits[0].scope: unknown variant `team`",
        ),
        (
            r#"{"version": "1", "default": "block"}"#,
            "default: unknown variant `block`, expected `allow` or `deny`",
        ),
        (
            r#"{"version": 1, "default": "deny"}"#,
            "version: invalid type: integer `1`, expected a string",
        ),
        (
            r#"{"version": "1", "default": "deny", "tools": {"get_session": {"action": "hide"}}}"#,
            "tools.get_session.action: unknown variant `hide`",
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("policy{i}.json"));
        std::fs::write(&path, text).unwrap();
        let out = serve_command(&db)
            .arg("--policy")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(
            err.contains(&format!("--policy {}: {wanted}", path.display())),
            "{text}: {err}"
        );
    }
    let out = Command::new(binary())
        .args(["serve", "--policy"])
        .arg(dir.path().join("missing.json"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("cannot read"),
        "{err}"
    );
}

fn a_tokens_file_with_an_empty_or_a_shared_token_is_refused_without_showing_tokens(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    for (text, wanted) in [
        (r#"{"ci": ""}"#, "the token of grant \"ci\" is empty"),
        (
            r#"{"ci": "samesame-secret", "agent": "samesame-secret"}"#,
            "have the same token",
        ),
    ] {
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, text).unwrap();
        let out = serve_command(&db)
            .arg("--tokens")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(wanted), "{err}");
        assert!(!err.contains("samesame-secret"), "{err}");
    }
}

fn watch_sends_its_token(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = guarded(&db, dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let mut client = server.client().await;
        let s = start(&mut client, Some(BOB)).await.unwrap();
        let mut finish = with_token(
            pb::FinishSessionRequest {
                session_id: s.id.clone(),
                summary: Some(pb::Summary::default()),
                ..Default::default()
            },
            Some(BOB),
        );
        finish.set_timeout(std::time::Duration::from_secs(10));
        client.finish_session(finish).await.unwrap();
        s.id
    });
    let watch = |token: Option<&str>| {
        let mut cmd = Command::new(binary());
        cmd.args(["watch", &id, "--grpc-addr", &server.addr])
            .env_remove("PYTEST_MCP_TOKEN");
        if let Some(t) = token {
            cmd.env("PYTEST_MCP_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let refused = watch(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("missing authorization metadata"));
    let watched = watch(Some(BOB));
    let out = String::from_utf8_lossy(&watched.stdout);
    assert!(watched.status.success(), "{out}");
    assert!(out.contains(&format!("session {id} finished")), "{out}");
}

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.pem())
}

async fn grpc_over_tls_needs_the_certificate_and_the_token(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(dir.path());
    let server = Server::start_with(
        &db,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--token",
            ALICE,
        ],
    );
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RecorderClient::new(channel);
    let refused = start(&mut client, None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let session = start(&mut client, Some(ALICE)).await.unwrap();
    assert_eq!(session.status(), pb::SessionStatus::Running);

    // A plaintext client gets nowhere.
    let mut plain = RecorderClient::connect(server.url()).await.unwrap();
    let err = start(&mut plain, Some(ALICE)).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    let right = format!("authorization: Bearer {ALICE}");
    let cacert = cert.to_str().unwrap();
    let (ok, out, err) = grpcurl_run(&[
        "-cacert",
        cacert,
        "-authority",
        "localhost",
        "-H",
        &right,
        "-d",
        "{}",
        &server.addr,
        "pytest_mcp.v1.Recorder/ListSessions",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&session.id), "{out}");
    // Plaintext to a TLS listener: grpcurl would retry for its default 10 s.
    let (ok, _, err) = grpcurl_run(&[
        "-plaintext",
        "-connect-timeout",
        "2",
        "-H",
        &right,
        "-d",
        "{}",
        &server.addr,
        "pytest_mcp.v1.Recorder/ListSessions",
    ]);
    assert!(!ok, "{err}");
}
