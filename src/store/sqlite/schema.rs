//! The SQLite schema, as an append-only list of migrations tracked by
//! `PRAGMA user_version`, and the connection settings every connection uses.
//!
//! Never edit a migration that has shipped: append a new one. `migrate` is
//! idempotent, so opening a file twice (or from two processes) is safe.
//!
//! The schema since version 3, and why it is shaped so:
//! - `tests` interns each (nodeid, subtest) once; outcomes refer to it by a
//!   small integer. Its `first_pk` is the oldest session that holds the test,
//!   so a history read never looks at older sessions.
//! - `outcomes` rows are narrow: small integers for the kind and phase, the
//!   start as microseconds after the session's, the file only when it is not
//!   the nodeid's own path, markers as an interned set. The rowid is
//!   (session pk << 32 | seq): a session's outcomes are one contiguous range,
//!   appended at the end of the table.
//! - While a session runs, its outcomes are only ever appended: no index is
//!   updated at random whatever the test order (the only index on
//!   `outcomes` is a partial one of failures, keyed by session). When it
//!   closes, `session_tests` (session, test, seq, kind) is written for it in
//!   test order, answering "how did test T do in session S" for history and
//!   stability, and `digests` hold the whole session in one blob for
//!   comparisons and flaky-test searches ([`crate::store::digest`]). A
//!   session still taking outcomes (running, or incomplete) is read from
//!   its rows.
//! - Large text (tracebacks, captured output, long messages, properties)
//!   lives in `details`, one zstd blob per outcome that has any
//!   ([`crate::store::detail`]).
//! - `sessions.pk` is AUTOINCREMENT, so a pruned session's pk (and with it
//!   its outcomes' rowid range) is never reused; `doomed` holds the pks of
//!   deleted sessions whose rows are still being removed in steps.
//! - `auto_vacuum = INCREMENTAL` lets pruning give the space back in steps.
//! - Since version 4, `causes` names each failure fingerprint of a project
//!   once and `cause_sessions` says which sessions (by id) failed of it, when
//!   and how often; both are written when a session finishes and outlive
//!   pruning, so that a cause stays known ([`crate::store::fingerprint`]).
//! - Since version 5, each failing outcome's row carries its cause's key
//!   (`cause`), computed once when it is stored; the cause is named in
//!   `causes` as it is first stored, and `cause_sessions` is written when a
//!   session closes, from the keys. Counting a session's clusters reads
//!   keys through the failures index, never a traceback.
//! - Since version 8, `sessions.code_state` names the code a session
//!   tested (the commit plus a digest of uncommitted changes); two runs of a
//!   test are compared for flakiness only when it is equal.
//! - Since version 9, per-test dependencies ([`crate::store::deps`]):
//!   `dep_units` holds each code unit of a project once (by its client key),
//!   `dep_sets` each distinct set of units once (by its digest), and an
//!   outcome's `deps` names its set. A closed session's digest row carries
//!   each attempt's set (`digests.deps`), so reading what many sessions'
//!   tests depended on reads one blob per session. Projects are keyed by
//!   their lower-cased name, so every spelling of one shares its units.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::{Phase, TestOutcome};
use crate::store::fingerprint::StoredCause;
use crate::store::{deps, detail};

