//! The tests a change needs (`affected_tests`, `pytest-mcp affected`): a
//! change described by a client (working tree, changed files, a diff, or a
//! git revision range read in the project's checkout) turned into the
//! selection [`crate::store::affected`] makes, with a reason per test.
//!
//! Reading a working tree needs the project's Python: the checksums of code
//! units are computed from Python's own syntax tree by the plugin's module
//! (`python -m pytest_mcp._working_tree`), so they are the checksums the
//! plugin recorded, by the same code.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::scope::Scope;
use super::{budget_text, count, fit_budget};
use crate::error::{Error, Result};
use crate::model::{SessionRef, UnitKind};
use crate::store::Store;
use crate::store::affected::{
    COMMAND_NODEIDS, ChangeInput, Confidence, CurrentUnit, DepsSnapshot, SelectRequest, Selection,
    normalise_path,
};

/// How the change is described.
#[derive(Debug, Clone)]
pub enum ChangeSpec {
    /// The project's working tree now (needs its Python and checkout).
    WorkingTree,
    /// A git revision (`BASE`: the working tree against it) or range
    /// (`BASE..HEAD`), read with git in the project's checkout.
    Revisions(String),
    /// A change the client described itself.
    Given(ChangeInput),
}

/// What `affected_tests` is asked.
#[derive(Debug, Clone)]
pub struct AffectedQuery {
    /// The change.
    pub change: ChangeSpec,
    /// The node ids collected now, when known.
    pub collected: Option<Vec<String>>,
    /// Watch patterns; empty means the defaults.
    pub watch: Vec<String>,
    /// The project's checkout, when the reader knows it (the CLI's
    /// directory); else the rootdir its newest session recorded.
    pub checkout: Option<PathBuf>,
    /// The Python to read a working tree with; else `PYTEST_MCP_PYTHON`,
    /// the `python` beside this binary, or `python3`.
    pub python: Option<PathBuf>,
    /// Every selected test, not cut to the answer budget.
    pub whole: bool,
}

/// One selected test.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AffectedTestView {
    /// pytest node id (or the path of a new test file).
    pub nodeid: String,
    /// Why it must run.
    pub reason: String,
}

/// Answer of `affected_tests`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AffectedView {
    /// The project looked at.
    pub project: String,
    /// How the change was described.
    pub change: String,
    /// Tests selected.
    pub selected: u64,
    /// Tests the project has (collected now, else recorded).
    pub total: u64,
    /// `exact` when every test had recorded dependencies, `partial` when
    /// some had none (they are selected), `all` when a change to a watched
    /// file or the installed packages selected every test.
    pub confidence: Confidence,
    /// Whether every test is selected.
    pub all: bool,
    /// The selected tests with their reasons, in node id order.
    pub tests: Vec<AffectedTestView>,
    /// What was unknown or forced the answer.
    pub notes: Vec<String>,
    /// A pytest command line that runs the selection (empty when nothing needs to run).
    pub command: String,
    /// Whether tests were left off to fit the answer (`command` still runs them all).
    pub truncated: bool,
    /// The recorded tests not selected (only in the CLI's `--all` answer,
    /// for a client that deselects them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unselected: Vec<String>,
}

/// `affected_tests`' answer for the scope's project.
pub async fn affected(store: &Store, scope: &Scope, q: &AffectedQuery) -> Result<AffectedView> {
    let project = &scope.project;
    let (change, described) = match &q.change {
        ChangeSpec::Given(c) => (c.clone(), c.describe().to_string()),
        ChangeSpec::Revisions(spec) => {
            let checkout = checkout(store, scope, q).await?;
            let spec2 = spec.clone();
            let text = blocking(move || revision_diff(&checkout, &spec2)).await?;
            (ChangeInput::Diff(text), format!("git diff {spec}"))
        }
        ChangeSpec::WorkingTree => {
            let checkout = checkout(store, scope, q).await?;
            let snapshot = store.deps_snapshot(project).await?;
            let (python, watch) = (python(q), q.watch.clone());
            let change =
                blocking(move || working_tree(&checkout, &snapshot, &python, &watch)).await?;
            (change, "working tree".to_string())
        }
    };
    let request = SelectRequest {
        change: Some(change),
        collected: q.collected.clone(),
        watch: q.watch.clone(),
    };
    let (snapshot, selection) = store.affected(project, &request).await?;
    let mut view = AffectedView::new(&snapshot, &selection, described);
    if q.whole {
        view.unselected = selection.unselected;
    }
    if !q.whole && fit_budget(&mut view, |v| &mut v.tests) > 0 {
        view.truncated = true;
    }
    Ok(view)
}

