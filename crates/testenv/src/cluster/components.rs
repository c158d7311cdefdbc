//! Starting the node's processes: containerd, kube-controller-manager, kube-scheduler and the
//! kubelet, each with its log in the run directory.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::host::PULL_ENDPOINT;
use super::images::PAUSE_IMAGE;
use super::layout::RunRecord;
use super::{cgroups, config};
use crate::binaries::{Binaries, NodeBinaries};
use crate::process::{ManagedProcess, tail};
use crate::{ControlPlane, TestEnvError};

/// The containerd namespace the CRI plugin, and so the kubelet, uses.
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";
const CONTAINERD_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes the run's containerd and CNI configuration and starts containerd in the run's
/// runtime cgroup.
pub(crate) fn start_containerd(
    run: &RunRecord,
    bins: &NodeBinaries,
) -> Result<ManagedProcess, TestEnvError> {
    let conf_dir = run.cni_conf_dir();
    std::fs::create_dir_all(&conf_dir).map_err(TestEnvError::io(&conf_dir))?;
    let conflist = conf_dir.join("10-kdiag.conflist");
    std::fs::write(&conflist, config::cni_conflist(run)).map_err(TestEnvError::io(&conflist))?;
    let toml = run.containerd_config();
    std::fs::write(&toml, config::containerd_toml(run, &bins.cni_bin_dir))
        .map_err(TestEnvError::io(&toml))?;

    // containerd finds its shim, and the shim finds runc, through PATH.
    let mut path_dirs: Vec<_> = [&bins.containerd_shim, &bins.runc]
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    path_dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(path_dirs).map_err(|e| TestEnvError::Other(e.to_string()))?;

    let process = ManagedProcess::spawn_with(
        "containerd",
        &bins.containerd,
        &["--config".into(), toml.to_string_lossy().into_owned()],
        &run.log("containerd"),
        |cmd| {
            cmd.env("PATH", &path);
            for (k, v) in config::containerd_env(PULL_ENDPOINT) {
                cmd.env(k, v);
            }
        },
    )?;
    // Before containerd can start any shim (that needs the kubelet, which is not running yet),
    // so every shim and container inherits the run's cgroup.
    cgroups::move_process(&run.runtime_cgroup(), process.pid())?;
    Ok(process)
}

/// A `ctr` command for the run's containerd, in the CRI namespace.
pub(crate) fn ctr(run: &RunRecord, bins: &NodeBinaries) -> Command {
    let mut cmd = Command::new(&bins.ctr);
    cmd.arg("--address")
        .arg(run.containerd_socket())
        .args(["--namespace", CONTAINERD_NAMESPACE]);
    cmd
}

