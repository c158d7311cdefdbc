//! Kernel messages and the events parsed out of them: OOM kills, hung tasks, I/O errors.

use serde::Serialize;

use crate::cgroup;

/// One kernel message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelMessage {
    /// Sequence number in the ring buffer (from /dev/kmsg; 0 from dmesg).
    #[serde(skip)]
    pub seq: u64,
    /// 0 emerg … 7 debug.
    pub level: u8,
    /// Microseconds since boot, as the kernel stamped it.
    #[serde(skip)]
    pub monotonic_usec: u64,
    /// Wall-clock time (boot time + the kernel's stamp), RFC 3339.
    pub timestamp: String,
    pub message: String,
}

/// Parses one /dev/kmsg record: `prio,seq,usec,flags[,…];message` plus ` KEY=value`
/// continuation lines (dropped).
pub fn parse_kmsg_record(record: &str) -> Option<KernelMessage> {
    let (header, rest) = record.split_once(';')?;
    let mut h = header.split(',');
    let prio: u32 = h.next()?.parse().ok()?;
    let seq = h.next()?.parse().ok()?;
    let usec = h.next()?.parse().ok()?;
    let message = rest.lines().next().unwrap_or("").to_owned();
    Some(KernelMessage {
        seq,
        level: (prio & 7) as u8,
        monotonic_usec: usec,
        timestamp: String::new(),
        message,
    })
}

/// Parses one line of `dmesg --raw`: `<4>[ 4041.105058] message`.
pub fn parse_dmesg_line(line: &str) -> Option<KernelMessage> {
    let rest = line.strip_prefix('<')?;
    let (prio, rest) = rest.split_once('>')?;
    let prio: u32 = prio.parse().ok()?;
    let rest = rest.trim_start().strip_prefix('[')?;
    let (time, message) = rest.split_once(']')?;
    let secs: f64 = time.trim().parse().ok()?;
    Some(KernelMessage {
        seq: 0,
        level: (prio & 7) as u8,
        monotonic_usec: (secs * 1e6) as u64,
        timestamp: String::new(),
        message: message.strip_prefix(' ').unwrap_or(message).to_owned(),
    })
}

/// A process the OOM killer ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OomKill {
    pub timestamp: String,
    pub pid: i64,
    /// The killed task's name.
    pub task: String,
    /// `memcg` when a memory cgroup's limit was hit (a container over its limit), `global`
    /// when the whole node ran out.
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub constraint: String,
    /// The cgroup whose limit was hit.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub oom_memcg: String,
    /// The killed task's cgroup.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub task_memcg: String,
    #[serde(rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(rename = "containerID", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_vm_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_rss_bytes: Option<u64>,
    /// The kernel's own line(s).
    pub message: String,
    #[serde(skip)]
    monotonic_usec: u64,
}

/// A task the hung-task detector reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HungTask {
    pub timestamp: String,
    pub task: String,
    pub pid: i64,
    pub blocked_seconds: u64,
    pub message: String,
}

/// A block or filesystem I/O error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IoError {
    pub timestamp: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device: String,
    pub message: String,
}

/// Everything parsed out of a run of messages.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Events {
    pub oom_kills: Vec<OomKill>,
    pub hung_tasks: Vec<HungTask>,
    pub io_errors: Vec<IoError>,
}

/// An OOM report spans several messages; these are the ones that belong together.
const OOM_REPORT_WINDOW_USEC: u64 = 5_000_000;

