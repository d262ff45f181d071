//! `pytest-mcp compare [BASE] [HEAD]`: two sessions compared, as
//! `compare_sessions` answers.

use std::process::ExitCode;

use crate::cli::CompareArgs;
use crate::views;

/// Prints the view.
pub async fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let query = views::CompareQuery {
        base: args.base,
        head: args.head,
        limit: Some(args.limit),
        ..views::CompareQuery::default()
    };
    let view = views::compare::compare(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
