//! Domain types of pytest-mcp: sessions, outcomes and their parts.
//!
//! This module knows nothing of protobuf, SQL or JSON-RPC; the transports and
//! the store convert to and from these types at their edges. Validation that
//! every transport shares (limits, allowed values) lives here, once.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

use crate::error::Error;

/// Longest nodeid accepted, in bytes; longer ones are rejected, not truncated,
/// because a truncated nodeid would name a different test.
pub const MAX_NODEID_BYTES: usize = 4096;

/// Default bound for each of traceback, message and captured output, in bytes.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 64 * 1024;

// The limits below hold on every path into and out of the store (gRPC, MCP,
// spool import; every page of a read), so that no path is the way around
// another's bound. Each is checked once, here or in the store, never per
// transport.

/// Largest environment accepted, in bytes of JSON: it is stored with the
/// session and repeated in every listing of sessions.
pub const MAX_ENVIRONMENT_BYTES: usize = 256 * 1024;

/// Most bytes of stored text one page of a read holds (outcomes, sessions,
/// history entries); past it the page ends early with a next-page token.
/// Below the 4 MiB a default gRPC client accepts, with room for one more
/// outcome, since a page always holds at least one item.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// Largest count a summary or `outcomes_sent` may carry (10^12): larger
/// ones cannot be real, and their sums would overflow.
pub const MAX_COUNT: u64 = 1_000_000_000_000;

/// How far in the future (by this server's clock) a start or finish time
/// may be: a session dated in year 9999 would stay `latest` forever and
/// never be pruned. A day covers any clock skew between hosts.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Longest prefix of a peer's input an error message quotes, in bytes.
pub const MAX_ECHO_BYTES: usize = 200;

/// Longest line of a spool file, in bytes; longer lines are refused before
/// they are parsed (and never held whole). The largest gRPC message the
/// server accepts, so one limit holds a batch on either path.
pub const MAX_SPOOL_LINE_BYTES: usize = 16 * 1024 * 1024;

/// At most [`MAX_ECHO_BYTES`] of `text`, quoted, saying how long it was when
/// cut: what an error shows of input it refuses.
pub fn echo(text: &str) -> String {
    if text.len() <= MAX_ECHO_BYTES {
        return format!("{text:?}");
    }
    let head = &text[..floor_char_boundary(text, MAX_ECHO_BYTES)];
    format!("{head:?}... ({} bytes)", text.len())
}

/// Refuses a time further in the future than [`MAX_FUTURE_SKEW`], naming `field`.
pub fn validate_time(t: Timestamp, field: &str) -> Result<(), Error> {
    let latest = Timestamp::now()
        .as_micros()
        .saturating_add(i64::try_from(MAX_FUTURE_SKEW.as_micros()).unwrap_or(i64::MAX));
    if t.as_micros() > latest {
        return Err(Error::invalid(
            field,
            format!(
                "{} is more than a day ahead of this server's clock",
                t.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// A point in time with microsecond precision, stored as microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// RFC 3339 text in UTC, e.g. `2026-11-24T09:14:38.123456Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| self.0.to_string()),
            Err(_) => self.0.to_string(),
        }
    }

    /// Parses RFC 3339 text.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1000)
            .ok()
            .map(Self)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        let abs = Duration::from_micros(t.0.unsigned_abs());
        if t.0 >= 0 {
            UNIX_EPOCH + abs
        } else {
            UNIX_EPOCH - abs
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse_rfc3339(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("not an RFC 3339 time: {}", echo(&text)))
        })
    }
}

/// Declares a string-valued enum with its wire names in one place.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The lower-case name used in SQL, JSON and the CLI.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown value {other:?}, expected one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named_enum! {
    /// Where a session was recorded from.
    Source {
        /// Streamed by the pytest plugin.
        Plugin => "plugin",
        /// Recorded by an agent through the MCP record tools.
        Mcp => "mcp",
        /// Replayed from a spool file.
        Import => "import",
    }
}

named_enum! {
    /// What kind of code a dependency unit is.
    UnitKind {
        /// A function or method, with what is written inside it.
        Function => "function",
        /// A class body without its methods' bodies.
        Class => "class",
        /// A module's top-level code without its functions' and classes' bodies.
        Module => "module",
        /// A file the test read (its bytes).
        File => "file",
    }
}

/// Longest checksum text a code unit may carry (hex digits).
pub const MAX_CHECKSUM_CHARS: usize = 64;

/// Most units one test may depend on; more is refused as bad input.
pub const MAX_TEST_UNITS: usize = 100_000;

