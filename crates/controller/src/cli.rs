//! The command line: what each subcommand takes.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kdiag: turns a failed probe, a warning event or an alert into a root cause with evidence.
#[derive(Parser, Debug)]
#[command(name = "kdiag", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions kdiag serves, as YAML (`kubectl apply -f -` takes it).
    Crd(CrdArgs),
}

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}
