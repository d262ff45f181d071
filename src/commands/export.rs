//! `pytest-mcp export`: a session as JSON or JUnit XML.
//!
//! `-o FILE` is written whole or not at all: the export goes to a temporary
//! file beside FILE, renamed over it only once complete, so a failure half
//! way leaves the old FILE as it was. A reader that goes away (`| head`)
//! ends the export quietly, as it ends `show`.

use anyhow::Context;
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

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
    match &args.output {
        Some(path) => {
            let partial = Partial::create(path)?;
            let mut sink = std::io::BufWriter::new(&partial.file);
            write(args.format, &store, &session, &mut sink).await?;
            drop(sink);
            partial.persist()?;
        }
        None => {
            let broken = Rc::new(Cell::new(false));
            let mut sink = std::io::BufWriter::new(WatchPipe {
                inner: std::io::stdout().lock(),
                broken: broken.clone(),
            });
            if let Err(e) = write(args.format, &store, &session, &mut sink).await {
                // The export wraps write errors in its own; what it says is
                // that the reader left, which is not a failure.
                if broken.get() {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(e);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the export to `sink`, flushed.
async fn write(
    format: ExportFormat,
    store: &crate::store::Store,
    session: &crate::model::Session,
    sink: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        ExportFormat::Json => crate::export::write_json(store, session, sink).await?,
        ExportFormat::Junit => crate::export::write_junit(store, session, sink).await?,
    }
    sink.flush()?;
    Ok(())
}

/// A temporary file beside the export's target, removed unless persisted.
struct Partial {
    file: std::fs::File,
    temp: PathBuf,
    target: PathBuf,
    persisted: bool,
}

impl Partial {
    fn create(target: &Path) -> anyhow::Result<Self> {
        let name = target
            .file_name()
            .with_context(|| format!("--output: {} names no file", target.display()))?;
        // Beside the target, so the rename stays on one file system.
        let temp = target.with_file_name(format!(
            ".{}.{}.partial",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::File::create(&temp)
            .with_context(|| format!("--output: creating {}", temp.display()))?;
        Ok(Partial {
            file,
            temp,
            target: target.to_path_buf(),
            persisted: false,
        })
    }

    fn persist(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("--output: writing {}", self.temp.display()))?;
        std::fs::rename(&self.temp, &self.target)
            .with_context(|| format!("--output: replacing {}", self.target.display()))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A writer that remembers whether its reader went away (a broken pipe).
struct WatchPipe<W> {
    inner: W,
    broken: Rc<Cell<bool>>,
}

impl<W: Write> WatchPipe<W> {
    fn watch<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.broken.set(true);
        }
        r
    }
}

impl<W: Write> Write for WatchPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.watch(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.watch(r)
    }
}
