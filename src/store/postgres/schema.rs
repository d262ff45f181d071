//! The PostgreSQL schema: an append-only list of migrations, tracked in
//! `pytest_mcp_schema`, applied at start under an advisory lock so that
//! replicas starting together do not race (the second waits, then finds
//! nothing to do). Never edit a migration that has shipped: append one.
//!
//! The tables mirror SQLite's (see `store::sqlite::schema`) with the same
//! reasons: interned tests, narrow outcome rows appended while a session
//! runs (the only secondary index on `outcomes` is a partial one of
//! failures), `session_tests` and a digest written when a session closes,
//! and deleted sessions' rows removed in steps through `doomed`. What
//! differs: an outcome's large text (a zstd blob) is a column of its row,
//! which PostgreSQL keeps out of line once it is large; the key of an
//! outcome is (session_pk, seq); and the policy's rate counters live here,
//! so that every replica counts against the same limits.

use deadpool_postgres::Client;

use crate::error::{Error, Result};

/// The advisory lock migrations run under (an arbitrary, fixed key).
const MIGRATION_LOCK: i64 = 0x7079_6d63_7001;

/// Writers hold this shared, the remover of unused tests (and dependency
/// sets and units) exclusively, so a writer never refers to a row that is
/// being removed.
pub const TESTS_LOCK: i64 = 0x7079_6d63_7002;

/// The channel committed changes are announced on.
pub const CHANNEL: &str = "pytest_mcp";

