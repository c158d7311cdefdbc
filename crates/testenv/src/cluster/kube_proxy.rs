//! kube-proxy 1.20 in iptables mode, for a cluster started with
//! [`ClusterOptions::kube_proxy`](super::ClusterOptions): ClusterIP Services work from pods and
//! from the node, and so does in-cluster API access through the `kubernetes` Service.
//!
//! kube-proxy changes two things that belong to the whole machine, not to the run:
//! - the `KUBE-*` chains of the nat, filter and mangle tables and the jumps to them from the
//!   built-in chains. Their names are fixed in kube-proxy, so two kube-proxies on one machine
//!   would each delete the other's rules at every sync;
//! - the sysctl `net.ipv4.conf.all.route_localnet`, which kube-proxy 1.20 sets to 1 at start.
//!
//! Hence one kube-proxy cluster per machine at a time. A start takes an exclusive lock
//! (`flock` on `<run base>/kube-proxy.lock`, held for the cluster's life; a second start waits
//! for it) and, holding it, writes a claim: the run and the sysctl's value before. The stop
//! removes every `KUBE-*` chain and jump, restores the sysctl, deletes the claim and drops the
//! lock. A start or a stale-run cleanup that gets the lock and finds a claim finishes the job of
//! its dead owner first. `KUBE-*` chains without a claim belong to something else (a kubelet or
//! kube-proxy of a real node): kube-proxy is then refused rather than fight it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::config;
use super::layout::RunRecord;
use crate::binaries::Binaries;
use crate::control_plane::free_ports;
use crate::process::{ManagedProcess, tail};
use crate::{ControlPlane, TestEnvError, rundir};

const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const TABLES: [&str; 3] = ["nat", "filter", "mangle"];
/// How long a start waits for another kube-proxy cluster of this machine to stop.
const LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Where iptables lives on Debian; kube-proxy runs `iptables`, `iptables-save` and
/// `iptables-restore` through PATH.
const SBIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The claim file, next to the lock.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimRecord {
    run_dir: PathBuf,
    /// `net.ipv4.conf.all.route_localnet` before kube-proxy set it.
    route_localnet: String,
}

/// The machine's kube-proxy slot, held by one live cluster.
#[derive(Debug)]
pub(crate) struct Claim {
    _lock: Flock<File>,
}

fn lock_path() -> PathBuf {
    rundir::base().join("kube-proxy.lock")
}

fn claim_path() -> PathBuf {
    rundir::base().join("kube-proxy.claim")
}

fn open_lock() -> Result<File, TestEnvError> {
    let base = rundir::base();
    std::fs::create_dir_all(&base).map_err(TestEnvError::io(&base))?;
    let path = lock_path();
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(TestEnvError::io(&path))
}

