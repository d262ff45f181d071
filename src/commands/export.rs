//! `pytest-mcp export`: a session as JSON or JUnit XML.

use anyhow::Context;
use std::io::Write;
use std::process::ExitCode;

use crate::cli::{ExportArgs, ExportFormat};
use crate::model::SessionRef;

/// Writes the session in the chosen format.
pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (store, scope) = super::open_scope(&args.scope).await?;
    let session_ref = SessionRef::parse(&args.session, "SESSION")?.scoped(&scope.project);
    let session = store
        .get_session(session_ref)
        .await
        .map_err(|e| scope.explain(e))?;
    let mut sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("--output: creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        ExportFormat::Json => crate::export::write_json(&store, &session, &mut sink).await?,
        ExportFormat::Junit => crate::export::write_junit(&store, &session, &mut sink).await?,
    }
    sink.flush()?;
    Ok(ExitCode::SUCCESS)
}
