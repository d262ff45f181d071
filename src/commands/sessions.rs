//! `pytest-mcp sessions`: recent sessions as a table.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::SessionsArgs;
use crate::store::SessionFilter;

/// Prints the newest sessions of the project (or of every project).
pub async fn run(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.scope).await?;
    let filter = SessionFilter {
        statuses: args.status.into_iter().collect(),
        project: (!args.all_projects).then(|| scope.project.clone()),
    };
    let page = store.list_sessions(filter, args.limit.max(1), None).await?;
    let mut out = std::io::stdout().lock();
    if page.items.is_empty() {
        if args.all_projects || scope.known.is_empty() {
            writeln!(out, "no sessions recorded in {}", store.location())?;
        } else {
            writeln!(
                out,
                "no sessions of project {} recorded in {}; --project NAME for another, \
                 `pytest-mcp projects` lists them",
                scope.project,
                store.location()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<19}  {:<11}  {:<6}  {:<16}  {:>7}  {:>7}  {:>6}  {:>6}  {:>7}  {:>9}",
        "ID",
        "STARTED (UTC)",
        "RESULT",
        "SOURCE",
        "PROJECT",
        "TESTS",
        "PASSED",
        "FAILED",
        "ERRORS",
        "SKIPPED",
        "DURATION"
    )?;
    for s in &page.items {
        let mut project = s.environment.project.clone();
        if project.chars().count() > 16 {
            project = project.chars().take(15).collect::<String>() + "…";
        }
        writeln!(
            out,
            "{:<36}  {:<19}  {:<11}  {:<6}  {:<16}  {:>7}  {:>7}  {:>6}  {:>6}  {:>7}  {:>9}",
            s.id,
            super::short_time(s.started_at),
            crate::views::session::result_of(s),
            s.source.as_str(),
            project,
            s.outcomes_stored,
            s.counts.passed,
            s.counts.failed,
            s.counts.errors,
            s.counts.skipped,
            s.summary
                .as_ref()
                .map(|x| super::duration_text(x.duration))
                .unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
