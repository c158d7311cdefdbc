//! `kdiag-agent`: `kdiag agent` alone, with the same flags. The image runs it so that the agent
//! on every node maps only its own code (docs/performance.md: idle memory).

use std::process::ExitCode;

use clap::Parser;
use kdiag::cli::{AgentArgs, LogFormat};

/// The kdiag node agent: processes this node's Abnormals (one per node, as a DaemonSet).
#[derive(Parser, Debug)]
#[command(name = "kdiag-agent", version)]
struct Args {
    /// Log format: text or json.
    #[arg(long, default_value = "text", env = "KDIAG_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    kdiag::commands::run_agent(args.agent, args.log_format).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}
