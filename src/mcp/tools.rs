//! The tools: three record tools compatible with the original Node server,
//! and the read tools. Each is small: parse, call the store, convert.

use std::collections::HashMap;

use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, tool, tool_router};
use uuid::Uuid;

use super::args::{
    ClustersArgs, CompareArgs, FailuresArgs, FlakyArgs, GroupBy, HistoryArgs, ListSessionsArgs,
    Parameters, QuarantineArgs, QuarantineListArgs, RegressionArgs, ReleaseArgs, SessionArgs,
    SessionFinishArgs, SessionStartArgs, SlowestArgs, TestOutcomeArgs, page, session_id,
    session_ref,
};
use super::views::{
    self, ClusterView, ClustersView, ComparisonView, FailureBrief, FailureView, FailuresView,
    FlakyTestView, FlakyView, HistoryEntryView, HistoryView, OutcomeRecordedView,
    QuarantineListView, QuarantineStatusView, QuarantinedView, RegressionView, RegressionsView,
    ReleasedView, SessionDetailView, SessionFinishedView, SessionListView, SessionStartedView,
    SessionView, SlowestView, StabilityView, fit_budget,
};
use super::{PytestMcp, structured, tool_failure};
use crate::error::{Error, Result};
use crate::model::{Outcome, SessionRef, Source, Summary, TestOutcome, Timestamp};
use crate::store::quarantine::{self, NewQuarantine};
use crate::store::{OutcomeFilter, RegressionRule, SessionFilter, flakiness_verdict};

type ToolResult = std::result::Result<CallToolResult, ErrorData>;

/// Runs a tool body, mapping its error once.
fn answer(result: Result<CallToolResult>) -> ToolResult {
    result.or_else(tool_failure)
}

fn done<V: serde::Serialize>(view: &V, text: String) -> Result<CallToolResult> {
    structured(view, text).map_err(|e| Error::Internal(e.message.to_string()))
}

impl PytestMcp {
    /// The session a record tool writes to: the one named, or the latest
    /// running session started through MCP.
    async fn record_target(&self, given: Option<&str>) -> Result<Uuid> {
        if let Some(id) = session_id(given, "session_id")? {
            return Ok(id);
        }
        match self.store.latest_running(Source::Mcp).await? {
            Some(s) => Ok(s.id),
            None => Err(Error::precondition(
                "session_id",
                "no running session was started through MCP; call record_session_start first, or pass session_id",
            )),
        }
    }
}

