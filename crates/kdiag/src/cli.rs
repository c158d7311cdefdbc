//! The command line: what each subcommand takes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kdiag_cli::duration::parse_duration;

/// kdiag: turns a failed probe, a warning event or an alert into a root cause with evidence.
#[derive(Parser, Debug)]
#[command(name = "kdiag", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", env = "KDIAG_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions kdiag serves, as YAML (`kubectl apply -f -` takes it).
    Crd(CrdArgs),
    /// Run the cluster controller: admit, route and garbage-collect Abnormals (one per cluster).
    // Boxed: its many flags would make every other command's value as large.
    Controller(Box<ControllerArgs>),
    /// Run the node agent: process this node's Abnormals (one per node, as a DaemonSet).
    Agent(AgentArgs),
    /// Try kdiag without a cluster: start a real single-node cluster on this machine, with the
    /// controller and this node's agent (needs root; `make run`).
    #[cfg(feature = "local")]
    Local(LocalArgs),
    /// The operator's commands (also installed as the kubectl plugin `kubectl-diag`).
    Diag(kdiag_cli::DiagArgs),
    /// Run the fleet hub in the management cluster: member clusters' controllers link to it and
    /// it keeps their Cluster objects and results (docs/fleet.md).
    Hub(HubArgs),
}

/// `kdiag hub` (docs/fleet.md).
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// Address member links come in on (TLS).
    #[arg(long, default_value = "0.0.0.0", env = "KDIAG_BIND_ADDRESS")]
    pub bind_address: IpAddr,
    /// Port member links come in on.
    #[arg(long, default_value_t = kdiag_fleet::hub::DEFAULT_PORT, env = "KDIAG_HUB_PORT")]
    pub port: u16,
    /// The fleet namespace: Clusters, members' credential Secrets and their stored results.
    #[arg(long, default_value = kdiag_fleet::hub::DEFAULT_NAMESPACE, env = "KDIAG_FLEET_NAMESPACE")]
    pub namespace: String,
    /// The hub's serving certificate (PEM, with its chain); members check it against their CA.
    #[arg(long, default_value = "/var/run/secrets/kdiag.io/hub-tls/tls.crt")]
    pub tls_cert_file: PathBuf,
    /// Its private key (PEM).
    #[arg(long, default_value = "/var/run/secrets/kdiag.io/hub-tls/tls.key")]
    pub tls_key_file: PathBuf,
    /// A connected cluster without a heartbeat for this long is marked Offline.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub offline_after: Duration,
    /// A Cluster's status is written when something in it changed; a heartbeat that changed
    /// nothing refreshes its heartbeat time at most this often (never less often than a third
    /// of --offline-after).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_write_interval: Duration,
    /// Also accept KubeProber's single SECRET_KEY (from the environment variable SECRET_KEY)
    /// from any cluster, for migrating KubeProber agents. Anyone holding it can then report as
    /// any cluster; by default each cluster needs its own credential.
    #[arg(long, env = "KDIAG_HUB_ACCEPT_SHARED_SECRET_KEY")]
    pub accept_shared_secret_key: bool,
}

/// The controller's link to a fleet hub (docs/fleet.md). Off unless --fleet-hub is given.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// The hub to link to, wss://HOST:PORT. The controller dials out; nothing comes in.
    #[arg(long, env = "KDIAG_FLEET_HUB")]
    pub fleet_hub: Option<String>,
    /// This cluster's name at the hub (a DNS label).
    #[arg(long, env = "KDIAG_FLEET_CLUSTER")]
    pub fleet_cluster: Option<String>,
    /// The file holding this cluster's credential (`kubectl diag clusters add` prints it).
    #[arg(long, default_value = "/var/run/secrets/kdiag.io/fleet/token")]
    pub fleet_credential_file: PathBuf,
    /// The CA (PEM) the hub's certificate must verify against; nothing else is trusted.
    #[arg(long, default_value = "/var/run/secrets/kdiag.io/fleet/ca.crt")]
    pub fleet_hub_ca: PathBuf,
    /// How often a heartbeat goes to the hub.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub fleet_heartbeat: Duration,
    /// Results waiting for the hub at most; beyond, the oldest is dropped and counted.
    #[arg(long, default_value_t = 1000)]
    pub fleet_queue: usize,
    /// Create, update and remove the Probes the hub assigns to this cluster (its Cluster labelled
    /// probe/<name>=true). A Probe runs the pods its template says: this lets the hub run
    /// checker pods here. Off by default.
    #[arg(long, env = "KDIAG_FLEET_ACCEPT_PROBES")]
    pub fleet_accept_probes: bool,
    /// The namespace assigned Probes are created in (it must exist).
    #[arg(long, default_value = "kubeprober")]
    pub fleet_probe_namespace: String,
}

