//! Sessions: one in brief ([`SessionView`]), one in detail
//! ([`SessionDetailView`], `get_session`), and a page of them
//! ([`SessionListView`], `list_sessions`).

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::quarantine::{QuarantineStatusView, quarantine_text};
use super::scope::Scope;
use super::{FLAKY_WINDOW, non_empty};
use crate::error::{Error, Result};
use crate::model::{EXIT_INTERRUPTED, Environment, Session, SessionStatus, TestOutcome, Timestamp};
use crate::store::{OutcomeFilter, SessionFilter, Store};

/// A session in brief.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// running, finished, interrupted or incomplete.
    pub status: String,
    /// What the run came to, at a glance: `running`, `passed`, `failed`
    /// (a test failed or errored, or pytest said so), `interrupted`,
    /// `incomplete` (outcomes are missing), `no tests`, or `error` (pytest
    /// itself failed: usage or internal error).
    pub result: String,
    /// plugin, mcp or import.
    pub source: String,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// End time, RFC 3339, once finished.
    pub finished_at: Option<String>,
    /// Project name, when known.
    pub project: Option<String>,
    /// Git branch, when known.
    pub git_branch: Option<String>,
    /// Git commit, when known.
    pub git_commit: Option<String>,
    /// The code the run tested (the commit, plus `+` and a digest of
    /// uncommitted changes); runs are judged flaky only on equal ones.
    pub code_state: Option<String>,
    /// Outcomes stored so far.
    pub outcomes_stored: u64,
    /// Outcomes the client said it sent, once finished.
    pub outcomes_expected: Option<u64>,
    /// Stored outcomes by kind.
    pub counts: CountsView,
    /// pytest's exit status, once finished.
    pub exitstatus: Option<i32>,
    /// Duration of the run in seconds, once finished.
    pub duration: Option<f64>,
    /// Kept out of every pruning (`pytest-mcp pin`).
    pub pinned: bool,
}

/// Stored outcomes by kind.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CountsView {
    /// Passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
    /// Errors.
    pub errors: u64,
    /// Skipped.
    pub skipped: u64,
    /// Xfailed.
    pub xfailed: u64,
    /// Xpassed.
    pub xpassed: u64,
}

/// What a session came to: see [`SessionView::result`].
pub fn result_of(s: &Session) -> &'static str {
    match s.status {
        SessionStatus::Running => return "running",
        SessionStatus::Interrupted => return "interrupted",
        SessionStatus::Incomplete => return "incomplete",
        SessionStatus::Finished => {}
    }
    let failed = s.counts.failed + s.counts.errors > 0;
    match s.summary.as_ref().map(|x| x.exitstatus) {
        Some(0) => "passed",
        Some(1) => "failed",
        Some(EXIT_INTERRUPTED) => "interrupted",
        Some(5) => "no tests",
        Some(_) => "error",
        // Recorded without pytest's summary (through MCP): the outcomes say.
        None if failed => "failed",
        None => "passed",
    }
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        let c = s.counts;
        SessionView {
            id: s.id.to_string(),
            status: s.status.to_string(),
            result: result_of(s).to_string(),
            source: s.source.to_string(),
            started_at: s.started_at.to_rfc3339(),
            finished_at: s.finished_at.map(|t| t.to_rfc3339()),
            project: non_empty(&s.environment.project),
            git_branch: non_empty(&s.environment.git_branch),
            git_commit: non_empty(&s.environment.git_commit),
            code_state: s.environment.code_identity().map(str::to_string),
            outcomes_stored: s.outcomes_stored,
            outcomes_expected: s.outcomes_expected,
            counts: CountsView {
                passed: c.passed,
                failed: c.failed,
                errors: c.errors,
                skipped: c.skipped,
                xfailed: c.xfailed,
                xpassed: c.xpassed,
            },
            exitstatus: s.summary.as_ref().map(|x| x.exitstatus),
            duration: s.summary.as_ref().map(|x| x.duration),
            pinned: s.pinned,
        }
    }
}

impl SessionView {
    /// The first eight hex digits of the id, as the pages print it; any
    /// unique start of an id of at least that length names the session.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    /// One line: id, result, counts.
    pub fn line(&self) -> String {
        let c = &self.counts;
        format!(
            "{} {} ({}, {}){}: {}, {} passed, {} failed, {}, {} skipped",
            self.id,
            self.result,
            self.status,
            self.source,
            self.project
                .as_deref()
                .map(|p| format!(" project {p}"))
                .unwrap_or_default(),
            super::count(self.outcomes_stored, "outcome", "outcomes"),
            c.passed,
            c.failed,
            super::count(c.errors, "error", "errors"),
            c.skipped
        )
    }
}

/// The machine and project a session ran on (empty fields left out of the text).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EnvironmentView {
    /// Operating system.
    pub os: String,
    /// Python version.
    pub python_version: String,
    /// Python implementation.
    pub python_implementation: String,
    /// pytest version.
    pub pytest_version: String,
    /// Active plugins.
    pub plugins: Vec<String>,
    /// Host name.
    pub hostname: String,
    /// pytest rootdir.
    pub rootdir: String,
    /// pytest's invocation arguments.
    pub invocation_args: Vec<String>,
    /// Whether the work tree was dirty, when known.
    pub git_dirty: Option<bool>,
    /// CI provider, when detected.
    pub ci_provider: String,
    /// xdist workers, 0 without xdist.
    pub xdist_workers: u32,
}