/// One piece of project code (or a data file) as a test ran it; tests name
/// it by [`CodeUnit::key`] (the plugin's content key), and a project stores
/// each once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeUnit {
    /// Content key: a digest of kind, path, name, line span and checksum.
    pub key: u64,
    /// A digest of kind, path, name and checksum (no span): equal codes are
    /// the same code wherever it sits in its file.
    pub code: u64,
    /// What kind of unit.
    pub kind: UnitKind,
    /// Path relative to rootdir, `/`-separated.
    pub path: String,
    /// Qualified name; empty for a module or a file.
    pub name: String,
    /// First line (its first decorator), 1-based; 0 for a file.
    pub line_start: u32,
    /// Last line; 0 for a file.
    pub line_end: u32,
    /// Checksum of the normalised source, or of a file's bytes (hex).
    pub checksum: String,
}

impl CodeUnit {
    /// Checks the rules every write path shares: bounded path and name,
    /// a lowercase hex checksum, a span that does not end before it starts.
    /// Errors name fields relative to the unit (`checksum`); place them with
    /// [`Error::within`].
    pub fn validate(&self) -> Result<(), Error> {
        for (field, text) in [("path", &self.path), ("name", &self.name)] {
            if text.len() > MAX_NODEID_BYTES {
                return Err(Error::invalid(
                    field,
                    format!("{} bytes, the limit is {MAX_NODEID_BYTES}", text.len()),
                ));
            }
        }
        if self.checksum.len() > MAX_CHECKSUM_CHARS {
            return Err(Error::invalid(
                "checksum",
                format!(
                    "{} characters, the limit is {MAX_CHECKSUM_CHARS}",
                    self.checksum.len()
                ),
            ));
        }
        if !self
            .checksum
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::invalid(
                "checksum",
                format!("{} is not lowercase hex", echo(&self.checksum)),
            ));
        }
        if self.line_start > self.line_end {
            return Err(Error::invalid(
                "line_end",
                format!("{} is before line_start {}", self.line_end, self.line_start),
            ));
        }
        Ok(())
    }

    /// Heap bytes it holds, near enough for a memory budget.
    pub fn approximate_size(&self) -> usize {
        std::mem::size_of::<CodeUnit>() + self.path.len() + self.name.len() + self.checksum.len()
    }
}

/// A unit key as the spool and messages write it: 16 lowercase hex digits.
pub fn unit_key_text(key: u64) -> String {
    format!("{key:016x}")
}

/// Parses a unit key or code written as 16 hex digits (as the spool
/// writes them); errors name `field`.
pub fn parse_unit_key(text: &str, field: &str) -> Result<u64, Error> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            field,
            format!("{} is not 16 hex digits", echo(text)),
        ));
    }
    u64::from_str_radix(text, 16)
        .map_err(|_| Error::invalid(field, format!("{} is not 16 hex digits", echo(text))))
}

named_enum! {
    /// The lifecycle state of a session.
    SessionStatus {
        /// Started and not finished.
        Running => "running",
        /// Finished with every announced outcome stored.
        Finished => "finished",
        /// pytest was interrupted; every announced outcome stored.
        Interrupted => "interrupted",
        /// Finished with fewer outcomes stored than announced.
        Incomplete => "incomplete",
    }
}

impl SessionStatus {
    /// Whether the session is done and takes no new outcomes.
    ///
    /// `incomplete` is not closed: the missing outcomes may still arrive from a
    /// replayed spool file, and then complete it.
    pub fn is_closed(self) -> bool {
        matches!(self, SessionStatus::Finished | SessionStatus::Interrupted)
    }
}

named_enum! {
    /// The result of one test attempt, in pytest's terms.
    TestOutcome {
        /// The test passed.
        Passed => "passed",
        /// The test's call phase failed.
        Failed => "failed",
        /// The test was skipped.
        Skipped => "skipped",
        /// Setup, teardown or collection raised.
        Error => "error",
        /// An expected failure failed.
        Xfailed => "xfailed",
        /// An expected failure passed.
        Xpassed => "xpassed",
    }
}

impl TestOutcome {
    /// Whether this outcome is something a person should look at.
    pub fn is_failure(self) -> bool {
        matches!(self, TestOutcome::Failed | TestOutcome::Error)
    }
}

named_enum! {
    /// The pytest phase whose report decided an outcome.
    Phase {
        /// Module collection.
        Collect => "collect",
        /// Fixture setup.
        Setup => "setup",
        /// The test function.
        Call => "call",
        /// Fixture teardown.
        Teardown => "teardown",
    }
}