impl FleetArgs {
    /// The member link's settings, None without --fleet-hub.
    pub fn config(&self) -> anyhow::Result<Option<kdiag_fleet::member::MemberConfig>> {
        // Empty counts as unset: the Deployment passes them from an optional Secret.
        let Some(hub) = self.fleet_hub.as_ref().filter(|h| !h.trim().is_empty()) else {
            return Ok(None);
        };
        let Some(cluster) = self.fleet_cluster.as_ref().filter(|c| !c.trim().is_empty()) else {
            anyhow::bail!("--fleet-hub needs --fleet-cluster: this cluster's name at the hub");
        };
        kdiag_fleet::credential::check_cluster_name(cluster)
            .map_err(|why| anyhow::anyhow!("--fleet-cluster: {why}"))?;
        kdiag_fleet::member::hub_address(hub).map_err(|e| anyhow::anyhow!("--fleet-hub: {e}"))?;
        let mut config = kdiag_fleet::member::MemberConfig::new(
            hub.clone(),
            cluster.clone(),
            self.fleet_credential_file.clone(),
            self.fleet_hub_ca.clone(),
        );
        config.heartbeat = self.fleet_heartbeat;
        config.queue_capacity = self.fleet_queue;
        config.accept_probes = self.fleet_accept_probes;
        config.probe_namespace = self.fleet_probe_namespace.clone();
        Ok(Some(config))
    }
}

