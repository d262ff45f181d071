//! Tool arguments as agents send them. The doc comments on these structs and
//! fields become the JSON Schema in `tools/list`, so they are written for the
//! agent that reads them.
//!
//! Deserialization goes through [`Parameters`], which names the offending
//! field (`environment.os: invalid type ...`) instead of serde's bare message;
//! rules serde cannot express (non-negative counts, known session ids) are
//! checked where the arguments are converted to model types, and name the
//! field too.

use rmcp::ErrorData;
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::model::{
    Environment, Outcome, Summary, TestOutcome, parse_session_id, validate_duration,
};
use crate::views;

/// Tool arguments, deserialized with the path of the offending field in
/// every error (rmcp's own wrapper reports serde's message without it).
pub struct Parameters<T>(pub T);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let arguments = context.arguments.take().unwrap_or_default();
        serde_path_to_error::deserialize(serde_json::Value::Object(arguments))
            .map(Parameters)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { "arguments" } else { &path };
                // rmcp turns errors with this prefix into a tool result with
                // isError: true, as MCP 2025-11-25 asks for invalid arguments.
                ErrorData::invalid_params(
                    format!("failed to deserialize parameters: {field}: {}", e.inner()),
                    None,
                )
            })
    }
}

/// A test outcome, in pytest's terms.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeArg {
    /// The test passed.
    Passed,
    /// The test failed.
    Failed,
    /// The test was skipped.
    Skipped,
    /// Setup, teardown or collection raised.
    Error,
    /// An expected failure failed.
    Xfailed,
    /// An expected failure passed.
    Xpassed,
}

impl From<OutcomeArg> for TestOutcome {
    fn from(o: OutcomeArg) -> Self {
        match o {
            OutcomeArg::Passed => TestOutcome::Passed,
            OutcomeArg::Failed => TestOutcome::Failed,
            OutcomeArg::Skipped => TestOutcome::Skipped,
            OutcomeArg::Error => TestOutcome::Error,
            OutcomeArg::Xfailed => TestOutcome::Xfailed,
            OutcomeArg::Xpassed => TestOutcome::Xpassed,
        }
    }
}

/// The machine the tests run on.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentArg {
    /// Operating system, e.g. `Linux-6.1-x86_64`.
    pub os: String,
    /// Python version, e.g. `3.12.1`.
    pub python_version: String,
    /// Project name, used to group sessions.
    #[serde(default)]
    pub project: Option<String>,
    /// Git commit the tests ran on; lets flakiness be judged per commit.
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Git branch.
    #[serde(default)]
    pub git_branch: Option<String>,
    /// pytest version.
    #[serde(default)]
    pub pytest_version: Option<String>,
    /// The code the tests ran on: the git commit, plus `+` and a digest of
    /// uncommitted changes when there are any. Runs are compared for
    /// flakiness only on equal code states.
    #[serde(default)]
    pub code_state: Option<String>,
}

impl From<EnvironmentArg> for Environment {
    fn from(e: EnvironmentArg) -> Self {
        Environment {
            os: e.os,
            python_version: e.python_version,
            project: e.project.unwrap_or_default(),
            git_commit: e.git_commit.unwrap_or_default(),
            git_branch: e.git_branch.unwrap_or_default(),
            pytest_version: e.pytest_version.unwrap_or_default(),
            code_state: e.code_state.unwrap_or_default(),
            ..Environment::default()
        }
    }
}

/// Arguments of `record_session_start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStartArgs {
    /// Where the tests run.
    pub environment: EnvironmentArg,
    /// Optional UUID for the new session; repeating a start with the same id
    /// and environment is a no-op. A new one is chosen when absent.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Arguments of `record_test_outcome`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestOutcomeArgs {
    /// pytest node id, e.g. `tests/test_api.py::test_login[admin]`.
    pub nodeid: String,
    /// The outcome.
    pub outcome: OutcomeArg,
    /// Duration in seconds (finite, 0 or more).
    pub duration: f64,
    /// Failure text: the first line is kept as the message, the whole as the traceback.
    #[serde(default)]
    pub error: Option<String>,
    /// Session to append to; by default the latest running session this
    /// caller's grant (its token, its MCP session, the stdio process, or
    /// tokenless stateless HTTP together) started with `record_session_start`.
    #[serde(default)]
    pub session_id: Option<String>,
}

