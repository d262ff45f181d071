//! `pytest-mcp show`: a session's summary and every failure with its
//! traceback, grouped by cause (the failure fingerprints of
//! [`crate::store::fingerprint`]), the largest cause first.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::ShowArgs;
use crate::model::SessionRef;
use crate::views::count;

/// Prints the session and its failures (the first `--limit` in full).
pub async fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.scope).await?;
    let session_ref = SessionRef::parse(&args.session, "SESSION")?.scoped(&scope.project);
    let s = store
        .get_session(session_ref)
        .await
        .map_err(|e| scope.explain(e))?;
    let mut out = std::io::stdout().lock();
    let env = &s.environment;
    writeln!(out, "session   {}", s.id)?;
    writeln!(
        out,
        "result    {} (status {}, source {})",
        crate::views::session::result_of(&s),
        s.status,
        s.source
    )?;
    writeln!(
        out,
        "started   {}{}",
        super::short_time(s.started_at),
        s.finished_at
            .map(|f| format!("   finished {}", super::short_time(f)))
            .unwrap_or_default()
    )?;
    if let Some(grant) = store.session_grant(s.id).await? {
        writeln!(out, "grant     {grant}")?;
    }
    if s.pinned {
        writeln!(
            out,
            "pinned    kept out of pruning (pytest-mcp unpin releases it)"
        )?;
    }
    if !env.project.is_empty() || !env.rootdir.is_empty() {
        writeln!(out, "project   {}  {}", env.project, env.rootdir)?;
    }
    if !env.python_version.is_empty() || !env.os.is_empty() {
        writeln!(
            out,
            "python    {} {}  pytest {}  on {}",
            env.python_implementation, env.python_version, env.pytest_version, env.os
        )?;
    }
    if !env.git_commit.is_empty() {
        writeln!(
            out,
            "git       {} {}{}",
            env.git_branch,
            env.git_commit,
            if env.git_dirty == Some(true) {
                " (dirty)"
            } else {
                ""
            }
        )?;
    }
    if let Some(code) = env.code_identity() {
        writeln!(out, "code      {code}")?;
    }
    let c = s.counts;
    writeln!(
        out,
        "stored    {} outcomes: {} passed, {} failed, {} errors, {} skipped, {} xfailed, {} xpassed",
        s.outcomes_stored, c.passed, c.failed, c.errors, c.skipped, c.xfailed, c.xpassed
    )?;
    if let Some(sum) = &s.summary {
        writeln!(
            out,
            "summary   {} tests: {} passed, {} failed, {} errors, {} skipped, {} xfailed, {} xpassed; exit status {}; {}",
            sum.total_tests,
            sum.passed,
            sum.failed,
            sum.errors,
            sum.skipped,
            sum.xfailed,
            sum.xpassed,
            sum.exitstatus,
            super::duration_text(sum.duration)
        )?;
    }
    if let Some(expected) = s.outcomes_expected
        && expected > s.outcomes_stored
    {
        writeln!(
            out,
            "missing   {} of {} outcomes the client sent are not stored",
            expected - s.outcomes_stored,
            expected
        )?;
    }
    // Failures grouped by cause, the largest cause first; within a cause, in
    // the order they happened.
    let causes = store.session_causes(SessionRef::Id(s.id), None).await?;
    // Only the failures printed are read whole.
    let failures: std::collections::HashMap<u64, _> = store
        .outcomes_at(
            s.id,
            causes
                .clusters
                .iter()
                .flat_map(|c| c.seqs.iter().copied())
                .take(args.limit)
                .collect(),
        )
        .await?
        .into_iter()
        .map(|o| (o.seq, o))
        .collect();
    let named: std::collections::HashMap<String, String> = store
        .describe(s.id, &causes.clusters)
        .await?
        .into_iter()
        .map(|d| (d.cluster.key, d.fingerprint.describe()))
        .collect();
    let causes = causes.clusters;
    let total: usize = causes.iter().map(|c| c.seqs.len()).sum();
    let flaky = store
        .known_flaky(
            crate::views::FLAKY_WINDOW,
            &scope.project_of(&s),
            failures.values().map(|o| o.nodeid.clone()).collect(),
        )
        .await?;
    let mut shown = 0usize;
    let mut rerun: Vec<String> = Vec::new();
    for cause in &causes {
        if shown >= args.limit {
            break;
        }
        writeln!(
            out,
            "\ncause     {} ({}, {}): {}",
            cause.key,
            count(cause.failures(), "failure", "failures"),
            count(cause.tests.len() as u64, "test", "tests"),
            named.get(&cause.key).map_or("", String::as_str)
        )?;
        for o in cause.seqs.iter().filter_map(|seq| failures.get(seq)) {
            if shown >= args.limit {
                break;
            }
            shown += 1;
            rerun.push(o.nodeid.clone());
            writeln!(out)?;
            writeln!(
                out,
                "{}{} {} [{}{}] {}",
                o.outcome.as_str().to_uppercase(),
                crate::views::session::labels(o.quarantined, flaky.contains_key(&o.nodeid)),
                if o.is_subtest() {
                    format!("{} {}", o.nodeid, o.subtest)
                } else {
                    o.nodeid.clone()
                },
                o.phase.map(|p| p.as_str()).unwrap_or("?"),
                if o.attempt > 1 {
                    format!(", attempt {}", o.attempt)
                } else {
                    String::new()
                },
                super::duration_text(o.duration)
            )?;
            if !o.message.is_empty() {
                writeln!(out, "  {}", o.message)?;
            }
            for (name, value) in &o.user_properties {
                writeln!(out, "  property {name} = {value}")?;
            }
            for line in o.longrepr.lines() {
                writeln!(out, "  | {line}")?;
            }
        }
    }
    if total > shown {
        writeln!(
            out,
            "\n{} not shown: --limit {total} shows them all, or `pytest-mcp causes {}`",
            count((total - shown) as u64, "more failure", "more failures"),
            &s.id.to_string()[..8]
        )?;
    }
    if shown > 0 {
        writeln!(
            out,
            "\nrerun: {}",
            crate::views::rerun_command(rerun.iter().map(String::as_str))
        )?;
    }
    if shown == 0 {
        writeln!(out, "\nno failures")?;
    }
    Ok(ExitCode::SUCCESS)
}
