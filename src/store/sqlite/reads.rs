//! The SQLite backend's reads. Each function runs on one read connection
//! and so sees one committed snapshot.
//!
//! Reads by test go through the (session pk, test id, kind) index: a test's
//! history is one index probe per session, newest session first, stopping
//! as soon as the page is full and never looking at sessions older than the
//! test itself (`tests.first_pk`).

use crate::store::backend::{KNOWN_TESTS_NAMED, KnownCause};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

use super::rows::{
    self, OUTCOME_COLUMNS, OUTCOME_JOINS, SESSION_COLUMNS, outcome_rowid, outcome_rowid_range,
    seq_of,
};
use super::schema::{kind_code, kind_of};
use crate::error::{Error, Result};
use crate::model::{
    Outcome, Project, QuarantineEntry, Session, SessionRef, SessionStatus, Source, TestOutcome,
    Timestamp,
};
use crate::store::affected::{DepsSnapshot, StoredUnit};
use crate::store::analysis::{attempts_with, run_code};
use crate::store::backend::{
    FlakyInput, ProjectActivity, SessionFinals, SessionKey, SessionMeta, StorageStats, TestKey,
};
use crate::store::codes::unit_kind_of;
use crate::store::deps::{self, SnapshotParts, SnapshotScan};
use crate::store::digest::{self, Digest};
use crate::store::fingerprint::KeyedFailure;
use crate::store::{
    AuditEntry, HistoryEntry, OutcomeFilter, Page, PageFill, Run, RunSession, SessionFilter,
    decode_cursor_number, decode_cursor_pair, detail,
};

/// Finds a session by reference, with its pk.
pub fn resolve(c: &Connection, session: SessionRef) -> Result<(i64, Session)> {
    let found = match &session {
        SessionRef::Id(id) => {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1");
            c.prepare_cached(&sql)?
                .query_row([id.to_string()], |r| rows::session_from_row(r, 0))
                .optional()?
        }
        SessionRef::Prefix(p) => {
            // Ids are stored as lower-case hyphenated text, whose order is
            // the UUIDs' order: a prefix is a range of the unique index.
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id BETWEEN ?1 AND ?2 LIMIT 5"
            );
            let mut found: Vec<(i64, Session)> = c
                .prepare_cached(&sql)?
                .query_map([p.lo.to_string(), p.hi.to_string()], |r| {
                    rows::session_from_row(r, 0)
                })?
                .collect::<rusqlite::Result<_>>()?;
            if found.len() > 1 {
                let ids: Vec<Uuid> = found.iter().map(|(_, s)| s.id).collect();
                return Err(session.ambiguous("session_id", &ids));
            }
            found.pop()
        }
        SessionRef::Latest(None) => {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
            );
            c.prepare_cached(&sql)?
                .query_row([], |r| rows::session_from_row(r, 0))
                .optional()?
        }
        SessionRef::Latest(Some(project)) => {
            let (names, unnamed) = project_args(project);
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s WHERE {}
                 ORDER BY s.started_at DESC, s.pk DESC LIMIT 1",
                in_project(1)
            );
            c.prepare_cached(&sql)?
                .query_row(params![names, unnamed], |r| rows::session_from_row(r, 0))
                .optional()?
        }
    };
    found.ok_or_else(|| session.not_found("session_id"))
}

/// The condition "session `s` is of the project" over the two parameters
/// [`project_args`] makes (?n, ?n+1): its spellings, and whether it is the
/// unnamed project (stored as NULL).
fn in_project(n: usize) -> String {
    format!(
        "(s.project IN rarray(?{n}) OR (s.project IS NULL AND ?{}))",
        n + 1
    )
}

/// The parameters of [`in_project`].
fn project_args(project: &Project) -> (Rc<Vec<Value>>, bool) {
    (
        Rc::new(
            project
                .spellings
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| Value::from(p.clone()))
                .collect(),
        ),
        project.spellings.iter().any(String::is_empty),
    )
}

fn session_by_pk(c: &Connection, pk: i64) -> Result<Option<Session>> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.pk = ?1");
    Ok(c.prepare_cached(&sql)?
        .query_row([pk], |r| rows::session_from_row(r, 0))
        .optional()?
        .map(|(_, s)| s))
}

