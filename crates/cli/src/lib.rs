//! kdiag-cli: `kubectl diag` (the kdiag binary installed as `kubectl-diag`, or `kdiag diag …`):
//! the operator's view of Abnormals and probes. It talks to the apiserver only, like kubectl, and
//! depends on kdiag-api, kdiag-pipeline (the pod triage's defaults), kube and clap: never on the
//! controller or the agent.
//!
//! Exit codes: 0 done (for `watch` and `run --wait`: the diagnosis Succeeded; for `gate`: every
//! probe passes); 1 the diagnosis Failed or was rejected; 2 a command line that cannot work; 3
//! anything else that stopped the command (no kubeconfig, cluster unreachable, CRDs or controller
//! missing, RBAC, …). `gate` adds its verdicts, never used by other commands: 4 a checker fails,
//! 5 a result is stale, 6 a result is unknown or missing (`kdiag_api::gate::Reason`).
//!
//! Layout: the renderers (`render`, and the pure halves of `get`, `describe`, `watch`, `run`,
//! `probes`) take values and return text; `client` and the `run` functions do the IO.

pub mod client;
pub mod clusters;
pub mod describe;
pub mod duration;
pub mod gate;
pub mod get;
pub mod probe_runs;
pub mod probes;
pub mod render;
pub mod run;
pub mod watch;
pub mod workload;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;

pub use client::DiagError;
use client::{ConnectOptions, Kube};
use render::{ColorChoice, Style};

/// `kubectl diag …`: the same commands when the binary is called as `kubectl-diag`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl diag",
    version,
    about = "Diagnose Kubernetes with kdiag: Abnormals, their root causes, probes"
)]
pub struct KubectlDiag {
    #[command(flatten)]
    pub args: DiagArgs,
}

/// Arguments of `kubectl diag`.
#[derive(clap::Args, Debug, Clone)]
pub struct DiagArgs {
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Option<DiagCommand>,
}

/// kubectl's own flags, accepted before or after the subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Flags {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the pod's
    /// service account).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Every namespace (get, probes, gate, probe history).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// Output format: wide (more columns), json or yaml (the objects as stored).
    #[arg(short = 'o', long, global = true, value_name = "FORMAT")]
    pub output: Option<Output>,
    /// The fleet namespace in the hub's cluster (clusters, probes -c).
    #[arg(
        long,
        global = true,
        value_name = "NAMESPACE",
        env = "KDIAG_FLEET_NAMESPACE",
        default_value = "kdiag-fleet"
    )]
    pub fleet_namespace: String,
    /// Colour: auto (when stdout is a terminal and NO_COLOR is unset), always or never.
    #[arg(long, global = true, default_value = "auto", value_name = "WHEN")]
    pub color: ColorChoice,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DiagCommand {
    /// List Abnormals: phase, node, source, root cause and age (-o wide adds reason, start, steps).
    Get {
        /// One Abnormal instead of all in the namespace.
        name: Option<String>,
    },
    /// The whole story of an Abnormal: trigger, every step, commands and their output, the root
    /// cause with its evidence, and its Events.
    Describe { name: String },
    /// Follow an Abnormal live until it ends. Exit code 0 only if it Succeeded.
    Watch {
        name: String,
        /// Give up after this long (exit code 3); the diagnosis goes on in the cluster.
        #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
        timeout: Duration,
        /// Warn when the Abnormal has no status this long after its creation (no controller?).
        #[arg(long, default_value = "20s", value_parser = crate::duration::parse_duration)]
        admission_timeout: Duration,
    },
    /// Start a diagnosis of a pod or a node without writing YAML.
    #[command(after_help = run_defaults_help())]
    Run(Box<run::RunArgs>),
    /// KubeProber checker results, one row per checker, with kdiag's root cause for failures.
    Probes {
        /// One ProbeStatus instead of all in the namespace (with -c: its name in the member).
        name: Option<String>,
        /// A member cluster's latest results, as the fleet hub stores them (run against the
        /// hub's cluster; as `kubectl probe status -c`).
        #[arg(short = 'c', long, value_name = "CLUSTER")]
        cluster: Option<String>,
    },
    /// The fleet, from the hub's cluster: every member cluster, connected or not, with its
    /// health summary; `add` and `revoke` manage members' credentials (docs/fleet.md).
    Clusters {
        #[command(subcommand)]
        command: Option<clusters::ClustersCommand>,
    },
    /// A release gate: exit 0 only when every probe's latest result is PASS and fresh; otherwise
    /// the failing checkers with their root causes.
    #[command(
        after_help = "Exit codes: 0 every probe passes; 4 a checker fails (ERROR or WARN); \
5 a result is older than --max-age; 6 a result is unknown or missing (no ProbeStatus, UNKNOWN, \
no probe matched); 2 usage; 3 other errors. When several apply: 4 before 5 before 6."
    )]
    Gate(gate::GateArgs),
    /// Run a probe now, or list its past runs with their results and root causes.
    Probe {
        #[command(subcommand)]
        command: probe_runs::ProbeCommand,
    },
}

