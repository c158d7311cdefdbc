//! One module per subcommand.

pub mod agent;
pub mod controller;
mod crd;
pub mod hub;
#[cfg(feature = "local")]
mod local;

use std::process::ExitCode;

use kdiag_runtime::process;

use crate::cli::{Cli, Command, LogFormat};

/// Any error a command ends with; each message says what to do. The libraries' errors are typed
/// (and decide retries where they happen); at the top of the binary they are only printed.
pub type CommandError = anyhow::Error;

pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match cli.command {
        Command::Crd(args) => crd::run(args),
        Command::Controller(args) => run_controller(*args, cli.log_format),
        Command::Agent(args) => run_agent(args, cli.log_format),
        Command::Diag(args) => Ok(kdiag_cli::run(args)?),
        Command::Hub(args) => {
            process::init_logging(cli.log_format == LogFormat::Json);
            process::block_on(hub::run(args))
        }
        #[cfg(feature = "local")]
        Command::Local(args) => {
            process::init_logging(cli.log_format == LogFormat::Json);
            process::block_on(local::run(args))
        }
    }
}

/// `kdiag controller`, also the whole of the `kdiag-controller` binary.
pub fn run_controller(
    args: crate::cli::ControllerArgs,
    log_format: LogFormat,
) -> Result<ExitCode, CommandError> {
    process::init_logging(log_format == LogFormat::Json);
    process::block_on(controller::run(args))
}

/// `kdiag agent`, also the whole of the `kdiag-agent` binary.
pub fn run_agent(
    args: crate::cli::AgentArgs,
    log_format: LogFormat,
) -> Result<ExitCode, CommandError> {
    process::init_logging(log_format == LogFormat::Json);
    process::block_on(agent::run(args))
}
