//! The PostgreSQL backend's writes, each run inside the caller's
//! transaction (see the parent module for what it guarantees).
//!
//! Every write that touches a session first locks its row
//! (`SELECT … FOR UPDATE`), then applies the rules to the session as read
//! under the lock, then writes. Outcome rows go in one statement per batch:
//! `COPY … FROM STDIN BINARY` (the default) or `INSERT … SELECT FROM UNNEST`
//! (`PYTEST_MCP_PG_BULK=unnest`), both measured by `benches/ingest.rs`.

use futures_util::pin_mut;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::rows::{SESSION_COLUMNS, session_from_row};
use super::schema::{CHANNEL, TESTS_LOCK};
use super::{Shared, reads};
use crate::error::{Error, Result};
use crate::model::fold_project;
use crate::model::{
    CodeUnit, QuarantineEntry, Session, SessionRef, SessionStatus, Summary, Timestamp,
};
use crate::store::audit::{self, AuditEntry};
use crate::store::backend::Reclaimed;
use crate::store::codes::{kind_code, phase_code, unit_kind_code};
use crate::store::counters::{Count, Key, Update};
use crate::store::deps::{self, DepSet, SetDigest};
use crate::store::detail::NewOutcome;
use crate::store::digest;
use crate::store::rules::{self, FinishPlan, NewSession};

type Tx<'t> = deadpool_postgres::Transaction<'t>;

/// Most tests the id cache holds before it starts over.
const MAX_CACHED_TESTS: usize = 1_000_000;

/// Ids of tests and marker sets known to be committed, shared by every
/// connection of this replica.
#[derive(Default)]
pub struct Interned {
    tests: HashMap<(Box<str>, Box<str>), (i64, i64)>,
    markers: HashMap<Box<str>, i64>,
    /// The `tests_generation` these ids are valid for.
    generation: i64,
    /// Per folded project: unit key -> (unit id, code).
    units: HashMap<Box<str>, HashMap<u64, (i64, u64)>>,
    /// Per folded project: set digest -> set id.
    sets: HashMap<Box<str>, HashMap<SetDigest, i64>>,
    /// Units and sets cached, all projects together.
    dep_entries: usize,
    /// The `deps_generation` the units and sets are valid for.
    deps_generation: i64,
}

impl Interned {
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.tests.clear();
        self.markers.clear();
        self.units.clear();
        self.sets.clear();
        self.dep_entries = 0;
    }
}

/// Most dependency units and sets the cache holds before it starts over.
const MAX_CACHED_DEPS: usize = 2_000_000;

/// A test's (nodeid, subtest) and its (id, first session pk).
type TestEntry = ((Box<str>, Box<str>), (i64, i64));

/// A unit a transaction read or stored: (folded project, key) and (id, code).
type LearnedUnit = ((Box<str>, u64), (i64, u64));

/// Ids a transaction read or stored, to be cached once it has committed.
#[derive(Default)]
pub struct Learned {
    generation: i64,
    tests: Vec<TestEntry>,
    markers: Vec<(Box<str>, i64)>,
    deps_generation: i64,
    units: Vec<LearnedUnit>,
    sets: Vec<((Box<str>, SetDigest), i64)>,
}

impl Learned {
    /// Adds what was learned to the cache (call after commit).
    pub fn keep(self, interned: &Mutex<Interned>) {
        let mut cache = interned.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != self.generation {
            return;
        }
        if cache.tests.len() + self.tests.len() > MAX_CACHED_TESTS {
            cache.tests.clear();
        }
        if cache.markers.len() > 100_000 {
            cache.markers.clear();
        }
        cache.tests.extend(self.tests);
        cache.markers.extend(self.markers);
        if cache.deps_generation != self.deps_generation {
            return;
        }
        if cache.dep_entries + self.units.len() + self.sets.len() > MAX_CACHED_DEPS {
            cache.units.clear();
            cache.sets.clear();
            cache.dep_entries = 0;
        }
        cache.dep_entries += self.units.len() + self.sets.len();
        for ((project, key), unit) in self.units {
            cache.units.entry(project).or_default().insert(key, unit);
        }
        for ((project, digest), id) in self.sets {
            cache.sets.entry(project).or_default().insert(digest, id);
        }
    }
}

/// Whether outcome rows go through binary COPY (else INSERT … UNNEST).
fn bulk_copy() -> bool {
    static COPY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COPY.get_or_init(|| std::env::var("PYTEST_MCP_PG_BULK").as_deref() != Ok("unnest"))
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `None` for an empty string, so absent text is NULL.
fn nullable(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// The session with its pk, locked for the rest of the transaction.
async fn lock_session(tx: &Tx<'_>, id: Uuid) -> Result<Option<(i64, Session)>> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1 FOR UPDATE"
        ))
        .await?;
    tx.query_opt(&stmt, &[&id])
        .await?
        .map(|r| session_from_row(&r, 0))
        .transpose()
}

/// Announces a committed change to every replica (delivered at commit).
async fn notify(tx: &Tx<'_>, id: Uuid, status: SessionStatus, stored: u64) -> Result<()> {
    let payload = format!("{id} {} {stored}", status.as_str());
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&stmt, &[&CHANNEL, &payload]).await?;
    Ok(())
}

/// Creates a session, or returns it when the same start is repeated.
pub async fn start(tx: &Tx<'_>, new: &NewSession) -> Result<Session> {
    let env_json = serde_json::to_string(&new.environment)
        .map_err(|e| Error::Internal(format!("encoding environment: {e}")))?;
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO sessions AS s (id, source, status, started_at, project, git_commit,
                 environment, grant_name, code_state, git_branch)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO NOTHING
             RETURNING {SESSION_COLUMNS}"
        ))
        .await?;
    let inserted = tx
        .query_opt(
            &stmt,
            &[
                &new.id,
                &new.source.as_str(),
                &SessionStatus::Running.as_str(),
                &new.started_at.as_micros(),
                &nullable(&new.environment.project),
                &nullable(&new.environment.git_commit),
                &env_json,
                &new.grant,
                &new.environment.code_identity(),
                &nullable(&new.environment.git_branch),
            ],
        )
        .await?;
    if let Some(row) = inserted {
        let (_, session) = session_from_row(&row, 0)?;
        notify(tx, new.id, session.status, 0).await?;
        return Ok(session);
    }
    let (_, existing) = lock_session(tx, new.id)
        .await?
        .ok_or_else(|| Error::Conflict("a session being created was deleted".into()))?;
    rules::check_restart(&existing, new)?;
    Ok(existing)
}

