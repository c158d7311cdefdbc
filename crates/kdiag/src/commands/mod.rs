//! One module per subcommand.

mod agent;
mod controller;
mod crd;
#[cfg(feature = "local")]
mod local;

use std::process::ExitCode;

use kdiag_runtime::process;

use crate::cli::{Cli, Command, LogFormat};

/// Any error a command ends with; each message says what to do.
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;

pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match cli.command {
        Command::Crd(args) => crd::run(args),
        Command::Controller(args) => {
            process::init_logging(cli.log_format == LogFormat::Json);
            process::block_on(controller::run(args))
        }
        Command::Agent(args) => {
            process::init_logging(cli.log_format == LogFormat::Json);
            process::block_on(agent::run(args))
        }
        Command::Diag(args) => kdiag_cli::run(args),
        #[cfg(feature = "local")]
        Command::Local(args) => {
            process::init_logging(cli.log_format == LogFormat::Json);
            process::block_on(local::run(args))
        }
    }
}
