//! Finding the processes a Java profiler works on: the one `java.pid` names, or those of the
//! Abnormal's pod (and container) on this node, found through their cgroups, and what each is.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::{Abnormal, JavaProfilerSpec};
use kdiag_collectors::budget::Deadline;
use kdiag_collectors::process::scan;

use super::JavaTarget;
use crate::Error;
use crate::profiler::Profilers;
use crate::profiler::pod::ReferencedPod;

impl Profilers {
    /// The processes named by `java.pid`, or those of the Abnormal's pod (and container) on this
    /// node; and a description of what was searched, for errors.
    pub(super) async fn java_targets(
        &self,
        abnormal: &Abnormal,
        java: &JavaProfilerSpec,
        timeout: Duration,
    ) -> Result<(Vec<JavaTarget>, String), Error> {
        if let Some(pid) = java.pid {
            if pid <= 0 {
                return Err(Error::InvalidPid { pid });
            }
            let proc_root = self.proc_root.clone();
            let t = tokio::task::spawn_blocking(move || {
                read_target(&proc_root, pid, "java.pid".into())
            })
            .await
            .map_err(|e| Error::ProcessScan {
                reason: format!("reading process {pid}: {e}"),
            })??;
            let searched = format!(
                "process {pid} (java.pid), which is not a JVM ({})",
                t.command
            );
            return Ok((vec![t], searched));
        }
        let Some(ReferencedPod {
            name: pod_name,
            pod,
        }) = self.referenced_pod(abnormal, timeout / 3).await?
        else {
            return Err(Error::NoTarget);
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(r) = &abnormal.spec.pod_reference else {
            return Err(Error::NoTarget);
        };
        let container = r.container_name.as_str();
        let container_id = if container.is_empty() {
            None
        } else {
            Some(
                container_id(&pod, container).ok_or_else(|| Error::NoContainerId {
                    pod: pod_name.clone(),
                    container: container.to_owned(),
                })?,
            )
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
        .map_err(|e| Error::ProcessScan {
            reason: e.to_string(),
        })?
        .map_err(|e| Error::ProcessScan { reason: e })?;
        let origin = if container.is_empty() {
            format!("pod {pod_name}")
        } else {
            format!("pod {pod_name} container {container}")
        };
        let pids = pod_processes(&snapshot.processes, &uid, container_id.as_deref());
        let (proc_root, target_origin) = (self.proc_root.clone(), origin.clone());
        let targets: Vec<JavaTarget> = tokio::task::spawn_blocking(move || {
            pids.into_iter()
                // A process that exited since the scan is simply not a target.
                .filter_map(|pid| read_target(&proc_root, pid, target_origin.clone()).ok())
                .collect()
        })
        .await
        .map_err(|e| Error::ProcessScan {
            reason: format!("reading the processes of {origin}: {e}"),
        })?;
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

/// Reads what a profiler needs of one process. Blocking (/proc reads, up to 100,000 lines of
/// maps): call it off the async threads.
fn read_target(proc_root: &Path, pid: i32, origin: String) -> Result<JavaTarget, Error> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::NoSuchProcess { pid }
        } else {
            Error::Io {
                action: "reading",
                path: dir.join("status"),
                error,
            }
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
            read_target(root.path(), 9, String::new())
                .unwrap_err()
                .to_string(),
            "process 9 does not exist on this node"
        );
    }
}