fn limit_value(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A list of integers as one `rarray` parameter.
fn id_array(ids: impl IntoIterator<Item = i64>) -> Rc<Vec<Value>> {
    Rc::new(ids.into_iter().map(Value::from).collect())
}

/// The grant a session was recorded under.
pub fn session_grant(c: &Connection, id: Uuid) -> Result<Option<String>> {
    Ok(
        c.prepare_cached("SELECT grant_name FROM sessions WHERE id = ?1")?
            .query_row([id.to_string()], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .flatten(),
    )
}

/// Sessions, newest first.
pub fn list_sessions(
    c: &Connection,
    filter: &SessionFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page<Session>> {
    let after = cursor
        .map(|t| decode_cursor_pair(t, "page_token"))
        .transpose()?;
    let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE 1=1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if !filter.statuses.is_empty() {
        sql.push_str(" AND s.status IN (");
        for (i, st) in filter.statuses.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(Box::new(st.as_str()));
        }
        sql.push(')');
    }
    if let Some(project) = &filter.project {
        let (names, unnamed) = project_args(project);
        sql.push_str(" AND (s.project IN rarray(?) OR (s.project IS NULL AND ?))");
        args.push(Box::new(names));
        args.push(Box::new(unnamed));
    }
    if let Some((started, pk)) = after {
        sql.push_str(" AND (s.started_at < ? OR (s.started_at = ? AND s.pk < ?))");
        args.extend([
            Box::new(started) as Box<dyn rusqlite::ToSql>,
            Box::new(started),
            Box::new(pk),
        ]);
    }
    sql.push_str(" ORDER BY s.started_at DESC, s.pk DESC LIMIT ?");
    args.push(Box::new(limit_value(limit + 1)));
    let mut stmt = c.prepare_cached(&sql)?;
    let mut page = PageFill::new(limit);
    for row in stmt.query_map(params_from_iter(args.iter()), |r| {
        rows::session_from_row(r, 0)
    })? {
        let row = row?;
        let size = row.1.approximate_size();
        if !page.offer(row, size) {
            break;
        }
    }
    Ok(page.into_page(
        |(pk, s)| format!("{}.{}", s.started_at.as_micros(), pk),
        |(_, s)| s,
    ))
}

/// Every project spelling with its sessions and the start of its newest.
pub fn projects(c: &Connection) -> Result<Vec<ProjectActivity>> {
    let mut stmt = c.prepare_cached(
        "SELECT COALESCE(project, ''), COUNT(*), MAX(started_at) FROM sessions GROUP BY project",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ProjectActivity {
                name: r.get(0)?,
                sessions: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                last_started: Timestamp(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// A session's outcomes in seq order.
pub fn list_outcomes(
    c: &Connection,
    session: SessionRef,
    filter: &OutcomeFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Session, Page<Outcome>)> {
    let (pk, s) = resolve(c, session)?;
    let after_seq = cursor
        .map(|t| decode_cursor_number(t, "page_token"))
        .transpose()?
        .unwrap_or(0);
    let (lo, hi) = outcome_rowid_range(pk);
    let lo = lo + i64::try_from(after_seq).unwrap_or(0) + 1;
    let failures_only =
        !filter.outcomes.is_empty() && filter.outcomes.iter().all(|o| o.is_failure());
    let mut sql = format!("SELECT {OUTCOME_COLUMNS} FROM outcomes o");
    let mut args: Vec<Value> = Vec::new();
    if failures_only {
        // The partial failures index holds only the few rows that failed.
        sql.push_str(" INDEXED BY outcomes_failures ");
        sql.push_str(OUTCOME_JOINS);
        sql.push_str(" WHERE o.session_pk = ? AND o.kind IN (2, 4) AND o.id BETWEEN ? AND ?");
        args.extend([pk.into(), lo.into(), hi.into()]);
    } else {
        sql.push(' ');
        sql.push_str(OUTCOME_JOINS);
        sql.push_str(" WHERE o.id BETWEEN ? AND ?");
        args.extend([lo.into(), hi.into()]);
    }
    if !filter.outcomes.is_empty() {
        sql.push_str(" AND o.kind IN (");
        for (i, o) in filter.outcomes.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(kind_code(*o).into());
        }
        sql.push(')');
    }
    if let Some(text) = filter.nodeid_contains.as_deref().filter(|t| !t.is_empty()) {
        sql.push_str(" AND instr(t.nodeid, ?) > 0");
        args.push(text.to_string().into());
    }
    sql.push_str(" ORDER BY o.id LIMIT ?");
    args.push(limit_value(limit + 1).into());
    let mut stmt = c.prepare_cached(&sql)?;
    let started = s.started_at;
    // Row by row: each is decoded (and its text decompressed) only if the
    // page has room for it.
    let mut page = PageFill::new(limit);
    for row in stmt.query_map(params_from_iter(args), |r| {
        rows::outcome_from_row(r, 0, started)
    })? {
        let o = row?;
        let size = o.approximate_size();
        if !page.offer(o, size) {
            break;
        }
    }
    Ok((s, page.into_page(|o| o.seq.to_string(), |o| o)))
}

/// One outcome row by id, with its session's start.
fn outcome_by_id(c: &Connection, id: i64, started: Timestamp) -> Result<Outcome> {
    let sql = format!("SELECT {OUTCOME_COLUMNS} FROM outcomes o {OUTCOME_JOINS} WHERE o.id = ?1");
    Ok(c.prepare_cached(&sql)?
        .query_row([id], |r| rows::outcome_from_row(r, 0, started))?)
}

/// The test ids stored under `nodeid` (the test itself and its subtests),
/// the test's own id if it has one, and the oldest session that holds any.
fn tests_of(c: &Connection, nodeid: &str) -> Result<(Vec<i64>, Option<i64>, i64)> {
    let mut stmt = c.prepare_cached("SELECT id, subtest, first_pk FROM tests WHERE nodeid = ?1")?;
    let mut rows = stmt.query([nodeid])?;
    let (mut ids, mut own, mut first) = (Vec::new(), None, i64::MAX);
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        if r.get_ref(1)?.as_str().is_ok_and(str::is_empty) {
            own = Some(id);
        }
        first = first.min(r.get(2)?);
        ids.push(id);
    }
    Ok((ids, own, first))
}

/// A session as a test's history walks it: its pk, its id, its code
/// state, and whether it is still open.
struct Walked {
    pk: i64,
    id: Uuid,
    code: Option<Arc<str>>,
    /// Running, or incomplete and so still taking outcomes: it has no
    /// `session_tests` or digest yet.
    open: bool,
}

/// Calls `each` with every session of `project` from `first_pk` on, newest
/// first, until it returns false.
fn sessions_newest_first(
    c: &Connection,
    first_pk: i64,
    project: &Project,
    mut each: impl FnMut(Walked) -> Result<bool>,
) -> Result<()> {
    let sql = format!(
        "SELECT s.pk, s.id, s.code_state, s.status NOT IN ('finished', 'interrupted')
         FROM sessions s INDEXED BY sessions_by_start
         WHERE s.pk >= ?3 AND {} ORDER BY s.started_at DESC, s.pk DESC",
        in_project(1)
    );
    let (names, unnamed) = project_args(project);
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![names, unnamed, first_pk])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(1)?;
        let walked = Walked {
            pk: r.get(0)?,
            id: Uuid::parse_str(&id)
                .map_err(|e| Error::Internal(format!("stored session id: {e}")))?,
            code: r.get::<_, Option<String>>(2)?.map(Arc::from),
            open: r.get(3)?,
        };
        if !each(walked)? {
            break;
        }
    }
    Ok(())
}

/// The (seq, test, kind) of every outcome of `tests` in one session, in seq
/// order: from `session_tests` for a closed session, from its rows while it
/// is open (it has no `session_tests` yet).
fn outcomes_of_tests(
    c: &Connection,
    pk: i64,
    open: bool,
    tests: &Rc<Vec<Value>>,
) -> Result<Vec<(u64, i64, i64)>> {
    Ok(runs_of_tests(c, pk, open, tests, false)?
        .into_iter()
        .map(|(seq, test, kind, _)| (seq, test, kind))
        .collect())
}

/// An outcome of a test in one session: seq, test, kind, and its
/// dependency set's code when it recorded one.
type RunOfTest = (u64, i64, i64, Option<u64>);

/// Like [`outcomes_of_tests`], with each outcome's dependency set's code
/// when `with_code` and it recorded one (what the flaky rule compares).
fn runs_of_tests(
    c: &Connection,
    pk: i64,
    open: bool,
    tests: &Rc<Vec<Value>>,
    with_code: bool,
) -> Result<Vec<RunOfTest>> {
    let mut out: Vec<RunOfTest> = Vec::new();
    if open {
        let (lo, hi) = outcome_rowid_range(pk);
        let sql = if with_code {
            "SELECT o.id, o.test_id, o.kind, ds.code FROM outcomes o
             LEFT JOIN dep_sets ds ON ds.id = o.deps
             WHERE o.id BETWEEN ?1 AND ?2 AND o.test_id IN rarray(?3) ORDER BY o.id"
        } else {
            "SELECT id, test_id, kind, NULL FROM outcomes
             WHERE id BETWEEN ?1 AND ?2 AND test_id IN rarray(?3) ORDER BY id"
        };
        let mut stmt = c.prepare_cached(sql)?;
        let mut rows = stmt.query(params![lo, hi, tests.clone()])?;
        while let Some(r) = rows.next()? {
            out.push((
                seq_of(r.get(0)?),
                r.get(1)?,
                r.get(2)?,
                r.get::<_, Option<i64>>(3)?.map(deps::from_sql),
            ));
        }
    } else {
        // A closed session's index has no sets: its outcome rows do, by rowid.
        let sql = if with_code {
            "SELECT st.seq, st.test_id, st.kind, ds.code FROM session_tests st
             LEFT JOIN outcomes o ON o.id = ((st.session_pk << 32) | st.seq)
             LEFT JOIN dep_sets ds ON ds.id = o.deps
             WHERE st.session_pk = ?1 AND st.test_id IN rarray(?2)"
        } else {
            "SELECT seq, test_id, kind, NULL FROM session_tests
             WHERE session_pk = ?1 AND test_id IN rarray(?2)"
        };
        let mut stmt = c.prepare_cached(sql)?;
        let mut rows = stmt.query(params![pk, tests.clone()])?;
        while let Some(r) = rows.next()? {
            out.push((
                u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                r.get(1)?,
                r.get(2)?,
                r.get::<_, Option<i64>>(3)?.map(deps::from_sql),
            ));
        }
        out.sort_unstable_by_key(|o| o.0);
    }
    Ok(out)
}

/// One test's outcomes in `project`, its subtests' included, newest session first.
pub fn test_history(
    c: &Connection,
    nodeid: &str,
    project: &Project,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page<HistoryEntry>> {
    let offset = cursor
        .map(|t| decode_cursor_number(t, "page_token"))
        .transpose()?
        .unwrap_or(0);
    let (ids, _, first_pk) = tests_of(c, nodeid)?;
    if ids.is_empty() {
        return Ok(Page {
            items: Vec::new(),
            next: None,
        });
    }
    let wanted = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .saturating_add(limit + 1);
    let ids = id_array(ids);
    let mut found: Vec<(i64, i64)> = Vec::new();
    sessions_newest_first(c, first_pk, project, |s| {
        for (seq, _, _) in outcomes_of_tests(c, s.pk, s.open, &ids)? {
            found.push((s.pk, outcome_rowid(s.pk, seq)));
        }
        Ok(found.len() < wanted)
    })?;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(found.len());
    let page: Vec<(i64, i64)> = found.into_iter().skip(start).take(limit + 1).collect();
    let mut sessions: HashMap<i64, Session> = HashMap::new();
    let mut fill = PageFill::new(limit);
    for (pk, id) in page.iter().take(limit) {
        let session = match sessions.get(pk) {
            Some(s) => s.clone(),
            None => {
                let s = session_by_pk(c, *pk)?
                    .ok_or_else(|| Error::Internal("a session vanished while reading".into()))?;
                sessions.insert(*pk, s.clone());
                s
            }
        };
        let outcome = outcome_by_id(c, *id, session.started_at)?;
        let size = session.approximate_size() + outcome.approximate_size();
        if !fill.offer(HistoryEntry { session, outcome }, size) {
            break;
        }
    }
    let (items, cut) = fill.finish();
    let next = (cut || page.len() > limit).then(|| (offset + items.len() as u64).to_string());
    Ok(Page { items, next })
}

fn counts_as_run(kind: i64) -> Option<bool> {
    match kind_of(kind) {
        Some(TestOutcome::Passed) => Some(false),
        Some(TestOutcome::Failed | TestOutcome::Error) => Some(true),
        _ => None,
    }
}

/// The newest `window` pass/fail outcomes of the test itself in `project`, oldest first.
pub fn test_runs(
    c: &Connection,
    nodeid: &str,
    project: &Project,
    window: usize,
) -> Result<Vec<Run>> {
    let (_, own, first_pk) = tests_of(c, nodeid)?;
    let Some(test) = own else {
        return Ok(Vec::new());
    };
    let mut runs: Vec<Run> = Vec::new();
    let only = id_array([test]);
    sessions_newest_first(c, first_pk, project, |s| {
        let kinds = runs_of_tests(c, s.pk, s.open, &only, true)?
            .into_iter()
            .filter_map(|(_, _, kind, code)| kind_of(kind).map(|k| (k, code)));
        // Newest first: this session's attempts from its last one back.
        for (failed, code) in attempts_with(kinds).into_iter().rev() {
            if runs.len() == window {
                break;
            }
            runs.push(Run {
                session: s.pk,
                id: s.id,
                code: run_code(code, &s.code),
                failed,
            });
        }
        Ok(runs.len() < window)
    })?;
    runs.reverse();
    Ok(runs)
}

/// The runs of each of these tests itself in the newest `sessions`
/// sessions of `project`, oldest first: one index probe per session for all
/// of them together, not a decoded digest per session.
pub fn runs_of(
    c: &Connection,
    nodeids: &[String],
    project: &Project,
    sessions: usize,
) -> Result<HashMap<String, Vec<Run>>> {
    let mut names: HashMap<i64, &str> = HashMap::new();
    let mut first = i64::MAX;
    for nodeid in nodeids {
        let (_, own, first_pk) = tests_of(c, nodeid)?;
        if let Some(test) = own {
            names.insert(test, nodeid);
            first = first.min(first_pk);
        }
    }
    if names.is_empty() || sessions == 0 {
        return Ok(HashMap::new());
    }
    let ids = id_array(names.keys().copied());
    // Per test, each session's runs, newest session first.
    let mut found: HashMap<i64, Vec<Vec<Run>>> = HashMap::new();
    let mut looked = 0;
    sessions_newest_first(c, first, project, |s| {
        looked += 1;
        let mut kinds: HashMap<i64, Vec<(TestOutcome, Option<u64>)>> = HashMap::new();
        for (_, test, kind, code) in runs_of_tests(c, s.pk, s.open, &ids, true)? {
            if let Some(kind) = kind_of(kind) {
                kinds.entry(test).or_default().push((kind, code));
            }
        }
        for (test, kinds) in kinds {
            let runs = attempts_with(kinds)
                .into_iter()
                .map(|(failed, code)| Run {
                    session: s.pk,
                    id: s.id,
                    code: run_code(code, &s.code),
                    failed,
                })
                .collect();
            found.entry(test).or_default().push(runs);
        }
        Ok(looked < sessions)
    })?;
    Ok(found
        .into_iter()
        .filter_map(|(test, per_session)| {
            let runs: Vec<Run> = per_session.into_iter().rev().flatten().collect();
            (!runs.is_empty()).then(|| (names[&test].to_string(), runs))
        })
        .collect())
}

/// A session's digest (with its durations when asked): the stored one, or
/// one built from its rows when it has none (still running) or it cannot be read.
pub fn digest_of(c: &Connection, pk: i64, with_durations: bool) -> Result<Digest> {
    let stored = if with_durations {
        c.prepare_cached("SELECT tests, durations FROM digests WHERE session_pk = ?1")?
            .query_row([pk], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, Some(r.get::<_, Vec<u8>>(1)?)))
            })
            .optional()?
    } else {
        c.prepare_cached("SELECT tests FROM digests WHERE session_pk = ?1")?
            .query_row([pk], |r| Ok((r.get::<_, Vec<u8>>(0)?, None)))
            .optional()?
    };
    if let Some((tests, durations)) = stored {
        match digest::decode(&tests, durations.as_deref()) {
            Ok(d) => return Ok(d),
            Err(e) => {
                tracing::warn!(session_pk = pk, error = %e, "reading the session's rows instead")
            }
        }
    }
    digest_from_rows(c, pk)
}

