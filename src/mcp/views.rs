//! What the tools answer: structured results (their JSON Schema is each
//! tool's output schema) converted from model types, a short text rendering
//! of each, and the size budget every answer is held to.
//!
//! Invariant: a view that dropped items to fit the budget says so
//! (`truncated: true`) and says how to get the rest (`next_cursor` or `note`).

use schemars::JsonSchema;
use serde::Serialize;
use std::fmt::Write as _;

use crate::model::{Environment, Outcome, QuarantineEntry, Session, truncate_marked};
use crate::store::quarantine::{QuarantineStatus, RELEASE_AFTER};
use crate::store::{ComparedTest, Comparison, FlakyTest, HistoryEntry, Stability, Verdict};

/// Largest answer, in bytes of JSON, before lists are cut.
pub const BUDGET_BYTES: usize = 20 * 1024;

/// Bytes of captured output kept per stream in a failure.
const CAPTURE_EXCERPT_BYTES: usize = 1024;

/// Shortens `text` to `max` bytes, keeping the head and the tail.
fn excerpt(text: &str, max: usize) -> String {
    let mut t = text.to_string();
    truncate_marked(&mut t, max);
    t
}

/// A session in brief.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// running, finished, interrupted or incomplete.
    pub status: String,
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

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A nodeid with its subtest label, as pytest prints it: `t.py::test_x [m] (i=1)`.
fn display_name(nodeid: &str, subtest: &str) -> String {
    if subtest.is_empty() {
        nodeid.to_string()
    } else {
        format!("{nodeid} {subtest}")
    }
}

/// One property a test recorded (`record_property`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PropertyView {
    /// Its name.
    pub name: String,
    /// Its value, as text.
    pub value: String,
}

fn properties(o: &Outcome) -> Vec<PropertyView> {
    o.user_properties
        .iter()
        .map(|(name, value)| PropertyView {
            name: name.clone(),
            value: excerpt(value, 500),
        })
        .collect()
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        let c = s.counts;
        SessionView {
            id: s.id.to_string(),
            status: s.status.to_string(),
            source: s.source.to_string(),
            started_at: s.started_at.to_rfc3339(),
            finished_at: s.finished_at.map(|t| t.to_rfc3339()),
            project: non_empty(&s.environment.project),
            git_branch: non_empty(&s.environment.git_branch),
            git_commit: non_empty(&s.environment.git_commit),
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
    /// One line: id, status, counts.
    pub fn line(&self) -> String {
        let c = &self.counts;
        format!(
            "{} {} ({}){}: {} outcomes, {} passed, {} failed, {} errors, {} skipped",
            self.id,
            self.status,
            self.source,
            self.project
                .as_deref()
                .map(|p| format!(" project {p}"))
                .unwrap_or_default(),
            self.outcomes_stored,
            c.passed,
            c.failed,
            c.errors,
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
                if f.quarantined { " (quarantined)" } else { "" },
                display_name(&f.nodeid, f.subtest.as_deref().unwrap_or_default()),
                f.message
            );
        }
        quarantine_text(&mut out, &self.quarantine);
        out
    }
}

/// Answer of `list_sessions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionListView {
    /// Sessions, newest first.
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl SessionListView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = if self.sessions.is_empty() {
            "no sessions recorded".to_string()
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

/// One failing test with what is needed to understand it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailureView {
    /// Position in the session.
    pub seq: u64,
    /// pytest node id (of the test itself for a subtest, so pytest can select it).
    pub nodeid: String,
    /// The subtest that failed, e.g. `[even] (i=1)`, when it was one.
    pub subtest: Option<String>,
    /// failed or error.
    pub outcome: String,
    /// The phase that failed (setup, call, teardown), when known.
    pub phase: Option<String>,
    /// `file:line` of the test, or the file alone.
    pub location: String,
    /// One-line crash message.
    pub message: String,
    /// The traceback; its end (where the error is) is kept when cut.
    pub traceback: String,
    /// Whether `traceback` was cut to fit.
    pub traceback_truncated: bool,
    /// Excerpt of captured stdout.
    pub stdout: String,
    /// Excerpt of captured stderr.
    pub stderr: String,
    /// Excerpt of captured log.
    pub log: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Attempt number (reruns).
    pub attempt: u32,
    /// Properties the test recorded (`record_property`).
    pub user_properties: Vec<PropertyView>,
    /// Its cause in words, when the failures are grouped by cause
    /// (`group_by: "cluster"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The test was quarantined when it ran: this failure did not fail the run.
    pub quarantined: bool,
}

