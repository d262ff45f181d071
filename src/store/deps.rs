//! Dependency sets: what identifies one, and the blob formats both
//! backends store them in.
//!
//! A test's dependency set is the set of the unit keys it ran
//! ([`crate::model::CodeUnit::key`]). Sets are content-addressed: a set's
//! digest is SHA-256 over its sorted unique keys, cut to 16 bytes, so a
//! project stores each set once however many runs share it. A set also
//! carries its code digest, over its units' sorted unique codes
//! ([`crate::model::CodeUnit::code`]): two runs whose sets have equal code
//! digests ran the same code, even when lines moved. What the flaky rule
//! compares is [`code_identity`] of that digest.
//!
//! Blobs (the same bytes on every backend):
//! - a set's units: the sorted unit ids (the backend's own), as varint
//!   deltas;
//! - a closed session's sets ([`encode_session_sets`]): for each attempt in
//!   its digest's order ([`super::digest`]), the set id plus one as a
//!   varint (0: none recorded), zstd-compressed behind a version byte and
//!   the raw length.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use uuid::Uuid;

use super::Store;
use super::affected::{DepsSnapshot, LastRun, StoredUnit};
use super::analysis::attempts_of;
use super::backend::TestKey;
use super::digest::Digest;

use super::blob::{VarintError, put_varint, read_varint, unzip};
use crate::error::{Error, Result};
use crate::model::{Project, SessionStatus, TestOutcome, unit_key_text};

/// A set's content address: SHA-256 of its sorted keys, first 16 bytes.
pub type SetDigest = [u8; 16];

/// One outcome's dependency set as the writer stores it: its digest
/// computed where the outcome arrived, off the backend's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepSet {
    /// The unit keys as sent (repeats allowed): a refusal names a key by
    /// its place here.
    pub keys: Vec<u64>,
    /// Their content address (of the sorted, distinct keys).
    pub digest: SetDigest,
}

impl DepSet {
    /// The set of `keys` (in any order, repeats allowed).
    pub fn of(keys: Vec<u64>) -> DepSet {
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let digest = set_digest(&sorted);
        DepSet { keys, digest }
    }
}

