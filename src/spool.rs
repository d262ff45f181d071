//! Reads spool files (docs/spool.md) and replays them into the store.
//!
//! Replaying is idempotent because every outcome carries (session id, seq):
//! the store acknowledges a seq it already holds without storing it again, so
//! a file may be imported twice, or after part of it reached the server.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use uuid::Uuid;

use crate::error::Error;
use crate::model::{
    CodeUnit, Environment, MAX_SPOOL_LINE_BYTES, Outcome, Phase, SessionRef, Source, Summary,
    TestOutcome, Timestamp, UnitKind, parse_session_id, parse_unit_key,
};
use crate::store::Store;

/// Outcomes appended per store call while importing.
const CHUNK: usize = 1000;

/// One line of a spool file.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Record {
    Start {
        session_id: String,
        #[serde(default)]
        started_at: Option<Timestamp>,
        #[serde(default)]
        environment: Environment,
    },
    Outcome(SpoolOutcome),
    /// Code units the session's outcomes after it name in their `deps`.
    Units {
        session_id: String,
        units: Vec<SpoolUnit>,
    },
    Finish {
        session_id: String,
        outcomes_sent: u64,
        #[serde(default)]
        finished_at: Option<Timestamp>,
        summary: Summary,
    },
}

#[derive(Debug, Deserialize)]
struct SpoolOutcome {
    session_id: String,
    seq: u64,
    nodeid: String,
    outcome: TestOutcome,
    #[serde(default)]
    phase: Option<Phase>,
    #[serde(default)]
    duration: f64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    longrepr: String,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    log: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    line: Option<u32>,
    #[serde(default)]
    markers: Vec<String>,
    #[serde(default)]
    worker: String,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    started_at: Option<Timestamp>,
    #[serde(default)]
    subtest: String,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
    #[serde(default)]
    quarantined: bool,
    /// Unit keys as 16 hex digits; absent when dependencies were not recorded.
    #[serde(default)]
    deps: Option<Vec<String>>,
}

/// One code unit of a `units` line; keys and codes as 16 hex digits.
#[derive(Debug, Deserialize)]
struct SpoolUnit {
    key: String,
    code: String,
    kind: UnitKind,
    path: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    line_start: u32,
    #[serde(default)]
    line_end: u32,
    checksum: String,
}

impl SpoolUnit {
    /// The unit, checked as every write path checks one; errors name
    /// fields relative to the unit.
    fn into_model(self) -> Result<CodeUnit, Error> {
        let unit = CodeUnit {
            key: parse_unit_key(&self.key, "key")?,
            code: parse_unit_key(&self.code, "code")?,
            kind: self.kind,
            path: self.path,
            name: self.name,
            line_start: self.line_start,
            line_end: self.line_end,
            checksum: self.checksum,
        };
        unit.validate()?;
        Ok(unit)
    }
}

impl SpoolOutcome {
    fn into_model(self) -> Result<Outcome, Error> {
        let deps = match self.deps {
            None => None,
            Some(keys) => Some(
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| parse_unit_key(k, &format!("deps[{i}]")))
                    .collect::<Result<Vec<u64>, Error>>()?,
            ),
        };
        Ok(Outcome {
            seq: self.seq,
            nodeid: self.nodeid,
            outcome: self.outcome,
            phase: self.phase,
            duration: self.duration,
            message: self.message,
            longrepr: self.longrepr,
            stdout: self.stdout,
            stderr: self.stderr,
            log: self.log,
            file: self.file,
            line: self.line,
            markers: self.markers,
            worker: self.worker,
            attempt: self.attempt.max(1),
            started_at: self.started_at,
            subtest: self.subtest,
            user_properties: self.user_properties,
            quarantined: self.quarantined,
            deps,
        })
    }
}

/// What importing did to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// The session.
    pub id: Uuid,
    /// Whether the import created it.
    pub created: bool,
    /// Outcome lines read for it.
    pub outcomes_read: u64,
    /// Outcomes that were not stored before.
    pub outcomes_new: u64,
    /// Its status after the import.
    pub status: crate::model::SessionStatus,
    /// Outcomes stored for it after the import.
    pub outcomes_stored: u64,
}

