//! The PostgreSQL backend's reads. Each runs in one read-only
//! repeatable-read transaction and so sees one snapshot.
//!
//! Reads by test probe `session_tests` (session, test) per closed session,
//! newest session first, in one statement that stops when the page is
//! full; a session still open (running, incomplete) is read from its rows.

use futures_util::{TryStreamExt, pin_mut};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::rows::{OUTCOME_COLUMNS, OUTCOME_JOINS, SESSION_COLUMNS, session_from_row};
use crate::error::{Error, Result};
use crate::model::{
    Outcome, Project, QuarantineEntry, Session, SessionRef, SessionStatus, Source, TestOutcome,
    Timestamp,
};
use crate::store::affected::{DepsSnapshot, StoredUnit};
use crate::store::analysis::{attempts_with, run_code};
use crate::store::backend::{
    FlakyInput, KNOWN_TESTS_NAMED, KnownCause, ProjectActivity, SessionFinals, SessionKey,
    SessionMeta, StorageStats, TestKey,
};
use crate::store::codes::unit_kind_of;
use crate::store::codes::{kind_code, kind_of};
use crate::store::deps::{self, SnapshotParts, SnapshotScan};
use crate::store::digest::{self, Digest};
use crate::store::fingerprint::KeyedFailure;
use crate::store::{
    AuditEntry, HistoryEntry, OutcomeFilter, Page, PageFill, Run, RunSession, SessionFilter,
    decode_cursor_number, decode_cursor_pair,
};

type Tx<'t> = deadpool_postgres::Transaction<'t>;

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Finds a session by reference, with its pk.
pub async fn resolve(tx: &Tx<'_>, session: SessionRef) -> Result<(i64, Session)> {
    let row = match &session {
        SessionRef::Id(id) => {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1"
                ))
                .await?;
            tx.query_opt(&stmt, &[id]).await?
        }
        SessionRef::Prefix(p) => {
            // A prefix of an id is a range of ids: the unique index answers it.
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id BETWEEN $1 AND $2 LIMIT 5"
                ))
                .await?;
            let mut rows = tx.query(&stmt, &[&p.lo, &p.hi]).await?;
            if rows.len() > 1 {
                let ids: Vec<Uuid> = rows.iter().map(|r| r.get(1)).collect();
                return Err(session.ambiguous("session_id", &ids));
            }
            rows.pop()
        }
        SessionRef::Latest(None) => {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions s
                     ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
                ))
                .await?;
            tx.query_opt(&stmt, &[]).await?
        }
        SessionRef::Latest(Some(project)) => {
            let (names, unnamed) = project_args(project);
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions s WHERE {}
                     ORDER BY s.started_at DESC, s.pk DESC LIMIT 1",
                    in_project(1)
                ))
                .await?;
            tx.query_opt(&stmt, &[&names, &unnamed]).await?
        }
    };
    match row {
        Some(r) => session_from_row(&r, 0),
        None => Err(session.not_found("session_id")),
    }
}

/// The condition "session `s` is of the project" over the two parameters
/// [`project_args`] makes ($n, $n+1): its spellings, and whether it is the
/// unnamed project (stored as NULL).
fn in_project(n: usize) -> String {
    format!(
        "(s.project = ANY(${n}::text[]) OR (s.project IS NULL AND ${}::bool))",
        n + 1
    )
}

/// The parameters of [`in_project`].
fn project_args(project: &Project) -> (Vec<String>, bool) {
    (
        project
            .spellings
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect(),
        project.spellings.iter().any(String::is_empty),
    )
}

async fn sessions_by_pk(tx: &Tx<'_>, pks: &[i64]) -> Result<HashMap<i64, Session>> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.pk = ANY($1)"
        ))
        .await?;
    let mut out = HashMap::new();
    for r in tx.query(&stmt, &[&pks]).await? {
        let (pk, s) = session_from_row(&r, 0)?;
        out.insert(pk, s);
    }
    Ok(out)
}

/// The grant a session was recorded under.
pub async fn session_grant(tx: &Tx<'_>, id: Uuid) -> Result<Option<String>> {
    let stmt = tx
        .prepare_cached("SELECT grant_name FROM sessions WHERE id = $1")
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&id])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Sessions, newest first.
pub async fn list_sessions(
    tx: &Tx<'_>,
    filter: &SessionFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page<Session>> {
    let after = cursor
        .map(|t| decode_cursor_pair(t, "page_token"))
        .transpose()?;
    let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    let (after_started, after_pk) = after.unwrap_or((i64::MAX, i64::MAX));
    let any_project = filter.project.is_none();
    let (names, unnamed) = filter
        .project
        .as_ref()
        .map(project_args)
        .unwrap_or_default();
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s
             WHERE (cardinality($1::text[]) = 0 OR s.status = ANY($1))
               AND ($6::bool OR {})
               AND (s.started_at < $4 OR (s.started_at = $4 AND s.pk < $5))
             ORDER BY s.started_at DESC, s.pk DESC LIMIT $7",
            in_project(2)
        ))
        .await?;
    let params: [&(dyn ToSql + Sync); 7] = [
        &statuses,
        &names,
        &unnamed,
        &after_started,
        &after_pk,
        &any_project,
        &as_i64(limit + 1),
    ];
    // Streamed, so a page stops at its byte bound without holding the rest.
    let rows = tx.query_raw(&stmt, params).await?;
    pin_mut!(rows);
    let mut page = PageFill::new(limit);
    while let Some(r) = rows.try_next().await? {
        let row = session_from_row(&r, 0)?;
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
pub async fn projects(tx: &Tx<'_>) -> Result<Vec<ProjectActivity>> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(project, ''), COUNT(*), MAX(started_at) FROM sessions GROUP BY project",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| ProjectActivity {
            name: r.get(0),
            sessions: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            last_started: Timestamp(r.get(2)),
        })
        .collect())
}