#[tool_router(router = tool_router, vis = "pub(super)")]
impl PytestMcp {
    /// Start recording a test session; returns its id. Then call
    /// record_test_outcome for each test and record_session_finish at the end.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<SessionStartedView>()
    )]
    async fn record_session_start(
        &self,
        Parameters(a): Parameters<SessionStartArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            async {
                let id =
                    session_id(a.session_id.as_deref(), "session_id")?.unwrap_or_else(Uuid::new_v4);
                let grant = Self::token_grant(&context);
                let s = self
                    .store
                    .start_session_as(id, Source::Mcp, a.environment.into(), None, grant)
                    .await?;
                let view = SessionStartedView {
                    session_id: s.id.to_string(),
                    session: (&s).into(),
                };
                done(&view, format!("started session {}", s.id))
            }
            .await,
        )
    }

    /// Record one test's outcome in a session (by default the latest running
    /// session started with record_session_start); it is stored as the next
    /// outcome of that session.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<OutcomeRecordedView>()
    )]
    async fn record_test_outcome(&self, Parameters(a): Parameters<TestOutcomeArgs>) -> ToolResult {
        answer(
            async {
                let outcome = a.to_outcome()?;
                let id = self.record_target(a.session_id.as_deref()).await?;
                let kind = outcome.outcome;
                let seq = self.store.append_next(id, outcome).await.map_err(|e| {
                    // The store names the field of its batch API; here it is one outcome.
                    match e {
                        Error::InvalidArgument { field, message } => Error::InvalidArgument {
                            field: field.trim_start_matches("outcome.").to_string(),
                            message,
                        },
                        other => other,
                    }
                })?;
                let view = OutcomeRecordedView {
                    session_id: id.to_string(),
                    seq,
                    nodeid: a.nodeid.clone(),
                    outcome: kind.to_string(),
                };
                done(
                    &view,
                    format!("recorded {} {} as #{seq} of session {id}", kind, a.nodeid),
                )
            }
            .await,
        )
    }

    /// Finish a recorded session with pytest's summary (by default the latest
    /// running session started with record_session_start).
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SessionFinishedView>()
    )]
    async fn record_session_finish(
        &self,
        Parameters(a): Parameters<SessionFinishArgs>,
    ) -> ToolResult {
        answer(
            async {
                let summary = Summary::try_from(&a.summary)?;
                let id = self.record_target(a.session_id.as_deref()).await?;
                let current = self.store.get_session(SessionRef::Id(id)).await?;
                // Outcomes recorded through MCP have no gaps: every one the
                // client sent is stored.
                let s = self
                    .store
                    .finish_session(id, summary, current.outcomes_stored, None)
                    .await?;
                let view = SessionFinishedView {
                    session_id: id.to_string(),
                    session: (&s).into(),
                };
                let text = format!("finished: {}", view.session.line());
                done(&view, text)
            }
            .await,
        )
    }

    /// Quarantine a test (a node id, or an fnmatch pattern of node ids) while
    /// it is being fixed: it still runs and its real outcome is recorded, but
    /// in runs with `pytest --mcp --mcp-quarantine` its failure does not fail
    /// the run. Lasts 14 days unless `days` says otherwise (at most 90), then
    /// stops applying by itself; quarantining it again renews it.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<QuarantinedView>()
    )]
    async fn quarantine_test(
        &self,
        Parameters(a): Parameters<QuarantineArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            async {
                let added = self
                    .store
                    .quarantine(NewQuarantine {
                        pattern: a.nodeid,
                        project: a.project.unwrap_or_default(),
                        reason: a.reason,
                        added_by: format!("mcp:{}", self.grant_of(&context)),
                        days: a.days,
                    })
                    .await?;
                let view = QuarantinedView {
                    entry: (&added.entry).into(),
                    renewed: added.renewed,
                };
                let text = format!(
                    "{}: {}",
                    if view.renewed {
                        "quarantine renewed"
                    } else {
                        "quarantined"
                    },
                    view.entry.line()
                );
                done(&view, text)
            }
            .await,
        )
    }

    /// End a test's quarantine: its failures fail runs again. Name the node id
    /// or pattern exactly as it was quarantined (see list_quarantine).
    #[tool(
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<ReleasedView>()
    )]
    async fn release_test(&self, Parameters(a): Parameters<ReleaseArgs>) -> ToolResult {
        answer(
            async {
                let gone = self
                    .store
                    .release(&a.nodeid, a.project.as_deref().unwrap_or_default())
                    .await?;
                let view = ReleasedView {
                    entry: (&gone).into(),
                };
                let text = format!("released: {}", view.entry.line());
                done(&view, text)
            }
            .await,
        )
    }

    /// The quarantine entries that apply now, with how each one's tests did
    /// lately; `release_suggested` marks those whose tests passed their last
    /// 10 runs.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<QuarantineListView>()
    )]
    async fn list_quarantine(&self, Parameters(a): Parameters<QuarantineListArgs>) -> ToolResult {
        answer(
            async {
                let project = a.project.filter(|p| !p.is_empty());
                let statuses = self
                    .store
                    .quarantine_status(project.as_deref(), Timestamp::now())
                    .await?;
                let view = QuarantineListView {
                    entries: statuses.iter().map(QuarantineStatusView::from).collect(),
                };
                done(&view, view.render())
            }
            .await,
        )
    }

    /// List recorded test sessions, newest first, with their counts.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SessionListView>()
    )]
    async fn list_sessions(&self, Parameters(a): Parameters<ListSessionsArgs>) -> ToolResult {
        answer(
            async {
                let filter = SessionFilter {
                    statuses: a.status.map(Into::into).into_iter().collect(),
                    project: a.project.filter(|p| !p.is_empty()),
                };
                let limit = page(a.limit, 20, 100);
                let p = self
                    .store
                    .list_sessions(filter, limit, a.cursor.filter(|c| !c.is_empty()))
                    .await?;
                let view = SessionListView {
                    sessions: p.items.iter().map(SessionView::from).collect(),
                    next_cursor: p.next,
                };
                done(&view, view.render())
            }
            .await,
        )
    }

    /// One session: status, counts, environment and its first failures.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SessionDetailView>()
    )]
    async fn get_session(&self, Parameters(a): Parameters<SessionArgs>) -> ToolResult {
        answer(
            async {
                let view =
                    session_detail(self, session_ref(a.session.as_deref(), "session")?).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// A session's failures and errors with tracebacks, captured output,
    /// location, and a pytest command that reruns exactly them. Paged.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<FailuresView>()
    )]
    async fn get_failures(&self, Parameters(a): Parameters<FailuresArgs>) -> ToolResult {
        answer(
            async {
                let view = failures(self, &a).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// A session's failures grouped by cause, largest cluster first: each
    /// cause (exception type, innermost frame in the project's code, and the
    /// message with ports, ids, paths and numbers masked) with the tests it
    /// broke and one representative traceback. Start here when many tests fail.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<ClustersView>()
    )]
    async fn get_failure_clusters(&self, Parameters(a): Parameters<ClustersArgs>) -> ToolResult {
        answer(
            async {
                let view = clusters(self, &a).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// Tests of a session (default latest) that took much longer than usual:
    /// more than `ratio` times the median of their passing durations over the
    /// earlier sessions of the same project and branch, and `floor_seconds`
    /// over it. The largest excess first.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<RegressionsView>()
    )]
    async fn duration_regressions(&self, Parameters(a): Parameters<RegressionArgs>) -> ToolResult {
        answer(
            async {
                let session = session_ref(a.session.as_deref(), "session")?;
                let ratio = a.ratio.unwrap_or(3.0);
                let floor = a.floor_seconds.unwrap_or(0.25);
                crate::model::validate_duration(floor, "floor_seconds")?;
                if !(ratio.is_finite() && ratio >= 1.0) {
                    return Err(Error::invalid(
                        "ratio",
                        format!("must be a number of at least 1, got {ratio}"),
                    ));
                }
                let rule = RegressionRule {
                    window: page(a.window, 10, 100),
                    ratio,
                    floor,
                    min_runs: page(a.min_runs, 3, 100),
                };
                let found = self.store.duration_regressions(session, rule).await?;
                let limit = page(a.limit, 20, 200);
                let mut view = RegressionsView {
                    session: (&found.session).into(),
                    baseline_sessions: found.baseline.len() as u64,
                    ratio,
                    floor_seconds: floor,
                    total: found.slower.len() as u64,
                    truncated: found.slower.len() > limit,
                    slower: found
                        .slower
                        .iter()
                        .take(limit)
                        .map(RegressionView::from)
                        .collect(),
                };
                if fit_budget(&mut view, |v| &mut v.slower) > 0 {
                    view.truncated = true;
                }
                done(&view, view.render())
            }
            .await,
        )
    }

    /// One test's outcomes across sessions, newest first, with a verdict:
    /// passing, failing, regressed, fixed, or flaky.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<HistoryView>()
    )]
    async fn get_test_history(&self, Parameters(a): Parameters<HistoryArgs>) -> ToolResult {
        answer(
            async {
                let limit = page(a.limit, 20, 200);
                let window = page(a.window, 50, 1000);
                let offset: u64 = match a.cursor.as_deref().filter(|c| !c.is_empty()) {
                    Some(c) => c.parse().map_err(|_| {
                        Error::invalid(
                            "cursor",
                            format!("{c:?} is not a cursor this server issued"),
                        )
                    })?,
                    None => 0,
                };
                let p = self
                    .store
                    .test_history(
                        a.nodeid.clone(),
                        limit,
                        a.cursor.clone().filter(|c| !c.is_empty()),
                    )
                    .await?;
                let stability = self.store.test_stability(a.nodeid.clone(), window).await?;
                let mut view = HistoryView {
                    nodeid: a.nodeid.clone(),
                    stability: StabilityView::new(&stability, flakiness_verdict(&stability)),
                    entries: p.items.iter().map(HistoryEntryView::from).collect(),
                    truncated: false,
                    next_cursor: p.next,
                };
                if fit_budget(&mut view, |v| &mut v.entries) > 0 {
                    view.truncated = true;
                    view.next_cursor = Some((offset + view.entries.len() as u64).to_string());
                }
                done(&view, view.render())
            }
            .await,
        )
    }

    /// Tests that both passed and failed on the same commit or in the same
    /// session, or flip between pass and fail often, over the newest sessions.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<FlakyView>()
    )]
    async fn find_flaky_tests(&self, Parameters(a): Parameters<FlakyArgs>) -> ToolResult {
        answer(
            async {
                let window = page(a.window_sessions, 30, 1000);
                let limit = page(a.limit, 20, 100);
                let project = a.project.filter(|p| !p.is_empty());
                let now = Timestamp::now();
                let (flaky, statuses) = tokio::try_join!(
                    self.store.flaky_tests(window, project.clone(), limit),
                    self.store.quarantine_status(project.as_deref(), now),
                )?;
                let (total, found) = flaky;
                let tests = found
                    .iter()
                    .map(|f| FlakyTestView {
                        quarantined: statuses
                            .iter()
                            .any(|s| quarantine::covers(&s.entry.pattern, &f.nodeid)),
                        ..FlakyTestView::from(f)
                    })
                    .collect();
                let mut view = FlakyView {
                    window_sessions: window as u64,
                    total: total as u64,
                    tests,
                    truncated: total > found.len(),
                    quarantine: statuses.iter().map(QuarantineStatusView::from).collect(),
                };
                if fit_budget(&mut view, |v| &mut v.tests) > 0 {
                    view.truncated = true;
                }
                done(&view, view.render())
            }
            .await,
        )
    }

    /// Compare two sessions: new failures, fixed tests, still failing, added
    /// and removed tests, and tests that got slower. By default the latest
    /// session against the one before it.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<ComparisonView>()
    )]
    async fn compare_sessions(&self, Parameters(a): Parameters<CompareArgs>) -> ToolResult {
        answer(
            async {
                let head = session_ref(a.head.as_deref(), "head")?;
                let base = match a.base.as_deref().filter(|b| !b.trim().is_empty()) {
                    Some(b) => SessionRef::parse(b, "base")?,
                    None => self.store.default_base(head).await?,
                };
                let min_ratio = a.min_ratio.unwrap_or(1.5);
                let min_seconds = a.min_seconds.unwrap_or(0.1);
                for (field, v) in [("min_ratio", min_ratio), ("min_seconds", min_seconds)] {
                    crate::model::validate_duration(v, field)?;
                }
                let c = self
                    .store
                    .compare_sessions(base, head, min_ratio, min_seconds)
                    .await?;
                let limit = page(a.limit, 50, 500);
                // Both read beside each other.
                let (changed, regressions) = tokio::try_join!(
                    self.store.changed_causes(&c, limit),
                    self.store
                        .duration_regressions(SessionRef::Id(c.head.id), RegressionRule::default())
                )?;
                let mut view = ComparisonView::new(&c, limit)
                    .with_causes(&changed)
                    .with_regressions(&regressions, limit);
                // Cut the longest lists first until the answer fits.
                while views::json_len(&view) > views::BUDGET_BYTES {
                    let lens = [
                        view.added.len(),
                        view.removed.len(),
                        view.slower.len(),
                        view.still_failing.len(),
                        view.fixed.len(),
                        view.new_failures.len(),
                        view.duration_regressions.len(),
                    ];
                    let Some((i, n)) = lens.iter().copied().enumerate().max_by_key(|(_, n)| *n)
                    else {
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
                done(&view, view.render())
            }
            .await,
        )
    }

    /// The slowest tests of a session (default latest), slowest first.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SlowestView>()
    )]
    async fn slowest_tests(&self, Parameters(a): Parameters<SlowestArgs>) -> ToolResult {
        answer(
            async {
                let session = session_ref(a.session.as_deref(), "session")?;
                let (s, outcomes) = self
                    .store
                    .slowest_tests(session, page(a.limit, 10, 100))
                    .await?;
                let view = SlowestView::new(&s, &outcomes);
                done(&view, view.render())
            }
            .await,
        )
    }
}