/// Builds a session's digest from its rows.
pub fn digest_from_rows(c: &Connection, pk: i64) -> Result<Digest> {
    let (lo, hi) = outcome_rowid_range(pk);
    let mut stmt = c.prepare_cached(
        "SELECT o.test_id, t.subtest != '', o.kind, o.duration
         FROM outcomes o JOIN tests t ON t.id = o.test_id
         WHERE o.id BETWEEN ?1 AND ?2 ORDER BY o.id",
    )?;
    let mut rows = stmt.query([lo, hi])?;
    let mut outcomes = Vec::new();
    while let Some(r) = rows.next()? {
        let kind: i64 = r.get(2)?;
        let kind = kind_of(kind)
            .ok_or_else(|| Error::Internal(format!("unknown outcome kind {kind} stored")))?;
        outcomes.push((r.get(0)?, r.get(1)?, kind, r.get(3)?));
    }
    Ok(digest::build(outcomes))
}

/// Builds a session's digest from its rows, and each attempt's dependency
/// set in the digest's attempt order.
pub fn digest_and_sets_from_rows(c: &Connection, pk: i64) -> Result<(Digest, Vec<Option<i64>>)> {
    let (lo, hi) = outcome_rowid_range(pk);
    let mut stmt = c.prepare_cached(
        "SELECT o.test_id, t.subtest != '', o.kind, o.duration, o.deps
         FROM outcomes o JOIN tests t ON t.id = o.test_id
         WHERE o.id BETWEEN ?1 AND ?2 ORDER BY o.id",
    )?;
    let mut rows = stmt.query([lo, hi])?;
    let mut outcomes = Vec::new();
    while let Some(r) = rows.next()? {
        let kind: i64 = r.get(2)?;
        let kind = kind_of(kind)
            .ok_or_else(|| Error::Internal(format!("unknown outcome kind {kind} stored")))?;
        outcomes.push((r.get(0)?, r.get(1)?, kind, r.get(3)?, r.get(4)?));
    }
    Ok(digest::build_with(outcomes))
}

