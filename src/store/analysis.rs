//! Analytic reads over many outcomes: a test's stability across sessions,
//! flaky tests over a window, two sessions compared, the slowest tests.
//!
//! The rules that turn outcomes into a verdict (what counts as flaky) live
//! here once, as pure functions over rows, so every front end (MCP today)
//! says the same thing and the rules are unit-tested without a database.
//! Only pass/fail outcomes count toward stability: a skip says nothing about
//! whether a test is reliable.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use super::Store;
use super::backend::{SessionKey, TestKey};
use super::fingerprint::{self, Cluster, Fingerprint, StoredCause};
use crate::error::{Error, Result};
use crate::model::{Outcome, Project, Session, SessionRef, Source, TestOutcome};

/// Sessions named as evidence on each side of a flaky verdict.
pub const EVIDENCE_SESSIONS: usize = 5;

/// What a test's recent outcomes say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No pass or fail outcome recorded.
    Unknown,
    /// Passed every time.
    Passing,
    /// Failed every time.
    Failing,
    /// Passed before, fails now, and never both on the same code: a regression.
    Regressed,
    /// Failed before, passes now, and never both on the same code: a fix.
    Fixed,
    /// Passed and failed on the same code (the same code state, or within
    /// one session's reruns).
    Flaky,
}

impl Verdict {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Passing => "passing",
            Verdict::Failing => "failing",
            Verdict::Regressed => "regressed",
            Verdict::Fixed => "fixed",
            Verdict::Flaky => "flaky",
        }
    }
}

/// Which rule said two runs were on the same code (or, for a [`Change`],
/// that they were not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeRule {
    /// Both runs recorded their dependencies, and their code is compared:
    /// the code digests of their dependency sets ([`crate::store::deps`]).
    Dependencies,
    /// Without dependencies: the session's code state (commit and a digest
    /// of uncommitted changes).
    CodeState,
    /// Reruns within one session, whatever else: the code cannot change
    /// between them.
    Reruns,
}

impl CodeRule {
    /// The rule of a run's code identity ([`Run::code`]).
    pub fn of_code(code: &str) -> CodeRule {
        if code.starts_with(crate::store::deps::DEPS_PREFIX) {
            CodeRule::Dependencies
        } else {
            CodeRule::CodeState
        }
    }

    /// The name of the rule behind a flaky verdict's evidence, as the wire
    /// says it: `same_dependencies`, `same_code_state` or `same_session_reruns`.
    pub fn evidence_name(self) -> &'static str {
        match self {
            CodeRule::Dependencies => "same_dependencies",
            CodeRule::CodeState => "same_code_state",
            CodeRule::Reruns => "same_session_reruns",
        }
    }

    /// What changed between the runs of a [`Change`], as the wire says it:
    /// `dependencies` or `code_state`.
    pub fn change_name(self) -> &'static str {
        match self {
            CodeRule::Dependencies => "dependencies",
            CodeRule::CodeState | CodeRule::Reruns => "code_state",
        }
    }
}

/// Why a test is flaky: one code on which it both passed and failed, and
/// the sessions that show it (newest first, at most [`EVIDENCE_SESSIONS`]
/// each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Which rule found the code the same.
    pub rule: CodeRule,
    /// The code it passed and failed on: a code state, or for
    /// [`CodeRule::Dependencies`] `deps:` and its dependencies' code digest;
    /// `None` when the evidence is one session's reruns (whatever its code).
    pub code_state: Option<Arc<str>>,
    /// Sessions it passed in on that code.
    pub passed_in: Vec<Uuid>,
    /// Sessions it failed in on that code.
    pub failed_in: Vec<Uuid>,
}

/// A change between passing and failing on different code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Failed where it passed before ([`Verdict::Regressed`]), or the other
    /// way round ([`Verdict::Fixed`]).
    pub verdict: Verdict,
    /// The session of the first run after the change.
    pub session: Uuid,
    /// Its code (as [`Evidence::code_state`]), when known.
    pub code_state: Option<Arc<str>>,
    /// What said the code differed: the dependencies' code, when both runs
    /// recorded it, else the code state.
    pub rule: CodeRule,
}

/// Most changes a [`Stability`] keeps (the newest).
pub const CHANGES_KEPT: usize = 10;

/// Pass/fail statistics of one test over a window of runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stability {
    /// Pass or fail outcomes counted.
    pub runs: u64,
    /// Passed outcomes.
    pub passed: u64,
    /// Failed or error outcomes.
    pub failed: u64,
    /// Changes between pass and fail, oldest to newest.
    pub flips: u64,
    /// Code states on which the test both passed and failed.
    pub mixed_code_states: u64,
    /// Sessions in which the test both passed and failed (reruns).
    pub mixed_sessions: u64,
    /// Whether the newest counted outcome is a failure.
    pub last_failed: Option<bool>,
    /// The newest evidence of flakiness, when there is any.
    pub evidence: Option<Evidence>,
    /// The changes between pass and fail that were not flakiness (on
    /// different code, not within one session), oldest first; the newest
    /// [`CHANGES_KEPT`].
    pub changes: Vec<Change>,
}

/// Judges a test from its statistics: flaky only when it passed and failed
/// on the same code. Passing and failing on different code, however often,
/// is a regression or a fix: the code changed.
///
/// This is the one place the rule lives; what "the same code" is comes with
/// each [`Run`] ([`Run::code`]).
pub fn flakiness_verdict(s: &Stability) -> Verdict {
    if s.runs == 0 {
        return Verdict::Unknown;
    }
    if s.mixed_code_states > 0 || s.mixed_sessions > 0 {
        return Verdict::Flaky;
    }
    match (s.passed, s.failed, s.last_failed) {
        (_, 0, _) => Verdict::Passing,
        (0, _, _) => Verdict::Failing,
        (_, _, Some(true)) => Verdict::Regressed,
        _ => Verdict::Fixed,
    }
}

/// Most tests [`Store::known_flaky`] looks up alone, on a cache miss, before
/// it judges the whole project instead.
const FLAKY_ALONE: usize = 16;

/// Most projects whose flaky tests are kept at once.
const FLAKY_PROJECTS: usize = 32;

/// What a project's newest session was when its flaky tests were judged.
type NewestSession = Option<(Uuid, crate::model::SessionStatus)>;

/// A project's flaky tests by nodeid.
type Judged = Arc<HashMap<String, Stability>>;

/// Which judgment: the project's spellings and the window.
type JudgedKey = (Vec<String>, usize);

