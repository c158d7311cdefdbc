//! Level 1: etcd + kube-apiserver on free loopback ports, with token auth and RBAC.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use crate::process::{ManagedProcess, at_exit, run_cleanup, tail};
use crate::{Binaries, TestEnvError, rundir};

pub(crate) const RUN_KIND: &str = "apiserver";
const START_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running etcd + kube-apiserver. Stopped (processes killed, run directory removed) when
/// dropped or, for the shared instance, when the test binary exits.
pub struct ControlPlane {
    inner: Arc<Inner>,
    cleanup_key: u64,
}

struct Inner {
    dir: PathBuf,
    /// Set once the apiserver is ready.
    url: std::sync::OnceLock<String>,
    admin_token: String,
    /// Set once the apiserver has written its certificate.
    ca_pem: std::sync::OnceLock<String>,
    kubeconfig: PathBuf,
    processes: Mutex<Vec<ManagedProcess>>,
    /// Extra apiserver flags this instance was started with (level 2 adds some).
    extra_args: Vec<String>,
    /// Set by level 2 once the controller-manager runs: a new namespace is only usable for pods
    /// once its default ServiceAccount has a token.
    controllers_running: AtomicBool,
}

/// The control plane shared by every test of this test binary. Started on first use.
///
/// Panics with the reason when it cannot start: a test that needs the apiserver fails, it is
/// not skipped.
pub async fn control_plane() -> &'static ControlPlane {
    static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            match ControlPlane::start().await {
                Ok(cp) => cp,
                Err(e) => panic!("kdiag-testenv: could not start the test control plane: {e}"),
            }
        })
        .await
}

impl ControlPlane {
    /// Starts a new etcd + kube-apiserver of its own.
    pub async fn start() -> Result<Self, TestEnvError> {
        Self::start_with(Vec::new()).await
    }

