//! What the kdiag binaries share: the command line ([`cli`]) and the wiring of each process
//! ([`commands`]). `kdiag` runs every role; `kdiag-controller` and `kdiag-agent` run one each,
//! and link only that role's code, which keeps what each process maps small (docs/performance.md).

pub mod cli;
pub mod commands;
