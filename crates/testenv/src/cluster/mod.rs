//! Level 2: a real single-node cluster — etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kubelet 1.20.2 with containerd, runc and a CNI bridge — where pods really
//! run, crash, get OOM-killed, fail probes and fail image pulls.
//!
//! Per run, so several runs can share a machine: loopback ports, the run directory (containerd's
//! root, state and socket, runc's state, the kubelet's root, certificates and logs), the cgroup
//! `/kdiag-<id>`, the CNI bridge `kdiag<id>` and its /24, the CNI network name. Every run's node
//! is named after the machine's hostname; that is not a conflict, because each run has its own
//! apiserver.

mod cgroups;
mod components;
mod config;
mod host;
mod images;
mod kube_proxy;
mod layout;
mod mounts;
mod tar;
mod teardown;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tokio::sync::OnceCell;

pub use components::CONTAINERD_NAMESPACE;
pub use images::{BUSYBOX_IMAGE, FileContents, ImageFile, ImageSpec, PAUSE_IMAGE};

use crate::binaries::{Binaries, NodeBinaries};
use crate::control_plane::{free_ports, random_hex};
use crate::process::{ManagedProcess, at_exit, run_cleanup, tail};
use crate::{ControlPlane, TestEnvError, rundir};
use images::BaseImages;
use layout::{RecordedProcess, RunRecord};

pub(crate) const RUN_KIND: &str = "cluster";
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A running single-node cluster. Stopped completely when dropped, when [`Cluster::stop`] is
/// called, or — for the shared instance — when the test binary exits, even after a panic.
///
/// It dereferences to its [`ControlPlane`], so `cluster.client()`, `cluster.kubectl()`,
/// `cluster.create_namespace(..)` work as on level 1 (a namespace is returned once pods can be
/// created in it).
pub struct Cluster {
    // Field order matters only for readers: Drop stops the node first, then the control plane
    // goes when this field is dropped.
    control_plane: ControlPlane,
    inner: Arc<Inner>,
    cleanup_key: u64,
}

struct Inner {
    run: Mutex<RunRecord>,
    processes: Mutex<Vec<ManagedProcess>>,
    kubeconfig: PathBuf,
    node_name: String,
    kubelet: SocketAddr,
    base_images: BaseImages,
    /// The machine's kube-proxy slot, while this run holds it.
    kube_proxy_claim: Mutex<Option<kube_proxy::Claim>>,
    phases: Mutex<Vec<(String, Duration)>>,
    /// What the stop could not remove, once it ran.
    stop_problems: Mutex<Option<Vec<String>>>,
}

/// The cluster shared by every test of this test binary. Started on first use.
///
/// Panics with the reason when it cannot start: a test that needs a cluster fails, it is not
/// skipped.
pub async fn cluster() -> &'static Cluster {
    // The failure is kept too: every later test fails at once with the same reason instead of
    // trying another start.
    static SHARED: OnceCell<Result<Cluster, String>> = OnceCell::const_new();
    match SHARED
        .get_or_init(|| async { Cluster::start().await.map_err(|e| e.to_string()) })
        .await
    {
        Ok(c) => c,
        Err(e) => panic!("kdiag-testenv: could not start the test cluster: {e}"),
    }
}