/// One step of the schema's history.
enum Migration {
    /// Plain SQL.
    Sql(&'static str),
    /// A conversion that needs code (interning, compression).
    Code(fn(&Transaction<'_>) -> Result<()>),
}

/// The migrations, in order; migration `i` moves `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    // 1: sessions and outcomes.
    Migration::Sql(
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
    ),
    // 2: the audit trail of MCP tool calls, and the grant a session was
    // recorded under. `grant` is an SQL keyword, hence `grant_name`.
    Migration::Sql(
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
    ),
    // 3: interned tests, narrow outcome rows, compressed details, pinning and
    // pruning (see the module docs).
    Migration::Code(to_interned_outcomes),
    // 4: the causes of failures (failure fingerprints) each closed session
    // had, by project. Keyed by the session's id, not its pk: what was seen
    // stays known when the session is pruned.
    Migration::Sql(
        r#"
    CREATE TABLE causes (
        pk      INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        key     TEXT NOT NULL,   -- the fingerprint's key
        cause   TEXT NOT NULL,   -- the fingerprint in words
        UNIQUE (project, key)
    );
    CREATE TABLE cause_sessions (
        cause_pk   INTEGER NOT NULL REFERENCES causes (pk),
        session    TEXT NOT NULL,      -- the session's id
        started_at INTEGER NOT NULL,   -- its start, microseconds since the Unix epoch
        failures   INTEGER NOT NULL,
        PRIMARY KEY (cause_pk, session)
    ) WITHOUT ROWID;
    "#,
    ),
    // 5: each failure's cause stored beside it; the failures stored before
    // are fingerprinted here, and closed sessions' causes recorded.
    Migration::Code(to_stored_causes),
    // 6: quarantine entries, and whether an outcome's test was quarantined
    // when it ran. Entries are keyed by what they name, not by a session:
    // they outlive every session they applied to.
    Migration::Sql(
        r#"
    CREATE TABLE quarantine (
        project    TEXT NOT NULL,      -- '' for every project
        pattern    TEXT NOT NULL,      -- a nodeid or an fnmatch pattern of nodeids
        reason     TEXT NOT NULL,
        added_by   TEXT NOT NULL,
        added_at   INTEGER NOT NULL,   -- microseconds since the Unix epoch
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (project, pattern)
    ) WITHOUT ROWID;
    ALTER TABLE outcomes ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
    "#,
    ),
    // 7: which tests each cause has broken, by nodeid (tests may be removed
    // when pruned; what a cause broke is kept like the cause), filled in
    // from the closed sessions recorded so far.
    Migration::Sql(
        r#"
    CREATE TABLE cause_tests (
        cause_pk INTEGER NOT NULL REFERENCES causes (pk),
        nodeid   TEXT NOT NULL,
        PRIMARY KEY (cause_pk, nodeid)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO cause_tests (cause_pk, nodeid)
        SELECT DISTINCT c.pk, t.nodeid FROM outcomes o
        JOIN sessions s ON s.pk = o.session_pk
        JOIN tests t ON t.id = o.test_id
        JOIN causes c ON c.project = COALESCE(s.project, '') AND c.key = o.cause
        WHERE o.kind IN (2, 4) AND o.cause IS NOT NULL
          AND EXISTS (SELECT 1 FROM cause_sessions cs WHERE cs.session = s.id);
    "#,
    ),
    // 8: the code each session tested (`code_state`: what flakiness
    // compares) and its branch (what regressions compare within), copied
    // out of the environment like the commit. Sessions recorded before it
    // have no code state, except those on a clean checkout: their commit
    // alone names their code exactly.
    Migration::Sql(
        r#"
    ALTER TABLE sessions ADD COLUMN code_state TEXT;
    ALTER TABLE sessions ADD COLUMN git_branch TEXT;
    UPDATE sessions SET code_state = git_commit
        WHERE git_commit IS NOT NULL AND git_commit <> ''
          AND json_extract(environment, '$.git_dirty') = 0;
    UPDATE sessions SET git_branch = json_extract(environment, '$.git_branch')
        WHERE json_extract(environment, '$.git_branch') <> '';
    "#,
    ),
    // 9: per-test dependencies (see the module docs). Sessions recorded
    // before it have none: their outcomes' `deps` stay NULL.
    Migration::Sql(
        r#"
    CREATE TABLE dep_units (
        id         INTEGER PRIMARY KEY,
        project    TEXT NOT NULL,      -- the project's name lower-cased
        key        INTEGER NOT NULL,   -- CodeUnit.key (u64 bits)
        code       INTEGER NOT NULL,   -- CodeUnit.code (u64 bits)
        kind       INTEGER NOT NULL,   -- 1 function 2 class 3 module 4 file
        path       TEXT NOT NULL,
        name       TEXT NOT NULL,
        line_start INTEGER NOT NULL,
        line_end   INTEGER NOT NULL,
        checksum   TEXT NOT NULL,
        UNIQUE (project, key)
    );
    CREATE TABLE dep_sets (
        id      INTEGER PRIMARY KEY,
        project TEXT NOT NULL,         -- the project's name lower-cased
        digest  BLOB NOT NULL,         -- SHA-256 of the sorted unit keys, 16 bytes
        code    INTEGER NOT NULL,      -- digest of the units' codes (u64 bits)
        units   BLOB NOT NULL,         -- sorted dep_units ids as varint deltas
        UNIQUE (project, digest)
    );
    ALTER TABLE outcomes ADD COLUMN deps INTEGER;   -- dep_sets.id; NULL: not recorded
    ALTER TABLE digests ADD COLUMN deps BLOB;       -- each attempt's set (crate::store::deps)
    -- Bumped whenever sets or units are removed, so writers drop cached ids.
    INSERT INTO meta (key, value) VALUES ('deps_generation', 0);
    "#,
    ),
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
    // Takes effect only on a new, empty file; an older file is switched over
    // after its migration (see `migrate`). Setting it writes page 1 even when
    // it is already on, so only set it when it is not: opening must not write.
    if conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0))? != 2 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // After a checkpoint, a WAL that a large write grew is cut back to this.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    let sync = match sync {
        Sync::Normal => "NORMAL",
        Sync::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Applies the settings of a read connection: it waits for locks like every
/// connection, and may not write.
pub fn configure_reader(conn: &Connection, sync: Sync) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // `rarray(?)`: a list of ids as one parameter.
    rusqlite::vtab::array::load_module(conn)?;
    let sync = match sync {
        Sync::Normal => "NORMAL",
        Sync::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let mut upgraded_from = None;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Internal(format!(
                "the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}; upgrade pytest-mcp"
            )));
        }
        let Some(migration) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            break;
        };
        let has_data: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'outcomes')",
            [],
            |r| r.get(0),
        )?;
        if has_data && upgraded_from.is_none() {
            upgraded_from = Some(version);
        }
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql)?,
            Migration::Code(f) => f(&tx)?,
        }
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    // A file made before version 3 has no incremental vacuum; switching it on
    // takes one VACUUM, which cannot run inside a transaction. If it fails
    // (another process reading, too little disk for the copy), pruning still
    // works and reuses the freed pages; only the file does not shrink.
    let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if auto_vacuum != 2 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        if let Err(e) = conn.execute_batch("VACUUM") {
            tracing::warn!(error = %e, "cannot turn on incremental vacuum; pruned space will be reused but not returned to the file system");
        }
    }
    if let Some(from) = upgraded_from {
        tracing::info!(from, to = SCHEMA_VERSION, "database schema upgraded");
    }
    Ok(())
}

