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

/// Files that can change any test without being any test's dependency: a
/// change to one selects every test. Matched against a path and its base name.
pub const DEFAULT_WATCH: &[&str] = &[
    "conftest.py",
    "pytest.ini",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "tox.ini",
    "requirements*.txt",
    "constraints*.txt",
    "*.lock",
    "Pipfile",
    "Pipfile.lock",
];

/// Most bytes of diff text read; a larger diff is refused (send the changed files instead).
pub const MAX_DIFF_BYTES: usize = 32 * 1024 * 1024;

/// Most node ids a [`Selection`]'s command names; past it the command
/// reruns the selection with the plugin instead.
pub const COMMAND_NODEIDS: usize = 500;

/// A unit or file as a client sees it now (working tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentUnit {
    /// What kind of unit.
    pub kind: UnitKind,
    /// Path relative to rootdir.
    pub path: String,
    /// Qualified name; empty for a module or a file.
    pub name: String,
    /// Its checksum now; empty when it is gone.
    pub checksum: String,
}

/// A change, as a client describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeInput {
    /// The working tree now: each test is compared with the code it last ran.
    WorkingTree {
        /// Current checksums of the recorded units and files.
        units: Vec<CurrentUnit>,
        /// Current checksums of the watched files present now.
        watched: BTreeMap<String, String>,
        /// The installed-packages digest now; empty when unknown.
        packages: String,
    },
    /// Changed files (added, modified, deleted): every unit in them changed.
    Files(Vec<String>),
    /// A unified diff, read against the recorded line spans.
    Diff(String),
}

impl ChangeInput {
    /// How the change was described, for notes and the partial run's label.
    pub fn describe(&self) -> &'static str {
        match self {
            ChangeInput::WorkingTree { .. } => "working tree",
            ChangeInput::Files(_) => "changed files",
            ChangeInput::Diff(_) => "diff",
        }
    }
}

/// What a selection is asked.
#[derive(Debug, Clone, Default)]
pub struct SelectRequest {
    /// The change; `None` selects by the last runs alone.
    pub change: Option<ChangeInput>,
    /// The node ids collected now, when known.
    pub collected: Option<Vec<String>>,
    /// Watch patterns; empty means [`DEFAULT_WATCH`].
    pub watch: Vec<String>,
}

/// How sure a selection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// Every test had recorded dependencies.
    Exact,
    /// Some tests had none (they are selected); see the notes.
    Partial,
    /// A change that can change any test selected every test.
    All,
}

impl Confidence {
    /// The word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Exact => "exact",
            Confidence::Partial => "partial",
            Confidence::All => "all",
        }
    }
}

/// One selected test (or test file) and why it must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// pytest node id, or the path of a new test file.
    pub nodeid: String,
    /// Why, in a few words.
    pub reason: String,
}

/// The tests a change needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The selected tests, in node id order.
    pub tests: Vec<Selected>,
    /// Tests the project has (collected now, else recorded).
    pub total: u64,
    /// How sure the selection is.
    pub confidence: Confidence,
    /// What was unknown or forced the answer, one line each.
    pub notes: Vec<String>,
    /// Whether every test is selected.
    pub all: bool,
    /// The recorded tests considered and not selected, in node id order.
    pub unselected: Vec<String>,
}

/// Which units of the snapshot changed, and how.
#[derive(Debug, Default)]
struct Changed {
    /// Per unit index: `Some(removed)` when it changed.
    units: Vec<Option<bool>>,
    /// A file that selects every test changed: why.
    valve: Option<String>,
    /// Paths changed that no recorded test depends on (maybe new test files).
    paths: Vec<String>,
    /// Files of the working tree that are gone: their recorded tests are too.
    gone: std::collections::HashSet<String>,
}