/// Appends one outcome as the session's next seq.
pub async fn append_next(
    tx: &Tx<'_>,
    shared: &Shared,
    id: Uuid,
    outcome: &NewOutcome,
) -> Result<(u64, Learned)> {
    let (pk, session) = lock_session(tx, id)
        .await?
        .ok_or_else(|| rules::no_session_for_outcomes(id))?;
    let mut numbered = outcome.clone();
    numbered.outcome.seq = rules::next_seq(&session);
    let seq = numbered.outcome.seq;
    let (_, learned) = append_locked(
        tx,
        shared,
        id,
        pk,
        session,
        std::slice::from_ref(&numbered),
        &[],
    )
    .await?;
    Ok((seq, learned))
}

/// Appends validated outcomes (seqs increasing); returns the highest
/// contiguous stored seq.
pub async fn append(
    tx: &Tx<'_>,
    shared: &Shared,
    id: Uuid,
    outcomes: &[NewOutcome],
    units: &[CodeUnit],
) -> Result<(u64, Learned)> {
    let (pk, session) = lock_session(tx, id)
        .await?
        .ok_or_else(|| rules::no_session_for_outcomes(id))?;
    append_locked(tx, shared, id, pk, session, outcomes, units).await
}

async fn append_locked(
    tx: &Tx<'_>,
    shared: &Shared,
    id: Uuid,
    pk: i64,
    session: Session,
    outcomes: &[NewOutcome],
    units: &[CodeUnit],
) -> Result<(u64, Learned)> {
    let Some(plan) = rules::plan_append(&session, outcomes)? else {
        return Ok((session.outcomes_stored, Learned::default()));
    };
    let new = &outcomes[plan.first..plan.first + plan.count];
    // Shared: the remover of unused tests waits for this transaction. The
    // generation, read by the next statement (a snapshot taken after the
    // lock), tells whether cached ids still hold. Sent together.
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock_shared($1)")
        .await?;
    let read = tx
        .prepare_cached(
            "SELECT (SELECT value FROM meta WHERE key = 'tests_generation'),
                    (SELECT value FROM meta WHERE key = 'deps_generation')",
        )
        .await?;
    let (_, generations) =
        tokio::try_join!(tx.execute(&lock, &[&TESTS_LOCK]), tx.query_one(&read, &[]))?;
    let mut learned = Learned {
        generation: generations.get(0),
        deps_generation: generations.get::<_, Option<i64>>(1).unwrap_or(0),
        ..Learned::default()
    };
    let project = fold_project(&session.environment.project);
    let set_ids = intern_sets(tx, shared, &project, plan.first, new, units, &mut learned).await?;
    let test_ids = intern_tests(tx, shared, pk, new, &mut learned).await?;
    let marker_ids = intern_markers(tx, shared, new, &mut learned).await?;
    insert_outcomes(
        tx,
        pk,
        session.started_at,
        new,
        &test_ids,
        &marker_ids,
        &set_ids,
    )
    .await?;
    name_causes(tx, &session.environment.project, new).await?;
    let c = plan.counts;
    let update = tx
        .prepare_cached(
            "UPDATE sessions SET outcomes_stored = $2, status = $3,
                 n_passed = n_passed + $4, n_failed = n_failed + $5,
                 n_skipped = n_skipped + $6, n_errors = n_errors + $7,
                 n_xfailed = n_xfailed + $8, n_xpassed = n_xpassed + $9
             WHERE pk = $1",
        )
        .await?;
    tx.execute(
        &update,
        &[
            &pk,
            &as_i64(plan.stored),
            &plan.status.as_str(),
            &as_i64(c.passed),
            &as_i64(c.failed),
            &as_i64(c.skipped),
            &as_i64(c.errors),
            &as_i64(c.xfailed),
            &as_i64(c.xpassed),
        ],
    )
    .await?;
    if plan.status.is_closed() {
        // The missing outcomes of an incomplete session arrived: it is closed now.
        index_closed_session(tx, pk).await?;
    }
    notify(tx, id, plan.status, plan.stored).await?;
    Ok((plan.stored, learned))
}