/// Waits for the machine's kube-proxy slot, cleans up after a dead previous holder, and claims
/// it for `run`.
pub(crate) async fn claim(run: &RunRecord) -> Result<Claim, TestEnvError> {
    let start = Instant::now();
    let mut said = false;
    let lock = loop {
        match Flock::lock(open_lock()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                if start.elapsed() > LOCK_TIMEOUT {
                    return Err(TestEnvError::Other(format!(
                        "another test cluster with kube-proxy has held {} for {} minutes; kube-proxy's iptables chains are machine-wide, so only one runs at a time",
                        lock_path().display(),
                        LOCK_TIMEOUT.as_secs() / 60
                    )));
                }
                if !said {
                    eprintln!(
                        "kdiag-testenv: waiting for another test cluster with kube-proxy to stop (its iptables chains are machine-wide)"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err((_, errno)) => {
                return Err(TestEnvError::Other(format!(
                    "lock {}: {errno}",
                    lock_path().display()
                )));
            }
        }
    };
    let problems = finish_dead_claim();
    if !problems.is_empty() {
        return Err(TestEnvError::Other(format!(
            "could not remove what an earlier kube-proxy run left: {}",
            problems.join("; ")
        )));
    }
    let chains = kube_chains()?;
    if !chains.is_empty() {
        return Err(TestEnvError::UnsupportedHost {
            reason: format!(
                "iptables already has kube-proxy's chains ({}) and no test run made them: this machine runs a kubelet or kube-proxy of its own, whose rules a test kube-proxy would overwrite",
                chains.join(", ")
            ),
        });
    }
    let record = ClaimRecord {
        run_dir: run.dir.clone(),
        route_localnet: std::fs::read_to_string(ROUTE_LOCALNET)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default(),
    };
    let path = claim_path();
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(&record).map_err(|e| TestEnvError::Other(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(TestEnvError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(TestEnvError::io(&path))?;
    Ok(Claim { _lock: lock })
}

/// Removes kube-proxy's rules, restores the sysctl and gives the slot back. Returns what could
/// not be undone.
pub(crate) fn release(claim: Claim) -> Vec<String> {
    let problems = undo_claimed();
    drop(claim);
    problems
}

/// For the stale-run cleanup: when no live cluster holds the slot and a dead one claimed it,
/// undoes what it left.
pub(crate) fn cleanup_unheld() -> Vec<String> {
    let Ok(file) = open_lock() else {
        return Vec::new();
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Held: a live cluster, which cleaned up after the dead one when it took the slot.
        Err(_) => Vec::new(),
        Ok(_lock) => finish_dead_claim(),
    }
}

/// With the lock held: undoes a claim whose owner is gone, if there is one.
fn finish_dead_claim() -> Vec<String> {
    if claim_path().exists() {
        undo_claimed()
    } else {
        Vec::new()
    }
}

/// With the lock held: removes the chains, restores the sysctl the claim recorded, deletes the
/// claim.
fn undo_claimed() -> Vec<String> {
    let mut problems = remove_kube_chains();
    let path = claim_path();
    match std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ClaimRecord>(&b).ok())
    {
        Some(record) if !record.route_localnet.is_empty() => {
            if let Err(e) = std::fs::write(ROUTE_LOCALNET, &record.route_localnet) {
                problems.push(format!(
                    "sysctl net.ipv4.conf.all.route_localnet={}: {e}",
                    record.route_localnet
                ));
            }
        }
        _ => {}
    }
    if problems.is_empty() {
        let _ = std::fs::remove_file(&path);
    }
    problems
}

fn iptables(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", SBIN_PATH);
    cmd
}

fn save(table: &str) -> Result<String, String> {
    let out = iptables("iptables-save")
        .args(["-t", table])
        .output()
        .map_err(|e| format!("iptables-save -t {table}: {e} (apt-get install iptables)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables-save -t {table}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `table/chain` of every `KUBE-*` chain on the machine.
pub(crate) fn kube_chains() -> Result<Vec<String>, TestEnvError> {
    let mut all = Vec::new();
    for table in TABLES {
        let text = save(table).map_err(TestEnvError::Other)?;
        all.extend(chains_of(&text).into_iter().map(|c| format!("{table}/{c}")));
    }
    Ok(all)
}

fn chains_of(save_output: &str) -> Vec<String> {
    save_output
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("KUBE-"))
        .map(str::to_owned)
        .collect()
}

/// The iptables-restore input (used with --noflush) that removes every `KUBE-*` chain of one
/// table and every rule of another chain that jumps to one: what `kube-proxy --cleanup` does,
/// plus the chains it leaves (KUBE-MARK-MASQ, KUBE-MARK-DROP, KUBE-PROXY-CANARY). `None` when the
/// table has none.
fn removal_script(table: &str, save_output: &str) -> Option<String> {
    let chains = chains_of(save_output);
    if chains.is_empty() {
        return None;
    }
    let mut script = format!("*{table}\n");
    // Declaring a chain under --noflush flushes it.
    for c in &chains {
        script.push_str(&format!(":{c} - [0:0]\n"));
    }
    for line in save_output.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or_default();
        let jumps_to_kube = rule
            .split(" -j ")
            .nth(1)
            .is_some_and(|target| target.starts_with("KUBE-"));
        if !chain.starts_with("KUBE-") && jumps_to_kube {
            script.push_str(&format!("-D {rule}\n"));
        }
    }
    for c in &chains {
        script.push_str(&format!("-X {c}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// Removes every `KUBE-*` chain and every jump to one. Returns what failed.
pub(crate) fn remove_kube_chains() -> Vec<String> {
    let mut problems = Vec::new();
    for table in TABLES {
        let text = match save(table) {
            Ok(t) => t,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let Some(script) = removal_script(table, &text) else {
            continue;
        };
        let child = iptables("iptables-restore")
            .args(["--noflush", "--wait"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let result = child.and_then(|mut c| {
            use std::io::Write;
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            c.wait_with_output()
        });
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "iptables-restore of the {table} table: {}\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => problems.push(format!("iptables-restore of the {table} table: {e}")),
        }
    }
    problems
}

/// Whether pod-to-pod traffic through a Service on the same bridge passes iptables (bridge
/// netfilter). Without it kube-proxy must masquerade all Service traffic.
pub(crate) fn bridge_netfilter() -> bool {
    std::fs::read_to_string(BRIDGE_NF_CALL_IPTABLES).is_ok_and(|v| v.trim() == "1")
}

/// Writes the configuration and starts kube-proxy.
pub(crate) fn start(
    run: &RunRecord,
    bins: &Binaries,
    cp: &ControlPlane,
    node_name: &str,
) -> Result<ManagedProcess, TestEnvError> {
    Binaries::require(&bins.kube_proxy)?;
    let conf = run.kube_proxy_config();
    let [healthz_port, metrics_port] = free_ports()?;
    std::fs::write(
        &conf,
        config::kube_proxy_config(
            run,
            cp.kubeconfig_path(),
            node_name,
            healthz_port,
            metrics_port,
            !bridge_netfilter(),
        ),
    )
    .map_err(TestEnvError::io(&conf))?;
    ManagedProcess::spawn_with(
        "kube-proxy",
        &bins.kube_proxy,
        &[format!("--config={}", conf.display()), "--v=1".into()],
        &run.log("kube-proxy"),
        |cmd| {
            cmd.env("PATH", SBIN_PATH);
        },
    )
}

/// Waits until kube-proxy has written the rules of the `kubernetes` Service and its endpoint
/// (`endpoint`, the apiserver's advertised address): its first full sync.
pub(crate) async fn wait_ready(
    run: &RunRecord,
    kube_proxy: &mut ManagedProcess,
    endpoint: &str,
) -> Result<(), TestEnvError> {
    let start = Instant::now();
    let dnat = format!("--to-destination {endpoint}");
    while start.elapsed() < READY_TIMEOUT {
        kube_proxy.check_running()?;
        if let Ok(nat) = save("nat")
            && nat.contains("default/kubernetes:https")
            && nat.contains(&dnat)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(TestEnvError::NotReady {
        what: format!("kube-proxy (rules for the kubernetes Service to {endpoint})"),
        seconds: READY_TIMEOUT.as_secs(),
        log: run.log("kube-proxy"),
        tail: tail(&run.log("kube-proxy"), 30),
    })
}

/// Creates the run's bridge with its gateway address before anything else needs it: the
/// apiserver listens there, the one address of the node both the node and its pods reach. The
/// CNI bridge plugin adopts it (same name, same address) at the first pod.
pub(crate) fn create_bridge(run: &RunRecord, ip: &Path) -> Result<(), TestEnvError> {
    let bridge = run.bridge();
    let prefix = run.pod_subnet.split('/').nth(1).unwrap_or("24");
    let address = format!("{}/{prefix}", run.gateway());
    for args in [
        vec!["link", "add", bridge.as_str(), "type", "bridge"],
        vec!["addr", "add", address.as_str(), "dev", bridge.as_str()],
        vec!["link", "set", bridge.as_str(), "up"],
    ] {
        let out = Command::new(ip)
            .args(&args)
            .output()
            .map_err(|source| TestEnvError::Spawn {
                process: format!("ip {}", args.join(" ")),
                source,
            })?;
        if !out.status.success() {
            return Err(TestEnvError::CommandFailed {
                command: format!("ip {}", args.join(" ")),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:OTHER - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A POSTROUTING -o eth0 -j MASQUERADE
-A OTHER -d 10.9.9.9/32 -j ACCEPT
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
COMMIT
";

    #[test]
    fn the_removal_takes_every_kube_chain_and_jump_and_nothing_else() {
        let script = removal_script("nat", SAVED).unwrap();
        assert!(script.starts_with("*nat\n") && script.ends_with("COMMIT\n"));
        for chain in [
            "KUBE-MARK-MASQ",
            "KUBE-POSTROUTING",
            "KUBE-SERVICES",
            "KUBE-SVC-NPX46M4PTMTKRN6Y",
        ] {
            assert!(script.contains(&format!(":{chain} - [0:0]\n")), "{script}");
            assert!(script.contains(&format!("-X {chain}\n")), "{script}");
        }
        assert!(script.contains(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(script.contains("-D OUTPUT "));
        assert!(script.contains("-D POSTROUTING -m comment"));
        assert!(!script.contains("MASQUERADE"), "{script}");
        assert!(!script.contains("OTHER"), "{script}");
        // Rules inside KUBE chains go with their chain's flush.
        assert!(!script.contains("-D KUBE-"), "{script}");
    }

    #[test]
    fn a_table_without_kube_chains_is_left_alone() {
        let plain = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n";
        assert_eq!(removal_script("filter", plain), None);
        assert!(chains_of(plain).is_empty());
    }
}
