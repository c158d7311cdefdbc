//! The configuration files of one run: containerd's, the CNI network's and the kubelet's.
//! Pure functions of the run record, so every choice is visible in one place and testable.

use std::net::Ipv4Addr;
use std::path::Path;

use super::images::PAUSE_IMAGE;
use super::layout::RunRecord;

/// containerd 1.6, everything under the run directory. Each setting here fixes a failure seen
/// on these machines (../shared/reference/control-plane.md, "Level 2").
pub(crate) fn containerd_toml(run: &RunRecord, cni_bin_dir: &Path) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"version = 2
root = {root}
state = {state}
# The opt plugin would install into /opt/containerd; nothing here needs it.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = {socket}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  # This sandbox forbids lowering oom_score_adj; without this runc fails every sandbox with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  # Pod network namespaces live under the run's state directory and go with it.
  netns_mounts_under_state_dir = true
  # kubectl exec/attach/port-forward: a free loopback port per run, not the default 10010.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc's state per run, not in the machine-wide /run/containerd/runc.
        Root = {runc_root}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
    max_conf_num = 1
"#,
        root = q(&run.containerd_root()),
        state = q(&run.containerd_state()),
        socket = q(&run.containerd_socket()),
        pause = toml_string(PAUSE_IMAGE),
        runc_root = q(&run.runc_root()),
        cni_bin = q(cni_bin_dir),
        cni_conf = q(&run.cni_conf_dir()),
    )
}

/// The proxy environment of containerd. containerd 1.6 falls back to the real registry after
/// any mirror, and its hosts.toml has no catch-all; its HTTP client does honour the proxy
/// variables, for every registry and without resolving the registry's name. So every pull goes
/// to a closed loopback port and nothing leaves the machine, not even a DNS query.
pub(crate) fn containerd_env(pull_endpoint: &str) -> Vec<(&'static str, String)> {
    let proxy = format!("http://{pull_endpoint}");
    vec![
        ("HTTP_PROXY", proxy.clone()),
        ("HTTPS_PROXY", proxy.clone()),
        ("http_proxy", proxy.clone()),
        ("https_proxy", proxy),
        ("NO_PROXY", String::new()),
        ("no_proxy", String::new()),
    ]
}

/// A bridge network of the run's own: its bridge, subnet, IPAM state and name. No masquerading
/// and no port mapping, so the plugins write no iptables rules a killed run could leave behind.
pub(crate) fn cni_conflist(run: &RunRecord) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": run.cni_network(),
        "plugins": [{
            "type": "bridge",
            "bridge": run.bridge(),
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": run.pod_subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": run.ipam_dir(),
            }
        }]
    })
    .to_string()
}

/// The kubelet's configuration. Ports: the API on a free loopback port, healthz and the
/// read-only port off, so runs never collide. Test-only security: anonymous access with
/// AlwaysAllow, reachable from this machine's loopback only.
pub(crate) fn kubelet_config(run: &RunRecord, address: Ipv4Addr, port: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "{address}"
port: {port}
readOnlyPort: 0
healthzPort: 0
# cgroup v1 without systemd managing the cgroups of this machine.
cgroupDriver: cgroupfs
# The run's own cgroup: pods go below it, and two runs never garbage-collect each other's pods.
cgroupRoot: "/{cgroup}"
failSwapOn: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
# The KUBE-* iptables chains are machine-wide and nothing here needs them.
makeIPTablesUtilChains: false
# The local images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Evict only when the machine is really short, not because a shared disk is 85% full.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
# The first Ready status reaches the API ~4 s sooner than with the default 10s. The kubelet
# only writes when the status changed, so the cost is ~2% of a core for computing it.
nodeStatusUpdateFrequency: "1s"
"#,
        cgroup = run.cgroup(),
    )
}