/// Selects the tests a change needs from what each test last ran.
///
/// A test is selected when a unit it depended on changed or disappeared, a
/// file it read changed, it is new (collected, never recorded), it has no
/// recorded dependencies, or its last run did not pass (failed, error,
/// passed and failed in one session, interrupted, or judged flaky:
/// `flaky`). A change to a watched file, or to the installed packages,
/// selects every test.
pub fn select(
    snapshot: &DepsSnapshot,
    request: &SelectRequest,
    flaky: &std::collections::HashSet<String>,
) -> crate::error::Result<Selection> {
    let watch = watch_patterns(&request.watch)?;
    let changed = match &request.change {
        None => Changed {
            units: vec![None; snapshot.units.len()],
            ..Changed::default()
        },
        Some(change) => changed_units(snapshot, change, &watch)?,
    };
    let mut notes = Vec::new();
    let collected: Option<std::collections::HashSet<&str>> = request
        .collected
        .as_ref()
        .map(|c| c.iter().map(String::as_str).collect());
    let recorded: std::collections::HashSet<&str> =
        snapshot.tests.iter().map(|t| t.nodeid.as_str()).collect();
    let mut tests: Vec<Selected> = Vec::new();
    let mut unselected: Vec<String> = Vec::new();
    let mut without_deps = 0u64;
    let mut considered = 0u64;
    let mut deleted = 0u64;
    for run in &snapshot.tests {
        if let Some(c) = &collected
            && !c.contains(run.nodeid.as_str())
        {
            continue;
        }
        let file = run.nodeid.split("::").next().unwrap_or("");
        if collected.is_none() && changed.gone.contains(file) {
            deleted += 1;
            continue;
        }
        considered += 1;
        if run.set.is_none() {
            without_deps += 1;
        }
        match reason_for(snapshot, run, &changed, flaky) {
            Some(reason) => tests.push(Selected {
                nodeid: run.nodeid.clone(),
                reason,
            }),
            None => unselected.push(run.nodeid.clone()),
        }
    }
    let mut total = considered;
    if let Some(c) = &request.collected {
        let mut seen = std::collections::HashSet::new();
        for nodeid in c {
            if !recorded.contains(nodeid.as_str()) && seen.insert(nodeid.as_str()) {
                total += 1;
                tests.push(Selected {
                    nodeid: nodeid.clone(),
                    reason: "new test: no recorded run".into(),
                });
            }
        }
    } else {
        // Without the collected tests, a changed test file no recorded test
        // comes from is named by its path: pytest runs whatever it holds.
        for path in &changed.paths {
            if is_test_file(path) {
                tests.push(Selected {
                    nodeid: path.clone(),
                    reason: "new test file: no recorded run".into(),
                });
            }
        }
    }
    if deleted > 0 {
        notes.push(format!(
            "{deleted} recorded tests are in files that no longer exist (left out)"
        ));
    }
    if without_deps > 0 {
        notes.push(format!(
            "{without_deps} of {considered} tests had no recorded dependencies (selected); \
             record them with `pytest --mcp --mcp-deps`"
        ));
    }
    if matches!(request.change, Some(ChangeInput::Diff(_))) {
        notes.push(
            "a diff is read against the line spans each test's newest run recorded: \
             a hunk touching a unit's lines changes it, a hunk of comments or blank lines does not"
                .into(),
        );
    }
    let mut confidence = if without_deps > 0 {
        Confidence::Partial
    } else {
        Confidence::Exact
    };
    let mut all = false;
    if let Some(why) = &changed.valve {
        notes.insert(
            0,
            format!("{why}: it can change any test, so every test runs"),
        );
        confidence = Confidence::All;
        all = true;
        let reasons: std::collections::HashMap<String, String> =
            tests.drain(..).map(|s| (s.nodeid, s.reason)).collect();
        let mut names: Vec<&str> = snapshot
            .tests
            .iter()
            .map(|t| t.nodeid.as_str())
            .filter(|n| match &collected {
                Some(c) => c.contains(n),
                None => !changed.gone.contains(n.split("::").next().unwrap_or("")),
            })
            .collect();
        if let Some(c) = &request.collected {
            names.extend(c.iter().map(String::as_str));
        }
        names.sort_unstable();
        names.dedup();
        tests = names
            .into_iter()
            .map(|n| Selected {
                nodeid: n.to_string(),
                reason: reasons.get(n).cloned().unwrap_or_else(|| why.clone()),
            })
            .collect();
        total = tests.len() as u64;
        unselected.clear();
    }
    unselected.sort_unstable();
    unselected.dedup();
    tests.sort_by(|a, b| a.nodeid.cmp(&b.nodeid));
    tests.dedup_by(|a, b| a.nodeid == b.nodeid);
    if !all && total > 0 && tests.len() as u64 >= total {
        all = true;
    }
    Ok(Selection {
        tests,
        total,
        confidence,
        notes,
        all,
        unselected,
    })
}