/// `kdiag local`, built with the `local` feature (`make run`).
#[cfg(feature = "local")]
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// Address of the HTTP server (/metrics, built-ins, profiles).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    #[arg(long, default_value_t = kdiag_runtime::server::DEFAULT_PORT)]
    pub port: u16,
    /// Install kdiag's image with config/deploy on the local cluster, as `kubectl apply -k`
    /// does on a real one (a controller Deployment and an agent DaemonSet), instead of running
    /// the controller and agent in this process. Builds the image first (`make image`).
    #[arg(long)]
    pub in_cluster: bool,
}

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// Where the HTTP server listens.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "0.0.0.0", env = "KDIAG_BIND_ADDRESS")]
    pub bind_address: IpAddr,
    /// Port of the HTTP server.
    #[arg(long, default_value_t = kdiag_runtime::server::DEFAULT_PORT, env = "KDIAG_PORT")]
    pub port: u16,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// How long to wait for a pod named in spec.podReference to exist and be scheduled.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub pod_wait: Duration,
    /// How often garbage collection runs.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// An Abnormal naming neither spec.nodeName nor spec.podReference runs on every node (as
    /// Kube Diagnoser v0.1.0-v0.1.5 ran it), as one Abnormal per node, when the cluster has at
    /// most this many nodes; more are refused (FanOutTooLarge). 0 rejects every such Abnormal
    /// (MissingTarget).
    #[arg(long, default_value_t = 100, value_name = "NODES")]
    pub fan_out_max_nodes: usize,
    /// An admitted Abnormal that no agent took for this long (still in its first stage with no
    /// step recorded, and its node is gone or runs no kdiag-agent pod) ends Failed with reason
    /// NoAgent. 0 never fails one.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub no_agent_grace: Duration,
    /// Finished Abnormals older than this are deleted.
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    pub abnormal_ttl: Duration,
    /// Per node, finished Abnormals beyond the newest this many are deleted.
    #[arg(long, default_value_t = 200)]
    pub max_finished_per_node: usize,
    /// The URL checker pods report to (KUBEPROBER_STATUS_REPORT_URL): this controller's Service.
    #[arg(
        long,
        default_value = "http://kdiag-controller.kube-diagnoser.svc:10357/probe-status"
    )]
    pub probe_report_url: String,
    /// A periodic probe's results not refreshed for this many intervals are marked stale (UNKNOWN).
    #[arg(long, default_value_t = 3)]
    pub probe_stale_intervals: u32,
    /// ProbeRuns (the history of probe runs) kept per probe; older finished runs are deleted.
    #[arg(long, default_value_t = kdiag_controller::probes::runs::DEFAULT_HISTORY)]
    pub probe_history: usize,
    /// Probes triggered by change: a run starts once no further matching change came for this
    /// long, for triggers that set no `quietSeconds`.
    #[arg(long, default_value = "5s", value_parser = parse_seconds)]
    pub probe_trigger_quiet: u32,
    /// Probes triggered by change: a run starts at the latest this long after the first change of
    /// its batch, for triggers that set no `maxWaitSeconds`.
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    pub probe_trigger_max_wait: u32,
    /// The pod triage's collectors (comma-separated; a bare name is in kube-diagnoser), used when
    /// an Abnormal names a pod and no processors. Unregistered ones are left out.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = kdiag_pipeline::admission::TRIAGE_COLLECTORS.iter().copied()
    )]
    pub triage_collectors: Vec<String>,
    /// The pod triage's diagnosers.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = kdiag_pipeline::admission::TRIAGE_DIAGNOSERS.iter().copied()
    )]
    pub triage_diagnosers: Vec<String>,
    /// Abnormals one Event or alert source may create: BURST:PER_MINUTE.
    #[arg(long, default_value = "20:6", value_parser = parse_budget)]
    pub source_budget: kdiag_controller::sources::storm::Budget,
    /// Abnormals Event and alert sources may create for one node: BURST:PER_MINUTE.
    #[arg(long, default_value = "10:2", value_parser = parse_budget)]
    pub source_node_budget: kdiag_controller::sources::storm::Budget,
    /// The namespace Abnormals for Prometheus alerts are created in.
    #[arg(long, default_value = kdiag_api::SYSTEM_NAMESPACE)]
    pub alert_namespace: String,
    /// Require `Authorization: Bearer <token>` on the alert endpoints (from the environment, so
    /// it stays out of the process list).
    #[arg(long, env = "KDIAG_ALERT_TOKEN", hide_env_values = true)]
    pub alert_token: Option<String>,
    /// Take alerts without a token when none is set. Anyone who can reach the controller can
    /// then create Abnormals through its AbnormalSources; by default alerts need the token.
    #[arg(long, env = "KDIAG_ALERTS_ALLOW_UNAUTHENTICATED")]
    pub alerts_allow_unauthenticated: bool,
    /// Also take alerts on this port (on --bind-address), at Kube Diagnoser's master's paths:
    /// `/api/v1/alerts` (and kdiag's `/api/v2/alerts`, `/api/v1/webhook`), with the same token,
    /// and `/clusterhealth`, which answers 422 as Kube Diagnoser did with its cluster health
    /// evaluator off. Kube Diagnoser's master listened on 8090 behind a Service on 8089. Off
    /// when not given (docs/compatibility.md).
    #[arg(long, env = "KDIAG_KUBE_DIAGNOSER_ALERTS_PORT")]
    pub kube_diagnoser_alerts_port: Option<u16>,
    /// Without --alert-token, the alert token is read from this Secret in kube-diagnoser (key
    /// `token`), which is created with a random token when missing. Empty: do not use a Secret.
    #[arg(long, default_value = kdiag_controller::ALERT_TOKEN_SECRET)]
    pub alert_token_secret: String,
    /// Take `POST /probe-status` reports without a token, as KubeProber's SDK sends them. Anyone
    /// who can reach the controller can then write any namespace's ProbeStatus; by default a
    /// report needs its checker pod's projected token (docs/probes.md).
    #[arg(long, env = "KDIAG_PROBE_STATUS_ALLOW_UNAUTHENTICATED")]
    pub probe_status_allow_unauthenticated: bool,
    /// Abnormals one probe's failures may create: BURST:PER_MINUTE (a token bucket).
    #[arg(long, default_value = "10:2", value_parser = parse_budget)]
    pub probe_budget: kdiag_controller::sources::storm::Budget,
    /// Abnormals probe failures may create for one node: BURST:PER_MINUTE.
    #[arg(long, default_value = "10:2", value_parser = parse_budget)]
    pub probe_node_budget: kdiag_controller::sources::storm::Budget,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Leader election among the controller's replicas (docs/install.md).
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Elect one leader among the controller's replicas with a Lease in kube-diagnoser: only the
    /// leader admits, routes, collects garbage, runs probes and turns triggers into Abnormals;
    /// every replica serves the admission webhook and probe reports. false: this controller is
    /// the only one (never run two such).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KDIAG_LEADER_ELECT")]
    pub leader_elect: bool,
    /// The leader Lease's name, in kube-diagnoser.
    #[arg(long, default_value = kdiag_controller::leader::DEFAULT_LEASE)]
    pub leader_election_lease: String,
    /// This replica's identity in the Lease, NAME@HOST:PORT, where HOST:PORT reaches its HTTP
    /// server from the other replicas (a standby hands alerts there). Default:
    /// $POD_NAME@$POD_IP:<--port> in a pod, <hostname>@127.0.0.1:<--port> elsewhere.
    #[arg(long, env = "KDIAG_LEADER_ELECTION_ID")]
    pub leader_election_id: Option<String>,
    /// How long a leader's Lease holds without renewal: how long a crashed leader's work
    /// waits for a standby.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
}