/// A session's outcomes in seq order.
pub async fn list_outcomes(
    tx: &Tx<'_>,
    session: SessionRef,
    filter: &OutcomeFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Session, Page<Outcome>)> {
    let (pk, s) = resolve(tx, session).await?;
    let after_seq = cursor
        .map(|t| decode_cursor_number(t, "page_token"))
        .transpose()?
        .unwrap_or(0);
    let failures_only =
        !filter.outcomes.is_empty() && filter.outcomes.iter().all(|o| o.is_failure());
    let kinds: Vec<i16> = filter
        .outcomes
        .iter()
        .map(|o| kind_code(*o) as i16)
        .collect();
    let contains = filter.nodeid_contains.as_deref().filter(|t| !t.is_empty());
    // Spelled out for failures, so that the partial failures index applies.
    let failures = if failures_only {
        " AND o.kind IN (2, 4)"
    } else {
        ""
    };
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {OUTCOME_COLUMNS} FROM outcomes o {OUTCOME_JOINS}
             WHERE o.session_pk = $1 AND o.seq > $2{failures}
               AND (cardinality($3::int2[]) = 0 OR o.kind = ANY($3))
               AND ($4::text IS NULL OR strpos(t.nodeid, $4) > 0)
             ORDER BY o.seq LIMIT $5"
        ))
        .await?;
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let rows_wanted = as_i64(limit + 1);
    let params: [&(dyn ToSql + Sync); 5] = [&pk, &after, &kinds, &contains, &rows_wanted];
    // Streamed, so a page stops at its byte bound without holding the rest.
    let rows = tx.query_raw(&stmt, params).await?;
    pin_mut!(rows);
    let mut page = PageFill::new(limit);
    while let Some(r) = rows.try_next().await? {
        let o = super::rows::outcome_from_row(&r, 0, s.started_at)?;
        let size = o.approximate_size();
        if !page.offer(o, size) {
            break;
        }
    }
    Ok((s, page.into_page(|o| o.seq.to_string(), |o| o)))
}

/// Outcomes by (session pk, seq), each with its session's start.
async fn outcomes_by_key(
    tx: &Tx<'_>,
    keys: &[(i64, i64)],
    started: &HashMap<i64, Timestamp>,
) -> Result<HashMap<(i64, i64), Outcome>> {
    let pks: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT o.session_pk, {OUTCOME_COLUMNS}
             FROM UNNEST($1::int8[], $2::int8[]) AS k (pk, seq)
             JOIN outcomes o ON o.session_pk = k.pk AND o.seq = k.seq {OUTCOME_JOINS}"
        ))
        .await?;
    let mut out = HashMap::new();
    for r in tx.query(&stmt, &[&pks, &seqs]).await? {
        let pk: i64 = r.get(0);
        let at = started.get(&pk).copied().unwrap_or(Timestamp(0));
        let o = super::rows::outcome_from_row(&r, 1, at)?;
        out.insert((pk, i64::try_from(o.seq).unwrap_or(0)), o);
    }
    Ok(out)
}

/// The test ids stored under `nodeid` (the test itself and its subtests),
/// the test's own id if it has one, and the oldest session that holds any.
async fn tests_of(tx: &Tx<'_>, nodeid: &str) -> Result<(Vec<i64>, Option<i64>, i64)> {
    let stmt = tx
        .prepare_cached("SELECT id, subtest, first_pk FROM tests WHERE nodeid = $1")
        .await?;
    let (mut ids, mut own, mut first) = (Vec::new(), None, i64::MAX);
    for r in tx.query(&stmt, &[&nodeid]).await? {
        let id: i64 = r.get(0);
        if r.get::<_, &str>(1).is_empty() {
            own = Some(id);
        }
        first = first.min(r.get(2));
        ids.push(id);
    }
    Ok((ids, own, first))
}

/// One outcome of a test as [`outcomes_of_tests`] finds it.
struct Found {
    pk: i64,
    id: Uuid,
    code: Option<String>,
    seq: i64,
    kind: i16,
    /// The outcome's dependency set's code, when it recorded one.
    deps: Option<u64>,
}