/// Why one recorded test must run, or `None`.
fn reason_for(
    snapshot: &DepsSnapshot,
    run: &LastRun,
    changed: &Changed,
    flaky: &std::collections::HashSet<String>,
) -> Option<String> {
    match run.outcome {
        TestOutcome::Failed => return Some("failed in its last run".into()),
        TestOutcome::Error => return Some("errored in its last run".into()),
        _ => {}
    }
    if run.mixed {
        return Some("passed and failed in its last run (rerun)".into());
    }
    if !run.status.is_closed() || run.status == SessionStatus::Interrupted {
        return Some(format!("its last run was {}", run.status));
    }
    if flaky.contains(&run.nodeid) {
        return Some("flaky: passed and failed on the same code".into());
    }
    let Some(set) = run.set.and_then(|s| snapshot.sets.get(s)) else {
        return Some("no recorded dependencies".into());
    };
    // The most telling changed unit: a function or file before a class,
    // a class before a module's top-level code.
    let mut best: Option<(u8, usize, bool)> = None;
    let mut more = 0usize;
    for &u in set {
        let Some(Some(removed)) = changed.units.get(u as usize) else {
            continue;
        };
        let rank = match snapshot.units[u as usize].kind {
            UnitKind::Function | UnitKind::File => 0,
            UnitKind::Class => 1,
            UnitKind::Module => 2,
        };
        match best {
            Some((r, _, _)) if r <= rank => more += 1,
            Some(_) => {
                more += 1;
                best = Some((rank, u as usize, *removed));
            }
            None => best = Some((rank, u as usize, *removed)),
        }
    }
    let (_, u, removed) = best?;
    let unit = &snapshot.units[u];
    let how = if removed { "removed" } else { "changed" };
    let what = match unit.kind {
        UnitKind::Function => format!("calls {}::{}, {how}", unit.path, unit.name),
        UnitKind::Class => format!("uses class {}::{}, {how}", unit.path, unit.name),
        UnitKind::Module => format!("imports {}, whose module-level code {how}", unit.path),
        UnitKind::File => format!("reads {}, {how}", unit.path),
    };
    Some(if more > 0 {
        format!("{what} (and {more} more)")
    } else {
        what
    })
}

/// A compiled watch pattern, and whether it names a whole path.
type Watch = (super::quarantine::Pattern, bool);

/// The watch patterns, compiled (the defaults when none are given).
fn watch_patterns(given: &[String]) -> crate::error::Result<Vec<Watch>> {
    let texts: Vec<&str> = if given.is_empty() {
        DEFAULT_WATCH.to_vec()
    } else {
        given.iter().map(String::as_str).collect()
    };
    texts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            super::quarantine::Pattern::new(p)
                .map(|compiled| (compiled, p.contains('/')))
                .map_err(|e| crate::error::Error::invalid(format!("watch[{i}]"), e.to_string()))
        })
        .collect()
}

/// Whether a path is watched: a pattern with a `/` matches the whole path,
/// one without matches the base name.
fn is_watched(watch: &[Watch], path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    watch.iter().any(|(p, whole)| {
        if *whole {
            p.matches(path)
        } else {
            p.matches(base)
        }
    })
}

/// Whether pytest would collect tests from a file of this name by default.
fn is_test_file(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.ends_with(".py") && (base.starts_with("test_") || base.ends_with("_test.py"))
}

/// A path as the store keeps it: relative, `/`-separated, no `./`.
pub fn normalise_path(path: &str) -> String {
    let p = path.trim().replace('\\', "/");
    let mut p = p.as_str();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.to_string()
}

