//! `pytest-mcp watch`: follows a session over `WatchSession` for a person at
//! another terminal: a live progress line, and each failure as it arrives.

use std::io::{IsTerminal, Write};
use std::time::{Instant, SystemTime};

use anyhow::Context;

use crate::grpc::pb;
use crate::grpc::pb::watch_session_response::Event;

/// Longest traceback printed per failure, in lines; `show` prints it whole.
const MAX_TRACEBACK_LINES: usize = 40;

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    errors: u64,
    skipped: u64,
    xfailed: u64,
    xpassed: u64,
}

impl Tally {
    fn add(&mut self, o: pb::TestOutcome) {
        match o {
            pb::TestOutcome::Passed => self.passed += 1,
            pb::TestOutcome::Failed => self.failed += 1,
            pb::TestOutcome::Error => self.errors += 1,
            pb::TestOutcome::Skipped => self.skipped += 1,
            pb::TestOutcome::Xfailed => self.xfailed += 1,
            pb::TestOutcome::Xpassed => self.xpassed += 1,
            pb::TestOutcome::Unspecified => {}
        }
    }

    fn total(&self) -> u64 {
        self.passed + self.failed + self.errors + self.skipped + self.xfailed + self.xpassed
    }

    fn line(&self, rate: f64) -> String {
        format!(
            "{} tests: {} passed, {} failed, {} errors, {} skipped, {} xfailed, {} xpassed  ({rate:.0} tests/s)",
            self.total(),
            self.passed,
            self.failed,
            self.errors,
            self.skipped,
            self.xfailed,
            self.xpassed
        )
    }
}

/// `request` with the bearer `token`, when there is one.
fn with_token<T>(
    mut request: tonic::Request<T>,
    token: Option<&str>,
) -> anyhow::Result<tonic::Request<T>> {
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--token: not usable in a gRPC header"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Follows `session` (an id, or `latest` of `project`: its running
/// session, else the next one to start) on the server at `addr` until it
/// ends, authenticating with `token` when given.
pub async fn watch(
    addr: &str,
    session: &str,
    project: &str,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let url = format!("http://{addr}");
    let mut client = pb::recorder_client::RecorderClient::connect(url)
        .await
        .with_context(|| {
            format!(
                "--grpc-addr: cannot reach the recorder at {addr}; is `pytest-mcp serve` running?"
            )
        })?;
    let authorized = |request| with_token(request, token);
    let mut session = session.to_string();
    if session.eq_ignore_ascii_case("latest") {
        // A finished run is not what a person starting `watch` before their
        // next run wants to see: wait for the next one instead.
        let latest = client
            .get_session(authorized(tonic::Request::new(pb::GetSessionRequest {
                session_id: "latest".into(),
                project: project.to_string(),
            }))?)
            .await;
        session = match latest {
            Ok(r) => match r.into_inner().session {
                Some(s) if s.status() == pb::SessionStatus::Running => s.id,
                _ => "next".into(),
            },
            Err(s) if s.code() == tonic::Code::NotFound => "next".into(),
            Err(s) => anyhow::bail!("{}", s.message()),
        };
        if session == "next" {
            let whose = if project.is_empty() {
                String::new()
            } else {
                format!(" of project {project}")
            };
            eprintln!("pytest-mcp: waiting for the next session{whose} to start…");
        }
    }
    let request = with_token(
        tonic::Request::new(pb::WatchSessionRequest {
            session_id: session,
            project: project.to_string(),
        }),
        token,
    )?;
    let mut events = client
        .watch_session(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();

    let live = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut tally = Tally::default();
    // Rate over the run's own clock, so outcomes replayed to a late watcher
    // do not inflate it.
    let mut started: Option<SystemTime> = None;
    let mut last_draw = Instant::now();
    let mut drawn = false;

    let clear = |out: &mut std::io::StdoutLock<'_>, drawn: &mut bool| -> std::io::Result<()> {
        if *drawn {
            write!(out, "\r\x1b[2K")?;
            *drawn = false;
        }
        Ok(())
    };

    while let Some(event) = events
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("the watch ended: {}", s.message()))?
    {
        match event.event {
            Some(Event::Session(s)) => {
                clear(&mut out, &mut drawn)?;
                if started.is_none() {
                    started = s.started_at.as_ref().map(system_time);
                }
                let ended = s.finished_at.as_ref().map(system_time);
                let status = s.status();
                let project = s
                    .environment
                    .as_ref()
                    .map(|e| e.project.clone())
                    .unwrap_or_default();
                match status {
                    pb::SessionStatus::Running => {
                        writeln!(out, "watching session {} {project} (running)", s.id)?;
                    }
                    other => {
                        let name = other
                            .as_str_name()
                            .trim_start_matches("SESSION_STATUS_")
                            .to_lowercase();
                        writeln!(out, "{}", tally.line(rate(&tally, started, ended)))?;
                        let exit = s
                            .summary
                            .map(|x| format!(", exit status {}", x.exitstatus))
                            .unwrap_or_default();
                        writeln!(out, "session {} {name}{exit}", s.id)?;
                    }
                }
            }
            Some(Event::Outcome(o)) => {
                let kind = o.outcome();
                // As pytest counts: a subtest only when it failed.
                if o.subtest.is_empty() || kind == pb::TestOutcome::Failed {
                    tally.add(kind);
                }
                if matches!(kind, pb::TestOutcome::Failed | pb::TestOutcome::Error) {
                    clear(&mut out, &mut drawn)?;
                    let label = if kind == pb::TestOutcome::Failed {
                        "FAILED"
                    } else {
                        "ERROR"
                    };
                    if o.subtest.is_empty() {
                        writeln!(out, "{label} {}", o.nodeid)?;
                    } else {
                        writeln!(out, "{label} {} {}", o.nodeid, o.subtest)?;
                    }
                    if !o.message.is_empty() {
                        writeln!(out, "  {}", o.message)?;
                    }
                    let lines: Vec<&str> = o.longrepr.lines().collect();
                    let skip = lines.len().saturating_sub(MAX_TRACEBACK_LINES);
                    if skip > 0 {
                        writeln!(
                            out,
                            "  | ... {skip} earlier lines (pytest-mcp show {})",
                            o.session_id
                        )?;
                    }
                    for line in &lines[skip..] {
                        writeln!(out, "  | {line}")?;
                    }
                }
                if live && last_draw.elapsed().as_millis() >= 100 {
                    clear(&mut out, &mut drawn)?;
                    write!(out, "{}", tally.line(rate(&tally, started, None)))?;
                    out.flush()?;
                    drawn = true;
                    last_draw = Instant::now();
                }
            }
            None => {}
        }
    }
    clear(&mut out, &mut drawn)?;
    out.flush()?;
    Ok(())
}

fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    let micros = t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1000);
    crate::model::Timestamp(micros).into()
}

fn rate(t: &Tally, started: Option<SystemTime>, ended: Option<SystemTime>) -> f64 {
    let Some(started) = started else { return 0.0 };
    let end = ended.unwrap_or_else(SystemTime::now);
    match end.duration_since(started) {
        Ok(d) if d.as_secs_f64() > 0.0 => t.total() as f64 / d.as_secs_f64(),
        _ => 0.0,
    }
}
