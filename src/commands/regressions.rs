//! `pytest-mcp regressions [SESSION]`: tests that ran much slower than
//! usual, as `duration_regressions` answers.

use std::process::ExitCode;

use crate::cli::RegressionsArgs;
use crate::views;

/// Prints the view.
pub async fn run(args: RegressionsArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let query = views::RegressionsQuery {
        session: Some(args.session),
        ratio: Some(args.ratio),
        floor_seconds: Some(args.floor),
        window: Some(args.window),
        limit: Some(args.limit),
        ..views::RegressionsQuery::default()
    };
    let view = views::durations::regressions(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