fn rename(e: Error, field: &str) -> Error {
    match e {
        Error::NotFound { message, .. } => Error::NotFound {
            field: field.into(),
            message,
        },
        other => other,
    }
}

/// `get_session`'s answer; shared with the session resources.
pub(super) async fn session_detail(
    mcp: &PytestMcp,
    session: SessionRef,
) -> Result<SessionDetailView> {
    let (s, p) = mcp
        .store
        .list_outcomes(
            session,
            OutcomeFilter {
                outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
                nodeid_contains: None,
            },
            5,
            None,
        )
        .await
        .map_err(|e| rename(e, "session"))?;
    let quarantine = mcp
        .store
        .quarantine_status(Some(&s.environment.project), Timestamp::now())
        .await?;
    Ok(SessionDetailView {
        quarantine: quarantine.iter().map(QuarantineStatusView::from).collect(),
        session: (&s).into(),
        environment: (&s.environment).into(),
        first_failures: p
            .items
            .iter()
            .map(|o| FailureBrief {
                nodeid: o.nodeid.clone(),
                subtest: (!o.subtest.is_empty()).then(|| o.subtest.clone()),
                outcome: o.outcome.to_string(),
                message: o.message.chars().take(300).collect(),
                quarantined: o.quarantined,
            })
            .collect(),
    })
}

