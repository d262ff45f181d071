//! `pytest-mcp pin` / `unpin`: keeps a session out of every pruning, or lets
//! pruning have it again.

use std::process::ExitCode;

use crate::cli::PinArgs;
use crate::model::SessionRef;

/// Pins (`pinned`) or unpins the session.
pub async fn run(args: PinArgs, pinned: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(args.db.location()?).await?;
    let session = SessionRef::parse(&args.session, "SESSION")?;
    let s = store.set_pinned(session, pinned).await?;
    store.shutdown().await;
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
