//! `pytest-mcp pin` / `unpin`: keeps a session out of every pruning, or lets
//! pruning have it again.

use std::process::ExitCode;

use crate::cli::PinArgs;
use crate::model::SessionRef;

/// Pins (`pinned`) or unpins the session.
pub async fn run(args: PinArgs, pinned: bool) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.scope).await?;
    let session = SessionRef::parse(&args.session, "SESSION")?.scoped(&scope.project);
    let s = store
        .set_pinned(session, pinned)
        .await
        .map_err(|e| scope.explain(e));
    store.shutdown().await;
    let s = s?;
    println!(
        "session {} {}",
        s.id,
        if pinned {
            "pinned: pruning keeps it until `pytest-mcp unpin`"
        } else {
            "unpinned: pruning may delete it again"
        }
    );
    Ok(ExitCode::SUCCESS)
}
