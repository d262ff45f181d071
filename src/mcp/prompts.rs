//! The `triage_failures` prompt: hands the agent a session's failures (as
//! `get_failures` renders them) and the questions worth asking about them.

use rmcp::ErrorData;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResult, Prompt, PromptArgument, PromptMessage, Role,
};

use super::args::FailuresArgs;
use super::{PytestMcp, protocol_error};

const NAME: &str = "triage_failures";

/// The prompt as listed.
pub(super) fn triage() -> Prompt {
    Prompt::new(
        NAME,
        Some("Triage a test session's failures: what broke, is it new or flaky, how to rerun it"),
        Some(vec![
            PromptArgument::new("session")
                .with_description("A session id, or `latest` (the default)")
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
        return Err(ErrorData::invalid_params(
            format!("unknown prompt {:?}; the prompts are: {NAME}", request.name),
            None,
        ));
    }
    let session = request
        .arguments
        .as_ref()
        .and_then(|a| a.get("session"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let args = FailuresArgs {
        session,
        limit: Some(20),
        ..FailuresArgs::default()
    };
    let view = super::tools::failures(mcp, &args)
        .await
        .map_err(protocol_error)?;
    let id = &view.session.id;
    let mut text = format!(
        "Triage the failures of pytest session {id}.\n\n{}\n\n",
        view.render()
    );
    text.push_str(&format!(
        "For each failure, answer:\n\
         1. What does the traceback point at: the test, the code under test, or the environment (setup/teardown errors, missing services)?\n\
         2. Is it new? Call compare_sessions with head {id} to see whether it also failed in the previous session.\n\
         3. Is it flaky? Call get_test_history with its nodeid; a `flaky` verdict means it passed and failed on the same commit or flips often.\n\
         4. Do several failures share one cause (same exception, same module)? Group them.\n\
         5. What is the smallest change that fixes it, and which command reruns exactly the affected tests?\n\
         Use get_failures with session {id} and the next cursor for more failures, or a larger traceback_bytes for a cut traceback.\n"
    ));
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("Failures of session {id}")),
    )
}