impl FailureView {
    /// Converts an outcome, keeping at most `traceback_bytes` of its traceback.
    pub fn new(o: &Outcome, traceback_bytes: usize) -> Self {
        let file = if o.file.is_empty() {
            o.nodeid.split("::").next().unwrap_or_default().to_string()
        } else {
            o.file.clone()
        };
        let location = match o.line {
            Some(l) => format!("{file}:{l}"),
            None => file,
        };
        FailureView {
            seq: o.seq,
            nodeid: o.nodeid.clone(),
            subtest: non_empty(&o.subtest),
            outcome: o.outcome.to_string(),
            phase: o.phase.map(|p| p.to_string()),
            location,
            message: o.message.clone(),
            traceback: tail_excerpt(&o.longrepr, traceback_bytes),
            traceback_truncated: o.longrepr.len() > traceback_bytes,
            stdout: excerpt(&o.stdout, CAPTURE_EXCERPT_BYTES),
            stderr: excerpt(&o.stderr, CAPTURE_EXCERPT_BYTES),
            log: excerpt(&o.log, CAPTURE_EXCERPT_BYTES),
            duration: o.duration,
            attempt: o.attempt,
            user_properties: properties(o),
            cause: None,
            quarantined: o.quarantined,
        }
    }
}

/// Keeps the last `max` bytes of a traceback (the error line is at its end)
/// after a marker saying how much was cut.
fn tail_excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[pytest-mcp: first {start} bytes cut; ask for more with traceback_bytes]\n{}",
        &text[start..]
    )
}

/// Quotes a nodeid for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A `pytest` command line that reruns exactly these nodeids.
pub fn rerun_command<'a>(nodeids: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut cmd = "pytest".to_string();
    for n in nodeids {
        if seen.insert(n) {
            cmd.push(' ');
            cmd.push_str(&shell_quote(n));
        }
    }
    cmd
}

/// Answer of `get_failures`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailuresView {
    /// The session.
    pub session: SessionView,
    /// Failures and errors on this page, in the order they happened.
    pub failures: Vec<FailureView>,
    /// Failures and errors stored in the session in all.
    pub total_failures: u64,
    /// A `pytest` command that reruns exactly the failures on this page.
    pub rerun_command: String,
    /// Whether failures were left off this page to stay within the size budget.
    pub truncated: bool,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl FailuresView {
    /// Text rendering: each failure with the end of its traceback.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n{} failures in all, {} here",
            self.session.line(),
            self.total_failures,
            self.failures.len()
        );
        for f in &self.failures {
            let _ = write!(
                out,
                "\n\n{}{} {} ({}, {})\n  {}",
                f.outcome.to_uppercase(),
                if f.quarantined { " (quarantined)" } else { "" },
                display_name(&f.nodeid, f.subtest.as_deref().unwrap_or_default()),
                f.location,
                f.phase.as_deref().unwrap_or("?"),
                f.message
            );
            for p in &f.user_properties {
                let _ = write!(out, "\n  property {} = {}", p.name, p.value);
            }
            let lines: Vec<&str> = f.traceback.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                let _ = write!(out, "\n  | {l}");
            }
        }
        if !self.failures.is_empty() {
            let _ = write!(out, "\n\nrerun: {}", self.rerun_command);
        }
        if let Some(c) = &self.next_cursor {
            let _ = write!(out, "\nmore: call get_failures again with cursor {c:?}");
        }
        budget_text(out)
    }
}

