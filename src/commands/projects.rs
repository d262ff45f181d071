//! `pytest-mcp projects`: the projects recorded, as `list_projects` answers.

use std::process::ExitCode;

use crate::cli::ProjectsArgs;

/// Prints the view.
pub async fn run(args: ProjectsArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    drop(store);
    let view = scope.projects_view().fitted();
    super::print_view(args.view.format, &view, view.render())
}
