//! `pytest-mcp slowest [SESSION]`: a session's slowest tests, as
//! `slowest_tests` answers.

use std::process::ExitCode;

use crate::cli::SlowestArgs;
use crate::views;

/// Prints the view.
pub async fn run(args: SlowestArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let query = views::SlowestQuery {
        session: Some(args.session),
        limit: Some(args.limit),
    };
    let view = views::durations::slowest(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