/// Failures that share one cause (a fingerprint: exception type, innermost
/// project frame, normalised message).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClusterView {
    /// The fingerprint's stable key (16 hex digits).
    pub fingerprint: String,
    /// The cause in words: `Type in file::function: message`.
    pub cause: String,
    /// The exception type, when known.
    pub exception: String,
    /// The innermost frame in the project's code, as `file::function`.
    pub frame: String,
    /// The message with what varies between runs replaced by placeholders.
    pub message: String,
    /// Failing outcomes in the cluster.
    pub failures: u64,
    /// The tests affected, in the order they failed (at most `tests_per_cluster`).
    pub tests: Vec<String>,
    /// Tests affected in all.
    pub tests_total: u64,
    /// The first failure of the cluster, with its traceback.
    pub representative: FailureView,
    /// A `pytest` command rerunning the tests named.
    pub rerun_command: String,
    /// Whether no other session of the project failed of this cause.
    pub new: bool,
    /// When it was first seen in another session of the project (RFC 3339).
    pub first_seen: Option<String>,
    /// Other sessions of the project that failed of it.
    pub seen_in_sessions: u64,
    /// When it was last seen in another session of the project (RFC 3339).
    pub last_seen: Option<String>,
    /// Failing outcomes of it in those other sessions.
    pub failures_in_other_sessions: u64,
    /// For a known cause: how many tests it has broken in the project's
    /// recorded sessions (0 for a new one).
    pub tests_ever: u64,
    /// The first of those tests by nodeid (at most 10).
    pub tests_ever_named: Vec<String>,
}

/// Answer of `get_failure_clusters`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClustersView {
    /// The session.
    pub session: SessionView,
    /// Failures and errors looked at.
    pub failures: u64,
    /// Clusters found in all.
    pub clusters_total: u64,
    /// Largest first.
    pub clusters: Vec<ClusterView>,
    /// Whether clusters were left off (raise `limit`) or cut to the size budget.
    pub truncated: bool,
}

impl ClustersView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n{} failures in {} clusters",
            self.session.line(),
            self.failures,
            self.clusters_total
        );
        for c in &self.clusters {
            let seen = match &c.first_seen {
                Some(first) if !c.new => {
                    format!(
                        "known since {first}, in {} other sessions ({} failures, {} tests), last {}",
                        c.seen_in_sessions,
                        c.failures_in_other_sessions,
                        c.tests_ever,
                        c.last_seen.as_deref().unwrap_or(first)
                    )
                }
                _ => "NEW".to_string(),
            };
            let _ = write!(
                out,
                "\n\n{} failures, {} tests ({seen}): {}\n  {}",
                c.failures,
                c.tests_total,
                c.cause,
                c.tests.join("\n  ")
            );
            if c.tests_total > c.tests.len() as u64 {
                let _ = write!(
                    out,
                    "\n  … and {} more",
                    c.tests_total - c.tests.len() as u64
                );
            }
        }
        budget_text(out)
    }
}

/// A test that ran much slower than usual.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RegressionView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// Seconds in this session.
    pub duration: f64,
    /// Median seconds of its passing runs in the earlier sessions.
    pub median: f64,
    /// `duration / median`.
    pub ratio: f64,
    /// Earlier passing runs the median is of.
    pub runs: u64,
}

impl From<&crate::store::Regression> for RegressionView {
    fn from(r: &crate::store::Regression) -> Self {
        RegressionView {
            nodeid: r.nodeid.clone(),
            subtest: non_empty(&r.subtest),
            duration: r.duration,
            median: r.median,
            // A median of 0 s (a test too fast to time) keeps the ratio finite.
            ratio: r.duration / r.median.max(1e-6),
            runs: r.runs as u64,
        }
    }
}

/// Answer of `duration_regressions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RegressionsView {
    /// The session.
    pub session: SessionView,
    /// Earlier sessions compared with (same project, same branch when known).
    pub baseline_sessions: u64,
    /// The rule: more than `ratio` times the median and `floor_seconds` over it.
    pub ratio: f64,
    /// See `ratio`.
    pub floor_seconds: f64,
    /// Slower tests found in all.
    pub total: u64,
    /// The largest excess over the median first.
    pub slower: Vec<RegressionView>,
    /// Whether tests were left off (raise `limit`) or cut to the size budget.
    pub truncated: bool,
}

impl RegressionsView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n{} tests slower than {}x their median over {} earlier sessions (and {:.2}s over it)",
            self.session.line(),
            self.total,
            self.ratio,
            self.baseline_sessions,
            self.floor_seconds
        );
        for r in &self.slower {
            let _ = write!(
                out,
                "\n{:>9.3}s vs {:.3}s median ({:.1}x, {} runs) {}",
                r.duration,
                r.median,
                r.ratio,
                r.runs,
                display_name(&r.nodeid, r.subtest.as_deref().unwrap_or_default())
            );
        }
        budget_text(out)
    }
}