fn changed_units(
    snapshot: &DepsSnapshot,
    change: &ChangeInput,
    watch: &[Watch],
) -> crate::error::Result<Changed> {
    let mut out = Changed {
        units: vec![None; snapshot.units.len()],
        ..Changed::default()
    };
    let watched = |path: &str| is_watched(watch, path);
    let known_paths: std::collections::HashSet<&str> =
        snapshot.units.iter().map(|u| u.path.as_str()).collect();
    match change {
        ChangeInput::WorkingTree {
            units,
            watched: now,
            packages,
        } => {
            let current: std::collections::HashMap<(UnitKind, &str, &str), &str> = units
                .iter()
                .map(|u| {
                    (
                        (u.kind, u.path.as_str(), u.name.as_str()),
                        u.checksum.as_str(),
                    )
                })
                .collect();
            for (i, unit) in snapshot.units.iter().enumerate() {
                match current.get(&(unit.kind, unit.path.as_str(), unit.name.as_str())) {
                    Some(c) if *c == unit.checksum => {}
                    Some(c) => {
                        out.units[i] = Some(c.is_empty());
                        if c.is_empty() && unit.kind == UnitKind::Module {
                            out.gone.insert(unit.path.clone());
                        }
                    }
                    // Not checked by the client: it cannot be taken as unchanged.
                    None => out.units[i] = Some(false),
                }
            }
            if !snapshot.watched_files.is_empty() {
                let mut paths: Vec<&String> =
                    snapshot.watched_files.keys().chain(now.keys()).collect();
                paths.sort();
                paths.dedup();
                for path in paths {
                    let was = snapshot.watched_files.get(path);
                    let is = now.get(path);
                    if was != is {
                        let how = match (was, is) {
                            (None, _) => "added",
                            (_, None) => "removed",
                            _ => "changed",
                        };
                        out.valve = Some(format!("{path} {how}"));
                        break;
                    }
                }
            }
            if out.valve.is_none()
                && !snapshot.packages.is_empty()
                && !packages.is_empty()
                && *packages != snapshot.packages
            {
                out.valve = Some("the installed packages changed".into());
            }
        }
        ChangeInput::Files(paths) => {
            let paths: std::collections::HashSet<String> =
                paths.iter().map(|p| normalise_path(p)).collect();
            for (i, unit) in snapshot.units.iter().enumerate() {
                if paths.contains(&unit.path) {
                    out.units[i] = Some(false);
                }
            }
            let mut sorted: Vec<&String> = paths.iter().collect();
            sorted.sort();
            for path in sorted {
                if out.valve.is_none() && watched(path) {
                    out.valve = Some(format!("{path} changed"));
                }
                if !known_paths.contains(path.as_str()) {
                    out.paths.push(path.clone());
                }
            }
        }
        ChangeInput::Diff(text) => {
            if text.len() > MAX_DIFF_BYTES {
                return Err(crate::error::Error::invalid(
                    "diff",
                    format!(
                        "{} bytes, the limit is {MAX_DIFF_BYTES}; send the changed files instead",
                        text.len()
                    ),
                ));
            }
            for file in parse_diff(text) {
                let path = file.old.clone().or_else(|| file.new.clone());
                let Some(path) = path else { continue };
                for name in [&file.old, &file.new].into_iter().flatten() {
                    if out.valve.is_none() && watched(name) {
                        out.valve = Some(format!("{name} changed"));
                    }
                }
                if let Some(new) = &file.new
                    && file.old.is_none()
                    && !known_paths.contains(new.as_str())
                {
                    out.paths.push(new.clone());
                }
                // A file moved away, deleted, or changed as a whole: every unit in it.
                let whole = file.whole || file.new.is_none() || file.new != file.old;
                mark_lines(snapshot, &path, &file.touched, whole, &mut out.units);
            }
        }
    }
    Ok(out)
}

/// Marks the units of `path` the touched (old-side) lines fall in: the
/// functions that hold them, else the classes, else the module's top-level
/// code; every unit of the file when `whole`. A data file changes with any line.
fn mark_lines(
    snapshot: &DepsSnapshot,
    path: &str,
    touched: &[u32],
    whole: bool,
    units: &mut [Option<bool>],
) {
    let of_path: Vec<usize> = snapshot
        .units
        .iter()
        .enumerate()
        .filter(|(_, u)| u.path == path)
        .map(|(i, _)| i)
        .collect();
    if of_path.is_empty() {
        return;
    }
    if whole {
        for i in of_path {
            units[i] = Some(false);
        }
        return;
    }
    if touched.is_empty() {
        return;
    }
    for &i in &of_path {
        if snapshot.units[i].kind == UnitKind::File {
            units[i] = Some(false);
        }
    }
    let holds = |i: usize, line: u32| {
        let u = &snapshot.units[i];
        u.line_start <= line && line <= u.line_end
    };
    for &line in touched {
        let mut hit = false;
        for kind in [UnitKind::Function, UnitKind::Class] {
            for &i in &of_path {
                if snapshot.units[i].kind == kind && holds(i, line) {
                    units[i] = Some(false);
                    hit = true;
                }
            }
            if hit {
                break;
            }
        }
        if !hit {
            for &i in &of_path {
                if snapshot.units[i].kind == UnitKind::Module {
                    units[i] = Some(false);
                }
            }
        }
    }
}