/// Extracts the events from messages in ring-buffer order.
pub fn extract(messages: &[KernelMessage]) -> Events {
    let mut ev = Events::default();
    // Kernels before 4.19 name the cgroup in a line of their own before "Killed process".
    let mut pending_task_in: Option<(String, String, u64)> = None;
    for m in messages {
        let text = m.message.as_str();
        if let Some(rest) = text.strip_prefix("oom-kill:") {
            let mut kill = parse_oom_kill_line(rest);
            kill.timestamp = m.timestamp.clone();
            kill.monotonic_usec = m.monotonic_usec;
            kill.message = text.to_owned();
            kill.kind = if kill.constraint == "CONSTRAINT_MEMCG" {
                "memcg".into()
            } else {
                "global".into()
            };
            ev.oom_kills.push(kill);
        } else if let Some((kind, pid, task, sizes)) = parse_killed_process(text) {
            // The oom-kill line just before, for the same pid, is the same kill.
            let existing = ev.oom_kills.iter_mut().rev().find(|k| {
                k.pid == pid
                    && k.total_vm_bytes.is_none()
                    && m.monotonic_usec.saturating_sub(k.monotonic_usec) < OOM_REPORT_WINDOW_USEC
            });
            let kill = match existing {
                Some(k) => k,
                None => {
                    ev.oom_kills.push(OomKill {
                        timestamp: m.timestamp.clone(),
                        pid,
                        task: task.clone(),
                        monotonic_usec: m.monotonic_usec,
                        ..Default::default()
                    });
                    ev.oom_kills.last_mut().expect("just pushed")
                }
            };
            if let Some(kind) = kind {
                kill.kind = kind.into();
            }
            if kill.message.is_empty() {
                kill.message = text.to_owned();
            } else {
                kill.message = format!("{} / {text}", kill.message);
            }
            kill.total_vm_bytes = sizes.0;
            kill.anon_rss_bytes = sizes.1;
            kill.file_rss_bytes = sizes.2;
            if let Some((task_memcg, oom_memcg, at)) = pending_task_in.take()
                && m.monotonic_usec.saturating_sub(at) < OOM_REPORT_WINDOW_USEC
                && kill.task_memcg.is_empty()
            {
                kill.task_memcg = task_memcg;
                kill.oom_memcg = oom_memcg;
                kill.kind = "memcg".into();
            }
            if kill.kind.is_empty() {
                kill.kind = "global".into();
            }
            fill_pod(kill);
        } else if let Some(rest) = text.strip_prefix("Task in ") {
            // "Task in /kubepods/.../<cid> killed as a result of limit of /kubepods/..."
            if let Some((task_memcg, oom_memcg)) =
                rest.split_once(" killed as a result of limit of ")
            {
                pending_task_in = Some((
                    task_memcg.trim().to_owned(),
                    oom_memcg.trim().to_owned(),
                    m.monotonic_usec,
                ));
            }
        } else if let Some(hung) = parse_hung_task(text) {
            ev.hung_tasks.push(HungTask {
                timestamp: m.timestamp.clone(),
                message: text.to_owned(),
                ..hung
            });
        } else if is_io_error(text) {
            ev.io_errors.push(IoError {
                timestamp: m.timestamp.clone(),
                device: io_error_device(text),
                message: text.to_owned(),
            });
        }
    }
    for k in &mut ev.oom_kills {
        fill_pod(k);
    }
    ev
}

fn fill_pod(kill: &mut OomKill) {
    if kill.pod_uid.is_some() || kill.task_memcg.is_empty() {
        return;
    }
    if let Some(p) = cgroup::parse_path(&kill.task_memcg) {
        kill.pod_uid = Some(p.pod_uid);
        kill.container_id = p.container_id;
    }
}

/// `constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=…,mems_allowed=0,oom_memcg=…,
/// task_memcg=…,task=tail,pid=14793,uid=0`. A value may itself hold commas (mems_allowed=0,2):
/// a piece without `=` belongs to the value before it.
fn parse_oom_kill_line(rest: &str) -> OomKill {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in rest.split(',') {
        match piece.split_once('=') {
            Some((k, v)) => pairs.push((k.trim().to_owned(), v.to_owned())),
            None => {
                if let Some(last) = pairs.last_mut() {
                    last.1.push(',');
                    last.1.push_str(piece);
                }
            }
        }
    }
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    OomKill {
        pid: get("pid").parse().unwrap_or(0),
        task: get("task"),
        constraint: get("constraint"),
        oom_memcg: get("oom_memcg"),
        task_memcg: get("task_memcg"),
        ..Default::default()
    }
}