/// Waits until containerd answers on its socket.
pub(crate) async fn wait_for_containerd(
    run: &RunRecord,
    bins: &NodeBinaries,
    containerd: &mut ManagedProcess,
) -> Result<(), TestEnvError> {
    let start = Instant::now();
    while start.elapsed() < CONTAINERD_READY_TIMEOUT {
        containerd.check_running()?;
        if run.containerd_socket().exists()
            && tokio::process::Command::from(ctr(run, bins))
                .arg("version")
                .kill_on_drop(true)
                .output()
                .await
                .is_ok_and(|o| o.status.success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(TestEnvError::NotReady {
        what: "containerd".into(),
        seconds: CONTAINERD_READY_TIMEOUT.as_secs(),
        log: run.log("containerd"),
        tail: tail(&run.log("containerd"), 30),
    })
}

/// Imports a docker-archive into the run's containerd and unpacks it for the CRI plugin.
pub(crate) fn import_images(
    run: &RunRecord,
    bins: &NodeBinaries,
    archive: &Path,
) -> Result<(), TestEnvError> {
    let mut cmd = ctr(run, bins);
    cmd.args(["images", "import"]).arg(archive);
    let out = cmd.output().map_err(|source| TestEnvError::Spawn {
        process: "ctr images import".into(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestEnvError::CommandFailed {
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

pub(crate) fn start_controller_manager(
    run: &RunRecord,
    bins: &Binaries,
    cp: &ControlPlane,
    extra_args: &[String],
) -> Result<ManagedProcess, TestEnvError> {
    let mut args = vec![
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        // Node IPAM needs a cluster CIDR; the CNI bridge allocates pod addresses itself.
        "--controllers=*,-nodeipam".into(),
        format!(
            "--service-account-private-key-file={}",
            cp.service_account_key_path().display()
        ),
        format!("--root-ca-file={}", cp.ca_path().display()),
        "--use-service-account-credentials=false".into(),
        "--leader-elect=false".into(),
        // No serving ports: they would collide between runs and nothing reads them.
        "--port=0".into(),
        "--secure-port=0".into(),
        // It creates this directory; keep it in the run, not in /usr/libexec.
        format!(
            "--flex-volume-plugin-dir={}",
            run.volume_plugin_dir().display()
        ),
        "--v=1".into(),
    ];
    args.extend(extra_args.iter().cloned());
    ManagedProcess::spawn(
        "kube-controller-manager",
        &bins.kube_controller_manager,
        &args,
        &run.log("kube-controller-manager"),
    )
}

pub(crate) fn start_scheduler(
    run: &RunRecord,
    bins: &Binaries,
    cp: &ControlPlane,
) -> Result<ManagedProcess, TestEnvError> {
    let args = vec![
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        "--leader-elect=false".into(),
        "--port=0".into(),
        "--secure-port=0".into(),
        "--v=1".into(),
    ];
    ManagedProcess::spawn(
        "kube-scheduler",
        &bins.kube_scheduler,
        &args,
        &run.log("kube-scheduler"),
    )
}

/// Puts a serving certificate where the kubelet looks for its own (`<root>/pki/kubelet.crt` and
/// `kubelet.key`, its `--cert-dir`): finding both, it serves with them.
pub(crate) fn install_kubelet_serving_certificate(
    root: &std::path::Path,
    cert: &str,
    key: &str,
) -> Result<(), TestEnvError> {
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).map_err(TestEnvError::io(&pki))?;
    for (name, pem) in [("kubelet.crt", cert), ("kubelet.key", key)] {
        let path = pki.join(name);
        std::fs::write(&path, pem).map_err(TestEnvError::io(&path))?;
    }
    Ok(())
}

/// A CA and an apiserver serving certificate signed by it that expires `lifetime` from now,
/// written under `dir`; returns the apiserver flags that serve it. The file holds the
/// certificate then the CA, as the apiserver's own self-signed pair does, so what reads it as
/// the cluster's CA trusts it. Names: loopback, `extra_hosts`, the `kubernetes` Service's
/// ClusterIP and DNS names.
pub(crate) fn apiserver_serving_certificate(
    dir: &std::path::Path,
    extra_hosts: &[String],
    lifetime: std::time::Duration,
) -> Result<Vec<String>, TestEnvError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let fail = |what: &str, e: rcgen::Error| {
        TestEnvError::Other(format!("generating the apiserver's {what}: {e}"))
    };
    let now = std::time::SystemTime::now();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kdiag-test-apiserver-ca");
    ca.not_before = (now - std::time::Duration::from_secs(3600)).into();
    ca.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86400)).into();
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", e))?;

    let mut names: Vec<String> = [
        "127.0.0.1",
        "10.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(String::from)
    .into();
    names.extend(extra_hosts.iter().cloned());
    let mut leaf = CertificateParams::new(names).map_err(|e| fail("names", e))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kdiag-test-apiserver");
    leaf.not_before = (now - std::time::Duration::from_secs(3600)).into();
    leaf.not_after = (now + lifetime).into();
    let key = KeyPair::generate().map_err(|e| fail("key", e))?;
    let cert = leaf
        .signed_by(&key, &Issuer::new(ca, ca_key))
        .map_err(|e| fail("certificate", e))?;

    let (cert_path, key_path) = (
        dir.join("apiserver-serving.crt"),
        dir.join("apiserver-serving.key"),
    );
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_cert.pem()))
        .map_err(TestEnvError::io(&cert_path))?;
    std::fs::write(&key_path, key.serialize_pem()).map_err(TestEnvError::io(&key_path))?;
    Ok(vec![
        format!("--tls-cert-file={}", cert_path.display()),
        format!("--tls-private-key-file={}", key_path.display()),
    ])
}

pub(crate) fn start_kubelet(
    run: &RunRecord,
    bins: &Binaries,
    cp: &ControlPlane,
    node_name: &str,
    address: Ipv4Addr,
    port: u16,
    extra_args: &[String],
) -> Result<ManagedProcess, TestEnvError> {
    let conf = run.kubelet_config();
    std::fs::write(&conf, config::kubelet_config(run, address, port))
        .map_err(TestEnvError::io(&conf))?;
    let root = run.kubelet_root();
    let mut args = vec![
        format!("--config={}", conf.display()),
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        format!("--root-dir={}", root.display()),
        format!("--cert-dir={}", root.join("pki").display()),
        "--container-runtime=remote".into(),
        format!(
            "--container-runtime-endpoint=unix://{}",
            run.containerd_socket().display()
        ),
        format!("--volume-plugin-dir={}", run.volume_plugin_dir().display()),
        format!("--pod-infra-container-image={PAUSE_IMAGE}"),
        format!("--hostname-override={node_name}"),
        // cAdvisor's own containerd client, which defaults to the machine's
        // /run/containerd/containerd.sock. (Its CRI-O client still waits 5 s for
        // /var/run/crio/crio.sock at every start: a hard-coded path, nothing to do about it.)
        format!("--containerd={}", run.containerd_socket().display()),
        "--v=1".into(),
    ];
    args.extend(extra_args.iter().cloned());
    ManagedProcess::spawn("kubelet", &bins.kubelet, &args, &run.log("kubelet"))
}