/// What each test of `project` last ran ([`crate::store::deps::SnapshotScan`]):
/// its closed sessions' digests and per-attempt sets, newest first, then the
/// names, sets and units the newest runs need.
pub fn deps_snapshot(c: &Connection, project: &Project) -> Result<DepsSnapshot> {
    let sql = format!(
        "SELECT s.pk, s.id, s.status FROM sessions s WHERE {}
             AND s.status IN ('finished', 'interrupted')
         ORDER BY s.started_at DESC, s.pk DESC",
        in_project(1)
    );
    let (spellings, unnamed) = project_args(project);
    let sessions: Vec<(i64, Uuid, SessionStatus)> = c
        .prepare_cached(&sql)?
        .query_map(params![spellings.clone(), unnamed], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .map(|row| {
            let (pk, id, status) = row?;
            Ok((
                pk,
                Uuid::parse_str(&id)
                    .map_err(|e| Error::Internal(format!("stored session id: {e}")))?,
                status.parse().map_err(Error::Internal)?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut scan = SnapshotScan::default();
    let mut read = c.prepare_cached("SELECT tests FROM digests WHERE session_pk = ?1")?;
    let mut read_sets = c.prepare_cached("SELECT deps FROM digests WHERE session_pk = ?1")?;
    for (at, (pk, _, _)) in sessions.iter().enumerate() {
        let stored: Option<Vec<u8>> = read.query_row([pk], |r| r.get(0)).optional()?;
        // Most sessions ran no test a newer one did not: their keys say so.
        if let Some(tests) = &stored
            && let Ok(keys) = digest::decode_keys(tests)
            && !scan.has_new(&keys)
        {
            continue;
        }
        let decoded = stored.as_ref().and_then(|tests| {
            digest::decode(tests, None)
                .map_err(|e| tracing::warn!(session_pk = pk, error = %e, "reading the session's rows instead"))
                .ok()
        });
        match decoded {
            Some(d) => scan.add(at, &d, || {
                match read_sets.query_row([pk], |r| r.get::<_, Option<Vec<u8>>>(0))? {
                    Some(blob) => deps::decode_session_sets(&blob),
                    None => Ok(Vec::new()),
                }
            })?,
            None => {
                let (d, sets) = digest_and_sets_from_rows(c, *pk)?;
                scan.add(at, &d, || Ok(sets))?;
            }
        }
    }
    let mut tests: Vec<TestKey> = scan.found.iter().map(|f| f.test).collect();
    tests.sort_unstable();
    let mut names = HashMap::with_capacity(tests.len());
    rows_by_id(
        c,
        &tests,
        "SELECT id, nodeid, subtest FROM tests WHERE id IN rarray(?1)",
        "SELECT id, nodeid, subtest FROM tests WHERE id BETWEEN ?1 AND ?2",
        |r| {
            names.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
            Ok(())
        },
    )?;
    let mut sets = HashMap::new();
    rows_by_id(
        c,
        &scan.set_ids(),
        "SELECT id, units FROM dep_sets WHERE id IN rarray(?1)",
        "SELECT id, units FROM dep_sets WHERE id BETWEEN ?1 AND ?2",
        |r| {
            let blob = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            sets.insert(r.get::<_, i64>(0)?, deps::decode_units(blob)?);
            Ok(())
        },
    )?;
    let unit_ids = deps::distinct(sets.values().flatten().copied());
    let mut units = HashMap::with_capacity(unit_ids.len());
    rows_by_id(
        c,
        &unit_ids,
        "SELECT id, kind, path, name, line_start, line_end, checksum FROM dep_units
         WHERE id IN rarray(?1)",
        "SELECT id, kind, path, name, line_start, line_end, checksum FROM dep_units
         WHERE id BETWEEN ?1 AND ?2",
        |r| {
            let kind: i64 = r.get(1)?;
            units.insert(
                r.get::<_, i64>(0)?,
                StoredUnit {
                    kind: unit_kind_of(kind).ok_or_else(|| {
                        Error::Internal(format!("unknown unit kind {kind} stored"))
                    })?,
                    path: r.get(2)?,
                    name: r.get(3)?,
                    line_start: r.get(4)?,
                    line_end: r.get(5)?,
                    checksum: r.get(6)?,
                },
            );
            Ok(())
        },
    )?;
    // The newest closed session that recorded either (the environment
    // leaves out what is empty).
    let sql = format!(
        "SELECT s.environment FROM sessions s WHERE {}
             AND s.status IN ('finished', 'interrupted')
             AND (json_extract(s.environment, '$.watched_files') IS NOT NULL
                  OR json_extract(s.environment, '$.packages') IS NOT NULL)
         ORDER BY s.started_at DESC, s.pk DESC LIMIT 1",
        in_project(1)
    );
    let environment: Option<String> = c
        .prepare_cached(&sql)?
        .query_row(params![spellings, unnamed], |r| r.get(0))
        .optional()?;
    let environment: crate::model::Environment = match environment {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| Error::Internal(format!("stored environment: {e}")))?,
        None => crate::model::Environment::default(),
    };
    deps::assemble(
        scan,
        SnapshotParts {
            project: project.name.clone(),
            sessions: sessions.into_iter().map(|(_, id, st)| (id, st)).collect(),
            names,
            sets,
            units,
            watched_files: environment.watched_files,
            packages: environment.packages,
        },
    )
}

/// Calls `each` with the rows of these ids (sorted): one probe per id, or,
/// when they fill most of their range (a project's tests and sets mostly
/// do), one walk over the range, skipping the rows not asked for, which
/// reads ten thousand rows several times faster.
fn rows_by_id(
    c: &Connection,
    sorted: &[i64],
    probe: &str,
    range: &str,
    mut each: impl FnMut(&rusqlite::Row<'_>) -> Result<()>,
) -> Result<()> {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return Ok(());
    };
    if (last - first) / 2 < sorted.len() as i64 {
        let mut stmt = c.prepare_cached(range)?;
        let mut rows = stmt.query([first, last])?;
        let mut at = 0;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            while at < sorted.len() && sorted[at] < id {
                at += 1;
            }
            if sorted.get(at) == Some(&id) {
                each(r)?;
            }
        }
    } else {
        let mut stmt = c.prepare_cached(probe)?;
        let mut rows = stmt.query([id_array(sorted.iter().copied())])?;
        while let Some(r) = rows.next()? {
            each(r)?;
        }
    }
    Ok(())
}

/// The newest `window` sessions of `project` and the tests (not subtests)
/// that failed in one of them, with their pass/fail runs there, oldest first.
pub fn flaky_input(c: &Connection, window: usize, project: &Project) -> Result<FlakyInput> {
    let sql = format!(
        "SELECT s.pk, s.id, s.code_state FROM sessions s WHERE {}
         ORDER BY s.started_at DESC, s.pk DESC LIMIT ?3",
        in_project(1)
    );
    let (names, unnamed) = project_args(project);
    let mut recent: Vec<RunSession> = c
        .prepare_cached(&sql)?
        .query_map(params![names, unnamed, limit_value(window)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .map(|row| {
            let (pk, id, code) = row?;
            Ok(RunSession {
                key: pk,
                id: Uuid::parse_str(&id)
                    .map_err(|e| Error::Internal(format!("stored session id: {e}")))?,
                code: code.map(Arc::from),
            })
        })
        .collect::<Result<_>>()?;
    recent.reverse(); // oldest first: runs are chronological
    let digests: Vec<Digest> = recent
        .iter()
        .map(|s| digest_of(c, s.key, false))
        .collect::<Result<_>>()?;
    // The candidates' dependencies' code, only when there are candidates.
    let candidates = digest::flaky_candidates(&digests);
    let mut sets: Vec<Vec<Option<i64>>> = Vec::new();
    let mut codes: HashMap<i64, u64> = HashMap::new();
    if !candidates.is_empty() {
        for (s, d) in recent.iter().zip(&digests) {
            sets.push(session_sets(c, s.key, d)?);
        }
        let wanted = digest::candidate_sets(&candidates, &digests, &sets);
        if !wanted.is_empty() {
            let mut stmt =
                c.prepare_cached("SELECT id, code FROM dep_sets WHERE id IN rarray(?1)")?;
            let mut rows = stmt.query([id_array(wanted)])?;
            while let Some(r) = rows.next()? {
                codes.insert(r.get(0)?, deps::from_sql(r.get(1)?));
            }
        }
    }
    Ok(digest::flaky_input(&recent, &digests, &sets, &codes))
}

/// A session's dependency set per attempt, in the order of its digest `d`
/// (empty: none recorded): the closed session's stored ones, else (still
/// open) from its rows.
fn session_sets(c: &Connection, pk: i64, d: &Digest) -> Result<Vec<Option<i64>>> {
    let stored: Option<Option<Vec<u8>>> = c
        .prepare_cached("SELECT deps FROM digests WHERE session_pk = ?1")?
        .query_row([pk], |r| r.get(0))
        .optional()?;
    let sets = match stored {
        Some(None) => Vec::new(),
        Some(Some(blob)) => deps::decode_session_sets(&blob).unwrap_or_else(|e| {
            tracing::warn!(session_pk = pk, error = %e, "reading the session's sets from its rows");
            Vec::new()
        }),
        None => digest_and_sets_from_rows(c, pk)?.1,
    };
    // Sets that do not line up with the digest say nothing.
    Ok(if sets.len() == d.attempt_count() {
        sets
    } else {
        Vec::new()
    })
}

/// A session, its pk, and the final outcome (last attempt) of each of its tests.
pub fn session_finals(c: &Connection, session: SessionRef) -> Result<SessionFinals> {
    let (pk, s) = resolve(c, session)?;
    let d = digest_of(c, pk, true)?;
    Ok(SessionFinals {
        session: s,
        key: pk,
        finals: d.finals(),
    })
}

/// The nodeid and subtest of each test.
pub fn test_names(c: &Connection, tests: &[TestKey]) -> Result<HashMap<TestKey, (String, String)>> {
    let mut stmt =
        c.prepare_cached("SELECT id, nodeid, subtest FROM tests WHERE id IN rarray(?1)")?;
    let rows = stmt.query_map([id_array(tests.iter().copied())], |r| {
        Ok((r.get(0)?, (r.get(1)?, r.get(2)?)))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The message of each test's last failed attempt in a session.
pub fn failure_messages(
    c: &Connection,
    of: &[(SessionKey, TestKey)],
) -> Result<HashMap<(SessionKey, TestKey), String>> {
    let mut by_session: HashMap<SessionKey, Vec<TestKey>> = HashMap::new();
    for &(pk, test) in of {
        by_session.entry(pk).or_default().push(test);
    }
    let mut message = c.prepare_cached(
        "SELECT o.message, d.data FROM outcomes o LEFT JOIN details d ON d.id = o.id
         WHERE o.id = ?1",
    )?;
    let mut open = c.prepare_cached(
        "SELECT status NOT IN ('finished', 'interrupted') FROM sessions WHERE pk = ?1",
    )?;
    let mut out = HashMap::with_capacity(of.len());
    for (pk, tests) in by_session {
        let is_open: bool = open
            .query_row([pk], |r| r.get(0))
            .optional()?
            .unwrap_or(false);
        // In seq order: a later failed attempt replaces an earlier one.
        let mut last: HashMap<TestKey, u64> = HashMap::new();
        for (seq, test, kind) in outcomes_of_tests(c, pk, is_open, &id_array(tests))? {
            if counts_as_run(kind) == Some(true) {
                last.insert(test, seq);
            }
        }
        for (test, seq) in last {
            let (text, blob): (Option<String>, Option<Vec<u8>>) =
                message.query_row([outcome_rowid(pk, seq)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let text = match (text, blob) {
                (Some(m), _) => m,
                (None, Some(blob)) => detail::decode_message(&blob)?.unwrap_or_default(),
                _ => String::new(),
            };
            out.insert((pk, test), text);
        }
    }
    Ok(out)
}

/// A session's failures and errors in seq order, with their causes' keys.
pub fn failure_keys(c: &Connection, session: SessionRef) -> Result<(Session, Vec<KeyedFailure>)> {
    let (pk, s) = resolve(c, session)?;
    let keyed = c
        .prepare_cached(
            "SELECT o.id, t.nodeid, o.cause FROM outcomes o INDEXED BY outcomes_failures
             JOIN tests t ON t.id = o.test_id
             WHERE o.session_pk = ?1 AND o.kind IN (2, 4) ORDER BY o.id",
        )?
        .query_map([pk], |r| {
            Ok(KeyedFailure {
                seq: seq_of(r.get(0)?),
                nodeid: r.get(1)?,
                key: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((s, keyed))
}

/// These outcomes of a session, in seq order.
pub fn outcomes_at(c: &Connection, session: Uuid, seqs: &[u64]) -> Result<Vec<Outcome>> {
    let (pk, s) = resolve(c, SessionRef::Id(session))?;
    let sql = format!(
        "SELECT {OUTCOME_COLUMNS} FROM outcomes o {OUTCOME_JOINS}
         WHERE o.id IN rarray(?1) ORDER BY o.id"
    );
    let ids = id_array(seqs.iter().map(|&seq| outcome_rowid(pk, seq)));
    let items = c
        .prepare_cached(&sql)?
        .query_map([ids], |r| rows::outcome_from_row(r, 0, s.started_at))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(items)
}

/// A session's `limit` slowest outcomes, slowest first.
pub fn slowest(
    c: &Connection,
    session: SessionRef,
    limit: usize,
) -> Result<(Session, Vec<Outcome>)> {
    let (pk, s) = resolve(c, session)?;
    let (lo, hi) = outcome_rowid_range(pk);
    // Sort the narrow rows, then read the few wide ones.
    let ids: Vec<i64> = c
        .prepare_cached(
            "SELECT id FROM outcomes WHERE id BETWEEN ?1 AND ?2
             ORDER BY duration DESC, id LIMIT ?3",
        )?
        .query_map(params![lo, hi, limit_value(limit)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let items = ids
        .into_iter()
        .map(|id| outcome_by_id(c, id, s.started_at))
        .collect::<Result<_>>()?;
    Ok((s, items))
}

/// The newest session from `source` recorded under `grant` that is still running.
pub fn latest_running(
    c: &Connection,
    source: Source,
    grant: Option<&str>,
) -> Result<Option<Session>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s
         WHERE s.source = ?1 AND s.status = 'running' AND s.grant_name IS ?2
         ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(rusqlite::params![source.as_str(), grant], |r| {
            rows::session_from_row(r, 0)
        })
        .optional()?
        .map(|(_, s)| s))
}

/// The session of the same project started just before `head` (on its
/// branch too, when `same_branch` and it has one).
pub fn previous_session(
    c: &Connection,
    head: &Session,
    same_branch: bool,
) -> Result<Option<Session>> {
    let project = Some(head.environment.project.clone()).filter(|p| !p.is_empty());
    let branch = Some(head.environment.git_branch.clone()).filter(|b| same_branch && !b.is_empty());
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s
         WHERE s.project IS ?1 AND (?4 IS NULL OR s.git_branch = ?4)
           AND (s.started_at < ?2
                OR (s.started_at = ?2 AND s.pk < (SELECT pk FROM sessions WHERE id = ?3)))
         ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(
            params![
                project,
                head.started_at.as_micros(),
                head.id.to_string(),
                branch
            ],
            |r| rows::session_from_row(r, 0),
        )
        .optional()?
        .map(|(_, s)| s))
}

/// The newest `limit` audit rows, newest first.
/// Of `keys` of `project`, those recorded for sessions other than `session`.
pub fn known_causes(
    c: &Connection,
    project: &str,
    keys: &[String],
    session: Uuid,
) -> Result<HashMap<String, KnownCause>> {
    let mut stmt = c.prepare_cached(
        "SELECT MIN(cs.started_at), COUNT(*), MAX(cs.started_at), SUM(cs.failures) FROM causes c
         JOIN cause_sessions cs ON cs.cause_pk = c.pk
         WHERE c.project = ?1 AND c.key = ?2 AND cs.session <> ?3",
    )?;
    let session = session.to_string();
    let mut out = HashMap::new();
    for key in keys {
        let (first, n, last, failures): (Option<i64>, i64, Option<i64>, Option<i64>) = stmt
            .query_row(params![project, key, session], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        if let Some(first) = first.filter(|_| n > 0) {
            out.insert(
                key.clone(),
                KnownCause {
                    first_seen: Timestamp(first),
                    sessions: u64::try_from(n).unwrap_or(0),
                    last_seen: Timestamp(last.unwrap_or(first)),
                    failures: u64::try_from(failures.unwrap_or(0)).unwrap_or(0),
                    tests: 0,
                    some_tests: Vec::new(),
                },
            );
        }
    }
    let mut named = c.prepare_cached(
        "SELECT ct.nodeid FROM causes c JOIN cause_tests ct ON ct.cause_pk = c.pk
         WHERE c.project = ?1 AND c.key = ?2 ORDER BY ct.nodeid",
    )?;
    for (key, known) in out.iter_mut() {
        let mut rows = named.query(params![project, key])?;
        while let Some(row) = rows.next()? {
            if known.some_tests.len() < KNOWN_TESTS_NAMED {
                known.some_tests.push(row.get(0)?);
            }
            known.tests += 1;
        }
    }
    Ok(out)
}

/// The quarantine entries for `project` and for every project (all when `None`).
pub fn quarantine_entries(c: &Connection, project: Option<&str>) -> Result<Vec<QuarantineEntry>> {
    let sql = format!(
        "SELECT {} FROM quarantine WHERE ?1 IS NULL OR project IN ('', ?1)",
        rows::QUARANTINE_COLUMNS
    );
    let entries = c
        .prepare_cached(&sql)?
        .query_map([project], rows::quarantine_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(entries)
}

pub fn recent_audit(c: &Connection, limit: usize) -> Result<Vec<AuditEntry>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, at, grant_name, transport, tool, decision, result, reason, duration_us
         FROM audit ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit_value(limit)], |r| {
            Ok(AuditEntry {
                id: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                at: Timestamp(r.get(1)?),
                grant: r.get(2)?,
                transport: r.get(3)?,
                tool: r.get(4)?,
                decision: r.get(5)?,
                result: r.get(6)?,
                reason: r.get(7)?,
                duration_us: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every session, newest first, as retention sees it.
pub fn session_metas(c: &Connection) -> Result<Vec<SessionMeta>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, project, started_at, status, pinned, outcomes_stored FROM sessions
         ORDER BY started_at DESC, pk DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        let id: String = r.get(0)?;
        let status: String = r.get(3)?;
        Ok((
            id,
            r.get::<_, Option<String>>(1)?,
            r.get(2)?,
            status,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, project, started, status, pinned, outcomes) = row?;
        out.push(SessionMeta {
            id: Uuid::parse_str(&id)
                .map_err(|e| Error::Internal(format!("stored session id: {e}")))?,
            project: project.unwrap_or_default(),
            started_at: Timestamp(started),
            status: status.parse::<SessionStatus>().map_err(Error::Internal)?,
            pinned: pinned != 0,
            outcomes: u64::try_from(outcomes).unwrap_or(0),
        });
    }
    Ok(out)
}

/// How large the file is and how much of it is free.
pub fn storage_stats(c: &Connection) -> Result<StorageStats> {
    let pragma = |name: &str| -> Result<i64> {
        Ok(c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
    };
    let page = u64::try_from(pragma("page_size")?).unwrap_or(0);
    Ok(StorageStats {
        bytes: u64::try_from(pragma("page_count")?).unwrap_or(0) * page,
        free_bytes: u64::try_from(pragma("freelist_count")?).unwrap_or(0) * page,
        can_shrink: pragma("auto_vacuum")? == 2,
    })
}

/// Tests no outcome referred to on this snapshot, and what a writer must
/// recheck before removing them.
pub struct UnreferencedTests {
    /// The tests.
    pub candidates: Vec<i64>,
    /// The newest session pk of the snapshot.
    pub max_session_pk: i64,
    /// Sessions that could still take outcomes (running, incomplete).
    pub open_sessions: Vec<i64>,
}

/// Finds tests that no outcome refers to.
pub fn unreferenced_tests(c: &Connection) -> Result<UnreferencedTests> {
    let max_test: i64 = c.query_row("SELECT coalesce(max(id), 0) FROM tests", [], |r| r.get(0))?;
    let max_session_pk: i64 =
        c.query_row("SELECT coalesce(max(pk), 0) FROM sessions", [], |r| {
            r.get(0)
        })?;
    let open_sessions: Vec<i64> = c
        .prepare("SELECT pk FROM sessions WHERE status IN ('running', 'incomplete')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let size = usize::try_from(max_test).unwrap_or(0) + 1;
    let mut used = vec![false; size];
    let mut mark = |id: i64| {
        if let Some(slot) = usize::try_from(id).ok().and_then(|i| used.get_mut(i)) {
            *slot = true;
        }
    };
    // Closed sessions' tests are in session_tests; open ones' in their rows.
    let mut stmt = c.prepare("SELECT test_id FROM session_tests")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        mark(r.get(0)?);
    }
    let running: Vec<i64> = c
        .prepare("SELECT pk FROM sessions WHERE status NOT IN ('finished', 'interrupted')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut session_rows = c.prepare("SELECT test_id FROM outcomes WHERE id BETWEEN ?1 AND ?2")?;
    for pk in running {
        let (lo, hi) = outcome_rowid_range(pk);
        let mut rows = session_rows.query([lo, hi])?;
        while let Some(r) = rows.next()? {
            mark(r.get(0)?);
        }
    }
    let mut candidates = Vec::new();
    let mut all = c.prepare("SELECT id FROM tests")?;
    let mut rows = all.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        if !usize::try_from(id)
            .ok()
            .and_then(|i| used.get(i).copied())
            .unwrap_or(true)
        {
            candidates.push(id);
        }
    }
    Ok(UnreferencedTests {
        candidates,
        max_session_pk,
        open_sessions,
    })
}

/// Dependency sets no outcome referred to on this snapshot, units no
/// remaining set names, and what a writer must recheck before removing them.
pub struct UnreferencedDeps {
    /// The sets.
    pub sets: Vec<i64>,
    /// The units.
    pub units: Vec<i64>,
    /// The newest set id of the snapshot: newer sets may name the units.
    pub max_set_id: i64,
    /// The newest session pk of the snapshot.
    pub max_session_pk: i64,
    /// Sessions that could still take outcomes (running, incomplete).
    pub open_sessions: Vec<i64>,
}

/// Finds dependency sets no outcome refers to (closed sessions' sets are in
/// their digests' `deps`, open ones' in their rows; a deleted session's rows
/// count for nothing), and units only those sets named.
pub fn unreferenced_deps(c: &Connection) -> Result<UnreferencedDeps> {
    let max_session_pk: i64 =
        c.query_row("SELECT coalesce(max(pk), 0) FROM sessions", [], |r| {
            r.get(0)
        })?;
    let open_sessions: Vec<i64> = c
        .prepare("SELECT pk FROM sessions WHERE status NOT IN ('finished', 'interrupted')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut used: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut stmt = c.prepare(
        "SELECT d.session_pk, d.deps FROM digests d JOIN sessions s ON s.pk = d.session_pk
         WHERE d.deps IS NOT NULL",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let pk: i64 = r.get(0)?;
        match deps::decode_session_sets(&r.get::<_, Vec<u8>>(1)?) {
            Ok(sets) => used.extend(sets.into_iter().flatten()),
            // Unreadable: its rows say which sets it uses.
            Err(_) => used.extend(digest_and_sets_from_rows(c, pk)?.1.into_iter().flatten()),
        }
    }
    let mut session_rows = c.prepare(
        "SELECT DISTINCT deps FROM outcomes WHERE id BETWEEN ?1 AND ?2 AND deps IS NOT NULL",
    )?;
    for pk in &open_sessions {
        let (lo, hi) = outcome_rowid_range(*pk);
        let mut rows = session_rows.query([lo, hi])?;
        while let Some(r) = rows.next()? {
            used.insert(r.get(0)?);
        }
    }
    let mut sets = Vec::new();
    let mut units_used: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut max_set_id = 0;
    let mut all = c.prepare("SELECT id, units FROM dep_sets")?;
    let mut rows = all.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        max_set_id = max_set_id.max(id);
        if used.contains(&id) {
            units_used.extend(deps::decode_units(&r.get::<_, Vec<u8>>(1)?)?);
        } else {
            sets.push(id);
        }
    }
    let units: Vec<i64> = c
        .prepare("SELECT id FROM dep_units")?
        .query_map([], |r| r.get(0))?
        .filter(|id| id.as_ref().map_or(true, |id| !units_used.contains(id)))
        .collect::<rusqlite::Result<_>>()?;
    Ok(UnreferencedDeps {
        sets,
        units,
        max_set_id,
        max_session_pk,
        open_sessions,
    })
}