/// Every outcome of `tests` in the sessions of `project` from `first_pk`
/// on, newest session first, each session's in seq order. A closed session
/// is read from `session_tests`, an open one from its rows. `kinds` (empty:
/// all) filters; at most `limit` after `offset`.
#[allow(clippy::too_many_arguments)]
async fn outcomes_of_tests(
    tx: &Tx<'_>,
    tests: &[i64],
    project: &Project,
    first_pk: i64,
    kinds: &[i16],
    newest_attempt_first: bool,
    limit: usize,
    offset: usize,
) -> Result<Vec<Found>> {
    let order = if newest_attempt_first { "DESC" } else { "" };
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT s.pk, s.id, s.code_state, x.seq, x.kind, ds.code
             FROM sessions s CROSS JOIN LATERAL (
                 SELECT st.seq, st.kind, o.deps FROM session_tests st
                 LEFT JOIN outcomes o ON o.session_pk = st.session_pk AND o.seq = st.seq
                 WHERE s.status IN ('finished', 'interrupted')
                   AND st.session_pk = s.pk AND st.test_id = ANY($1)
                 UNION ALL
                 SELECT o.seq, o.kind, o.deps FROM outcomes o
                 WHERE s.status NOT IN ('finished', 'interrupted')
                   AND o.session_pk = s.pk AND o.test_id = ANY($1)
             ) x
             LEFT JOIN dep_sets ds ON ds.id = x.deps
             WHERE s.pk >= $2 AND (cardinality($3::int2[]) = 0 OR x.kind = ANY($3))
               AND {}
             ORDER BY s.started_at DESC, s.pk DESC, x.seq {order}
             LIMIT $4 OFFSET $5",
            in_project(6)
        ))
        .await?;
    let (names, unnamed) = project_args(project);
    let rows = tx
        .query(
            &stmt,
            &[
                &tests,
                &first_pk,
                &kinds,
                &as_i64(limit),
                &as_i64(offset),
                &names,
                &unnamed,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Found {
            pk: r.get(0),
            id: r.get(1),
            code: r.get(2),
            seq: r.get(3),
            kind: r.get(4),
            deps: r.get::<_, Option<i64>>(5).map(deps::from_sql),
        })
        .collect())
}

/// One test's outcomes in `project`, its subtests' included, newest session first.
pub async fn test_history(
    tx: &Tx<'_>,
    nodeid: &str,
    project: &Project,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page<HistoryEntry>> {
    let offset = cursor
        .map(|t| decode_cursor_number(t, "page_token"))
        .transpose()?
        .unwrap_or(0);
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    let (ids, _, first_pk) = tests_of(tx, nodeid).await?;
    if ids.is_empty() {
        return Ok(Page {
            items: Vec::new(),
            next: None,
        });
    }
    let found =
        outcomes_of_tests(tx, &ids, project, first_pk, &[], false, limit + 1, offset).await?;
    let more = found.len() > limit;
    let page: Vec<(i64, i64)> = found.iter().take(limit).map(|f| (f.pk, f.seq)).collect();
    let mut pks: Vec<i64> = page.iter().map(|p| p.0).collect();
    pks.sort_unstable();
    pks.dedup();
    let sessions = sessions_by_pk(tx, &pks).await?;
    let started: HashMap<i64, Timestamp> =
        sessions.iter().map(|(pk, s)| (*pk, s.started_at)).collect();
    // Read in small batches, so a page stops at its byte bound having
    // fetched little more than it holds.
    let mut fill = PageFill::new(limit);
    'page: for keys in page.chunks(HISTORY_BATCH) {
        let mut outcomes = outcomes_by_key(tx, keys, &started).await?;
        for key in keys {
            let (Some(session), Some(outcome)) = (sessions.get(&key.0), outcomes.remove(key))
            else {
                return Err(Error::Internal("a session vanished while reading".into()));
            };
            let size = session.approximate_size() + outcome.approximate_size();
            let entry = HistoryEntry {
                session: session.clone(),
                outcome,
            };
            if !fill.offer(entry, size) {
                break 'page;
            }
        }
    }
    let (items, cut) = fill.finish();
    let next = (cut || more).then(|| (offset as u64 + items.len() as u64).to_string());
    Ok(Page { items, next })
}

/// Outcomes of a test's history fetched per query.
const HISTORY_BATCH: usize = 32;

/// Kinds that count as a run: passed, failed, error.
fn run_kinds() -> Vec<i16> {
    [TestOutcome::Passed, TestOutcome::Failed, TestOutcome::Error]
        .into_iter()
        .map(|k| kind_code(k) as i16)
        .collect()
}