/// Pass/fail statistics behind a verdict.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StabilityView {
    /// passing, failing, regressed, fixed, flaky or unknown.
    pub verdict: String,
    /// Pass or fail outcomes counted (newest first, up to the window).
    pub runs: u64,
    /// Passed.
    pub passed: u64,
    /// Failed or errored.
    pub failed: u64,
    /// Changes between pass and fail, oldest to newest.
    pub flips: u64,
    /// Commits on which it both passed and failed.
    pub mixed_commits: u64,
    /// Sessions in which it both passed and failed (reruns).
    pub mixed_sessions: u64,
}

impl StabilityView {
    /// Converts statistics and their verdict.
    pub fn new(s: &Stability, verdict: Verdict) -> Self {
        StabilityView {
            verdict: verdict.as_str().to_string(),
            runs: s.runs,
            passed: s.passed,
            failed: s.failed,
            flips: s.flips,
            mixed_commits: s.mixed_commits,
            mixed_sessions: s.mixed_sessions,
        }
    }
}

/// One run of a test.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HistoryEntryView {
    /// The session.
    pub session_id: String,
    /// The subtest this entry is for, when it is one (else the test itself).
    pub subtest: Option<String>,
    /// Session start, RFC 3339.
    pub started_at: String,
    /// Git commit, when known.
    pub git_commit: Option<String>,
    /// Git branch, when known.
    pub git_branch: Option<String>,
    /// The outcome.
    pub outcome: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Attempt number (reruns).
    pub attempt: u32,
    /// One-line crash message, for failures.
    pub message: String,
}

impl From<&HistoryEntry> for HistoryEntryView {
    fn from(e: &HistoryEntry) -> Self {
        HistoryEntryView {
            session_id: e.session.id.to_string(),
            subtest: non_empty(&e.outcome.subtest),
            started_at: e.session.started_at.to_rfc3339(),
            git_commit: non_empty(&e.session.environment.git_commit),
            git_branch: non_empty(&e.session.environment.git_branch),
            outcome: e.outcome.outcome.to_string(),
            duration: e.outcome.duration,
            attempt: e.outcome.attempt,
            message: excerpt(&e.outcome.message, 500),
        }
    }
}

/// Answer of `get_test_history`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HistoryView {
    /// The test.
    pub nodeid: String,
    /// Whether it is flaky, and why.
    pub stability: StabilityView,
    /// Its runs, newest session first.
    pub entries: Vec<HistoryEntryView>,
    /// Whether entries were left off to stay within the size budget.
    pub truncated: bool,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl HistoryView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let s = &self.stability;
        let mut out = format!(
            "{}: {} ({} runs: {} passed, {} failed, {} flips, {} mixed commits, {} mixed sessions)",
            self.nodeid,
            s.verdict,
            s.runs,
            s.passed,
            s.failed,
            s.flips,
            s.mixed_commits,
            s.mixed_sessions
        );
        for e in &self.entries {
            let _ = write!(
                out,
                "\n{} {} {}{} {:.3}s{}",
                e.started_at,
                e.session_id,
                e.subtest
                    .as_deref()
                    .map(|l| format!("subtest {l} "))
                    .unwrap_or_default(),
                e.outcome,
                e.duration,
                if e.message.is_empty() {
                    String::new()
                } else {
                    format!(" {}", e.message)
                }
            );
        }
        if let Some(c) = &self.next_cursor {
            let _ = write!(out, "\nmore: call again with cursor {c:?}");
        }
        budget_text(out)
    }
}

/// A test judged flaky.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlakyTestView {
    /// pytest node id.
    pub nodeid: String,
    /// The statistics that make it flaky.
    pub stability: StabilityView,
    /// Its newest failure message.
    pub last_message: String,
    /// A quarantine entry applies to it now (see `quarantine`).
    pub quarantined: bool,
}

impl From<&FlakyTest> for FlakyTestView {
    fn from(f: &FlakyTest) -> Self {
        FlakyTestView {
            nodeid: f.nodeid.clone(),
            stability: StabilityView::new(&f.stability, f.verdict),
            last_message: excerpt(&f.last_message, 500),
            quarantined: false,
        }
    }
}