impl TestOutcomeArgs {
    /// The model outcome (seq is assigned by the store).
    pub fn to_outcome(&self) -> Result<Outcome, Error> {
        crate::model::validate_nodeid(&self.nodeid, "nodeid")?;
        validate_duration(self.duration, "duration")?;
        let mut o = Outcome::new(1, self.nodeid.clone(), self.outcome.into());
        o.duration = self.duration;
        if let Some(error) = self.error.as_deref().filter(|e| !e.is_empty()) {
            o.message = error
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_string();
            o.longrepr = error.to_string();
        }
        o.file = self
            .nodeid
            .split("::")
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(o)
    }
}

/// pytest's end-of-run counts.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SummaryArg {
    /// Number of tests run.
    pub total_tests: i64,
    /// Tests passed.
    pub passed: i64,
    /// Tests failed.
    pub failed: i64,
    /// Tests skipped.
    pub skipped: i64,
    /// pytest's exit status (0 all passed, 1 some failed, 2 interrupted, ...).
    pub exitstatus: i32,
    /// Tests that errored in setup or teardown.
    #[serde(default)]
    pub errors: Option<i64>,
    /// Expected failures that failed.
    #[serde(default)]
    pub xfailed: Option<i64>,
    /// Expected failures that passed.
    #[serde(default)]
    pub xpassed: Option<i64>,
    /// Duration of the run in seconds.
    #[serde(default)]
    pub duration: Option<f64>,
}

impl TryFrom<&SummaryArg> for Summary {
    type Error = Error;

    fn try_from(s: &SummaryArg) -> Result<Self, Error> {
        let count = |value: i64, name: &str| {
            u64::try_from(value).map_err(|_| {
                Error::invalid(
                    format!("summary.{name}"),
                    format!("must not be negative, got {value}"),
                )
            })
        };
        let summary = Summary {
            total_tests: count(s.total_tests, "total_tests")?,
            passed: count(s.passed, "passed")?,
            failed: count(s.failed, "failed")?,
            skipped: count(s.skipped, "skipped")?,
            errors: count(s.errors.unwrap_or(0), "errors")?,
            xfailed: count(s.xfailed.unwrap_or(0), "xfailed")?,
            xpassed: count(s.xpassed.unwrap_or(0), "xpassed")?,
            exitstatus: s.exitstatus,
            duration: s.duration.unwrap_or(0.0),
        };
        // The rules every write path shares (gRPC, import) live in one place.
        summary.validate()?;
        Ok(summary)
    }
}

/// Arguments of `record_session_finish`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionFinishArgs {
    /// pytest's summary of the run.
    pub summary: SummaryArg,
    /// Session to finish; by default the latest running session this caller's
    /// grant (its token, its MCP session, the stdio process, or tokenless
    /// stateless HTTP together) started with `record_session_start`.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// A session status.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusArg {
    /// Started, not finished.
    Running,
    /// Finished with every outcome stored.
    Finished,
    /// pytest was interrupted.
    Interrupted,
    /// Finished with outcomes missing.
    Incomplete,
}

impl From<StatusArg> for crate::model::SessionStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Running => Self::Running,
            StatusArg::Finished => Self::Finished,
            StatusArg::Interrupted => Self::Interrupted,
            StatusArg::Incomplete => Self::Incomplete,
        }
    }
}

/// Arguments of `list_sessions`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSessionsArgs {
    /// Sessions per page, newest first (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Only sessions with this status.
    #[serde(default)]
    pub status: Option<StatusArg>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Names one session.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// A session id (or its first 8+ hex digits), or `latest` (the default): the most recently started session of the project.
    #[serde(default)]
    pub session: Option<String>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `get_failures`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailuresArgs {
    /// A session id (or its first 8+ hex digits), or `latest` (the default) of the project.
    #[serde(default)]
    pub session: Option<String>,
    /// Failures per page (default 10, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Only failures whose nodeid contains this text.
    #[serde(default)]
    pub nodeid_contains: Option<String>,
    /// Bytes of each traceback to return, keeping its end where the error is
    /// (default 4000, at most 16000).
    #[serde(default)]
    pub traceback_bytes: Option<u32>,
    /// `cluster`: the failures ordered by cause, the largest cause first, each
    /// with its `cause` (see `get_failure_clusters`); by default, in the order
    /// they happened.
    #[serde(default)]
    pub group_by: Option<GroupBy>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// How `get_failures` orders its failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By cause, the largest first.
    Cluster,
}