impl AffectedView {
    /// The view of a selection.
    pub fn new(snapshot: &DepsSnapshot, s: &Selection, change: String) -> Self {
        let command = if s.tests.is_empty() {
            String::new()
        } else if s.all {
            "pytest".to_string()
        } else if s.tests.len() > COMMAND_NODEIDS {
            "pytest --mcp --mcp-affected".to_string()
        } else {
            super::rerun_command(s.tests.iter().map(|t| t.nodeid.as_str()))
        };
        AffectedView {
            project: snapshot.project.clone(),
            change,
            selected: s.tests.len() as u64,
            total: s.total,
            confidence: s.confidence,
            all: s.all,
            tests: s
                .tests
                .iter()
                .map(|t| AffectedTestView {
                    nodeid: t.nodeid.clone(),
                    reason: t.reason.clone(),
                })
                .collect(),
            notes: s.notes.clone(),
            command,
            truncated: false,
            unselected: Vec::new(),
        }
    }

    /// Text rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} of {} affected by the {} in project {} (confidence: {})",
            self.selected,
            count(self.total, "test", "tests"),
            self.change,
            self.project,
            self.confidence.as_str(),
        );
        for note in &self.notes {
            let _ = write!(out, "\nnote: {note}");
        }
        for t in &self.tests {
            let _ = write!(out, "\n{}: {}", t.nodeid, t.reason);
        }
        if self.truncated {
            let shown = self.tests.len() as u64;
            let _ = write!(
                out,
                "\n... {} more (the command runs them all)",
                self.selected.saturating_sub(shown)
            );
        }
        if self.command.is_empty() {
            out.push_str("\nnothing needs to run");
        } else {
            let _ = write!(out, "\nrun: {}", self.command);
        }
        budget_text(out)
    }
}

/// Runs a child process's work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a blocking task failed: {e}")))?
}

/// The project's checkout: the reader's, else the rootdir of its newest
/// session, when this machine has it.
async fn checkout(store: &Store, scope: &Scope, q: &AffectedQuery) -> Result<PathBuf> {
    if let Some(dir) = &q.checkout {
        return Ok(dir.clone());
    }
    let newest = store
        .get_session(SessionRef::Latest(Some(scope.project.clone())))
        .await
        .map_err(|e| scope.explain(e))?;
    let root = PathBuf::from(&newest.environment.rootdir);
    if newest.environment.rootdir.is_empty() || !root.is_dir() {
        return Err(Error::precondition(
            "change",
            format!(
                "this server cannot see project {}'s checkout ({}); describe the change \
                 instead: `diff` (a unified diff's text) or `files` (the changed paths)",
                scope.project.name,
                if newest.environment.rootdir.is_empty() {
                    "no rootdir recorded".to_string()
                } else {
                    format!("{} is not here", newest.environment.rootdir)
                }
            ),
        ));
    }
    Ok(root)
}

/// Whether a revision argument is safe to hand to git: no option, no
/// whitespace or control characters.
fn valid_revisions(spec: &str) -> bool {
    !spec.is_empty()
        && spec.len() <= 256
        && !spec.starts_with('-')
        && spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/~^@{}-:".contains(c))
}