/// Each project's flaky tests by nodeid, as last judged over a window, and
/// what its newest session was then. A judgment stands while the newest
/// session is the same one with the same status: outcomes a running session
/// adds show when it closes. Several processes sharing a database each keep
/// their own, checked against the database at every read.
#[derive(Default)]
pub(crate) struct FlakyCache {
    judged: std::sync::Mutex<HashMap<JudgedKey, (NewestSession, Judged)>>,
}

impl FlakyCache {
    fn get(&self, key: &JudgedKey, newest: NewestSession) -> Option<Judged> {
        let judged = self.judged.lock().ok()?;
        judged
            .get(key)
            .filter(|(seen, _)| *seen == newest)
            .map(|(_, j)| j.clone())
    }

    fn put(
        &self,
        key: JudgedKey,
        newest: NewestSession,
        judged: HashMap<String, Stability>,
    ) -> Judged {
        let judged = Arc::new(judged);
        if let Ok(mut all) = self.judged.lock() {
            if all.len() >= FLAKY_PROJECTS && !all.contains_key(&key) {
                all.clear();
            }
            all.insert(key, (newest, judged.clone()));
        }
        judged
    }
}

/// One pass/fail outcome of a test, as the stability rules see it.
#[derive(Debug, Clone)]
pub struct Run {
    /// The backend's key of the session it ran in.
    pub session: SessionKey,
    /// That session's id.
    pub id: Uuid,
    /// The code it ran on: its dependency set's code identity
    /// ([`crate::store::deps::code_identity`]) when the outcome recorded
    /// one, else the session's ([`crate::model::Environment::code_identity`]);
    /// `None` when unknown, which is the same as no other run's.
    pub code: Option<Arc<str>>,
    /// Failed or error (else passed).
    pub failed: bool,
}

/// The attempts of one test in one session, from its outcomes in seq
/// order: each attempt's "failed" flag, oldest first. pytest reports a
/// teardown error after the call's own result, so an error right after a
/// pass or a failure belongs to that attempt (making it failed) rather than
/// starting another: a test that passes and then fails its teardown is not
/// a rerun that passed. Skips and expected failures are not attempts that
/// say anything about reliability.
pub fn attempts_of(kinds: impl IntoIterator<Item = TestOutcome>) -> Vec<bool> {
    attempts_with(kinds.into_iter().map(|k| (k, None::<()>)))
        .into_iter()
        .map(|(failed, _)| failed)
        .collect()
}

/// Like [`attempts_of`], carrying a value of each outcome (its dependency
/// set's code, say) into its attempt: an attempt takes its first outcome's
/// value, or a later one's when the first has none.
pub fn attempts_with<T>(
    outcomes: impl IntoIterator<Item = (TestOutcome, Option<T>)>,
) -> Vec<(bool, Option<T>)> {
    let mut attempts: Vec<(bool, Option<T>)> = Vec::new();
    let mut prev: Option<TestOutcome> = None;
    for (kind, value) in outcomes {
        match kind {
            TestOutcome::Passed => attempts.push((false, value)),
            TestOutcome::Failed => attempts.push((true, value)),
            TestOutcome::Error => match (prev, attempts.last_mut()) {
                (Some(TestOutcome::Passed | TestOutcome::Failed), Some(last)) => {
                    last.0 = true;
                    if last.1.is_none() {
                        last.1 = value;
                    }
                }
                _ => attempts.push((true, value)),
            },
            _ => {}
        }
        prev = Some(kind);
    }
    attempts
}

/// A run's code: its dependency set's code when the outcome recorded one
/// (`deps`), else its session's.
pub fn run_code(deps: Option<u64>, session: &Option<Arc<str>>) -> Option<Arc<str>> {
    match deps {
        Some(code) => Some(Arc::from(crate::store::deps::code_identity(code))),
        None => session.clone(),
    }
}

/// A session as the stability rules see it: its key, id and code.
#[derive(Debug, Clone)]
pub struct RunSession {
    /// The backend's key of the session.
    pub key: SessionKey,
    /// Its id.
    pub id: Uuid,
    /// The code it ran on; `None` when unknown.
    pub code: Option<Arc<str>>,
}

/// Where one code (or one session) saw a test pass and fail: sessions newest first.
#[derive(Default)]
struct Sides {
    passed: Vec<Uuid>,
    failed: Vec<Uuid>,
    /// Position of the newest run counted, to find the newest evidence.
    newest: usize,
}

impl Sides {
    fn add(&mut self, run: &Run, at: usize) {
        let side = if run.failed {
            &mut self.failed
        } else {
            &mut self.passed
        };
        // A session's runs are next to each other (runs are in time order),
        // so comparing with the last one keeps each session once, in linear time.
        if side.last() != Some(&run.id) {
            side.push(run.id);
        }
        self.newest = at;
    }

    fn mixed(&self) -> bool {
        !self.passed.is_empty() && !self.failed.is_empty()
    }

    fn evidence(&self, rule: CodeRule, code_state: Option<Arc<str>>) -> Evidence {
        let newest_first = |v: &[Uuid]| {
            v.iter()
                .rev()
                .take(EVIDENCE_SESSIONS)
                .copied()
                .collect::<Vec<_>>()
        };
        Evidence {
            rule,
            code_state,
            passed_in: newest_first(&self.passed),
            failed_in: newest_first(&self.failed),
        }
    }
}

/// Computes statistics from runs in chronological order.
pub fn stability_of(runs: &[Run]) -> Stability {
    let mut s = Stability::default();
    let mut by_code: HashMap<&str, Sides> = HashMap::new();
    let mut by_session: HashMap<SessionKey, Sides> = HashMap::new();
    let mut prev: Option<&Run> = None;
    for (at, r) in runs.iter().enumerate() {
        s.runs += 1;
        if r.failed {
            s.failed += 1;
        } else {
            s.passed += 1;
        }
        if let Some(p) = prev
            && p.failed != r.failed
        {
            s.flips += 1;
            let same_code = p.session == r.session || (p.code.is_some() && p.code == r.code);
            if !same_code {
                s.changes.push(Change {
                    verdict: if r.failed {
                        Verdict::Regressed
                    } else {
                        Verdict::Fixed
                    },
                    session: r.id,
                    code_state: r.code.clone(),
                    // Dependencies only when both sides had them.
                    rule: match (p.code.as_deref(), r.code.as_deref()) {
                        (Some(a), Some(b))
                            if CodeRule::of_code(a) == CodeRule::Dependencies
                                && CodeRule::of_code(b) == CodeRule::Dependencies =>
                        {
                            CodeRule::Dependencies
                        }
                        _ => CodeRule::CodeState,
                    },
                });
            }
        }
        prev = Some(r);
        if let Some(c) = r.code.as_deref() {
            by_code.entry(c).or_default().add(r, at);
        }
        by_session.entry(r.session).or_default().add(r, at);
    }
    s.last_failed = prev.map(|r| r.failed);
    s.mixed_code_states = by_code.values().filter(|x| x.mixed()).count() as u64;
    s.mixed_sessions = by_session.values().filter(|x| x.mixed()).count() as u64;
    let newest_code = by_code
        .iter()
        .filter(|(_, x)| x.mixed())
        .max_by_key(|(_, x)| x.newest)
        .map(|(c, x)| {
            (
                x.newest,
                x.evidence(CodeRule::of_code(c), Some(Arc::from(*c))),
            )
        });
    let newest_session = by_session
        .values()
        .filter(|x| x.mixed())
        .max_by_key(|x| x.newest)
        .map(|x| (x.newest, x.evidence(CodeRule::Reruns, None)));
    // A same-code witness names its code; a rerun names its session.
    s.evidence = match (newest_code, newest_session) {
        (Some((a, e)), Some((b, _))) if a >= b => Some(e),
        (Some((_, e)), None) => Some(e),
        (_, Some((_, e))) => Some(e),
        (None, None) => None,
    };
    let extra = s.changes.len().saturating_sub(CHANGES_KEPT);
    s.changes.drain(..extra);
    s
}