/// Answer of `find_flaky_tests`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlakyView {
    /// Sessions looked at.
    pub window_sessions: u64,
    /// Flaky tests found in all.
    pub total: u64,
    /// The flakiest first: same-commit evidence, then most flips.
    pub tests: Vec<FlakyTestView>,
    /// Whether tests were left off (raise `limit` to see more).
    pub truncated: bool,
    /// The quarantine entries that apply now, each with `release_suggested`
    /// when its tests passed their last 10 runs.
    pub quarantine: Vec<QuarantineStatusView>,
}

impl FlakyView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} flaky tests in the newest {} sessions",
            self.total, self.window_sessions
        );
        for t in &self.tests {
            let s = &t.stability;
            let _ = write!(
                out,
                "\n{}: {} passed, {} failed, {} flips, {} mixed commits, {} mixed sessions; last: {}",
                t.nodeid,
                s.passed,
                s.failed,
                s.flips,
                s.mixed_commits,
                s.mixed_sessions,
                t.last_message
            );
        }
        if self.truncated {
            out.push_str("\nmore: raise limit");
        }
        quarantine_text(&mut out, &self.quarantine);
        budget_text(out)
    }
}

/// A quarantine entry.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantineEntryView {
    /// A node id, or an fnmatch pattern of node ids.
    pub pattern: String,
    /// The project it is for; absent for every project.
    pub project: Option<String>,
    /// Why the test is quarantined.
    pub reason: String,
    /// Who quarantined it.
    pub added_by: String,
    /// When it was added or last renewed (RFC 3339).
    pub added_at: String,
    /// When it stops applying (RFC 3339).
    pub expires_at: String,
}

impl From<&QuarantineEntry> for QuarantineEntryView {
    fn from(e: &QuarantineEntry) -> Self {
        QuarantineEntryView {
            pattern: e.pattern.clone(),
            project: (!e.project.is_empty()).then(|| e.project.clone()),
            reason: e.reason.clone(),
            added_by: e.added_by.clone(),
            added_at: e.added_at.to_rfc3339(),
            expires_at: e.expires_at.to_rfc3339(),
        }
    }
}

impl QuarantineEntryView {
    /// `PATTERN (project P) until TIME: REASON [by WHO]`.
    pub fn line(&self) -> String {
        let scope = match &self.project {
            Some(p) => format!(" (project {p})"),
            None => String::new(),
        };
        format!(
            "{}{scope} until {}: {} [by {}]",
            self.pattern,
            self.expires_at.get(..16).unwrap_or(&self.expires_at),
            self.reason,
            self.added_by
        )
    }
}

/// How one quarantined test did lately.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantinedTestView {
    /// pytest node id.
    pub nodeid: String,
    /// Its newest pass/fail runs looked at (at most 10).
    pub runs: u64,
    /// How many of the newest of them passed in a row.
    pub passed_in_a_row: u64,
}

/// A quarantine entry that applies now, its tests, and whether to release it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantineStatusView {
    /// The entry.
    pub entry: QuarantineEntryView,
    /// Its tests: its node id, or for a pattern the matching tests of the
    /// project's latest session (at most 50).
    pub tests: Vec<QuarantinedTestView>,
    /// Every one of its tests passed its last 10 runs: release it with `release_test`.
    pub release_suggested: bool,
}

impl From<&QuarantineStatus> for QuarantineStatusView {
    fn from(s: &QuarantineStatus) -> Self {
        QuarantineStatusView {
            entry: (&s.entry).into(),
            tests: s
                .tests
                .iter()
                .map(|t| QuarantinedTestView {
                    nodeid: t.nodeid.clone(),
                    runs: t.runs as u64,
                    passed_in_a_row: t.passed_in_a_row as u64,
                })
                .collect(),
            release_suggested: s.release_suggested,
        }
    }
}