/// The digest of sorted unique keys.
pub fn set_digest(sorted: &[u64]) -> SetDigest {
    let mut bytes = Vec::with_capacity(sorted.len() * 8);
    for k in sorted {
        bytes.extend_from_slice(&k.to_be_bytes());
    }
    let d = digest(&SHA256, &bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// The code digest of a set whose units have these codes (any order,
/// repeats allowed): SHA-256 of the sorted unique codes, first 8 bytes.
pub fn code_digest(codes: &mut [u64]) -> u64 {
    codes.sort_unstable();
    let mut bytes = Vec::with_capacity(codes.len() * 8);
    let mut prev = None;
    for c in codes.iter() {
        if prev != Some(*c) {
            bytes.extend_from_slice(&c.to_be_bytes());
            prev = Some(*c);
        }
    }
    let d = digest(&SHA256, &bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(out)
}

/// What the flaky rule compares for a run with a dependency set:
/// `deps:` and the set's code digest in hex.
pub fn code_identity(code: u64) -> String {
    format!("{DEPS_PREFIX}{code:016x}")
}

/// How a run's code identity says it is a dependency set's code.
pub const DEPS_PREFIX: &str = "deps:";

/// A u64 as SQL stores it (a signed 64-bit integer, same bits).
pub fn to_sql(v: u64) -> i64 {
    v as i64
}

/// A u64 from its SQL form.
pub fn from_sql(v: i64) -> u64 {
    v as u64
}

/// The refusal of an outcome (at `index` in its request) whose set names a
/// unit key neither its request declared nor the project stores: the field
/// is the key's place in the outcome's list as sent.
pub fn undeclared(index: usize, set: &DepSet, key: u64) -> Error {
    let at = set.keys.iter().position(|k| *k == key).unwrap_or(0);
    Error::invalid(
        format!("outcomes[{index}].deps.units[{at}]"),
        format!(
            "unit {} was not declared: send it in the request's units (the store \
             does not hold it for this project); nothing of this request was stored",
            unit_key_text(key)
        ),
    )
}

fn damaged(why: &str) -> Error {
    Error::Internal(format!("a stored dependency set is damaged: {why}"))
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64> {
    read_varint(data, at).map_err(|e| match e {
        VarintError::CutShort => damaged("cut short"),
        VarintError::TooLong => damaged("a number is too long"),
    })
}

/// Encodes sorted unit ids as varint deltas.
pub fn encode_units(sorted_ids: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sorted_ids.len() * 2);
    let mut prev = 0i64;
    for &id in sorted_ids {
        put_varint(&mut out, id.wrapping_sub(prev) as u64);
        prev = id;
    }
    out
}

/// Decodes what [`encode_units`] wrote; damage is an error, never a panic.
pub fn decode_units(data: &[u8]) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(data.len());
    let mut at = 0;
    let mut prev = 0i64;
    while at < data.len() {
        let delta = varint(data, &mut at)?;
        prev = prev.wrapping_add(delta as i64);
        ids.push(prev);
    }
    Ok(ids)
}

const SESSION_SETS_VERSION: u8 = 1;

/// Most attempts a session's sets blob may claim.
const MAX_ATTEMPTS: usize = 64 << 20;

/// Encodes a closed session's set per attempt (digest order); `None` when
/// no attempt recorded dependencies (nothing is stored then).
pub fn encode_session_sets(sets: &[Option<i64>]) -> Option<Vec<u8>> {
    if sets.iter().all(Option::is_none) {
        return None;
    }
    let mut raw = Vec::with_capacity(sets.len() * 3);
    for s in sets {
        put_varint(&mut raw, s.map_or(0, |id| (id as u64).wrapping_add(1)));
    }
    let zipped = zstd::bulk::compress(&raw, 3).ok()?;
    let mut out = Vec::with_capacity(zipped.len() + 12);
    out.push(SESSION_SETS_VERSION);
    put_varint(&mut out, raw.len() as u64);
    put_varint(&mut out, sets.len() as u64);
    out.extend_from_slice(&zipped);
    Some(out)
}

/// Decodes what [`encode_session_sets`] wrote.
pub fn decode_session_sets(data: &[u8]) -> Result<Vec<Option<i64>>> {
    if data.first() != Some(&SESSION_SETS_VERSION) {
        return Err(damaged("unknown version"));
    }
    let mut at = 1;
    let raw_len = usize::try_from(varint(data, &mut at)?).map_err(|_| damaged("too large"))?;
    let n = usize::try_from(varint(data, &mut at)?).map_err(|_| damaged("too large"))?;
    if n > MAX_ATTEMPTS || raw_len > n.saturating_mul(10) || raw_len < n {
        return Err(damaged("wrong length"));
    }
    let raw =
        unzip(&data[at..], raw_len).map_err(|e| damaged(&format!("cannot decompress ({e})")))?;
    if raw.len() != raw_len {
        return Err(damaged("wrong length"));
    }
    let mut out = Vec::with_capacity(n);
    let mut p = 0;
    for _ in 0..n {
        let v = varint(&raw, &mut p)?;
        out.push(v.checked_sub(1).map(|id| id as i64));
    }
    if p != raw.len() {
        return Err(damaged("trailing bytes"));
    }
    Ok(out)
}

/// Most projects whose snapshot is kept at once.
const SNAPSHOT_PROJECTS: usize = 16;

/// What a project's newest session was when its snapshot was read.
type NewestSession = Option<(Uuid, SessionStatus)>;

/// A kept snapshot and the newest session it was read with.
type Kept = (NewestSession, Arc<DepsSnapshot>);

/// Each project's snapshot as last read, and what its newest session was
/// then: a snapshot stands while the newest session stays the same (a new
/// one starts, or it closes, and the next read reads anew). Pruning clears
/// it, as the sessions it read may be gone.
#[derive(Default)]
pub(crate) struct SnapshotCache {
    kept: std::sync::Mutex<HashMap<Vec<String>, Kept>>,
}

impl SnapshotCache {
    fn get(&self, key: &[String], newest: NewestSession) -> Option<Arc<DepsSnapshot>> {
        let kept = self.kept.lock().ok()?;
        kept.get(key)
            .filter(|(seen, _)| *seen == newest)
            .map(|(_, s)| s.clone())
    }

    fn put(&self, key: Vec<String>, newest: NewestSession, snapshot: Arc<DepsSnapshot>) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= SNAPSHOT_PROJECTS && !kept.contains_key(&key) {
                kept.clear();
            }
            kept.insert(key, (newest, snapshot));
        }
    }

    /// Forgets every snapshot (sessions were pruned).
    pub(crate) fn clear(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.clear();
        }
    }
}

