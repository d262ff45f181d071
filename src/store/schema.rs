//! The SQLite schema, as an append-only list of migrations tracked by
//! `PRAGMA user_version`, and the connection settings every connection uses.
//!
//! Never edit a migration that has shipped: append a new one. `migrate` is
//! idempotent, so opening a file twice (or from two processes) is safe.

use rusqlite::{Connection, TransactionBehavior};
use std::time::Duration;

use crate::error::Result;

/// The migrations, in order; migration `i` moves `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: sessions and outcomes.
    r#"
    CREATE TABLE sessions (
        pk                INTEGER PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,      -- client-chosen UUID
        source            TEXT NOT NULL,             -- plugin | mcp | import
        status            TEXT NOT NULL,             -- running | finished | interrupted | incomplete
        started_at        INTEGER NOT NULL,          -- microseconds since the Unix epoch
        finished_at       INTEGER,
        project           TEXT,                      -- copied out of environment for filtering
        git_commit        TEXT,                      -- copied out of environment for flakiness queries
        environment       TEXT NOT NULL,             -- JSON
        summary           TEXT,                      -- JSON, set by finish
        exitstatus        INTEGER,
        outcomes_expected INTEGER,
        outcomes_stored   INTEGER NOT NULL DEFAULT 0, -- highest contiguous seq
        n_passed          INTEGER NOT NULL DEFAULT 0,
        n_failed          INTEGER NOT NULL DEFAULT 0,
        n_skipped         INTEGER NOT NULL DEFAULT 0,
        n_errors          INTEGER NOT NULL DEFAULT 0,
        n_xfailed         INTEGER NOT NULL DEFAULT 0,
        n_xpassed         INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_by_start ON sessions (started_at DESC, pk DESC);
    CREATE INDEX sessions_by_project ON sessions (project, started_at DESC, pk DESC);

    -- The rowid is (session pk << 32 | seq): the (session, seq) key costs no
    -- extra index, a second copy of a seq cannot be stored, and a session's
    -- outcomes are one contiguous rowid range.
    CREATE TABLE outcomes (
        id          INTEGER PRIMARY KEY,
        session_pk  INTEGER NOT NULL REFERENCES sessions (pk),
        seq         INTEGER NOT NULL,
        nodeid      TEXT NOT NULL,
        outcome     TEXT NOT NULL,   -- passed | failed | skipped | error | xfailed | xpassed
        phase       TEXT,            -- collect | setup | call | teardown
        duration    REAL NOT NULL,
        message     TEXT,
        longrepr    TEXT,
        stdout      TEXT,
        stderr      TEXT,
        log         TEXT,
        file        TEXT,
        line        INTEGER,
        markers     TEXT,            -- JSON array
        worker      TEXT,
        attempt     INTEGER NOT NULL,
        started_at  INTEGER
    );
    -- A session's failures: a partial index holds only the few rows that failed.
    CREATE INDEX outcomes_failures ON outcomes (session_pk, seq)
        WHERE outcome IN ('failed', 'error');
    -- One test's history across sessions.
    CREATE INDEX outcomes_by_nodeid ON outcomes (nodeid);
    "#,
    // 2: the audit trail of MCP tool calls, and the grant a session was
    // recorded under. `grant` is an SQL keyword, hence `grant_name`.
    r#"
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,   -- microseconds since the Unix epoch
        grant_name  TEXT NOT NULL,      -- token's grant, else mcp-session:ID or stdio
        transport   TEXT NOT NULL,      -- stdio | http
        tool        TEXT NOT NULL,
        decision    TEXT NOT NULL,      -- allowed | denied | limited | unknown
        result      TEXT,               -- ok | error, for allowed calls
        reason      TEXT,               -- why a call was refused, or the tool's error
        duration_us INTEGER NOT NULL
    );
    ALTER TABLE sessions ADD COLUMN grant_name TEXT;
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How SQLite makes a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sync {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a crash of the
    /// process (SIGKILL); a power loss may lose the last commits, never
    /// corrupting the file.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced and survives a power loss.
    Full,
}

/// Applies the settings every connection of this process uses.
pub fn configure(conn: &Connection, sync: Sync) -> Result<()> {
    // Another process (a `serve` beside an agent's `stdio`) may hold the write
    // lock for a moment; wait for it instead of failing.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match sync {
        Sync::Normal => "NORMAL",
        Sync::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(crate::error::Error::Internal(format!(
                "the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}; upgrade pytest-mcp"
            )));
        }
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_leaves_the_schema_at_the_latest_version() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t.db");
        for _ in 0..2 {
            let mut conn = Connection::open(&path)?;
            configure(&conn, Sync::Normal)?;
            migrate(&mut conn)?;
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            assert_eq!(v, SCHEMA_VERSION);
        }
        Ok(())
    }

    #[test]
    fn a_newer_schema_is_refused_instead_of_misread() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut conn = Connection::open(dir.path().join("t.db"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
        let err = migrate(&mut conn).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        Ok(())
    }
}
