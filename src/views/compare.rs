//! Two sessions compared (`compare_sessions`, the compare page): what
//! newly fails, what was fixed, which causes are new, what got slower.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use super::causes::CauseView;
use super::durations::RegressionView;
use super::scope::Scope;
use super::session::SessionView;
use super::{FLAKY_LOOKUP, FLAKY_WINDOW, budget_text, display_name, excerpt, json_len, non_empty};
use crate::error::Result;
use crate::model::SessionRef;
use crate::store::{ComparedTest, Comparison, RegressionRule, Store};

/// A test whose outcome changed between two sessions.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComparedTestView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// Final outcome in the base session, if it ran.
    pub base: Option<String>,
    /// Final outcome in the head session, if it ran.
    pub head: Option<String>,
    /// The relevant failure message.
    pub message: String,
    /// The test is known to be flaky in the project (it passed and failed
    /// on the same code lately): a new failure of it may not be breakage.
    pub known_flaky: bool,
}

impl From<&ComparedTest> for ComparedTestView {
    fn from(t: &ComparedTest) -> Self {
        ComparedTestView {
            nodeid: t.nodeid.clone(),
            subtest: non_empty(&t.subtest),
            base: t.base.map(|o| o.to_string()),
            head: t.head.map(|o| o.to_string()),
            message: excerpt(&t.message, 300),
            known_flaky: false,
        }
    }
}

/// A test that got slower.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowerView {
    /// pytest node id.
    pub nodeid: String,
    /// The subtest, when the entry is one.
    pub subtest: Option<String>,
    /// Seconds in base.
    pub base: f64,
    /// Seconds in head.
    pub head: f64,
}

/// How many tests fall in each list of a comparison (before any cut).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComparisonCounts {
    /// New failures.
    pub new_failures: u64,
    /// Fixed.
    pub fixed: u64,
    /// Still failing.
    pub still_failing: u64,
    /// Added.
    pub added: u64,
    /// Removed.
    pub removed: u64,
    /// Slower.
    pub slower: u64,
    /// Slower in head than their median over earlier sessions.
    pub duration_regressions: u64,
}

/// Answer of `compare_sessions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ComparisonView {
    /// The older session.
    pub base: SessionView,
    /// The newer session.
    pub head: SessionView,
    /// Totals of each list.
    pub counts: ComparisonCounts,
    /// Causes of head's failures that base did not fail of (see `get_failure_clusters`).
    pub new_causes: Vec<CauseView>,
    /// Causes of base's failures that head no longer fails of.
    pub fixed_causes: Vec<CauseView>,
    /// Failing in head, not failing (or absent) in base.
    pub new_failures: Vec<ComparedTestView>,
    /// Failing in base, passing in head.
    pub fixed: Vec<ComparedTestView>,
    /// Failing in both.
    pub still_failing: Vec<ComparedTestView>,
    /// Run in head only.
    pub added: Vec<String>,
    /// Run in base only.
    pub removed: Vec<String>,
    /// Passing in both and slower in head, largest growth first.
    pub slower: Vec<SlowerView>,
    /// Tests that ran in head much slower than their median over the
    /// project's earlier sessions (`duration_regressions` with its
    /// defaults), the largest excess first.
    pub duration_regressions: Vec<RegressionView>,
    /// Whether lists were cut (see `counts` for their totals).
    pub truncated: bool,
    /// How to see what was cut.
    pub note: Option<String>,
}

impl ComparisonView {
    /// Converts a comparison, keeping at most `limit` entries per list.
    pub fn new(c: &Comparison, limit: usize) -> Self {
        let counts = ComparisonCounts {
            new_failures: c.new_failures.len() as u64,
            fixed: c.fixed.len() as u64,
            still_failing: c.still_failing.len() as u64,
            added: c.added.len() as u64,
            removed: c.removed.len() as u64,
            slower: c.slower.len() as u64,
            duration_regressions: 0,
        };
        let tests = |v: &[ComparedTest]| v.iter().take(limit).map(Into::into).collect();
        let truncated = [
            c.new_failures.len(),
            c.fixed.len(),
            c.still_failing.len(),
            c.added.len(),
            c.removed.len(),
            c.slower.len(),
        ]
        .iter()
        .any(|n| *n > limit);
        ComparisonView {
            base: (&c.base).into(),
            head: (&c.head).into(),
            counts,
            new_failures: tests(&c.new_failures),
            fixed: tests(&c.fixed),
            still_failing: tests(&c.still_failing),
            added: c.added.iter().take(limit).cloned().collect(),
            removed: c.removed.iter().take(limit).cloned().collect(),
            slower: c
                .slower
                .iter()
                .take(limit)
                .map(|d| SlowerView {
                    nodeid: d.nodeid.clone(),
                    subtest: non_empty(&d.subtest),
                    base: d.base,
                    head: d.head,
                })
                .collect(),
            new_causes: Vec::new(),
            fixed_causes: Vec::new(),
            duration_regressions: Vec::new(),
            truncated,
            note: None,
        }
    }