/// What a test may change about a cluster it starts itself.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Extra kube-apiserver flags.
    pub apiserver_args: Vec<String>,
    /// Extra kubelet flags, after the built-in ones (a repeated flag wins).
    pub kubelet_args: Vec<String>,
    /// Extra kube-controller-manager flags, after the built-in ones: a shorter
    /// `--node-monitor-grace-period`, for a test that waits for a node to turn NotReady.
    pub controller_manager_args: Vec<String>,
    /// Puts the kubelet's root directory (its filesystem is the node's `nodefs`: pod volumes
    /// and emptyDirs) on a tmpfs of this many MiB of its own, so a test can fill it and make
    /// disk pressure real without touching the machine's disk.
    pub kubelet_root_mib: Option<u64>,
    /// With [`Self::kubelet_root_mib`]: that tmpfs holds at most this many inodes (files and
    /// directories), so a pod writing many small files makes inode pressure real.
    pub kubelet_root_inodes: Option<u64>,
    /// The kubelet's serving certificate and key (PEM), put where it looks for its own
    /// (`<root>/pki/kubelet.crt`, `.key`) before it starts: finding them, it serves with them
    /// instead of making a self-signed pair. An expired one makes an expired kubelet
    /// certificate real.
    pub kubelet_serving_certificate: Option<(String, String)>,
    /// The apiserver serves a certificate that expires this long after the start (signed by a
    /// CA of the run's own, which kubeconfigs then trust), instead of the one-year certificate it
    /// makes itself: a short one makes an apiserver certificate about to expire real.
    pub apiserver_certificate_lifetime: Option<std::time::Duration>,
    /// Runs kube-proxy (iptables mode): ClusterIP Services work from pods and from the node,
    /// and pods reach the apiserver through the `kubernetes` Service, as in-cluster clients do.
    /// The apiserver then listens on the node's bridge address ([`Cluster::node_ip`]) instead
    /// of loopback. kube-proxy's iptables chains are machine-wide, so one such cluster runs on a
    /// machine at a time: a second start waits until the first stops. Removed on stop, chains
    /// and sysctl included.
    pub kube_proxy: bool,
}

/// Finishes the runs of processes that died without stopping their cluster (their shims,
/// containers, mounts, bridge, cgroup and directory). [`Cluster::start`] does this first; call
/// it alone to clean a machine. Returns what could not be removed.
pub fn cleanup_stale_runs() -> Vec<String> {
    teardown::cleanup_stale()
}

