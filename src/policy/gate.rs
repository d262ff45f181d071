//! The gate: decides whether a tool call may run and counts it, both under
//! one lock, so that N concurrent calls against a limit of M let exactly
//! min(N, M) through.
//!
//! A read that is not a tool call (a resource, a prompt) is gated as the
//! tools whose data it shows ([`Gate::check_in_all`]): it is refused when any
//! of them is, and counts once against every counter of all of them, so a
//! policy that denies or limits `get_failures` cannot be walked around
//! through `resources/read` or `prompts/get`.
//!
//! Windows are fixed and start at the first call they count: a `minute`
//! limit opens a window at the first counted call, lets `max` calls through
//! until one minute later, and the next call after that opens a new window.
//! So the reset time is known exactly and reported to a refused caller; like
//! every fixed window, up to 2 × `max` calls can pass around the moment one
//! window ends and the next begins. Counters live in memory, a process's own,
//! unless the store shares them ([`Gate::check_in`]): on PostgreSQL every
//! replica counts in the database, so a limit holds across all of them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::file::{Limit, Policy, Scope, Window};
use crate::model::Timestamp;
use crate::store::counters::Update;

/// Where the gate reads the time; tests inject their own.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// What the gate decided about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The call runs; it has been counted against every limit it falls under.
    Allowed,
    /// The tool is denied or hidden by the policy.
    Denied {
        /// The policy's reason.
        reason: String,
    },
    /// A limit is used up until `resets_at`.
    Limited {
        /// The limit's counter.
        counter: String,
        /// Calls allowed per window.
        max: u64,
        /// Window length.
        window: Window,
        /// Per grant or global.
        scope: Scope,
        /// When the window ends and calls are counted afresh.
        resets_at: Timestamp,
        /// Whole seconds from now until then, rounded up.
        retry_after_secs: u64,
    },
}

