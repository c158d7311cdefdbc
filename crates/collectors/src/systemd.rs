//! `systemd-collector` → `systemdUnitPropertyInformationContextKey`: the properties of the
//! units named in `systemdUnitNameInformationContextKey` ("" = the manager itself), from the
//! host's `systemctl show`.
//!
//! The agent runs in a container with hostPID: when its mount namespace is not the host's,
//! systemctl runs in the host's through `nsenter -t 1 -m` (as Kube Diagnoser did), so it finds
//! the host's systemd bus socket.

use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::{SYSTEMD_UNIT_NAME_INFORMATION, SYSTEMD_UNIT_PROPERTY_INFORMATION};
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use serde::Serialize;

use crate::budget::{Deadline, cap_list, output_budget, truncated_key};

const MAX_UNITS: usize = 50;

/// One unit with its properties, in `systemctl show` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitProperties {
    pub name: String,
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Property {
    pub name: String,
    pub value: String,
}

pub struct SystemdCollector;

impl Processor for SystemdCollector {
    fn name(&self) -> &'static str {
        "systemd-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let units: Vec<String> = abnormal
                .context_as(SYSTEMD_UNIT_NAME_INFORMATION)?
                .ok_or_else(|| {
                    ProcessorError::InvalidInput(format!(
                        "context key {SYSTEMD_UNIT_NAME_INFORMATION} is missing: set it in spec.context to the units to show, e.g. [\"kubelet.service\", \"containerd.service\"] (\"\" = the manager)"
                    ))
                })?;
            if units.len() > MAX_UNITS {
                return Err(ProcessorError::InvalidInput(format!(
                    "{} units named; at most {MAX_UNITS} per Abnormal",
                    units.len()
                )));
            }
            if let Some(bad) = units.iter().find(|u| u.starts_with('-') || u.contains('\0')) {
                return Err(ProcessorError::InvalidInput(format!(
                    "{bad:?} is not a unit name"
                )));
            }
            let host_ns = require_systemd(&ctx.node.proc_root)?;
            let deadline = Deadline::within(ctx.timeout);
            let mut out = Vec::new();
            for unit in &units {
                let props = show(unit, host_ns, deadline.remaining()).await?;
                out.push(UnitProperties {
                    name: unit.clone(),
                    properties: props,
                });
            }
            let (kept, truncation) = cap_list(&out, output_budget(ctx.max_output_bytes));
            let mut message = format!("showed {} systemd units", out.len());
            if let Some(t) = &truncation {
                message.push_str(&format!("; {}", t.reason));
            }
            let mut result = ProcessorOutput::message(message).with_context(
                SYSTEMD_UNIT_PROPERTY_INFORMATION,
                serde_json::Value::Array(kept),
            );
            if let Some(t) = truncation {
                result = result.with_context(
                    &truncated_key(SYSTEMD_UNIT_PROPERTY_INFORMATION),
                    serde_json::to_value(t).unwrap_or_default(),
                );
            }
            Ok(result)
        }
        .boxed()
    }
}

/// Fails clearly unless the host runs systemd. Returns whether systemctl must enter the host's
/// mount namespace.
pub fn require_systemd(proc_root: &Path) -> Result<bool, ProcessorError> {
    let init = std::fs::read_to_string(proc_root.join("1/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    if init != "systemd" {
        return Err(ProcessorError::Failed(format!(
            "this node does not run systemd: its pid 1 is {init:?} (from {}/1/comm); systemd-collector only works on systemd hosts. Use a commandExecutor or the node-collector instead",
            proc_root.display()
        )));
    }
    Ok(crate::mounts::in_other_mount_namespace(proc_root))
}

async fn show(
    unit: &str,
    host_ns: bool,
    timeout: Duration,
) -> Result<Vec<Property>, ProcessorError> {
    let mut cmd = if host_ns {
        let mut c = tokio::process::Command::new("nsenter");
        c.args(["-t", "1", "-m", "--", "systemctl"]);
        c
    } else {
        tokio::process::Command::new("systemctl")
    };
    cmd.args(["show", "--no-pager"]);
    if !unit.is_empty() {
        cmd.arg("--").arg(unit);
    }
    cmd.kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| ProcessorError::Timeout(timeout))?
        .map_err(|e| ProcessorError::Failed(cannot_start(unit, host_ns, &e)))?;
    if !output.status.success() {
        return Err(ProcessorError::Failed(format!(
            "systemctl show {unit}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(parse_show(&String::from_utf8_lossy(&output.stdout)))
}

/// Why `systemctl show` could not even start, and what to do. In the agent's container the
/// program that is missing is `nsenter`, not the host's systemctl.
fn cannot_start(unit: &str, host_ns: bool, e: &std::io::Error) -> String {
    match (host_ns, e.kind()) {
        (true, std::io::ErrorKind::NotFound) => format!(
            "running systemctl show {unit} in the host's mount namespace needs nsenter, which is not in the agent's PATH ({e}); run the agent from an image with nsenter (util-linux) and the SYS_ADMIN capability, or read units with a commandExecutor"
        ),
        (true, std::io::ErrorKind::PermissionDenied) => format!(
            "running nsenter -t 1 -m for systemctl show {unit}: {e}; entering the host's mount namespace needs the SYS_ADMIN capability, which the shipped agent does not have"
        ),
        (false, std::io::ErrorKind::NotFound) => format!(
            "running systemctl show {unit}: {e}; systemctl is not installed where the agent runs"
        ),
        _ => format!("running systemctl show {unit}: {e}"),
    }
}

/// `Key=Value` lines; a value may contain `=`.
pub fn parse_show(text: &str) -> Vec<Property> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| Property {
            name: k.to_owned(),
            value: v.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_output_becomes_properties() {
        let p = parse_show(
            "Id=kubelet.service\nActiveState=failed\nExecStart={ path=/usr/bin/kubelet ; argv[]=/usr/bin/kubelet --a=b }\n",
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "ActiveState");
        assert_eq!(p[1].value, "failed");
        assert!(p[2].value.contains("--a=b"));
    }

    #[test]
    fn a_node_without_systemd_gets_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/comm"), "tini\n").unwrap();
        let err = require_systemd(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not run systemd"), "{err}");
        assert!(err.contains("\"tini\""), "{err}");
    }

    #[test]
    fn a_missing_nsenter_is_named_instead_of_the_hosts_systemctl() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let m = cannot_start("kubelet.service", true, &missing);
        assert!(
            m.contains("needs nsenter") && m.contains("SYS_ADMIN"),
            "{m}"
        );
        let m = cannot_start("kubelet.service", false, &missing);
        assert!(m.contains("systemctl is not installed"), "{m}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(cannot_start("x", true, &denied).contains("SYS_ADMIN"));
    }
}