/// The newest `window` pass/fail outcomes of the test itself in
/// `project`, oldest first.
pub async fn test_runs(
    tx: &Tx<'_>,
    nodeid: &str,
    project: &Project,
    window: usize,
) -> Result<Vec<Run>> {
    let (_, own, first_pk) = tests_of(tx, nodeid).await?;
    let Some(test) = own else {
        return Ok(Vec::new());
    };
    // Sessions newest first, each one's outcomes in seq order; a teardown
    // error joins its attempt (`attempts_of`), so a few more rows than runs
    // are read.
    let found = outcomes_of_tests(
        tx,
        &[test],
        project,
        first_pk,
        &run_kinds(),
        false,
        window.saturating_mul(2),
        0,
    )
    .await?;
    let mut runs: Vec<Run> = Vec::new();
    for session in found.chunk_by(|a, b| a.pk == b.pk) {
        let kinds = session
            .iter()
            .filter_map(|f| kind_of(i64::from(f.kind)).map(|k| (k, f.deps)));
        let first = &session[0];
        let code = first.code.as_deref().map(Arc::from);
        for (failed, deps) in attempts_with(kinds).into_iter().rev() {
            runs.push(Run {
                session: first.pk,
                id: first.id,
                code: run_code(deps, &code),
                failed,
            });
        }
    }
    runs.truncate(window);
    runs.reverse();
    Ok(runs)
}

/// The runs of each of these tests itself in the newest `sessions`
/// sessions of `project`, oldest first, in one statement.
pub async fn runs_of(
    tx: &Tx<'_>,
    nodeids: &[String],
    project: &Project,
    sessions: usize,
) -> Result<HashMap<String, Vec<Run>>> {
    let mut names: HashMap<i64, &str> = HashMap::new();
    for nodeid in nodeids {
        if let (_, Some(test), _) = tests_of(tx, nodeid).await? {
            names.insert(test, nodeid);
        }
    }
    if names.is_empty() || sessions == 0 {
        return Ok(HashMap::new());
    }
    let tests: Vec<i64> = names.keys().copied().collect();
    let stmt = tx
        .prepare_cached(&format!(
            "WITH recent AS (
                 SELECT s.pk, s.id, s.code_state, s.status, s.started_at FROM sessions s
                 WHERE {} ORDER BY s.started_at DESC, s.pk DESC LIMIT $3)
             SELECT r.pk, r.id, r.code_state, x.test_id, x.kind, ds.code
             FROM recent r CROSS JOIN LATERAL (
                 SELECT st.test_id, st.seq, st.kind, o.deps FROM session_tests st
                 LEFT JOIN outcomes o ON o.session_pk = st.session_pk AND o.seq = st.seq
                 WHERE r.status IN ('finished', 'interrupted')
                   AND st.session_pk = r.pk AND st.test_id = ANY($4)
                 UNION ALL
                 SELECT o.test_id, o.seq, o.kind, o.deps FROM outcomes o
                 WHERE r.status NOT IN ('finished', 'interrupted')
                   AND o.session_pk = r.pk AND o.test_id = ANY($4)
             ) x
             LEFT JOIN dep_sets ds ON ds.id = x.deps
             ORDER BY r.started_at, r.pk, x.test_id, x.seq",
            in_project(1)
        ))
        .await?;
    let (project_names, unnamed) = project_args(project);
    let rows = tx
        .query(
            &stmt,
            &[&project_names, &unnamed, &as_i64(sessions), &tests],
        )
        .await?;
    let mut out: HashMap<String, Vec<Run>> = HashMap::new();
    for group in rows.chunk_by(|a, b| {
        (a.get::<_, i64>(0), a.get::<_, i64>(3)) == (b.get::<_, i64>(0), b.get::<_, i64>(3))
    }) {
        let first = &group[0];
        let test: i64 = first.get(3);
        let kinds = group.iter().filter_map(|r| {
            kind_of(i64::from(r.get::<_, i16>(4)))
                .map(|k| (k, r.get::<_, Option<i64>>(5).map(deps::from_sql)))
        });
        let code: Option<Arc<str>> = first.get::<_, Option<String>>(2).map(Arc::from);
        let runs = out.entry(names[&test].to_string()).or_default();
        for (failed, deps) in attempts_with(kinds) {
            runs.push(Run {
                session: first.get(0),
                id: first.get(1),
                code: run_code(deps, &code),
                failed,
            });
        }
    }
    Ok(out)
}

/// Builds a session's digest from its rows.
pub async fn digest_from_rows(tx: &Tx<'_>, pk: i64) -> Result<Digest> {
    let stmt = tx
        .prepare_cached(
            "SELECT o.test_id, t.subtest <> '', o.kind, o.duration
             FROM outcomes o JOIN tests t ON t.id = o.test_id
             WHERE o.session_pk = $1 ORDER BY o.seq",
        )
        .await?;
    let rows = tx.query(&stmt, &[&pk]).await?;
    let mut outcomes = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: i16 = r.get(2);
        let kind = kind_of(i64::from(kind))
            .ok_or_else(|| Error::Internal(format!("unknown outcome kind {kind} stored")))?;
        outcomes.push((r.get(0), r.get(1), kind, r.get(3)));
    }
    Ok(digest::build(outcomes))
}

