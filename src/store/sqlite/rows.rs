//! Conversions between SQLite rows and model types; the only place that knows
//! column order.

use rusqlite::Row;
use uuid::Uuid;

use super::schema::{file_from_column, kind_of, phase_of};
use crate::model::{
    Environment, Outcome, OutcomeCounts, QuarantineEntry, Session, Summary, Timestamp,
};
use crate::store::detail;

/// Columns of `sessions` that [`session_from_row`] reads, in order.
pub const SESSION_COLUMNS: &str = "s.pk, s.id, s.source, s.status, s.started_at, s.finished_at, \
     s.environment, s.summary, s.outcomes_stored, s.outcomes_expected, \
     s.n_passed, s.n_failed, s.n_skipped, s.n_errors, s.n_xfailed, s.n_xpassed, s.pinned";

/// Columns that [`outcome_from_row`] reads, in order, from `outcomes o`
/// joined with `tests t`, `marker_sets m` and `details d`.
pub const OUTCOME_COLUMNS: &str = "o.id, o.kind, o.phase, o.duration, o.attempt, o.line, \
     o.start_us, o.message, o.worker, o.file, t.nodeid, t.subtest, m.markers, d.data, \
     o.quarantined";

/// The joins [`OUTCOME_COLUMNS`] need, after `FROM outcomes o`.
pub const OUTCOME_JOINS: &str = "JOIN tests t ON t.id = o.test_id \
     LEFT JOIN marker_sets m ON m.id = o.markers LEFT JOIN details d ON d.id = o.id";

/// The rowid of outcome `seq` of session `pk`: see the schema.
pub fn outcome_rowid(session_pk: i64, seq: u64) -> i64 {
    (session_pk << 32) | i64::try_from(seq).unwrap_or(0)
}

/// The seq of an outcome rowid.
pub fn seq_of(rowid: i64) -> u64 {
    u64::try_from(rowid & 0xFFFF_FFFF).unwrap_or(0)
}

/// The first and last possible rowid of a session's outcomes.
pub fn outcome_rowid_range(session_pk: i64) -> (i64, i64) {
    (session_pk << 32, (session_pk << 32) | 0xFFFF_FFFF)
}

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
        pinned: row.get::<_, i64>(c(16))? != 0,
    };
    Ok((row.get(c(0))?, session))
}

/// Reads an outcome from columns `offset..` laid out as [`OUTCOME_COLUMNS`];
/// `session_started` is its session's start, which the row's start is relative to.
pub fn outcome_from_row(
    row: &Row<'_>,
    offset: usize,
    session_started: Timestamp,
) -> rusqlite::Result<Outcome> {
    let c = |i: usize| offset + i;
    let text = |i: usize| -> rusqlite::Result<String> {
        Ok(row.get::<_, Option<String>>(c(i))?.unwrap_or_default())
    };
    let kind: i64 = row.get(c(1))?;
    let kind =
        kind_of(kind).ok_or_else(|| conversion_error(c(1), format!("unknown kind {kind}")))?;
    let phase = row
        .get::<_, Option<i64>>(c(2))?
        .map(|p| phase_of(p).ok_or_else(|| conversion_error(c(2), format!("unknown phase {p}"))))
        .transpose()?;
    let nodeid: String = row.get(c(10))?;
    let file = file_from_column(&nodeid, row.get(c(9))?);
    let mut o = Outcome::new(seq_of(row.get(c(0))?), nodeid, kind);
    o.phase = phase;
    o.duration = row.get(c(3))?;
    o.attempt = u32::try_from(row.get::<_, i64>(c(4))?).unwrap_or(1);
    o.line = row
        .get::<_, Option<i64>>(c(5))?
        .and_then(|l| u32::try_from(l).ok());
    o.started_at = row
        .get::<_, Option<i64>>(c(6))?
        .map(|us| Timestamp(session_started.as_micros() + us));
    o.message = text(7)?;
    o.worker = text(8)?;
    o.file = file;
    o.subtest = row.get(c(11))?;
    o.markers = json_col::<Vec<String>>(row, c(12))?.unwrap_or_default();
    if let Some(blob) = row.get::<_, Option<Vec<u8>>>(c(13))? {
        detail::decode_into(&blob, &mut o).map_err(|e| conversion_error(c(13), e.to_string()))?;
    }
    o.quarantined = row.get::<_, i64>(c(14))? != 0;
    Ok(o)
}

/// Columns of `quarantine` that [`quarantine_from_row`] reads, in order.
pub const QUARANTINE_COLUMNS: &str = "project, pattern, reason, added_by, added_at, expires_at";

/// Reads a quarantine entry laid out as [`QUARANTINE_COLUMNS`].
pub fn quarantine_from_row(row: &Row<'_>) -> rusqlite::Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        project: row.get(0)?,
        pattern: row.get(1)?,
        reason: row.get(2)?,
        added_by: row.get(3)?,
        added_at: Timestamp(row.get(4)?),
        expires_at: Timestamp(row.get(5)?),
    })
}

/// `None` for an empty string, so absent text is NULL in SQL.
pub fn nullable(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}
