//! Profilers: a Go program's pprof profile fetched over HTTP (or copied from a pprof file on the
//! node, under the directories `--go-profile-dir` allows), or a Java program's jcmd report or
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

mod go;
mod go_file;
mod java;
pub(crate) mod pod;
mod store;

pub use go_file::check_file_path;
pub use store::{EXPIRED_ENDPOINT, ExpiredProfile, MAX_EXPIRATION_SECONDS, ProfileLimits};

use std::path::PathBuf;
use std::time::Duration;

use kdiag_api::{Abnormal, ProfilerSpec, ProfilerStatus};

use crate::Error;

/// Default seconds a profiling run may take.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = kdiag_api::DEFAULT_STEP_TIMEOUT_SECONDS;
/// Default seconds a profile stays available.
pub const DEFAULT_EXPIRATION_SECONDS: i32 = kdiag_api::DEFAULT_EXPIRATION_SECONDS;
/// The most bytes of one profile kept (a pprof profile, a jcmd report).
const MAX_PROFILE_BYTES: usize = 64 * 1024 * 1024;
/// The same, as a byte count of a file.
const MAX_PROFILE_FILE_BYTES: u64 = MAX_PROFILE_BYTES as u64;

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
    /// How much of the disk profiles may take.
    pub limits: ProfileLimits,
    /// Directories of the node under which a Go profiler may read a pprof file
    /// (`--go-profile-dir`); none by default, so no file is read.
    pub go_file_dirs: Vec<PathBuf>,
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
    /// Runs a profiler and says where its result is, or why there is none.
    pub async fn run(&self, abnormal: &Abnormal, spec: &ProfilerSpec) -> ProfilerRun {
        let mut status = ProfilerStatus {
            name: spec.name.clone(),
            type_: spec.type_,
            endpoint: String::new(),
            error: String::new(),
        };
        let timeout = Duration::from_secs(spec.timeout().max(1) as u64);
        let result = match (&spec.go, &spec.java) {
            (Some(go), None) => match go.local_file() {
                Some(path) => self.go_file(abnormal, &spec.name, path, timeout).await,
                None => self
                    .go(abnormal, &spec.name, &go.source, timeout)
                    .await
                    .map(|p| (p, format!("pprof profile from {}", go.source))),
            },
            (None, Some(java)) => {
                // Everything, target lookup included, within the profiler's timeout.
                match tokio::time::timeout(timeout, self.java(abnormal, &spec.name, java, timeout))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(Error::JavaTimeout {
                        seconds: timeout.as_secs(),
                    }),
                }
            }
            _ => Err(Error::ProfilerKind),
        };
        let mut summary = String::new();
        match result {
            Ok((url_path, what)) => {
                status.endpoint = format!("{}{url_path}", self.public_url);
                summary = what;
                let keep = i64::from(spec.expiration().max(1)).min(MAX_EXPIRATION_SECONDS);
                let (file, _) = self.location(abnormal, &spec.name);
                if let Err(e) = self
                    .record_expiry(&file, jiff::Timestamp::now().as_second() + keep)
                    .await
                {
                    // The profile is there; only its clean-up is at risk, so say it and go on.
                    tracing::warn!(profile = %file.display(), error = %e, "cannot record when the profile expires; it will not be deleted");
                }
            }
            Err(e) => status.error = e.to_string(),
        }
        ProfilerRun { status, summary }
    }
}