/// The migrations, in order; migration `i` moves the version from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: everything.
    r#"
    CREATE TABLE sessions (
        pk                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id                uuid NOT NULL UNIQUE,           -- client-chosen
        source            text NOT NULL,                  -- plugin | mcp | import
        status            text NOT NULL,                  -- running | finished | interrupted | incomplete
        started_at        bigint NOT NULL,                -- microseconds since the Unix epoch
        finished_at       bigint,
        project           text,
        git_commit        text,
        environment       text NOT NULL,                  -- JSON
        summary           text,                           -- JSON, set by finish
        exitstatus        integer,
        outcomes_expected bigint,
        outcomes_stored   bigint NOT NULL DEFAULT 0,      -- highest contiguous seq
        n_passed          bigint NOT NULL DEFAULT 0,
        n_failed          bigint NOT NULL DEFAULT 0,
        n_skipped         bigint NOT NULL DEFAULT 0,
        n_errors          bigint NOT NULL DEFAULT 0,
        n_xfailed         bigint NOT NULL DEFAULT 0,
        n_xpassed         bigint NOT NULL DEFAULT 0,
        grant_name        text,
        pinned            boolean NOT NULL DEFAULT false
    );
    CREATE INDEX sessions_by_start ON sessions (started_at DESC, pk DESC);
    CREATE INDEX sessions_by_project ON sessions (project, started_at DESC, pk DESC);
    CREATE INDEX sessions_open ON sessions (pk) WHERE status IN ('running', 'incomplete');

    CREATE TABLE tests (
        id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        nodeid   text NOT NULL,
        subtest  text NOT NULL DEFAULT '',
        first_pk bigint NOT NULL,                         -- no older session holds it
        UNIQUE (nodeid, subtest)
    );

    CREATE TABLE marker_sets (
        id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        markers text NOT NULL UNIQUE                      -- JSON array
    );

    CREATE TABLE outcomes (
        session_pk bigint NOT NULL,
        seq        bigint NOT NULL,
        test_id    bigint NOT NULL,
        kind       smallint NOT NULL,                     -- store::codes
        phase      smallint,
        duration   double precision NOT NULL,
        attempt    integer NOT NULL,
        line       integer,
        start_us   bigint,                                -- after the session's started_at
        markers    bigint,                                -- marker_sets.id
        message    text,                                  -- short ones; long ones are in detail
        worker     text,
        file       text,                                  -- NULL: the nodeid's own path
        detail     bytea,                                 -- store::detail blob
        PRIMARY KEY (session_pk, seq)
    );
    CREATE INDEX outcomes_failures ON outcomes (session_pk, seq) WHERE kind IN (2, 4);

    CREATE TABLE digests (
        session_pk bigint PRIMARY KEY,
        tests      bytea NOT NULL,
        durations  bytea NOT NULL
    );

    CREATE TABLE session_tests (
        session_pk bigint NOT NULL,
        test_id    bigint NOT NULL,
        seq        bigint NOT NULL,
        kind       smallint NOT NULL,
        PRIMARY KEY (session_pk, test_id, seq)
    );

    CREATE TABLE doomed (pk bigint PRIMARY KEY);

    CREATE TABLE audit (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at          bigint NOT NULL,
        grant_name  text NOT NULL,
        transport   text NOT NULL,
        tool        text NOT NULL,
        decision    text NOT NULL,
        result      text,
        reason      text,
        duration_us bigint NOT NULL
    );

    -- The policy gate's fixed windows (policy::gate), one row per counter
    -- and grant ('' for a global counter).
    CREATE TABLE rate_counters (
        counter   text NOT NULL,
        grant_key text NOT NULL,
        start_us  bigint NOT NULL,
        length_us bigint NOT NULL,
        calls     bigint NOT NULL,
        PRIMARY KEY (counter, grant_key)
    );

    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO meta (key, value) VALUES ('tests_generation', 0);
    "#,
    // 2: the causes of failures each closed session had, by project (see
    // SQLite's migration 4); kept when the session is pruned.
    r#"
    CREATE TABLE causes (
        pk      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        project text NOT NULL,
        key     text NOT NULL,
        cause   text NOT NULL,
        UNIQUE (project, key)
    );
    CREATE TABLE cause_sessions (
        cause_pk   bigint NOT NULL REFERENCES causes (pk),
        session    uuid NOT NULL,
        started_at bigint NOT NULL,
        failures   bigint NOT NULL,
        PRIMARY KEY (cause_pk, session)
    );
    "#,
    // 3: each failure's cause stored beside it (see SQLite's migration 5);
    // the failures stored before are fingerprinted by `to_stored_causes`,
    // in the same transaction.
    r#"
    ALTER TABLE outcomes ADD COLUMN cause text;                 -- a failure's cause key
    CREATE INDEX cause_sessions_by_session ON cause_sessions (session);
    "#,
    // 4: quarantine entries, and whether an outcome's test was quarantined
    // when it ran (see SQLite's migration 6).
    r#"
    CREATE TABLE quarantine (
        project    text NOT NULL,      -- '' for every project
        pattern    text NOT NULL,      -- a nodeid or an fnmatch pattern of nodeids
        reason     text NOT NULL,
        added_by   text NOT NULL,
        added_at   bigint NOT NULL,    -- microseconds since the Unix epoch
        expires_at bigint NOT NULL,
        PRIMARY KEY (project, pattern)
    );
    ALTER TABLE outcomes ADD COLUMN quarantined boolean NOT NULL DEFAULT false;
    "#,
    // 5: which tests each cause has broken (see SQLite's migration 7).
    r#"
    CREATE TABLE cause_tests (
        cause_pk bigint NOT NULL REFERENCES causes (pk),
        nodeid   text NOT NULL,
        PRIMARY KEY (cause_pk, nodeid)
    );
    INSERT INTO cause_tests (cause_pk, nodeid)
        SELECT DISTINCT c.pk, t.nodeid FROM outcomes o
        JOIN sessions s ON s.pk = o.session_pk
        JOIN tests t ON t.id = o.test_id
        JOIN causes c ON c.project = COALESCE(s.project, '') AND c.key = o.cause
        WHERE o.kind IN (2, 4) AND o.cause IS NOT NULL
          AND EXISTS (SELECT 1 FROM cause_sessions cs WHERE cs.session = s.id)
        ON CONFLICT DO NOTHING;
    "#,
    // 6: the code each session tested and its branch (see SQLite's migration 8).
    r#"
    ALTER TABLE sessions ADD COLUMN code_state text;
    ALTER TABLE sessions ADD COLUMN git_branch text;
    UPDATE sessions SET code_state = git_commit
        WHERE git_commit IS NOT NULL AND git_commit <> ''
          AND (environment::jsonb ->> 'git_dirty') = 'false';
    UPDATE sessions SET git_branch = environment::jsonb ->> 'git_branch'
        WHERE (environment::jsonb ->> 'git_branch') <> '';
    "#,
    // 7: per-test dependencies (see SQLite's migration 9): each unit and
    // each distinct set of units of a project once, an outcome's set, and
    // each attempt's set of a closed session beside its digest.
    r#"
    CREATE TABLE dep_units (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        project    text NOT NULL,      -- the project's name lower-cased
        key        bigint NOT NULL,    -- CodeUnit.key (u64 bits)
        code       bigint NOT NULL,    -- CodeUnit.code (u64 bits)
        kind       smallint NOT NULL,  -- 1 function 2 class 3 module 4 file
        path       text NOT NULL,
        name       text NOT NULL,
        line_start bigint NOT NULL,
        line_end   bigint NOT NULL,
        checksum   text NOT NULL,
        UNIQUE (project, key)
    );
    CREATE TABLE dep_sets (
        id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        project text NOT NULL,
        digest  bytea NOT NULL,        -- SHA-256 of the sorted unit keys, 16 bytes
        code    bigint NOT NULL,       -- digest of the units' codes (u64 bits)
        units   bytea NOT NULL,        -- sorted dep_units ids as varint deltas
        UNIQUE (project, digest)
    );
    ALTER TABLE outcomes ADD COLUMN deps bigint;     -- dep_sets.id; NULL: not recorded
    ALTER TABLE digests ADD COLUMN deps bytea;       -- each attempt's set (store::deps)
    INSERT INTO meta (key, value) VALUES ('deps_generation', 0);
    "#,
];