/// Each new outcome's dependency set id (`None`: not recorded), storing the
/// declared units and the sets that are new. Every key of a set the project
/// does not hold must be declared in `units` or stored, else the whole
/// request is refused (and the transaction, rolled back, stores nothing).
/// Rows go in key and digest order, so two replicas storing the same new
/// units or sets take their locks in one order.
async fn intern_sets(
    tx: &Tx<'_>,
    shared: &Shared,
    project: &str,
    first: usize,
    outcomes: &[NewOutcome],
    units: &[CodeUnit],
    learned: &mut Learned,
) -> Result<Vec<Option<i64>>> {
    let mut ids: Vec<Option<i64>> = vec![None; outcomes.len()];
    if outcomes.iter().all(|n| n.deps.is_none()) && units.is_empty() {
        return Ok(ids);
    }
    let project_key: Box<str> = project.into();
    // Sets and units this replica knows.
    let mut known_sets: HashMap<SetDigest, i64> = HashMap::new();
    let mut known_units: HashMap<u64, (i64, u64)> = HashMap::new();
    let mut missing_sets: Vec<&[u8]> = Vec::new();
    {
        let mut cache = shared.interned.lock().unwrap_or_else(|p| p.into_inner());
        if cache.deps_generation != learned.deps_generation {
            cache.units.clear();
            cache.sets.clear();
            cache.dep_entries = 0;
            cache.deps_generation = learned.deps_generation;
        }
        for set in outcomes.iter().filter_map(|n| n.deps.as_ref()) {
            match cache.sets.get(project).and_then(|s| s.get(&set.digest)) {
                Some(&id) => {
                    known_sets.insert(set.digest, id);
                }
                None => missing_sets.push(&set.digest),
            }
        }
        for u in units {
            if let Some(&unit) = cache.units.get(project).and_then(|m| m.get(&u.key)) {
                known_units.insert(u.key, unit);
            }
        }
    }
    if !missing_sets.is_empty() {
        missing_sets.sort_unstable();
        missing_sets.dedup();
        let select = tx
            .prepare_cached(
                "SELECT digest, id FROM dep_sets WHERE project = $1 AND digest = ANY($2)",
            )
            .await?;
        for r in tx.query(&select, &[&project, &missing_sets]).await? {
            let digest = set_digest_of(r.get::<_, &[u8]>(0))?;
            let id: i64 = r.get(1);
            known_sets.insert(digest, id);
            learned.sets.push(((project_key.clone(), digest), id));
        }
    }
    // The keys of the new sets, and the declared units, that this replica
    // does not know: are they stored?
    let new_sets: Vec<(usize, &DepSet)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.deps.as_ref().map(|d| (i, d)))
        .filter(|(_, d)| !known_sets.contains_key(&d.digest))
        .collect();
    let mut wanted: Vec<i64> = new_sets
        .iter()
        .flat_map(|(_, d)| d.keys.iter())
        .chain(units.iter().map(|u| &u.key))
        .filter(|k| !known_units.contains_key(k))
        .map(|k| deps::to_sql(*k))
        .collect();
    if !wanted.is_empty() {
        {
            let cache = shared.interned.lock().unwrap_or_else(|p| p.into_inner());
            wanted.retain(|k| {
                match cache
                    .units
                    .get(project)
                    .and_then(|m| m.get(&deps::from_sql(*k)))
                {
                    Some(&unit) => {
                        known_units.insert(deps::from_sql(*k), unit);
                        false
                    }
                    None => true,
                }
            });
        }
        wanted.sort_unstable();
        wanted.dedup();
        if !wanted.is_empty() {
            let select = tx
                .prepare_cached(
                    "SELECT key, id, code FROM dep_units WHERE project = $1 AND key = ANY($2)",
                )
                .await?;
            for r in tx.query(&select, &[&project, &wanted]).await? {
                let key = deps::from_sql(r.get(0));
                let unit = (r.get(1), deps::from_sql(r.get(2)));
                known_units.insert(key, unit);
                learned.units.push(((project_key.clone(), key), unit));
            }
        }
    }
    // Refused before anything of the request is written.
    let declared: std::collections::HashSet<u64> = units.iter().map(|u| u.key).collect();
    for (i, set) in &new_sets {
        if let Some(key) = set
            .keys
            .iter()
            .find(|k| !known_units.contains_key(k) && !declared.contains(k))
        {
            return Err(crate::store::deps::undeclared(first + i, set, *key));
        }
    }
    // The declared units not stored yet.
    let mut fresh: Vec<&CodeUnit> = units
        .iter()
        .filter(|u| !known_units.contains_key(&u.key))
        .collect();
    fresh.sort_unstable_by_key(|u| deps::to_sql(u.key));
    fresh.dedup_by_key(|u| u.key);
    if !fresh.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO dep_units (project, key, code, kind, path, name, line_start,
                     line_end, checksum)
                 SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::int2[], $5::text[],
                     $6::text[], $7::int8[], $8::int8[], $9::text[])
                 ON CONFLICT (project, key) DO NOTHING
                 RETURNING key, id, code",
            )
            .await?;
        let keys: Vec<i64> = fresh.iter().map(|u| deps::to_sql(u.key)).collect();
        let codes: Vec<i64> = fresh.iter().map(|u| deps::to_sql(u.code)).collect();
        let kinds: Vec<i16> = fresh
            .iter()
            .map(|u| unit_kind_code(u.kind) as i16)
            .collect();
        let paths: Vec<&str> = fresh.iter().map(|u| u.path.as_str()).collect();
        let names: Vec<&str> = fresh.iter().map(|u| u.name.as_str()).collect();
        let starts: Vec<i64> = fresh.iter().map(|u| i64::from(u.line_start)).collect();
        let ends: Vec<i64> = fresh.iter().map(|u| i64::from(u.line_end)).collect();
        let sums: Vec<&str> = fresh.iter().map(|u| u.checksum.as_str()).collect();
        let rows = tx
            .query(
                &insert,
                &[
                    &project, &keys, &codes, &kinds, &paths, &names, &starts, &ends, &sums,
                ],
            )
            .await?;
        for r in rows {
            let key = deps::from_sql(r.get(0));
            let unit = (r.get(1), deps::from_sql(r.get(2)));
            known_units.insert(key, unit);
            learned.units.push(((project_key.clone(), key), unit));
        }
        // Stored meanwhile by a replica that has committed since.
        let rest: Vec<i64> = keys
            .into_iter()
            .filter(|k| !known_units.contains_key(&deps::from_sql(*k)))
            .collect();
        if !rest.is_empty() {
            let select = tx
                .prepare_cached(
                    "SELECT key, id, code FROM dep_units WHERE project = $1 AND key = ANY($2)",
                )
                .await?;
            for r in tx.query(&select, &[&project, &rest]).await? {
                let key = deps::from_sql(r.get(0));
                let unit = (r.get(1), deps::from_sql(r.get(2)));
                known_units.insert(key, unit);
                learned.units.push(((project_key.clone(), key), unit));
            }
        }
    }
    // The new sets, each once.
    let mut fresh_sets: Vec<&DepSet> = new_sets.iter().map(|(_, d)| *d).collect();
    fresh_sets.sort_unstable_by_key(|d| d.digest);
    fresh_sets.dedup_by_key(|d| d.digest);
    if !fresh_sets.is_empty() {
        let mut digests: Vec<&[u8]> = Vec::with_capacity(fresh_sets.len());
        let mut codes: Vec<i64> = Vec::with_capacity(fresh_sets.len());
        let mut blobs: Vec<Vec<u8>> = Vec::with_capacity(fresh_sets.len());
        for set in &fresh_sets {
            let mut unit_ids = Vec::with_capacity(set.keys.len());
            let mut unit_codes = Vec::with_capacity(set.keys.len());
            for key in &set.keys {
                let (id, code) = known_units.get(key).copied().ok_or_else(|| {
                    Error::Conflict(format!(
                        "unit {} could not be stored",
                        crate::model::unit_key_text(*key)
                    ))
                })?;
                unit_ids.push(id);
                unit_codes.push(code);
            }
            unit_ids.sort_unstable();
            unit_ids.dedup();
            digests.push(&set.digest);
            codes.push(deps::to_sql(deps::code_digest(&mut unit_codes)));
            blobs.push(deps::encode_units(&unit_ids));
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO dep_sets (project, digest, code, units)
                 SELECT $1, * FROM UNNEST($2::bytea[], $3::int8[], $4::bytea[])
                 ON CONFLICT (project, digest) DO NOTHING
                 RETURNING digest, id",
            )
            .await?;
        for r in tx
            .query(&insert, &[&project, &digests, &codes, &blobs])
            .await?
        {
            let digest = set_digest_of(r.get::<_, &[u8]>(0))?;
            let id: i64 = r.get(1);
            known_sets.insert(digest, id);
            learned.sets.push(((project_key.clone(), digest), id));
        }
        let rest: Vec<&[u8]> = digests
            .into_iter()
            .filter(|d| set_digest_of(d).is_ok_and(|d| !known_sets.contains_key(&d)))
            .collect();
        if !rest.is_empty() {
            let select = tx
                .prepare_cached(
                    "SELECT digest, id FROM dep_sets WHERE project = $1 AND digest = ANY($2)",
                )
                .await?;
            for r in tx.query(&select, &[&project, &rest]).await? {
                let digest = set_digest_of(r.get::<_, &[u8]>(0))?;
                let id: i64 = r.get(1);
                known_sets.insert(digest, id);
                learned.sets.push(((project_key.clone(), digest), id));
            }
        }
    }
    for (slot, n) in ids.iter_mut().zip(outcomes) {
        if let Some(set) = &n.deps {
            *slot =
                Some(known_sets.get(&set.digest).copied().ok_or_else(|| {
                    Error::Conflict("a dependency set could not be stored".into())
                })?);
        }
    }
    Ok(ids)
}

