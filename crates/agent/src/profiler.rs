//! Profilers: a Go program's pprof profile fetched over HTTP, or a Java program's jcmd report or
//! HPROF file, kept under the agent's data root and served by the agent's own HTTP server under a
//! per-Abnormal path (no random host ports, unlike Kube Diagnoser).
//!
//! Java (see docs/profilers.md): the target JVMs are the process `java.pid` names, or the Java
//! processes of `spec.podReference` (and its container) on this node, found through their cgroups
//! like process-collector does. `type: Arthas` runs the node's `jcmd` (VM.version, Thread.print
//! -l, GC.class_histogram -all) against each of them, as the target's user when the agent may
//! switch to it, each run in its own process group killed at the profiler's timeout, output
//! capped; `type: MemoryAnalyzer` keeps a copy of the HPROF file, read through
//! /proc/<pid>/root of a process of the pod when there is one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::{Abnormal, JavaProfilerSpec, JavaProfilerType, ProfilerSpec, ProfilerStatus};
use kdiag_collectors::budget::Deadline;
use kdiag_collectors::process::scan;
use kdiag_recoverers::command::{Ended, run_bounded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default seconds a profiling run may take.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 30;
/// Default seconds a profile stays available.
pub const DEFAULT_EXPIRATION_SECONDS: i32 = 7200;
/// The most bytes of one profile kept (a pprof profile, a jcmd report).
const MAX_PROFILE_BYTES: usize = 64 * 1024 * 1024;
/// The largest HPROF file copied; a bigger one is left where it is, with an error saying so.
pub const MAX_HPROF_BYTES: u64 = 256 * 1024 * 1024;
/// JVMs of one pod profiled by one profiler, at most.
const MAX_JAVA_TARGETS: usize = 4;
/// The diagnostic commands of a jcmd report: each only reads the JVM (the histogram walks the
/// heap at a safepoint without forcing a full GC, `-all`).
const JCMD_COMMANDS: [&[&str]; 3] = [
    &["VM.version"],
    &["Thread.print", "-l"],
    &["GC.class_histogram", "-all"],
];

/// Where profiles are kept and how they are reached.
pub struct Profilers {
    /// Directory profiles are written to.
    pub data_root: PathBuf,
    /// Base URL of the agent's HTTP server as others reach it, e.g. http://10.0.0.5:10357.
    pub public_url: String,
    /// The host's /proc (the agent runs with hostPID), where target JVMs are looked for.
    pub proc_root: PathBuf,
    /// To look up the pod of spec.podReference; without it, only `java.pid` names a JVM.
    pub client: Option<kube::Client>,
}

/// How often the agent deletes profiles whose expirationSeconds have passed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What a profiler run produced.
pub struct ProfilerRun {
    pub status: ProfilerStatus,
    /// What the result at the endpoint is, for the step's message; empty on error.
    pub summary: String,
}

impl Profilers {
    /// The file and URL path of one profile.
    fn location(&self, abnormal: &Abnormal, name: &str) -> (PathBuf, String) {
        let ns = abnormal.metadata.namespace.clone().unwrap_or_default();
        let ab = abnormal.metadata.name.clone().unwrap_or_default();
        let file = self
            .data_root
            .join("profiles")
            .join(&ns)
            .join(&ab)
            .join(sanitize(name));
        (file, format!("/profiles/{ns}/{ab}/{}", sanitize(name)))
    }

    /// Runs a profiler and says where its result is, or why there is none.
    pub async fn run(&self, abnormal: &Abnormal, spec: &ProfilerSpec) -> ProfilerRun {
        let mut status = ProfilerStatus {
            name: spec.name.clone(),
            type_: spec.type_,
            endpoint: String::new(),
            error: String::new(),
        };
        let timeout = Duration::from_secs(
            spec.timeout_seconds
                .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
                .max(1) as u64,
        );
        let result = match (&spec.go, &spec.java) {
            (Some(go), None) => self
                .go(abnormal, &spec.name, &go.source, timeout)
                .await
                .map(|p| (p, format!("pprof profile from {}", go.source))),
            (None, Some(java)) => {
                // Everything, target lookup included, within the profiler's timeout.
                match tokio::time::timeout(timeout, self.java(abnormal, &spec.name, java, timeout))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "the Java profiler did not finish within its timeout of {}s (timeoutSeconds)",
                        timeout.as_secs()
                    )),
                }
            }
            _ => Err("a profiler needs exactly one of go and java".to_owned()),
        };
        let mut summary = String::new();
        match result {
            Ok((url_path, what)) => {
                status.endpoint = format!("{}{url_path}", self.public_url);
                summary = what;
                let keep = spec
                    .expiration_seconds
                    .unwrap_or(DEFAULT_EXPIRATION_SECONDS)
                    .max(1) as i64;
                let (file, _) = self.location(abnormal, &spec.name);
                if let Err(e) = self
                    .record_expiry(&file, jiff::Timestamp::now().as_second() + keep)
                    .await
                {
                    // The profile is there; only its clean-up is at risk, so say it and go on.
                    tracing::warn!(profile = %file.display(), error = %e, "cannot record when the profile expires; it will not be deleted");
                }
            }
            Err(e) => status.error = e,
        }
        ProfilerRun { status, summary }
    }

    /// The marker holding when `file` (under data_root/profiles) expires: the same relative path
    /// under data_root/profile-expiry, outside what the HTTP server serves.
    fn expiry_marker(&self, file: &Path) -> Option<PathBuf> {
        let rel = file.strip_prefix(self.data_root.join("profiles")).ok()?;
        Some(self.data_root.join("profile-expiry").join(rel))
    }

    async fn record_expiry(&self, file: &Path, expires_at_unix: i64) -> Result<(), String> {
        let marker = self
            .expiry_marker(file)
            .ok_or_else(|| format!("{} is not under the profiles directory", file.display()))?;
        if let Some(dir) = marker.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        tokio::fs::write(&marker, expires_at_unix.to_string())
            .await
            .map_err(|e| format!("writing {}: {e}", marker.display()))
    }

    /// Deletes the profiles whose expirationSeconds have passed by `now_unix`, and their markers;
    /// returns how many were deleted. A profile is at most SWEEP_INTERVAL late to go.
    pub async fn sweep_expired(&self, now_unix: i64) -> usize {
        let (profiles, markers) = (
            self.data_root.join("profiles"),
            self.data_root.join("profile-expiry"),
        );
        tokio::task::spawn_blocking(move || sweep(&profiles, &markers, now_unix))
            .await
            .unwrap_or(0)
    }

    async fn go(
        &self,
        abnormal: &Abnormal,
        name: &str,
        source: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let url = reqwest::Url::parse(source)
            .map_err(|e| format!("go.source {source:?} is not a URL: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "go.source {source:?} must be an http or https URL of a pprof endpoint"
            ));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let mut resp = client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("fetching {source}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{source} answered HTTP {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading {source}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_PROFILE_BYTES {
                return Err(format!("{source} sent more than {MAX_PROFILE_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let (file, url_path) = self.location(abnormal, name);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        tokio::fs::write(&file, &body)
            .await
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        Ok(url_path)
    }
}

/// A process a Java profiler works on.
#[derive(Debug, Clone, PartialEq)]
struct JavaTarget {
    pid: i32,
    /// Effective uid and gid.
    uid: u32,
    gid: u32,
    /// The command line, shortened, for the report.
    command: String,
    /// Whether it runs a JVM: named java, or libjvm.so mapped.
    jvm: bool,
    /// Where it was found, for the report: "java.pid" or "pod ns/name container c".
    origin: String,
}

impl Profilers {
    /// A Java profiler: returns the URL path of its result and what the result is.
    async fn java(
        &self,
        abnormal: &Abnormal,
        name: &str,
        java: &JavaProfilerSpec,
        timeout: Duration,
    ) -> Result<(String, String), String> {
        let deadline = Instant::now() + timeout;
        match java.type_ {
            JavaProfilerType::Arthas => {
                let jcmd = which("jcmd").ok_or_else(jcmd_missing)?;
                let (targets, searched) = self.java_targets(abnormal, java, timeout).await?;
                let jvms: Vec<JavaTarget> = targets.into_iter().filter(|t| t.jvm).collect();
                if jvms.is_empty() {
                    return Err(format!("no Java process found: searched {searched}"));
                }
                let report = jcmd_report(&jcmd, abnormal, name, &jvms, deadline).await?;
                let url_path = self.store(abnormal, name, report.text.as_bytes()).await?;
                Ok((url_path, report.summary))
            }
            JavaProfilerType::MemoryAnalyzer => {
                if !java.hprof_file_path.starts_with('/') {
                    return Err(
                        "java.hprofFilePath must be the absolute path of an HPROF file for type MemoryAnalyzer"
                            .into(),
                    );
                }
                let targets = if java.pid.is_some() || abnormal.spec.pod_reference.is_some() {
                    let (mut t, searched) = self.java_targets(abnormal, java, timeout).await?;
                    if t.is_empty() {
                        return Err(format!(
                            "no process found to read the HPROF file through: searched {searched}"
                        ));
                    }
                    // JVMs first: the file is most likely in their filesystem.
                    t.sort_by_key(|t| !t.jvm);
                    Some(t)
                } else {
                    None
                };
                self.hprof(abnormal, name, &java.hprof_file_path, targets, deadline)
                    .await
            }
        }
    }

    /// The processes named by `java.pid`, or those of the Abnormal's pod (and container) on this
    /// node; and a description of what was searched, for errors.
    async fn java_targets(
        &self,
        abnormal: &Abnormal,
        java: &JavaProfilerSpec,
        timeout: Duration,
    ) -> Result<(Vec<JavaTarget>, String), String> {
        if let Some(pid) = java.pid {
            if pid <= 0 {
                return Err(format!("java.pid {pid} is not a process id"));
            }
            let t = read_target(&self.proc_root, pid, "java.pid".into())?;
            let searched = format!(
                "process {pid} (java.pid), which is not a JVM ({})",
                t.command
            );
            return Ok((vec![t], searched));
        }
        let Some(r) = &abnormal.spec.pod_reference else {
            return Err(
                "no target JVM: set spec.podReference (the pod running Java) or the profiler's java.pid (a host pid)"
                    .into(),
            );
        };
        let ns = if r.namespace.is_empty() {
            abnormal.metadata.namespace.clone().unwrap_or_default()
        } else {
            r.namespace.clone()
        };
        let pod_name = format!("{ns}/{}", r.name);
        let client = self.client.clone().ok_or_else(|| {
            format!("cannot look up pod {pod_name}: this agent has no API client")
        })?;
        let pod = tokio::time::timeout(
            timeout / 3,
            kube::Api::<Pod>::namespaced(client, &ns).get(&r.name),
        )
        .await
        .map_err(|_| {
            format!(
                "looking up pod {pod_name} took longer than {:?}",
                timeout / 3
            )
        })?
        .map_err(|e| format!("looking up pod {pod_name}: {e}"))?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod_node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !abnormal.spec.node_name.is_empty()
            && !pod_node.is_empty()
            && pod_node != abnormal.spec.node_name
        {
            return Err(format!(
                "pod {pod_name} runs on node {pod_node}, not on {} where this profiler runs",
                abnormal.spec.node_name
            ));
        }
        let container = r.container_name.as_str();
        let container_id = if container.is_empty() {
            None
        } else {
            Some(container_id(&pod, container).ok_or_else(|| {
                format!("container {container} of pod {pod_name} has no container ID (not started, or no such container)")
            })?)
        };
        let proc_root = self.proc_root.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            scan::scan(
                &proc_root,
                Deadline::after(timeout / 3),
                scan::default_threads(),
            )
        })
        .await
        .map_err(|e| format!("scanning processes: {e}"))??;
        let origin = if container.is_empty() {
            format!("pod {pod_name}")
        } else {
            format!("pod {pod_name} container {container}")
        };
        let pids = pod_processes(&snapshot.processes, &uid, container_id.as_deref());
        let mut targets = Vec::new();
        for pid in pids {
            // A process that exited since the scan is simply not a target.
            if let Ok(t) = read_target(&self.proc_root, pid, origin.clone()) {
                targets.push(t);
            }
        }
        let searched = format!(
            "the {} processes of {origin} (uid {uid}) on this node{}",
            targets.len(),
            if snapshot.complete {
                ""
            } else {
                " (the process scan was cut short by the timeout)"
            }
        );
        Ok((targets, searched))
    }

    /// Keeps a copy of the HPROF file, read through a target's root when there are targets.
    async fn hprof(
        &self,
        abnormal: &Abnormal,
        name: &str,
        path: &str,
        targets: Option<Vec<JavaTarget>>,
        deadline: Instant,
    ) -> Result<(String, String), String> {
        let candidates: Vec<(PathBuf, String)> = match &targets {
            Some(ts) => ts
                .iter()
                .map(|t| {
                    (
                        self.proc_root
                            .join(t.pid.to_string())
                            .join("root")
                            .join(path.trim_start_matches('/')),
                        format!("{path} in the filesystem of pid {} ({})", t.pid, t.origin),
                    )
                })
                .collect(),
            None => vec![(PathBuf::from(path), format!("{path} on the node"))],
        };
        let Some((source, what, size)) = candidates.iter().find_map(|(p, what)| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (p.clone(), what.clone(), m.len()))
        }) else {
            let looked: Vec<&str> = candidates.iter().map(|(_, w)| w.as_str()).collect();
            return Err(format!("no HPROF file: looked for {}", looked.join(", ")));
        };
        if size > MAX_HPROF_BYTES {
            return Err(format!(
                "{what} is {size} bytes, more than the {MAX_HPROF_BYTES} kdiag copies; copy it yourself (kubectl cp) and open it in Eclipse MAT"
            ));
        }
        let (file, url_path) = self.location(abnormal, name);
        let tmp = file.with_extension("partial");
        let copy = copy_hprof(&source, &tmp, &file, size);
        let result =
            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), copy)
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "copying {what} did not finish within the profiler's timeout"
                )),
            };
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        Ok((
            url_path,
            format!(
                "the raw HPROF heap dump {what} ({size} bytes), for Eclipse Memory Analyzer (kdiag does not analyze it)"
            ),
        ))
    }

    /// Writes a result under its per-Abnormal path (through a temporary file, so a half-written
    /// one is never served) and returns that path.
    async fn store(&self, abnormal: &Abnormal, name: &str, body: &[u8]) -> Result<String, String> {
        let (file, url_path) = self.location(abnormal, name);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let tmp = file.with_extension("partial");
        tokio::fs::write(&tmp, body)
            .await
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        tokio::fs::rename(&tmp, &file)
            .await
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), file.display()))?;
        Ok(url_path)
    }
}

