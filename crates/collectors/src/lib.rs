//! Built-in information collectors. Each reads real node or cluster data and writes it to
//! status.context under its Kube Diagnoser key (or a kdiag key for the new ones).
//!
//! Every collector honours a time budget (most of `ctx.timeout`) and caps its output below
//! `ctx.max_output_bytes`, saying so when it had to cut. One unreadable /proc entry or
//! directory is recorded and skipped, never fatal.
//!
//! The building blocks are public so the diagnosers use the same code: [`process::scan`]
//! (/proc), [`cgroup`] (pod and container of a cgroup path), [`du`] (parallel disk usage),
//! [`mounts`], [`cri`] (the CRI client), [`kernel_log`] and [`quantity`] (resource quantities).

pub mod budget;
pub mod certs;
/// Which pod and container a cgroup path names (shared with the signal recoverer).
pub use kdiag_procstat::cgroup;
pub mod cri;
pub mod du;
pub mod file_status;
pub mod kernel_log;
pub mod listener;
pub mod mounts;
pub mod node;
pub mod pids;
pub mod pod;
pub mod pod_detail;
pub mod process;
pub mod quantity;
pub mod served_certs;
pub mod systemd;

use std::sync::Arc;

use kdiag_api::plugin::Processor;

pub use cri::ContainerCollector;
pub use file_status::FileStatusCollector;
pub use kernel_log::KernelLogCollector;
pub use node::NodeCollector;
pub use pod::PodCollector;
pub use pod_detail::PodDetailCollector;
pub use process::ProcessCollector;
pub use systemd::SystemdCollector;

/// Every built-in collector.
pub fn all() -> Vec<Arc<dyn Processor>> {
    vec![
        Arc::new(PodCollector),
        Arc::new(PodDetailCollector),
        Arc::new(ContainerCollector),
        Arc::new(ProcessCollector),
        Arc::new(SystemdCollector),
        Arc::new(FileStatusCollector),
        Arc::new(KernelLogCollector),
        Arc::new(NodeCollector),
    ]
}

/// The names of [`all`], by static calls: a process that only needs the names (the controller,
/// admitting an Abnormal that names a built-in) then does not link the collectors' code.
pub fn names() -> Vec<&'static str> {
    vec![
        PodCollector.name(),
        PodDetailCollector.name(),
        ContainerCollector.name(),
        ProcessCollector.name(),
        SystemdCollector.name(),
        FileStatusCollector.name(),
        KernelLogCollector.name(),
        NodeCollector.name(),
    ]
}
