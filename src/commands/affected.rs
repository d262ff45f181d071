//! `pytest-mcp affected`: the tests a change needs, as `affected_tests` answers.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::AffectedArgs;
use crate::store::affected::ChangeInput;
use crate::views::{self, ChangeSpec};

/// Prints the view.
pub async fn run(args: AffectedArgs) -> anyhow::Result<ExitCode> {
    let change = if let Some(path) = &args.diff {
        let mut text = String::new();
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("--diff -: reading standard input")?;
        } else {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("--diff: reading {}", path.display()))?;
        }
        ChangeSpec::Given(ChangeInput::Diff(text))
    } else if !args.files.is_empty() {
        ChangeSpec::Given(ChangeInput::Files(args.files.clone()))
    } else if let Some(rev) = &args.rev {
        ChangeSpec::Revisions(rev.clone())
    } else {
        ChangeSpec::WorkingTree
    };
    let collected = match &args.collected {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--collected: reading {}", path.display()))?;
            // `pytest --collect-only -q` ends with a summary line; node ids have `::`.
            Some(
                text.lines()
                    .map(str::trim)
                    .filter(|l| l.contains("::"))
                    .map(str::to_string)
                    .collect(),
            )
        }
    };
    let (store, scope) = super::open_scope(&args.view.scope).await?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let query = views::AffectedQuery {
        change,
        collected,
        watch: args.watch.clone(),
        checkout: Some(crate::rootdir::rootdir(&cwd)),
        python: args.python.clone(),
        whole: args.all,
    };
    let view = views::affected::affected(&store, &scope, &query).await?;
    super::print_view(args.view.format, &view, view.render())
}