type Sizes = (Option<u64>, Option<u64>, Option<u64>);

/// `[Memory cgroup out of memory: |Out of memory: ]Killed process 15350 (sh) total-vm:2268kB,
/// anon-rss:0kB, file-rss:1520kB, …` → (kind, pid, task, (total-vm, anon-rss, file-rss)).
fn parse_killed_process(text: &str) -> Option<(Option<&'static str>, i64, String, Sizes)> {
    let idx = text.find("Killed process ")?;
    let prefix = &text[..idx];
    let kind = if prefix.contains("Memory cgroup out of memory") {
        Some("memcg")
    } else if prefix.contains("Out of memory") {
        Some("global")
    } else {
        None
    };
    let rest = &text[idx + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let pid: i64 = pid.parse().ok()?;
    let rest = rest.strip_prefix('(')?;
    let close = rest.rfind(')')?;
    let task = rest[..close].to_owned();
    let tail = &rest[close + 1..];
    let kb = |key: &str| {
        let at = tail.find(key)? + key.len();
        let digits: String = tail[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok().map(|v| v * 1024)
    };
    Some((
        kind,
        pid,
        task,
        (kb("total-vm:"), kb("anon-rss:"), kb("file-rss:")),
    ))
}

/// `INFO: task kworker/0:1:123 blocked for more than 120 seconds.` (the name may hold `:`).
fn parse_hung_task(text: &str) -> Option<HungTask> {
    let rest = text.strip_prefix("INFO: task ")?;
    let (who, rest) = rest.split_once(" blocked for more than ")?;
    let (task, pid) = who.rsplit_once(':')?;
    let secs = rest.split_whitespace().next()?.parse().ok()?;
    Some(HungTask {
        timestamp: String::new(),
        task: task.to_owned(),
        pid: pid.parse().ok()?,
        blocked_seconds: secs,
        message: String::new(),
    })
}

fn is_io_error(text: &str) -> bool {
    text.contains("I/O error")
        || text.contains("critical medium error")
        || text.contains("EXT4-fs error")
        || (text.starts_with("XFS (") && text.contains("rror"))
        || text.contains("Remounting filesystem read-only")
}

/// `…, dev sda, sector …`, `Buffer I/O error on dev sda1, …`, `EXT4-fs error (device sda1): …`,
/// `XFS (sda1): …`.
fn io_error_device(text: &str) -> String {
    let until = |s: &str| {
        s.chars()
            .take_while(|c| !matches!(c, ',' | ' ' | ')' | ':'))
            .collect::<String>()
    };
    if let Some(i) = text.find("(device ") {
        return until(&text[i + 8..]);
    }
    if let Some(rest) = text.strip_prefix("XFS (") {
        return until(rest);
    }
    if let Some(i) = text.find("dev ") {
        return until(&text[i + 4..]);
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(usec: u64, text: &str) -> KernelMessage {
        KernelMessage {
            seq: 0,
            level: 4,
            monotonic_usec: usec,
            timestamp: format!("t{usec}"),
            message: text.to_owned(),
        }
    }

    const UID: &str = "b4844e73-81ff-44d7-80a7-e9cdb9451dbb";
    const CID: &str = "8c615157bcdf17f16e3c4c1a0e27634b90608c9e64ab3a145205ad2a3908e9fd";

    #[test]
    fn a_kmsg_record_gives_level_time_and_text_without_its_dictionary() {
        let m = parse_kmsg_record("4,907,2864913138,-;tail invoked oom-killer\n SUBSYSTEM=x\n")
            .unwrap();
        assert_eq!(m.level, 4);
        assert_eq!(m.seq, 907);
        assert_eq!(m.monotonic_usec, 2864913138);
        assert_eq!(m.message, "tail invoked oom-killer");
    }

    #[test]
    fn a_raw_dmesg_line_parses_too() {
        let m = parse_dmesg_line("<3>[ 4041.105076] Memory cgroup out of memory: Killed").unwrap();
        assert_eq!(m.level, 3);
        assert_eq!(m.monotonic_usec, 4041105076);
        assert!(m.message.starts_with("Memory cgroup"));
    }

    #[test]
    fn an_oom_kill_and_its_killed_process_line_become_one_entry_with_the_pod() {
        let oom = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={CID},mems_allowed=0,2,oom_memcg=/kdiag-0ea24c/kubepods/burstable/pod{UID},task_memcg=/kdiag-0ea24c/kubepods/burstable/pod{UID}/{CID},task=tail,pid=14793,uid=0"
        );
        let killed = "Memory cgroup out of memory: Killed process 14793 (tail) total-vm:33360kB, anon-rss:31104kB, file-rss:1264kB, shmem-rss:0kB, UID:0 pgtables:104kB oom_score_adj:999";
        let ev = extract(&[
            msg(1, "tail invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL)"),
            msg(2, &oom),
            msg(3, killed),
        ]);
        assert_eq!(ev.oom_kills.len(), 1);
        let k = &ev.oom_kills[0];
        assert_eq!(k.pid, 14793);
        assert_eq!(k.task, "tail");
        assert_eq!(k.kind, "memcg");
        assert_eq!(k.pod_uid.as_deref(), Some(UID));
        assert_eq!(k.container_id.as_deref(), Some(CID));
        assert_eq!(k.anon_rss_bytes, Some(31104 * 1024));
        assert_eq!(k.timestamp, "t2");
        assert!(k.message.contains("Killed process"));
    }

    #[test]
    fn an_old_kernels_task_in_line_gives_the_cgroup() {
        let ev = extract(&[
            msg(
                1,
                &format!(
                    "Task in /kubepods/pod{UID}/{CID} killed as a result of limit of /kubepods/pod{UID}/{CID}"
                ),
            ),
            msg(
                2,
                "Memory cgroup out of memory: Kill process 99 (java) score 1000 or sacrifice child",
            ),
            msg(
                3,
                "Killed process 99 (java) total-vm:100kB, anon-rss:50kB, file-rss:0kB",
            ),
        ]);
        assert_eq!(ev.oom_kills.len(), 1);
        assert_eq!(ev.oom_kills[0].kind, "memcg");
        assert_eq!(ev.oom_kills[0].pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn a_global_oom_is_told_from_a_cgroup_one() {
        let ev = extract(&[msg(
            1,
            "Out of memory: Killed process 5 (big) total-vm:1kB, anon-rss:1kB, file-rss:0kB",
        )]);
        assert_eq!(ev.oom_kills[0].kind, "global");
        assert_eq!(ev.oom_kills[0].pod_uid, None);
    }

    #[test]
    fn hung_tasks_keep_names_with_colons() {
        let ev = extract(&[msg(
            1,
            "INFO: task kworker/0:1:123 blocked for more than 120 seconds.",
        )]);
        let h = &ev.hung_tasks[0];
        assert_eq!(
            (h.task.as_str(), h.pid, h.blocked_seconds),
            ("kworker/0:1", 123, 120)
        );
    }

    #[test]
    fn io_errors_name_their_device() {
        let ev = extract(&[
            msg(
                1,
                "blk_update_request: I/O error, dev sda, sector 2048 op 0x1:(WRITE) flags 0x0",
            ),
            msg(
                2,
                "Buffer I/O error on dev sda1, logical block 0, lost async page write",
            ),
            msg(
                3,
                "EXT4-fs error (device vdb1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
            ),
            msg(
                4,
                "XFS (nvme0n1p2): metadata I/O error in \"xfs_trans_read_buf_map\"",
            ),
            msg(5, "eth0: link up"),
        ]);
        let devices: Vec<&str> = ev.io_errors.iter().map(|e| e.device.as_str()).collect();
        assert_eq!(devices, ["sda", "sda1", "vdb1", "nvme0n1p2"]);
    }
}