impl Cluster {
    /// Starts a cluster of its own and returns once its node is Ready and untainted and pods
    /// can be created in the `default` namespace.
    pub async fn start() -> Result<Self, TestEnvError> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Like [`start`](Self::start), with extra flags for the apiserver or the kubelet.
    pub async fn start_with(options: ClusterOptions) -> Result<Self, TestEnvError> {
        crate::install_crypto_provider();
        let begin = Instant::now();
        // Host checks (a DNS lookup, a connect with a timeout), the cleanup of crashed runs
        // (kubectl, waits) and building the images (busybox, tar, sha256) all block: they run on
        // the blocking pool, not on the test's runtime thread.
        let host = tokio::task::spawn_blocking(move || -> Result<_, TestEnvError> {
            let (bins, node_bins) = preflight()?;
            if options.kube_proxy {
                Binaries::require(&bins.kube_proxy)?;
            }
            let (node_name, kubelet_ip) = host::node_identity()?;
            for problem in teardown::cleanup_stale() {
                eprintln!("kdiag-testenv: cleaning up an earlier run: {problem}");
            }
            let mut phases = vec![(
                "preflight and stale-run cleanup".to_owned(),
                begin.elapsed(),
            )];
            let t = Instant::now();
            let base_images = images::base_images(&node_bins)?;
            phases.push((
                match base_images.built_in {
                    Some(_) => "local images (built)".to_owned(),
                    None => "local images (cached)".to_owned(),
                },
                t.elapsed(),
            ));
            Ok((bins, node_bins, node_name, kubelet_ip, phases, base_images))
        });
        let (bins, node_bins, node_name, kubelet_ip, mut phases, base_images) = host
            .await
            .map_err(|e| TestEnvError::Other(format!("cluster preflight task: {e}")))??;

        let taken: Vec<String> = rundir::live(RUN_KIND)
            .iter()
            .filter_map(|d| RunRecord::read(d))
            .map(|r| r.pod_subnet)
            .collect();
        let pod_subnet = host::choose_pod_subnet(&taken)?;
        let [kubelet_port] = free_ports()?;
        let kubelet = SocketAddr::from((kubelet_ip, kubelet_port));
        let mut run = RunRecord::new(rundir::create(RUN_KIND)?, random_hex(3), pod_subnet);
        run.kube_proxy = options.kube_proxy;
        // Written before anything it names exists, so a crash from here on is cleaned up by the
        // next start.
        run.write()?;

        let t = Instant::now();
        let (control_plane, claim) = match start_control_plane(&run, &node_bins, &options).await {
            Ok(started) => started,
            Err(e) => {
                for problem in teardown::stop(&run, None) {
                    eprintln!("kdiag-testenv: {problem}");
                }
                return Err(e);
            }
        };
        phases.push(("etcd + kube-apiserver".into(), t.elapsed()));

        let inner = Arc::new(Inner {
            run: Mutex::new(run),
            processes: Mutex::new(Vec::new()),
            kubeconfig: control_plane.kubeconfig_path().to_owned(),
            node_name,
            kubelet,
            base_images,
            kube_proxy_claim: Mutex::new(claim),
            phases: Mutex::new(phases),
            stop_problems: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        // Registered after the control plane's, so at exit it runs first.
        let cleanup_key = at_exit(move || {
            if let Some(inner) = weak.upgrade() {
                for problem in inner.stop() {
                    eprintln!("kdiag-testenv: {problem}");
                }
            }
        });
        // From here on, dropping `cluster` on an error stops whatever started.
        let cluster = Self {
            control_plane,
            inner,
            cleanup_key,
        };
        cluster.launch(&bins, &node_bins, &options).await?;
        cluster.phase("total", begin.elapsed());
        Ok(cluster)
    }

    async fn launch(
        &self,
        bins: &Binaries,
        node_bins: &NodeBinaries,
        options: &ClusterOptions,
    ) -> Result<(), TestEnvError> {
        let run = self.run();
        let cp = &self.control_plane;

        // The controllers need only the API; they get going while the node starts.
        self.push(components::start_controller_manager(
            &run,
            bins,
            cp,
            &options.controller_manager_args,
        )?)?;
        self.push(components::start_scheduler(&run, bins, cp)?)?;

        let t = Instant::now();
        cgroups::create(&run.runtime_cgroup())?;
        let mut containerd = components::start_containerd(&run, node_bins)?;
        let waited = components::wait_for_containerd(&run, node_bins, &mut containerd).await;
        self.push(containerd)?;
        waited?;
        self.phase("containerd", t.elapsed());

        let t = Instant::now();
        let (r, b, archive) = (
            run.clone(),
            node_bins.clone(),
            self.inner.base_images.archive.clone(),
        );
        tokio::task::spawn_blocking(move || components::import_images(&r, &b, &archive))
            .await
            .map_err(|e| TestEnvError::Other(format!("image import task: {e}")))??;
        self.phase("image import", t.elapsed());

        if let Some(mib) = options.kubelet_root_mib {
            mounts::mount_tmpfs(
                &run.kubelet_root(),
                mib,
                options.kubelet_root_inodes,
                &format!("kdiag-nodefs-{}", run.id),
            )?;
        }
        if let Some((cert, key)) = &options.kubelet_serving_certificate {
            components::install_kubelet_serving_certificate(&run.kubelet_root(), cert, key)?;
        }
        let t = Instant::now();
        host::save_sysctls_once()?;
        self.push(components::start_kubelet(
            &run,
            bins,
            cp,
            &self.inner.node_name,
            match self.inner.kubelet.ip() {
                std::net::IpAddr::V4(v4) => v4,
                std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
            },
            self.inner.kubelet.port(),
            &options.kubelet_args,
        )?)?;
        self.wait_for_node().await?;
        self.phase("kubelet to node Ready", t.elapsed());

        let t = Instant::now();
        cp.wait_for_default_service_account("default").await?;
        cp.set_controllers_running();
        self.phase("default ServiceAccount token", t.elapsed());

        if options.kube_proxy {
            let t = Instant::now();
            let mut proxy = kube_proxy::start(&run, bins, cp, &self.inner.node_name)?;
            let endpoint = cp.url().trim_start_matches("https://").to_owned();
            let waited = kube_proxy::wait_ready(&run, &mut proxy, &endpoint).await;
            self.push(proxy)?;
            waited?;
            self.phase("kube-proxy to first sync", t.elapsed());
        }
        Ok(())
    }

    fn run(&self) -> RunRecord {
        self.inner
            .run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn phase(&self, name: &str, took: Duration) {
        self.inner
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), took));
    }