impl LeaderArgs {
    /// The election's settings, None with --leader-elect=false.
    pub fn config(&self, port: u16) -> Option<kdiag_controller::leader::LeaderElection> {
        if !self.leader_elect {
            return None;
        }
        let identity = self.leader_election_id.clone().unwrap_or_else(|| {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            match (env("POD_NAME"), env("POD_IP")) {
                (Some(name), Some(ip)) => format!("{name}@{ip}:{port}"),
                _ => format!(
                    "{}@127.0.0.1:{port}",
                    env("HOSTNAME").unwrap_or_else(|| "kdiag-controller".into())
                ),
            }
        });
        let mut election = kdiag_controller::leader::LeaderElection::new(
            kdiag_api::SYSTEM_NAMESPACE,
            &self.leader_election_lease,
            &identity,
        );
        election.lease_duration = self.leader_election_lease_duration;
        election.renew_before =
            (self.leader_election_lease_duration / 3).max(Duration::from_secs(1));
        Some(election)
    }
}

/// How the apiserver reaches the validating admission webhook.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookReach {
    /// Through the controller's Service (--webhook-service): the controller runs in the cluster.
    Service,
    /// At --webhook-url: the controller runs as a process on a host the apiserver reaches.
    Url,
    /// No webhook: nobody's Abnormals are authorized against their creator (docs/security.md).
    Off,
}