/// `get_failure_clusters`' answer; shared with the prompt.
pub(super) async fn clusters(mcp: &PytestMcp, a: &ClustersArgs) -> Result<ClustersView> {
    let session = session_ref(a.session.as_deref(), "session")?;
    let limit = page(a.limit, 20, 100);
    let per_cluster = page(a.tests_per_cluster, 10, 100);
    let traceback_bytes = page(a.traceback_bytes, 2000, 16_000);
    let causes = mcp
        .store
        .session_causes(session, None)
        .await
        .map_err(|e| rename(e, "session"))?;
    let s = &causes.session;
    let shown = &causes.clusters[..causes.clusters.len().min(limit)];
    let described = mcp.store.describe(s.id, shown).await?;
    let known = mcp
        .store
        .known_causes(s, shown.iter().map(|c| c.key.clone()).collect())
        .await?;
    let mut view = ClustersView {
        session: s.into(),
        failures: causes.failures,
        clusters_total: causes.clusters.len() as u64,
        truncated: causes.clusters.len() > limit,
        clusters: described
            .iter()
            .map(|d| {
                let (g, f) = (&d.cluster, &d.fingerprint);
                let named: Vec<String> = g.tests.iter().take(per_cluster).cloned().collect();
                ClusterView {
                    fingerprint: g.key.clone(),
                    cause: f.describe(),
                    exception: f.exception.clone(),
                    frame: f.frame.clone(),
                    message: f.message.clone(),
                    failures: g.failures(),
                    tests_total: g.tests.len() as u64,
                    rerun_command: views::rerun_command(named.iter().map(String::as_str)),
                    tests: named,
                    representative: FailureView::new(&d.representative, traceback_bytes),
                    new: !known.contains_key(&g.key),
                    first_seen: known.get(&g.key).map(|k| k.first_seen.to_rfc3339()),
                    seen_in_sessions: known.get(&g.key).map_or(0, |k| k.sessions),
                    last_seen: known.get(&g.key).map(|k| k.last_seen.to_rfc3339()),
                    failures_in_other_sessions: known.get(&g.key).map_or(0, |k| k.failures),
                    tests_ever: known.get(&g.key).map_or(0, |k| k.tests),
                    tests_ever_named: known
                        .get(&g.key)
                        .map(|k| k.some_tests.clone())
                        .unwrap_or_default(),
                }
            })
            .collect(),
    };
    if fit_budget(&mut view, |v| &mut v.clusters) > 0 {
        view.truncated = true;
    }
    Ok(view)
}

