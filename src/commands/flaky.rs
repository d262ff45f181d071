//! `pytest-mcp flaky`: the project's flaky tests, as `find_flaky_tests` answers.

use std::process::ExitCode;

use crate::cli::FlakyArgs;
use crate::views;

/// Prints the view.
pub async fn run(args: FlakyArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let query = views::FlakyQuery {
        window_sessions: Some(args.window),
        limit: Some(args.limit),
        whole: false,
    };
    let view = views::flaky::flaky(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