/// The machine and project a session ran on; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Environment {
    /// Operating system.
    pub os: String,
    /// Python version.
    pub python_version: String,
    /// Python implementation (CPython, PyPy).
    pub python_implementation: String,
    /// pytest version.
    pub pytest_version: String,
    /// Active plugins with versions.
    pub plugins: Vec<String>,
    /// Host name.
    pub hostname: String,
    /// pytest rootdir.
    pub rootdir: String,
    /// Project name.
    pub project: String,
    /// pytest's invocation arguments.
    pub invocation_args: Vec<String>,
    /// Git commit hash.
    pub git_commit: String,
    /// Git branch.
    pub git_branch: String,
    /// Whether the work tree was dirty, when known.
    pub git_dirty: Option<bool>,
    /// CI provider, when detected.
    pub ci_provider: String,
    /// Number of xdist workers, 0 without xdist.
    pub xdist_workers: u32,
    /// Free-form extra key/value pairs.
    pub extra: std::collections::BTreeMap<String, String>,
    /// The code the run tested: the commit, plus `+` and a digest of the
    /// working tree's changes when there are any; empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code_state: String,
    /// Checksums of the files that can change any test without being any
    /// test's dependency (conftest.py, pytest.ini, ...), path -> checksum.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub watched_files: std::collections::BTreeMap<String, String>,
    /// A digest of the installed distributions and their versions.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub packages: String,
    /// How the run chose its tests: empty for all it collected, else a
    /// description of a partial run (e.g. "affected: 12 of 2459").
    #[serde(skip_serializing_if = "String::is_empty")]
    pub selection: String,
}

impl Environment {
    /// Checks the rules every write path shares: a bounded size, a valid
    /// project name and code state. Errors name `environment.*` fields.
    pub fn validate(&self) -> Result<(), Error> {
        validate_code_state(&self.code_state, "environment.code_state")?;
        validate_project(&self.project, "environment.project")?;
        let size = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        if size > MAX_ENVIRONMENT_BYTES {
            return Err(Error::invalid(
                "environment",
                format!("{size} bytes, the limit is {MAX_ENVIRONMENT_BYTES}"),
            ));
        }
        Ok(())
    }

    /// Heap bytes it holds, near enough for a page's byte bound.
    pub fn approximate_size(&self) -> usize {
        let strs = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
        self.os.len()
            + self.python_version.len()
            + self.python_implementation.len()
            + self.pytest_version.len()
            + strs(&self.plugins)
            + self.hostname.len()
            + self.rootdir.len()
            + self.project.len()
            + strs(&self.invocation_args)
            + self.git_commit.len()
            + self.git_branch.len()
            + self.ci_provider.len()
            + self
                .extra
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>()
            + self.code_state.len()
            + self
                .watched_files
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>()
            + self.packages.len()
            + self.selection.len()
    }

    /// The code the run tested, as flakiness compares it: the code state
    /// the plugin recorded, or for a client that sends none, the commit of
    /// a checkout known to be clean. `None` when unknown: a dirty tree's
    /// commit alone does not say what code ran.
    pub fn code_identity(&self) -> Option<&str> {
        if !self.code_state.is_empty() {
            return Some(&self.code_state);
        }
        (self.git_dirty == Some(false) && !self.git_commit.is_empty())
            .then_some(self.git_commit.as_str())
    }
}

/// pytest's end-of-run counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Number of test outcomes of all kinds.
    pub total_tests: u64,
    /// Passed outcomes.
    pub passed: u64,
    /// Failed outcomes.
    pub failed: u64,
    /// Skipped outcomes.
    pub skipped: u64,
    /// Error outcomes.
    pub errors: u64,
    /// Xfailed outcomes.
    pub xfailed: u64,
    /// Xpassed outcomes.
    pub xpassed: u64,
    /// pytest's exit status.
    pub exitstatus: i32,
    /// Duration of the run in seconds.
    pub duration: f64,
}

impl Summary {
    /// Checks the rules every write path shares: finite duration, counts
    /// no larger than [`MAX_COUNT`], and a total that covers its parts.
    /// Errors name `summary.*` fields.
    pub fn validate(&self) -> Result<(), Error> {
        validate_duration(self.duration, "summary.duration")?;
        let parts = [
            ("total_tests", self.total_tests),
            ("passed", self.passed),
            ("failed", self.failed),
            ("skipped", self.skipped),
            ("errors", self.errors),
            ("xfailed", self.xfailed),
            ("xpassed", self.xpassed),
        ];
        for (name, n) in parts {
            validate_count(n, &format!("summary.{name}"))?;
        }
        // Each part is at most MAX_COUNT, so the sum cannot overflow.
        let sum: u64 = parts[1..].iter().map(|(_, n)| n).sum();
        if sum > self.total_tests {
            return Err(Error::invalid(
                "summary.total_tests",
                format!(
                    "{} is less than passed + failed + skipped + errors + xfailed + xpassed = {sum}",
                    self.total_tests
                ),
            ));
        }
        Ok(())
    }
}