/// `get_failures` with `group_by: "cluster"`: every failure (bounded) read,
/// grouped by cause, and paged by position (`c<offset>` cursors).
async fn failures_by_cause(
    mcp: &PytestMcp,
    a: &FailuresArgs,
    session: SessionRef,
    limit: usize,
    traceback_bytes: usize,
) -> Result<FailuresView> {
    let offset: usize = match a.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Error::invalid(
                    "cursor",
                    format!("{c:?} is not a cursor of failures grouped by cause"),
                )
            })?,
        None => 0,
    };
    let causes = mcp
        .store
        .session_causes(session, a.nodeid_contains.as_deref())
        .await
        .map_err(|e| rename(e, "session"))?;
    let s = &causes.session;
    // Each cause's failures in the order they happened, the largest cause
    // first: (cluster, seq).
    let ordered: Vec<(usize, u64)> = causes
        .clusters
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.seqs.iter().map(move |&seq| (i, seq)))
        .collect();
    let page: Vec<(usize, u64)> = ordered.iter().skip(offset).take(limit).copied().collect();
    let mut on_page: Vec<usize> = page.iter().map(|(i, _)| *i).collect();
    on_page.dedup();
    let shown: Vec<_> = on_page
        .iter()
        .map(|&i| causes.clusters[i].clone())
        .collect();
    let named: HashMap<String, String> = mcp
        .store
        .describe(s.id, &shown)
        .await?
        .into_iter()
        .map(|d| (d.cluster.key, d.fingerprint.describe()))
        .collect();
    let outcomes: HashMap<u64, Outcome> = mcp
        .store
        .outcomes_at(s.id, page.iter().map(|(_, seq)| *seq).collect())
        .await?
        .into_iter()
        .map(|o| (o.seq, o))
        .collect();
    let mut view = FailuresView {
        session: s.into(),
        failures: page
            .iter()
            .filter_map(|(i, seq)| {
                let mut f = FailureView::new(outcomes.get(seq)?, traceback_bytes);
                f.cause = named.get(&causes.clusters[*i].key).cloned();
                Some(f)
            })
            .collect(),
        total_failures: s.counts.failed + s.counts.errors,
        rerun_command: String::new(),
        truncated: false,
        next_cursor: None,
    };
    fit_budget(&mut view, |v| &mut v.failures);
    let next = offset + view.failures.len();
    if next < ordered.len() {
        view.next_cursor = Some(format!("c{next}"));
        view.truncated = view.failures.len() < limit;
    }
    view.rerun_command = views::rerun_command(view.failures.iter().map(|f| f.nodeid.as_str()));
    Ok(view)
}