/// The migration after which [`to_stored_causes`] runs.
const STORED_CAUSES: usize = 3;

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to [`SCHEMA_VERSION`] under the migration lock;
/// refuses a database whose schema is newer than this binary's.
pub async fn migrate(client: &mut Client) -> Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    // A lost connection released the lock already.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut Client) -> Result<()> {
    // Created only when missing: even `IF NOT EXISTS` is a write, and a
    // read-only database (a standby) with a current schema must still open
    // for reading.
    let exists: bool = client
        .query_one("SELECT to_regclass('pytest_mcp_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS pytest_mcp_schema (version integer NOT NULL)",
            )
            .await?;
    }
    let version: i64 = match client
        .query_opt("SELECT max(version)::bigint FROM pytest_mcp_schema", &[])
        .await?
    {
        Some(row) => row.get::<_, Option<i64>>(0).unwrap_or(0),
        None => 0,
    };
    if version > SCHEMA_VERSION {
        return Err(Error::Internal(format!(
            "the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}; upgrade pytest-mcp"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        if i + 1 == STORED_CAUSES {
            to_stored_causes(&tx).await?;
        }
        let next = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("DELETE FROM pytest_mcp_schema", &[]).await?;
        tx.execute(
            "INSERT INTO pytest_mcp_schema (version) VALUES ($1)",
            &[&next],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = next, "database schema migrated");
    }
    Ok(())
}

/// Migration 3's code: fingerprints every stored failure from its full text
/// into the new `cause` column, names each cause, and records the causes of
/// each closed session; one session at a time.
async fn to_stored_causes(tx: &deadpool_postgres::Transaction<'_>) -> Result<()> {
    let sessions = tx
        .query(
            "SELECT pk, COALESCE(project, ''), status FROM sessions ORDER BY pk",
            &[],
        )
        .await?;
    let read = tx
        .prepare(
            "SELECT o.seq, o.kind, o.message, t.nodeid, o.detail FROM outcomes o
             JOIN tests t ON t.id = o.test_id
             WHERE o.session_pk = $1 AND o.kind IN (2, 4)",
        )
        .await?;
    let set = tx
        .prepare("UPDATE outcomes SET cause = $3 WHERE session_pk = $1 AND seq = $2")
        .await?;
    let name = tx
        .prepare(
            "INSERT INTO causes (project, key, cause) VALUES ($1, $2, $3)
             ON CONFLICT (project, key) DO NOTHING",
        )
        .await?;
    for session in sessions {
        let (pk, project, status): (i64, String, String) =
            (session.get(0), session.get(1), session.get(2));
        for r in tx.query(&read, &[&pk]).await? {
            let seq: i64 = r.get(0);
            let kind: i16 = r.get(1);
            let kind = crate::store::codes::kind_of(i64::from(kind)).ok_or_else(|| {
                Error::Internal(format!("outcome {seq} of session {pk} has kind {kind}"))
            })?;
            let mut o = crate::model::Outcome::new(1, r.get::<_, String>(3), kind);
            o.message = r.get::<_, Option<String>>(2).unwrap_or_default();
            if let Some(blob) = r.get::<_, Option<Vec<u8>>>(4) {
                crate::store::detail::decode_into(&blob, &mut o)?;
            }
            if let Some(c) = crate::store::fingerprint::StoredCause::of(&o) {
                tx.execute(&set, &[&pk, &seq, &c.key]).await?;
                tx.execute(&name, &[&project, &c.key, &c.cause]).await?;
            }
        }
        if matches!(status.as_str(), "finished" | "interrupted") {
            super::writes::record_cause_sessions(tx, pk).await?;
        }
    }
    Ok(())
}