/// The container ID (without the runtime's `scheme://`) of a pod's container by name.
fn container_id(pod: &Pod, container: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    [
        status.container_statuses.as_deref(),
        status.init_container_statuses.as_deref(),
        status.ephemeral_container_statuses.as_deref(),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|c| c.name == container)
    .and_then(|c| c.container_id.clone())
    .map(|id| id.rsplit("://").next().unwrap_or_default().to_owned())
    .filter(|id| !id.is_empty())
}

/// The pids of a pod's processes (of one container, if given), without the runtime's monitor.
fn pod_processes(
    processes: &[scan::ProcessInfo],
    pod_uid: &str,
    container_id: Option<&str>,
) -> Vec<i32> {
    processes
        .iter()
        .filter(|p| !pod_uid.is_empty() && p.pod_uid.as_deref() == Some(pod_uid))
        .filter(|p| !p.runtime_monitor)
        .filter(|p| container_id.is_none() || p.container_id.as_deref() == container_id)
        .map(|p| p.pid)
        .collect()
}

/// Reads what a profiler needs of one process.
fn read_target(proc_root: &Path, pid: i32, origin: String) -> Result<JavaTarget, String> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("process {pid} does not exist on this node")
        } else {
            format!("reading {}/status: {e}", dir.display())
        }
    })?;
    let id = |key: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
    let argv: Vec<String> = std::fs::read(dir.join("cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let named_java = comm.trim() == "java"
        || argv
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("java"));
    let jvm = named_java || maps_libjvm(&dir.join("maps"));
    let mut command = argv.join(" ");
    if command.len() > 300 {
        let mut cut = 300;
        while !command.is_char_boundary(cut) {
            cut -= 1;
        }
        command.truncate(cut);
        command.push('…');
    }
    if command.is_empty() {
        command = format!("[{}]", comm.trim());
    }
    Ok(JavaTarget {
        pid,
        uid: id("Uid:"),
        gid: id("Gid:"),
        command,
        jvm,
        origin,
    })
}