/// A stored set digest.
fn set_digest_of(bytes: &[u8]) -> Result<SetDigest> {
    bytes
        .try_into()
        .map_err(|_| Error::Internal("a stored dependency set digest is not 16 bytes".into()))
}

/// The test id of each outcome, storing the tests that are new; moves a
/// test's `first_pk` back when an older session gains it (a late import).
async fn intern_tests(
    tx: &Tx<'_>,
    shared: &Shared,
    pk: i64,
    outcomes: &[NewOutcome],
    learned: &mut Learned,
) -> Result<Vec<i64>> {
    let mut ids: Vec<Option<i64>> = vec![None; outcomes.len()];
    let mut missing: Vec<(&str, &str)> = Vec::new();
    let mut older: Vec<i64> = Vec::new();
    {
        let mut cache = shared.interned.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != learned.generation {
            cache.clear();
            cache.generation = learned.generation;
        }
        for (i, o) in outcomes.iter().map(|n| &n.outcome).enumerate() {
            let key = (
                Box::<str>::from(o.nodeid.as_str()),
                Box::<str>::from(o.subtest.as_str()),
            );
            match cache.tests.get(&key) {
                Some(&(id, first)) => {
                    ids[i] = Some(id);
                    if first > pk {
                        older.push(id);
                    }
                }
                None => missing.push((&o.nodeid, &o.subtest)),
            }
        }
    }
    let mut found = FoundTests::new();
    if !missing.is_empty() {
        // Sorted, so that writers storing the same new tests take their
        // locks in one order and cannot deadlock.
        missing.sort_unstable();
        missing.dedup();
        let select = tx
            .prepare_cached(
                "SELECT t.id, t.nodeid, t.subtest, t.first_pk
                 FROM UNNEST($1::text[], $2::text[]) AS u (nodeid, subtest)
                 JOIN tests t ON t.nodeid = u.nodeid AND t.subtest = u.subtest",
            )
            .await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO tests (nodeid, subtest, first_pk)
                 SELECT u.nodeid, u.subtest, $3
                 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u (nodeid, subtest, n)
                 ORDER BY u.n
                 ON CONFLICT (nodeid, subtest) DO NOTHING
                 RETURNING id, nodeid, subtest, first_pk",
            )
            .await?;
        // Stored already; then the rest; then what a writer that has
        // committed since stored meanwhile (the insert skipped those).
        let (nodeids, subtests) = columns(&missing);
        add_tests(&mut found, tx.query(&select, &[&nodeids, &subtests]).await?);
        let absent = absent_from(&missing, &found);
        if !absent.is_empty() {
            let (nodeids, subtests) = columns(&absent);
            add_tests(
                &mut found,
                tx.query(&insert, &[&nodeids, &subtests, &pk]).await?,
            );
            let still = absent_from(&absent, &found);
            if !still.is_empty() {
                let (nodeids, subtests) = columns(&still);
                add_tests(&mut found, tx.query(&select, &[&nodeids, &subtests]).await?);
            }
        }
        for (key, &(id, first)) in &found {
            if first > pk {
                older.push(id);
            }
            learned.tests.push((
                (key.0.as_str().into(), key.1.as_str().into()),
                (id, first.min(pk)),
            ));
        }
    }
    if !older.is_empty() {
        older.sort_unstable();
        older.dedup();
        let update = tx
            .prepare_cached("UPDATE tests SET first_pk = $2 WHERE id = ANY($1) AND first_pk > $2")
            .await?;
        tx.execute(&update, &[&older, &pk]).await?;
    }
    let mut out = Vec::with_capacity(outcomes.len());
    for (i, o) in outcomes.iter().map(|n| &n.outcome).enumerate() {
        let id = match ids[i] {
            Some(id) => id,
            None => found
                .get(&(o.nodeid.clone(), o.subtest.clone()))
                .map(|f| f.0)
                .ok_or_else(|| {
                    Error::Conflict(format!("test {:?} could not be stored", o.nodeid))
                })?,
        };
        out.push(id);
    }
    Ok(out)
}