/// Arguments of `get_failure_clusters`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClustersArgs {
    /// A session id (or its first 8+ hex digits), or `latest` (the default) of the project.
    #[serde(default)]
    pub session: Option<String>,
    /// Clusters to return, largest first (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Nodeids named per cluster (default 10, at most 100); the count says how many in all.
    #[serde(default)]
    pub tests_per_cluster: Option<u32>,
    /// Bytes of each cluster's representative traceback, keeping its end
    /// (default 2000, at most 16000).
    #[serde(default)]
    pub traceback_bytes: Option<u32>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `duration_regressions`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegressionArgs {
    /// A session id (or its first 8+ hex digits), or `latest` (the default) of the project.
    #[serde(default)]
    pub session: Option<String>,
    /// Earlier sessions of the same project (and branch, when known) whose
    /// passing durations make each test's median (default 10, at most 100).
    #[serde(default)]
    pub window: Option<u32>,
    /// Slower means more than this many times the median (default 3).
    #[serde(default)]
    pub ratio: Option<f64>,
    /// ...and more than this many seconds over it (default 0.25), so that
    /// millisecond tests do not flap.
    #[serde(default)]
    pub floor_seconds: Option<f64>,
    /// Earlier passing runs a test needs before it is judged (default 3).
    #[serde(default)]
    pub min_runs: Option<u32>,
    /// Tests to return, the largest excess first (default 20, at most 200).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `get_test_history`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryArgs {
    /// pytest node id of the test.
    pub nodeid: String,
    /// Entries per page, newest session first (default 20, at most 200).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// How many of the newest pass/fail outcomes the verdict is based on (default 50).
    #[serde(default)]
    pub window: Option<u32>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `find_flaky_tests`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlakyArgs {
    /// How many of the project's newest sessions to look at (default 30, at most 1000).
    #[serde(default)]
    pub window_sessions: Option<u32>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
    /// Most tests to return (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Arguments of `quarantine_test`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineArgs {
    /// The test's pytest node id, or an fnmatch pattern of node ids
    /// (`tests/test_db.py::*`; `*`, `?`, `[seq]`, `[!seq]`, case-sensitive).
    pub nodeid: String,
    /// Why it is quarantined (shown to everyone whose run it affects).
    pub reason: String,
    /// How many days the quarantine lasts (default 14, at most 90); it stops
    /// applying by itself then.
    #[serde(default)]
    pub days: Option<u32>,
    /// Only for this project (the rootdir's name); by default every project.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `release_test`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseArgs {
    /// The node id or pattern exactly as it was quarantined.
    pub nodeid: String,
    /// The project it was quarantined for; by default the entry for every project.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `list_quarantine`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineListArgs {
    /// The project whose entries (its own and those for every project)
    /// apply, matched case-insensitively; by default the server's project.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `compare_sessions`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareArgs {
    /// The newer session: an id (or its first 8+ hex digits), or `latest` (the default) of the project.
    #[serde(default)]
    pub head: Option<String>,
    /// The older session: an id (or its first 8+ hex digits); by default
    /// the session of the same project (and branch, when head has one)
    /// started just before `head`.
    #[serde(default)]
    pub base: Option<String>,
    /// A passing test counts as slower when it takes at least this many times
    /// as long (default 1.5)...
    #[serde(default)]
    pub min_ratio: Option<f64>,
    /// ...and at least this many seconds longer (default 0.25, so that
    /// millisecond tests that once took a tenth of a second are not listed).
    #[serde(default)]
    pub min_seconds: Option<f64>,
    /// Most entries per list (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `slowest_tests`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowestArgs {
    /// A session id (or its first 8+ hex digits), or `latest` (the default) of the project.
    #[serde(default)]
    pub session: Option<String>,
    /// How many tests (default 10, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `affected_tests`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AffectedArgs {
    /// The change as the text of a unified diff (`git diff` output),
    /// compared with the line spans each test's newest run recorded.
    #[serde(default)]
    pub diff: Option<String>,
    /// The change as the paths of the changed files, relative to the
    /// project's rootdir: every function in them counts as changed.
    #[serde(default)]
    pub files: Option<Vec<String>>,
    /// The change as a git revision (`BASE`: the working tree against it) or
    /// range (`BASE..HEAD`), read with git in the project's checkout (when
    /// this server can see it). With no `diff`, `files` or `revisions`, the
    /// checkout's working tree is read (each test compared with the code it
    /// last ran).
    #[serde(default)]
    pub revisions: Option<String>,
    /// The node ids collected now (`pytest --collect-only -q`), when known:
    /// new ones are selected, recorded tests not among them are left out.
    #[serde(default)]
    pub collected: Option<Vec<String>>,
    /// Glob patterns of the files whose change selects every test (matched
    /// against the base name, or the whole path when they hold a `/`). By
    /// default conftest.py, pytest.ini, pyproject.toml, setup.cfg, setup.py,
    /// tox.ini, requirements*.txt, constraints*.txt, *.lock, Pipfile.
    #[serde(default)]
    pub watch: Option<Vec<String>>,
    /// The project (the rootdir's name, as `pytest --mcp` records it;
    /// matched case-insensitively). By default the server's project: the
    /// one it was started in (stdio), else the most recently active one.
    #[serde(default)]
    pub project: Option<String>,
}

impl AffectedArgs {
    /// The change these arguments describe: at most one of `diff`, `files`
    /// and `revisions`; none is the working tree.
    pub fn change(&self) -> Result<crate::views::ChangeSpec, Error> {
        use crate::store::affected::ChangeInput;
        use crate::views::ChangeSpec;
        let given = [
            self.diff.is_some(),
            self.files.is_some(),
            self.revisions.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Error::invalid(
                "diff",
                "give at most one of diff, files and revisions",
            ));
        }
        Ok(if let Some(d) = &self.diff {
            ChangeSpec::Given(ChangeInput::Diff(d.clone()))
        } else if let Some(f) = &self.files {
            ChangeSpec::Given(ChangeInput::Files(f.clone()))
        } else if let Some(r) = &self.revisions {
            ChangeSpec::Revisions(r.trim().to_string())
        } else {
            ChangeSpec::WorkingTree
        })
    }
}