/// `git diff SPEC` in the checkout (a single revision: the working tree
/// against it, untracked files as new ones).
pub fn revision_diff(checkout: &Path, spec: &str) -> Result<String> {
    if !valid_revisions(spec) {
        return Err(Error::invalid(
            "revisions",
            format!(
                "{} is not a git revision or range (BASE or BASE..HEAD)",
                crate::model::echo(spec)
            ),
        ));
    }
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(checkout)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::precondition("revisions", format!("cannot run git: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::invalid(
                "revisions",
                format!(
                    "git {} in {}: {}",
                    args.join(" "),
                    checkout.display(),
                    crate::model::echo(err.trim())
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut text = git(&[
        "diff",
        "--no-color",
        "--no-ext-diff",
        "--no-renames",
        "-U0",
        spec,
        "--",
    ])?;
    if !spec.contains("..") {
        // Untracked files are part of the working tree: new files.
        for path in git(&["ls-files", "-o", "--exclude-standard", "-z"])?.split('\0') {
            if !path.is_empty() {
                let _ = write!(
                    text,
                    "diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
                );
            }
        }
    }
    Ok(text)
}

/// What the working-tree reader is given.
#[derive(Serialize)]
struct TreeAsk<'a> {
    rootdir: &'a Path,
    units: Vec<(UnitKind, &'a str, &'a str)>,
    watch: &'a [String],
}

/// What it answers.
#[derive(Deserialize)]
struct TreeNow {
    units: Vec<(UnitKind, String, String, String)>,
    #[serde(default)]
    watched: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    packages: String,
}

/// The Python that reads a working tree.
fn python(q: &AffectedQuery) -> PathBuf {
    if let Some(p) = &q.python {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("PYTEST_MCP_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // Installed with the plugin, this binary sits in the environment's bin/
    // beside the python that has the plugin.
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for name in ["python", "python3"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("python3")
}

/// The current checksums of every unit and file the snapshot names, read
/// from the checkout by the plugin's module in the project's Python.
fn working_tree(
    checkout: &Path,
    snapshot: &DepsSnapshot,
    python: &Path,
    watch: &[String],
) -> Result<ChangeInput> {
    let mut units: Vec<(UnitKind, &str, &str)> = snapshot
        .units
        .iter()
        .map(|u| (u.kind, u.path.as_str(), u.name.as_str()))
        .collect();
    units.sort();
    units.dedup();
    let ask = TreeAsk {
        rootdir: checkout,
        units,
        watch,
    };
    let input = serde_json::to_vec(&ask).map_err(|e| Error::Internal(e.to_string()))?;
    let unavailable = |why: String| {
        Error::precondition(
            "change",
            format!(
                "reading the working tree needs the project's Python with the pytest-mcp \
                 plugin ({why}); set PYTEST_MCP_PYTHON, or describe the change instead \
                 (a diff, the changed files, or a git revision)"
            ),
        )
    };
    let mut child = Command::new(python)
        .args(["-m", "pytest_mcp._working_tree"])
        .current_dir(checkout)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| unavailable(format!("{}: {e}", python.display())))?;
    let mut stdin = child.stdin.take();
    // Written from a thread: a large answer must not block a large question.
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input);
        }
    });
    let out = child
        .wait_with_output()
        .map_err(|e| unavailable(format!("{}: {e}", python.display())))?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(unavailable(format!(
            "{} -m pytest_mcp._working_tree: {}",
            python.display(),
            crate::model::echo(last)
        )));
    }
    let now: TreeNow = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Internal(format!(
            "pytest_mcp._working_tree answered unreadable JSON: {e}"
        ))
    })?;
    Ok(ChangeInput::WorkingTree {
        units: now
            .units
            .into_iter()
            .map(|(kind, path, name, checksum)| CurrentUnit {
                kind,
                path: normalise_path(&path),
                name,
                checksum,
            })
            .collect(),
        watched: now.watched,
        packages: now.packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_that_could_be_an_option_or_a_second_command_is_refused() {
        for bad in ["--output=/etc/passwd", "HEAD; rm -rf /", "a b", "", "$(x)"] {
            assert!(!valid_revisions(bad), "{bad:?}");
        }
        for good in [
            "HEAD",
            "main..feature",
            "v1.2.0",
            "HEAD~3",
            "origin/main...HEAD",
            "abc123^",
        ] {
            assert!(valid_revisions(good), "{good:?}");
        }
    }
}
