//! Conversions between SQLite rows and model types; the only place that knows
//! column order.

use rusqlite::Row;
use uuid::Uuid;

use crate::model::{Environment, Outcome, OutcomeCounts, Session, Summary, Timestamp};

/// Columns of `sessions` that [`session_from_row`] reads, in order.
pub const SESSION_COLUMNS: &str = "s.pk, s.id, s.source, s.status, s.started_at, s.finished_at, \
     s.environment, s.summary, s.outcomes_stored, s.outcomes_expected, \
     s.n_passed, s.n_failed, s.n_skipped, s.n_errors, s.n_xfailed, s.n_xpassed";

/// Number of columns in [`SESSION_COLUMNS`].
pub const SESSION_COLUMN_COUNT: usize = 16;

/// Columns of `outcomes` that [`outcome_from_row`] reads, in order.
pub const OUTCOME_COLUMNS: &str = "o.seq, o.nodeid, o.outcome, o.phase, o.duration, o.message, \
     o.longrepr, o.stdout, o.stderr, o.log, o.file, o.line, o.markers, o.worker, o.attempt, \
     o.started_at";

/// The rowid of outcome `seq` of session `pk`: see the schema.
pub fn outcome_rowid(session_pk: i64, seq: u64) -> i64 {
    (session_pk << 32) | i64::try_from(seq).unwrap_or(0)
}

/// The first and last possible rowid of a session's outcomes.
pub fn outcome_rowid_range(session_pk: i64) -> (i64, i64) {
    (session_pk << 32, (session_pk << 32) | 0xFFFF_FFFF)
}

/// Highest seq a session may hold, so that it fits the rowid scheme.
pub const MAX_SEQ: u64 = 0xFFFF_FFFF;

fn conversion_error(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        Box::<dyn std::error::Error + Send + Sync>::from(msg),
    )
}

fn parse_col<T: std::str::FromStr<Err = String>>(row: &Row<'_>, col: usize) -> rusqlite::Result<T> {
    let text: String = row.get(col)?;
    text.parse().map_err(|e| conversion_error(col, e))
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    col: usize,
) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| conversion_error(col, e.to_string())))
        .transpose()
}

fn u64_col(row: &Row<'_>, col: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(col)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Reads a session (with its pk) from columns `offset..` laid out as [`SESSION_COLUMNS`].
pub fn session_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<(i64, Session)> {
    let c = |i: usize| offset + i;
    let id_text: String = row.get(c(1))?;
    let id = Uuid::parse_str(&id_text).map_err(|e| conversion_error(c(1), e.to_string()))?;
    let expected: Option<i64> = row.get(c(9))?;
    let session = Session {
        id,
        source: parse_col(row, c(2))?,
        status: parse_col(row, c(3))?,
        started_at: Timestamp(row.get(c(4))?),
        finished_at: row.get::<_, Option<i64>>(c(5))?.map(Timestamp),
        environment: json_col::<Environment>(row, c(6))?.unwrap_or_default(),
        summary: json_col::<Summary>(row, c(7))?,
        outcomes_stored: u64_col(row, c(8))?,
        outcomes_expected: expected.and_then(|v| u64::try_from(v).ok()),
        counts: OutcomeCounts {
            passed: u64_col(row, c(10))?,
            failed: u64_col(row, c(11))?,
            skipped: u64_col(row, c(12))?,
            errors: u64_col(row, c(13))?,
            xfailed: u64_col(row, c(14))?,
            xpassed: u64_col(row, c(15))?,
        },
    };
    Ok((row.get(c(0))?, session))
}

/// Reads an outcome from columns `offset..` laid out as [`OUTCOME_COLUMNS`].
pub fn outcome_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<Outcome> {
    let c = |i: usize| offset + i;
    let text = |i: usize| -> rusqlite::Result<String> {
        Ok(row.get::<_, Option<String>>(c(i))?.unwrap_or_default())
    };
    let phase: Option<String> = row.get(c(3))?;
    Ok(Outcome {
        seq: u64_col(row, c(0))?,
        nodeid: row.get(c(1))?,
        outcome: parse_col(row, c(2))?,
        phase: phase
            .map(|p| p.parse().map_err(|e| conversion_error(c(3), e)))
            .transpose()?,
        duration: row.get(c(4))?,
        message: text(5)?,
        longrepr: text(6)?,
        stdout: text(7)?,
        stderr: text(8)?,
        log: text(9)?,
        file: text(10)?,
        line: row
            .get::<_, Option<i64>>(c(11))?
            .and_then(|l| u32::try_from(l).ok()),
        markers: json_col::<Vec<String>>(row, c(12))?.unwrap_or_default(),
        worker: text(13)?,
        attempt: u32::try_from(row.get::<_, i64>(c(14))?).unwrap_or(1),
        started_at: row.get::<_, Option<i64>>(c(15))?.map(Timestamp),
    })
}

/// `None` for an empty string, so absent text is NULL in SQL.
pub fn nullable(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}
