//! The CLI commands that read or maintain the database, one file each; the
//! long-running servers (`serve`, `stdio`) are wired in [`crate::app`].

pub mod affected;
pub mod audit;
pub mod causes;
pub mod compare;
pub mod export;
pub mod flaky;
pub mod history;
pub mod import;
pub mod pin;
pub mod projects;
pub mod prune;
pub mod quarantine;
pub mod regressions;
pub mod sessions;
pub mod show;
pub mod slowest;

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{Format, ScopeArgs};
use crate::store::{Location, Store, StoreConfig};
use crate::views::Scope;
use anyhow::{Context, bail};

/// Opens (creating if needed) the store; the error names the database
/// (a URL without its password).
pub async fn open_store(config: StoreConfig) -> anyhow::Result<Store> {
    let db = config.location.clone();
    let store = open_any(config).await?;
    if store.read_only() {
        let why = match db {
            Location::Sqlite(_) => "its file, directory or file system refuses writes",
            _ => "a standby, or default_transaction_read_only is on",
        };
        bail!(
            "--db {db}: the database is read-only ({why}); pytest-mcp needs to write to it to \
             record"
        );
    }
    Ok(store)
}

/// Opens the store for reading; a read-only database is fine.
async fn open_any(config: StoreConfig) -> anyhow::Result<Store> {
    let db = config.location.clone();
    if let Location::Sqlite(path) = &db
        && path.is_dir()
    {
        bail!(
            "--db {}: is a directory; give the database file's path, e.g. {}",
            path.display(),
            path.join("pytest-mcp.db").display()
        );
    }
    match Store::open(config).await {
        Ok(store) => Ok(store),
        Err(crate::error::Error::Unavailable(why)) => bail!("opening the database {db}: {why}"),
        Err(e) => Err(e).with_context(|| format!("opening the database {db}")),
    }
}

/// Opens an existing database for a reading command.
pub async fn open_existing(location: Location) -> anyhow::Result<Store> {
    if !location.exists() && !matches!(&location, Location::Sqlite(p) if p.is_dir()) {
        bail!(
            "no database at {location} (nothing recorded yet; start `pytest-mcp serve`, or pass --db)"
        );
    }
    open_any(StoreConfig::new(location)).await
}

/// Opens the database of a reading command and finds the project it reads.
pub async fn open_scope(args: &ScopeArgs) -> anyhow::Result<(Store, Scope)> {
    let store = open_existing(args.db.location()?).await?;
    let scope = Scope::resolve(&store, args.project.as_deref(), &args.default_project()).await?;
    Ok((store, scope))
}

/// Prints a view as its text rendering or as the JSON of the MCP tool's
/// structured result.
pub fn print_view<V: serde::Serialize>(
    format: Format,
    view: &V,
    text: String,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => writeln!(out, "{text}")?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, view)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-24 09:14:38` (UTC).
pub fn short_time(t: crate::model::Timestamp) -> String {
    let text = t.to_rfc3339();
    // 2026-11-24T09:14:38.123456Z -> 2026-11-24 09:14:38
    text.get(..19).map(|s| s.replace('T', " ")).unwrap_or(text)
}

/// `1.25s`, or `3m07s` from a minute on.
pub fn duration_text(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.2}s")
    } else {
        let s = seconds.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