/// What importing a file did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Per session, in order of first appearance.
    pub sessions: Vec<SessionReport>,
    /// Problems, each naming the file and line; the rest of the file was still imported.
    pub errors: Vec<String>,
}

#[derive(Default)]
struct SessionState {
    order: usize,
    created: bool,
    known: bool,
    before: u64,
    read: u64,
    pending: Vec<(usize, Outcome)>,
    /// The first seq that could not be stored (a malformed or missing line):
    /// seqs are contiguous, so nothing after it can be stored either.
    blocked_at: Option<u64>,
    /// Outcomes read after `blocked_at` and therefore not stored.
    skipped: u64,
    /// Units declared by `units` lines, sent with the next outcomes.
    units: Vec<CodeUnit>,
}

/// Replays one spool file into `store`.
pub async fn import_file(store: &Store, path: &Path) -> Result<ImportReport, Error> {
    import_file_as(store, path, Source::Import).await
}

/// Like [`import_file`], creating new sessions with `source`: the plugin's
/// own local recording (no recorder was listening) is `plugin`, since the
/// run was not replayed from a failed delivery.
pub async fn import_file_as(
    store: &Store,
    path: &Path,
    source: Source,
) -> Result<ImportReport, Error> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::invalid("FILE", format!("cannot open {}: {e}", path.display())))?;
    let mut report = ImportReport::default();
    let mut sessions: BTreeMap<Uuid, SessionState> = BTreeMap::new();
    let name = path.display().to_string();

    let mut reader = std::io::BufReader::new(file);
    let mut bytes = Vec::new();
    let mut lineno = 0usize;
    loop {
        bytes.clear();
        let read =
            read_bounded_line(&mut reader, &mut bytes, MAX_SPOOL_LINE_BYTES).map_err(|e| {
                Error::invalid("FILE", format!("{name}:{}: cannot read: {e}", lineno + 1))
            })?;
        let n = match read {
            Line::End => break,
            Line::Read(n) => n,
            Line::TooLong(n) => {
                lineno += 1;
                report.errors.push(format!(
                    "{name}:{lineno}: the line is {n} bytes, longer than the limit \
                     {MAX_SPOOL_LINE_BYTES}; skipped"
                ));
                continue;
            }
        };
        debug_assert!(n > 0);
        lineno += 1;
        // A line that is not UTF-8 (a spool cut off mid-character by a
        // crash) is reported, and the rest of the file is still imported.
        let Ok(line) = std::str::from_utf8(&bytes) else {
            report
                .errors
                .push(format!("{name}:{lineno}: the line is not valid UTF-8"));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(format!("{name}:{lineno}: {e}"));
                continue;
            }
        };
        let result = match record {
            Record::Start {
                session_id,
                started_at,
                environment,
            } => {
                let id = parse_session_id(&session_id, "session_id");
                match id {
                    Ok(id) => {
                        let next = sessions.len();
                        let state = sessions.entry(id).or_insert_with(|| SessionState {
                            order: next,
                            ..Default::default()
                        });
                        ensure_session(store, id, state, Some((started_at, environment)), source)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            Record::Outcome(o) => match parse_session_id(&o.session_id, "session_id") {
                Ok(id) => {
                    let next = sessions.len();
                    let state = sessions.entry(id).or_insert_with(|| SessionState {
                        order: next,
                        ..Default::default()
                    });
                    state.read += 1;
                    match o.into_model() {
                        Ok(o) => {
                            state.pending.push((lineno, o));
                            if state.pending.len() >= CHUNK {
                                flush(store, id, state, &name, &mut report.errors).await
                            } else {
                                Ok(())
                            }
                        }
                        Err(e) => Err(e.within("outcome")),
                    }
                }
                Err(e) => Err(e),
            },
            Record::Units { session_id, units } => {
                match parse_session_id(&session_id, "session_id") {
                    Ok(id) => {
                        let next = sessions.len();
                        let state = sessions.entry(id).or_insert_with(|| SessionState {
                            order: next,
                            ..Default::default()
                        });
                        // A line with a bad unit declares none of its units:
                        // the outcomes naming them are refused in turn.
                        units
                            .into_iter()
                            .enumerate()
                            .map(|(i, u)| {
                                u.into_model()
                                    .map_err(|e| e.within(format_args!("units[{i}]")))
                            })
                            .collect::<Result<Vec<_>, Error>>()
                            .map(|units| state.units.extend(units))
                    }
                    Err(e) => Err(e),
                }
            }
            Record::Finish {
                session_id,
                outcomes_sent,
                finished_at,
                summary,
            } => match parse_session_id(&session_id, "session_id") {
                Ok(id) => {
                    let next = sessions.len();
                    let state = sessions.entry(id).or_insert_with(|| SessionState {
                        order: next,
                        ..Default::default()
                    });
                    match flush(store, id, state, &name, &mut report.errors).await {
                        Ok(()) => store
                            .finish_session(id, summary, outcomes_sent, finished_at)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            report.errors.push(format!("{name}:{lineno}: {e}"));
        }
    }

    let mut ordered: Vec<(Uuid, SessionState)> = sessions.into_iter().collect();
    ordered.sort_by_key(|(_, s)| s.order);
    for (id, mut state) in ordered {
        if let Err(e) = flush(store, id, &mut state, &name, &mut report.errors).await {
            report.errors.push(format!("{name}: session {id}: {e}"));
        }
        if let Some(seq) = state.blocked_at {
            report.errors.push(format!(
                "{name}: session {id}: seq {seq} is missing or malformed, so the {} outcome(s) \
                 after it were not stored (a session's seqs are contiguous from 1) and the \
                 session cannot be complete",
                state.skipped
            ));
        }
        match store.get_session(SessionRef::Id(id)).await {
            Ok(s) => report.sessions.push(SessionReport {
                id,
                created: state.created,
                outcomes_read: state.read,
                outcomes_new: s.outcomes_stored.saturating_sub(state.before),
                status: s.status,
                outcomes_stored: s.outcomes_stored,
            }),
            Err(e) => report.errors.push(format!("{name}: session {id}: {e}")),
        }
    }
    Ok(report)
}

/// What [`read_bounded_line`] read.
enum Line {
    /// The end of the file.
    End,
    /// A line of this many bytes, in the buffer.
    Read(usize),
    /// A line of this many bytes, longer than the limit: skipped, not kept.
    TooLong(usize),
}

/// Reads one line into `buf` (cleared by the caller), holding at most `max`
/// bytes of it: a longer line is read through to its end and dropped, so a
/// 1 GB line costs the time to read it, not a gigabyte of memory.
fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut total = 0usize;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..=i], true),
            None => (chunk, false),
        };
        let len = part.len();
        total += len;
        if total <= max {
            buf.extend_from_slice(part);
        } else {
            // Past the limit: what was kept is no use either.
            buf.clear();
        }
        reader.consume(len);
        if done {
            break;
        }
    }
    Ok(match total {
        0 => Line::End,
        n if n > max => Line::TooLong(n),
        n => Line::Read(n),
    })
}