impl Store {
    /// What each test of `project` last ran ([`DepsSnapshot`]): for every
    /// test (not subtest) its kept closed sessions ran, its newest run and
    /// that run's dependency set, the sets and units those runs use, and
    /// the newest watched files and packages digest. Kept until the
    /// project's newest session changes.
    pub async fn deps_snapshot(&self, project: &Project) -> Result<Arc<DepsSnapshot>> {
        let newest = self
            .list_sessions(
                super::SessionFilter {
                    statuses: Vec::new(),
                    project: Some(project.clone()),
                },
                1,
                None,
            )
            .await?
            .items
            .pop()
            .map(|s| (s.id, s.status));
        let key = project.spellings.clone();
        if let Some(s) = self.inner.snapshots.get(&key, newest) {
            return Ok(s);
        }
        let snapshot = Arc::new(self.backend().deps_snapshot(project.clone()).await?);
        self.inner.snapshots.put(key, newest, snapshot.clone());
        Ok(snapshot)
    }
}

/// Tests seen so far by a snapshot scan, by key: a bitmap, since a scan
/// asks once per test per session (two million times for ten thousand
/// tests over two hundred sessions) and keys are small and dense.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    /// Keys too large (or negative) for the bitmap.
    others: std::collections::HashSet<i64>,
}

impl Seen {
    /// Whether `key` was seen.
    fn contains(&self, key: i64) -> bool {
        match usize::try_from(key).ok().filter(|k| *k < (1 << 32)) {
            Some(k) => self
                .bits
                .get(k / 64)
                .is_some_and(|w| w & (1u64 << (k % 64)) != 0),
            None => self.others.contains(&key),
        }
    }

    /// Marks `key` seen; returns whether it was new.
    fn insert(&mut self, key: i64) -> bool {
        match usize::try_from(key).ok().filter(|k| *k < (1 << 32)) {
            Some(k) => {
                let (word, bit) = (k / 64, 1u64 << (k % 64));
                if word >= self.bits.len() {
                    self.bits.resize(word + 1, 0);
                }
                let new = self.bits[word] & bit == 0;
                self.bits[word] |= bit;
                new
            }
            None => self.others.insert(key),
        }
    }
}

/// The distinct ids among `ids`, sorted: in a bitmap, since a snapshot's
/// sets name hundreds of thousands of unit ids (ten thousand sets of sixty),
/// which sorting would take longer to dedupe than reading them.
pub fn distinct(ids: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut seen = Seen::default();
    let mut out: Vec<i64> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
    out.sort_unstable();
    out
}

/// Positions of sorted ids, looked up by id: an array over their range when
/// it is dense enough, else a map.
enum Positions {
    Dense { first: i64, at: Vec<u32> },
    Sparse(HashMap<i64, u32>),
}

impl Positions {
    fn new(sorted: &[i64]) -> Positions {
        match (sorted.first(), sorted.last()) {
            (Some(&first), Some(&last)) if (last - first) < 16 * sorted.len() as i64 + 1024 => {
                let mut at = vec![u32::MAX; (last - first + 1) as usize];
                for (i, id) in sorted.iter().enumerate() {
                    at[(id - first) as usize] = i as u32;
                }
                Positions::Dense { first, at }
            }
            _ => Positions::Sparse(
                sorted
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (*id, i as u32))
                    .collect(),
            ),
        }
    }

    fn get(&self, id: i64) -> Option<u32> {
        match self {
            Positions::Dense { first, at } => usize::try_from(id - first)
                .ok()
                .and_then(|i| at.get(i).copied())
                .filter(|p| *p != u32::MAX),
            Positions::Sparse(map) => map.get(&id).copied(),
        }
    }
}

