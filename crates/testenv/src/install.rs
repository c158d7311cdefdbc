//! kdiag installed in a [`Cluster`] the way users install it: `kubectl apply -k` of
//! config/deploy through the test overlay (crates/testenv/overlay, which changes only what
//! differs on the test node), then `kubectl rollout status` of both workloads. The in-cluster
//! test (tests/in_cluster.rs) and `kdiag local --in-cluster` both install with this.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{Cluster, TestEnvError};

/// The kdiag-controller Service's ClusterIP in the test overlay: the last of the apiserver's
/// service range (10.0.0.0/24), which nothing else asks for. The test cluster has no DNS, so
/// checker pods report to this address instead of the Service's name.
pub const CONTROLLER_IP: &str = "10.0.0.254";
/// The namespace config/deploy installs into.
pub const NAMESPACE: &str = "kube-diagnoser";

const OVERLAY: &str = include_str!("../overlay/kustomization.yaml");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// config/deploy, as kustomize and `kubectl wait -f` are given it.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("config/deploy")
}

/// `path` relative to `from` (both absolute), as kustomize needs for a resource outside the
/// kustomization's directory.
fn relative(path: &Path, from: &Path) -> PathBuf {
    let (p, f): (Vec<_>, Vec<_>) = (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestEnvError + '_ {
    move |source| TestEnvError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The test overlay, filled in for this cluster, in its run directory; the agent serves on
/// `agent_port` (it shares the host network with whatever else runs on the machine).
pub fn render_overlay(c: &Cluster, agent_port: u16) -> Result<PathBuf, TestEnvError> {
    let dir = c.run_dir().join("kdiag-overlay");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dir = dir.canonicalize().map_err(io(&dir))?;
    let deploy = deploy_dir();
    let deploy = deploy.canonicalize().map_err(io(&deploy))?;
    // Without the header, which explains the values.
    let body: String = OVERLAY
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = body
        .replace("${DEPLOY}", &relative(&deploy, &dir).to_string_lossy())
        .replace("${KUBELET_ROOT}", &c.kubelet_root_dir().to_string_lossy())
        .replace("${CRI_SOCKET}", &c.cri_socket().to_string_lossy())
        .replace("${RUN_DIR}", &c.run_dir().to_string_lossy())
        .replace("${AGENT_PORT}", &agent_port.to_string())
        .replace("${CONTROLLER_IP}", CONTROLLER_IP);
    if let Some(at) = text.find("${") {
        return Err(TestEnvError::CommandFailed {
            command: "render the test overlay".into(),
            output: format!("an unfilled value at byte {at} of:\n{text}"),
        });
    }
    let file = dir.join("kustomization.yaml");
    std::fs::write(&file, text).map_err(io(&file))?;
    Ok(dir)
}

fn run(mut cmd: Command) -> Result<Output, TestEnvError> {
    cmd.output().map_err(|source| TestEnvError::Spawn {
        process: format!("{cmd:?}"),
        source,
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(what: &str, out: Output) -> Result<Output, TestEnvError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestEnvError::CommandFailed {
            command: what.into(),
            output: text(&out),
        })
    }
}

/// `kubectl apply -k overlay` as docs/install.md says: the first apply creates the CRDs and
/// reports the objects of their kinds (kubectl maps every object before applying any); once
/// the CRDs are Established and the controller is Ready the same command applies them (the
/// first apply also installed the admission webhook's configuration, which fails closed: the
/// registrations and sources of the second apply need the controller serving it). Returns how
/// many applies it took.
pub fn apply(c: &Cluster, overlay: &Path, timeout: Duration) -> Result<u32, TestEnvError> {
    for attempt in 1..=2 {
        let mut apply = c.kubectl();
        apply.arg("apply").arg("-k").arg(overlay);
        let out = run(apply)?;
        if out.status.success() {
            return Ok(attempt);
        }
        if attempt == 2 || !text(&out).contains("ensure CRDs are installed first") {
            return check(
                &format!("kubectl apply -k {} (run {attempt})", overlay.display()),
                out,
            )
            .map(|_| attempt);
        }
        let mut wait = c.kubectl();
        wait.args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
            .arg(repo_root().join("config/crd"));
        check("kubectl wait for the CRDs to be Established", run(wait)?)?;
        rollout_status(c, "deploy/kdiag-controller", timeout)?;
    }
    unreachable!("the loop returns on its second run")
}

/// `kubectl rollout status` of the controller Deployment and the agent DaemonSet.
pub fn wait_ready(c: &Cluster, timeout: Duration) -> Result<(), TestEnvError> {
    for workload in ["deploy/kdiag-controller", "ds/kdiag-agent"] {
        rollout_status(c, workload, timeout)?;
    }
    Ok(())
}

fn rollout_status(c: &Cluster, workload: &str, timeout: Duration) -> Result<(), TestEnvError> {
    let mut status = c.kubectl();
    status.args([
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        workload,
        &format!("--timeout={}s", timeout.as_secs()),
    ]);
    check(&format!("kubectl rollout status {workload}"), run(status)?).map(|_| ())
}

/// `kubectl delete -k overlay`: everything the install made, CRDs (and so every Abnormal)
/// included.
pub fn uninstall(c: &Cluster, overlay: &Path) -> Result<(), TestEnvError> {
    let mut delete = c.kubectl();
    delete
        .args(["delete", "--ignore-not-found", "-k"])
        .arg(overlay);
    check(
        &format!("kubectl delete -k {}", overlay.display()),
        run(delete)?,
    )
    .map(|_| ())
}

/// A free port on the host's loopback, for the agent's server (on the host network).
pub fn free_port() -> Result<u16, TestEnvError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io(Path::new("127.0.0.1:0")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(io(Path::new("127.0.0.1:0")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_outside_the_overlay_is_reached_with_dot_dots() {
        assert_eq!(
            relative(
                Path::new("/repo/config/deploy"),
                Path::new("/run/x/kdiag-overlay")
            ),
            PathBuf::from("../../../repo/config/deploy")
        );
        assert_eq!(
            relative(Path::new("/a/b/c"), Path::new("/a/b")),
            PathBuf::from("c")
        );
    }
}
