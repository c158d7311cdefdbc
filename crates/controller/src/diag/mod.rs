//! `kubectl diag` (the kdiag binary installed as `kubectl-diag`, or `kdiag diag …`): the
//! operator's view of Abnormals and probes.

use std::process::ExitCode;

use crate::commands::CommandError;

/// Arguments of `kubectl diag`.
#[derive(clap::Args, Debug, Clone)]
pub struct DiagArgs {
    #[command(subcommand)]
    pub command: Option<DiagCommand>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DiagCommand {}

pub fn run(_args: DiagArgs) -> Result<ExitCode, CommandError> {
    Err("kubectl diag has no commands yet".into())
}