/// kube-proxy's configuration: iptables mode, the run's kubeconfig and pod subnet, loopback
/// ports of the run's own, and nothing machine-wide it can leave alone. kube-proxy 1.20 would
/// otherwise raise nf_conntrack_max and its TCP timeouts (conntrack zeros: leave them), lower
/// its own oom_score_adj (which this sandbox forbids) and hold NodePorts on every address
/// (only the run's bridge here). What it cannot be told to leave alone is in kube_proxy.rs.
pub(crate) fn kube_proxy_config(
    run: &RunRecord,
    kubeconfig: &Path,
    node_name: &str,
    healthz_port: u16,
    metrics_port: u16,
    masquerade_all: bool,
) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: "{node_name}"
# Traffic from outside the pod subnet to a ClusterIP is masqueraded, so replies come back
# through the node.
clusterCIDR: "{subnet}"
healthzBindAddress: "127.0.0.1:{healthz_port}"
metricsBindAddress: "127.0.0.1:{metrics_port}"
nodePortAddresses: ["{subnet}"]
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  # Only without bridge netfilter: a pod reaching a Service whose endpoint is on the same
  # bridge would otherwise get the reply straight from the endpoint's address.
  masqueradeAll: {masquerade_all}
  syncPeriod: 30s
  minSyncPeriod: 0s
"#,
        kubeconfig = toml_string(&kubeconfig.to_string_lossy()),
        subnet = run.pod_subnet,
    )
}

fn toml_string(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunRecord {
        RunRecord::new(
            "/tmp/kdiag-testenv/cluster-1-0".into(),
            "0a1b2c".into(),
            "10.201.7.0/24".into(),
        )
    }

    #[test]
    fn containerd_keeps_every_path_under_the_run_directory() {
        let toml = containerd_toml(&run(), Path::new("/usr/lib/cni"));
        for line in toml.lines() {
            let line = line.trim();
            if let Some((_, value)) = line.split_once(" = \"/")
                && !line.starts_with("bin_dir")
            {
                assert!(
                    value.starts_with("tmp/kdiag-testenv/cluster-1-0/"),
                    "{line} escapes the run directory"
                );
            }
        }
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("netns_mounts_under_state_dir = true"));
        assert!(toml.contains("sandbox_image = \"kdiag.local/pause:v1\""));
    }

    #[test]
    fn every_pull_goes_through_the_closed_loopback_proxy() {
        let env = containerd_env("127.0.0.1:9");
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert!(env.contains(&(var, "http://127.0.0.1:9".into())), "{var}");
        }
        assert!(env.contains(&("NO_PROXY", String::new())));
    }

    #[test]
    fn the_pod_network_is_named_after_the_run() {
        let conf: serde_json::Value = serde_json::from_str(&cni_conflist(&run())).unwrap();
        assert_eq!(conf["name"], "kdiag-0a1b2c");
        assert_eq!(conf["plugins"][0]["bridge"], "kdiag0a1b2c");
        assert_eq!(conf["plugins"][0]["ipMasq"], false);
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.201.7.0/24"
        );
    }

    #[test]
    fn kube_proxy_uses_iptables_the_run_subnet_and_its_own_loopback_ports() {
        let yaml = kube_proxy_config(
            &run(),
            Path::new("/tmp/kdiag-testenv/apiserver-1-0/kubeconfig"),
            "node-a",
            20001,
            20002,
            false,
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["mode"], "iptables");
        assert_eq!(v["clusterCIDR"], "10.201.7.0/24");
        assert_eq!(
            v["clientConnection"]["kubeconfig"],
            "/tmp/kdiag-testenv/apiserver-1-0/kubeconfig"
        );
        assert_eq!(v["healthzBindAddress"], "127.0.0.1:20001");
        assert_eq!(v["metricsBindAddress"], "127.0.0.1:20002");
        assert_eq!(v["nodePortAddresses"][0], "10.201.7.0/24");
        assert_eq!(v["conntrack"]["maxPerCore"], 0);
        assert_eq!(v["iptables"]["masqueradeAll"], false);
    }

    #[test]
    fn the_kubelet_config_is_valid_yaml_with_the_run_cgroup() {
        let yaml = kubelet_config(&run(), Ipv4Addr::LOCALHOST, 12345);
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["cgroupRoot"], "/kdiag-0a1b2c");
        assert_eq!(v["port"], 12345);
        assert_eq!(v["readOnlyPort"], 0);
        assert_eq!(v["healthzPort"], 0);
        assert_eq!(v["address"], "127.0.0.1");
    }
}
