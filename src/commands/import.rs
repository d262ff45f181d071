//! `pytest-mcp import`: replays spool files into the database.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::ImportArgs;
use crate::store::StoreConfig;

/// Imports every file; exits 1 if any line could not be stored.
pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(StoreConfig {
        keep_passing_output: args.output.keep_passing_output,
        ..StoreConfig::new(args.db.location()?)
    })
    .await?;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for file in &args.files {
        let report = crate::spool::import_file_as(&store, file, args.source.into()).await?;
        for s in &report.sessions {
            writeln!(
                out,
                "{}: session {} {}: {} outcomes read, {} new, {} stored; {}",
                file.display(),
                s.id,
                if s.created { "created" } else { "existing" },
                s.outcomes_read,
                s.outcomes_new,
                s.outcomes_stored,
                s.status
            )?;
        }
        for e in &report.errors {
            eprintln!("pytest-mcp: import: {e}");
        }
        failed |= !report.errors.is_empty();
    }
    store.shutdown().await;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