/// Refuses a count larger than [`MAX_COUNT`], naming `field`.
pub fn validate_count(n: u64, field: &str) -> Result<(), Error> {
    if n > MAX_COUNT {
        return Err(Error::invalid(
            field,
            format!("{n} is larger than the limit {MAX_COUNT}"),
        ));
    }
    Ok(())
}

/// pytest's exit status for an interrupted run (`ExitCode.INTERRUPTED`).
pub const EXIT_INTERRUPTED: i32 = 2;

/// Stored outcomes of a session counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
    /// Skipped.
    pub skipped: u64,
    /// Errors.
    pub errors: u64,
    /// Xfailed.
    pub xfailed: u64,
    /// Xpassed.
    pub xpassed: u64,
}

impl OutcomeCounts {
    /// Adds `n` outcomes of one kind.
    pub fn add(&mut self, outcome: TestOutcome, n: u64) {
        let slot = match outcome {
            TestOutcome::Passed => &mut self.passed,
            TestOutcome::Failed => &mut self.failed,
            TestOutcome::Skipped => &mut self.skipped,
            TestOutcome::Error => &mut self.errors,
            TestOutcome::Xfailed => &mut self.xfailed,
            TestOutcome::Xpassed => &mut self.xpassed,
        };
        *slot += n;
    }

    /// The sum over all kinds.
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped + self.errors + self.xfailed + self.xpassed
    }
}

/// One quarantine entry: tests it matches still run, and their failures do
/// not fail the run of a plugin that asked for the quarantine list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// A nodeid, or an `fnmatch` pattern of nodeids (`*`, `?`, `[seq]`, `[!seq]`).
    pub pattern: String,
    /// The project it applies to; empty for every project.
    pub project: String,
    /// Why the test is quarantined.
    pub reason: String,
    /// Who quarantined it (an MCP grant, a CLI user).
    pub added_by: String,
    /// When it was added or last renewed.
    pub added_at: Timestamp,
    /// When it stops applying.
    pub expires_at: Timestamp,
}

/// One recorded session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Client-chosen UUID.
    pub id: Uuid,
    /// Where it was recorded from.
    pub source: Source,
    /// Lifecycle state.
    pub status: SessionStatus,
    /// Start time.
    pub started_at: Timestamp,
    /// End time, once finished.
    pub finished_at: Option<Timestamp>,
    /// Machine and project.
    pub environment: Environment,
    /// Summary sent at finish.
    pub summary: Option<Summary>,
    /// Outcomes stored.
    pub outcomes_stored: u64,
    /// Outcomes the client said it sent.
    pub outcomes_expected: Option<u64>,
    /// Stored outcomes by kind; filled by reads that ask for them.
    pub counts: OutcomeCounts,
    /// Kept out of every pruning (`pytest-mcp pin`).
    pub pinned: bool,
}

impl Session {
    /// Heap bytes it holds, near enough for a page's byte bound.
    pub fn approximate_size(&self) -> usize {
        std::mem::size_of::<Session>() + self.environment.approximate_size()
    }
}

/// One test attempt's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Position in its session, from 1.
    pub seq: u64,
    /// pytest node id.
    pub nodeid: String,
    /// The outcome.
    pub outcome: TestOutcome,
    /// The deciding phase, when known.
    pub phase: Option<Phase>,
    /// Duration of all phases in seconds.
    pub duration: f64,
    /// One-line crash message or skip reason.
    pub message: String,
    /// Full failure representation.
    pub longrepr: String,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Captured log.
    pub log: String,
    /// Defining file, relative to rootdir.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// Marker names.
    pub markers: Vec<String>,
    /// xdist worker id.
    pub worker: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Start time, when known.
    pub started_at: Option<Timestamp>,
    /// The subtest this outcome is for (pytest's `subtests` fixture, unittest's
    /// `subTest`), e.g. `[even] (i=1)`; empty for the test itself. The
    /// `nodeid` is always the test's own, so a rerun command can name it.
    pub subtest: String,
    /// Properties the test recorded (`record_property`, `user_properties`),
    /// as (name, value) pairs in order; bounded by [`Outcome::validate_and_bound`].
    pub user_properties: Vec<(String, String)>,
    /// The test was quarantined when it ran: its real outcome is stored, but
    /// pytest was told a failure does not fail the run.
    #[serde(default)]
    pub quarantined: bool,
    /// Keys of the code units the test depended on ([`CodeUnit::key`]);
    /// `None` when dependencies were not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deps: Option<Vec<u64>>,
}