    /// Starts one with extra kube-apiserver flags.
    pub async fn start_with(extra_apiserver_args: Vec<String>) -> Result<Self, TestEnvError> {
        crate::install_crypto_provider();
        let bins = Binaries::locate()?;
        Binaries::require(&bins.etcd)?;
        Binaries::require(&bins.kube_apiserver)?;
        for dir in rundir::stale(RUN_KIND) {
            rundir::remove(&dir);
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&bins, &extra_apiserver_args).await {
                Ok(cp) => return Ok(cp),
                // A free port taken between choosing and binding it: try again with new ports.
                Err(e) if e.to_string().contains("address already in use") => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| TestEnvError::Other("control plane did not start".into())))
    }

    async fn try_start(bins: &Binaries, extra: &[String]) -> Result<Self, TestEnvError> {
        let dir = rundir::create(RUN_KIND)?;
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            url: Default::default(),
            admin_token: random_hex(16),
            ca_pem: Default::default(),
            kubeconfig: dir.join("kubeconfig"),
            processes: Mutex::new(Vec::new()),
            extra_args: extra.to_vec(),
            controllers_running: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        let cleanup_key = at_exit(move || {
            if let Some(inner) = weak.upgrade() {
                inner.stop();
            }
        });
        // From here on, dropping `cp` on an error stops whatever started.
        let cp = Self { inner, cleanup_key };
        let (url, ca_pem) = cp.launch(bins, extra).await?;
        let _ = cp.inner.url.set(url);
        let _ = cp.inner.ca_pem.set(ca_pem);
        cp.write_kubeconfig()?;
        // A client through the kubeconfig proves the CA and token work as users will use them.
        let client = cp.client().await;
        Api::<Namespace>::all(client)
            .list(&Default::default())
            .await
            .map_err(|e| {
                TestEnvError::Client(format!(
                    "listing namespaces through {}: {e}",
                    cp.inner.kubeconfig.display()
                ))
            })?;
        Ok(cp)
    }

    async fn launch(
        &self,
        bins: &Binaries,
        extra: &[String],
    ) -> Result<(String, String), TestEnvError> {
        let dir = &self.inner.dir;
        run(tokio::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048"))
        .await?;
        run(tokio::process::Command::new("openssl")
            .arg("rsa")
            .arg("-in")
            .arg(dir.join("sa.key"))
            .arg("-pubout")
            .arg("-out")
            .arg(dir.join("sa.pub")))
        .await?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{},admin,admin,\"system:masters\"\n",
                self.inner.admin_token
            ),
        )
        .map_err(TestEnvError::io(&tokens))?;

        // Ports are chosen right before the process that binds them starts (see free_ports).
        let [etcd_port, peer_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = ManagedProcess::spawn(
            "etcd",
            &bins.etcd,
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Tests write a lot and need no durability across machine crashes.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
        )?;
        self.push(etcd);
        self.wait_for_port("etcd", etcd_port, &dir.join("etcd.log"))
            .await?;

        let cert_dir = dir.join("certs");
        let [api_port] = free_ports()?;
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            // 1.20 also serves plain HTTP on 127.0.0.1:8080 unless told not to, which would
            // collide between runs.
            "--insecure-port=0".into(),
            format!("--cert-dir={}", cert_dir.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ),
            "--api-audiences=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--event-ttl=1h".into(),
            "--v=1".into(),
        ];
        args.extend(extra.iter().cloned());
        let log = dir.join("kube-apiserver.log");
        let apiserver = ManagedProcess::spawn("kube-apiserver", &bins.kube_apiserver, &args, &log)?;
        self.push(apiserver);
        // Where a caller moved the apiserver (a cluster with kube-proxy binds it to the node's
        // bridge address, which pods reach too); the last flag wins, as for the apiserver.
        let host = extra
            .iter()
            .rev()
            .find_map(|a| a.strip_prefix("--bind-address="))
            .unwrap_or("127.0.0.1");
        let url = format!("https://{host}:{api_port}");
        self.wait_for_ready(&url, &log).await?;
        let ca_path = self.ca_path();
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(TestEnvError::io(&ca_path))?;
        Ok((url, ca_pem))
    }

    fn push(&self, p: ManagedProcess) {
        self.inner
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
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

    async fn wait_for_port(&self, what: &str, port: u16, log: &Path) -> Result<(), TestEnvError> {
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            self.check_processes()?;
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(TestEnvError::NotReady {
            what: what.into(),
            seconds: READY_TIMEOUT.as_secs(),
            log: log.into(),
            tail: tail(log, 30),
        })
    }

    async fn wait_for_ready(&self, url: &str, log: &Path) -> Result<(), TestEnvError> {
        let mut config = Config::new(
            url.parse()
                .map_err(|e| TestEnvError::Other(format!("bad url {url}: {e}")))?,
        );
        // Only while waiting: the certificate is not there until the apiserver wrote it.
        config.accept_invalid_certs = true;
        config.auth_info.token = Some(self.inner.admin_token.clone().into());
        let client = Client::try_from(config).map_err(|e| TestEnvError::Client(e.to_string()))?;
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            self.check_processes()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            if let Ok(body) = client.request_text(req).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(TestEnvError::NotReady {
            what: "kube-apiserver /readyz".into(),
            seconds: READY_TIMEOUT.as_secs(),
            log: log.into(),
            tail: tail(log, 30),
        })
    }

    fn write_kubeconfig(&self) -> Result<(), TestEnvError> {
        let yaml = kubeconfig_yaml(self.url(), self.ca_pem(), "admin", &self.inner.admin_token);
        std::fs::write(&self.inner.kubeconfig, yaml)
            .map_err(TestEnvError::io(&self.inner.kubeconfig))
    }

    /// The apiserver's URL.
    pub fn url(&self) -> &str {
        self.inner.url.get().map(String::as_str).unwrap_or_default()
    }

    /// A kubeconfig for the admin user (group system:masters), for kubectl and the binaries.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.inner.kubeconfig
    }

    /// The directory of this run (logs, keys, etcd data).
    pub fn run_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The PEM CA bundle that verifies the apiserver.
    pub fn ca_pem(&self) -> &str {
        self.inner
            .ca_pem
            .get()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The admin user's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.inner.admin_token
    }

    /// A new admin client. Create one per test: a client belongs to the runtime it was made in.
    pub async fn client(&self) -> Client {
        self.client_with_token(&self.inner.admin_token).await
    }

    /// A new client that authenticates with `token` (a ServiceAccount token, for RBAC tests).
    pub async fn client_with_token(&self, token: &str) -> Client {
        self.client_with_token_at(self.url(), token).await
    }

    /// A new client that authenticates with `token` and reaches the apiserver at `url`: through
    /// a [`crate::Link`] a test can cut.
    pub async fn client_with_token_at(&self, url: &str, token: &str) -> Client {
        crate::install_crypto_provider();
        let kubeconfig = Kubeconfig::from_yaml(&kubeconfig_yaml(url, self.ca_pem(), "user", token))
            .expect("kdiag-testenv writes a valid kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kdiag-testenv writes a valid kubeconfig");
        Client::try_from(config).expect("a client for the test control plane")
    }

    /// Writes a kubeconfig that authenticates with `token`, for running a binary as that user.
    pub fn write_kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let path = self.inner.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            kubeconfig_yaml(self.url(), self.ca_pem(), name, token),
        )
        .expect("write a kubeconfig in the run directory");
        path
    }

    /// Creates a namespace named `<prefix>-<random>` for one test and returns its name. With a
    /// controller-manager running (level 2), returns once pods can be created in it.
    pub async fn create_namespace(&self, prefix: &str) -> String {
        let name = format!("{}-{}", prefix.trim_end_matches('-'), random_hex(4));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create test namespace {name}: {e}"));
        if self.inner.controllers_running.load(Ordering::Acquire) {
            self.wait_for_default_service_account(&name)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        name
    }

    /// Waits until the namespace's `default` ServiceAccount has its token secret: until then
    /// the ServiceAccount admission plugin rejects every pod of the namespace.
    pub(crate) async fn wait_for_default_service_account(
        &self,
        namespace: &str,
    ) -> Result<(), TestEnvError> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(sa)) = sas.get_opt("default").await
                && sa.secrets.is_some_and(|s| !s.is_empty())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(TestEnvError::Other(format!(
            "the default ServiceAccount of namespace {namespace} got no token within 60s: is kube-controller-manager running? See its log in the cluster's run directory"
        )))
    }

    pub(crate) fn set_controllers_running(&self) {
        self.inner
            .controllers_running
            .store(true, Ordering::Release);
    }

    /// The key the apiserver signs ServiceAccount tokens with (the controller-manager's token
    /// controller needs it).
    pub(crate) fn service_account_key_path(&self) -> PathBuf {
        self.inner.dir.join("sa.key")
    }

    /// The apiserver's self-signed serving certificate, which is also the CA that verifies it.
    pub(crate) fn ca_path(&self) -> PathBuf {
        // The one a caller gave it (--tls-cert-file, the last flag wins), or the pair it made
        // in --cert-dir.
        self.inner
            .extra_args
            .iter()
            .rev()
            .find_map(|a| a.strip_prefix("--tls-cert-file="))
            .map_or_else(
                || self.inner.dir.join("certs").join("apiserver.crt"),
                PathBuf::from,
            )
    }

    /// Creates the ServiceAccount if needed and returns a fresh token for it (TokenRequest API;
    /// level 1 has no token controller).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let req = TokenRequest {
            spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
                audiences: vec!["https://kubernetes.default.svc".into()],
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let resp: TokenRequest = sas
            .create_subresource("token", name, &PostParams::default(), &req)
            .await
            .unwrap_or_else(|e| {
                panic!("request a token for ServiceAccount {namespace}/{name}: {e}")
            });
        resp.status.expect("TokenRequest status").token
    }

    /// Applies CRDs (server-side apply) and waits until each is Established.
    pub async fn apply_crds(&self, crds: &[CustomResourceDefinition]) -> Result<(), TestEnvError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let params = PatchParams::apply("kdiag-testenv").force();
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(crd))
                .await
                .map_err(|e| TestEnvError::Client(format!("apply CRD {name}: {e}")))?;
        }
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let cond = kube::runtime::conditions::is_crd_established();
            tokio::time::timeout(
                Duration::from_secs(30),
                kube::runtime::wait::await_condition(api.clone(), &name, cond),
            )
            .await
            .map_err(|_| TestEnvError::Other(format!("CRD {name} not Established after 30s")))?
            .map_err(|e| TestEnvError::Client(format!("wait for CRD {name}: {e}")))?;
        }
        Ok(())
    }

    /// A kubectl command pointed at this control plane as admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.inner.kubeconfig);
        // kubectl caches discovery under ~/.kube/cache by default; keep it in the run.
        cmd.arg("--cache-dir")
            .arg(self.inner.dir.join("kubectl-cache"));
        cmd
    }

    /// The last lines of the apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        tail(&self.inner.dir.join("kube-apiserver.log"), lines)
    }

    /// Restarts etcd and the apiserver as a control-plane upgrade or a crash of both would: the
    /// apiserver is stopped (SIGTERM, then SIGKILL after a short grace) and etcd killed, then
    /// both start again on the same ports, data directory and certificates, so clients keep
    /// their URL and CA and the data is still there. Returns once the apiserver is ready again.
    /// Every open connection and watch breaks; clients see the apiserver unreachable meanwhile.
    pub async fn restart(&self) -> Result<(), TestEnvError> {
        let mut stopped = std::mem::take(
            &mut *self
                .inner
                .processes
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // Started etcd first, so the apiserver is last.
        for p in stopped.iter_mut().rev() {
            if p.name == "etcd" {
                p.kill();
            } else {
                p.stop(Duration::from_secs(2));
            }
        }
        let etcd_port: Option<u16> = stopped
            .iter()
            .find(|p| p.name == "etcd")
            .and_then(|p| {
                p.args()
                    .iter()
                    .find_map(|a| a.strip_prefix("--listen-client-urls=http://127.0.0.1:"))
            })
            .and_then(|port| port.parse().ok());
        for mut p in stopped {
            p.respawn()?;
            let (name, log) = (p.name.clone(), p.log.clone());
            self.push(p);
            if name == "etcd"
                && let Some(port) = etcd_port
            {
                self.wait_for_port("etcd", port, &log).await?;
            }
        }
        let log = self.inner.dir.join("kube-apiserver.log");
        self.wait_for_ready(self.url(), &log).await
    }

    /// Pids of etcd and the apiserver, for tests that check nothing is left behind.
    pub fn pids(&self) -> Vec<i32> {
        self.inner
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(ManagedProcess::pid)
            .collect()
    }
}