/// Makes sure the session exists, creating it (as from `source`) from the
/// start record when it does not; remembers how many outcomes it had before.
async fn ensure_session(
    store: &Store,
    id: Uuid,
    state: &mut SessionState,
    start: Option<(Option<Timestamp>, Environment)>,
    source: Source,
) -> Result<(), Error> {
    if state.known {
        return Ok(());
    }
    match store.get_session(SessionRef::Id(id)).await {
        Ok(s) => {
            state.before = s.outcomes_stored;
            state.known = true;
            Ok(())
        }
        Err(Error::NotFound { .. }) => {
            let Some((started_at, environment)) = start else {
                return Err(Error::not_found(
                    "session_id",
                    format!(
                        "no session {id} in the store and no start record for it before its outcomes"
                    ),
                ));
            };
            match store
                .start_session(id, source, environment, started_at)
                .await
            {
                Ok(_) => {
                    state.created = true;
                    state.known = true;
                    Ok(())
                }
                // Created meanwhile by another writer: keep what it stored.
                Err(Error::AlreadyExists { .. }) => {
                    state.known = true;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Appends the session's pending outcomes, in seq order.
async fn flush(
    store: &Store,
    id: Uuid,
    state: &mut SessionState,
    name: &str,
    errors: &mut Vec<String>,
) -> Result<(), Error> {
    if state.pending.is_empty() {
        return Ok(());
    }
    ensure_session(store, id, state, None, Source::Import).await?;
    let pending = std::mem::take(&mut state.pending);
    // Validate line by line first so an error names the line it came from,
    // then keep the first valid line of each seq: a malformed line followed
    // by a good one for the same seq stores the good one, whether the two
    // arrive in one chunk or in two (so a second import adds nothing).
    let mut valid = Vec::with_capacity(pending.len());
    for (lineno, mut o) in pending {
        match store.prepare(&mut o).map_err(|e| e.within("outcome")) {
            Ok(()) => valid.push((lineno, o)),
            Err(e) => errors.push(format!("{name}:{lineno}: {e}")),
        }
    }
    valid.sort_by_key(|(_, o)| o.seq);
    valid.dedup_by_key(|(_, o)| o.seq);
    if state.blocked_at.is_some() {
        state.skipped += valid.len() as u64;
        return Ok(());
    }
    // A session's seqs are contiguous: store the run up to the first gap (a
    // line that was malformed or is missing) and count the rest as skipped,
    // rather than refusing the whole chunk.
    let run = valid
        .windows(2)
        .position(|w| w[1].1.seq != w[0].1.seq + 1)
        .map_or(valid.len(), |i| i + 1);
    if run < valid.len() {
        state.blocked_at = Some(valid[run - 1].1.seq + 1);
        state.skipped += (valid.len() - run) as u64;
        valid.truncate(run);
    }
    if valid.is_empty() {
        return Ok(());
    }
    let units = std::mem::take(&mut state.units);
    let (lines, outcomes): (Vec<usize>, Vec<Outcome>) = valid.into_iter().unzip();
    // Only an outcome with dependencies can be refused alone; keep a copy
    // to store the others then.
    if outcomes.iter().all(|o| o.deps.is_none()) {
        return store.append_prepared(id, outcomes, units).await.map(|_| ());
    }
    match store
        .append_prepared(id, outcomes.clone(), units.clone())
        .await
    {
        Ok(_) => Ok(()),
        // One outcome the store refused (a unit no line declared): that line
        // is reported, and like a malformed line it stops its session's
        // outcomes after it; those before it are stored.
        Err(e) => match refused_outcome(&e) {
            Some(i) if i < outcomes.len() => {
                errors.push(format!(
                    "{name}:{}: {}",
                    lines[i],
                    rename_outcome_field(e, i)
                ));
                state.blocked_at = Some(outcomes[i].seq);
                state.skipped += (outcomes.len() - i) as u64;
                let mut outcomes = outcomes;
                outcomes.truncate(i);
                if outcomes.is_empty() {
                    return Ok(());
                }
                store.append_prepared(id, outcomes, units).await.map(|_| ())
            }
            _ => Err(e),
        },
    }
}

/// The index of the outcome a refusal names (`outcomes[3].deps...`).
fn refused_outcome(e: &Error) -> Option<usize> {
    let Error::InvalidArgument { field, .. } = e else {
        return None;
    };
    let rest = field.strip_prefix("outcomes[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// A refusal of `outcomes[i]` as the spool names it: `outcome.…`.
fn rename_outcome_field(e: Error, i: usize) -> Error {
    match e {
        Error::InvalidArgument { field, message } => Error::InvalidArgument {
            field: field.replacen(&format!("outcomes[{i}]"), "outcome", 1),
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, usize>> {
        // A tiny buffer, so lines span many fills.
        let mut reader = std::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_bounded_line(&mut reader, &mut buf, max).unwrap() {
                Line::End => return out,
                Line::Read(_) => out.push(Ok(buf)),
                Line::TooLong(n) => {
                    assert!(buf.is_empty(), "a refused line was kept");
                    out.push(Err(n));
                }
            }
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_skipped_whole_and_the_next_line_is_read() {
        let got = lines(b"short\n0123456789abcdef\nlast", 10);
        assert_eq!(
            got,
            vec![Ok(b"short\n".to_vec()), Err(17), Ok(b"last".to_vec())]
        );
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_read() {
        assert_eq!(lines(b"123456789\n", 10), vec![Ok(b"123456789\n".to_vec())]);
    }
}