/// Builds a session's digest from its rows, and each attempt's dependency
/// set in the digest's attempt order.
pub async fn digest_and_sets_from_rows(tx: &Tx<'_>, pk: i64) -> Result<(Digest, Vec<Option<i64>>)> {
    let stmt = tx
        .prepare_cached(
            "SELECT o.test_id, t.subtest <> '', o.kind, o.duration, o.deps
             FROM outcomes o JOIN tests t ON t.id = o.test_id
             WHERE o.session_pk = $1 ORDER BY o.seq",
        )
        .await?;
    let rows = tx.query(&stmt, &[&pk]).await?;
    let mut outcomes = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: i16 = r.get(2);
        let kind = kind_of(i64::from(kind))
            .ok_or_else(|| Error::Internal(format!("unknown outcome kind {kind} stored")))?;
        outcomes.push((
            r.get(0),
            r.get(1),
            kind,
            r.get(3),
            r.get::<_, Option<i64>>(4),
        ));
    }
    Ok(digest::build_with(outcomes))
}

/// What each test of `project` last ran (see the SQLite backend's
/// `deps_snapshot`: the same scan, the same assembly).
pub async fn deps_snapshot(tx: &Tx<'_>, project: &Project) -> Result<DepsSnapshot> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT s.pk, s.id, s.status FROM sessions s WHERE {}
                 AND s.status IN ('finished', 'interrupted')
             ORDER BY s.started_at DESC, s.pk DESC",
            in_project(1)
        ))
        .await?;
    let (spellings, unnamed) = project_args(project);
    let mut sessions: Vec<(i64, Uuid, SessionStatus)> = Vec::new();
    for r in tx.query(&stmt, &[&spellings, &unnamed]).await? {
        let status: String = r.get(2);
        sessions.push((r.get(0), r.get(1), status.parse().map_err(Error::Internal)?));
    }
    let pks: Vec<i64> = sessions.iter().map(|s| s.0).collect();
    let stmt = tx
        .prepare_cached("SELECT session_pk, tests, deps FROM digests WHERE session_pk = ANY($1)")
        .await?;
    let mut stored: HashMap<i64, (Vec<u8>, Option<Vec<u8>>)> = HashMap::new();
    for r in tx.query(&stmt, &[&pks]).await? {
        stored.insert(r.get(0), (r.get(1), r.get(2)));
    }
    let mut scan = SnapshotScan::default();
    for (at, (pk, _, _)) in sessions.iter().enumerate() {
        // Most sessions ran no test a newer one did not: their keys say so.
        if let Some((tests, _)) = stored.get(pk)
            && let Ok(keys) = digest::decode_keys(tests)
            && !scan.has_new(&keys)
        {
            continue;
        }
        let decoded = stored.get(pk).and_then(|(tests, sets)| {
            let d = digest::decode(tests, None)
                .map_err(|e| tracing::warn!(session_pk = pk, error = %e, "reading the session's rows instead"))
                .ok()?;
            Some((d, sets.as_deref()))
        });
        match decoded {
            Some((d, sets)) => scan.add(at, &d, || match sets {
                Some(blob) => deps::decode_session_sets(blob),
                None => Ok(Vec::new()),
            })?,
            None => {
                let (d, sets) = digest_and_sets_from_rows(tx, *pk).await?;
                scan.add(at, &d, || Ok(sets))?;
            }
        }
    }
    let tests: Vec<TestKey> = scan.found.iter().map(|f| f.test).collect();
    let names = test_names(tx, &tests).await?;
    let stmt = tx
        .prepare_cached("SELECT id, units FROM dep_sets WHERE id = ANY($1)")
        .await?;
    let mut sets = HashMap::new();
    for r in tx.query(&stmt, &[&scan.set_ids()]).await? {
        sets.insert(
            r.get::<_, i64>(0),
            deps::decode_units(r.get::<_, &[u8]>(1))?,
        );
    }
    let unit_ids = deps::distinct(sets.values().flatten().copied());
    let stmt = tx
        .prepare_cached(
            "SELECT id, kind, path, name, line_start, line_end, checksum FROM dep_units
             WHERE id = ANY($1)",
        )
        .await?;
    let mut units = HashMap::with_capacity(unit_ids.len());
    for r in tx.query(&stmt, &[&unit_ids]).await? {
        let kind: i16 = r.get(1);
        units.insert(
            r.get::<_, i64>(0),
            StoredUnit {
                kind: unit_kind_of(i64::from(kind))
                    .ok_or_else(|| Error::Internal(format!("unknown unit kind {kind} stored")))?,
                path: r.get(2),
                name: r.get(3),
                line_start: u32::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                line_end: u32::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                checksum: r.get(6),
            },
        );
    }
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT s.environment FROM sessions s WHERE {}
                 AND s.status IN ('finished', 'interrupted')
                 AND (s.environment::jsonb ? 'watched_files' OR s.environment::jsonb ? 'packages')
             ORDER BY s.started_at DESC, s.pk DESC LIMIT 1",
            in_project(1)
        ))
        .await?;
    let environment: crate::model::Environment =
        match tx.query_opt(&stmt, &[&spellings, &unnamed]).await? {
            Some(r) => serde_json::from_str(r.get::<_, &str>(0))
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

/// The digests of sessions (with durations when asked): stored ones, and
/// ones built from the rows of sessions that have none yet.
async fn digests_of(tx: &Tx<'_>, pks: &[i64], with_durations: bool) -> Result<Vec<Digest>> {
    let stmt = tx
        .prepare_cached(
            "SELECT session_pk, tests, CASE WHEN $2 THEN durations END
             FROM digests WHERE session_pk = ANY($1)",
        )
        .await?;
    let mut stored: HashMap<i64, Digest> = HashMap::new();
    for r in tx.query(&stmt, &[&pks, &with_durations]).await? {
        let pk: i64 = r.get(0);
        let tests: Vec<u8> = r.get(1);
        let durations: Option<Vec<u8>> = r.get(2);
        match digest::decode(&tests, durations.as_deref()) {
            Ok(d) => {
                stored.insert(pk, d);
            }
            Err(e) => {
                tracing::warn!(session_pk = pk, error = %e, "reading the session's rows instead")
            }
        }
    }
    let mut out = Vec::with_capacity(pks.len());
    for pk in pks {
        out.push(match stored.remove(pk) {
            Some(d) => d,
            None => digest_from_rows(tx, *pk).await?,
        });
    }
    Ok(out)
}

/// The newest `window` sessions of `project` and the tests that failed in
/// one of them, with their pass/fail runs there, oldest first.
pub async fn flaky_input(tx: &Tx<'_>, window: usize, project: &Project) -> Result<FlakyInput> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT s.pk, s.id, s.code_state FROM sessions s WHERE {}
             ORDER BY s.started_at DESC, s.pk DESC LIMIT $3",
            in_project(1)
        ))
        .await?;
    let (names, unnamed) = project_args(project);
    let mut recent: Vec<RunSession> = tx
        .query(&stmt, &[&names, &unnamed, &as_i64(window)])
        .await?
        .iter()
        .map(|r| RunSession {
            key: r.get(0),
            id: r.get(1),
            code: r.get::<_, Option<String>>(2).map(Arc::from),
        })
        .collect();
    recent.reverse(); // oldest first: runs are chronological
    let pks: Vec<i64> = recent.iter().map(|r| r.key).collect();
    let digests = digests_of(tx, &pks, false).await?;
    // The candidates' dependencies' code, only when there are candidates.
    let candidates = digest::flaky_candidates(&digests);
    let mut sets: Vec<Vec<Option<i64>>> = Vec::new();
    let mut codes: HashMap<i64, u64> = HashMap::new();
    if !candidates.is_empty() {
        let stmt = tx
            .prepare_cached("SELECT session_pk, deps FROM digests WHERE session_pk = ANY($1)")
            .await?;
        let mut stored: HashMap<i64, Option<Vec<u8>>> = HashMap::new();
        for r in tx.query(&stmt, &[&pks]).await? {
            stored.insert(r.get(0), r.get(1));
        }
        for (pk, d) in pks.iter().zip(&digests) {
            let found = match stored.remove(pk) {
                Some(None) => Vec::new(),
                Some(Some(blob)) => deps::decode_session_sets(&blob).unwrap_or_else(|e| {
                    tracing::warn!(session_pk = pk, error = %e, "ignoring the session's sets");
                    Vec::new()
                }),
                None => digest_and_sets_from_rows(tx, *pk).await?.1,
            };
            // Sets that do not line up with the digest say nothing.
            sets.push(if found.len() == d.attempt_count() {
                found
            } else {
                Vec::new()
            });
        }
        let wanted = digest::candidate_sets(&candidates, &digests, &sets);
        if !wanted.is_empty() {
            let stmt = tx
                .prepare_cached("SELECT id, code FROM dep_sets WHERE id = ANY($1)")
                .await?;
            for r in tx.query(&stmt, &[&wanted]).await? {
                codes.insert(r.get(0), deps::from_sql(r.get(1)));
            }
        }
    }
    Ok(digest::flaky_input(&recent, &digests, &sets, &codes))
}