/// Test ids by (nodeid, subtest), with each test's `first_pk`.
type FoundTests = HashMap<(String, String), (i64, i64)>;

/// The nodeid and subtest columns of `pairs`, as two array parameters.
fn columns<'a>(pairs: &[(&'a str, &'a str)]) -> (Vec<&'a str>, Vec<&'a str>) {
    pairs.iter().copied().unzip()
}

/// The pairs `found` does not hold yet.
fn absent_from<'a>(pairs: &[(&'a str, &'a str)], found: &FoundTests) -> Vec<(&'a str, &'a str)> {
    pairs
        .iter()
        .filter(|(n, s)| !found.contains_key(&(n.to_string(), s.to_string())))
        .copied()
        .collect()
}

/// Adds rows of (id, nodeid, subtest, first_pk) to `found`.
fn add_tests(found: &mut FoundTests, rows: Vec<tokio_postgres::Row>) {
    for r in rows {
        found.insert((r.get(1), r.get(2)), (r.get(0), r.get(3)));
    }
}

/// The marker-set id of each outcome (`None`: no markers).
async fn intern_markers(
    tx: &Tx<'_>,
    shared: &Shared,
    outcomes: &[NewOutcome],
    learned: &mut Learned,
) -> Result<Vec<Option<i64>>> {
    let mut json: Vec<Option<String>> = Vec::with_capacity(outcomes.len());
    let mut last: Option<(&[String], Option<String>)> = None;
    for o in outcomes.iter().map(|n| &n.outcome) {
        if o.markers.is_empty() {
            json.push(None);
            continue;
        }
        let text = match &last {
            Some((m, t)) if *m == o.markers.as_slice() => t.clone(),
            _ => {
                let t = Some(
                    serde_json::to_string(&o.markers)
                        .map_err(|e| Error::Internal(format!("encoding markers: {e}")))?,
                );
                last = Some((&o.markers, t.clone()));
                t
            }
        };
        json.push(text);
    }
    let mut known: HashMap<String, i64> = HashMap::new();
    let mut missing: Vec<&str> = Vec::new();
    {
        let cache = shared.interned.lock().unwrap_or_else(|p| p.into_inner());
        for m in json.iter().flatten() {
            match cache.markers.get(m.as_str()) {
                Some(&id) => {
                    known.insert(m.clone(), id);
                }
                None => missing.push(m),
            }
        }
    }
    if !missing.is_empty() {
        missing.sort_unstable();
        missing.dedup();
        let insert = tx
            .prepare_cached(
                "WITH wanted AS (SELECT m FROM UNNEST($1::text[]) AS u (m)),
                 added AS (
                     INSERT INTO marker_sets (markers) SELECT m FROM wanted ORDER BY m
                     ON CONFLICT (markers) DO NOTHING RETURNING id, markers)
                 SELECT id, markers FROM added",
            )
            .await?;
        for r in tx.query(&insert, &[&missing]).await? {
            known.insert(r.get(1), r.get(0));
        }
        let rest: Vec<&str> = missing
            .iter()
            .filter(|m| !known.contains_key(**m))
            .copied()
            .collect();
        if !rest.is_empty() {
            let select = tx
                .prepare_cached("SELECT id, markers FROM marker_sets WHERE markers = ANY($1)")
                .await?;
            for r in tx.query(&select, &[&rest]).await? {
                known.insert(r.get(1), r.get(0));
            }
        }
        for m in &missing {
            if let Some(&id) = known.get(*m) {
                learned.markers.push(((*m).into(), id));
            }
        }
    }
    json.iter()
        .map(|m| match m {
            None => Ok(None),
            Some(m) => known
                .get(m)
                .copied()
                .map(Some)
                .ok_or_else(|| Error::Conflict("a marker set could not be stored".into())),
        })
        .collect()
}

/// The outcome columns, in the order both bulk paths write them.
const OUTCOME_INSERT_COLUMNS: &str = "session_pk, seq, test_id, kind, phase, duration, attempt, \
     line, start_us, markers, message, worker, file, detail, cause, quarantined, deps";

const OUTCOME_TYPES: [Type; 17] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT2,
    Type::INT2,
    Type::FLOAT8,
    Type::INT4,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::BOOL,
    Type::INT8,
];

/// One outcome row, ready to send.
struct Row<'o> {
    seq: i64,
    test_id: i64,
    kind: i16,
    phase: Option<i16>,
    duration: f64,
    attempt: i32,
    line: Option<i32>,
    start_us: Option<i64>,
    markers: Option<i64>,
    message: Option<&'o str>,
    worker: Option<&'o str>,
    file: Option<&'o str>,
    detail: Option<&'o [u8]>,
    cause: Option<&'o str>,
    quarantined: bool,
    deps: Option<i64>,
}