impl From<&Environment> for EnvironmentView {
    fn from(e: &Environment) -> Self {
        EnvironmentView {
            os: e.os.clone(),
            python_version: e.python_version.clone(),
            python_implementation: e.python_implementation.clone(),
            pytest_version: e.pytest_version.clone(),
            plugins: e.plugins.clone(),
            hostname: e.hostname.clone(),
            rootdir: e.rootdir.clone(),
            invocation_args: e.invocation_args.clone(),
            git_dirty: e.git_dirty,
            ci_provider: e.ci_provider.clone(),
            xdist_workers: e.xdist_workers,
        }
    }
}

/// A failure in brief: which test and its one-line message.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailureBrief {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest that failed, when it was one.
    pub subtest: Option<String>,
    /// failed or error.
    pub outcome: String,
    /// One-line crash message.
    pub message: String,
    /// The test was quarantined when it ran: its failure did not fail the run.
    pub quarantined: bool,
    /// The test is known to be flaky in this project: it passed and failed
    /// on the same code in recent sessions (see `find_flaky_tests`).
    pub known_flaky: bool,
}

/// Answer of `get_session`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionDetailView {
    /// The session.
    pub session: SessionView,
    /// Where it ran.
    pub environment: EnvironmentView,
    /// The first few failures; `get_failures` has their tracebacks.
    pub first_failures: Vec<FailureBrief>,
    /// The quarantine entries that apply to its project now, each with
    /// `release_suggested` when its tests passed their last 10 runs.
    pub quarantine: Vec<QuarantineStatusView>,
}

/// Failures a session's detail lists.
const FIRST_FAILURES: usize = 5;

/// `get_session`'s answer; the session resources' too.
pub async fn session_detail(
    store: &Store,
    scope: &Scope,
    session: Option<&str>,
) -> Result<SessionDetailView> {
    let session = scope.session(session, "session")?;
    let filter = OutcomeFilter {
        outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
        nodeid_contains: None,
    };
    let (s, p) = store
        .list_outcomes(session, filter, FIRST_FAILURES, None)
        .await
        .map_err(|e| scope.explain(e.named("session")))?;
    let project = scope.project_of(&s);
    let tests = p.items.iter().map(|o| o.nodeid.clone()).collect();
    let (quarantine, flaky) = tokio::try_join!(
        store.quarantine_status(&project, Timestamp::now()),
        store.known_flaky(FLAKY_WINDOW, &project, tests),
    )?;
    Ok(SessionDetailView {
        quarantine: quarantine.iter().map(QuarantineStatusView::from).collect(),
        session: (&s).into(),
        environment: (&s.environment).into(),
        first_failures: p
            .items
            .iter()
            .map(|o| FailureBrief {
                nodeid: o.nodeid.clone(),
                subtest: non_empty(&o.subtest),
                outcome: o.outcome.to_string(),
                message: o.message.chars().take(300).collect(),
                quarantined: o.quarantined,
                known_flaky: flaky.contains_key(&o.nodeid),
            })
            .collect(),
    })
}

impl SessionDetailView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = self.session.line();
        let e = &self.environment;
        if !e.python_version.is_empty() || !e.os.is_empty() {
            let _ = write!(out, "\npython {} on {}", e.python_version, e.os);
        }
        for f in &self.first_failures {
            let _ = write!(
                out,
                "\n{}{} {}: {}",
                f.outcome.to_uppercase(),
                labels(f.quarantined, f.known_flaky),
                super::display_name(&f.nodeid, f.subtest.as_deref().unwrap_or_default()),
                f.message
            );
        }
        quarantine_text(&mut out, &self.quarantine);
        out
    }
}

/// ` (quarantined)`, ` (known flaky)`, both, or nothing: what a failure's
/// line says of the test's standing.
pub fn labels(quarantined: bool, known_flaky: bool) -> &'static str {
    match (quarantined, known_flaky) {
        (true, true) => " (quarantined, known flaky)",
        (true, false) => " (quarantined)",
        (false, true) => " (known flaky)",
        (false, false) => "",
    }
}

/// What `list_sessions` is asked.
#[derive(Debug, Clone, Default)]
pub struct SessionsQuery {
    /// Sessions per page (default 20, at most 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only sessions with this status.
    pub status: Option<SessionStatus>,
}

/// Answer of `list_sessions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionListView {
    /// The project listed.
    pub project: String,
    /// Sessions, newest first.
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `list_sessions`' answer: the project's sessions, newest first.
pub async fn list_sessions(
    store: &Store,
    scope: &Scope,
    query: &SessionsQuery,
) -> Result<SessionListView> {
    let filter = SessionFilter {
        statuses: query.status.into_iter().collect(),
        project: Some(scope.project.clone()),
    };
    let page = store
        .list_sessions(
            filter,
            super::limit(query.limit, 20, 100),
            query.cursor.clone().filter(|c| !c.is_empty()),
        )
        .await
        .map_err(|e| match e {
            Error::InvalidArgument { message, .. } => Error::InvalidArgument {
                field: "cursor".into(),
                message,
            },
            other => other,
        })?;
    Ok(SessionListView {
        project: scope.project.name.clone(),
        sessions: page.items.iter().map(SessionView::from).collect(),
        next_cursor: page.next,
    })
}

impl SessionListView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = if self.sessions.is_empty() {
            format!("no sessions of project {} recorded", self.project)
        } else {
            self.sessions
                .iter()
                .map(SessionView::line)
                .collect::<Vec<_>>()
                .join("\n")
        };
        if let Some(c) = &self.next_cursor {
            let _ = write!(out, "\nmore: call again with cursor {c:?}");
        }
        out
    }
}