pub use crate::store::codes::{
    file_column, file_from_column, kind_code, kind_of, phase_code, phase_of,
};

/// The version 3 tables; the sessions table under a temporary name.
const V3_TABLES: &str = r#"
    CREATE TABLE sessions_v3 (
        pk                INTEGER PRIMARY KEY AUTOINCREMENT,
        id                TEXT NOT NULL UNIQUE,      -- client-chosen UUID
        source            TEXT NOT NULL,             -- plugin | mcp | import
        status            TEXT NOT NULL,             -- running | finished | interrupted | incomplete
        started_at        INTEGER NOT NULL,          -- microseconds since the Unix epoch
        finished_at       INTEGER,
        project           TEXT,                      -- copied out of environment for filtering
        git_commit        TEXT,                      -- copied out of environment for flakiness
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
        n_xpassed         INTEGER NOT NULL DEFAULT 0,
        grant_name        TEXT,                      -- the token's grant it was recorded under
        pinned            INTEGER NOT NULL DEFAULT 0 -- kept out of every pruning
    );

    CREATE TABLE tests (
        id       INTEGER PRIMARY KEY,
        nodeid   TEXT NOT NULL,
        subtest  TEXT NOT NULL DEFAULT '',  -- '' for the test itself
        first_pk INTEGER NOT NULL,          -- no older session holds it
        UNIQUE (nodeid, subtest)
    );

    CREATE TABLE marker_sets (
        id      INTEGER PRIMARY KEY,
        markers TEXT NOT NULL UNIQUE        -- JSON array of marker names
    );

    CREATE TABLE outcomes_v3 (
        id         INTEGER PRIMARY KEY,     -- session pk << 32 | seq
        session_pk INTEGER NOT NULL,
        test_id    INTEGER NOT NULL,        -- tests.id
        kind       INTEGER NOT NULL,        -- 1 passed 2 failed 3 skipped 4 error 5 xfailed 6 xpassed
        phase      INTEGER,                 -- 1 collect 2 setup 3 call 4 teardown
        duration   REAL NOT NULL,
        attempt    INTEGER NOT NULL,
        line       INTEGER,
        start_us   INTEGER,                 -- microseconds after the session's started_at
        markers    INTEGER,                 -- marker_sets.id
        message    TEXT,                    -- up to 256 bytes; longer ones are in details
        worker     TEXT,
        file       TEXT                     -- NULL: the nodeid's own path
    );

    -- Large text of the outcome with the same id (crate::store::detail).
    CREATE TABLE details (
        id   INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );

    -- A closed session's tests in one blob (crate::store::digest), for
    -- comparisons and flaky-test searches over many sessions.
    -- `tests` first: a read of it alone stops before the durations' pages.
    CREATE TABLE digests (
        session_pk INTEGER PRIMARY KEY,
        tests      BLOB NOT NULL,
        durations  BLOB NOT NULL
    );

    -- Which outcomes of a closed session are which test's, for reads by test
    -- (history, stability, messages). Written in test order when the session
    -- closes, so a running session's outcomes are only ever appended; an
    -- open session (running, incomplete) is read from its rows.
    CREATE TABLE session_tests (
        session_pk INTEGER NOT NULL,
        test_id    INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        kind       INTEGER NOT NULL,
        PRIMARY KEY (session_pk, test_id, seq)
    ) WITHOUT ROWID;

    -- Sessions deleted by pruning whose rows are still being removed.
    CREATE TABLE doomed (pk INTEGER PRIMARY KEY);

    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    -- Bumped whenever tests rows are removed, so writers drop cached test ids.
    INSERT INTO meta (key, value) VALUES ('tests_generation', 0);