impl AsRef<Outcome> for Outcome {
    fn as_ref(&self) -> &Outcome {
        self
    }
}

/// Most user properties kept per outcome; more are replaced by one marker property.
pub const MAX_PROPERTIES: usize = 64;

/// Longest property name kept, in bytes; longer ones are cut with a marker.
pub const MAX_PROPERTY_NAME_BYTES: usize = 256;

/// Longest property value kept, in bytes; longer ones are cut with a marker.
pub const MAX_PROPERTY_VALUE_BYTES: usize = 4096;

/// The name of the property that stands for the properties dropped past [`MAX_PROPERTIES`].
pub const PROPERTIES_TRUNCATED: &str = "[pytest-mcp: truncated]";

impl Outcome {
    /// A minimal outcome with every optional part empty.
    pub fn new(seq: u64, nodeid: impl Into<String>, outcome: TestOutcome) -> Self {
        Self {
            seq,
            nodeid: nodeid.into(),
            outcome,
            phase: None,
            duration: 0.0,
            message: String::new(),
            longrepr: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            log: String::new(),
            file: String::new(),
            line: None,
            markers: Vec::new(),
            worker: String::new(),
            attempt: 1,
            started_at: None,
            subtest: String::new(),
            user_properties: Vec::new(),
            quarantined: false,
            deps: None,
        }
    }

    /// Checks the rules every transport shares and bounds the large text
    /// fields. Errors name fields relative to the outcome (`nodeid`); place
    /// them with [`Error::within`].
    pub fn validate_and_bound(&mut self, max_field_bytes: usize) -> Result<(), Error> {
        if self.seq == 0 {
            return Err(Error::invalid("seq", "must be 1 or more"));
        }
        validate_nodeid(&self.nodeid, "nodeid")?;
        validate_duration(self.duration, "duration")?;
        if self.subtest.len() > MAX_NODEID_BYTES {
            // Cutting a label would merge two subtests into one.
            return Err(Error::invalid(
                "subtest",
                format!(
                    "{} bytes, the limit is {MAX_NODEID_BYTES}",
                    self.subtest.len()
                ),
            ));
        }
        if self.attempt == 0 {
            self.attempt = 1;
        }
        for text in [
            &mut self.message,
            &mut self.longrepr,
            &mut self.stdout,
            &mut self.stderr,
            &mut self.log,
        ] {
            truncate_marked(text, max_field_bytes);
        }
        for (name, text) in [("file", &mut self.file), ("worker", &mut self.worker)] {
            if text.len() > MAX_NODEID_BYTES {
                return Err(Error::invalid(
                    name,
                    format!("{} bytes, the limit is {MAX_NODEID_BYTES}", text.len()),
                ));
            }
        }
        if self.markers.len() > 256 {
            return Err(Error::invalid(
                "markers",
                format!("{} markers, the limit is 256", self.markers.len()),
            ));
        }
        for (i, m) in self.markers.iter().enumerate() {
            if m.len() > 1024 {
                return Err(Error::invalid(
                    format!("markers[{i}]"),
                    format!("{} bytes, the limit is 1024", m.len()),
                ));
            }
        }
        bound_properties(&mut self.user_properties);
        if let Some(units) = &self.deps
            && units.len() > MAX_TEST_UNITS
        {
            return Err(Error::invalid(
                "deps.units",
                format!("{} units, the limit is {MAX_TEST_UNITS}", units.len()),
            ));
        }
        Ok(())
    }

    /// Heap bytes it holds, near enough for a memory budget or a page's
    /// byte bound.
    pub fn approximate_size(&self) -> usize {
        std::mem::size_of::<Outcome>()
            + self.nodeid.len()
            + self.message.len()
            + self.longrepr.len()
            + self.stdout.len()
            + self.stderr.len()
            + self.log.len()
            + self.file.len()
            + self.worker.len()
            + self.subtest.len()
            + self.markers.iter().map(|m| m.len() + 24).sum::<usize>()
            + self
                .user_properties
                .iter()
                .map(|(n, v)| n.len() + v.len() + 48)
                .sum::<usize>()
            + self.deps.as_ref().map_or(0, |d| d.len() * 8)
    }

    /// Whether this is the outcome of a subtest rather than of the test itself.
    pub fn is_subtest(&self) -> bool {
        !self.subtest.is_empty()
    }
}