/// The validating admission webhook (docs/security.md).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// How the apiserver reaches the admission webhook: service, url, or off.
    #[arg(long = "webhook", default_value = "service", env = "KDIAG_WEBHOOK")]
    pub reach: WebhookReach,
    /// Port of the webhook's HTTPS listener (on --bind-address).
    #[arg(long, default_value_t = kdiag_controller::webhook::DEFAULT_PORT, env = "KDIAG_WEBHOOK_PORT")]
    pub webhook_port: u16,
    /// With --webhook=service: the Service in front of the controller, NAMESPACE/NAME:PORT.
    #[arg(long, default_value = "kube-diagnoser/kdiag-controller:9443")]
    pub webhook_service: String,
    /// With --webhook=url: the URL the apiserver calls (its host goes into the certificate).
    /// Default: https://127.0.0.1:<--webhook-port>/validate.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The ValidatingWebhookConfiguration whose caBundle and address the controller keeps.
    #[arg(long, default_value = kdiag_controller::webhook::DEFAULT_CONFIGURATION)]
    pub webhook_configuration: String,
    /// The Secret (in kdiag's namespace) holding the webhook's CA and serving certificate.
    #[arg(long, default_value = kdiag_controller::webhook::DEFAULT_SECRET)]
    pub webhook_secret: String,
    /// Users the webhook never checks (comma-separated): kdiag's own ServiceAccounts, which
    /// route Abnormals and create them from sources. Default: kube-diagnoser's kdiag-controller
    /// and kdiag-agent.
    #[arg(long, value_delimiter = ',')]
    pub webhook_exempt_users: Vec<String>,
}

impl WebhookArgs {
    /// The webhook's settings, None with --webhook=off. Err says which flag is wrong.
    pub fn config(
        &self,
        bind_address: IpAddr,
    ) -> anyhow::Result<Option<kdiag_controller::webhook::WebhookConfig>> {
        use kdiag_controller::webhook::{ClientConfig, PATH, WebhookConfig};
        let reach = match self.reach {
            WebhookReach::Off => return Ok(None),
            WebhookReach::Url => ClientConfig::Url(
                self.webhook_url
                    .clone()
                    .unwrap_or_else(|| format!("https://127.0.0.1:{}{PATH}", self.webhook_port)),
            ),
            WebhookReach::Service => {
                let bad = || {
                    anyhow::anyhow!(
                        "--webhook-service {:?}: write it NAMESPACE/NAME:PORT, such as kube-diagnoser/kdiag-controller:9443",
                        self.webhook_service
                    )
                };
                let (namespace, rest) = self.webhook_service.split_once('/').ok_or_else(bad)?;
                let (name, port) = rest.split_once(':').ok_or_else(bad)?;
                ClientConfig::Service {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    port: port.parse().map_err(|_| bad())?,
                }
            }
        };
        let exempt_users = if self.webhook_exempt_users.is_empty() {
            WebhookConfig::default_exempt_users()
        } else {
            self.webhook_exempt_users.clone()
        };
        Ok(Some(WebhookConfig {
            bind: std::net::SocketAddr::new(bind_address, self.webhook_port),
            reach,
            configuration: self.webhook_configuration.clone(),
            secret: (
                kdiag_api::SYSTEM_NAMESPACE.to_owned(),
                self.webhook_secret.clone(),
            ),
            exempt_users,
        }))
    }
}