/// Whether a process maps HotSpot's libjvm.so (a JVM started by a launcher not named java).
fn maps_libjvm(maps: &Path) -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(f) = std::fs::File::open(maps) else {
        return false;
    };
    BufReader::new(f)
        .lines()
        .take(100_000)
        .map_while(Result::ok)
        .any(|l| l.ends_with("/libjvm.so"))
}

/// Copies an HPROF file after checking it is one, at most `size` bytes, then renames the copy
/// into place.
async fn copy_hprof(source: &Path, tmp: &Path, file: &Path, size: u64) -> Result<(), String> {
    let mut src = tokio::fs::File::open(source)
        .await
        .map_err(|e| format!("opening {}: {e}", source.display()))?;
    let mut magic = [0u8; 17];
    src.read_exact(&mut magic)
        .await
        .map_err(|_| format!("{} is not an HPROF file (too short)", source.display()))?;
    if &magic != b"JAVA PROFILE 1.0." {
        return Err(format!(
            "{} is not an HPROF file (it does not start with \"JAVA PROFILE 1.0.\")",
            source.display()
        ));
    }
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut dst = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    dst.write_all(&magic)
        .await
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    // The file may grow while it is copied (a dump being written): never more than its size.
    let mut rest = (&mut src).take(size.saturating_sub(magic.len() as u64));
    tokio::io::copy(&mut rest, &mut dst)
        .await
        .map_err(|e| format!("copying {}: {e}", source.display()))?;
    dst.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    drop(dst);
    tokio::fs::rename(tmp, file)
        .await
        .map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// A jcmd report and what it holds.
struct JcmdReport {
    text: String,
    summary: String,
}

/// Runs the report's jcmd commands against each JVM, sequentially, until `deadline`.
async fn jcmd_report(
    jcmd: &Path,
    abnormal: &Abnormal,
    name: &str,
    jvms: &[JavaTarget],
    deadline: Instant,
) -> Result<JcmdReport, String> {
    let ns = abnormal.metadata.namespace.as_deref().unwrap_or_default();
    let ab = abnormal.metadata.name.as_deref().unwrap_or_default();
    let commands: Vec<String> = JCMD_COMMANDS.iter().map(|c| c.join(" ")).collect();
    let mut text = format!(
        "# kdiag Java report of profiler {name} for Abnormal {ns}/{ab}\n\
         # Arthas is not part of kdiag: this is what the node's jcmd ({}) gives: {}.\n\
         # JVMs: {}{}\n",
        jcmd.display(),
        commands.join(", "),
        jvms.len(),
        if jvms.len() > MAX_JAVA_TARGETS {
            format!(" (the first {MAX_JAVA_TARGETS} are reported)")
        } else {
            String::new()
        },
    );
    let jvms = &jvms[..jvms.len().min(MAX_JAVA_TARGETS)];
    // Room for every command's output within MAX_PROFILE_BYTES.
    let cap = MAX_PROFILE_BYTES / (jvms.len() * JCMD_COMMANDS.len()).max(1);
    let mut reported = Vec::new();
    let mut failures = Vec::new();
    for jvm in jvms {
        let run_as = run_as(jvm);
        text.push_str(&format!(
            "\n## pid {} ({}), uid {}: {}\n# jcmd ran as {}\n",
            jvm.pid,
            jvm.origin,
            jvm.uid,
            jvm.command,
            match run_as {
                Some((u, g)) => format!("uid {u} gid {g} (the JVM's user)"),
                None => format!("the agent's user (uid {})", nix::unistd::geteuid()),
            }
        ));
        let mut ok = 0;
        for command in JCMD_COMMANDS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(500) {
                text.push_str(&format!(
                    "\n### jcmd {} {}\n[kdiag: not run, the profiler's timeout was reached]\n",
                    jvm.pid,
                    command.join(" ")
                ));
                continue;
            }
            let out = run_jcmd(jcmd, jvm.pid, command, run_as, left, cap).await;
            text.push_str(&format!("\n### jcmd {} {}\n", jvm.pid, command.join(" ")));
            text.push_str(&out.output);
            if !out.output.ends_with('\n') {
                text.push('\n');
            }
            match out.error {
                None => ok += 1,
                Some(e) => {
                    text.push_str(&format!("[kdiag: {e}]\n"));
                    failures.push(format!(
                        "jcmd {} {}: {e}: {}",
                        jvm.pid,
                        command[0],
                        last_lines(&out.output, 3)
                    ));
                    // Not attachable: the other commands would wait just as long.
                    if ok == 0 {
                        break;
                    }
                }
            }
        }
        if ok > 0 {
            reported.push(jvm.pid.to_string());
        }
    }
    if reported.is_empty() {
        return Err(format!(
            "jcmd could not attach to any JVM: {}{}",
            failures.join("; "),
            attach_hint()
        ));
    }
    Ok(JcmdReport {
        text,
        summary: format!(
            "jcmd report ({}) of JVM pid {}{}",
            commands.join(", "),
            reported.join(", "),
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {} command(s) failed, see the report", failures.len())
            }
        ),
    })
}

