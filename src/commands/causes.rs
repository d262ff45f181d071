//! `pytest-mcp causes [SESSION]`: a session's failures grouped by cause,
//! as `get_failure_clusters` answers.

use std::process::ExitCode;

use crate::cli::CausesArgs;
use crate::views;

/// Prints the view.
pub async fn run(args: CausesArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let query = views::ClustersQuery {
        session: Some(args.session),
        limit: Some(args.limit),
        ..views::ClustersQuery::default()
    };
    let view = views::causes::clusters(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
