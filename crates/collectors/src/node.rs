//! `node-collector` → `nodeInformation`: load, memory, pressure (PSI), filesystems (bytes and
//! inodes), pid usage, uptime, clock synchronization and offset from the apiserver's clock, and
//! the kubelet's certificates with their expiry, and the certificate chain the apiserver serves to
//! this node.

use std::collections::BTreeSet;
use std::path::Path;

use futures::FutureExt;
use futures::future::BoxFuture;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::NODE_INFORMATION;
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use serde_json::{Map, Value, json};

use crate::budget::{Deadline, Problems, blocking};
use crate::mounts::{self, percent};
use crate::process::scan::{list_pids, read_uptime};

/// Filesystems that hold no data of their own: not worth a line in a node's disk report.
const VIRTUAL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
    "efivarfs",
    "selinuxfs",
    "ramfs",
];
/// Filesystems listed at most; a node with many pods has hundreds of tmpfs and overlay mounts.
const MAX_FILESYSTEMS: usize = 64;
/// How long the apiserver has to present its certificate (as for its clock, 5 s).
const APISERVER_TLS_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

pub struct NodeCollector;

impl Processor for NodeCollector {
    fn name(&self) -> &'static str {
        "node-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        _abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let proc_root = ctx.node.proc_root.clone();
            let pki = ctx.node.kubelet_root.join("pki");
            let deadline = Deadline::within(ctx.timeout);
            let apiserver = ctx.node.apiserver.as_deref();
            let (value, skew, apiserver_certificate) = tokio::join!(
                blocking("reading the node's state", move || {
                    collect(&proc_root, deadline).map(|mut v| {
                        v["certificates"] = certificates(&pki, jiff::Timestamp::now());
                        v
                    })
                }),
                apiserver_skew(&ctx.client),
                crate::served_certs::apiserver_certificate(apiserver, APISERVER_TLS_WITHIN),
            );
            let mut value = value?.map_err(ProcessorError::Failed)?;
            value["clock"]["apiserver"] = skew;
            value["apiserverCertificate"] = apiserver_certificate;
            let message = describe(&value, &ctx.node_name);
            Ok(ProcessorOutput::message(message).with_context(NODE_INFORMATION, value))
        }
        .boxed()
    }
}

fn describe(v: &Value, node: &str) -> String {
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    format!(
        "node {node}: load {:.2}/{:.2}/{:.2} on {} CPUs, memory {:.1}% used, {} filesystems, {} of pid_max {} in use, clock {}",
        f("/load/load1"),
        f("/load/load5"),
        f("/load/load15"),
        f("/cpuCount"),
        f("/memory/usedPercent"),
        v.get("filesystems")
            .and_then(Value::as_array)
            .map_or(0, |a| a.len()),
        f("/pids/threads"),
        f("/pids/pidMax"),
        match v.pointer("/clock/synchronized") {
            Some(Value::Bool(true)) => "synchronized",
            Some(Value::Bool(false)) => "NOT synchronized",
            _ => "sync state unknown",
        }
    )
}

/// Everything node-collector reports. Only /proc/uptime and /proc/meminfo are required; any
/// other part that cannot be read is left out and named under `problems`.
pub fn collect(proc_root: &Path, deadline: Deadline) -> Result<Value, String> {
    let mut problems = Problems::default();
    let mut out = Map::new();
    let uptime = read_uptime(proc_root)?;
    let boot = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs_f64(uptime))
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default();
    out.insert("uptimeSeconds".into(), json!(uptime));
    out.insert("bootTime".into(), json!(boot));
    let read = |name: &str| std::fs::read_to_string(proc_root.join(name));

    let loadavg = read("loadavg").map_err(|e| format!("{}/loadavg: {e}", proc_root.display()));
    let mut threads = None;
    match loadavg.as_deref().map(parse_loadavg) {
        Ok(Some(l)) => {
            threads = Some(l.4);
            out.insert(
                "load".into(),
                json!({"load1": l.0, "load5": l.1, "load15": l.2, "runnable": l.3, "threads": l.4}),
            );
        }
        Ok(None) => problems.push("loadavg: unexpected format"),
        Err(e) => problems.push(e.clone()),
    }
    match read("stat") {
        Ok(stat) => {
            let cpus = stat
                .lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count();
            out.insert("cpuCount".into(), json!(cpus));
        }
        Err(e) => problems.push(format!("{}/stat: {e}", proc_root.display())),
    }
    let meminfo = read("meminfo").map_err(|e| format!("{}/meminfo: {e}", proc_root.display()))?;
    out.insert("memory".into(), memory(&meminfo));
    out.insert("pressure".into(), pressure(proc_root, &mut problems));
    out.insert("pids".into(), pids(proc_root, threads, &mut problems));
    out.insert(
        "filesystems".into(),
        filesystems(proc_root, deadline, &mut problems),
    );
    out.insert("clock".into(), clock());
    if !problems.is_empty() {
        out.insert("problems".into(), problems.to_json());
    }
    Ok(Value::Object(out))
}

