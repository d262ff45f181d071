//! `pytest-mcp history NODEID`: one test across the project's sessions,
//! as `get_test_history` answers.

use std::process::ExitCode;

use crate::cli::HistoryArgs;
use crate::views;

/// Prints the view.
pub async fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let query = views::HistoryQuery {
        nodeid: args.nodeid,
        limit: Some(args.limit),
        window: Some(args.window),
        cursor: args.cursor,
        whole: false,
    };
    let view = views::history::history(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
