//! The tools: three record tools compatible with the original Node server,
//! and the read tools. Each is small: parse, call the store, convert.

use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, tool, tool_router};
use uuid::Uuid;

use super::args::{
    AffectedArgs, ClustersArgs, CompareArgs, FailuresArgs, FlakyArgs, HistoryArgs,
    ListSessionsArgs, Parameters, ProjectsArgs, QuarantineArgs, QuarantineListArgs, RegressionArgs,
    ReleaseArgs, SessionArgs, SessionFinishArgs, SessionStartArgs, SlowestArgs, TestOutcomeArgs,
    session_id,
};
use super::{PytestMcp, structured, tool_failure};
use crate::error::{Error, Result};
use crate::model::{SessionRef, Source, Summary, Timestamp};
use crate::store::quarantine::NewQuarantine;
use crate::views::DefaultProject;
use crate::views::{
    self, OutcomeRecordedView, QuarantineListView, QuarantineStatusView, QuarantinedView,
    ReleasedView, SessionFinishedView, SessionStartedView,
};

type ToolResult = std::result::Result<CallToolResult, ErrorData>;

/// Runs a tool body, mapping its error once.
fn answer(result: Result<CallToolResult>) -> ToolResult {
    result.or_else(tool_failure)
}

fn done<V: serde::Serialize>(view: &V, text: String) -> Result<CallToolResult> {
    structured(view, text).map_err(|e| Error::Internal(e.message.to_string()))
}

