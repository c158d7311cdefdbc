//! One module per subcommand.

mod agent;
mod controller;
mod crd;
mod local;
pub(crate) mod runtime;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Any error a command ends with; each message says what to do.
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;

pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match cli.command {
        Command::Crd(args) => crd::run(args),
        Command::Controller(args) => {
            runtime::init_logging(cli.log_format);
            runtime::block_on(controller::run(args))
        }
        Command::Agent(args) => {
            runtime::init_logging(cli.log_format);
            runtime::block_on(agent::run(args))
        }
        Command::Diag(args) => crate::diag::run(args),
        Command::Local(args) => {
            runtime::init_logging(cli.log_format);
            runtime::block_on(local::run(args))
        }
    }
}
