//! `pytest-mcp quarantine add|list|remove`: the quarantine entries a plugin
//! run with `--mcp-quarantine` fetches at its start.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{QuarantineAction, QuarantineArgs};
use crate::model::{QuarantineEntry, Timestamp};
use crate::store::StoreConfig;
use crate::store::quarantine::{self, NewQuarantine, RELEASE_AFTER};

/// Runs one quarantine subcommand.
pub async fn run(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        QuarantineAction::Add(a) => {
            // Quarantining before anything was recorded is fine: the entry
            // waits for the first run.
            let store = super::open_store(StoreConfig::new(a.db.location()?)).await?;
            let by =
                a.by.or_else(|| std::env::var("USER").ok())
                    .unwrap_or_else(|| "cli".to_string());
            let added = store
                .quarantine(NewQuarantine {
                    pattern: a.nodeid,
                    project: a.project.unwrap_or_default(),
                    reason: a.reason,
                    added_by: by,
                    days: Some(a.days),
                })
                .await;
            store.shutdown().await;
            let added = added?;
            println!(
                "{} {}",
                if added.renewed {
                    "renewed:"
                } else {
                    "quarantined:"
                },
                line(&added.entry)
            );
        }
        QuarantineAction::Remove(a) => {
            let store = super::open_existing(a.db.location()?).await?;
            let gone = store
                .release(&a.nodeid, a.project.as_deref().unwrap_or_default())
                .await;
            store.shutdown().await;
            println!("released: {}", line(&gone?));
        }
        QuarantineAction::List(a) => {
            let store = super::open_existing(a.scope.db.location()?).await?;
            // Entries may wait for a project's first run: a project named
            // here need not have sessions yet.
            let default = match &a.scope.project {
                Some(name) => crate::views::DefaultProject::Named(name.clone()),
                None => a.scope.default_project(),
            };
            let scope = crate::views::Scope::resolve(&store, None, &default).await?;
            let now = Timestamp::now();
            let statuses = store.quarantine_status(&scope.project, now).await?;
            let expired = if a.all {
                let mut all = store
                    .quarantine_list(Some(&scope.project.name), true, now)
                    .await?;
                all.retain(|e| !quarantine::is_active(e, now));
                all
            } else {
                Vec::new()
            };
            let mut out = std::io::stdout().lock();
            if statuses.is_empty() && expired.is_empty() {
                writeln!(out, "no test is quarantined in {}", store.location())?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<19}  {:<18}  {:<16}  {:<28}  PATTERN  (REASON)",
                "EXPIRES (UTC)", "STATUS", "PROJECT", "BY"
            )?;
            let row = |out: &mut std::io::StdoutLock<'_>, e: &QuarantineEntry, status: &str| {
                writeln!(
                    out,
                    "{:<19}  {:<18}  {:<16}  {:<28}  {}  ({})",
                    super::short_time(e.expires_at),
                    status,
                    if e.project.is_empty() {
                        "(every)"
                    } else {
                        &e.project
                    },
                    e.added_by,
                    e.pattern,
                    e.reason
                )
            };
            for s in &statuses {
                let status = if s.release_suggested {
                    "release suggested".to_string()
                } else {
                    match s.tests.as_slice() {
                        [t] => format!("passing {}/{RELEASE_AFTER}", t.passed_in_a_row),
                        tests => format!("{} tests", tests.len()),
                    }
                };
                row(&mut out, &s.entry, &status)?;
            }
            for e in &expired {
                row(&mut out, e, "expired")?;
            }
            let suggested = statuses.iter().filter(|s| s.release_suggested).count();
            if suggested > 0 {
                writeln!(
                    out,
                    "{suggested} entries passed their last {RELEASE_AFTER} runs: `pytest-mcp quarantine remove NODEID` releases one"
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `PATTERN (project P) until TIME: REASON [by WHO]`.
fn line(e: &QuarantineEntry) -> String {
    let scope = if e.project.is_empty() {
        " (every project)".to_string()
    } else {
        format!(" (project {})", e.project)
    };
    format!(
        "{}{scope} until {} UTC: {} [by {}]",
        e.pattern,
        super::short_time(e.expires_at),
        e.reason,
        e.added_by
    )
}