/// What to check when jcmd cannot attach, for the error.
fn attach_hint() -> String {
    " (jcmd attaches through /proc/<pid>/root/tmp/.java_pid<ns-pid>: the agent must run as the \
     JVM's user or as root with CAP_DAC_OVERRIDE (or CAP_SETUID and CAP_SETGID to switch to the \
     JVM's user), and CAP_KILL and CAP_SYS_PTRACE; the JVM must not run with \
     -XX:+DisableAttachMechanism)"
        .into()
}

/// The last `n` non-empty lines of `text`, joined, for an error message.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut s = lines[lines.len().saturating_sub(n)..].join(" | ");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The user jcmd runs as: the JVM's, when the agent is root, the JVM is not, and the agent may
/// switch (CAP_SETUID and CAP_SETGID); otherwise the agent's own.
fn run_as(jvm: &JavaTarget) -> Option<(u32, u32)> {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    (nix::unistd::geteuid().is_root()
        && jvm.uid != 0
        && has_capability(CAP_SETUID)
        && has_capability(CAP_SETGID))
    .then_some((jvm.uid, jvm.gid))
}

fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << cap) != 0)
}

struct JcmdOutput {
    /// stdout then stderr, each capped.
    output: String,
    /// Why it failed; None on exit status 0.
    error: Option<String>,
}