/// A test's (or subtest's) newest run found by a [`SnapshotScan`].
#[derive(Debug, Clone)]
pub struct FoundRun {
    /// The test.
    pub test: TestKey,
    /// Whether it is a subtest.
    pub subtest: bool,
    /// The session, as its position in the scan (newest first).
    pub session: usize,
    /// The final outcome (last attempt).
    pub outcome: TestOutcome,
    /// Whether it both passed and failed there.
    pub mixed: bool,
    /// The last attempt's dependency set.
    pub set: Option<i64>,
}

/// Finds each test's newest run from closed sessions given newest first
/// (their digests and per-attempt sets): what a backend reads for a
/// [`DepsSnapshot`], whatever the backend.
#[derive(Default)]
pub struct SnapshotScan {
    seen: Seen,
    /// The newest run of each test found so far.
    pub found: Vec<FoundRun>,
}

impl SnapshotScan {
    /// Whether a session whose tests are `keys` ran a test no newer one did
    /// (only then is the rest of it read).
    pub fn has_new(&self, keys: &[i64]) -> bool {
        keys.iter().any(|k| !self.seen.contains(*k))
    }

    /// Takes the next older session (its position `session`): the tests
    /// no newer session ran. `sets` gives its per-attempt sets (digest
    /// order), read only when it has such a test.
    pub fn add(
        &mut self,
        session: usize,
        digest: &Digest,
        sets: impl FnOnce() -> Result<Vec<Option<i64>>>,
    ) -> Result<()> {
        let first = self.found.len();
        for i in 0..digest.len() {
            if !self.seen.insert(digest.test(i)) {
                continue;
            }
            let attempts = attempts_of(digest.attempts(i).iter().copied());
            self.found.push(FoundRun {
                test: digest.test(i),
                subtest: digest.is_subtest(i),
                session,
                outcome: digest.last(i),
                mixed: attempts.contains(&true) && attempts.contains(&false),
                // For now the attempt's position; its set is read below.
                set: Some(digest.attempt_range(i).end as i64 - 1),
            });
        }
        if self.found.len() == first {
            return Ok(());
        }
        let sets = sets()?;
        if sets.len() != digest.attempt_count() && !sets.is_empty() {
            return Err(damaged("its sets do not match its digest"));
        }
        for f in &mut self.found[first..] {
            f.set = f
                .set
                .and_then(|at| sets.get(usize::try_from(at).ok()?).copied().flatten());
        }
        Ok(())
    }