impl Inner {
    fn stop(&self) {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        // Apiserver before etcd. Short grace: the data is thrown away, and an apiserver with
        // open watches takes longer than this to finish a graceful shutdown.
        while let Some(mut p) = procs.pop() {
            p.stop(Duration::from_secs(2));
        }
        rundir::remove(&self.dir);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        run_cleanup(self.cleanup_key);
    }
}

fn kubeconfig_yaml(url: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = BASE64.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kdiag-test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: kdiag-test\n  context:\n    cluster: kdiag-test\n    user: {user}\n    namespace: default\ncurrent-context: kdiag-test\n"
    )
}

/// `N` different loopback ports that were free a moment ago, for processes that bind them
/// themselves.
///
/// There is a race that cannot be closed here: each port is released before the child binds
/// it, because etcd, kube-apiserver and the kubelet take a port number, not an open socket. Any
/// process may take the port in between (an outgoing connection gets its local port from the
/// same range). The gap is the child's start-up; a child that then fails with "address already
/// in use" makes [`ControlPlane::start_with`] try again with new ports. Callers choose ports
/// right before starting the process that binds them. A cluster's kubelet is not retried that
/// way (its port is chosen before containerd starts): its start then fails with the kubelet's
/// log, which names the port. All `N` listeners are held until every port is chosen, so the
/// ports chosen together never coincide.
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], TestEnvError> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TestEnvError::io("127.0.0.1:0"))?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l
            .local_addr()
            .map_err(TestEnvError::io("127.0.0.1:0"))?
            .port();
    }
    Ok(ports)
}

async fn run(cmd: &mut tokio::process::Command) -> Result<(), TestEnvError> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TestEnvError::Spawn {
            process: format!("{cmd:?}"),
            source: e,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestEnvError::Other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kubeconfig_carries_the_ca_in_standard_base64() {
        let yaml = super::kubeconfig_yaml("https://127.0.0.1:1", "foobar", "admin", "t");
        assert!(
            yaml.contains("certificate-authority-data: Zm9vYmFy\n"),
            "{yaml}"
        );
    }
}