"#;

const V3_INDEXES: &str = r#"
    ALTER TABLE sessions_v3 RENAME TO sessions;
    ALTER TABLE outcomes_v3 RENAME TO outcomes;
    CREATE INDEX sessions_by_start ON sessions (started_at DESC, pk DESC);
    CREATE INDEX sessions_by_project ON sessions (project, started_at DESC, pk DESC);
    -- A session's failures: a partial index holds only the few rows that failed.
    CREATE INDEX outcomes_failures ON outcomes (session_pk) WHERE kind IN (2, 4);
"#;

/// Migration 3: copies sessions and outcomes into the version 3 tables.
fn to_interned_outcomes(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(V3_TABLES)?;
    tx.execute_batch(
        "INSERT INTO sessions_v3 (pk, id, source, status, started_at, finished_at, project,
             git_commit, environment, summary, exitstatus, outcomes_expected, outcomes_stored,
             n_passed, n_failed, n_skipped, n_errors, n_xfailed, n_xpassed, grant_name)
         SELECT pk, id, source, status, started_at, finished_at, project, git_commit,
             environment, summary, exitstatus, outcomes_expected, outcomes_stored,
             n_passed, n_failed, n_skipped, n_errors, n_xfailed, n_xpassed, grant_name
         FROM sessions",
    )?;
    {
        let mut read = tx.prepare(
            "SELECT o.id, o.session_pk, o.nodeid, o.outcome, o.phase, o.duration, o.message,
                    o.longrepr, o.stdout, o.stderr, o.log, o.file, o.line, o.markers, o.worker,
                    o.attempt, o.started_at, s.started_at
             FROM outcomes o JOIN sessions s ON s.pk = o.session_pk ORDER BY o.id",
        )?;
        let mut insert = tx.prepare(
            "INSERT INTO outcomes_v3 (id, session_pk, test_id, kind, phase, duration, attempt,
                 line, start_us, markers, message, worker, file)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        let mut insert_test =
            tx.prepare("INSERT INTO tests (nodeid, subtest, first_pk) VALUES (?1, '', ?2)")?;
        let mut insert_markers = tx.prepare("INSERT INTO marker_sets (markers) VALUES (?1)")?;
        let mut insert_detail = tx.prepare("INSERT INTO details (id, data) VALUES (?1, ?2)")?;
        let mut tests: HashMap<String, i64> = HashMap::new();
        let mut marker_sets: HashMap<String, i64> = HashMap::new();
        let mut encoder = detail::Encoder::new();
        let mut rows = read.query([])?;
        let text = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<String> {
            Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
        };
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let session_pk: i64 = r.get(1)?;
            let nodeid: String = r.get(2)?;
            let kind: String = r.get(3)?;
            let kind: TestOutcome = kind.parse().map_err(Error::Internal)?;
            let phase: Option<String> = r.get(4)?;
            let phase = phase
                .map(|p| p.parse::<Phase>().map_err(Error::Internal))
                .transpose()?;
            let mut o = crate::model::Outcome::new(1, nodeid, kind);
            o.message = text(r, 6)?;
            o.longrepr = text(r, 7)?;
            o.stdout = text(r, 8)?;
            o.stderr = text(r, 9)?;
            o.log = text(r, 10)?;
            let file = text(r, 11)?;
            let test_id = match tests.get(&o.nodeid) {
                Some(id) => *id,
                None => {
                    insert_test.execute(params![o.nodeid, session_pk])?;
                    let id = tx.last_insert_rowid();
                    tests.insert(o.nodeid.clone(), id);
                    id
                }
            };
            let markers: Option<String> = r.get(13)?;
            let marker_set = match markers {
                None => None,
                Some(m) => Some(match marker_sets.get(&m) {
                    Some(id) => *id,
                    None => {
                        insert_markers.execute([&m])?;
                        let id = tx.last_insert_rowid();
                        marker_sets.insert(m, id);
                        id
                    }
                }),
            };
            let started: Option<i64> = r.get(16)?;
            let session_started: i64 = r.get(17)?;
            insert.execute(params![
                id,
                session_pk,
                test_id,
                kind_code(kind),
                phase.map(phase_code),
                r.get::<_, f64>(5)?,
                r.get::<_, i64>(15)?,
                r.get::<_, Option<i64>>(12)?,
                started.map(|s| s - session_started),
                marker_set,
                detail::inline_message(&o),
                r.get::<_, Option<String>>(14)?,
                file_column(&o.nodeid, &file),
            ])?;
            if let Some(blob) = encoder.encode(&o) {
                insert_detail.execute(params![id, blob])?;
            }
        }
    }
    tx.execute_batch(
        "DROP TABLE outcomes;
         DROP TABLE sessions;",
    )?;
    tx.execute_batch(V3_INDEXES)?;
    let closed: Vec<i64> = tx
        .prepare("SELECT pk FROM sessions WHERE status IN ('finished', 'interrupted')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for pk in closed {
        index_session_tests(tx, pk)?;
    }
    Ok(())
}