    /// Adds head's duration regressions.
    pub fn with_regressions(mut self, r: &crate::store::Regressions, limit: usize) -> Self {
        self.counts.duration_regressions = r.slower.len() as u64;
        self.truncated |= r.slower.len() > limit;
        self.duration_regressions = r.slower.iter().take(limit).map(Into::into).collect();
        self
    }

    /// Adds the causes that are new in head and those fixed since base.
    pub fn with_causes(mut self, changed: &crate::store::ChangedCauses) -> Self {
        let view = |d: &crate::store::Described| CauseView {
            fingerprint: d.cluster.key.clone(),
            cause: d.fingerprint.describe(),
            failures: d.cluster.failures(),
            tests_total: d.cluster.tests.len() as u64,
            tests: d.cluster.tests.iter().take(5).cloned().collect(),
            known_flaky: false,
        };
        self.truncated |=
            changed.new_total > changed.new.len() || changed.fixed_total > changed.fixed.len();
        self.new_causes = changed.new.iter().map(view).collect();
        self.fixed_causes = changed.fixed.iter().map(view).collect();
        self
    }

    /// Text rendering.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut out = format!(
            "base {}\nhead {}\n{} new failures, {} fixed, {} still failing, {} added, {} removed, {} slower",
            self.base.line(),
            self.head.line(),
            c.new_failures,
            c.fixed,
            c.still_failing,
            c.added,
            c.removed,
            c.slower
        );
        for (label, list) in [
            ("NEW CAUSE", &self.new_causes),
            ("FIXED CAUSE", &self.fixed_causes),
        ] {
            for c in list {
                let _ = write!(
                    out,
                    "\n{label} ({}{}): {}",
                    super::count(c.tests_total, "test", "tests"),
                    if c.known_flaky {
                        ", known flaky: likely not new breakage"
                    } else {
                        ""
                    },
                    c.cause
                );
            }
        }
        for (label, list) in [
            ("NEW", &self.new_failures),
            ("FIXED", &self.fixed),
            ("STILL", &self.still_failing),
        ] {
            for t in list {
                let _ = write!(
                    out,
                    "\n{label}{} {}: {}",
                    if t.known_flaky { " (known flaky)" } else { "" },
                    display_name(&t.nodeid, t.subtest.as_deref().unwrap_or_default()),
                    t.message
                );
            }
        }
        for d in &self.slower {
            let _ = write!(
                out,
                "\nSLOWER {}: {:.3}s -> {:.3}s",
                d.nodeid, d.base, d.head
            );
        }
        for r in &self.duration_regressions {
            let _ = write!(
                out,
                "\nREGRESSED {}: {:.3}s, {:.1}x its median {:.3}s over {} runs",
                display_name(&r.nodeid, r.subtest.as_deref().unwrap_or_default()),
                r.duration,
                r.ratio,
                r.median,
                r.runs
            );
        }
        if let Some(n) = &self.note {
            let _ = write!(out, "\n{n}");
        }
        budget_text(out)
    }
}

/// What `compare_sessions` is asked.
#[derive(Debug, Clone, Default)]
pub struct CompareQuery {
    /// The newer session (default `latest`).
    pub head: Option<String>,
    /// The older session; by default the one of the same project (and
    /// branch, when head has one) started just before head.
    pub base: Option<String>,
    /// A passing test counts as slower when it takes at least this many
    /// times as long (default 1.5)...
    pub min_ratio: Option<f64>,
    /// ...and at least this many seconds longer (default 0.25, so that
    /// millisecond tests that once took a tenth of a second do not count).
    pub min_seconds: Option<f64>,
    /// Most entries per list (default 50, at most 500).
    pub limit: Option<u32>,
    /// Everything asked for, not cut to the answer budget (a page, which
    /// a person scrolls; MCP answers and the CLI are cut).
    pub whole: bool,
}

