//! Which tests a change needs: the rules that turn what each test's newest
//! run depended on ([`DepsSnapshot`], read by a backend) and a described
//! change into a selection, each selected test with its reason.
//!
//! The rules live here once, as pure functions; every surface (the MCP tool,
//! the CLI, the plugin's `--mcp-affected` through gRPC) calls them.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::model::{SessionStatus, TestOutcome, UnitKind};

/// One unit as stored for a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUnit {
    /// What kind of unit.
    pub kind: UnitKind,
    /// Path relative to rootdir.
    pub path: String,
    /// Qualified name; empty for a module or a file.
    pub name: String,
    /// First line as recorded.
    pub line_start: u32,
    /// Last line as recorded.
    pub line_end: u32,
    /// Checksum as recorded.
    pub checksum: String,
}

/// A test's newest run (its newest closed session that ran it).
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    /// pytest's node id (the test itself, never a subtest).
    pub nodeid: String,
    /// Its final outcome there (the last attempt; a subtest's failure makes it failed).
    pub outcome: TestOutcome,
    /// Whether it both passed and failed in that session (a rerun that passed).
    pub mixed: bool,
    /// The session.
    pub session: Uuid,
    /// That session's status.
    pub status: SessionStatus,
    /// Its dependency set (an index into [`DepsSnapshot::sets`]); `None` when
    /// that run recorded no dependencies.
    pub set: Option<usize>,
}

/// What each test of a project last ran, as a backend reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DepsSnapshot {
    /// The project as stored.
    pub project: String,
    /// Every test the project's kept history holds, by node id.
    pub tests: Vec<LastRun>,
    /// Each dependency set: indexes into `units`, sorted.
    pub sets: Vec<Vec<u32>>,
    /// The units the sets name.
    pub units: Vec<StoredUnit>,
    /// The watched files (path -> checksum) of the newest session that recorded them.
    pub watched_files: BTreeMap<String, String>,
    /// The installed-packages digest of that session; empty when unknown.
    pub packages: String,
}