/// Parses a budget written BURST:PER_MINUTE, such as 10:2.
pub fn parse_budget(s: &str) -> anyhow::Result<kdiag_controller::sources::storm::Budget> {
    let (burst, rate) = s.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("{s:?}: write a budget as BURST:PER_MINUTE, such as 10:2")
    })?;
    let burst: f64 = burst
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: the burst {burst:?} is not a number"))?;
    let per_minute: f64 = rate
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: the rate {rate:?} is not a number"))?;
    if burst < 1.0 || per_minute < 0.0 {
        anyhow::bail!("{s:?}: the burst must be at least 1 and the rate not negative");
    }
    Ok(kdiag_controller::sources::storm::Budget { burst, per_minute })
}

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The node this agent runs on (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Abnormals processed at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// How long an Abnormal may take from admission to its end: then the steps it has not run
    /// are not run and it ends Failed (DeadlineExceeded). A step with side effects already
    /// running finishes first. 0: no deadline.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub abnormal_deadline: Duration,
    /// How long an Abnormal keeps a worker slot while others wait for one: then, between two
    /// steps, it goes to the back of the queue, so many long Abnormals share the slots.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub turn: Duration,
    /// Namespace of the node policy ConfigMap.
    #[arg(long, default_value = kdiag_api::SYSTEM_NAMESPACE)]
    pub policy_namespace: String,
    /// Name of the node policy ConfigMap (key policy.yaml). While it is missing or invalid, every
    /// command and recovery is denied (fail closed; docs/policy.md).
    #[arg(long, default_value = "kdiag-policy")]
    pub policy_configmap: String,
    /// Directory for profiles and other files the agent keeps.
    #[arg(long, default_value = "/var/lib/kdiag", env = "KDIAG_DATA_ROOT")]
    pub data_root: PathBuf,
    /// Address others reach this agent's HTTP server on (links to profiles use it).
    #[arg(long, env = "POD_IP")]
    pub advertise_address: Option<IpAddr>,
    /// Also serve Kube Diagnoser's agent paths on this port (on --bind-address), as its agent
    /// did on 8090: `/informationcollector/podcollector` and the other built-ins (POST an
    /// Abnormal; GET on a collector answers the array it collects), and GET
    /// `/informationcollector`, `/diagnoser`, `/recoverer` (the registrations). The same token
    /// and rights as the node API. Off when not given (docs/compatibility.md).
    #[arg(long, env = "KDIAG_KUBE_DIAGNOSER_PORT")]
    pub kube_diagnoser_port: Option<u16>,
    /// A node directory under which a Go profiler may read a pprof file (`go.source` an
    /// absolute path, as Kube Diagnoser allowed). Repeat it, or give a comma-separated list in
    /// the environment. None by default: every file source is refused, saying to set this
    /// (docs/profilers.md).
    #[arg(
        long = "go-profile-dir",
        env = "KDIAG_GO_PROFILE_DIRS",
        value_delimiter = ','
    )]
    pub go_profile_dirs: Vec<PathBuf>,
    /// The host's /proc as the agent sees it (the DaemonSet runs with hostPID).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// The host's /sys.
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,
    /// The kubelet's root directory (pod directories are <root>/pods/<uid>).
    #[arg(long, default_value = "/var/lib/kubelet", env = "KDIAG_KUBELET_ROOT")]
    pub kubelet_root: PathBuf,
    /// A CRI socket to read containers from; repeat to try several in order.
    #[arg(long = "cri-socket", default_values = ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"], env = "KDIAG_CRI_SOCKET", value_delimiter = ',')]
    pub cri_sockets: Vec<PathBuf>,
    /// The kernel message device.
    #[arg(long, default_value = "/dev/kmsg")]
    pub kmsg: PathBuf,
    /// The most bytes (as JSON) one step may add to an Abnormal.
    #[arg(long, default_value_t = 512 * 1024)]
    pub max_step_output_bytes: usize,
    /// The most bytes (as JSON) status.context may hold.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_context_bytes: usize,
    /// The most bytes (as JSON) a whole Abnormal may grow to through its steps; output that
    /// would pass it is dropped, saying so (etcd refuses objects over 1.5 MiB).
    #[arg(long, default_value_t = 1280 * 1024)]
    pub max_object_bytes: usize,
}

/// A duration such as `5s` or `1m`, in whole seconds: kept small, as `ControllerArgs` is one
/// variant of [`Command`] (clippy's large_enum_variant).
fn parse_seconds(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    u32::try_from(d.as_secs()).map_err(|_| format!("{s} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_commands_answer_under_kdiag_diag() {
        let cli = Cli::try_parse_from(["kdiag", "diag", "describe", "web", "-n", "shop"]).unwrap();
        let Command::Diag(a) = cli.command else {
            panic!("not diag")
        };
        assert!(
            matches!(a.command, Some(kdiag_cli::DiagCommand::Describe { name }) if name == "web")
        );
    }
}
