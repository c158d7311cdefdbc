//! kdiag: the cluster controller, the node agent, the plugin client, the HTTP server, the CLI and
//! the local mode, behind one binary.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod plugin;
pub mod policy;
pub mod probes;
pub mod profiler;
pub mod registrations;
pub mod server;
pub mod sources;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Installed as `kubectl-diag`, the binary is a kubectl plugin: `kubectl diag get`.
    let called_as = std::env::args_os().next().map(std::path::PathBuf::from);
    if called_as
        .as_deref()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "kubectl-diag")
    {
        let plugin = kdiag_cli::KubectlDiag::parse();
        return match kdiag_cli::run(plugin.args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