/// One file of a unified diff.
#[derive(Debug, Default, PartialEq, Eq)]
struct DiffFile {
    /// The path before (`None`: the file is new).
    old: Option<String>,
    /// The path after (`None`: the file was deleted).
    new: Option<String>,
    /// Old-side lines the hunks change (removed lines, and the lines around
    /// an insertion), leaving out hunks that only change comments or blank lines.
    touched: Vec<u32>,
    /// Changed as a whole (binary).
    whole: bool,
    /// Its `---` line was read.
    seen_old: bool,
}

/// A diff path: without git's `a/` / `b/` prefix, quotes or a trailing timestamp.
fn diff_path(text: &str) -> Option<String> {
    let text = text.split('\t').next().unwrap_or(text).trim_end();
    let text = text.trim_matches('"');
    if text == "/dev/null" {
        return None;
    }
    let text = text
        .strip_prefix("a/")
        .or_else(|| text.strip_prefix("b/"))
        .unwrap_or(text);
    Some(normalise_path(text))
}

/// Whether a changed line is a comment or blank (it changes no code).
fn is_comment_or_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Reads a unified diff (`git diff`, `diff -u`) in one pass.
fn parse_diff(text: &str) -> Vec<DiffFile> {
    let mut files: Vec<DiffFile> = Vec::new();
    let mut cur: Option<DiffFile> = None;
    // Inside a hunk: the next old-side line number and the lines left on each side.
    let mut old_line = 0u32;
    let mut old_left = 0u32;
    let mut new_left = 0u32;
    let mut hunk_touched: Vec<u32> = Vec::new();
    let mut hunk_code = false;
    let flush_hunk = |cur: &mut Option<DiffFile>, touched: &mut Vec<u32>, code: &mut bool| {
        if let Some(f) = cur.as_mut()
            && *code
        {
            f.touched.append(touched);
        }
        touched.clear();
        *code = false;
    };
    for line in text.lines() {
        if old_left > 0 || new_left > 0 {
            match line.as_bytes().first() {
                Some(b'-') => {
                    hunk_touched.push(old_line);
                    hunk_code |= !is_comment_or_blank(&line[1..]);
                    old_line += 1;
                    old_left = old_left.saturating_sub(1);
                    continue;
                }
                Some(b'+') => {
                    // An insertion changes the unit of the line before it
                    // (a body grows at its end; a new line after a unit's
                    // last line is taken as part of it, to be safe).
                    hunk_touched.push(old_line.saturating_sub(1).max(1));
                    hunk_code |= !is_comment_or_blank(&line[1..]);
                    new_left = new_left.saturating_sub(1);
                    continue;
                }
                Some(b' ') | None => {
                    old_line += 1;
                    old_left = old_left.saturating_sub(1);
                    new_left = new_left.saturating_sub(1);
                    continue;
                }
                Some(b'\\') => continue,
                _ => {
                    old_left = 0;
                    new_left = 0;
                }
            }
        }
        if let Some(rest) = line.strip_prefix("diff --git ") {
            flush_hunk(&mut cur, &mut hunk_touched, &mut hunk_code);
            files.extend(cur.take());
            // Paths from the header; `---`/`+++` lines, when present, refine them.
            let mut parts = rest.splitn(2, " b/");
            let old = parts.next().and_then(diff_path);
            let new = parts.next().and_then(|p| diff_path(&format!("b/{p}")));
            cur = Some(DiffFile {
                old,
                new,
                ..DiffFile::default()
            });
        } else if let Some(rest) = line.strip_prefix("--- ") {
            flush_hunk(&mut cur, &mut hunk_touched, &mut hunk_code);
            // A `---` after another file's starts the next file (plain `diff -u`).
            if cur.as_ref().is_none_or(|f| f.seen_old) {
                files.extend(cur.take());
                cur = Some(DiffFile::default());
            }
            if let Some(f) = cur.as_mut() {
                f.old = diff_path(rest);
                f.seen_old = true;
            }
        } else if let Some(rest) = line.strip_prefix("@@ -") {
            flush_hunk(&mut cur, &mut hunk_touched, &mut hunk_code);
            let (old, new) = hunk_ranges(rest);
            old_line = old.0;
            old_left = old.1;
            new_left = new.1;
        } else if let Some(f) = cur.as_mut() {
            file_header(f, line);
        }
    }
    flush_hunk(&mut cur, &mut hunk_touched, &mut hunk_code);
    files.extend(cur);
    for f in &mut files {
        f.touched.sort_unstable();
        f.touched.dedup();
    }
    files
}