/// Migration 5: fingerprints every stored failure from its full text (the
/// row's message and its details blob) into the new `cause` column, names
/// each cause in `causes`, and records the causes of each closed session.
fn to_stored_causes(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "ALTER TABLE outcomes ADD COLUMN cause TEXT;   -- a failure's cause key
         CREATE INDEX cause_sessions_by_session ON cause_sessions (session);",
    )?;
    let sessions: Vec<(i64, Option<String>, String)> = tx
        .prepare("SELECT pk, project, status FROM sessions ORDER BY pk")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut read = tx.prepare(
        "SELECT o.id, o.kind, o.message, t.nodeid, d.data FROM outcomes o
         JOIN tests t ON t.id = o.test_id LEFT JOIN details d ON d.id = o.id
         WHERE o.session_pk = ?1 AND o.kind IN (2, 4)",
    )?;
    let mut set = tx.prepare("UPDATE outcomes SET cause = ?2 WHERE id = ?1")?;
    let mut name = tx.prepare(
        "INSERT INTO causes (project, key, cause) VALUES (?1, ?2, ?3)
         ON CONFLICT (project, key) DO NOTHING",
    )?;
    for (pk, project, status) in sessions {
        let project = project.unwrap_or_default();
        let mut rows = read.query([pk])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let kind = kind_of(r.get(1)?)
                .ok_or_else(|| Error::Internal(format!("outcome {id} has an unknown kind")))?;
            let mut o = crate::model::Outcome::new(1, r.get::<_, String>(3)?, kind);
            o.message = r.get::<_, Option<String>>(2)?.unwrap_or_default();
            if let Some(blob) = r.get::<_, Option<Vec<u8>>>(4)? {
                detail::decode_into(&blob, &mut o)?;
            }
            if let Some(c) = StoredCause::of(&o) {
                set.execute(params![id, c.key])?;
                name.execute(params![project, c.key, c.cause])?;
            }
        }
        if matches!(status.as_str(), "finished" | "interrupted") {
            record_cause_sessions(tx, pk)?;
        }
    }
    Ok(())
}