/// A session, its pk, and the final outcome (last attempt) of each of its tests.
pub async fn session_finals(tx: &Tx<'_>, session: SessionRef) -> Result<SessionFinals> {
    let (pk, s) = resolve(tx, session).await?;
    let d = digests_of(tx, &[pk], true).await?.pop().unwrap_or_default();
    Ok(SessionFinals {
        session: s,
        key: pk,
        finals: d.finals(),
    })
}

/// The nodeid and subtest of each test.
pub async fn test_names(
    tx: &Tx<'_>,
    tests: &[TestKey],
) -> Result<HashMap<TestKey, (String, String)>> {
    let stmt = tx
        .prepare_cached("SELECT id, nodeid, subtest FROM tests WHERE id = ANY($1)")
        .await?;
    Ok(tx
        .query(&stmt, &[&tests])
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The message of each test's last failed attempt in a session.
pub async fn failure_messages(
    tx: &Tx<'_>,
    of: &[(SessionKey, TestKey)],
) -> Result<HashMap<(SessionKey, TestKey), String>> {
    let pks: Vec<i64> = of.iter().map(|k| k.0).collect();
    let tests: Vec<i64> = of.iter().map(|k| k.1).collect();
    // Failures are few and indexed (the partial failures index).
    let stmt = tx
        .prepare_cached(
            "SELECT DISTINCT ON (o.session_pk, o.test_id) o.session_pk, o.test_id, o.message, o.detail
             FROM UNNEST($1::int8[], $2::int8[]) AS k (pk, test)
             JOIN outcomes o ON o.session_pk = k.pk AND o.test_id = k.test AND o.kind IN (2, 4)
             ORDER BY o.session_pk, o.test_id, o.seq DESC",
        )
        .await?;
    let mut out = HashMap::with_capacity(of.len());
    for r in tx.query(&stmt, &[&pks, &tests]).await? {
        let text: Option<String> = r.get(2);
        let blob: Option<Vec<u8>> = r.get(3);
        let text = match (text, blob) {
            (Some(m), _) => m,
            (None, Some(blob)) => crate::store::detail::decode_message(&blob)?.unwrap_or_default(),
            _ => String::new(),
        };
        out.insert((r.get(0), r.get(1)), text);
    }
    Ok(out)
}

/// A session's `limit` slowest outcomes, slowest first.
/// A session's failures and errors in seq order, with their causes' keys.
pub async fn failure_keys(
    tx: &Tx<'_>,
    session: SessionRef,
) -> Result<(Session, Vec<KeyedFailure>)> {
    let (pk, s) = resolve(tx, session).await?;
    let stmt = tx
        .prepare_cached(
            "SELECT o.seq, t.nodeid, o.cause FROM outcomes o JOIN tests t ON t.id = o.test_id
             WHERE o.session_pk = $1 AND o.kind IN (2, 4) ORDER BY o.seq",
        )
        .await?;
    let keyed = tx
        .query(&stmt, &[&pk])
        .await?
        .iter()
        .map(|r| KeyedFailure {
            seq: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            nodeid: r.get(1),
            key: r.get(2),
        })
        .collect();
    Ok((s, keyed))
}

/// These outcomes of a session, in seq order.
pub async fn outcomes_at(tx: &Tx<'_>, session: Uuid, seqs: &[u64]) -> Result<Vec<Outcome>> {
    let (pk, s) = resolve(tx, SessionRef::Id(session)).await?;
    let seqs: Vec<i64> = seqs
        .iter()
        .map(|&q| i64::try_from(q).unwrap_or(i64::MAX))
        .collect();
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {OUTCOME_COLUMNS} FROM outcomes o {OUTCOME_JOINS}
             WHERE o.session_pk = $1 AND o.seq = ANY($2) ORDER BY o.seq"
        ))
        .await?;
    tx.query(&stmt, &[&pk, &seqs])
        .await?
        .iter()
        .map(|r| super::rows::outcome_from_row(r, 0, s.started_at))
        .collect()
}