    /// Keeps the process for the stop and records it for a later start, should this one die.
    fn push(&self, p: ManagedProcess) -> Result<(), TestEnvError> {
        let mut run = self.inner.run.lock().unwrap_or_else(|e| e.into_inner());
        run.processes.push(RecordedProcess {
            name: p.name.clone(),
            pid: p.pid(),
            start_time: rundir::process_start_time(p.pid() as u32).unwrap_or_default(),
        });
        self.inner
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
        run.write()
    }

    fn check_processes(&self) -> Result<(), TestEnvError> {
        for p in self
            .inner
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            p.check_running()?;
        }
        Ok(())
    }

    async fn wait_for_node(&self) -> Result<(), TestEnvError> {
        let nodes: Api<Node> = Api::all(self.control_plane.client().await);
        let start = Instant::now();
        let mut state = "not registered yet".to_owned();
        while start.elapsed() < NODE_READY_TIMEOUT {
            self.check_processes()?;
            if let Ok(Some(node)) = nodes.get_opt(&self.inner.node_name).await {
                let (ready, describe) = node_state(&node);
                if ready {
                    return Ok(());
                }
                state = describe;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let run = self.run();
        Err(TestEnvError::NodeNotReady {
            node: self.inner.node_name.clone(),
            seconds: NODE_READY_TIMEOUT.as_secs(),
            state,
            logs: format!(
                "--- last lines of {}:\n{}\n--- last lines of {}:\n{}",
                run.log("kubelet").display(),
                tail(&run.log("kubelet"), 40),
                run.log("containerd").display(),
                tail(&run.log("containerd"), 20)
            ),
        })
    }

    /// Stops everything and returns what could not be removed (an error lists it). Dropping the
    /// cluster does the same and prints the problems instead.
    pub fn stop(self) -> Result<(), TestEnvError> {
        run_cleanup(self.cleanup_key);
        let problems = self
            .inner
            .stop_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        // Stops the control plane.
        drop(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestEnvError::Teardown { problems })
        }
    }

    /// The level-1 API of this cluster's apiserver (also reachable through deref).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The node's name: this machine's hostname, lowercased.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// The run's containerd socket, which serves both containerd's API and the CRI.
    pub fn cri_socket(&self) -> PathBuf {
        self.run().containerd_socket()
    }

    /// The CRI endpoint as the kubelet and crictl name it: `unix://<socket>`.
    pub fn cri_endpoint(&self) -> String {
        format!("unix://{}", self.cri_socket().display())
    }

    /// `ctr` pointed at the run's containerd, in the CRI namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        components::ctr(&self.run(), &NodeBinaries::locate())
    }

    /// The kubelet's `--root-dir`; pod directories are in `pods/<uid>` below it.
    pub fn kubelet_root_dir(&self) -> PathBuf {
        self.run().kubelet_root()
    }

    /// The kubelet's directory of one pod (volumes, etc-hosts, containers).
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.kubelet_root_dir().join("pods").join(pod_uid)
    }

    /// The kubelet's HTTPS endpoint (anonymous access allowed, self-signed certificate).
    pub fn kubelet_address(&self) -> SocketAddr {
        self.inner.kubelet
    }

    /// This run's directory: configurations, logs (`<component>.log`), containerd's and the
    /// kubelet's state.
    pub fn run_dir(&self) -> PathBuf {
        self.run().dir
    }

    /// The run's cgroup, the kubelet's `cgroupRoot`: pods are in
    /// `<cgroup_root>/kubepods/[burstable|besteffort/]pod<uid>/<container id>` of every
    /// hierarchy, as the kernel's OOM messages show.
    pub fn cgroup_root(&self) -> String {
        format!("/{}", self.run().cgroup())
    }

    /// The directory containerd's CRI plugin reads the pod network's configuration from
    /// (`10-kdiag.conflist`); it reloads what is written there, so a test can break and restore
    /// the pod network of this run alone.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.run().cni_conf_dir()
    }

    /// The run's CNI bridge.
    pub fn bridge(&self) -> String {
        self.run().bridge()
    }

    /// The node's address on the pod network (the bridge's, the pods' gateway). With
    /// [`ClusterOptions::kube_proxy`] the apiserver listens there and is the endpoint of the
    /// `kubernetes` Service.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.run().gateway()
    }

    /// Whether this cluster runs kube-proxy ([`ClusterOptions::kube_proxy`]).
    pub fn has_kube_proxy(&self) -> bool {
        self.run().kube_proxy
    }

    /// The /24 pod addresses come from.
    pub fn pod_subnet(&self) -> String {
        self.run().pod_subnet
    }

    /// Images every run has: [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`].
    pub fn images(&self) -> [&'static str; 2] {
        [BUSYBOX_IMAGE, PAUSE_IMAGE]
    }

    /// Builds an image from `spec` (busybox plus its files) and loads it into this run's
    /// containerd.
    pub fn load_image(&self, spec: &ImageSpec) -> Result<(), TestEnvError> {
        let run = self.run();
        let archive = images::spec_archive(&self.inner.base_images, spec, &run.dir.join("images"))?;
        components::import_images(&run, &NodeBinaries::locate(), &archive)
    }

    /// Imports a docker-archive (`docker save`, `buildah push docker-archive:`, the kdiag image
    /// of [`kdiag_image`](crate::kdiag_image)) into this run's containerd, as `ctr -n k8s.io
    /// images import` on a node does. Pods use it with `imagePullPolicy: IfNotPresent`.
    pub fn import_image_archive(&self, archive: &std::path::Path) -> Result<(), TestEnvError> {
        components::import_images(&self.run(), &NodeBinaries::locate(), archive)
    }

    /// Path of a component's log: `containerd`, `kubelet`, `kube-scheduler`,
    /// `kube-controller-manager`, `kube-proxy` (the apiserver's is in the control plane's run
    /// directory).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.run().log(component)
    }

    /// The last lines of a component's log, for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        tail(&self.log_path(component), lines)
    }

    /// (name, pid) of every process the run started itself: etcd, the apiserver, then the node's.
    pub fn pids(&self) -> Vec<(String, i32)> {
        let cp = self.control_plane.pids();
        let names = ["etcd", "kube-apiserver"];
        cp.into_iter()
            .enumerate()
            .map(|(i, pid)| {
                (
                    names.get(i).copied().unwrap_or("control-plane").to_owned(),
                    pid,
                )
            })
            .chain(
                self.inner
                    .processes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|p| (p.name.clone(), p.pid())),
            )
            .collect()
    }

    /// How long each phase of the start took, ending with the total.
    pub fn start_phases(&self) -> Vec<(String, Duration)> {
        self.inner
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl std::ops::Deref for Cluster {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.control_plane
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        run_cleanup(self.cleanup_key);
        if let Some(problems) = self
            .inner
            .stop_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for p in problems {
                eprintln!("kdiag-testenv: {p}");
            }
        }
    }
}

