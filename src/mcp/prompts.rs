//! The `triage_failures` prompt: hands the agent a session's failures
//! grouped by cause (as `get_failure_clusters` renders them), its first
//! failures with tracebacks (as `get_failures` does), and the questions worth
//! asking about them.
//!
//! It shows what those two tools answer, so the policy gate judges it as
//! both ([`GATED_AS`]): a policy denying either denies the prompt.

use rmcp::ErrorData;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResult, Prompt, PromptArgument, PromptMessage, Role,
};

use super::{PytestMcp, protocol_error};
use crate::views;

/// The one prompt's name.
pub(super) const NAME: &str = "triage_failures";

/// The tools whose output the prompt embeds; it is gated as all of them.
pub(super) const GATED_AS: &[&str] = &["get_failure_clusters", "get_failures"];

/// The error for a prompt this server does not have.
pub(super) fn unknown(name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown prompt {name:?}; the prompts are: {NAME}"),
        None,
    )
}

/// The prompt as listed.
pub(super) fn triage() -> Prompt {
    Prompt::new(
        NAME,
        Some("Triage a test session's failures: what broke, is it new or flaky, how to rerun it"),
        Some(vec![
            PromptArgument::new("session")
                .with_description(
                    "A session id (or its first 8+ hex digits), or `latest` (the default) \
                     of the server's project",
                )
                .with_required(false),
            PromptArgument::new("project")
                .with_description(
                    "The project (matched case-insensitively); by default the server's",
                )
                .with_required(false),
        ]),
    )
}

/// The prompt filled in for one session.
pub(super) async fn get(
    mcp: &PytestMcp,
    request: GetPromptRequestParams,
) -> Result<GetPromptResult, ErrorData> {
    if request.name != NAME {
        return Err(unknown(&request.name));
    }
    if let Some(unknown) = request
        .arguments
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .find(|k| !matches!(k.as_str(), "session" | "project"))
    {
        return Err(ErrorData::invalid_params(
            format!("{unknown}: unknown argument of {NAME}; its arguments are session, project"),
            None,
        ));
    }
    let argument = |name: &str| {
        request
            .arguments
            .as_ref()
            .and_then(|a| a.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let session = argument("session");
    let scope = mcp
        .scope(argument("project").as_deref())
        .await
        .map_err(protocol_error)?;
    let causes = views::causes::clusters(
        &mcp.store,
        &scope,
        &views::ClustersQuery {
            session: session.clone(),
            limit: Some(10),
            tests_per_cluster: Some(5),
            traceback_bytes: Some(1500),
            whole: false,
        },
    )
    .await
    .map_err(protocol_error)?;
    let query = views::FailuresQuery {
        session,
        limit: Some(10),
        ..views::FailuresQuery::default()
    };
    let view = views::failures::failures(&mcp.store, &scope, &query)
        .await
        .map_err(protocol_error)?;
    let id = &view.session.id;
    let mut text = format!(
        "Triage the failures of pytest session {id}.\n\nTheir causes, largest first (get_failure_clusters):\n{}\n\nThe first failures (get_failures):\n{}\n\n",
        causes.render(),
        view.render()
    );
    text.push_str(&format!(
        "Start from the causes: one fix may clear a whole cluster. For each cause, answer:\n\
         1. What does the traceback point at: the test, the code under test, or the environment (setup/teardown errors, missing services)?\n\
         2. Is it new? Call compare_sessions with head {id}: it lists the causes new in this session and those fixed since the previous one, and which tests newly fail.\n\
         3. Is it flaky? A failure marked known flaky (`known_flaky`) passed and failed on the same code lately; get_test_history with its nodeid gives the verdict and its evidence. `flaky` means it passed and failed on the same code (the same code in every unit it ran when its dependencies were recorded, else the same commit and uncommitted changes, or reruns in one session; the evidence's `rule` says which); a test that fails since a code change is `regressed`, not flaky: do not quarantine it, fix it.\n\
         4. Did tests also get slower? duration_regressions with session {id} compares each test with its usual duration.\n\
         5. What is the smallest change that fixes it, and which command reruns exactly the affected tests?\n\
         Use get_failures with session {id} and the next cursor for more failures, or a larger traceback_bytes for a cut traceback.\n"
    ));
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("Failures of session {id}")),
    )
}