/// Records which causes a closed session failed of and how often (under
/// its project, by its id), replacing what it recorded before.
pub fn record_cause_sessions(conn: &Connection, pk: i64) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM cause_sessions WHERE session = (SELECT id FROM sessions WHERE pk = ?1)",
    )?
    .execute([pk])?;
    conn.prepare_cached(
        "INSERT INTO cause_sessions (cause_pk, session, started_at, failures)
         SELECT c.pk, s.id, s.started_at, COUNT(*) FROM outcomes o
         JOIN sessions s ON s.pk = o.session_pk
         JOIN causes c ON c.project = COALESCE(s.project, '') AND c.key = o.cause
         WHERE o.session_pk = ?1 AND o.kind IN (2, 4)
         GROUP BY c.pk",
    )?
    .execute([pk])?;
    Ok(())
}

/// Records which tests a closed session's causes broke (migration 7's table;
/// migration 5 runs before it exists, so this is apart).
pub fn record_cause_tests(conn: &Connection, pk: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO cause_tests (cause_pk, nodeid)
         SELECT DISTINCT c.pk, t.nodeid FROM outcomes o
         JOIN sessions s ON s.pk = o.session_pk
         JOIN tests t ON t.id = o.test_id
         JOIN causes c ON c.project = COALESCE(s.project, '') AND c.key = o.cause
         WHERE o.session_pk = ?1 AND o.kind IN (2, 4)",
    )?
    .execute([pk])?;
    Ok(())
}

/// Writes what a closed session (finished or interrupted: it takes no more
/// outcomes) is read by: its digest and its `session_tests`, built from its
/// rows, and the causes it failed of. An incomplete session may still gain
/// outcomes, so it is read from its rows until the missing ones arrive and
/// close it.
pub fn index_closed_session(conn: &Connection, pk: i64) -> Result<()> {
    index_session_tests(conn, pk)?;
    record_session_sets(conn, pk)?;
    record_cause_sessions(conn, pk)?;
    record_cause_tests(conn, pk)
}

/// A closed session's dependency set per attempt, beside its digest
/// (migration 9's column; migration 3 writes digests before it exists, so
/// this is apart). Nothing when no outcome recorded dependencies.
fn record_session_sets(conn: &Connection, pk: i64) -> Result<()> {
    let (_, sets) = super::reads::digest_and_sets_from_rows(conn, pk)?;
    conn.prepare_cached("UPDATE digests SET deps = ?2 WHERE session_pk = ?1")?
        .execute(params![pk, deps::encode_session_sets(&sets)])?;
    Ok(())
}

/// A closed session's digest and `session_tests` (what migration 3 builds,
/// before causes were stored).
fn index_session_tests(conn: &Connection, pk: i64) -> Result<()> {
    let (lo, hi) = super::rows::outcome_rowid_range(pk);
    conn.prepare_cached("DELETE FROM session_tests WHERE session_pk = ?1")?
        .execute([pk])?;
    conn.prepare_cached(
        "INSERT INTO session_tests (session_pk, test_id, seq, kind)
         SELECT session_pk, test_id, id & 4294967295, kind FROM outcomes
         WHERE id BETWEEN ?1 AND ?2 ORDER BY test_id, id",
    )?
    .execute([lo, hi])?;
    let d = super::reads::digest_from_rows(conn, pk)?;
    let (tests, durations) = crate::store::digest::encode(&d);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO digests (session_pk, tests, durations) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![pk, tests, durations])?;
    Ok(())
}

/// The generation of the tests table (see `meta`), read inside a transaction.
pub fn tests_generation(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'tests_generation'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The generation of the dependency sets and units (see `meta`).
pub fn deps_generation(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'deps_generation'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
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