/// Cuts long property names and values with a marker, and replaces the
/// properties past [`MAX_PROPERTIES`] with one that says how many were dropped.
fn bound_properties(props: &mut Vec<(String, String)>) {
    if props.len() > MAX_PROPERTIES {
        let dropped = props.len() - (MAX_PROPERTIES - 1);
        props.truncate(MAX_PROPERTIES - 1);
        props.push((
            PROPERTIES_TRUNCATED.to_string(),
            format!("{dropped} more properties were not kept"),
        ));
    }
    for (name, value) in props.iter_mut() {
        truncate_marked(name, MAX_PROPERTY_NAME_BYTES);
        truncate_marked(value, MAX_PROPERTY_VALUE_BYTES);
    }
}

/// Rejects an empty or oversized nodeid, naming `field`.
pub fn validate_nodeid(nodeid: &str, field: &str) -> Result<(), Error> {
    if nodeid.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if nodeid.len() > MAX_NODEID_BYTES {
        return Err(Error::invalid(
            field,
            format!("{} bytes, the limit is {MAX_NODEID_BYTES}", nodeid.len()),
        ));
    }
    Ok(())
}

/// Longest code state accepted, in bytes (a commit, `+`, a digest).
pub const MAX_CODE_STATE_BYTES: usize = 256;

/// Checks a code state: short, printable ASCII without spaces (it is an
/// identifier, compared for equality and shown as is).
pub fn validate_code_state(code_state: &str, field: &str) -> Result<(), Error> {
    if code_state.len() > MAX_CODE_STATE_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "{} bytes, the limit is {MAX_CODE_STATE_BYTES}",
                code_state.len()
            ),
        ));
    }
    if let Some(c) = code_state.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!("{c:?} is not allowed: printable ASCII without spaces only"),
        ));
    }
    Ok(())
}

/// Longest project name accepted, in bytes: a directory's or a package's
/// name, read in every project-scoped answer and listed in errors.
pub const MAX_PROJECT_BYTES: usize = 256;

/// Checks a project name: short, without control characters.
pub fn validate_project(project: &str, field: &str) -> Result<(), Error> {
    if project.len() > MAX_PROJECT_BYTES {
        return Err(Error::invalid(
            field,
            format!("{} bytes, the limit is {MAX_PROJECT_BYTES}", project.len()),
        ));
    }
    if let Some(c) = project.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            format!("{c:?} is not allowed: no control characters"),
        ));
    }
    Ok(())
}

/// Rejects a negative, NaN or infinite duration, naming `field`.
pub fn validate_duration(duration: f64, field: &str) -> Result<(), Error> {
    if !duration.is_finite() {
        return Err(Error::invalid(
            field,
            format!("must be a finite number of seconds, got {duration}"),
        ));
    }
    if duration < 0.0 {
        return Err(Error::invalid(
            field,
            format!("must not be negative, got {duration}"),
        ));
    }
    Ok(())
}

/// Parses a session UUID, naming `field` when it is malformed.
pub fn parse_session_id(text: &str, field: &str) -> Result<Uuid, Error> {
    if text.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    // A peer's text is quoted only up to a bound: a megabyte of it would
    // come back whole in the error.
    Uuid::parse_str(text)
        .map_err(|e| Error::invalid(field, format!("{} is not a UUID ({e})", echo(text))))
}

/// The marker appended to text cut by [`truncate_marked`].
pub const TRUNCATION_MARKER: &str = "[pytest-mcp: truncated";

/// Cuts `text` to at most `max` bytes (on a character boundary), keeping the
/// head and the tail (where a traceback's error line is) and marking the cut.
pub fn truncate_marked(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let omitted_estimate = text.len() - max;
    let marker = format!("\n... {TRUNCATION_MARKER} {omitted_estimate} bytes] ...\n");
    if marker.len() > max {
        // No room for the marker: the head is all that fits.
        text.truncate(floor_char_boundary(text, max));
        return;
    }
    let budget = max - marker.len();
    let head_len = floor_char_boundary(text, budget / 2);
    let tail_start = ceil_char_boundary(text, text.len() - (budget - head_len));
    let mut out = String::with_capacity(max);
    out.push_str(&text[..head_len]);
    out.push_str(&marker);
    out.push_str(&text[tail_start..]);
    *text = out;
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// How the sessions recorded without a project are shown, and named.
pub const UNNAMED_PROJECT: &str = "(no project)";

/// A project as the store knows it: the rootdir name the plugin records.
/// Names match case-insensitively, so one project may have been recorded
/// under several spellings; every read of it covers them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Project {
    /// Its name as shown: the spelling of its newest session, or the name
    /// asked for when no session has it yet.
    pub name: String,
    /// Every spelling its sessions were recorded under (empty when none was).
    pub spellings: Vec<String>,
}