async fn insert_outcomes(
    tx: &Tx<'_>,
    pk: i64,
    session_started: Timestamp,
    outcomes: &[NewOutcome],
    test_ids: &[i64],
    marker_ids: &[Option<i64>],
    set_ids: &[Option<i64>],
) -> Result<()> {
    let started = session_started.as_micros();
    let rows: Vec<Row<'_>> = outcomes
        .iter()
        .zip(test_ids.iter().zip(marker_ids.iter().zip(set_ids)))
        .map(|(n, (&test_id, (&markers, &deps)))| {
            let o = &n.outcome;
            Row {
                seq: as_i64(o.seq),
                test_id,
                kind: kind_code(o.outcome) as i16,
                phase: o.phase.map(|p| phase_code(p) as i16),
                duration: o.duration,
                attempt: i32::try_from(o.attempt).unwrap_or(i32::MAX),
                line: o.line.and_then(|l| i32::try_from(l).ok()),
                start_us: o.started_at.map(|t| t.as_micros() - started),
                markers,
                message: crate::store::detail::inline_message(o),
                worker: nullable(&o.worker),
                file: crate::store::codes::file_column(&o.nodeid, &o.file),
                detail: n.detail.as_deref(),
                cause: n.cause.as_ref().map(|c| c.key.as_str()),
                quarantined: o.quarantined,
                deps,
            }
        })
        .collect();
    if bulk_copy() {
        let sink = tx
            .copy_in(&format!(
                "COPY outcomes ({OUTCOME_INSERT_COLUMNS}) FROM STDIN BINARY"
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &OUTCOME_TYPES);
        pin_mut!(writer);
        for r in &rows {
            let values: [&(dyn ToSql + Sync); 17] = [
                &pk,
                &r.seq,
                &r.test_id,
                &r.kind,
                &r.phase,
                &r.duration,
                &r.attempt,
                &r.line,
                &r.start_us,
                &r.markers,
                &r.message,
                &r.worker,
                &r.file,
                &r.detail,
                &r.cause,
                &r.quarantined,
                &r.deps,
            ];
            writer.as_mut().write(&values).await?;
        }
        writer.finish().await?;
    } else {
        let stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO outcomes ({OUTCOME_INSERT_COLUMNS})
                 SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::int2[], $5::int2[],
                     $6::float8[], $7::int4[], $8::int4[], $9::int8[], $10::int8[],
                     $11::text[], $12::text[], $13::text[], $14::bytea[], $15::text[],
                     $16::bool[], $17::int8[])"
            ))
            .await?;
        let seq: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let test: Vec<i64> = rows.iter().map(|r| r.test_id).collect();
        let kind: Vec<i16> = rows.iter().map(|r| r.kind).collect();
        let phase: Vec<Option<i16>> = rows.iter().map(|r| r.phase).collect();
        let duration: Vec<f64> = rows.iter().map(|r| r.duration).collect();
        let attempt: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let line: Vec<Option<i32>> = rows.iter().map(|r| r.line).collect();
        let start: Vec<Option<i64>> = rows.iter().map(|r| r.start_us).collect();
        let markers: Vec<Option<i64>> = rows.iter().map(|r| r.markers).collect();
        let message: Vec<Option<&str>> = rows.iter().map(|r| r.message).collect();
        let worker: Vec<Option<&str>> = rows.iter().map(|r| r.worker).collect();
        let file: Vec<Option<&str>> = rows.iter().map(|r| r.file).collect();
        let detail: Vec<Option<&[u8]>> = rows.iter().map(|r| r.detail).collect();
        let cause: Vec<Option<&str>> = rows.iter().map(|r| r.cause).collect();
        let quarantined: Vec<bool> = rows.iter().map(|r| r.quarantined).collect();
        let deps: Vec<Option<i64>> = rows.iter().map(|r| r.deps).collect();
        tx.execute(
            &stmt,
            &[
                &pk,
                &seq,
                &test,
                &kind,
                &phase,
                &duration,
                &attempt,
                &line,
                &start,
                &markers,
                &message,
                &worker,
                &file,
                &detail,
                &cause,
                &quarantined,
                &deps,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Names the causes of these outcomes' failures under the project, each
/// once (by the first transaction to store it; others find it named).
async fn name_causes(tx: &Tx<'_>, project: &str, outcomes: &[NewOutcome]) -> Result<()> {
    // In key order, so that two replicas naming the same causes at once
    // take the index's locks in the same order.
    let named: std::collections::BTreeMap<&str, &str> = outcomes
        .iter()
        .filter_map(|n| n.cause.as_ref())
        .map(|c| (c.key.as_str(), c.cause.as_str()))
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = named.keys().copied().collect();
    let causes: Vec<&str> = named.values().copied().collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO causes (project, key, cause)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[])
             ON CONFLICT (project, key) DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&project, &keys, &causes]).await?;
    Ok(())
}

/// Records which causes a closed session failed of and how often (under
/// its project, by its id), replacing what it recorded before.
pub async fn record_cause_sessions(tx: &Tx<'_>, pk: i64) -> Result<()> {
    let forget = tx
        .prepare_cached(
            "DELETE FROM cause_sessions WHERE session = (SELECT id FROM sessions WHERE pk = $1)",
        )
        .await?;
    tx.execute(&forget, &[&pk]).await?;
    let record = tx
        .prepare_cached(
            "INSERT INTO cause_sessions (cause_pk, session, started_at, failures)
             SELECT c.pk, s.id, s.started_at, COUNT(*) FROM outcomes o
             JOIN sessions s ON s.pk = o.session_pk
             JOIN causes c ON c.project = COALESCE(s.project, '') AND c.key = o.cause
             WHERE o.session_pk = $1 AND o.kind IN (2, 4)
             GROUP BY c.pk, s.id, s.started_at",
        )
        .await?;
    tx.execute(&record, &[&pk]).await?;
    Ok(())
}

/// Records which tests a closed session's causes broke (migration 5's table;
/// migration 3 runs before it exists, so this is apart).
pub async fn record_cause_tests(tx: &Tx<'_>, pk: i64) -> Result<()> {
    let tests = tx
        .prepare_cached(
            "INSERT INTO cause_tests (cause_pk, nodeid)
             SELECT DISTINCT c.pk, t.nodeid FROM outcomes o
             JOIN sessions s ON s.pk = o.session_pk
             JOIN tests t ON t.id = o.test_id
             JOIN causes c ON c.project = COALESCE(s.project, '') AND c.key = o.cause
             WHERE o.session_pk = $1 AND o.kind IN (2, 4)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&tests, &[&pk]).await?;
    Ok(())
}