fn run_defaults_help() -> String {
    use kdiag_pipeline::admission::{TRIAGE_COLLECTORS, TRIAGE_DIAGNOSERS};
    format!(
        "Defaults for the kinds not named (--no-defaults turns them off), those registered in \
         kube-diagnoser:\n  \
         --pod   the pod triage (docs/triage.md): collectors {}; diagnoser {}\n          \
         (without the triage registered: pod-collector, container-collector, kernel-log-collector\n          \
         and every Diagnoser)\n  \
         --node  collectors {}; diagnosers node-triage-diagnoser first, then every other\n          \
         Diagnoser but pod-triage-diagnoser, tried until one identifies the cause\n  \
         recoverers: none\n\n\
         Exit codes: 0 accepted (with --wait: Succeeded), 1 rejected or Failed, 2 usage, 3 other errors.",
        TRIAGE_COLLECTORS.join(", "),
        TRIAGE_DIAGNOSERS.join(", "),
        run::NODE_COLLECTORS.join(", "),
    )
}

/// Where a command looks.
#[derive(Debug, Clone)]
pub struct Scope {
    pub namespace: String,
    pub all_namespaces: bool,
}

impl Scope {
    /// The namespace to list in, None for all.
    pub fn list_namespace(&self) -> Option<&str> {
        (!self.all_namespaces).then_some(self.namespace.as_str())
    }
}

pub fn run(args: DiagArgs) -> Result<ExitCode, DiagError> {
    let Some(command) = args.command else {
        // `kubectl diag` alone: the help, as kubectl does for a bare group command.
        let _ = crate::KubectlDiag::command().print_help();
        return Ok(ExitCode::from(2));
    };
    let style = Style::detect(
        args.flags.color,
        std::io::stdout().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = match runtime.block_on(dispatch(&args.flags, command, style)) {
        Ok(code) => code,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    Ok(ExitCode::from(code))
}

async fn dispatch(flags: &Flags, command: DiagCommand, style: Style) -> Result<u8, DiagError> {
    let kube = client::connect(&ConnectOptions {
        kubeconfig: flags.kubeconfig.clone(),
        context: flags.context.clone(),
        namespace: flags.namespace.clone(),
    })
    .await?;
    let scope = Scope {
        namespace: kube.namespace.clone(),
        all_namespaces: flags.all_namespaces,
    };
    let output = flags.output;
    match command {
        DiagCommand::Get { name } => {
            let text = get::run(&kube, &scope, name.as_deref(), output, style).await?;
            if text.is_empty() {
                eprintln!("{}", get::nothing_found(&scope));
            }
            out(&text)?;
            Ok(0)
        }
        DiagCommand::Probes {
            name,
            cluster: Some(cluster),
        } => {
            let text = probes::run_for_cluster(
                &kube,
                &flags.fleet_namespace,
                &cluster,
                name.as_deref(),
                output,
                style,
            )
            .await?;
            if text.is_empty() {
                eprintln!(
                    "No results of cluster {cluster} in the fleet namespace {}.",
                    flags.fleet_namespace
                );
            }
            out(&text)?;
            Ok(0)
        }
        DiagCommand::Probes {
            name,
            cluster: None,
        } => {
            let text = probes::run(&kube, &scope, name.as_deref(), output, style).await?;
            if text.is_empty() {
                eprintln!("{}", probes::nothing_found(&scope));
            }
            out(&text)?;
            Ok(0)
        }
        DiagCommand::Clusters { command } => {
            let ns = &flags.fleet_namespace;
            let text = match command {
                None => {
                    let text = clusters::list(&kube, ns, output, style).await?;
                    if text.is_empty() {
                        eprintln!("No clusters in the fleet namespace {ns}.");
                    }
                    text
                }
                Some(clusters::ClustersCommand::Add { name, rotate }) => {
                    clusters::add(&kube, ns, &name, rotate).await?
                }
                Some(clusters::ClustersCommand::Revoke { name }) => {
                    clusters::revoke(&kube, ns, &name).await?
                }
                Some(clusters::ClustersCommand::Show { name }) => {
                    clusters::show(&kube, ns, &name, output, style).await?
                }
            };
            out(&text)?;
            Ok(0)
        }
        DiagCommand::Gate(args) => {
            let (verdict, text) = gate::run(&kube, &scope, &args, output, style).await?;
            out(&text)?;
            Ok(verdict.exit_code)
        }
        DiagCommand::Probe { command } => match command {
            probe_runs::ProbeCommand::Run {
                probe,
                wait,
                timeout,
            } => {
                let mut print = |line: &str| {
                    let _ = out(&format!("{line}\n"));
                };
                probe_runs::run(&kube, &scope, &probe, wait, timeout, style, &mut print).await
            }
            probe_runs::ProbeCommand::Once {
                cluster,
                probes,
                wait,
                timeout,
            } => {
                let (id, text) =
                    clusters::once(&kube, &flags.fleet_namespace, &cluster, &probes).await?;
                if !wait {
                    out(&text)?;
                    return Ok(0);
                }
                out(&format!("{id}\n"))?;
                let (code, text) = clusters::wait_once(
                    &kube,
                    &flags.fleet_namespace,
                    &cluster,
                    &id,
                    timeout,
                    style,
                )
                .await?;
                out(&text)?;
                Ok(code)
            }
            probe_runs::ProbeCommand::History {
                cluster: Some(cluster),
                id: Some(id),
                ..
            } => {
                let (_, text) =
                    clusters::once_run(&kube, &flags.fleet_namespace, &cluster, &id, style).await?;
                out(&text)?;
                Ok(0)
            }
            probe_runs::ProbeCommand::History {
                cluster: Some(cluster),
                ..
            } => {
                let text = clusters::once_history(&kube, &flags.fleet_namespace, &cluster).await?;
                if text.is_empty() {
                    eprintln!("No one-time runs of cluster {cluster}.");
                }
                out(&text)?;
                Ok(0)
            }
            probe_runs::ProbeCommand::History { probe, id, .. } => {
                let text = probe_runs::history(
                    &kube,
                    &scope,
                    probe.as_deref(),
                    id.as_deref(),
                    output,
                    style,
                )
                .await?;
                if text.is_empty() {
                    eprintln!("No probe runs found.");
                }
                out(&text)?;
                Ok(0)
            }
        },
        DiagCommand::Describe { name } => {
            let text = describe::run(&kube, &scope.namespace, &name, output, style).await?;
            out(&text)?;
            Ok(0)
        }
        DiagCommand::Watch {
            name,
            timeout,
            admission_timeout,
        } => watch_command(&kube, &scope, &name, timeout, admission_timeout, style).await,
        DiagCommand::Run(args) => {
            let mut print = |line: &str| {
                let _ = out(&format!("{line}\n"));
            };
            let mut warn = |line: &str| eprintln!("{line}");
            run::run(&kube, &scope, &args, output, style, &mut print, &mut warn).await
        }
    }
}

async fn watch_command(
    kube: &Kube,
    scope: &Scope,
    name: &str,
    timeout: Duration,
    admission_timeout: Duration,
    style: Style,
) -> Result<u8, DiagError> {
    let mut print = |line: &str| {
        let _ = out(&format!("{line}\n"));
    };
    let mut warn = |line: &str| eprintln!("{line}");
    let follow = watch::Follow {
        timeout,
        admission_timeout,
        require_controller: false,
    };
    let done = watch::follow(
        kube,
        &scope.namespace,
        name,
        follow,
        style,
        &mut print,
        &mut warn,
    )
    .await?;
    if let Some(rc) = done.status.as_ref().and_then(|s| s.root_cause.as_ref())
        && !rc.suggestion.is_empty()
    {
        print(&format!("suggestion: {}", rc.suggestion));
    }
    print(&format!(
        "the whole story: kubectl diag describe {name} -n {}",
        scope.namespace
    ));
    Ok(run::exit_code(&done))
}

/// Writes to stdout. A closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) -> Result<(), DiagError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(DiagError::Output(e.to_string())),
    }
}