impl Project {
    /// A project known only by name (no session recorded under it yet, or
    /// the caller knows its one spelling).
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        Project {
            spellings: vec![name.clone()],
            name,
        }
    }

    /// Whether a session recorded under `project` belongs to this one.
    pub fn holds(&self, project: &str) -> bool {
        self.spellings.iter().any(|s| s == project)
    }

    /// The one key of all its spellings (the name lower-cased), for what
    /// is stored per project whatever spelling recorded it.
    pub fn folded(&self) -> String {
        fold_project(&self.name)
    }
}

/// The key a project's per-project rows are stored under: its name
/// lower-cased, so every spelling of it shares them (names match
/// case-insensitively, as [`Project`] groups them).
pub fn fold_project(name: &str) -> String {
    name.to_lowercase()
}

impl fmt::Display for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str(UNNAMED_PROJECT)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Fewest hex digits a shortened session id may have: the pages print eight.
pub const MIN_ID_PREFIX: usize = 8;

/// The start of a session id: every id between `lo` and `hi` begins with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix {
    /// The hex digits given, lower case, without hyphens.
    pub digits: String,
    /// The smallest id with this prefix.
    pub lo: Uuid,
    /// The largest id with this prefix.
    pub hi: Uuid,
}

impl IdPrefix {
    /// Parses `8`-`31` hex digits (hyphens where a UUID has them are
    /// allowed); `None` when `text` is not such a prefix.
    pub fn parse(text: &str) -> Option<IdPrefix> {
        let digits: String = text
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if digits.len() < MIN_ID_PREFIX
            || digits.len() >= 32
            || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        // Hyphens only where the UUID's own are (after digits 8, 12, 16, 20).
        let mut seen = 0;
        for c in text.chars() {
            if c == '-' {
                if ![8, 12, 16, 20].contains(&seen) {
                    return None;
                }
            } else {
                seen += 1;
            }
        }
        let pad = |fill: char| {
            let full: String = digits
                .chars()
                .chain(std::iter::repeat(fill))
                .take(32)
                .collect();
            Uuid::parse_str(&full).ok()
        };
        Some(IdPrefix {
            lo: pad('0')?,
            hi: pad('f')?,
            digits,
        })
    }
}

/// Names a session: by id, by the start of its id, or the most recently
/// started one (of a project).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRef {
    /// A session by UUID.
    Id(Uuid),
    /// The one session whose id starts with these digits.
    Prefix(IdPrefix),
    /// The most recently started session of a project; of every project
    /// when `None` (which is the latest of the most recently active project).
    Latest(Option<Project>),
}

impl SessionRef {
    /// Parses `latest`, a UUID, or the start of one (at least
    /// [`MIN_ID_PREFIX`] hex digits), naming `field` when it is none of these.
    pub fn parse(text: &str, field: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("latest") {
            return Ok(SessionRef::Latest(None));
        }
        if let Ok(id) = Uuid::parse_str(text) {
            return Ok(SessionRef::Id(id));
        }
        if let Some(prefix) = IdPrefix::parse(text) {
            return Ok(SessionRef::Prefix(prefix));
        }
        if text.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        Err(Error::invalid(
            field,
            format!(
                "{} is not a session: give `latest`, a session id, or the start of one \
                 ({MIN_ID_PREFIX} hex digits or more, as the pages and `pytest-mcp sessions` print them)",
                echo(text)
            ),
        ))
    }

    /// `latest` of `project`; an id or a prefix names the same session in any project.
    pub fn scoped(self, project: &Project) -> Self {
        match self {
            SessionRef::Latest(_) => SessionRef::Latest(Some(project.clone())),
            other => other,
        }
    }

    /// The error for a reference that names no stored session, naming `field`.
    pub fn not_found(&self, field: &str) -> Error {
        match self {
            SessionRef::Id(id) => Error::not_found(field, format!("no session {id}")),
            SessionRef::Prefix(p) => {
                Error::not_found(field, format!("no session id starts with {}", p.digits))
            }
            SessionRef::Latest(None) => Error::not_found(field, "no sessions are recorded yet"),
            SessionRef::Latest(Some(p)) => {
                Error::not_found(field, format!("no session of project {p} is recorded yet"))
            }
        }
    }