/// Seconds a passing test must grow by to count as slower, by default.
pub const SLOWER_FLOOR_SECONDS: f64 = 0.25;

/// `compare_sessions`' answer, cut to the size budget unless asked `whole`.
pub async fn compare(store: &Store, scope: &Scope, q: &CompareQuery) -> Result<ComparisonView> {
    let head = scope.session(q.head.as_deref(), "head")?;
    let base = match q.base.as_deref().filter(|b| !b.trim().is_empty()) {
        Some(b) => SessionRef::parse(b, "base")?,
        None => store
            .default_base(head.clone())
            .await
            .map_err(|e| scope.explain(e))?,
    };
    let min_ratio = q.min_ratio.unwrap_or(1.5);
    let min_seconds = q.min_seconds.unwrap_or(SLOWER_FLOOR_SECONDS);
    for (field, v) in [("min_ratio", min_ratio), ("min_seconds", min_seconds)] {
        crate::model::validate_duration(v, field)?;
    }
    let c: Comparison = store
        .compare_sessions(base, head, min_ratio, min_seconds)
        .await
        .map_err(|e| scope.explain(e))?;
    let limit = super::limit(q.limit, 50, 500);
    let project = scope.project_of(&c.head);
    // Read beside each other.
    let (changed, regressions) = tokio::try_join!(
        store.changed_causes(&c, limit),
        store.duration_regressions(SessionRef::Id(c.head.id), RegressionRule::default()),
    )?;
    let mut view = ComparisonView::new(&c, limit)
        .with_causes(&changed)
        .with_regressions(&regressions, limit);
    if !q.whole {
        cut_to_budget(&mut view);
    }
    // Every test a failure or a cause on this answer names, looked up once
    // (after the cut: what is not shown is not labelled).
    let mut tests: Vec<String> = [&view.new_failures, &view.fixed, &view.still_failing]
        .into_iter()
        .flatten()
        .map(|t| t.nodeid.clone())
        .collect();
    for d in changed.new.iter().chain(&changed.fixed) {
        tests.extend(d.cluster.tests.iter().take(FLAKY_LOOKUP).cloned());
    }
    let flaky = store.known_flaky(FLAKY_WINDOW, &project, tests).await?;
    for list in [
        &mut view.new_failures,
        &mut view.fixed,
        &mut view.still_failing,
    ] {
        for t in list.iter_mut() {
            t.known_flaky = flaky.contains_key(&t.nodeid);
        }
    }
    // A cause whose every test is known flaky is labelled, not announced as
    // new breakage. Its tests are counted from the whole cause, not the few named.
    for (views, causes) in [
        (&mut view.new_causes, &changed.new),
        (&mut view.fixed_causes, &changed.fixed),
    ] {
        for (v, d) in views.iter_mut().zip(causes.iter()) {
            v.known_flaky = !d.cluster.tests.is_empty()
                && d.cluster
                    .tests
                    .iter()
                    .take(FLAKY_LOOKUP)
                    .all(|t| flaky.contains_key(t));
        }
    }
    Ok(view)
}

/// Cuts the longest lists first until the answer fits the budget.
fn cut_to_budget(view: &mut ComparisonView) {
    while json_len(view) > super::BUDGET_BYTES {
        let lens = [
            view.added.len(),
            view.removed.len(),
            view.slower.len(),
            view.still_failing.len(),
            view.fixed.len(),
            view.new_failures.len(),
            view.duration_regressions.len(),
        ];
        let Some((i, n)) = lens.iter().copied().enumerate().max_by_key(|(_, n)| *n) else {
            break;
        };
        if n == 0 {
            break;
        }
        let keep = n / 2;
        match i {
            0 => view.added.truncate(keep),
            1 => view.removed.truncate(keep),
            2 => view.slower.truncate(keep),
            3 => view.still_failing.truncate(keep),
            4 => view.fixed.truncate(keep),
            5 => view.new_failures.truncate(keep),
            _ => view.duration_regressions.truncate(keep),
        }
        view.truncated = true;
    }
    if view.truncated {
        view.note = Some(
            "lists were cut (counts has their totals); use get_failures on head for \
             every failure, or a smaller limit"
                .into(),
        );
    }
}