/// `0.00 0.01 0.05 1/234 5678` → (1, 5, 15 min, runnable, scheduling entities).
fn parse_loadavg(text: &str) -> Option<(f64, f64, f64, u64, u64)> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let (run, total) = f.get(3)?.split_once('/')?;
    Some((
        f.first()?.parse().ok()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
        run.parse().ok()?,
        total.parse().ok()?,
    ))
}

fn memory(meminfo: &str) -> Value {
    let kb = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let total = kb("MemTotal").unwrap_or(0);
    let available = kb("MemAvailable").unwrap_or(0);
    json!({
        "totalBytes": total,
        "availableBytes": available,
        "freeBytes": kb("MemFree"),
        "buffersBytes": kb("Buffers"),
        "cachedBytes": kb("Cached"),
        "shmemBytes": kb("Shmem"),
        "dirtyBytes": kb("Dirty"),
        "swapTotalBytes": kb("SwapTotal"),
        "swapFreeBytes": kb("SwapFree"),
        "usedPercent": percent(total.saturating_sub(available), total),
    })
}

/// /proc/pressure/{cpu,memory,io}: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`.
fn pressure(proc_root: &Path, problems: &mut Problems) -> Value {
    let dir = proc_root.join("pressure");
    if !dir.is_dir() {
        return json!({
            "available": false,
            "reason": "no /proc/pressure: the kernel is older than 4.20, built without CONFIG_PSI, or booted with psi=0",
        });
    }
    let mut out = Map::new();
    out.insert("available".into(), json!(true));
    for resource in ["cpu", "memory", "io"] {
        match std::fs::read_to_string(dir.join(resource)) {
            Ok(text) => {
                out.insert(resource.into(), parse_psi(&text));
            }
            // Present but unreadable happens with psi disabled at run time (EOPNOTSUPP).
            Err(e) => problems.push(format!("{}: {e}", dir.join(resource).display())),
        }
    }
    Value::Object(out)
}

fn parse_psi(text: &str) -> Value {
    let mut out = Map::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(kind) = parts.next() else { continue };
        let mut fields = Map::new();
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                let v = if k == "total" {
                    v.parse::<u64>().map(|t| json!(t)).unwrap_or(Value::Null)
                } else {
                    v.parse::<f64>().map(|t| json!(t)).unwrap_or(Value::Null)
                };
                fields.insert(
                    if k == "total" {
                        "totalMicros".into()
                    } else {
                        k.to_owned()
                    },
                    v,
                );
            }
        }
        out.insert(kind.to_owned(), Value::Object(fields));
    }
    Value::Object(out)
}