    /// The error for a prefix that more than one stored session id starts with.
    pub fn ambiguous(&self, field: &str, ids: &[Uuid]) -> Error {
        let digits = match self {
            SessionRef::Prefix(p) => p.digits.as_str(),
            _ => "",
        };
        let shown: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        Error::invalid(
            field,
            format!(
                "{digits} starts more than one session id ({}); give more of it",
                shown.join(", ")
            ),
        )
    }
}

impl fmt::Display for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionRef::Id(id) => write!(f, "{id}"),
            SessionRef::Prefix(p) => f.write_str(&p.digits),
            SessionRef::Latest(_) => f.write_str("latest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_head_and_tail_and_stays_within_the_bound() {
        let mut text = format!("HEAD{}TAIL", "x".repeat(10_000));
        truncate_marked(&mut text, 1000);
        assert!(text.len() <= 1000, "len {}", text.len());
        assert!(text.starts_with("HEAD"));
        assert!(text.ends_with("TAIL"));
        assert!(text.contains(TRUNCATION_MARKER));
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let mut text = "é".repeat(5000);
        truncate_marked(&mut text, 777);
        assert!(text.len() <= 777);
        assert!(text.contains(TRUNCATION_MARKER));
    }

    #[test]
    fn short_text_is_left_alone() {
        let mut text = "short".to_string();
        truncate_marked(&mut text, 1000);
        assert_eq!(text, "short");
    }

    #[test]
    fn durations_must_be_finite_and_not_negative() {
        assert!(validate_duration(0.0, "d").is_ok());
        for bad in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = validate_duration(bad, "outcomes[0].duration").unwrap_err();
            assert!(err.to_string().contains("outcomes[0].duration"), "{err}");
        }
    }

    #[test]
    fn a_stored_summary_reads_back_equal() {
        // A repeated FinishSession is compared with the summary stored as
        // JSON, so every duration must survive the round trip bit for bit.
        let mut bits: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let duration = f64::from_bits(bits >> 2); // finite and positive
            let summary = Summary {
                duration,
                ..Summary::default()
            };
            let text = serde_json::to_string(&summary).unwrap();
            let back: Summary = serde_json::from_str(&text).unwrap();
            assert_eq!(back, summary, "{text}");
        }
    }

    #[test]
    fn validation_errors_name_the_field_within_their_outcome() {
        let mut o = Outcome::new(3, "", TestOutcome::Passed);
        let err = o
            .validate_and_bound(1024)
            .unwrap_err()
            .within("outcomes[2]");
        assert_eq!(err.to_string(), "outcomes[2].nodeid: must not be empty");
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp(1_764_000_000_123_456);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn an_error_quotes_a_prefix_of_long_input_and_says_how_long_it_was() {
        let text = "é".repeat(MAX_ECHO_BYTES);
        let echoed = echo(&text);
        assert!(echoed.len() < MAX_ECHO_BYTES + 40, "{echoed}");
        assert!(echoed.ends_with(&format!("... ({} bytes)", text.len())));
        assert_eq!(echo("short"), "\"short\"");
    }

    #[test]
    fn a_summary_with_counts_past_the_limit_is_refused_without_overflowing() {
        let huge = Summary {
            total_tests: MAX_COUNT,
            passed: MAX_COUNT,
            failed: MAX_COUNT,
            skipped: MAX_COUNT,
            errors: MAX_COUNT,
            xfailed: MAX_COUNT,
            xpassed: MAX_COUNT,
            ..Summary::default()
        };
        let e = huge.validate().unwrap_err().to_string();
        assert!(e.starts_with("summary.total_tests:"), "{e}");
        let over = Summary {
            total_tests: u64::MAX,
            ..Summary::default()
        };
        let e = over.validate().unwrap_err().to_string();
        assert!(e.starts_with("summary.total_tests:"), "{e}");
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn a_time_more_than_a_day_ahead_is_refused_and_now_is_not() {
        assert!(validate_time(Timestamp::now(), "started_at").is_ok());
        let year_9999 = Timestamp(253_402_300_799 * 1_000_000);
        let e = validate_time(year_9999, "started_at")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("started_at:"), "{e}");
    }

    #[test]
    fn an_environment_larger_than_the_limit_is_refused_naming_it() {
        let mut env = Environment::default();
        env.extra
            .insert("blob".into(), "x".repeat(MAX_ENVIRONMENT_BYTES));
        let e = env.validate().unwrap_err().to_string();
        assert!(e.starts_with("environment:"), "{e}");
        env.extra.clear();
        env.project = "p".repeat(MAX_PROJECT_BYTES + 1);
        let e = env.validate().unwrap_err().to_string();
        assert!(e.starts_with("environment.project:"), "{e}");
    }
}