    /// The distinct sets the newest runs of tests (not subtests) use.
    pub fn set_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .found
            .iter()
            .filter(|f| !f.subtest)
            .filter_map(|f| f.set)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// What a backend read for a snapshot, beside its [`SnapshotScan`].
pub struct SnapshotParts {
    /// The project as named.
    pub project: String,
    /// The scanned sessions, newest first: id and status.
    pub sessions: Vec<(Uuid, SessionStatus)>,
    /// Each found test's nodeid and subtest label.
    pub names: HashMap<TestKey, (String, String)>,
    /// Each set's unit ids.
    pub sets: HashMap<i64, Vec<i64>>,
    /// Each unit the sets name.
    pub units: HashMap<i64, StoredUnit>,
    /// The newest watched files and packages digest recorded.
    pub watched_files: BTreeMap<String, String>,
    /// See [`DepsSnapshot::packages`].
    pub packages: String,
}

/// Puts a snapshot together: each test (not subtest) once, by nodeid, its
/// outcome failed when one of its subtests failed in that same session;
/// sets and units as indexes.
pub fn assemble(scan: SnapshotScan, parts: SnapshotParts) -> Result<DepsSnapshot> {
    let mut unit_ids: Vec<i64> = parts.units.keys().copied().collect();
    unit_ids.sort_unstable();
    let unit_at = Positions::new(&unit_ids);
    let mut set_ids: Vec<i64> = parts.sets.keys().copied().collect();
    set_ids.sort_unstable();
    let mut sets = Vec::with_capacity(set_ids.len());
    let mut set_at: HashMap<i64, usize> = HashMap::with_capacity(set_ids.len());
    for id in &set_ids {
        // A set's unit ids are sorted, and so are their positions.
        let members = parts.sets[id]
            .iter()
            .map(|u| {
                unit_at
                    .get(*u)
                    .ok_or_else(|| damaged("a set names a unit that is not stored"))
            })
            .collect::<Result<Vec<u32>>>()?;
        set_at.insert(*id, sets.len());
        sets.push(members);
    }
    let mut units: Vec<Option<StoredUnit>> = Vec::with_capacity(unit_ids.len());
    let mut stored = parts.units;
    for id in &unit_ids {
        units.push(stored.remove(id));
    }
    let units: Vec<StoredUnit> = units.into_iter().flatten().collect();

    // Subtests that failed, by (nodeid, session).
    let mut failed_subtests: std::collections::HashSet<(&str, usize)> = Default::default();
    for f in scan
        .found
        .iter()
        .filter(|f| f.subtest && f.outcome.is_failure())
    {
        if let Some((nodeid, _)) = parts.names.get(&f.test) {
            failed_subtests.insert((nodeid.as_str(), f.session));
        }
    }
    let mut tests = Vec::new();
    for f in scan.found.iter().filter(|f| !f.subtest) {
        let Some((nodeid, _)) = parts.names.get(&f.test) else {
            continue;
        };
        let Some(&(session, status)) = parts.sessions.get(f.session) else {
            return Err(damaged("a run of a session that was not read"));
        };
        let outcome =
            if !f.outcome.is_failure() && failed_subtests.contains(&(nodeid.as_str(), f.session)) {
                TestOutcome::Failed
            } else {
                f.outcome
            };
        tests.push(LastRun {
            nodeid: nodeid.clone(),
            outcome,
            mixed: f.mixed,
            session,
            status,
            set: f.set.and_then(|id| set_at.get(&id).copied()),
        });
    }
    tests.sort_by(|a, b| a.nodeid.cmp(&b.nodeid));
    Ok(DepsSnapshot {
        project: parts.project,
        tests,
        sets,
        units,
        watched_files: parts.watched_files,
        packages: parts.packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_the_same_whatever_the_order_and_repeats_of_its_keys() {
        let a = DepSet::of(vec![3, 1, 2, 3]);
        let b = DepSet::of(vec![1, 2, 3]);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.keys, [3, 1, 2, 3], "as sent");
        assert_ne!(a.digest, DepSet::of(vec![1, 2]).digest);
    }

    #[test]
    fn equal_codes_give_equal_code_digests_whatever_their_order() {
        assert_eq!(code_digest(&mut [9, 4, 4]), code_digest(&mut [4, 9]));
        assert_ne!(code_digest(&mut [9, 4]), code_digest(&mut [9, 5]));
        assert!(code_identity(1).starts_with(DEPS_PREFIX));
    }

    #[test]
    fn unit_ids_and_session_sets_round_trip_and_damage_is_an_error() {
        let ids = [1, 2, 300, 70_000, i64::MAX];
        assert_eq!(decode_units(&encode_units(&ids)).unwrap(), ids);
        assert!(decode_units(&[0x80]).is_err());
        let sets = [Some(0), None, Some(5), Some(1 << 40), None];
        let blob = encode_session_sets(&sets).unwrap();
        assert_eq!(decode_session_sets(&blob).unwrap(), sets);
        assert_eq!(encode_session_sets(&[None, None]), None);
        for cut in [0, 1, 2, blob.len() - 1] {
            assert!(decode_session_sets(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }
}