fn pids(proc_root: &Path, threads: Option<u64>, problems: &mut Problems) -> Value {
    let num = |name: &str| {
        std::fs::read_to_string(proc_root.join(name))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let pid_max = num("sys/kernel/pid_max");
    if pid_max.is_none() {
        problems.push(format!(
            "{}/sys/kernel/pid_max unreadable",
            proc_root.display()
        ));
    }
    let processes = list_pids(proc_root).map(|p| p.len()).ok();
    // Every thread takes a pid: threads, not processes, are what runs into pid_max.
    json!({
        "processes": processes,
        "threads": threads,
        "pidMax": pid_max,
        "threadsMax": num("sys/kernel/threads-max"),
        "usedPercent": match (threads, pid_max) {
            (Some(t), Some(m)) => json!(percent(t, m)),
            _ => Value::Null,
        },
    })
}

fn filesystems(proc_root: &Path, deadline: Deadline, problems: &mut Problems) -> Value {
    let mounts = match mounts::host_mounts(proc_root) {
        Ok(m) => m,
        Err(e) => {
            problems.push(e);
            return json!([]);
        }
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut skipped = 0;
    // Shortest mount point first, so a filesystem mounted in several places is listed under
    // its main one (/var/lib/kubelet rather than each pod's bind mount of it).
    let mut mounts = mounts;
    mounts.sort_by_key(|m| m.mount_point.len());
    for m in mounts {
        if VIRTUAL_FS.contains(&m.fs_type.as_str()) || !seen.insert(m.device_number.clone()) {
            continue;
        }
        if out.len() >= MAX_FILESYSTEMS || deadline.passed() {
            skipped += 1;
            continue;
        }
        let path = mounts::host_path(proc_root, &m.mount_point);
        match mounts::capacity(&path) {
            Ok(c) => {
                let mut v = serde_json::to_value(&c).unwrap_or_default();
                if let Value::Object(o) = &mut v {
                    o.insert("mountPoint".into(), json!(m.mount_point));
                    o.insert("fsType".into(), json!(m.fs_type));
                    o.insert("source".into(), json!(m.source));
                }
                out.push(v);
            }
            Err(e) => problems.push(e),
        }
    }
    if skipped > 0 {
        problems.push(format!(
            "{skipped} more filesystems not listed (at most {MAX_FILESYSTEMS}, or the time budget ran out)"
        ));
    }
    Value::Array(out)
}

/// The kubelet's certificates under `pki` (kubelet root/pki): each one's subject, expiry and
/// seconds left, and what could not be read.
fn certificates(pki: &Path, now: jiff::Timestamp) -> Value {
    let (certs, problems) = crate::certs::scan(pki);
    json!({
        "directory": pki.display().to_string(),
        "certificates": certs.iter().map(|c| c.to_json(now)).collect::<Vec<_>>(),
        "problems": problems,
    })
}

/// How far this node's clock is from the apiserver's: the `Date` of an answer against the
/// middle of the request as this node saw it. `Date` has whole seconds, so the uncertainty is a
/// second plus half the round trip.
async fn apiserver_skew(client: &kube::Client) -> Value {
    let request = match http::Request::get("/version").body(Vec::new().into()) {
        Ok(r) => r,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let sent = jiff::Timestamp::now();
    let started = std::time::Instant::now();
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(5), client.send(request)).await;
    let rtt = started.elapsed().as_secs_f64();
    let response = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return json!({"error": format!("asking the apiserver: {e}")}),
        Err(_) => return json!({"error": "the apiserver did not answer within 5 s"}),
    };
    let Some(date) = response
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
    else {
        return json!({"error": "the apiserver's answer has no Date header"});
    };
    match jiff::fmt::rfc2822::parse(date) {
        Ok(theirs) => {
            let middle = sent.as_millisecond() as f64 / 1000.0 + rtt / 2.0;
            // Date is truncated to the second: its true time is up to a second later.
            let theirs = theirs.timestamp().as_second() as f64 + 0.5;
            json!({
                "skewSeconds": ((middle - theirs) * 10.0).round() / 10.0,
                "uncertaintySeconds": ((0.5 + rtt / 2.0) * 10.0).ceil() / 10.0,
                "apiserverDate": date,
            })
        }
        Err(e) => json!({"error": format!("the apiserver's Date {date:?}: {e}")}),
    }
}

/// The kernel's NTP state (adjtimex, read-only): whether a time daemon keeps the clock in sync.
fn clock() -> Value {
    // SAFETY: adjtimex with modes = 0 only reads the kernel's state into the zeroed struct we
    // own; it needs no privilege and changes nothing.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return json!({
            "synchronized": Value::Null,
            "state": "unknown",
            "reason": format!("adjtimex failed: {}", std::io::Error::last_os_error()),
        });
    }
    let unsync = tx.status & libc::STA_UNSYNC != 0;
    let state_name = match state {
        libc::TIME_OK => "TIME_OK",
        libc::TIME_INS => "TIME_INS",
        libc::TIME_DEL => "TIME_DEL",
        libc::TIME_OOP => "TIME_OOP",
        libc::TIME_WAIT => "TIME_WAIT",
        libc::TIME_ERROR => "TIME_ERROR",
        _ => "unknown",
    };
    json!({
        // TIME_ERROR or STA_UNSYNC: no daemon (chronyd, ntpd, systemd-timesyncd) disciplines
        // the clock, or it lost its sources.
        "synchronized": state != libc::TIME_ERROR && !unsync,
        "state": state_name,
        "maxErrorMicros": tx.maxerror,
        "estimatedErrorMicros": tx.esterror,
        "source": "adjtimex",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_and_psi_lines_parse() {
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 2/345 6789\n"),
            Some((0.5, 0.25, 0.1, 2, 345))
        );
        let v = parse_psi(
            "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        assert_eq!(v["some"]["avg10"], json!(1.5));
        assert_eq!(v["some"]["totalMicros"], json!(12345));
        assert!(v.get("full").is_some());
    }

    #[test]
    fn this_machines_node_state_has_every_section() {
        let v = collect(Path::new("/proc"), Deadline::never()).unwrap();
        assert!(v["uptimeSeconds"].as_f64().unwrap() > 0.0);
        assert!(v["memory"]["totalBytes"].as_u64().unwrap() > 0);
        assert!(v["load"]["threads"].as_u64().unwrap() > 0);
        assert!(v["pids"]["pidMax"].as_u64().unwrap() > 0);
        let fs = v["filesystems"].as_array().unwrap();
        assert!(
            fs.iter()
                .any(|f| f["mountPoint"] == "/" && f["sizeBytes"].as_u64().unwrap() > 0),
            "{fs:?}"
        );
        assert!(v["clock"]["state"].is_string());
        assert!(v["pressure"]["available"].is_boolean());
    }
}
