//! The policy gate in front of every MCP tool call: which tools an agent
//! sees and may call, and how often ([`file`] parses PolicyLayer's
//! `policy.json`, [`gate`] decides and counts).
//!
//! Invariants: no policy file means everything is allowed; a policy file
//! that does not parse is refused at start-up, and a broken edit of a running
//! server's file is refused with a log line while the policy in force stays.

pub mod file;
pub mod gate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

pub use file::{Action, Limit, Policy, PolicyError, Scope, Window};
pub use gate::{Clock, Decision, Gate, SystemClock};

/// How often a running server looks at its policy file for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Loads the policy at `path` for a server whose tools are `known_tools`;
/// the error names the file and the place in it.
pub fn load(path: &Path, known_tools: &[String]) -> anyhow::Result<Policy> {
    Policy::load(path, known_tools).map_err(|e| anyhow::anyhow!("--policy {}: {e}", path.display()))
}

/// What identifies a version of the file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads the policy at `path` into `gate` whenever the file changes, until
/// `shutdown`. The file's modification time and size are polled every
/// [`RELOAD_INTERVAL`], and its content compared, so an editor's
/// rename-into-place is noticed as well as an in-place write.
pub fn watch(
    gate: Arc<Gate>,
    path: PathBuf,
    known_tools: Vec<String>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_stamp = stamp(&path);
        let mut last_text = std::fs::read_to_string(&path).ok();
        let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now_stamp = stamp(&path);
            if now_stamp == last_stamp {
                continue;
            }
            last_stamp = now_stamp;
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot read the changed policy file; the policy in force stays"
                    );
                    continue;
                }
            };
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            match Policy::parse(&text, &known_tools) {
                Ok(policy) => {
                    gate.replace(policy);
                    // A stable line on stderr: people read it, tests wait for it.
                    eprintln!("pytest-mcp: policy reloaded from {}", path.display());
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "the changed policy file is refused; the policy in force stays"
                ),
            }
            last_text = Some(text);
        }
    })
}
