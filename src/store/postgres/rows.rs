//! Conversions between PostgreSQL rows and model types; the only place that
//! knows column order.

use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::model::{
    Environment, Outcome, OutcomeCounts, QuarantineEntry, Session, Summary, Timestamp,
};
use crate::store::codes::{kind_of, phase_of};
use crate::store::detail;

/// Columns of `sessions s` that [`session_from_row`] reads, in order.
pub const SESSION_COLUMNS: &str = "s.pk, s.id, s.source, s.status, s.started_at, s.finished_at, \
     s.environment, s.summary, s.outcomes_stored, s.outcomes_expected, \
     s.n_passed, s.n_failed, s.n_skipped, s.n_errors, s.n_xfailed, s.n_xpassed, s.pinned";

/// Columns that [`outcome_from_row`] reads, in order, from `outcomes o`
/// joined with `tests t` and `marker_sets m`.
pub const OUTCOME_COLUMNS: &str = "o.seq, o.kind, o.phase, o.duration, o.attempt, o.line, \
     o.start_us, o.message, o.worker, o.file, t.nodeid, t.subtest, m.markers, o.detail, \
     o.quarantined";

/// The joins [`OUTCOME_COLUMNS`] need, after `FROM outcomes o`.
pub const OUTCOME_JOINS: &str =
    "JOIN tests t ON t.id = o.test_id LEFT JOIN marker_sets m ON m.id = o.markers";

fn stored(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored {what} cannot be read: {e}"))
}

fn count(row: &Row, i: usize) -> Result<u64> {
    Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
}

/// Reads a session (with its pk) from columns `offset..` laid out as [`SESSION_COLUMNS`].
pub fn session_from_row(row: &Row, offset: usize) -> Result<(i64, Session)> {
    let c = |i: usize| offset + i;
    let json = |i: usize| -> Result<Option<String>> { Ok(row.try_get(c(i))?) };
    let environment: Environment = match json(6)? {
        Some(t) => serde_json::from_str(&t).map_err(|e| stored("environment", e))?,
        None => Environment::default(),
    };
    let summary: Option<Summary> = json(7)?
        .map(|t| serde_json::from_str(&t).map_err(|e| stored("summary", e)))
        .transpose()?;
    let source: String = row.try_get(c(2))?;
    let status: String = row.try_get(c(3))?;
    let expected: Option<i64> = row.try_get(c(9))?;
    let session = Session {
        id: row.try_get(c(1))?,
        source: source.parse().map_err(|e: String| stored("source", e))?,
        status: status.parse().map_err(|e: String| stored("status", e))?,
        started_at: Timestamp(row.try_get(c(4))?),
        finished_at: row.try_get::<_, Option<i64>>(c(5))?.map(Timestamp),
        environment,
        summary,
        outcomes_stored: count(row, c(8))?,
        outcomes_expected: expected.and_then(|v| u64::try_from(v).ok()),
        counts: OutcomeCounts {
            passed: count(row, c(10))?,
            failed: count(row, c(11))?,
            skipped: count(row, c(12))?,
            errors: count(row, c(13))?,
            xfailed: count(row, c(14))?,
            xpassed: count(row, c(15))?,
        },
        pinned: row.try_get(c(16))?,
    };
    Ok((row.try_get(c(0))?, session))
}

/// Reads an outcome from columns `offset..` laid out as [`OUTCOME_COLUMNS`];
/// `session_started` is its session's start, which the row's start is relative to.
pub fn outcome_from_row(row: &Row, offset: usize, session_started: Timestamp) -> Result<Outcome> {
    let c = |i: usize| offset + i;
    let text = |i: usize| -> Result<String> {
        Ok(row.try_get::<_, Option<String>>(c(i))?.unwrap_or_default())
    };
    let kind: i16 = row.try_get(c(1))?;
    let kind = kind_of(i64::from(kind)).ok_or_else(|| stored("outcome", format!("kind {kind}")))?;
    let phase = row
        .try_get::<_, Option<i16>>(c(2))?
        .map(|p| phase_of(i64::from(p)).ok_or_else(|| stored("outcome", format!("phase {p}"))))
        .transpose()?;
    let nodeid: String = row.try_get(c(10))?;
    let file = row
        .try_get::<_, Option<String>>(c(9))?
        .unwrap_or_else(|| nodeid.split("::").next().unwrap_or_default().to_string());
    let seq: i64 = row.try_get(c(0))?;
    let mut o = Outcome::new(u64::try_from(seq).unwrap_or(0), nodeid, kind);
    o.phase = phase;
    o.duration = row.try_get(c(3))?;
    o.attempt = u32::try_from(row.try_get::<_, i32>(c(4))?).unwrap_or(1);
    o.line = row
        .try_get::<_, Option<i32>>(c(5))?
        .and_then(|l| u32::try_from(l).ok());
    o.started_at = row
        .try_get::<_, Option<i64>>(c(6))?
        .map(|us| Timestamp(session_started.as_micros() + us));
    o.message = text(7)?;
    o.worker = text(8)?;
    o.file = file;
    o.subtest = row.try_get(c(11))?;
    if let Some(m) = row.try_get::<_, Option<String>>(c(12))? {
        o.markers = serde_json::from_str(&m).map_err(|e| stored("markers", e))?;
    }
    if let Some(blob) = row.try_get::<_, Option<Vec<u8>>>(c(13))? {
        detail::decode_into(&blob, &mut o)?;
    }
    o.quarantined = row.try_get(c(14))?;
    Ok(o)
}

/// Columns of `quarantine` that [`quarantine_from_row`] reads, in order.
pub const QUARANTINE_COLUMNS: &str = "project, pattern, reason, added_by, added_at, expires_at";

/// Reads a quarantine entry laid out as [`QUARANTINE_COLUMNS`].
pub fn quarantine_from_row(row: &Row) -> Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        project: row.try_get(0)?,
        pattern: row.try_get(1)?,
        reason: row.try_get(2)?,
        added_by: row.try_get(3)?,
        added_at: Timestamp(row.try_get(4)?),
        expires_at: Timestamp(row.try_get(5)?),
    })
}