/// Reads one of a file's header lines (`+++`, binary, rename, new, deleted).
fn file_header(f: &mut DiffFile, line: &str) {
    if let Some(rest) = line.strip_prefix("+++ ") {
        f.new = diff_path(rest);
    } else if line.starts_with("Binary files ") || line.starts_with("GIT binary patch") {
        f.whole = true;
    } else if let Some(rest) = line.strip_prefix("rename from ") {
        f.old = Some(normalise_path(rest));
    } else if let Some(rest) = line.strip_prefix("rename to ") {
        f.new = Some(normalise_path(rest));
    } else if line.starts_with("new file mode") {
        f.old = None;
    } else if line.starts_with("deleted file mode") {
        f.new = None;
    }
}

/// The old and new (start, length) of a hunk header's rest, after `@@ -`.
fn hunk_ranges(rest: &str) -> ((u32, u32), (u32, u32)) {
    let range = |s: &str| -> (u32, u32) {
        let mut it = s.splitn(2, ',');
        let start = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let len = it.next().map_or(1, |n| n.parse().unwrap_or(0));
        (start, len)
    };
    let mut parts = rest.split_whitespace();
    let old = parts.next().map_or((0, 0), range);
    let new = parts
        .next()
        .and_then(|p| p.strip_prefix('+'))
        .map_or((0, 0), range);
    (old, new)
}

