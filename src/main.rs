//! The `pytest-mcp` binary: parse the command line, set up logging on
//! stderr, run, and turn errors into a message and an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = pytest_mcp::cli::Cli::parse();
    // Logs go to stderr: stdout belongs to command output (and, on stdio, the protocol).
    // Colour only for a person at a terminal, never into a log file or pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pytest-mcp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pytest_mcp::app::run(cli)) {
        Ok(code) => code,
        // The reader went away (`pytest-mcp show latest | head`): what it
        // wanted it has; nothing to report, as with any Unix filter.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pytest-mcp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