impl PytestMcp {
    /// The session a record tool writes to, always one of the caller's
    /// grant (the token it authenticated with; no token: the sessions
    /// recorded without one): the one named, or the latest running session
    /// its grant started through MCP. Another grant's session is refused
    /// rather than written: with several tokens, "latest" must never mean
    /// somebody else's run.
    async fn record_target(
        &self,
        given: Option<&str>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Uuid> {
        let grant = Self::token_grant(context);
        if let Some(id) = session_id(given, "session_id")? {
            if self.store.session_grant(id).await? != grant {
                // An unknown id is not found, not someone else's.
                self.store.get_session(SessionRef::Id(id)).await?;
                return Err(Error::precondition(
                    "session_id",
                    format!(
                        "session {id} was recorded under another grant than {}; \
                         a grant writes only to its own sessions",
                        grant.as_deref().map_or_else(
                            || "this caller's (no token)".to_string(),
                            |g| format!("{g:?}")
                        )
                    ),
                ));
            }
            return Ok(id);
        }
        match self
            .store
            .latest_running(Source::Mcp, grant.clone())
            .await?
        {
            Some(s) => Ok(s.id),
            None => Err(Error::precondition(
                "session_id",
                match grant {
                    Some(g) => format!(
                        "no running session was started through MCP under grant {g:?}; \
                         call record_session_start first, or pass session_id"
                    ),
                    None => "no running session was started through MCP; call \
                             record_session_start first, or pass session_id"
                        .to_string(),
                },
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
                let mut environment: crate::model::Environment = a.environment.into();
                // An agent beside its project (stdio) records into that project.
                if environment.project.is_empty()
                    && let DefaultProject::Directory { name, .. } = &*self.default_project
                {
                    environment.project = name.clone();
                }
                let s = self
                    .store
                    .start_session_as(id, Source::Mcp, environment, None, grant)
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
    /// session this caller's grant started with record_session_start); it is
    /// stored as the next outcome of that session.
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<OutcomeRecordedView>()
    )]
    async fn record_test_outcome(
        &self,
        Parameters(a): Parameters<TestOutcomeArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            async {
                let outcome = a.to_outcome()?;
                let id = self
                    .record_target(a.session_id.as_deref(), &context)
                    .await?;
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
    /// running session this caller's grant started with record_session_start).
    #[tool(
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SessionFinishedView>()
    )]
    async fn record_session_finish(
        &self,
        Parameters(a): Parameters<SessionFinishArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        answer(
            async {
                let summary = Summary::try_from(&a.summary)?;
                let id = self
                    .record_target(a.session_id.as_deref(), &context)
                    .await?;
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
                let scope = self.scope(a.project.as_deref()).await?;
                let statuses = self
                    .store
                    .quarantine_status(&scope.project, Timestamp::now())
                    .await?;
                let view = QuarantineListView {
                    entries: statuses.iter().map(QuarantineStatusView::from).collect(),
                };
                done(&view, view.render())
            }
            .await,
        )
    }

    /// The projects recorded, the most recently active first, with how many
    /// sessions each has; every read tool takes one as `project`.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::ProjectsView>()
    )]
    async fn list_projects(&self, Parameters(_a): Parameters<ProjectsArgs>) -> ToolResult {
        answer(
            async {
                let view = self.scope(None).await?.projects_view().fitted();
                done(&view, view.render())
            }
            .await,
        )
    }

    /// List a project's recorded test sessions, newest first, with their counts.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::SessionListView>()
    )]
    async fn list_sessions(&self, Parameters(a): Parameters<ListSessionsArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::session::list_sessions(&self.store, &scope, &(&a).into()).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// One session (default the project's latest): status, counts,
    /// environment and its first failures.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::SessionDetailView>()
    )]
    async fn get_session(&self, Parameters(a): Parameters<SessionArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view =
                    views::session::session_detail(&self.store, &scope, a.session.as_deref())
                        .await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// A session's failures and errors with tracebacks, captured output,
    /// location, whether the test is known to be flaky, and a pytest command
    /// that reruns exactly them. Paged.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::FailuresView>()
    )]
    async fn get_failures(&self, Parameters(a): Parameters<FailuresArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::failures::failures(&self.store, &scope, &(&a).into()).await?;
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
        output_schema = schema_for_output::<views::ClustersView>()
    )]
    async fn get_failure_clusters(&self, Parameters(a): Parameters<ClustersArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::causes::clusters(&self.store, &scope, &(&a).into()).await?;
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
        output_schema = schema_for_output::<views::RegressionsView>()
    )]
    async fn duration_regressions(&self, Parameters(a): Parameters<RegressionArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::durations::regressions(&self.store, &scope, &(&a).into()).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// One test's outcomes across the project's sessions, newest first, with
    /// a verdict: passing, failing, regressed, fixed, or flaky (passed and
    /// failed on the same code), and the evidence for it.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::HistoryView>()
    )]
    async fn get_test_history(&self, Parameters(a): Parameters<HistoryArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::history::history(&self.store, &scope, &(&a).into()).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// Tests that passed and failed on the same code (the same commit and
    /// uncommitted changes, or within one session's reruns) in the project's
    /// newest sessions; each names the code and the sessions.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::FlakyView>()
    )]
    async fn find_flaky_tests(&self, Parameters(a): Parameters<FlakyArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::flaky::flaky(&self.store, &scope, &(&a).into()).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// Compare two sessions: new failures, fixed tests, still failing, added
    /// and removed tests, new and fixed causes, and tests that got slower;
    /// failures of tests known to be flaky are labelled. By default the
    /// project's latest session against the one before it.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::ComparisonView>()
    )]
    async fn compare_sessions(&self, Parameters(a): Parameters<CompareArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::compare::compare(&self.store, &scope, &(&a).into()).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// Which tests a change needs: tests whose recorded dependencies (the
    /// functions, classes, modules and files each test ran or read) changed,
    /// new tests, tests whose last run did not pass, and every test when a
    /// watched file (conftest.py, pytest.ini, ...) changed. Each with its
    /// reason, the counts, a confidence and a pytest command line. Describe
    /// the change by `diff`, `files` or `revisions`; with none, the project's
    /// working tree (when this server can read it).
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::AffectedView>()
    )]
    async fn affected_tests(&self, Parameters(a): Parameters<AffectedArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let query = views::AffectedQuery {
                    change: a.change()?,
                    collected: a.collected.clone(),
                    watch: a.watch.clone().unwrap_or_default(),
                    checkout: match &*self.default_project {
                        DefaultProject::Directory { name, dir } if scope.project.holds(name) => {
                            Some(crate::rootdir::rootdir(dir))
                        }
                        _ => None,
                    },
                    python: None,
                    whole: false,
                };
                let view = views::affected::affected(&self.store, &scope, &query).await?;
                done(&view, view.render())
            }
            .await,
        )
    }

    /// The slowest tests of a session (default the project's latest), slowest first.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<views::SlowestView>()
    )]
    async fn slowest_tests(&self, Parameters(a): Parameters<SlowestArgs>) -> ToolResult {
        answer(
            async {
                let scope = self.scope(a.project.as_deref()).await?;
                let view = views::durations::slowest(&self.store, &scope, &(&a).into()).await?;
                done(&view, view.render())
            }
            .await,
        )
    }
}