/// Runs `jcmd <pid> <command>` in its own process group, killed with its group at `timeout`.
async fn run_jcmd(
    jcmd: &Path,
    pid: i32,
    command: &[&str],
    run_as: Option<(u32, u32)>,
    timeout: Duration,
    cap: usize,
) -> JcmdOutput {
    // jcmd's own JVM: small, no perf data file (the agent's /tmp may be read-only), and an
    // attach timeout within ours (its default is 10s per attach).
    let attach_ms = (timeout.as_millis() as u64 / 2).clamp(500, 10_000);
    let mut cmd = tokio::process::Command::new(jcmd);
    cmd.args([
        "-J-XX:-UsePerfData".to_owned(),
        "-J-XX:+UseSerialGC".to_owned(),
        "-J-Xmx128m".to_owned(),
        format!("-J-Dsun.tools.attach.attachTimeout={attach_ms}"),
        pid.to_string(),
    ])
    .args(command)
    .current_dir("/");
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let ran = match run_bounded(cmd, timeout, cap, cap / 16 + 4096).await {
        Ok(ran) => ran,
        Err(e) => {
            return JcmdOutput {
                output: String::new(),
                error: Some(format!("could not start {}: {e}", jcmd.display())),
            };
        }
    };
    let error = match ran.ended {
        Ended::Success => None,
        Ended::Failed(status) => Some(format!("jcmd {status}")),
        Ended::WaitError(e) => Some(format!("waiting for jcmd: {e}")),
        Ended::TimedOut => Some(format!(
            "jcmd timed out after {}s and was killed",
            timeout.as_secs_f32().round()
        )),
    };
    let (mut output, stderr) = (ran.stdout, ran.stderr);
    if !stderr.trim().is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&stderr);
    }
    JcmdOutput { output, error }
}