impl QuarantineStatusView {
    /// One line: the entry, and the release suggestion or how its tests do.
    pub fn line(&self) -> String {
        let mut out = self.entry.line();
        if self.release_suggested {
            let _ = write!(
                out,
                "; release suggested: passed its last {RELEASE_AFTER} runs"
            );
        } else if let [t] = self.tests.as_slice() {
            let _ = write!(
                out,
                "; passed {} of its last {} runs in a row",
                t.passed_in_a_row, t.runs
            );
        } else if !self.tests.is_empty() {
            let _ = write!(out, "; {} tests", self.tests.len());
        }
        out
    }
}

/// Appends a "quarantined:" section (nothing when there are no entries).
fn quarantine_text(out: &mut String, entries: &[QuarantineStatusView]) {
    if entries.is_empty() {
        return;
    }
    let _ = write!(out, "\nquarantined ({}):", entries.len());
    for e in entries {
        let _ = write!(out, "\n  {}", e.line());
    }
}

/// Answer of `quarantine_test`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantinedView {
    /// The entry as stored.
    pub entry: QuarantineEntryView,
    /// It replaced an entry for the same pattern and project (a renewal).
    pub renewed: bool,
}

/// Answer of `release_test`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReleasedView {
    /// The entry that was removed.
    pub entry: QuarantineEntryView,
}

/// Answer of `list_quarantine`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuarantineListView {
    /// The entries that apply now: exact node ids first, then patterns.
    pub entries: Vec<QuarantineStatusView>,
}

impl QuarantineListView {
    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = match self.entries.len() {
            0 => "no test is quarantined".to_string(),
            n => format!("{n} quarantine entries"),
        };
        for e in &self.entries {
            let _ = write!(out, "\n{}", e.line());
        }
        budget_text(out)
    }
}

/// A test whose outcome changed between two sessions.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComparedTestView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// Final outcome in the base session, if it ran.
    pub base: Option<String>,
    /// Final outcome in the head session, if it ran.
    pub head: Option<String>,
    /// The relevant failure message.
    pub message: String,
}

impl From<&ComparedTest> for ComparedTestView {
    fn from(t: &ComparedTest) -> Self {
        ComparedTestView {
            nodeid: t.nodeid.clone(),
            subtest: non_empty(&t.subtest),
            base: t.base.map(|o| o.to_string()),
            head: t.head.map(|o| o.to_string()),
            message: excerpt(&t.message, 300),
        }
    }
}

/// A test that got slower.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowerView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// Seconds in base.
    pub base: f64,
    /// Seconds in head.
    pub head: f64,
}

/// A cause of failures, in brief.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CauseView {
    /// The fingerprint's stable key.
    pub fingerprint: String,
    /// The cause in words: `Type in file::function: message`.
    pub cause: String,
    /// Failing outcomes of it.
    pub failures: u64,
    /// Tests it broke, in all.
    pub tests_total: u64,
    /// The first few of them.
    pub tests: Vec<String>,
}

/// How many tests fall in each list of a comparison (before any cut).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComparisonCounts {
    /// New failures.
    pub new_failures: u64,
    /// Fixed.
    pub fixed: u64,
    /// Still failing.
    pub still_failing: u64,
    /// Added.
    pub added: u64,
    /// Removed.
    pub removed: u64,
    /// Slower.
    pub slower: u64,
    /// Slower in head than their median over earlier sessions.
    pub duration_regressions: u64,
}

/// Answer of `compare_sessions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComparisonView {
    /// The older session.
    pub base: SessionView,
    /// The newer session.
    pub head: SessionView,
    /// Totals of each list.
    pub counts: ComparisonCounts,
    /// Causes of head's failures that base did not fail of (see `get_failure_clusters`).
    pub new_causes: Vec<CauseView>,
    /// Causes of base's failures that head no longer fails of.
    pub fixed_causes: Vec<CauseView>,
    /// Failing in head, not failing (or absent) in base.
    pub new_failures: Vec<ComparedTestView>,
    /// Failing in base, passing in head.
    pub fixed: Vec<ComparedTestView>,
    /// Failing in both.
    pub still_failing: Vec<ComparedTestView>,
    /// Run in head only.
    pub added: Vec<String>,
    /// Run in base only.
    pub removed: Vec<String>,
    /// Passing in both and slower in head, largest growth first.
    pub slower: Vec<SlowerView>,
    /// Tests that ran in head much slower than their median over the
    /// project's earlier sessions (`duration_regressions` with its
    /// defaults), the largest excess first.
    pub duration_regressions: Vec<RegressionView>,
    /// Whether lists were cut (see `counts` for their totals).
    pub truncated: bool,
    /// How to see what was cut.
    pub note: Option<String>,
}