impl Decision {
    /// `allowed`, `denied` or `limited`: the audit column.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied { .. } => "denied",
            Decision::Limited { .. } => "limited",
        }
    }

    /// The text a refused caller is told; `None` when allowed.
    pub fn refusal(&self, tool: &str) -> Option<String> {
        self.why()
            .map(|why| format!("refused by policy: {tool} {why}; nothing was changed"))
    }

    /// The text a refused read that is gated as `tool` (a resource read, a
    /// prompt) is told: what was asked (`what`), the tool whose rule refused
    /// it, and that rule; `None` when allowed.
    pub fn refusal_as(&self, what: &str, tool: &str) -> Option<String> {
        self.why().map(|why| {
            format!("refused by policy: {what} is gated as the tool {tool}, and {tool} {why}")
        })
    }

    /// Why a call was refused, as the end of a sentence naming its tool.
    fn why(&self) -> Option<String> {
        match self {
            Decision::Allowed => None,
            Decision::Denied { reason } => Some(format!("is denied: {reason}")),
            Decision::Limited {
                counter,
                max,
                window,
                scope,
                resets_at,
                retry_after_secs,
            } => Some(format!(
                "is over its limit of {max} calls per {} \
                 (counter {counter:?}, {}); the window resets at {} (in {retry_after_secs} s)",
                window.as_str(),
                match scope {
                    Scope::Grant => "per grant",
                    Scope::Global => "for every caller",
                },
                resets_at.to_rfc3339(),
            )),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

pub use crate::store::counters::{Count, Key};

struct State {
    policy: Arc<Policy>,
    counts: HashMap<Key, Count>,
}

/// The policy in force and its counters; shared by every MCP session of a
/// server process.
pub struct Gate {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate enforcing `policy`, reading the system clock.
    pub fn new(policy: Policy) -> Self {
        Self::with_clock(policy, Arc::new(SystemClock))
    }

    /// A gate that lets everything through (no policy file).
    pub fn allow_all() -> Self {
        Self::new(Policy::allow_all())
    }

    /// A gate enforcing `policy` with an injected clock.
    pub fn with_clock(policy: Policy, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State {
                policy: Arc::new(policy),
                counts: HashMap::new(),
            }),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement; a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `policy` in force. Counters whose window length is unchanged
    /// keep their counts, so a reload does not hand out a fresh quota.
    pub fn replace(&self, policy: Policy) {
        let mut state = self.lock();
        state.policy = Arc::new(policy);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.lock().policy.clone()
    }

    /// Whether `tool` is shown in `tools/list`.
    pub fn visible(&self, tool: &str) -> bool {
        self.lock().policy.verdict(tool).is_ok()
    }

    /// Decides a call of `tool` by `grant` and, when it is allowed, counts it
    /// against every limit it falls under, atomically, in this process.
    pub fn check(&self, tool: &str, grant: &str) -> Decision {
        let now = self.clock.now().as_micros();
        let mut state = self.lock();
        let state = &mut *state;
        decide(&state.policy, &[tool], grant, now, &mut state.counts).0
    }

    /// Like [`Gate::check`], counting in the store's database when its
    /// backend shares counters between processes (PostgreSQL replicas), so
    /// a limit holds across all of them together. When the counters cannot
    /// be reached the call is refused: a limit is never silently lifted.
    pub async fn check_in(&self, store: &crate::store::Store, tool: &str, grant: &str) -> Decision {
        self.check_in_all(store, &[tool], grant).await.0
    }

    /// Decides a read that shows what all of `tools` answer (a resource,
    /// a prompt): refused when any of them is denied or over a limit, else
    /// counted once against each counter of any of them, atomically as in
    /// [`Gate::check_in`]. Returns the decision and the tool it is about
    /// (the one refused; the first when allowed). `tools` must not be empty.
    pub async fn check_in_all<'t>(
        &self,
        store: &crate::store::Store,
        tools: &[&'t str],
        grant: &str,
    ) -> (Decision, &'t str) {
        let first = tools.first().copied().unwrap_or_default();
        let policy = self.policy();
        for tool in tools {
            if let Err(reason) = policy.verdict(tool) {
                return (Decision::Denied { reason }, tool);
            }
        }
        let keys = keys_of(&policy, tools, grant);
        if keys.is_empty() {
            return (Decision::Allowed, first);
        }
        let clock = self.clock.clone();
        let tool_names: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
        let grant_name = grant.to_string();
        // The store runs the rule on the locked counters; the decision of
        // the run that committed is the one left here.
        let decided: Arc<Mutex<Option<(Decision, usize)>>> = Arc::new(Mutex::new(None));
        let slot = decided.clone();
        let update: Update = Arc::new(move |counts: &mut HashMap<Key, Count>| {
            let names: Vec<&str> = tool_names.iter().map(String::as_str).collect();
            let decision = decide(
                &policy,
                &names,
                &grant_name,
                clock.now().as_micros(),
                counts,
            );
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(decision);
        });
        let unavailable = |e: String| {
            tracing::warn!(error = %e, tool = first, "the shared policy counters are unavailable");
            Decision::Denied {
                reason: format!(
                    "the policy's shared call counters cannot be read ({e}); retry shortly"
                ),
            }
        };
        let (decision, at) = match store.count_calls(keys, update) {
            None => {
                let now = self.clock.now().as_micros();
                let mut state = self.lock();
                let state = &mut *state;
                decide(&state.policy, tools, grant, now, &mut state.counts)
            }
            Some(counted) => match counted.await {
                Ok(()) => decided
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_else(|| (unavailable("no decision was made".into()), 0)),
                Err(e) => (unavailable(e.to_string()), 0),
            },
        };
        (decision, tools.get(at).copied().unwrap_or(first))
    }
}

/// The counters a call of `tools` by `grant` falls under, each once, sorted
/// (a shared store locks them in this order).
fn keys_of(policy: &Policy, tools: &[&str], grant: &str) -> Vec<Key> {
    let mut keys: Vec<Key> = tools
        .iter()
        .flat_map(|tool| policy.limits_for(tool))
        .map(|limit| key_of(limit, grant))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn key_of(limit: &Limit, grant: &str) -> Key {
    Key {
        counter: limit.counter.clone(),
        grant: match limit.scope {
            Scope::Grant => Some(grant.to_string()),
            Scope::Global => None,
        },
    }
}

/// The gate's rule, on whatever holds the counters: refuses a call that
/// shows what `tools` answer when one of them is denied, or when a limit
/// any of them falls under is used up (reporting the latest reset), else
/// counts it against each of their counters once. Returns the decision and
/// the index in `tools` of the tool it is about (0 when allowed).
fn decide(
    policy: &Policy,
    tools: &[&str],
    grant: &str,
    now: i64,
    counts: &mut HashMap<Key, Count>,
) -> (Decision, usize) {
    for (i, tool) in tools.iter().enumerate() {
        if let Err(reason) = policy.verdict(tool) {
            return (Decision::Denied { reason }, i);
        }
    }
    // Each distinct counter is counted once per call, however many
    // limits (or tools) name it; the strictest refusal (latest reset) is
    // reported.
    let mut keys: Vec<Key> = Vec::new();
    let mut refused: Option<(usize, &Limit, Count)> = None;
    for (i, tool) in tools.iter().enumerate() {
        for limit in policy.limits_for(tool) {
            let key = key_of(limit, grant);
            let length = limit.window.micros();
            let count = counts.entry(key.clone()).or_insert(Count {
                start: now,
                length,
                calls: 0,
            });
            if count.length != length || now >= count.ends() {
                *count = Count {
                    start: now,
                    length,
                    calls: 0,
                };
            }
            if count.calls >= limit.max {
                if refused.is_none_or(|(_, _, r)| count.ends() > r.ends()) {
                    refused = Some((i, limit, *count));
                }
            } else if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    if let Some((i, limit, count)) = refused {
        let resets_at = count.ends();
        let wait = resets_at.saturating_sub(now).max(0);
        return (
            Decision::Limited {
                counter: limit.counter.clone(),
                max: limit.max,
                window: limit.window,
                scope: limit.scope,
                resets_at: Timestamp(resets_at),
                retry_after_secs: u64::try_from(wait).unwrap_or(0).div_ceil(1_000_000),
            },
            i,
        );
    }
    for key in keys {
        if let Some(count) = counts.get_mut(&key) {
            count.calls += 1;
        }
    }
    (Decision::Allowed, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::file::tests::{ISSUE_EXAMPLE, tools};
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A clock that moves only when told to.
    struct TestClock(AtomicI64);

    impl TestClock {
        fn at(micros: i64) -> Arc<Self> {
            Arc::new(Self(AtomicI64::new(micros)))
        }
        fn advance_secs(&self, secs: f64) {
            self.0
                .fetch_add((secs * 1_000_000.0) as i64, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> Timestamp {
            Timestamp(self.0.load(Ordering::SeqCst))
        }
    }

    const T0: i64 = 1_790_000_000_000_000; // some time in 2026

    fn gate(policy: &str, clock: Arc<TestClock>) -> Gate {
        Gate::with_clock(Policy::parse(policy, &tools()).expect("policy"), clock)
    }

    #[test]
    fn thirty_calls_a_minute_pass_the_thirty_first_is_refused_until_the_window_resets() {
        let clock = TestClock::at(T0);
        let g = gate(ISSUE_EXAMPLE, clock.clone());
        for i in 0..30 {
            assert_eq!(
                g.check("record_session_finish", "a"),
                Decision::Allowed,
                "{i}"
            );
            clock.advance_secs(1.5);
        }
        // 45 s after the window opened: 15 s remain.
        let refused = g.check("record_session_finish", "a");
        let Decision::Limited {
            resets_at,
            retry_after_secs,
            max,
            window,
            ..
        } = &refused
        else {
            panic!("{refused:?}");
        };
        assert_eq!((*max, *window), (30, Window::Minute));
        assert_eq!(*resets_at, Timestamp(T0 + 60_000_000));
        assert_eq!(*retry_after_secs, 15);
        let text = refused.refusal("record_session_finish").expect("text");
        assert!(text.contains("30 calls per minute"), "{text}");
        assert!(text.contains(&resets_at.to_rfc3339()), "{text}");
        // Refused calls do not count: one microsecond before the reset, still
        // refused; at the reset a new window opens with a full quota.
        clock.advance_secs(15.0 - 0.000_001);
        assert!(matches!(
            g.check("record_session_finish", "a"),
            Decision::Limited { .. }
        ));
        clock.advance_secs(0.000_001);
        for _ in 0..30 {
            assert_eq!(g.check("record_session_finish", "a"), Decision::Allowed);
        }
        assert!(matches!(
            g.check("record_session_finish", "a"),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn grants_have_separate_counters_and_a_global_counter_is_shared() {
        let clock = TestClock::at(T0);
        let g = gate(
            r#"{"version": "1", "default": "allow", "tools": {
                "record_session_start": {"limits": [{"counter": "s", "window": "hour", "max": 2, "scope": "grant"}]},
                "get_session": {"limits": [{"counter": "g", "window": "second", "max": 3, "scope": "global"}]}}}"#,
            clock.clone(),
        );
        for grant in ["alice", "bob"] {
            assert_eq!(g.check("record_session_start", grant), Decision::Allowed);
            assert_eq!(g.check("record_session_start", grant), Decision::Allowed);
            assert!(matches!(
                g.check("record_session_start", grant),
                Decision::Limited { .. }
            ));
        }
        assert_eq!(g.check("get_session", "alice"), Decision::Allowed);
        assert_eq!(g.check("get_session", "bob"), Decision::Allowed);
        assert_eq!(g.check("get_session", "carol"), Decision::Allowed);
        assert!(matches!(
            g.check("get_session", "dave"),
            Decision::Limited { .. }
        ));
        clock.advance_secs(1.0);
        assert_eq!(g.check("get_session", "dave"), Decision::Allowed);
        // An unlimited tool is never counted.
        for _ in 0..100 {
            assert_eq!(g.check("record_test_outcome", "alice"), Decision::Allowed);
        }
    }

    #[test]
    fn one_counter_named_by_several_tools_counts_them_together() {
        let clock = TestClock::at(T0);
        let g = gate(
            r#"{"version": "1", "default": "allow", "tools": {
                "record_session_start": {"limits": [{"counter": "writes", "window": "day", "max": 3}]},
                "record_test_outcome": {"limits": [{"counter": "writes", "window": "day", "max": 3}]}}}"#,
            clock.clone(),
        );
        assert_eq!(g.check("record_session_start", "a"), Decision::Allowed);
        assert_eq!(g.check("record_test_outcome", "a"), Decision::Allowed);
        assert_eq!(g.check("record_test_outcome", "a"), Decision::Allowed);
        let Decision::Limited {
            retry_after_secs, ..
        } = g.check("record_session_start", "a")
        else {
            panic!("not limited");
        };
        assert_eq!(retry_after_secs, 86_400);
        clock.advance_secs(86_400.0);
        assert_eq!(g.check("record_session_start", "a"), Decision::Allowed);
    }

    #[test]
    fn several_limits_on_one_tool_all_count_and_the_latest_reset_is_reported() {
        let clock = TestClock::at(T0);
        let g = gate(
            r#"{"version": "1", "default": "deny", "tools": {
                "record_test_outcome": {"limits": [
                    {"counter": "burst", "window": "second", "max": 2},
                    {"counter": "hourly", "window": "hour", "max": 3}]}}}"#,
            clock.clone(),
        );
        assert_eq!(g.check("record_test_outcome", "a"), Decision::Allowed);
        assert_eq!(g.check("record_test_outcome", "a"), Decision::Allowed);
        let Decision::Limited { counter, .. } = g.check("record_test_outcome", "a") else {
            panic!("burst not enforced");
        };
        assert_eq!(counter, "burst");
        clock.advance_secs(1.0);
        assert_eq!(g.check("record_test_outcome", "a"), Decision::Allowed);
        // The refused call above counted against neither limit: hourly is at 3 now.
        let Decision::Limited {
            counter,
            retry_after_secs,
            ..
        } = g.check("record_test_outcome", "a")
        else {
            panic!("hourly not enforced");
        };
        assert_eq!((counter.as_str(), retry_after_secs), ("hourly", 3599));
    }

    #[test]
    fn a_denied_tool_is_invisible_and_refused_with_its_reason() {
        let g = gate(
            r#"{"version": "1", "default": "allow", "tools": {
                "record_session_start": {"action": "deny", "reason": "read-only server"}}}"#,
            TestClock::at(T0),
        );
        assert!(!g.visible("record_session_start"));
        assert!(g.visible("get_session"));
        let d = g.check("record_session_start", "a");
        assert_eq!(d.kind(), "denied");
        assert!(
            d.refusal("record_session_start")
                .is_some_and(|t| t.contains("read-only server")),
            "{d:?}"
        );
    }

    #[test]
    fn a_read_gated_as_two_tools_is_refused_by_either_and_a_refused_read_counts_nowhere() {
        let policy = Policy::parse(
            r#"{"version": "1", "default": "allow", "tools": {
                "get_session": {"limits": [{"counter": "f", "window": "minute", "max": 1}]},
                "record_test_outcome": {"limits": [{"counter": "c", "window": "minute", "max": 2}]}}}"#,
            &tools(),
        )
        .expect("policy");
        let mut counts = HashMap::new();
        // (Two of the test policy's tools stand for the prompt's two.)
        let read = ["record_test_outcome", "get_session"];
        assert_eq!(
            decide(&policy, &read, "a", T0, &mut counts),
            (Decision::Allowed, 0)
        );
        // get_session's limit of 1 is used up: the second read is refused,
        // naming that tool, and counts against neither counter.
        let (refused, at) = decide(&policy, &read, "a", T0, &mut counts);
        assert!(matches!(refused, Decision::Limited { ref counter, .. } if counter == "f"));
        assert_eq!(read[at], "get_session");
        let text = refused
            .refusal_as("prompts/get triage_failures", read[at])
            .expect("text");
        assert!(
            text.starts_with(
                "refused by policy: prompts/get triage_failures is gated as the tool get_session"
            ),
            "{text}"
        );
        assert_eq!(
            decide(&policy, &["record_test_outcome"], "a", T0, &mut counts),
            (Decision::Allowed, 0),
            "the refused read took a call from record_test_outcome's counter"
        );

        let denying = Policy::parse(
            r#"{"version": "1", "default": "deny", "tools": {"record_test_outcome": {}}}"#,
            &tools(),
        )
        .expect("policy");
        let (denied, at) = decide(&denying, &read, "a", T0, &mut HashMap::new());
        assert_eq!((denied.kind(), read[at]), ("denied", "get_session"));
    }

    #[test]
    fn counting_is_exact_under_concurrent_calls() {
        let clock = TestClock::at(T0);
        let g = Arc::new(gate(ISSUE_EXAMPLE, clock));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| g.check("record_session_finish", "a") == Decision::Allowed)
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(allowed, 30);
    }

    #[test]
    fn a_reloaded_policy_keeps_the_counts_of_unchanged_counters() {
        let clock = TestClock::at(T0);
        let g = gate(ISSUE_EXAMPLE, clock);
        for _ in 0..30 {
            g.check("record_session_finish", "a");
        }
        g.replace(Policy::parse(ISSUE_EXAMPLE, &tools()).expect("policy"));
        assert!(matches!(
            g.check("record_session_finish", "a"),
            Decision::Limited { .. }
        ));
        let raised = ISSUE_EXAMPLE.replace("\"max\": 30", "\"max\": 31");
        g.replace(Policy::parse(&raised, &tools()).expect("policy"));
        assert_eq!(g.check("record_session_finish", "a"), Decision::Allowed);
    }
}