/// `get_failures`' answer; shared with the failures resource and the prompt.
pub(super) async fn failures(mcp: &PytestMcp, a: &FailuresArgs) -> Result<FailuresView> {
    let session = session_ref(a.session.as_deref(), "session")?;
    let limit = page(a.limit, 10, 100);
    let traceback_bytes = page(a.traceback_bytes, 4000, 16_000);
    if a.group_by == Some(GroupBy::Cluster) {
        return failures_by_cause(mcp, a, session, limit, traceback_bytes).await;
    }
    let filter = OutcomeFilter {
        outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
        nodeid_contains: a.nodeid_contains.clone().filter(|t| !t.is_empty()),
    };
    let cursor = a.cursor.clone().filter(|c| !c.is_empty());
    let (s, p) = mcp
        .store
        .list_outcomes(session, filter, limit, cursor)
        .await
        .map_err(|e| match e {
            Error::InvalidArgument { message, .. } => Error::InvalidArgument {
                field: "cursor".into(),
                message,
            },
            Error::NotFound { message, .. } => Error::NotFound {
                field: "session".into(),
                message,
            },
            other => other,
        })?;
    let mut view = FailuresView {
        session: (&s).into(),
        failures: p
            .items
            .iter()
            .map(|o| FailureView::new(o, traceback_bytes))
            .collect(),
        total_failures: s.counts.failed + s.counts.errors,
        rerun_command: String::new(),
        truncated: false,
        next_cursor: p.next,
    };
    if fit_budget(&mut view, |v| &mut v.failures) > 0 {
        view.truncated = true;
        // The store's cursor is the last seq returned.
        view.next_cursor = view.failures.last().map(|f| f.seq.to_string());
    }
    view.rerun_command = views::rerun_command(view.failures.iter().map(|f| f.nodeid.as_str()));
    Ok(view)
}
