//! Java: the target JVMs (`targets`), a report of the node's jcmd against them (`jcmd`, type
//! Arthas) or a copy of an HPROF file (`hprof`, type MemoryAnalyzer).

mod hprof;
mod jcmd;
mod targets;

use std::time::{Duration, Instant};

use kdiag_api::{Abnormal, JavaProfilerSpec, JavaProfilerType};

use self::jcmd::jcmd_report;
use super::Profilers;
use crate::Error;

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
    pub(super) async fn java(
        &self,
        abnormal: &Abnormal,
        name: &str,
        java: &JavaProfilerSpec,
        timeout: Duration,
    ) -> Result<(String, String), Error> {
        let deadline = Instant::now() + timeout;
        match java.type_ {
            JavaProfilerType::Arthas => {
                // `which` stats every PATH entry: off the async threads.
                let jcmd = tokio::task::spawn_blocking(|| which::which("jcmd"))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or(Error::JcmdMissing)?;
                let (targets, searched) = self.java_targets(abnormal, java, timeout).await?;
                let jvms: Vec<JavaTarget> = targets.into_iter().filter(|t| t.jvm).collect();
                if jvms.is_empty() {
                    return Err(Error::NoJvm { searched });
                }
                let report = jcmd_report(&jcmd, abnormal, name, &jvms, deadline).await?;
                let url_path = self.store(abnormal, name, report.text.as_bytes()).await?;
                Ok((url_path, report.summary))
            }
            JavaProfilerType::MemoryAnalyzer => {
                if !java.hprof_file_path.starts_with('/') {
                    return Err(Error::HprofPathRelative);
                }
                let targets = if java.pid.is_some() || abnormal.spec.pod_reference.is_some() {
                    let (mut t, searched) = self.java_targets(abnormal, java, timeout).await?;
                    if t.is_empty() {
                        return Err(Error::NoProcessForHprof { searched });
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
}
