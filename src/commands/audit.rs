//! `pytest-mcp audit`: the newest MCP tool calls and what the policy decided.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::AuditArgs;

/// Prints the newest audit rows.
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(args.db.location()?).await?;
    let rows = store.recent_audit(args.limit.max(1)).await?;
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "no MCP tool calls recorded in {}", store.location())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<19}  {:<24}  {:<9}  {:<22}  {:<8}  {:<6}  {:>9}  REASON",
        "TIME (UTC)", "GRANT", "TRANSPORT", "TOOL", "DECISION", "RESULT", "DURATION"
    )?;
    let cut = |text: &str, n: usize| -> String {
        if text.chars().count() > n {
            text.chars().take(n - 1).collect::<String>() + "…"
        } else {
            text.to_string()
        }
    };
    for r in &rows {
        let reason = r
            .reason
            .as_deref()
            .and_then(|t| t.lines().next())
            .unwrap_or("");
        writeln!(
            out,
            "{:<19}  {:<24}  {:<9}  {:<22}  {:<8}  {:<6}  {:>9}  {}",
            super::short_time(r.at),
            cut(&r.grant, 24),
            r.transport,
            cut(&r.tool, 22),
            r.decision,
            r.result.as_deref().unwrap_or("-"),
            format!("{:.1}ms", r.duration_us as f64 / 1000.0),
            cut(reason, 160),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