fn jcmd_missing() -> String {
    "Java profiling (type Arthas) needs jcmd (a JDK) in the agent's PATH, and none was found; \
     run the agent from an image with a JDK, or use type MemoryAnalyzer with a heap dump the \
     JVM wrote (-XX:+HeapDumpOnOutOfMemoryError)"
        .into()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file())
}

/// A name safe as one path segment.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// Walks the expiry markers (namespace/abnormal/profile) and deletes what has expired.
fn sweep(profiles: &Path, markers: &Path, now_unix: i64) -> usize {
    let mut deleted = 0;
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for ns in entries(markers) {
        for abnormal in entries(&ns) {
            for marker in entries(&abnormal) {
                let expires = std::fs::read_to_string(&marker)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok());
                // An unreadable marker expires now rather than keeping its profile forever.
                if expires.is_some_and(|t| t > now_unix) {
                    continue;
                }
                if let Ok(rel) = marker.strip_prefix(markers) {
                    match std::fs::remove_file(profiles.join(rel)) {
                        Ok(()) => deleted += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(profile = %profiles.join(rel).display(), error = %e, "cannot delete an expired profile");
                            continue;
                        }
                    }
                }
                let _ = std::fs::remove_file(&marker);
            }
            let _ = std::fs::remove_dir(&abnormal);
            let _ = std::fs::remove_dir(
                profiles.join(abnormal.strip_prefix(markers).unwrap_or(&abnormal)),
            );
        }
        let _ = std::fs::remove_dir(&ns);
    }
    deleted
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[tokio::test]
    async fn an_expired_profile_is_deleted_and_a_fresh_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profilers {
            data_root: dir.path().to_owned(),
            public_url: String::new(),
            proc_root: "/proc".into(),
            client: None,
        };
        let root = dir.path().join("profiles/ns/ab");
        std::fs::create_dir_all(&root).unwrap();
        for name in ["old", "new"] {
            std::fs::write(root.join(name), b"profile").unwrap();
        }
        p.record_expiry(&root.join("old"), 100).await.unwrap();
        p.record_expiry(&root.join("new"), 200).await.unwrap();
        assert_eq!(p.sweep_expired(150).await, 1);
        assert!(!root.join("old").exists());
        assert!(root.join("new").exists(), "not expired yet");
        assert_eq!(p.sweep_expired(250).await, 1);
        assert!(
            !dir.path().join("profiles/ns/ab").exists(),
            "empty directories go too"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(
        pid: i32,
        pod: Option<&str>,
        container: Option<&str>,
        monitor: bool,
    ) -> scan::ProcessInfo {
        scan::ProcessInfo {
            pid,
            pod_uid: pod.map(str::to_owned),
            container_id: container.map(str::to_owned),
            runtime_monitor: monitor,
            ..Default::default()
        }
    }

    #[test]
    fn a_pods_processes_are_those_its_cgroups_place_in_it_without_the_monitor() {
        let procs = [
            process(1, None, None, false),
            process(10, Some("u1"), Some("pause"), false),
            process(11, Some("u1"), Some("app"), false),
            process(12, Some("u1"), Some("app"), false),
            process(13, Some("u1"), Some("side"), false),
            process(14, Some("u1"), None, true),
            process(20, Some("u2"), Some("app2"), false),
        ];
        assert_eq!(pod_processes(&procs, "u1", None), vec![10, 11, 12, 13]);
        assert_eq!(pod_processes(&procs, "u1", Some("app")), vec![11, 12]);
        assert_eq!(pod_processes(&procs, "", None), Vec::<i32>::new());
    }

    #[test]
    fn a_containers_id_comes_without_the_runtime_scheme() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://abc123", "image": "", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "waiting", "image": "", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://def456", "image": "", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .unwrap();
        assert_eq!(container_id(&pod, "app").as_deref(), Some("abc123"));
        assert_eq!(container_id(&pod, "init").as_deref(), Some("def456"));
        assert_eq!(container_id(&pod, "waiting"), None);
        assert_eq!(container_id(&pod, "nope"), None);
    }

    #[test]
    fn a_target_is_a_jvm_by_its_name_or_its_libjvm() {
        let root = tempfile::tempdir().unwrap();
        let write = |pid: i32, comm: &str, cmdline: &[u8], maps: &str| {
            let d = root.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("status"),
                "Name:\tx\nUid:\t1000\t1001\t1001\t1001\nGid:\t2000\t2001\t2001\t2001\n",
            )
            .unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), cmdline).unwrap();
            std::fs::write(d.join("maps"), maps).unwrap();
        };
        write(5, "java", b"/usr/bin/java\0-jar\0app.jar\0", "");
        write(
            6,
            "jsvc",
            b"jsvc\0-home\0/jdk\0",
            "7f00-7f01 r-xp 0 08:01 1 /jdk/lib/server/libjvm.so\n",
        );
        write(
            7,
            "sleep",
            b"sleep\x00100\0",
            "7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n",
        );
        write(8, "kworker/0:1", b"", "");
        let t = read_target(root.path(), 5, "java.pid".into()).unwrap();
        assert!(t.jvm);
        assert_eq!((t.uid, t.gid), (1001, 2001), "the effective ids");
        assert_eq!(t.command, "/usr/bin/java -jar app.jar");
        assert!(read_target(root.path(), 6, String::new()).unwrap().jvm);
        assert!(!read_target(root.path(), 7, String::new()).unwrap().jvm);
        let kernel = read_target(root.path(), 8, String::new()).unwrap();
        assert_eq!(kernel.command, "[kworker/0:1]");
        assert_eq!(
            read_target(root.path(), 9, String::new()).unwrap_err(),
            "process 9 does not exist on this node"
        );
    }

    #[test]
    fn an_error_keeps_the_last_lines_of_jcmds_output() {
        let out = "123:\n\njava.io.IOException: Permission denied\n\tat a\n\tat b\n";
        assert_eq!(
            last_lines(out, 3),
            "java.io.IOException: Permission denied | \tat a | \tat b"
        );
        assert_eq!(last_lines("", 3), "");
    }
}
