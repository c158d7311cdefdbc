//! kdiag: the cluster controller, the node agent, the plugin client, the HTTP server, the CLI and
//! the local mode, behind one binary.

pub mod agent;
pub mod apply;
pub mod builtin;
pub mod cli;
pub mod cluster;
mod commands;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod profiler;
pub mod ready;
pub mod registrations;
pub mod server;
pub mod time;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
