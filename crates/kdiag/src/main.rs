//! The `kdiag` binary: the cluster controller (`kdiag controller`), the node agent (`kdiag
//! agent`), `kubectl diag` (`kdiag diag`, or this binary installed as `kubectl-diag`), the CRDs
//! (`kdiag crd`) and, built with the `local` feature, `kdiag local`. It only parses the command
//! line and hands over to the crate of each role; the wiring of a process is in `commands/`.

use std::process::ExitCode;

use clap::Parser;
use kdiag::{cli, commands};

/// Parses the command line, runs the command and turns its outcome into an exit code.
fn main() -> ExitCode {
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
