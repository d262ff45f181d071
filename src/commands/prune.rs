//! `pytest-mcp prune`: deletes old sessions by a retention policy and gives
//! the space back to the file system; `--dry-run` only shows what would go.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::PruneArgs;
use crate::store::retention::Policy;

/// Prunes what the flags pick and prints what went (or would go).
pub async fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(args.db.location()?).await?;
    let policy = Policy {
        keep_sessions: args.keep_sessions,
        older_than: args.older_than,
        project: args.project.clone(),
    };
    let report = store.prune(&policy, args.dry_run).await?;
    store.shutdown().await;
    let mut out = std::io::stdout().lock();
    let going: Vec<_> = report
        .planned
        .iter()
        .filter(|d| d.spared.is_none())
        .collect();
    let outcomes: u64 = going.iter().map(|d| d.session.outcomes).sum();
    if !report.planned.is_empty() {
        writeln!(
            out,
            "{:<36}  {:<19}  {:<16}  {:<11}  {:>8}  WHY",
            "SESSION", "STARTED (UTC)", "PROJECT", "STATUS", "OUTCOMES"
        )?;
        for d in &report.planned {
            let s = &d.session;
            let why = match d.spared {
                Some(kept) => format!("kept: {kept} ({})", d.reason),
                None => d.reason.clone(),
            };
            writeln!(
                out,
                "{:<36}  {:<19}  {:<16}  {:<11}  {:>8}  {why}",
                s.id,
                super::short_time(s.started_at),
                if s.project.is_empty() {
                    "-"
                } else {
                    &s.project
                },
                s.status.as_str(),
                s.outcomes,
            )?;
        }
    }
    let spared = report.planned.len() - going.len();
    let sessions = |n: usize| {
        if n == 1 {
            "1 session".to_string()
        } else {
            format!("{n} sessions")
        }
    };
    let kept = if spared > 0 {
        format!("; {spared} kept (running or pinned)")
    } else {
        String::new()
    };
    if args.dry_run {
        writeln!(
            out,
            "dry run: would delete {} ({outcomes} outcomes){kept}; nothing was changed",
            sessions(going.len())
        )?;
    } else {
        writeln!(
            out,
            "deleted {} ({} outcomes){kept} in {:.1}s; database {} -> {}{}",
            sessions(report.deleted),
            report.outcomes,
            report.elapsed.as_secs_f64(),
            super::mib(report.bytes_before),
            super::mib(report.bytes_after),
            match (report.shrunk, store.location().sqlite_path().is_some()) {
                (true, _) => "",
                (false, true) => " (this file cannot shrink in place; the freed space is reused)",
                (false, false) => " (PostgreSQL's vacuum reuses the freed space)",
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