impl ComparisonView {
    /// Converts a comparison, keeping at most `limit` entries per list.
    pub fn new(c: &Comparison, limit: usize) -> Self {
        let counts = ComparisonCounts {
            new_failures: c.new_failures.len() as u64,
            fixed: c.fixed.len() as u64,
            still_failing: c.still_failing.len() as u64,
            added: c.added.len() as u64,
            removed: c.removed.len() as u64,
            slower: c.slower.len() as u64,
            duration_regressions: 0,
        };
        let tests = |v: &[ComparedTest]| v.iter().take(limit).map(Into::into).collect();
        let truncated = [
            c.new_failures.len(),
            c.fixed.len(),
            c.still_failing.len(),
            c.added.len(),
            c.removed.len(),
            c.slower.len(),
        ]
        .iter()
        .any(|n| *n > limit);
        ComparisonView {
            base: (&c.base).into(),
            head: (&c.head).into(),
            counts,
            new_failures: tests(&c.new_failures),
            fixed: tests(&c.fixed),
            still_failing: tests(&c.still_failing),
            added: c.added.iter().take(limit).cloned().collect(),
            removed: c.removed.iter().take(limit).cloned().collect(),
            slower: c
                .slower
                .iter()
                .take(limit)
                .map(|d| SlowerView {
                    nodeid: d.nodeid.clone(),
                    subtest: non_empty(&d.subtest),
                    base: d.base,
                    head: d.head,
                })
                .collect(),
            new_causes: Vec::new(),
            fixed_causes: Vec::new(),
            duration_regressions: Vec::new(),
            truncated,
            note: None,
        }
    }

    /// Adds head's duration regressions.
    pub fn with_regressions(mut self, r: &crate::store::Regressions, limit: usize) -> Self {
        self.counts.duration_regressions = r.slower.len() as u64;
        self.truncated |= r.slower.len() > limit;
        self.duration_regressions = r.slower.iter().take(limit).map(Into::into).collect();
        self
    }

    /// Adds the causes that are new in head and those fixed since base.
    pub fn with_causes(mut self, changed: &crate::store::ChangedCauses) -> Self {
        let view = |d: &crate::store::Described| CauseView {
            fingerprint: d.cluster.key.clone(),
            cause: d.fingerprint.describe(),
            failures: d.cluster.failures(),
            tests_total: d.cluster.tests.len() as u64,
            tests: d.cluster.tests.iter().take(5).cloned().collect(),
        };
        self.truncated |=
            changed.new_total > changed.new.len() || changed.fixed_total > changed.fixed.len();
        self.new_causes = changed.new.iter().map(view).collect();
        self.fixed_causes = changed.fixed.iter().map(view).collect();
        self
    }

    /// Text rendering.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut out = format!(
            "base {}\nhead {}\n{} new failures, {} fixed, {} still failing, {} added, {} removed, {} slower",
            self.base.line(),
            self.head.line(),
            c.new_failures,
            c.fixed,
            c.still_failing,
            c.added,
            c.removed,
            c.slower
        );
        for (label, list) in [
            ("NEW CAUSE", &self.new_causes),
            ("FIXED CAUSE", &self.fixed_causes),
        ] {
            for c in list {
                let _ = write!(out, "\n{label} ({} tests): {}", c.tests_total, c.cause);
            }
        }
        for (label, list) in [
            ("NEW", &self.new_failures),
            ("FIXED", &self.fixed),
            ("STILL", &self.still_failing),
        ] {
            for t in list {
                let _ = write!(
                    out,
                    "\n{label} {}: {}",
                    display_name(&t.nodeid, t.subtest.as_deref().unwrap_or_default()),
                    t.message
                );
            }
        }
        for d in &self.slower {
            let _ = write!(
                out,
                "\nSLOWER {}: {:.3}s -> {:.3}s",
                d.nodeid, d.base, d.head
            );
        }
        for r in &self.duration_regressions {
            let _ = write!(
                out,
                "\nREGRESSED {}: {:.3}s, {:.1}x its median {:.3}s over {} runs",
                display_name(&r.nodeid, r.subtest.as_deref().unwrap_or_default()),
                r.duration,
                r.ratio,
                r.median,
                r.runs
            );
        }
        if let Some(n) = &self.note {
            let _ = write!(out, "\n{n}");
        }
        budget_text(out)
    }
}

