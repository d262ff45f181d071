//! A closed session's digest: for each test, the kinds of its attempts in
//! order and its final duration, written when the session closes as two
//! blobs: the tests and their attempts (compressed to a few KB for ten
//! thousand tests), and the durations (which do not compress), so that a
//! flaky-test search over many sessions reads only the first.
//!
//! Comparisons and flaky-test searches read many tests of many sessions; a
//! digest answers them with one blob per session instead of one row per
//! outcome, whatever the session's size. It holds nothing a row does not: a
//! session without one (still running, or its digest unreadable) is read
//! from its rows instead, with the same result. The encoding is the same for
//! every backend.

use std::collections::HashMap;

use super::analysis::{Final, Run, RunSession, attempts_with, run_code};
use super::backend::{FlakyInput, TestKey};
use super::blob::{VarintError, put_varint, read_varint, unzip};
use crate::error::{Error, Result};
use crate::model::TestOutcome;

const VERSION: u8 = 1;

/// Most bytes a digest may decode to; a larger claim is a damaged digest.
const MAX_DECODED: usize = 512 * 1024 * 1024;

/// A session's tests, sorted by key, column by column: what each test's
/// attempts were, whether it is a subtest, and its final duration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Digest {
    tests: Vec<i64>,
    subtests: Vec<bool>,
    /// Where each test's attempts start in `kinds`; empty when every test
    /// had exactly one attempt (nearly always), so test `i`'s is `kinds[i]`.
    firsts: Vec<u32>,
    kinds: Vec<TestOutcome>,
    /// The final attempt's duration of each test, when they were read.
    durations: Vec<f64>,
}

impl Digest {
    /// How many tests the session ran.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether the session ran no test.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The key of test `i`.
    pub fn test(&self, i: usize) -> i64 {
        self.tests[i]
    }

    /// Whether test `i` is a subtest.
    pub fn is_subtest(&self, i: usize) -> bool {
        self.subtests[i]
    }

    /// The position of a test, if the session ran it.
    pub fn find(&self, test: i64) -> Option<usize> {
        self.tests.binary_search(&test).ok()
    }

    /// The kinds of test `i`'s attempts, in order.
    pub fn attempts(&self, i: usize) -> &[TestOutcome] {
        self.kinds.get(self.attempt_range(i)).unwrap_or_default()
    }

    /// Where test `i`'s attempts are among all the session's attempts (the
    /// order of anything kept per attempt, such as dependency sets).
    pub fn attempt_range(&self, i: usize) -> std::ops::Range<usize> {
        if self.firsts.is_empty() {
            return i..i + 1;
        }
        let start = self.firsts[i] as usize;
        let end = self
            .firsts
            .get(i + 1)
            .map_or(self.kinds.len(), |f| *f as usize);
        start..end
    }

    /// How many attempts the session's tests had in all.
    pub fn attempt_count(&self) -> usize {
        self.kinds.len()
    }

    /// The positions of the tests with a failed or errored attempt.
    pub fn failing(&self) -> impl Iterator<Item = usize> + '_ {
        let single = self.firsts.is_empty();
        (0..self.len()).filter(move |&i| {
            if single {
                self.kinds[i].is_failure()
            } else {
                self.attempts(i).iter().any(|k| k.is_failure())
            }
        })
    }

    /// Test `i`'s final outcome.
    pub fn last(&self, i: usize) -> TestOutcome {
        self.attempts(i)
            .last()
            .copied()
            .unwrap_or(TestOutcome::Passed)
    }

    /// Test `i`'s final duration in seconds, when the durations were read.
    pub fn duration(&self, i: usize) -> Option<f64> {
        self.durations.get(i).copied()
    }

    /// Each test's final outcome (last attempt) and duration, by test key.
    pub fn finals(&self) -> Vec<(TestKey, Final)> {
        (0..self.len())
            .map(|i| {
                (
                    self.test(i),
                    Final {
                        outcome: self.last(i),
                        duration: self.duration(i).unwrap_or_default(),
                    },
                )
            })
            .collect()
    }
}

/// The flaky-test candidates of a window of sessions: every test (not
/// subtest) that failed in one of them, sorted.
pub fn flaky_candidates(digests: &[Digest]) -> Vec<i64> {
    // Only a test that failed in the window can be flaky.
    let mut candidates: Vec<i64> = Vec::new();
    for d in digests {
        candidates.extend(d.failing().filter(|&i| !d.is_subtest(i)).map(|i| d.test(i)));
    }
    candidates.sort_unstable();
    candidates.dedup();
    candidates
}