impl Inner {
    /// The stop itself; runs once (the cleanup registry guarantees it).
    fn stop(&self) -> Vec<String> {
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let mut problems = teardown::stop(
            &run,
            Some(teardown::Live {
                kubeconfig: &self.kubeconfig,
                processes: &mut processes,
            }),
        );
        // After kube-proxy stopped: its rules go, and the next kube-proxy cluster may start.
        if let Some(claim) = self
            .kube_proxy_claim
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            problems.extend(kube_proxy::release(claim));
        }
        *self.stop_problems.lock().unwrap_or_else(|e| e.into_inner()) = Some(problems.clone());
        problems
    }
}

/// The claim on the machine's kube-proxy slot and the run's bridge when kube-proxy is wanted,
/// then etcd and the apiserver. On an error, what was claimed is released; the caller removes
/// the rest with the run.
async fn start_control_plane(
    run: &RunRecord,
    node_bins: &NodeBinaries,
    options: &ClusterOptions,
) -> Result<(ControlPlane, Option<kube_proxy::Claim>), TestEnvError> {
    // The apiserver reaches the kubelet by the node's hostname, which resolves to loopback:
    // the kubelet refuses a loopback node IP and must not listen on the network.
    let mut apiserver_args = vec!["--kubelet-preferred-address-types=Hostname".to_owned()];
    let claim = if options.kube_proxy {
        let claim = kube_proxy::claim(run).await?;
        if let Err(e) = kube_proxy::create_bridge(run, &node_bins.ip) {
            let _ = kube_proxy::release(claim);
            return Err(e);
        }
        // The `kubernetes` Service's endpoint must be an address pods reach (the API rejects
        // loopback endpoints): the bridge's, where the apiserver then listens instead of on
        // 127.0.0.1. Its self-signed certificate names that address and the Service's
        // ClusterIP.
        let gateway = run.gateway();
        apiserver_args.push(format!("--bind-address={gateway}"));
        apiserver_args.push(format!("--advertise-address={gateway}"));
        Some(claim)
    } else {
        None
    };
    if let Some(lifetime) = options.apiserver_certificate_lifetime {
        let hosts = if options.kube_proxy {
            vec![run.gateway().to_string()]
        } else {
            Vec::new()
        };
        apiserver_args.extend(components::apiserver_serving_certificate(
            &run.dir, &hosts, lifetime,
        )?);
    }
    apiserver_args.extend(options.apiserver_args.iter().cloned());
    match ControlPlane::start_with(apiserver_args).await {
        Ok(cp) => Ok((cp, claim)),
        Err(e) => {
            if let Some(claim) = claim {
                let _ = kube_proxy::release(claim);
            }
            Err(e)
        }
    }
}