/// One slow test.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowTestView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// The outcome.
    pub outcome: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Position in the session.
    pub seq: u64,
}

/// Answer of `slowest_tests`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowestView {
    /// The session.
    pub session: SessionView,
    /// Slowest first.
    pub tests: Vec<SlowTestView>,
}

impl SlowestView {
    /// Converts a session and its slowest outcomes.
    pub fn new(s: &Session, outcomes: &[Outcome]) -> Self {
        SlowestView {
            session: s.into(),
            tests: outcomes
                .iter()
                .map(|o| SlowTestView {
                    nodeid: o.nodeid.clone(),
                    subtest: non_empty(&o.subtest),
                    outcome: o.outcome.to_string(),
                    duration: o.duration,
                    seq: o.seq,
                })
                .collect(),
        }
    }

    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = self.session.line();
        for t in &self.tests {
            let _ = write!(out, "\n{:>9.3}s {} {}", t.duration, t.outcome, t.nodeid);
        }
        budget_text(out)
    }
}

/// Answer of `record_session_start`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionStartedView {
    /// The new session's id; pass it as `session_id` to the other record tools.
    pub session_id: String,
    /// The session.
    pub session: SessionView,
}

/// Answer of `record_test_outcome`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutcomeRecordedView {
    /// The session it was appended to.
    pub session_id: String,
    /// The position it was stored at.
    pub seq: u64,
    /// The test.
    pub nodeid: String,
    /// The outcome.
    pub outcome: String,
}

/// Answer of `record_session_finish`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionFinishedView {
    /// The session finished.
    pub session_id: String,
    /// The session as stored.
    pub session: SessionView,
}

/// Cuts a text rendering to the budget.
fn budget_text(mut text: String) -> String {
    truncate_marked(&mut text, BUDGET_BYTES);
    text
}

/// Size of a value as JSON.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// Drops items from the end of `list(view)` until `view` fits the budget;
/// returns how many were dropped.
pub fn fit_budget<V: Serialize, T>(view: &mut V, list: impl Fn(&mut V) -> &mut Vec<T>) -> usize {
    let mut dropped = 0;
    loop {
        let size = json_len(view);
        let items = list(view);
        if size <= BUDGET_BYTES || items.len() <= 1 {
            return dropped;
        }
        // Drop in proportion to the excess, at least one.
        let per_item = size / items.len();
        let excess = size - BUDGET_BYTES;
        let n = (excess / per_item.max(1) + 1).min(items.len() - 1);
        items.truncate(items.len() - n);
        dropped += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerun_command_quotes_parametrized_ids_and_drops_duplicates() {
        let cmd = rerun_command(["tests/a.py::t[x y]", "tests/a.py::u", "tests/a.py::u"]);
        assert_eq!(cmd, "pytest 'tests/a.py::t[x y]' tests/a.py::u");
        assert_eq!(rerun_command(["t.py::it's"]), r"pytest 't.py::it'\''s'");
    }

    #[test]
    fn tracebacks_keep_their_end_when_cut() {
        let tb = format!("{}\nE   AssertionError: boom", "x".repeat(10_000));
        let cut = tail_excerpt(&tb, 100);
        assert!(cut.ends_with("E   AssertionError: boom"));
        assert!(cut.len() < 200);
    }

    #[test]
    fn fitting_the_budget_drops_items_and_keeps_at_least_one() {
        #[derive(Serialize)]
        struct V {
            items: Vec<String>,
        }
        let mut v = V {
            items: vec!["y".repeat(1000); 100],
        };
        let dropped = fit_budget(&mut v, |v| &mut v.items);
        assert!(dropped > 0);
        assert!(json_len(&v) <= BUDGET_BYTES);
        let mut one = V {
            items: vec!["z".repeat(BUDGET_BYTES * 2)],
        };
        assert_eq!(fit_budget(&mut one, |v| &mut v.items), 0);
    }
}