/// Parses an optional session UUID, naming `field`.
pub fn session_id(text: Option<&str>, field: &str) -> Result<Option<uuid::Uuid>, Error> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| parse_session_id(t, field))
        .transpose()
}

/// Arguments of `list_projects`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectsArgs {}

impl From<&FailuresArgs> for views::FailuresQuery {
    fn from(a: &FailuresArgs) -> Self {
        views::FailuresQuery {
            session: a.session.clone(),
            limit: a.limit,
            cursor: a.cursor.clone(),
            nodeid_contains: a.nodeid_contains.clone(),
            traceback_bytes: a.traceback_bytes,
            by_cause: a.group_by == Some(GroupBy::Cluster),
            whole: false,
        }
    }
}

impl From<&ClustersArgs> for views::ClustersQuery {
    fn from(a: &ClustersArgs) -> Self {
        views::ClustersQuery {
            session: a.session.clone(),
            limit: a.limit,
            tests_per_cluster: a.tests_per_cluster,
            traceback_bytes: a.traceback_bytes,
            whole: false,
        }
    }
}

impl From<&RegressionArgs> for views::RegressionsQuery {
    fn from(a: &RegressionArgs) -> Self {
        views::RegressionsQuery {
            session: a.session.clone(),
            window: a.window,
            ratio: a.ratio,
            floor_seconds: a.floor_seconds,
            min_runs: a.min_runs,
            limit: a.limit,
        }
    }
}

impl From<&HistoryArgs> for views::HistoryQuery {
    fn from(a: &HistoryArgs) -> Self {
        views::HistoryQuery {
            nodeid: a.nodeid.clone(),
            limit: a.limit,
            cursor: a.cursor.clone(),
            window: a.window,
            whole: false,
        }
    }
}

impl From<&FlakyArgs> for views::FlakyQuery {
    fn from(a: &FlakyArgs) -> Self {
        views::FlakyQuery {
            window_sessions: a.window_sessions,
            limit: a.limit,
            whole: false,
        }
    }
}

impl From<&CompareArgs> for views::CompareQuery {
    fn from(a: &CompareArgs) -> Self {
        views::CompareQuery {
            head: a.head.clone(),
            base: a.base.clone(),
            min_ratio: a.min_ratio,
            min_seconds: a.min_seconds,
            limit: a.limit,
            whole: false,
        }
    }
}

impl From<&SlowestArgs> for views::SlowestQuery {
    fn from(a: &SlowestArgs) -> Self {
        views::SlowestQuery {
            session: a.session.clone(),
            limit: a.limit,
        }
    }
}

impl From<&ListSessionsArgs> for views::SessionsQuery {
    fn from(a: &ListSessionsArgs) -> Self {
        views::SessionsQuery {
            limit: a.limit,
            cursor: a.cursor.clone(),
            status: a.status.map(Into::into),
        }
    }
}