/// Everything the cluster needs from the machine, checked before anything starts.
fn preflight() -> Result<(Binaries, NodeBinaries), TestEnvError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(TestEnvError::UnsupportedHost {
            reason: "not running as root (containerd, runc and the kubelet need it)".into(),
        });
    }
    cgroups::require_v1()?;
    let bins = Binaries::locate()?;
    for b in [
        &bins.etcd,
        &bins.kube_apiserver,
        &bins.kube_controller_manager,
        &bins.kube_scheduler,
        &bins.kubelet,
    ] {
        Binaries::require(b)?;
    }
    let node_bins = NodeBinaries::locate();
    node_bins.require_all()?;
    host::require_closed_pull_endpoint()?;
    Ok((bins, node_bins))
}

/// Whether the node is Ready and untainted, and a description of its state for errors.
fn node_state(node: &Node) -> (bool, String) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let taints: Vec<String> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        })
        .unwrap_or_default();
    let is_ready = ready.is_some_and(|c| c.status == "True");
    let describe = format!(
        "Ready={} ({}: {}), taints: [{}]",
        ready.map(|c| c.status.as_str()).unwrap_or("unknown"),
        ready.and_then(|c| c.reason.as_deref()).unwrap_or("-"),
        ready.and_then(|c| c.message.as_deref()).unwrap_or("-"),
        taints.join(", ")
    );
    (is_ready && taints.is_empty(), describe)
}