impl super::Store {
    /// The tests a change needs in `project`, from what each test's newest
    /// run depended on (and the flaky verdicts over the usual window).
    pub async fn affected(
        &self,
        project: &crate::model::Project,
        request: &SelectRequest,
    ) -> crate::error::Result<(std::sync::Arc<DepsSnapshot>, Selection)> {
        let snapshot = self.deps_snapshot(project).await?;
        let nodeids = snapshot.tests.iter().map(|t| t.nodeid.clone()).collect();
        let flaky: std::collections::HashSet<String> = self
            .known_flaky(crate::views::FLAKY_WINDOW, project, nodeids)
            .await?
            .into_keys()
            .collect();
        // Linear, but a large diff or project is milliseconds of CPU: off the runtime.
        let (shared, request) = (snapshot.clone(), request.clone());
        let selection = tokio::task::spawn_blocking(move || select(&shared, &request, &flaky))
            .await
            .map_err(|e| crate::error::Error::Internal(format!("selecting failed: {e}")))??;
        Ok((snapshot, selection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(kind: UnitKind, path: &str, name: &str, span: (u32, u32), sum: &str) -> StoredUnit {
        StoredUnit {
            kind,
            path: path.into(),
            name: name.into(),
            line_start: span.0,
            line_end: span.1,
            checksum: sum.into(),
        }
    }

    fn run(nodeid: &str, outcome: TestOutcome, set: Option<usize>) -> LastRun {
        LastRun {
            nodeid: nodeid.into(),
            outcome,
            mixed: false,
            session: Uuid::nil(),
            status: SessionStatus::Finished,
            set,
        }
    }

    /// pkg/util.py has helper (lines 4-6) and other (8-9); tests/test_a.py's
    /// test_uses calls helper, test_other calls other, test_data reads data.json.
    fn project() -> DepsSnapshot {
        let units = vec![
            unit(UnitKind::Module, "pkg/util.py", "", (1, 9), "m1"),
            unit(UnitKind::Function, "pkg/util.py", "helper", (4, 6), "h1"),
            unit(UnitKind::Function, "pkg/util.py", "other", (8, 9), "o1"),
            unit(UnitKind::Module, "tests/test_a.py", "", (1, 20), "t0"),
            unit(
                UnitKind::Function,
                "tests/test_a.py",
                "test_uses",
                (3, 5),
                "t1",
            ),
            unit(
                UnitKind::Function,
                "tests/test_a.py",
                "test_other",
                (7, 9),
                "t2",
            ),
            unit(
                UnitKind::Function,
                "tests/test_a.py",
                "test_data",
                (11, 13),
                "t3",
            ),
            unit(UnitKind::File, "tests/data.json", "", (0, 0), "d1"),
        ];
        DepsSnapshot {
            project: "demo".into(),
            tests: vec![
                run("tests/test_a.py::test_uses", TestOutcome::Passed, Some(0)),
                run("tests/test_a.py::test_other", TestOutcome::Passed, Some(1)),
                run("tests/test_a.py::test_data", TestOutcome::Passed, Some(2)),
            ],
            sets: vec![vec![0, 1, 3, 4], vec![0, 2, 3, 5], vec![3, 6, 7]],
            units,
            watched_files: [("conftest.py".to_string(), "c1".to_string())].into(),
            packages: "p1".into(),
        }
    }

    fn now(snapshot: &DepsSnapshot, edits: &[(&str, &str)]) -> ChangeInput {
        let units = snapshot
            .units
            .iter()
            .map(|u| {
                let name = if u.name.is_empty() { &u.path } else { &u.name };
                let checksum = edits
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(u.checksum.clone(), |(_, c)| c.to_string());
                CurrentUnit {
                    kind: u.kind,
                    path: u.path.clone(),
                    name: u.name.clone(),
                    checksum,
                }
            })
            .collect();
        ChangeInput::WorkingTree {
            units,
            watched: snapshot.watched_files.clone(),
            packages: snapshot.packages.clone(),
        }
    }

    fn pick(snapshot: &DepsSnapshot, change: ChangeInput) -> Selection {
        let request = SelectRequest {
            change: Some(change),
            ..SelectRequest::default()
        };
        select(snapshot, &request, &Default::default()).expect("selects")
    }

    fn names(s: &Selection) -> Vec<&str> {
        s.tests.iter().map(|t| t.nodeid.as_str()).collect()
    }

    #[test]
    fn a_changed_helper_selects_exactly_its_callers_and_says_so() {
        let p = project();
        let s = pick(&p, now(&p, &[("helper", "h2")]));
        assert_eq!(names(&s), ["tests/test_a.py::test_uses"]);
        assert_eq!(s.tests[0].reason, "calls pkg/util.py::helper, changed");
        assert_eq!(s.confidence, Confidence::Exact);
        assert_eq!(s.total, 3);
        assert!(!s.all);
    }

    #[test]
    fn an_unchanged_tree_selects_nothing_and_a_removed_function_is_named() {
        let p = project();
        assert!(pick(&p, now(&p, &[])).tests.is_empty());
        let s = pick(&p, now(&p, &[("other", "")]));
        assert_eq!(s.tests[0].reason, "calls pkg/util.py::other, removed");
    }

    #[test]
    fn a_changed_data_file_selects_the_test_that_read_it() {
        let p = project();
        let s = pick(&p, now(&p, &[("tests/data.json", "d2")]));
        assert_eq!(names(&s), ["tests/test_a.py::test_data"]);
        assert_eq!(s.tests[0].reason, "reads tests/data.json, changed");
    }

    #[test]
    fn module_level_code_selects_every_test_that_imported_the_module() {
        let p = project();
        let s = pick(&p, now(&p, &[("pkg/util.py", "m2")]));
        assert_eq!(
            names(&s),
            ["tests/test_a.py::test_other", "tests/test_a.py::test_uses"]
        );
        assert!(s.tests[0].reason.contains("module-level code changed"));
    }

    #[test]
    fn a_watched_file_or_the_packages_changing_selects_all_and_names_it() {
        let p = project();
        let ChangeInput::WorkingTree { units, .. } = now(&p, &[]) else {
            unreachable!()
        };
        let s = pick(
            &p,
            ChangeInput::WorkingTree {
                units: units.clone(),
                watched: [("conftest.py".to_string(), "c2".to_string())].into(),
                packages: "p1".into(),
            },
        );
        assert!(s.all);
        assert_eq!(s.confidence, Confidence::All);
        assert_eq!(s.tests.len(), 3);
        assert!(
            s.notes[0].starts_with("conftest.py changed"),
            "{:?}",
            s.notes
        );
        let s = pick(
            &p,
            ChangeInput::WorkingTree {
                units,
                watched: p.watched_files.clone(),
                packages: "p2".into(),
            },
        );
        assert!(s.all);
        assert!(s.notes[0].contains("installed packages"));
        let s = pick(&p, ChangeInput::Files(vec!["sub/conftest.py".into()]));
        assert!(s.all, "a conftest.py at any depth is watched");
    }

    #[test]
    fn a_test_that_did_not_pass_last_time_or_is_new_or_unrecorded_is_always_selected() {
        let mut p = project();
        p.tests[1].outcome = TestOutcome::Failed;
        p.tests
            .push(run("tests/test_b.py::test_old", TestOutcome::Passed, None));
        let request = SelectRequest {
            change: Some(now(&p, &[])),
            collected: Some(vec![
                "tests/test_a.py::test_uses".into(),
                "tests/test_a.py::test_other".into(),
                "tests/test_b.py::test_old".into(),
                "tests/test_b.py::test_new".into(),
            ]),
            watch: vec![],
        };
        let s = select(&p, &request, &Default::default()).expect("selects");
        let got: Vec<(&str, &str)> = s
            .tests
            .iter()
            .map(|t| (t.nodeid.as_str(), t.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("tests/test_a.py::test_other", "failed in its last run"),
                ("tests/test_b.py::test_new", "new test: no recorded run"),
                ("tests/test_b.py::test_old", "no recorded dependencies"),
            ]
        );
        assert_eq!(s.total, 4, "test_data was not collected: it is not counted");
        assert_eq!(s.confidence, Confidence::Partial);
    }

    #[test]
    fn a_diff_selects_by_the_recorded_line_spans_and_ignores_comment_hunks() {
        let p = project();
        let body = "diff --git a/pkg/util.py b/pkg/util.py\n\
                    index 1..2 100644\n\
                    --- a/pkg/util.py\n\
                    +++ b/pkg/util.py\n\
                    @@ -4,3 +4,3 @@ def helper():\n\
                    \x20def helper():\n\
                    -    return 1\n\
                    +    return 2\n\
                    \x20\n";
        let s = pick(&p, ChangeInput::Diff(body.into()));
        assert_eq!(names(&s), ["tests/test_a.py::test_uses"]);
        let comment = "--- a/pkg/util.py\n+++ b/pkg/util.py\n@@ -5,1 +5,2 @@\n     return 1\n+    # why it is 1\n";
        assert!(pick(&p, ChangeInput::Diff(comment.into())).tests.is_empty());
        // A line outside every function a test ran is module-level code.
        let module = "--- a/pkg/util.py\n+++ b/pkg/util.py\n@@ -2 +2 @@\n-X = 1\n+X = 2\n";
        assert_eq!(
            names(&pick(&p, ChangeInput::Diff(module.into()))),
            ["tests/test_a.py::test_other", "tests/test_a.py::test_uses"]
        );
    }

    #[test]
    fn a_diff_of_several_files_with_new_deleted_and_renamed_ones_is_read_file_by_file() {
        let text = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n\
                    diff --git a/tests/test_n.py b/tests/test_n.py\nnew file mode 100644\n--- /dev/null\n+++ b/tests/test_n.py\n@@ -0,0 +1 @@\n+def test_n(): pass\n\
                    diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x = 1\n\
                    diff --git a/old.py b/new.py\nsimilarity index 100%\nrename from old.py\nrename to new.py\n";
        let files = parse_diff(text);
        let got: Vec<(Option<&str>, Option<&str>, &[u32])> = files
            .iter()
            .map(|f| (f.old.as_deref(), f.new.as_deref(), f.touched.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                (Some("x.py"), Some("x.py"), &[2u32][..]),
                (None, Some("tests/test_n.py"), &[1u32][..]),
                (Some("gone.py"), None, &[1u32][..]),
                (Some("old.py"), Some("new.py"), &[][..]),
            ]
        );
        let p = project();
        let s = pick(&p, ChangeInput::Diff(text.into()));
        assert_eq!(
            names(&s),
            ["tests/test_n.py"],
            "a new test file is named by its path"
        );
    }

    #[test]
    fn a_test_whose_file_is_gone_from_the_working_tree_is_left_out_and_counted() {
        let p = project();
        let s = pick(&p, now(&p, &[("tests/test_a.py", ""), ("test_data", "")]));
        assert!(s.tests.is_empty(), "{:?}", s.tests);
        assert_eq!(s.total, 0);
        assert!(s.notes[0].starts_with("3 recorded tests are in files that no longer exist"));
    }

    #[test]
    fn a_diff_past_the_byte_bound_is_refused_naming_the_field() {
        let p = project();
        let text = "+".repeat(MAX_DIFF_BYTES + 1);
        let request = SelectRequest {
            change: Some(ChangeInput::Diff(text)),
            ..SelectRequest::default()
        };
        let e = select(&p, &request, &Default::default()).expect_err("too large");
        assert!(e.to_string().contains("diff"), "{e}");
    }

    #[test]
    fn changed_files_select_every_test_of_a_unit_in_them() {
        let p = project();
        let s = pick(&p, ChangeInput::Files(vec!["./tests/data.json".into()]));
        assert_eq!(names(&s), ["tests/test_a.py::test_data"]);
    }
}