/// A test judged flaky over a window of sessions.
#[derive(Debug, Clone)]
pub struct FlakyTest {
    /// The test.
    pub nodeid: String,
    /// Its statistics over the window.
    pub stability: Stability,
    /// Its verdict (always [`Verdict::Flaky`] in [`Store::flaky_tests`] results).
    pub verdict: Verdict,
    /// The newest failure message seen.
    pub last_message: String,
}

/// A test whose final outcome differs between two sessions (or that fails in both).
#[derive(Debug, Clone, PartialEq)]
pub struct ComparedTest {
    /// The test.
    pub nodeid: String,
    /// The subtest, when the entry is one ("" for the test itself).
    pub subtest: String,
    /// Final outcome in the base session, if it ran there.
    pub base: Option<TestOutcome>,
    /// Final outcome in the head session, if it ran there.
    pub head: Option<TestOutcome>,
    /// The head's failure message (or the base's, for a fixed test).
    pub message: String,
}

/// A test that got slower.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationChange {
    /// The test.
    pub nodeid: String,
    /// The subtest ("" for the test itself).
    pub subtest: String,
    /// Seconds in the base session.
    pub base: f64,
    /// Seconds in the head session.
    pub head: f64,
}

/// Two sessions compared by each test's final outcome (its last attempt).
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The older session.
    pub base: Session,
    /// The newer session.
    pub head: Session,
    /// Failing in head, not failing (or absent) in base.
    pub new_failures: Vec<ComparedTest>,
    /// Failing in base, passing in head.
    pub fixed: Vec<ComparedTest>,
    /// Failing in both.
    pub still_failing: Vec<ComparedTest>,
    /// Tests run in head only (their subtests are not listed apart).
    pub added: Vec<String>,
    /// Tests run in base only.
    pub removed: Vec<String>,
    /// Passed in both and took longer in head, slowest growth first.
    pub slower: Vec<DurationChange>,
}

/// The final outcome (last attempt) of one test in one session.
#[derive(Debug, Clone, Copy)]
pub struct Final {
    /// The outcome.
    pub outcome: TestOutcome,
    /// Its duration in seconds.
    pub duration: f64,
}