pub async fn slowest(
    tx: &Tx<'_>,
    session: SessionRef,
    limit: usize,
) -> Result<(Session, Vec<Outcome>)> {
    let (pk, s) = resolve(tx, session).await?;
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {OUTCOME_COLUMNS} FROM (
                 SELECT * FROM outcomes WHERE session_pk = $1
                 ORDER BY duration DESC, seq LIMIT $2) o {OUTCOME_JOINS}
             ORDER BY o.duration DESC, o.seq"
        ))
        .await?;
    let items = tx
        .query(&stmt, &[&pk, &as_i64(limit)])
        .await?
        .iter()
        .map(|r| super::rows::outcome_from_row(r, 0, s.started_at))
        .collect::<Result<_>>()?;
    Ok((s, items))
}

/// The newest session from `source` recorded under `grant` that is still running.
pub async fn latest_running(
    tx: &Tx<'_>,
    source: Source,
    grant: Option<&str>,
) -> Result<Option<Session>> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s
             WHERE s.source = $1 AND s.status = 'running'
               AND s.grant_name IS NOT DISTINCT FROM $2::text
             ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
        ))
        .await?;
    tx.query_opt(&stmt, &[&source.as_str(), &grant])
        .await?
        .map(|r| session_from_row(&r, 0).map(|(_, s)| s))
        .transpose()
}