/// Writes what a closed session is read by: its `session_tests` and its
/// digest, built from its rows, and the causes it failed of.
pub async fn index_closed_session(tx: &Tx<'_>, pk: i64) -> Result<()> {
    let clear = tx
        .prepare_cached("DELETE FROM session_tests WHERE session_pk = $1")
        .await?;
    tx.execute(&clear, &[&pk]).await?;
    let index = tx
        .prepare_cached(
            "INSERT INTO session_tests (session_pk, test_id, seq, kind)
             SELECT session_pk, test_id, seq, kind FROM outcomes WHERE session_pk = $1
             ORDER BY test_id, seq",
        )
        .await?;
    tx.execute(&index, &[&pk]).await?;
    let (d, sets) = reads::digest_and_sets_from_rows(tx, pk).await?;
    let (tests, durations) = digest::encode(&d);
    let sets = deps::encode_session_sets(&sets);
    let store = tx
        .prepare_cached(
            "INSERT INTO digests (session_pk, tests, durations, deps) VALUES ($1, $2, $3, $4)
             ON CONFLICT (session_pk) DO UPDATE
                 SET tests = EXCLUDED.tests, durations = EXCLUDED.durations,
                     deps = EXCLUDED.deps",
        )
        .await?;
    tx.execute(&store, &[&pk, &tests, &durations, &sets])
        .await?;
    record_cause_sessions(tx, pk).await?;
    record_cause_tests(tx, pk).await
}

/// Finishes a session.
pub async fn finish(
    tx: &Tx<'_>,
    id: Uuid,
    summary: &Summary,
    outcomes_sent: u64,
    finished_at: Timestamp,
) -> Result<Session> {
    let (pk, session) = lock_session(tx, id)
        .await?
        .ok_or_else(|| rules::no_session(id))?;
    let status = match rules::plan_finish(&session, summary, outcomes_sent)? {
        FinishPlan::Repeat => return Ok(session),
        FinishPlan::Close(status) => status,
    };
    let summary_json = serde_json::to_string(summary)
        .map_err(|e| Error::Internal(format!("encoding summary: {e}")))?;
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE sessions s SET status = $2, finished_at = $3, summary = $4, exitstatus = $5,
                 outcomes_expected = $6
             WHERE s.pk = $1
             RETURNING {SESSION_COLUMNS}"
        ))
        .await?;
    let row = tx
        .query_one(
            &stmt,
            &[
                &pk,
                &status.as_str(),
                &finished_at.as_micros(),
                &summary_json,
                &summary.exitstatus,
                &as_i64(outcomes_sent),
            ],
        )
        .await?;
    let (_, session) = session_from_row(&row, 0)?;
    if status.is_closed() {
        index_closed_session(tx, pk).await?;
    }
    notify(tx, id, session.status, session.outcomes_stored).await?;
    Ok(session)
}