/// The dependency sets the candidates' attempts used, given each session's
/// sets per attempt (empty: none recorded): the only sets whose code the
/// flaky rule needs.
pub fn candidate_sets(
    candidates: &[i64],
    digests: &[Digest],
    sets: &[Vec<Option<i64>>],
) -> Vec<i64> {
    let mut out = Vec::new();
    for (d, sets) in digests.iter().zip(sets) {
        if sets.is_empty() {
            continue;
        }
        for test in candidates {
            if let Some(i) = d.find(*test) {
                out.extend(
                    sets.get(d.attempt_range(i))
                        .unwrap_or_default()
                        .iter()
                        .flatten(),
                );
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The flaky-test candidates of a window of sessions, given oldest first
/// with their digests and their sets per attempt (empty: none recorded, or
/// not read when there is no candidate), with the code of each set: every
/// test (not subtest) that failed in one of them, with its pass/fail runs
/// there, each on its dependencies' code when it recorded them.
pub fn flaky_input(
    recent: &[RunSession],
    digests: &[Digest],
    sets: &[Vec<Option<i64>>],
    codes: &HashMap<i64, u64>,
) -> FlakyInput {
    let candidates = flaky_candidates(digests);
    let mut runs: Vec<(i64, Vec<Run>)> = candidates.iter().map(|t| (*t, Vec::new())).collect();
    let none: Vec<Option<i64>> = Vec::new();
    for (si, (s, d)) in recent.iter().zip(digests).enumerate() {
        let session_sets = sets.get(si).unwrap_or(&none);
        for (test, test_runs) in runs.iter_mut() {
            let Some(i) = d.find(*test) else {
                continue;
            };
            let range = d.attempt_range(i);
            let attempt_sets = session_sets.get(range).unwrap_or_default();
            let outcomes = d.attempts(i).iter().enumerate().map(|(k, kind)| {
                let code = attempt_sets
                    .get(k)
                    .copied()
                    .flatten()
                    .and_then(|set| codes.get(&set).copied());
                (*kind, code)
            });
            for (failed, code) in attempts_with(outcomes) {
                test_runs.push(Run {
                    session: s.key,
                    id: s.id,
                    code: run_code(code, &s.code),
                    failed,
                });
            }
        }
    }
    FlakyInput {
        sessions: recent.len(),
        tests: runs,
    }
}

/// Builds a digest from a session's outcomes given in seq order as (test,
/// is a subtest, kind, duration).
pub fn build(outcomes: impl IntoIterator<Item = (i64, bool, TestOutcome, f64)>) -> Digest {
    build_with(outcomes.into_iter().map(|(t, s, k, d)| (t, s, k, d, ()))).0
}

/// Like [`build`], carrying a value per outcome (its dependency set, say)
/// into the digest's attempt order: the second vector is parallel to the
/// attempts ([`Digest::attempt_range`]).
pub fn build_with<T>(
    outcomes: impl IntoIterator<Item = (i64, bool, TestOutcome, f64, T)>,
) -> (Digest, Vec<T>) {
    let mut at: HashMap<i64, usize> = HashMap::new();
    type Group<T> = (i64, bool, Vec<(TestOutcome, T)>, f64);
    let mut grouped: Vec<Group<T>> = Vec::new();
    for (test, subtest, kind, duration, extra) in outcomes {
        match at.get(&test) {
            Some(&i) => {
                let e = &mut grouped[i];
                e.2.push((kind, extra));
                e.3 = duration;
            }
            None => {
                at.insert(test, grouped.len());
                grouped.push((test, subtest, vec![(kind, extra)], duration));
            }
        }
    }
    grouped.sort_by_key(|e| e.0);
    let reruns = grouped.iter().any(|e| e.2.len() > 1);
    let mut d = Digest::default();
    let mut extras = Vec::new();
    for (test, subtest, attempts, duration) in grouped {
        d.tests.push(test);
        d.subtests.push(subtest);
        if reruns {
            d.firsts.push(d.kinds.len() as u32);
        }
        for (kind, extra) in attempts {
            d.kinds.push(kind);
            extras.push(extra);
        }
        d.durations.push(duration);
    }
    (d, extras)
}

fn code(kind: TestOutcome) -> u8 {
    super::codes::kind_code(kind) as u8
}

fn kind(code: u8) -> Option<TestOutcome> {
    super::codes::kind_of(i64::from(code))
}

// The encoding, column by column so that each decodes in a tight loop.
// The tests blob: version (1 byte), test count (varint), length of the
// packed part (varint), width of a test key (1 byte: 4 or 8), then zstd of
// [test keys, little-endian, sorted][one flags byte per test (bit 0:
// subtest)][attempt counts as varints][one kind byte per attempt]. Keys of a
// suite are consecutive, so their column compresses to almost nothing and
// decodes without arithmetic. The durations blob: each test's final
// duration as an f64, little-endian, in the same order.

/// Encodes a digest as (tests, durations).
pub fn encode(digest: &Digest) -> (Vec<u8>, Vec<u8>) {
    let n = digest.len();
    let narrow = digest.tests.iter().all(|t| u32::try_from(*t).is_ok());
    let width: u8 = if narrow { 4 } else { 8 };
    let mut packed = Vec::with_capacity(n * (usize::from(width) + 2) + digest.kinds.len());
    let mut prev = 0i64;
    for &test in &digest.tests {
        // Sorted, so the deltas are small: mostly 1, which zstd packs to nothing.
        let delta = test.wrapping_sub(prev);
        prev = test;
        if narrow {
            packed.extend_from_slice(&(delta as u32).to_le_bytes());
        } else {
            packed.extend_from_slice(&delta.to_le_bytes());
        }
    }
    packed.extend(digest.subtests.iter().map(|s| u8::from(*s)));
    for i in 0..n {
        put_varint(&mut packed, digest.attempts(i).len() as u64);
    }
    packed.extend(digest.kinds.iter().map(|k| code(*k)));
    // Compressing a buffer in memory does not fail; if it ever did, the
    // digest is unreadable and readers fall back to the session's rows.
    let zipped = zstd::bulk::compress(&packed, 3).unwrap_or_default();
    let mut tests = Vec::with_capacity(zipped.len() + 16);
    tests.push(VERSION);
    put_varint(&mut tests, n as u64);
    put_varint(&mut tests, packed.len() as u64);
    tests.push(width);
    tests.extend_from_slice(&zipped);
    let mut durations = Vec::with_capacity(n * 8);
    for d in &digest.durations {
        durations.extend_from_slice(&d.to_le_bytes());
    }
    (tests, durations)
}

fn damaged(why: &str) -> Error {
    Error::Internal(format!("a session digest is damaged: {why}"))
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64> {
    read_varint(data, at).map_err(|e| match e {
        VarintError::CutShort => damaged("cut short"),
        VarintError::TooLong => damaged("a number is too long"),
    })
}

fn size(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v)
        .ok()
        .filter(|n| *n <= MAX_DECODED)
        .ok_or_else(|| damaged(what))
}

/// A digest's tests blob unpacked: the test count, the key width and the
/// packed columns.
fn unpack(tests: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let mut at = 0;
    if tests.first() != Some(&VERSION) {
        return Err(damaged("unknown version"));
    }
    at += 1;
    let n = size(varint(tests, &mut at)?, "too many tests")?;
    let packed_len = size(varint(tests, &mut at)?, "too large")?;
    let width = usize::from(*tests.get(at).ok_or_else(|| damaged("cut short"))?);
    at += 1;
    if width != 4 && width != 8 {
        return Err(damaged("unknown key width"));
    }
    // Each test takes at least its key, a flags byte and a count; a claim of
    // far more than its tests could need is damage, not data.
    if packed_len < n.saturating_mul(width + 2) || packed_len > n.saturating_mul(64) + (64 << 20) {
        return Err(damaged("wrong packed length"));
    }
    let packed = unzip(&tests[at..], packed_len)
        .map_err(|e| damaged(&format!("cannot decompress ({e})")))?;
    if packed.len() != packed_len {
        return Err(damaged("wrong length"));
    }
    Ok((n, width, packed))
}

/// The sorted test keys of the packed columns.
fn keys_of(n: usize, width: usize, packed: &[u8]) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(n);
    let keys = &packed[..n * width];
    let mut prev = 0i64;
    let mut ordered = true;
    let mut push = |delta: i64| {
        ordered &= delta > 0 || out.is_empty();
        prev = prev.wrapping_add(delta);
        out.push(prev);
    };
    if width == 4 {
        for c in keys.chunks_exact(4) {
            push(i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
    } else {
        for c in keys.chunks_exact(8) {
            push(i64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
    }
    if !ordered {
        return Err(damaged("keys out of order"));
    }
    Ok(out)
}

/// Decodes only the test keys of a digest's tests blob (sorted): what a
/// scan that asks which tests a session ran needs, at a fraction of the
/// cost of [`decode`].
pub fn decode_keys(tests: &[u8]) -> Result<Vec<i64>> {
    let (n, width, packed) = unpack(tests)?;
    keys_of(n, width, &packed)
}

/// Decodes a digest's tests, and their durations when given; a damaged
/// digest is an error, never a panic.
pub fn decode(tests: &[u8], durations: Option<&[u8]>) -> Result<Digest> {
    let (n, width, packed) = unpack(tests)?;
    let mut d = Digest {
        tests: keys_of(n, width, &packed)?,
        ..Digest::default()
    };
    let mut p = n * width;
    let flags = packed.get(p..p + n).ok_or_else(|| damaged("cut short"))?;
    p += n;
    d.subtests = flags.iter().map(|f| f & 1 != 0).collect();
    let counts_start = p;
    let mut total = 0u32;
    let mut reruns = false;
    // Nearly always one attempt each: n bytes of 1.
    if packed
        .get(p..p + n)
        .is_some_and(|c| c.iter().all(|b| *b == 1))
    {
        p += n;
        total = n as u32;
    } else {
        for _ in 0..n {
            let count = u32::try_from(varint(&packed, &mut p)?)
                .map_err(|_| damaged("too many attempts"))?;
            if count == 0 {
                return Err(damaged("a test with no attempts"));
            }
            reruns |= count > 1;
            total = total
                .checked_add(count)
                .ok_or_else(|| damaged("too many attempts"))?;
        }
    }
    if reruns {
        let mut q = counts_start;
        let mut first = 0u32;
        d.firsts.reserve(n);
        for _ in 0..n {
            d.firsts.push(first);
            first += varint(&packed, &mut q)? as u32;
        }
    }
    let kinds = packed
        .get(p..)
        .filter(|k| k.len() == total as usize)
        .ok_or_else(|| damaged("wrong number of attempts"))?;
    if !kinds.iter().all(|k| (1..=6).contains(k)) {
        return Err(damaged("unknown outcome kind"));
    }
    d.kinds = kinds
        .iter()
        .map(|&k| kind(k).unwrap_or(TestOutcome::Passed))
        .collect();
    if let Some(raw) = durations {
        if raw.len() != n.saturating_mul(8) {
            return Err(damaged("wrong number of durations"));
        }
        d.durations = raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TestOutcome::{Failed, Passed, Skipped};

    #[test]
    fn a_digest_groups_reruns_under_their_test_and_round_trips() {
        let d = build([
            (7, false, Failed, 0.5),
            (3, true, Passed, 0.25),
            (7, false, Passed, 0.125),
            (1_000_000, false, Skipped, 1e-9),
        ]);
        assert_eq!(d.len(), 3);
        assert_eq!(d.test(1), 7);
        assert_eq!(d.find(7), Some(1));
        assert_eq!(d.find(8), None);
        assert_eq!(d.attempts(1), [Failed, Passed]);
        assert_eq!(d.attempts(2), [Skipped]);
        assert_eq!(d.last(1), Passed);
        assert_eq!(d.duration(1), Some(0.125));
        assert!(d.is_subtest(0) && !d.is_subtest(1));
        let (tests, durations) = encode(&d);
        assert_eq!(decode(&tests, Some(&durations)).unwrap(), d);
        let without = decode(&tests, None).unwrap();
        assert_eq!(without.attempts(1), [Failed, Passed]);
        assert_eq!(without.duration(1), None);
        // Without reruns every test's attempt is found by its position.
        let single = build([(1, false, Failed, 0.1), (2, false, Passed, 0.2)]);
        let (tests, _) = encode(&single);
        let back = decode(&tests, None).unwrap();
        assert_eq!(back.attempts(0), [Failed]);
        assert_eq!(back.attempts(1), [Passed]);
    }

    #[test]
    fn a_damaged_digest_is_an_error_not_a_panic() {
        let (tests, durations) = encode(&build((0..100).map(|i| (i, false, Passed, i as f64))));
        for cut in [0, 1, 2, tests.len() / 2, tests.len() - 1] {
            assert!(decode(&tests[..cut], None).is_err(), "cut at {cut}");
        }
        assert!(decode(&tests, Some(&durations[1..])).is_err());
        let mut wrong = tests.clone();
        wrong[0] = 9;
        assert!(decode(&wrong, None).is_err());
        assert!(decode(&[], None).is_err());
    }
}
