//! One module per subcommand.

mod crd;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Any error a command ends with; each message says what to do.
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;

pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match cli.command {
        Command::Crd(args) => crd::run(args),
    }
}