/// Stores one audit row and returns its id.
/// Stores a quarantine entry; returns whether it replaced one.
pub async fn put_quarantine(tx: &Tx<'_>, e: &QuarantineEntry) -> Result<bool> {
    // xmax is 0 for a row this statement inserted, not for one it updated.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO quarantine (project, pattern, reason, added_by, added_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (project, pattern) DO UPDATE SET reason = excluded.reason,
                 added_by = excluded.added_by, added_at = excluded.added_at,
                 expires_at = excluded.expires_at
             RETURNING xmax <> 0",
        )
        .await?;
    let row = tx
        .query_one(
            &stmt,
            &[
                &e.project,
                &e.pattern,
                &e.reason,
                &e.added_by,
                &e.added_at.as_micros(),
                &e.expires_at.as_micros(),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Removes a quarantine entry and returns it.
pub async fn delete_quarantine(
    tx: &Tx<'_>,
    project: &str,
    pattern: &str,
) -> Result<Option<QuarantineEntry>> {
    let stmt = tx
        .prepare_cached(&format!(
            "DELETE FROM quarantine WHERE project = $1 AND pattern = $2 RETURNING {}",
            super::rows::QUARANTINE_COLUMNS
        ))
        .await?;
    tx.query_opt(&stmt, &[&project, &pattern])
        .await?
        .map(|r| super::rows::quarantine_from_row(&r))
        .transpose()
}

pub async fn audit(tx: &Tx<'_>, entry: &AuditEntry) -> Result<u64> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO audit (at, grant_name, transport, tool, decision, result, reason,
                 duration_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .await?;
    let row = tx
        .query_one(
            &stmt,
            &[
                &entry.at.as_micros(),
                &entry.grant,
                &entry.transport,
                &audit::bounded(&entry.tool),
                &entry.decision,
                &entry.result,
                &entry.reason.as_deref().map(audit::bounded),
                &as_i64(entry.duration_us),
            ],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Pins or unpins a session.
pub async fn pin(tx: &Tx<'_>, session: SessionRef, pinned: bool) -> Result<Session> {
    let (pk, mut s) = reads::resolve(tx, session).await?;
    let stmt = tx
        .prepare_cached("UPDATE sessions SET pinned = $2 WHERE pk = $1")
        .await?;
    tx.execute(&stmt, &[&pk, &pinned]).await?;
    s.pinned = pinned;
    Ok(s)
}

/// Deletes a session for every reader, leaving its rows to [`reclaim`].
pub async fn delete(tx: &Tx<'_>, id: Uuid) -> Result<bool> {
    let Some((pk, session)) = lock_session(tx, id).await? else {
        return Ok(false);
    };
    if rules::prune_refusal(session.status, session.pinned).is_some() {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO doomed (pk) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&pk],
    )
    .await?;
    tx.execute("DELETE FROM sessions WHERE pk = $1", &[&pk])
        .await?;
    tx.execute("DELETE FROM digests WHERE session_pk = $1", &[&pk])
        .await?;
    Ok(true)
}

/// Removes up to `max_rows` rows of deleted sessions.
pub async fn reclaim(tx: &Tx<'_>, max_rows: usize) -> Result<Reclaimed> {
    let budget = max_rows.max(1) as u64;
    let mut removed = 0u64;
    let doomed: Vec<i64> = tx
        .query("SELECT pk FROM doomed ORDER BY pk", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for pk in doomed {
        let left = as_i64(budget - removed);
        let rows = tx
            .execute(
                "DELETE FROM outcomes WHERE session_pk = $1 AND seq IN (
                     SELECT seq FROM outcomes WHERE session_pk = $1 ORDER BY seq LIMIT $2)",
                &[&pk, &left],
            )
            .await?;
        removed += rows;
        if rows == u64::try_from(left).unwrap_or(0) {
            return Ok(Reclaimed {
                rows: removed,
                more: true,
            });
        }
        let left = as_i64(budget - removed);
        let rows = tx
            .execute(
                "DELETE FROM session_tests WHERE session_pk = $1 AND (test_id, seq) IN (
                     SELECT test_id, seq FROM session_tests WHERE session_pk = $1 LIMIT $2)",
                &[&pk, &left],
            )
            .await?;
        removed += rows;
        if rows == u64::try_from(left).unwrap_or(0) {
            return Ok(Reclaimed {
                rows: removed,
                more: true,
            });
        }
        tx.execute("DELETE FROM doomed WHERE pk = $1", &[&pk])
            .await?;
        if removed >= budget {
            return Ok(Reclaimed {
                rows: removed,
                more: true,
            });
        }
    }
    Ok(Reclaimed {
        rows: removed,
        more: false,
    })
}

/// Removes the tests no outcome refers to any more, with every writer held
/// off (they take [`TESTS_LOCK`] shared), and bumps the generation so that
/// every replica drops its cached ids.
pub async fn remove_unused_tests(tx: &Tx<'_>) -> Result<u64> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TESTS_LOCK])
        .await?;
    let removed = tx
        .execute(
            "DELETE FROM tests t
             WHERE NOT EXISTS (SELECT 1 FROM session_tests st WHERE st.test_id = t.id)
               AND NOT EXISTS (
                   SELECT 1 FROM outcomes o JOIN sessions s ON s.pk = o.session_pk
                   WHERE s.status NOT IN ('finished', 'interrupted') AND o.test_id = t.id)",
            &[],
        )
        .await?;
    if removed > 0 {
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'tests_generation'",
            &[],
        )
        .await?;
    }
    Ok(removed)
}

/// Removes the dependency sets no outcome refers to and the units no
/// remaining set names, holding [`TESTS_LOCK`] exclusively so that no
/// writer refers to one meanwhile (writers hold it shared); bumps
/// `deps_generation` so that every replica drops its cached ids.
pub async fn remove_unused_deps(tx: &Tx<'_>) -> Result<u64> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TESTS_LOCK])
        .await?;
    let mut removed = tx
        .execute(
            "DELETE FROM dep_sets
             WHERE id NOT IN (SELECT deps FROM outcomes WHERE deps IS NOT NULL)",
            &[],
        )
        .await?;
    let mut named: std::collections::HashSet<i64> = std::collections::HashSet::new();
    for r in tx.query("SELECT units FROM dep_sets", &[]).await? {
        named.extend(deps::decode_units(r.get::<_, &[u8]>(0))?);
    }
    let unused: Vec<i64> = tx
        .query("SELECT id FROM dep_units", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .filter(|id| !named.contains(id))
        .collect();
    if !unused.is_empty() {
        removed += tx
            .execute("DELETE FROM dep_units WHERE id = ANY($1)", &[&unused])
            .await?;
    }
    if removed > 0 {
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'deps_generation'",
            &[],
        )
        .await?;
    }
    Ok(removed)
}

fn grant_key(key: &Key) -> String {
    match &key.grant {
        Some(g) => format!("g:{g}"),
        None => String::new(),
    }
}

/// Runs a gated call's `update` on the shared counters: locks the counters'
/// rows (creating them first, in key order), runs it on them, and writes
/// back what it changed.
pub async fn count_calls(tx: &Tx<'_>, keys: &[Key], update: &Update) -> Result<()> {
    let counters: Vec<&str> = keys.iter().map(|k| k.counter.as_str()).collect();
    let grants: Vec<String> = keys.iter().map(grant_key).collect();
    let create = tx
        .prepare_cached(
            "INSERT INTO rate_counters (counter, grant_key, start_us, length_us, calls)
             SELECT c, g, 0, 0, 0 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u (c, g, n)
             ORDER BY u.n
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&create, &[&counters, &grants]).await?;
    let lock = tx
        .prepare_cached(
            "SELECT r.counter, r.grant_key, r.start_us, r.length_us, r.calls
             FROM rate_counters r
             JOIN UNNEST($1::text[], $2::text[]) AS u (c, g) ON r.counter = u.c AND r.grant_key = u.g
             ORDER BY r.counter, r.grant_key
             FOR UPDATE OF r",
        )
        .await?;
    let mut counts: HashMap<Key, Count> = HashMap::new();
    let by_stored: HashMap<(String, String), &Key> = keys
        .iter()
        .map(|k| ((k.counter.clone(), grant_key(k)), k))
        .collect();
    for r in tx.query(&lock, &[&counters, &grants]).await? {
        let stored: (String, String) = (r.get(0), r.get(1));
        let length: i64 = r.get(3);
        if let Some(key) = by_stored.get(&stored)
            && length > 0
        {
            counts.insert(
                (*key).clone(),
                Count {
                    start: r.get(2),
                    length,
                    calls: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                },
            );
        }
    }
    let before = counts.clone();
    update(&mut counts);
    let update = tx
        .prepare_cached(
            "UPDATE rate_counters SET start_us = $3, length_us = $4, calls = $5
             WHERE counter = $1 AND grant_key = $2",
        )
        .await?;
    for (key, count) in &counts {
        if before.get(key) != Some(count) {
            tx.execute(
                &update,
                &[
                    &key.counter,
                    &grant_key(key),
                    &count.start,
                    &count.length,
                    &as_i64(count.calls),
                ],
            )
            .await?;
        }
    }
    Ok(())
}