/// Objects as `-o json|yaml` prints them: one object alone, several as a `v1 List`, as kubectl.
pub fn objects(
    items: Vec<serde_json::Value>,
    single: bool,
    output: Option<Output>,
) -> Result<String, DiagError> {
    let value = if single && items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": items,
            "metadata": {"resourceVersion": ""},
        })
    };
    match output {
        Some(Output::Yaml) => {
            serde_yaml::to_string(&value).map_err(|e| DiagError::Output(e.to_string()))
        }
        _ => serde_json::to_string_pretty(&value)
            .map(|s| s + "\n")
            .map_err(|e| DiagError::Output(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn kubectl_flags_go_before_or_after_the_subcommand() {
        let a = crate::KubectlDiag::try_parse_from([
            "kubectl-diag",
            "-n",
            "shop",
            "get",
            "-o",
            "wide",
            "--context",
            "prod",
        ])
        .unwrap()
        .args;
        assert_eq!(a.flags.namespace.as_deref(), Some("shop"));
        assert_eq!(a.flags.context.as_deref(), Some("prod"));
        assert_eq!(a.flags.output, Some(Output::Wide));
        assert!(matches!(a.command, Some(DiagCommand::Get { name: None })));

        let b = crate::KubectlDiag::try_parse_from(["kubectl-diag", "probes", "-A"])
            .unwrap()
            .args;
        assert!(b.flags.all_namespaces);
    }

    #[test]
    fn several_objects_print_as_a_list_and_one_alone() {
        let one = objects(
            vec![serde_json::json!({"kind": "Abnormal"})],
            true,
            Some(Output::Yaml),
        )
        .unwrap();
        assert_eq!(one, "kind: Abnormal\n");
        let many = objects(
            vec![serde_json::json!({"kind": "Abnormal"})],
            false,
            Some(Output::Json),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&many).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][0]["kind"], "Abnormal");
    }
}