/// Compares final outcomes; `min_ratio` and `min_seconds` both bound what
/// counts as slower (noise on fast tests is not a regression). The lists
/// hold keys in no particular order: the caller names and sorts them.
fn compare_finals<K: Ord + Clone>(
    base: &[(K, Final)],
    head: &[(K, Final)],
    min_ratio: f64,
    min_seconds: f64,
) -> Lists<K> {
    let mut lists = Lists {
        new_failures: Vec::new(),
        fixed: Vec::new(),
        still_failing: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        slower: Vec::new(),
    };
    // Both sides are sorted by key: walk them together.
    let (mut i, mut j) = (0, 0);
    while i < base.len() || j < head.len() {
        let order = match (base.get(i), head.get(j)) {
            (Some((bk, _)), Some((hk, _))) => bk.cmp(hk),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        if order == std::cmp::Ordering::Less {
            lists.removed.push(base[i].0.clone());
            i += 1;
            continue;
        }
        let (key, h) = &head[j];
        j += 1;
        let b = if order == std::cmp::Ordering::Equal {
            i += 1;
            Some(&base[i - 1].1)
        } else {
            lists.added.push(key.clone());
            None
        };
        let entry = || Compared {
            key: key.clone(),
            base: b.map(|b| b.outcome),
            head: Some(h.outcome),
        };
        match (b.map(|b| b.outcome.is_failure()), h.outcome.is_failure()) {
            (Some(true), true) => lists.still_failing.push(entry()),
            (_, true) => lists.new_failures.push(entry()),
            (Some(true), false) if h.outcome == TestOutcome::Passed => lists.fixed.push(entry()),
            _ => {}
        }
        if let Some(b) = b
            && b.outcome == TestOutcome::Passed
            && h.outcome == TestOutcome::Passed
            && h.duration - b.duration >= min_seconds
            && h.duration >= b.duration * min_ratio
        {
            lists.slower.push((key.clone(), b.duration, h.duration));
        }
    }
    lists
}

/// One entry of a comparison list, before it is named.
struct Compared<K> {
    key: K,
    base: Option<TestOutcome>,
    head: Option<TestOutcome>,
}

/// The lists of a [`Comparison`], by test key.
struct Lists<K> {
    new_failures: Vec<Compared<K>>,
    fixed: Vec<Compared<K>>,
    still_failing: Vec<Compared<K>>,
    added: Vec<K>,
    removed: Vec<K>,
    slower: Vec<(K, f64, f64)>,
}

impl Store {
    /// The most recently started session from `source`, recorded under
    /// `grant` (`None`: under no token), that is still running.
    pub async fn latest_running(
        &self,
        source: Source,
        grant: Option<String>,
    ) -> Result<Option<Session>> {
        self.backend().latest_running(source, grant).await
    }

    /// The session of the same project started just before `head`: on
    /// its branch when it has one and such a session exists, else on any.
    pub async fn previous_session(&self, head: &Session) -> Result<Option<Session>> {
        if !head.environment.git_branch.is_empty()
            && let Some(s) = self.backend().previous_session(head.clone(), true).await?
        {
            return Ok(Some(s));
        }
        self.backend().previous_session(head.clone(), false).await
    }

    /// What `head` is compared with when no base is named: the session of
    /// the same project (and branch, when it has one) started just before
    /// it (errors name `head` and `base`).
    pub async fn default_base(&self, head: SessionRef) -> Result<SessionRef> {
        let h = self
            .get_session(head)
            .await
            .map_err(|e| Error::named(e, "head"))?;
        let prev = self.previous_session(&h).await?.ok_or_else(|| {
            crate::error::Error::not_found(
                "base",
                format!("no session of the same project started before {}", h.id),
            )
        })?;
        Ok(SessionRef::Id(prev.id))
    }

    /// Statistics of one test over its newest `window` pass/fail outcomes
    /// in `project` (the test's own, not its subtests').
    pub async fn test_stability(
        &self,
        nodeid: String,
        project: &Project,
        window: usize,
    ) -> Result<Stability> {
        crate::model::validate_nodeid(&nodeid, "nodeid")?;
        let runs = self
            .backend()
            .test_runs(nodeid, project.clone(), window)
            .await?;
        Ok(stability_of(&runs))
    }

    /// Every test of `project` judged flaky over its newest `window`
    /// sessions, with its statistics and the session of its newest failure.
    async fn judge_flaky(
        &self,
        window: usize,
        project: &Project,
    ) -> Result<Vec<(TestKey, Stability, Option<SessionKey>)>> {
        let input = self.backend().flaky_input(window, project.clone()).await?;
        Ok(input
            .tests
            .into_iter()
            .filter_map(|(key, runs)| {
                let stability = stability_of(&runs);
                (flakiness_verdict(&stability) == Verdict::Flaky).then(|| {
                    let last_failure = runs.iter().rev().find(|r| r.failed).map(|r| r.session);
                    (key, stability, last_failure)
                })
            })
            .collect())
    }

    /// Of these tests, those judged flaky over the newest `window` sessions
    /// of `project`, by nodeid: what a failure is labelled with where it is
    /// read.
    ///
    /// Labels are read on every answer that shows a failure, so the
    /// project's judgment is kept ([`FlakyCache`]) until its newest session
    /// changes (a new one starts, or it closes), and is checked with one
    /// indexed read. On a miss, a few tests are looked up alone (their runs
    /// only); many are judged with the whole project, which is then kept.
    pub async fn known_flaky(
        &self,
        window: usize,
        project: &Project,
        nodeids: Vec<String>,
    ) -> Result<HashMap<String, Stability>> {
        let mut nodeids = nodeids;
        nodeids.sort();
        nodeids.dedup();
        if nodeids.is_empty() {
            return Ok(HashMap::new());
        }
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
        let key = (project.spellings.clone(), window);
        let pick = |judged: &HashMap<String, Stability>| -> HashMap<String, Stability> {
            nodeids
                .iter()
                .filter_map(|n| judged.get(n).map(|s| (n.clone(), s.clone())))
                .collect()
        };
        if let Some(judged) = self.inner.flaky.get(&key, newest) {
            return Ok(pick(&judged));
        }
        if nodeids.len() <= FLAKY_ALONE {
            let runs = self
                .backend()
                .runs_of(nodeids, project.clone(), window)
                .await?;
            return Ok(runs
                .into_iter()
                .filter_map(|(nodeid, runs)| {
                    let stability = stability_of(&runs);
                    (flakiness_verdict(&stability) == Verdict::Flaky).then_some((nodeid, stability))
                })
                .collect());
        }
        let judged = self.judge_flaky(window, project).await?;
        let names = self
            .backend()
            .test_names(judged.iter().map(|(k, _, _)| *k).collect())
            .await?;
        let judged: HashMap<String, Stability> = judged
            .into_iter()
            .filter_map(|(key, stability, _)| {
                names
                    .get(&key)
                    .map(|(nodeid, _)| (nodeid.clone(), stability))
            })
            .collect();
        let judged = self.inner.flaky.put(key, newest, judged);
        Ok(pick(&judged))
    }

    /// Tests judged flaky over the newest `window` sessions of `project`,
    /// most evidence first, at most `limit`; and how many were found in all.
    pub async fn flaky_tests(
        &self,
        window: usize,
        project: &Project,
        limit: usize,
    ) -> Result<(usize, Vec<FlakyTest>)> {
        let mut judged = self.judge_flaky(window, project).await?;
        let total = judged.len();
        let names = self
            .backend()
            .test_names(judged.iter().map(|(k, _, _)| *k).collect())
            .await?;
        let name = |k: &TestKey| names.get(k).map(|(n, _)| n.clone()).unwrap_or_default();
        judged.sort_by(|a, b| {
            (b.1.mixed_code_states + b.1.mixed_sessions)
                .cmp(&(a.1.mixed_code_states + a.1.mixed_sessions))
                .then(b.1.flips.cmp(&a.1.flips))
                .then_with(|| name(&a.0).cmp(&name(&b.0)))
        });
        judged.truncate(limit);
        let messages = self
            .backend()
            .failure_messages(
                judged
                    .iter()
                    .filter_map(|(k, _, s)| s.map(|s| (s, *k)))
                    .collect(),
            )
            .await?;
        let found = judged
            .into_iter()
            .map(|(key, stability, last)| FlakyTest {
                nodeid: name(&key),
                stability,
                verdict: Verdict::Flaky,
                last_message: last
                    .and_then(|s| messages.get(&(s, key)).cloned())
                    .unwrap_or_default(),
            })
            .collect();
        Ok((total, found))
    }

    /// Compares two sessions by each test's final outcome. A test counts as
    /// slower when it passed in both and its duration grew by at least
    /// `min_seconds` and by a factor of at least `min_ratio`.
    pub async fn compare_sessions(
        &self,
        base: SessionRef,
        head: SessionRef,
        min_ratio: f64,
        min_seconds: f64,
    ) -> Result<Comparison> {
        let base = self
            .backend()
            .session_finals(base)
            .await
            .map_err(|e| Error::named(e, "base"))?;
        let head = self
            .backend()
            .session_finals(head)
            .await
            .map_err(|e| Error::named(e, "head"))?;
        let (base_key, head_key) = (base.key, head.key);
        let lists = compare_finals(&base.finals, &head.finals, min_ratio, min_seconds);
        // The message of a failing test is the head's; of a fixed one, the base's.
        let mut wanted: Vec<(SessionKey, TestKey)> = Vec::new();
        for c in lists.new_failures.iter().chain(&lists.still_failing) {
            wanted.push((head_key, c.key));
        }
        wanted.extend(lists.fixed.iter().map(|c| (base_key, c.key)));
        let messages = self.backend().failure_messages(wanted).await?;
        let mut keys: Vec<TestKey> = Vec::new();
        for list in [&lists.new_failures, &lists.fixed, &lists.still_failing] {
            keys.extend(list.iter().map(|c| c.key));
        }
        keys.extend(lists.added.iter().chain(&lists.removed));
        keys.extend(lists.slower.iter().map(|(k, _, _)| *k));
        keys.sort_unstable();
        keys.dedup();
        let names = self.backend().test_names(keys).await?;
        let named = |k: &TestKey| names.get(k).cloned().unwrap_or_default();
        let tests = |list: Vec<Compared<TestKey>>, from: SessionKey| {
            let mut out: Vec<ComparedTest> = list
                .into_iter()
                .map(|c| {
                    let (nodeid, subtest) = named(&c.key);
                    ComparedTest {
                        nodeid,
                        subtest,
                        base: c.base,
                        head: c.head,
                        message: messages.get(&(from, c.key)).cloned().unwrap_or_default(),
                    }
                })
                .collect();
            out.sort_by(|a, b| {
                a.nodeid
                    .cmp(&b.nodeid)
                    .then_with(|| a.subtest.cmp(&b.subtest))
            });
            out
        };
        let keyed = |list: Vec<TestKey>| {
            let mut out: Vec<String> = list
                .iter()
                .map(named)
                .filter(|(_, subtest)| subtest.is_empty())
                .map(|(nodeid, _)| nodeid)
                .collect();
            out.sort();
            out
        };
        let mut slower: Vec<DurationChange> = lists
            .slower
            .iter()
            .map(|(k, base, head)| {
                let (nodeid, subtest) = named(k);
                DurationChange {
                    nodeid,
                    subtest,
                    base: *base,
                    head: *head,
                }
            })
            .collect();
        slower.sort_by(|a, b| {
            (b.head - b.base)
                .total_cmp(&(a.head - a.base))
                .then_with(|| a.nodeid.cmp(&b.nodeid))
                .then_with(|| a.subtest.cmp(&b.subtest))
        });
        Ok(Comparison {
            base: base.session,
            head: head.session,
            new_failures: tests(lists.new_failures, head_key),
            fixed: tests(lists.fixed, base_key),
            still_failing: tests(lists.still_failing, head_key),
            added: keyed(lists.added),
            removed: keyed(lists.removed),
            slower,
        })
    }

    /// A session's `limit` slowest outcomes, slowest first.
    pub async fn slowest_tests(
        &self,
        session: SessionRef,
        limit: usize,
    ) -> Result<(Session, Vec<Outcome>)> {
        self.backend().slowest(session, limit).await
    }
}

/// A session's failures grouped by cause.
#[derive(Debug, Clone)]
pub struct Causes {
    /// The session.
    pub session: Session,
    /// How many failures were grouped.
    pub failures: u64,
    /// Their clusters, the largest first.
    pub clusters: Vec<Cluster>,
}

/// A cluster with the failure it is shown by (its first) and its fingerprint.
#[derive(Debug, Clone)]
pub struct Described {
    /// The cluster.
    pub cluster: Cluster,
    /// Its cause, in parts.
    pub fingerprint: Fingerprint,
    /// Its first failure, whole.
    pub representative: Outcome,
}

/// The causes of head's failures that base did not fail of, and those of
/// base that head no longer fails of.
#[derive(Debug, Clone, Default)]
pub struct ChangedCauses {
    /// New in head, the largest first, at most the limit asked for.
    pub new: Vec<Described>,
    /// How many causes are new.
    pub new_total: usize,
    /// Fixed since base, the largest first, at most the limit asked for.
    pub fixed: Vec<Described>,
    /// How many causes are fixed.
    pub fixed_total: usize,
}

/// Outcomes read by seq in one read, at most.
const OUTCOMES_PER_READ: usize = 500;

impl Store {
    /// A session's failures and errors grouped by cause, the largest cluster
    /// first; with `nodeid_contains`, only the failures of tests whose
    /// nodeid contains it. Reads each failure's stored key, not its text.
    pub async fn session_causes(
        &self,
        session: SessionRef,
        nodeid_contains: Option<&str>,
    ) -> Result<Causes> {
        let (s, mut keyed) = self.backend().failure_keys(session).await?;
        if let Some(text) = nodeid_contains.filter(|t| !t.is_empty()) {
            keyed.retain(|f| f.nodeid.contains(text));
        }
        // A failure stored without its key (there should be none once a
        // database is migrated) is fingerprinted from its text now.
        let missing: Vec<u64> = keyed
            .iter()
            .filter(|f| f.key.is_none())
            .map(|f| f.seq)
            .collect();
        if !missing.is_empty() {
            let outcomes = self.outcomes_at(s.id, missing).await?;
            let keys: HashMap<u64, String> = tokio::task::spawn_blocking(move || {
                outcomes
                    .iter()
                    .filter_map(|o| StoredCause::of(o).map(|c| (o.seq, c.key)))
                    .collect()
            })
            .await
            .map_err(|e| Error::Internal(format!("reading failures' causes failed: {e}")))?;
            for f in keyed.iter_mut().filter(|f| f.key.is_none()) {
                f.key = keys.get(&f.seq).cloned();
            }
        }
        Ok(Causes {
            failures: keyed.len() as u64,
            clusters: fingerprint::clusters(&keyed),
            session: s,
        })
    }

    /// These outcomes of a session, whole, in seq order.
    pub async fn outcomes_at(&self, session: Uuid, seqs: Vec<u64>) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(OUTCOMES_PER_READ) {
            out.extend(self.backend().outcomes_at(session, chunk.to_vec()).await?);
        }
        out.sort_by_key(|o| o.seq);
        Ok(out)
    }

    /// Each cluster with its first failure and fingerprint, in one read.
    pub async fn describe(&self, session: Uuid, clusters: &[Cluster]) -> Result<Vec<Described>> {
        let firsts: HashMap<u64, Outcome> = self
            .outcomes_at(session, clusters.iter().map(Cluster::first).collect())
            .await?
            .into_iter()
            .map(|o| (o.seq, o))
            .collect();
        let clusters = clusters.to_vec();
        // Reading a traceback is CPU work on text a peer chose: on a
        // blocking thread, never on the runtime that answers other clients.
        tokio::task::spawn_blocking(move || {
            clusters
                .into_iter()
                .filter_map(|c| {
                    let representative = firsts.get(&c.first())?.clone();
                    Some(Described {
                        fingerprint: Fingerprint::of(&representative),
                        representative,
                        cluster: c,
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("reading failures' causes failed: {e}")))
    }

    /// The causes new in a comparison's head and fixed since its base, at
    /// most `limit` of each described.
    pub async fn changed_causes(&self, c: &Comparison, limit: usize) -> Result<ChangedCauses> {
        let (base, head) = tokio::try_join!(
            self.session_causes(SessionRef::Id(c.base.id), None),
            self.session_causes(SessionRef::Id(c.head.id), None)
        )?;
        let (new, fixed) = fingerprint::changed_causes(&base.clusters, &head.clusters);
        let (new_total, fixed_total) = (new.len(), fixed.len());
        Ok(ChangedCauses {
            new: self
                .describe(c.head.id, &new[..new.len().min(limit)])
                .await?,
            new_total,
            fixed: self
                .describe(c.base.id, &fixed[..fixed.len().min(limit)])
                .await?,
            fixed_total,
        })
    }
}

/// A test that ran much slower than it usually does.
#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    /// The test.
    pub nodeid: String,
    /// The subtest ("" for the test itself).
    pub subtest: String,
    /// Seconds in the session looked at.
    pub duration: f64,
    /// The median of its passing durations in the earlier sessions.
    pub median: f64,
    /// How many earlier passing runs the median is of.
    pub runs: usize,
}

/// What `duration_regressions` found.
#[derive(Debug, Clone)]
pub struct Regressions {
    /// The session looked at.
    pub session: Session,
    /// The earlier sessions its tests were measured against, newest first.
    pub baseline: Vec<Session>,
    /// Slower tests, the largest excess over the median first.
    pub slower: Vec<Regression>,
}

/// How a regression is told from noise.
#[derive(Debug, Clone, Copy)]
pub struct RegressionRule {
    /// Earlier sessions of the same project (and branch, when known) to look at.
    pub window: usize,
    /// Slower means more than `ratio` times the median...
    pub ratio: f64,
    /// ...and more than `floor` seconds over it, so millisecond tests do not flap.
    pub floor: f64,
    /// Earlier passing runs a test needs before it can be judged.
    pub min_runs: usize,
}

impl Default for RegressionRule {
    /// The last 10 sessions; 3 times the median and 0.25 s over it; 3 runs.
    fn default() -> Self {
        RegressionRule {
            window: 10,
            ratio: 3.0,
            floor: 0.25,
            min_runs: 3,
        }
    }
}

/// The median of `values` (not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The tests of `head` that passed and took longer than the rule allows
/// compared with the median of their passing durations in `earlier`.
pub fn regressions_of(
    head: &[(TestKey, Final)],
    earlier: &[Vec<(TestKey, Final)>],
    rule: RegressionRule,
) -> Vec<(TestKey, f64, f64, usize)> {
    let mut past: HashMap<TestKey, Vec<f64>> = HashMap::new();
    for finals in earlier {
        for (key, f) in finals {
            if f.outcome == TestOutcome::Passed {
                past.entry(*key).or_default().push(f.duration);
            }
        }
    }
    let mut out = Vec::new();
    for (key, f) in head {
        if f.outcome != TestOutcome::Passed {
            continue;
        }
        let Some(durations) = past.get_mut(key) else {
            continue;
        };
        if durations.len() < rule.min_runs.max(1) {
            continue;
        }
        let runs = durations.len();
        let m = median(durations);
        if f.duration > m * rule.ratio && f.duration - m > rule.floor {
            out.push((*key, f.duration, m, runs));
        }
    }
    out
}

impl Store {
    /// Tests of `session` that ran much slower than the median of their
    /// passing runs in the earlier sessions of its project (on its branch,
    /// when it has one), as `rule` says.
    pub async fn duration_regressions(
        &self,
        session: SessionRef,
        rule: RegressionRule,
    ) -> Result<Regressions> {
        let head = self
            .backend()
            .session_finals(session)
            .await
            .map_err(|e| Error::named(e, "session"))?;
        let h = &head.session;
        let filter = crate::store::SessionFilter {
            statuses: Vec::new(),
            project: Some(Project::named(h.environment.project.clone())),
        };
        // Earlier closed sessions of the project, on the same branch when known.
        let mut baseline = Vec::new();
        let mut cursor = None;
        'pages: loop {
            let page = self.list_sessions(filter.clone(), 200, cursor).await?;
            for s in page.items {
                if baseline.len() == rule.window {
                    break 'pages;
                }
                let same_branch = h.environment.git_branch.is_empty()
                    || s.environment.git_branch == h.environment.git_branch;
                let earlier = (s.started_at, s.id) < (h.started_at, h.id);
                if earlier && same_branch && s.status.is_closed() && s.id != h.id {
                    baseline.push(s);
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        // The earlier sessions' finals are read side by side, on as many
        // read connections as the backend gives.
        let earlier: Vec<_> = futures_util::future::try_join_all(
            baseline
                .iter()
                .map(|s| self.backend().session_finals(SessionRef::Id(s.id))),
        )
        .await?
        .into_iter()
        .map(|f| f.finals)
        .collect();
        let found = regressions_of(&head.finals, &earlier, rule);
        let names = self
            .backend()
            .test_names(found.iter().map(|(k, ..)| *k).collect())
            .await?;
        let mut slower: Vec<Regression> = found
            .into_iter()
            .map(|(key, duration, median, runs)| {
                let (nodeid, subtest) = names.get(&key).cloned().unwrap_or_default();
                Regression {
                    nodeid,
                    subtest,
                    duration,
                    median,
                    runs,
                }
            })
            .collect();
        slower.sort_by(|a, b| {
            (b.duration - b.median)
                .total_cmp(&(a.duration - a.median))
                .then_with(|| a.nodeid.cmp(&b.nodeid))
        });
        Ok(Regressions {
            session: head.session,
            baseline,
            slower,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_five_times_slower_is_a_regression_and_millisecond_noise_is_not() {
        let passed = |d: f64| Final {
            outcome: TestOutcome::Passed,
            duration: d,
        };
        let earlier: Vec<Vec<(TestKey, Final)>> = (0..5)
            .map(|i| {
                vec![
                    (1, passed(0.2 + 0.01 * f64::from(i))),
                    (2, passed(0.001)),
                    (3, passed(0.3)),
                    (4, passed(0.2)),
                ]
            })
            .collect();
        let head = vec![
            (1, passed(1.1)),   // 5x its median of 0.22, 0.88 s over: slower
            (2, passed(0.006)), // 6x, but 5 ms over: noise
            (
                3,
                Final {
                    outcome: TestOutcome::Failed,
                    duration: 9.0,
                },
            ), // not a passing run
            (4, passed(0.25)),  // barely slower
            (5, passed(3.0)),   // new: nothing to compare with
        ];
        let rule = RegressionRule {
            window: 10,
            ratio: 3.0,
            floor: 0.25,
            min_runs: 3,
        };
        let found = regressions_of(&head, &earlier, rule);
        assert_eq!(found.len(), 1);
        let (key, duration, median, runs) = found[0];
        assert_eq!((key, duration, runs), (1, 1.1, 5));
        assert!((median - 0.22).abs() < 1e-9);
        // Too few earlier runs: not judged.
        let few = RegressionRule {
            min_runs: 6,
            ..rule
        };
        assert!(regressions_of(&head, &earlier, few).is_empty());
    }
    use crate::model::{Environment, Timestamp};
    use crate::store::StoreConfig;
    use uuid::Uuid;

    /// Sessions oldest first; each `(start, commit, outcomes)` holds the
    /// tracked test's outcomes in seq order among other tests.
    async fn store_with_history(
        dir: &std::path::Path,
        sessions: &[(i64, &str, &[TestOutcome])],
    ) -> anyhow::Result<(Store, Vec<Uuid>)> {
        let store = Store::open(StoreConfig::new(dir.join("h.db"))).await?;
        let mut ids = Vec::new();
        for (start, commit, outcomes) in sessions {
            let id = Uuid::new_v4();
            let env = Environment {
                git_commit: commit.to_string(),
                code_state: commit.to_string(),
                ..Environment::default()
            };
            store
                .start_session(id, Source::Import, env, Some(Timestamp(*start)))
                .await?;
            let mut batch = vec![Outcome::new(1, "t.py::other", TestOutcome::Passed)];
            for (i, o) in outcomes.iter().enumerate() {
                let mut tracked = Outcome::new(i as u64 + 2, "t.py::tracked", *o);
                tracked.attempt = i as u32 + 1;
                batch.push(tracked);
            }
            let n = batch.len() as u64;
            store.append_outcomes(id, batch).await?;
            // Half of them closed: a closed session is read by test through
            // its index, a running one from its rows; history spans both.
            if ids.len() % 2 == 0 {
                store
                    .finish_session(id, crate::model::Summary::default(), n, None)
                    .await?;
            }
            ids.push(id);
        }
        Ok((store, ids))
    }

    #[tokio::test]
    async fn history_and_stability_read_sessions_newest_first_and_reruns_in_order()
    -> anyhow::Result<()> {
        use TestOutcome::{Failed, Passed, Skipped};
        let dir = tempfile::tempdir()?;
        // The last two start at the same moment: the later stored one is newer.
        let (store, ids) = store_with_history(
            dir.path(),
            &[
                (1_000, "c1", &[Passed]),
                (2_000, "c2", &[Skipped]),
                (3_000, "c3", &[Failed, Passed]),
                (3_000, "c4", &[Failed]),
            ],
        )
        .await?;

        let any = Project::named("");
        let page = store
            .test_history("t.py::tracked".into(), &any, 3, None)
            .await?;
        let seen: Vec<(Uuid, TestOutcome)> = page
            .items
            .iter()
            .map(|e| (e.session.id, e.outcome.outcome))
            .collect();
        assert_eq!(seen, [(ids[3], Failed), (ids[2], Failed), (ids[2], Passed)]);
        assert_eq!(page.items[0].session.environment.git_commit, "c4");
        let rest = store
            .test_history("t.py::tracked".into(), &any, 3, page.next)
            .await?;
        let seen: Vec<Uuid> = rest.items.iter().map(|e| e.session.id).collect();
        assert_eq!(seen, [ids[1], ids[0]]);
        assert!(rest.next.is_none());

        // Oldest to newest: P (c1), F then P (c3, a rerun), F (c4); the skip is not a run.
        let all = store
            .test_stability("t.py::tracked".into(), &any, 50)
            .await?;
        assert_eq!((all.runs, all.passed, all.failed), (4, 2, 2));
        assert_eq!((all.flips, all.mixed_sessions), (3, 1));
        assert_eq!(all.last_failed, Some(true));
        // The window keeps the newest runs: P (c3, the rerun), F (c4).
        let newest = store
            .test_stability("t.py::tracked".into(), &any, 2)
            .await?;
        assert_eq!((newest.runs, newest.passed, newest.failed), (2, 1, 1));
        assert_eq!((newest.flips, newest.mixed_sessions), (1, 0));
        Ok(())
    }

    #[tokio::test]
    async fn an_incomplete_session_reads_the_same_before_and_after_its_missing_outcomes_arrive()
    -> anyhow::Result<()> {
        use TestOutcome::{Failed, Passed};
        let dir = tempfile::tempdir()?;
        let store = Store::open(StoreConfig::new(dir.path().join("i.db"))).await?;
        let base = Uuid::new_v4();
        let head = Uuid::new_v4();
        for (i, id) in [base, head].into_iter().enumerate() {
            store
                .start_session(
                    id,
                    Source::Import,
                    Environment::default(),
                    Some(Timestamp(i as i64)),
                )
                .await?;
        }
        let outcome = |seq, name: &str, kind| Outcome::new(seq, format!("t.py::{name}"), kind);
        store
            .append_outcomes(base, vec![outcome(1, "a", Passed), outcome(2, "b", Passed)])
            .await?;
        store
            .finish_session(base, crate::model::Summary::default(), 2, None)
            .await?;
        // The head's finish says three outcomes; one is still missing.
        store
            .append_outcomes(head, vec![outcome(1, "a", Failed), outcome(2, "b", Passed)])
            .await?;
        let s = store
            .finish_session(head, crate::model::Summary::default(), 3, None)
            .await?;
        assert_eq!(s.status, crate::model::SessionStatus::Incomplete);
        let compare =
            || store.compare_sessions(SessionRef::Id(base), SessionRef::Id(head), 1.5, 0.1);
        let before = compare().await?;
        assert_eq!(before.new_failures.len(), 1);
        assert!(before.added.is_empty());
        let any = Project::named("");
        let history = store.test_history("t.py::a".into(), &any, 10, None).await?;
        assert_eq!(history.items.len(), 2);

        store
            .append_outcomes(head, vec![outcome(3, "c", Failed)])
            .await?;
        let after = compare().await?;
        assert_eq!(
            store.get_session(SessionRef::Id(head)).await?.status,
            crate::model::SessionStatus::Finished
        );
        let names: Vec<&str> = after
            .new_failures
            .iter()
            .map(|t| t.nodeid.as_str())
            .collect();
        assert_eq!(names, ["t.py::a", "t.py::c"]);
        assert_eq!(after.added, ["t.py::c"]);
        let history = store.test_history("t.py::c".into(), &any, 10, None).await?;
        assert_eq!(history.items.len(), 1);
        assert_eq!(
            store
                .test_stability("t.py::c".into(), &any, 10)
                .await?
                .failed,
            1
        );
        Ok(())
    }

    /// Runs oldest first, one session each, each on code `{code}{i}` (so
    /// every run on its own code), or on unknown code.
    fn runs(pattern: &str, code: Option<&str>) -> Vec<Run> {
        pattern
            .chars()
            .enumerate()
            .map(|(i, ch)| Run {
                session: i as i64,
                id: Uuid::from_u128(i as u128 + 1),
                code: code.map(|c| Arc::from(format!("{c}{i}"))),
                failed: ch == 'F',
            })
            .collect()
    }

    #[test]
    fn a_test_that_always_passes_is_passing() {
        let s = stability_of(&runs("PPPP", Some("c")));
        assert_eq!(flakiness_verdict(&s), Verdict::Passing);
        assert_eq!(s.flips, 0);
    }

    #[test]
    fn one_change_to_failing_is_a_regression_not_flakiness() {
        let s = stability_of(&runs("PPPFF", Some("c")));
        assert_eq!(s.flips, 1);
        assert_eq!(flakiness_verdict(&s), Verdict::Regressed);
        assert_eq!(s.changes.len(), 1);
        assert_eq!(s.changes[0].verdict, Verdict::Regressed);
        assert_eq!(s.changes[0].session, Uuid::from_u128(4));
        let s = stability_of(&runs("FFP", Some("c")));
        assert_eq!(flakiness_verdict(&s), Verdict::Fixed);
    }

    #[test]
    fn passing_and_failing_on_one_code_state_is_flaky_and_names_it() {
        let mut r = runs("PFP", None);
        for x in &mut r {
            x.code = Some(Arc::from("abc+0123"));
        }
        let s = stability_of(&r);
        assert_eq!(s.mixed_code_states, 1);
        assert_eq!(flakiness_verdict(&s), Verdict::Flaky);
        let e = s.evidence.expect("evidence");
        assert_eq!(e.code_state.as_deref(), Some("abc+0123"));
        assert_eq!(e.passed_in, [Uuid::from_u128(3), Uuid::from_u128(1)]);
        assert_eq!(e.failed_in, [Uuid::from_u128(2)]);
        assert!(s.changes.is_empty(), "flips on one code are not changes");
    }

    #[test]
    fn a_rerun_that_passes_in_the_same_session_is_flaky() {
        let mut r = runs("FP", None);
        r[1].session = r[0].session;
        r[1].id = r[0].id;
        let s = stability_of(&r);
        assert_eq!(s.mixed_sessions, 1);
        assert_eq!(flakiness_verdict(&s), Verdict::Flaky);
        assert_eq!(s.evidence.expect("evidence").code_state, None);
    }

    #[test]
    fn flipping_often_on_changing_code_is_regressions_and_fixes_not_flakiness() {
        // The edit loop: break it, fix it, break it again, each uncommitted.
        let s = stability_of(&runs("PFPF", Some("c")));
        assert_eq!(s.flips, 3);
        assert_eq!(flakiness_verdict(&s), Verdict::Regressed);
        let kinds: Vec<Verdict> = s.changes.iter().map(|c| c.verdict).collect();
        assert_eq!(
            kinds,
            [Verdict::Regressed, Verdict::Fixed, Verdict::Regressed]
        );
    }

    #[test]
    fn unknown_code_is_the_same_as_no_other_runs() {
        // Runs whose code is unknown (a dirty tree from an older plugin)
        // never make a test flaky across sessions.
        let s = stability_of(&runs("PFPF", None));
        assert_eq!(s.mixed_code_states, 0);
        assert_ne!(flakiness_verdict(&s), Verdict::Flaky);
    }

    #[test]
    fn a_teardown_error_after_a_pass_is_one_failed_attempt_not_a_rerun() {
        use TestOutcome::{Error, Failed, Passed, Skipped};
        assert_eq!(attempts_of([Passed, Error]), [true]);
        // pytest-rerunfailures: both attempts passed their call and failed
        // their teardown; nothing passed.
        assert_eq!(attempts_of([Passed, Error, Passed, Error]), [true, true]);
        // A failure, its teardown error, then a rerun that passed: flaky.
        assert_eq!(attempts_of([Failed, Error, Passed]), [true, false]);
        // A setup error is an attempt of its own.
        assert_eq!(attempts_of([Error, Passed]), [true, false]);
        assert_eq!(attempts_of([Skipped, Error]), [true]);
    }

    #[test]
    fn no_runs_is_unknown() {
        assert_eq!(flakiness_verdict(&Stability::default()), Verdict::Unknown);
    }

    fn fin(outcome: TestOutcome, duration: f64) -> Final {
        Final { outcome, duration }
    }

    #[test]
    fn comparison_sorts_tests_into_new_fixed_still_added_removed_and_slower() {
        let mut base: Vec<(String, Final)> = [
            ("a", fin(TestOutcome::Passed, 1.0)),
            ("b", fin(TestOutcome::Failed, 1.0)),
            ("c", fin(TestOutcome::Failed, 1.0)),
            ("gone", fin(TestOutcome::Passed, 1.0)),
            ("slow", fin(TestOutcome::Passed, 1.0)),
            ("noise", fin(TestOutcome::Passed, 0.001)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut head: Vec<(String, Final)> = [
            ("a", fin(TestOutcome::Failed, 1.0)),
            ("b", fin(TestOutcome::Passed, 1.0)),
            ("c", fin(TestOutcome::Error, 1.0)),
            ("new", fin(TestOutcome::Failed, 1.0)),
            ("slow", fin(TestOutcome::Passed, 3.0)),
            ("noise", fin(TestOutcome::Passed, 0.01)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        base.sort_by(|a, b| a.0.cmp(&b.0));
        head.sort_by(|a, b| a.0.cmp(&b.0));
        let lists = compare_finals(&base, &head, 1.5, 0.1);
        let names = |v: &[Compared<String>]| {
            let mut n: Vec<String> = v.iter().map(|t| t.key.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&lists.new_failures), ["a", "new"]);
        assert_eq!(names(&lists.fixed), ["b"]);
        assert_eq!(names(&lists.still_failing), ["c"]);
        assert_eq!(lists.added, ["new"]);
        assert_eq!(lists.removed, ["gone"]);
        assert_eq!(lists.slower.len(), 1);
        assert_eq!(lists.slower[0].0, "slow");
    }
}
