//! `kdiag-controller`: `kdiag controller` alone, with the same flags. The image runs it so that
//! the controller maps only its own code (docs/performance.md: idle memory).

use std::process::ExitCode;

use clap::Parser;
use kdiag::cli::{ControllerArgs, LogFormat};

/// The kdiag cluster controller: admits, routes and garbage-collects Abnormals (one per cluster).
#[derive(Parser, Debug)]
#[command(name = "kdiag-controller", version)]
struct Args {
    /// Log format: text or json.
    #[arg(long, default_value = "text", env = "KDIAG_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(flatten)]
    controller: ControllerArgs,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    kdiag::commands::run_controller(args.controller, args.log_format).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}