/// The session of the same project started just before `head` (on its
/// branch too, when `same_branch` and it has one).
pub async fn previous_session(
    tx: &Tx<'_>,
    head: &Session,
    same_branch: bool,
) -> Result<Option<Session>> {
    let project = Some(head.environment.project.clone()).filter(|p| !p.is_empty());
    let branch = Some(head.environment.git_branch.clone()).filter(|b| same_branch && !b.is_empty());
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s
             WHERE s.project IS NOT DISTINCT FROM $1
               AND ($4::text IS NULL OR s.git_branch = $4)
               AND (s.started_at < $2
                    OR (s.started_at = $2 AND s.pk < (SELECT pk FROM sessions WHERE id = $3)))
             ORDER BY s.started_at DESC, s.pk DESC LIMIT 1"
        ))
        .await?;
    tx.query_opt(
        &stmt,
        &[&project, &head.started_at.as_micros(), &head.id, &branch],
    )
    .await?
    .map(|r| session_from_row(&r, 0).map(|(_, s)| s))
    .transpose()
}

/// The newest `limit` audit rows, newest first.
/// Of `keys` of `project`, those recorded for sessions other than `session`.
pub async fn known_causes(
    tx: &Tx<'_>,
    project: &str,
    keys: &[String],
    session: Uuid,
) -> Result<HashMap<String, KnownCause>> {
    let stmt = tx
        .prepare_cached(
            "SELECT c.key, MIN(cs.started_at), COUNT(*), MAX(cs.started_at),
                 SUM(cs.failures)::int8 FROM causes c
             JOIN cause_sessions cs ON cs.cause_pk = c.pk
             WHERE c.project = $1 AND c.key = ANY($2) AND cs.session <> $3
             GROUP BY c.key",
        )
        .await?;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut out: HashMap<String, KnownCause> = tx
        .query(&stmt, &[&project, &keys, &session])
        .await?
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            let first: i64 = r.get(1);
            let n: i64 = r.get(2);
            let last: i64 = r.get(3);
            let failures: i64 = r.get(4);
            (
                key,
                KnownCause {
                    first_seen: Timestamp(first),
                    sessions: u64::try_from(n).unwrap_or(0),
                    last_seen: Timestamp(last),
                    failures: u64::try_from(failures).unwrap_or(0),
                    tests: 0,
                    some_tests: Vec::new(),
                },
            )
        })
        .collect();
    let named = tx
        .prepare_cached(
            "SELECT c.key, COUNT(*), (array_agg(ct.nodeid ORDER BY ct.nodeid))[1:$3]
             FROM causes c JOIN cause_tests ct ON ct.cause_pk = c.pk
             WHERE c.project = $1 AND c.key = ANY($2) GROUP BY c.key",
        )
        .await?;
    let limit = KNOWN_TESTS_NAMED as i32;
    for r in tx.query(&named, &[&project, &keys, &limit]).await? {
        let key: String = r.get(0);
        if let Some(known) = out.get_mut(&key) {
            known.tests = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
            known.some_tests = r.get(2);
        }
    }
    Ok(out)
}

/// The quarantine entries for `project` and for every project (all when `None`).
pub async fn quarantine_entries(
    tx: &Tx<'_>,
    project: Option<&str>,
) -> Result<Vec<QuarantineEntry>> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {} FROM quarantine WHERE $1::text IS NULL OR project IN ('', $1)",
            super::rows::QUARANTINE_COLUMNS
        ))
        .await?;
    tx.query(&stmt, &[&project])
        .await?
        .iter()
        .map(super::rows::quarantine_from_row)
        .collect()
}

pub async fn recent_audit(tx: &Tx<'_>, limit: usize) -> Result<Vec<AuditEntry>> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, at, grant_name, transport, tool, decision, result, reason, duration_us
             FROM audit ORDER BY id DESC LIMIT $1",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&as_i64(limit)])
        .await?
        .iter()
        .map(|r| AuditEntry {
            id: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            at: Timestamp(r.get(1)),
            grant: r.get(2),
            transport: r.get(3),
            tool: r.get(4),
            decision: r.get(5),
            result: r.get(6),
            reason: r.get(7),
            duration_us: u64::try_from(r.get::<_, i64>(8)).unwrap_or(0),
        })
        .collect())
}

/// Every session, newest first, as retention sees it.
pub async fn session_metas(tx: &Tx<'_>) -> Result<Vec<SessionMeta>> {
    let rows = tx
        .query(
            "SELECT id, project, started_at, status, pinned, outcomes_stored FROM sessions
             ORDER BY started_at DESC, pk DESC",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let status: String = r.get(3);
            Ok(SessionMeta {
                id: r.get(0),
                project: r.get::<_, Option<String>>(1).unwrap_or_default(),
                started_at: Timestamp(r.get(2)),
                status: status.parse::<SessionStatus>().map_err(Error::Internal)?,
                pinned: r.get(4),
                outcomes: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
            })
        })
        .collect()
}

/// How large the database is. PostgreSQL's vacuum reuses the space of
/// deleted rows; nothing is returned in steps.
pub async fn storage_stats(tx: &Tx<'_>) -> Result<StorageStats> {
    let row = tx
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?;
    Ok(StorageStats {
        bytes: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        free_bytes: 0,
        can_shrink: false,
    })
}
