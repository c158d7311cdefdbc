//! Reading every process of /proc: the fields Kube Diagnoser's process collector had (from
//! gopsutil) plus the pod and container each process belongs to.
//!
//! Four small files per process (stat, status, cmdline, cgroup), read into one reused buffer,
//! the pids split over a few threads. A process that exits while it is read, or whose files
//! cannot be read, is recorded and skipped.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::budget::{Deadline, Problems};
use crate::cgroup::{self, PodCgroup};

/// One process, as written to `processInformation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub tgid: i32,
    /// The kernel's short name (comm), also for kernel threads that have no command line.
    pub name: String,
    /// The argv; empty for kernel threads.
    pub command: Vec<String>,
    /// The state letter: R running, S sleeping, D uninterruptible, Z zombie, T stopped, I idle.
    pub status: String,
    /// Start time in milliseconds since the epoch (gopsutil's createTime). Written as an RFC
    /// 3339 string, the JSON of the Go `time.Time` in Kube Diagnoser's `types.Process`, so its
    /// plugins decode the key; the number is in `createTimeMilliseconds`.
    #[serde(serialize_with = "rfc3339_from_milliseconds")]
    pub create_time: i64,
    /// kdiag: the start time as milliseconds since the epoch.
    pub create_time_milliseconds: i64,
    /// Start time in clock ticks after boot, exactly as /proc/<pid>/stat field 22 has it. The
    /// signal recoverer compares it before signalling, so a reused pid is never hit.
    pub start_time: u64,
    /// CPU time used over the process's lifetime, in percent of one CPU (gopsutil's cpuPercent).
    pub cpu_percent: f64,
    pub nice: i64,
    pub memory_info: MemoryInfo,
    /// The pod the process belongs to, from its cgroup.
    #[serde(rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container the process belongs to, from its cgroup.
    #[serde(rename = "containerID", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// True for CRI-O's conmon, which sits in the pod's cgroup but is not the container.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub runtime_monitor: bool,
    /// For a runtime shim (containerd-shim*, conmon): the sandbox or container ID it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shim_for: Option<String>,
    /// Signal dispositions and pid namespace, for the diagnosers; not written to the context.
    #[serde(skip)]
    pub signals: SignalInfo,
}

/// Milliseconds since the epoch as RFC 3339 (UTC), as Go's `time.Time` marshals.
fn rfc3339_from_milliseconds<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    match jiff::Timestamp::from_millisecond(*ms) {
        Ok(t) => s.collect_str(&t),
        Err(e) => Err(serde::ser::Error::custom(format!(
            "start time {ms} ms is out of range: {e}"
        ))),
    }
}

/// Memory use in bytes (gopsutil's MemoryInfoExStat names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryInfo {
    pub rss: u64,
    pub vms: u64,
    pub hwm: u64,
    pub data: u64,
    pub stack: u64,
    pub locked: u64,
    pub swap: u64,
}

/// What /proc/<pid>/status says about signals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalInfo {
    /// SigIgn: ignored signals, bit n-1 for signal n.
    pub ignored: u64,
    /// SigCgt: signals with a handler.
    pub caught: u64,
    /// The pid inside the innermost pid namespace (last NSpid value); 1 for a container's init.
    pub ns_pid: Option<i32>,
}

impl SignalInfo {
    /// Whether SIGTERM does nothing to this process: it is ignored, or the process is the init
    /// of its own pid namespace without a handler (the kernel drops such signals for a
    /// namespace's init, which is why `sleep` as a container's pid 1 never ends on SIGTERM).
    pub fn ignores_sigterm(&self, host_pid: i32) -> bool {
        const SIGTERM_BIT: u64 = 1 << (15 - 1);
        let namespace_init = self.ns_pid == Some(1) && host_pid != 1;
        self.ignored & SIGTERM_BIT != 0 || (namespace_init && self.caught & SIGTERM_BIT == 0)
    }
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcessInfo>,
    /// Entries that could not be read (other than processes that exited meanwhile).
    pub problems: Problems,
    /// False when the deadline cut the scan short.
    pub complete: bool,
    /// Processes that exited while being read: normal churn, only counted.
    pub vanished: usize,
}

/// Host facts every process's numbers need.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Boot time in seconds since the epoch (/proc/stat btime).
    pub boot_time: u64,
    /// Seconds since boot (/proc/uptime).
    pub uptime: f64,
    /// Clock ticks per second (sysconf CLK_TCK).
    pub ticks: u64,
    /// Bytes per page.
    pub page_size: u64,
}

impl Clock {
    pub fn read(proc_root: &Path) -> Result<Self, String> {
        let stat = std::fs::read_to_string(proc_root.join("stat"))
            .map_err(|e| format!("reading {}/stat: {e}", proc_root.display()))?;
        let boot_time = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("{}/stat has no btime line", proc_root.display()))?;
        Ok(Self {
            boot_time,
            uptime: read_uptime(proc_root)?,
            ticks: sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100),
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096),
        })
    }
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(var)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
}

/// Seconds since boot, from `<proc_root>/uptime`.
pub fn read_uptime(proc_root: &Path) -> Result<f64, String> {
    let text = std::fs::read_to_string(proc_root.join("uptime"))
        .map_err(|e| format!("reading {}/uptime: {e}", proc_root.display()))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "{}/uptime: unexpected content {text:?}",
                proc_root.display()
            )
        })
}

/// The pids in `proc_root`, ascending.
pub fn list_pids(proc_root: &Path) -> Result<Vec<i32>, String> {
    let dir = std::fs::read_dir(proc_root)
        .map_err(|e| format!("listing {}: {e}", proc_root.display()))?;
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Reads every process under `proc_root`, on up to `threads` threads, until `deadline`.
pub fn scan(proc_root: &Path, deadline: Deadline, threads: usize) -> Result<Snapshot, String> {
    let clock = Clock::read(proc_root)?;
    let pids = list_pids(proc_root)?;
    let threads = threads.clamp(1, 16).min(pids.len().max(1));
    // Interleaved chunks: low pids (system daemons) and high pids (recent pods) spread evenly.
    let parts: Vec<Snapshot> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pids = &pids;
                s.spawn(move || {
                    let mut reader = Reader::new(proc_root, clock);
                    let mut out = Snapshot {
                        complete: true,
                        ..Default::default()
                    };
                    for pid in pids.iter().skip(t).step_by(threads) {
                        if deadline.passed() {
                            out.complete = false;
                            break;
                        }
                        match reader.read(*pid, &mut out.problems) {
                            Ok(p) => out.processes.push(p),
                            Err(ReadError::Vanished) => out.vanished += 1,
                            Err(ReadError::Unreadable(why)) => out.problems.push(why),
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut all = Snapshot {
        complete: true,
        ..Default::default()
    };
    for part in parts {
        all.processes.extend(part.processes);
        all.problems.extend(part.problems);
        all.complete &= part.complete;
        all.vanished += part.vanished;
    }
    all.processes.sort_unstable_by_key(|p| p.pid);
    Ok(all)
}

/// Reads one process (for a caller that already knows the pid).
pub fn read_process(proc_root: &Path, pid: i32) -> Result<ProcessInfo, String> {
    let clock = Clock::read(proc_root)?;
    let mut partial = Problems::default();
    Reader::new(proc_root, clock)
        .read(pid, &mut partial)
        .map_err(|e| match e {
            ReadError::Vanished => format!("process {pid} does not exist (any more)"),
            ReadError::Unreadable(why) => why,
        })
}

/// How many threads a scan should use on this machine.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8)
}

enum ReadError {
    /// The process exited between listing and reading: not a problem.
    Vanished,
    Unreadable(String),
}

struct Reader<'a> {
    proc_root: &'a Path,
    clock: Clock,
    path: PathBuf,
    buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn new(proc_root: &'a Path, clock: Clock) -> Self {
        Self {
            proc_root,
            clock,
            path: PathBuf::with_capacity(64),
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads `<proc_root>/<pid>/<file>` into the buffer.
    fn load(&mut self, pid: i32, file: &str) -> Result<(), ReadError> {
        self.path.clear();
        self.path.push(self.proc_root);
        self.path.push(pid.to_string());
        self.path.push(file);
        self.buf.clear();
        let result = File::open(&self.path).and_then(|mut f| f.read_to_end(&mut self.buf));
        match result {
            Ok(_) => Ok(()),
            // ESRCH comes from reading a file of a process that has just exited.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Err(ReadError::Vanished)
            }
            Err(e) => Err(ReadError::Unreadable(format!(
                "{}: {e}",
                self.path.display()
            ))),
        }
    }

    fn read(&mut self, pid: i32, problems: &mut Problems) -> Result<ProcessInfo, ReadError> {
        self.load(pid, "stat")?;
        let stat = parse_stat(&String::from_utf8_lossy(&self.buf)).ok_or_else(|| {
            ReadError::Unreadable(format!(
                "{}/{pid}/stat: unexpected format",
                self.proc_root.display()
            ))
        })?;
        // Only stat is required: a process whose other files are denied (a hardened init, a
        // process of another user under hidepid) is kept with what could be read.
        let status = match self.load(pid, "status") {
            Ok(()) => parse_status(&String::from_utf8_lossy(&self.buf)),
            Err(ReadError::Vanished) => return Err(ReadError::Vanished),
            Err(ReadError::Unreadable(why)) => {
                problems.push(why);
                Status::default()
            }
        };
        let command = match self.load(pid, "cmdline") {
            Ok(()) => parse_cmdline(&self.buf),
            Err(ReadError::Vanished) => return Err(ReadError::Vanished),
            Err(ReadError::Unreadable(why)) => {
                problems.push(why);
                Vec::new()
            }
        };
        // A process whose cgroup cannot be read is still a process: keep it without a pod.
        let pod = match self.load(pid, "cgroup") {
            Ok(()) => cgroup::parse_proc_cgroup(&String::from_utf8_lossy(&self.buf)),
            Err(ReadError::Vanished) => return Err(ReadError::Vanished),
            Err(ReadError::Unreadable(_)) => None,
        };
        let clock = self.clock;
        let ticks = clock.ticks as f64;
        let started_after_boot = stat.starttime as f64 / ticks;
        let alive = clock.uptime - started_after_boot;
        let cpu_percent = if alive > 0.0 {
            let used = (stat.utime + stat.stime) as f64 / ticks;
            (used / alive * 100.0 * 10.0).round() / 10.0
        } else {
            0.0
        };
        let PodCgroup {
            pod_uid,
            container_id,
            monitor,
        } = pod.unwrap_or_default();
        let shim_for = shim_target(&stat.comm, &command);
        let create_time = ((clock.boot_time as f64 + started_after_boot) * 1000.0) as i64;
        Ok(ProcessInfo {
            pid,
            ppid: stat.ppid,
            tgid: status.tgid.unwrap_or(pid),
            name: stat.comm,
            command,
            status: stat.state.to_string(),
            create_time,
            create_time_milliseconds: create_time,
            start_time: stat.starttime,
            cpu_percent,
            nice: stat.nice,
            memory_info: MemoryInfo {
                rss: stat.rss_pages.max(0) as u64 * clock.page_size,
                vms: stat.vsize,
                hwm: status.hwm_kb * 1024,
                data: status.data_kb * 1024,
                stack: status.stack_kb * 1024,
                locked: status.locked_kb * 1024,
                swap: status.swap_kb * 1024,
            },
            pod_uid: (!pod_uid.is_empty()).then_some(pod_uid),
            container_id,
            runtime_monitor: monitor,
            shim_for,
            signals: SignalInfo {
                ignored: status.sig_ign,
                caught: status.sig_cgt,
                ns_pid: status.ns_pid,
            },
        })
    }
}

#[derive(Debug, PartialEq)]
struct Stat {
    comm: String,
    state: char,
    ppid: i32,
    utime: u64,
    stime: u64,
    nice: i64,
    starttime: u64,
    vsize: u64,
    rss_pages: i64,
}

/// /proc/<pid>/stat: `pid (comm) state ppid …`, split by kdiag-procstat (the comm may hold
/// spaces and parentheses); the fields are collected once because a scan reads eight of them.
fn parse_stat(text: &str) -> Option<Stat> {
    let stat = kdiag_procstat::Stat::parse(text)?;
    // rest[0] is field 3 (the state).
    let rest: Vec<&str> = stat.fields().collect();
    let field = |i: usize| rest.get(i).copied();
    Some(Stat {
        comm: stat.comm().to_owned(),
        state: field(0)?.chars().next()?,
        ppid: field(1)?.parse().ok()?,
        utime: field(11)?.parse().ok()?,
        stime: field(12)?.parse().ok()?,
        nice: field(16)?.parse().ok()?,
        starttime: field(19)?.parse().ok()?,
        vsize: field(20)?.parse().ok()?,
        rss_pages: field(21)?.parse().ok()?,
    })
}

#[derive(Debug, Default, PartialEq)]
struct Status {
    tgid: Option<i32>,
    ns_pid: Option<i32>,
    hwm_kb: u64,
    data_kb: u64,
    stack_kb: u64,
    locked_kb: u64,
    swap_kb: u64,
    sig_ign: u64,
    sig_cgt: u64,
}

fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    let kb = |v: &str| {
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Tgid" => s.tgid = value.parse().ok(),
            "NSpid" => s.ns_pid = value.split_whitespace().last().and_then(|v| v.parse().ok()),
            "VmHWM" => s.hwm_kb = kb(value),
            "VmData" => s.data_kb = kb(value),
            "VmStk" => s.stack_kb = kb(value),
            "VmLck" => s.locked_kb = kb(value),
            "VmSwap" => s.swap_kb = kb(value),
            "SigIgn" => s.sig_ign = u64::from_str_radix(value, 16).unwrap_or(0),
            "SigCgt" => s.sig_cgt = u64::from_str_radix(value, 16).unwrap_or(0),
            _ => {}
        }
    }
    s
}

/// Bytes of command line kept per process: a JVM's or a shell script's argv can run to many
/// KiB, and a thousand of them would not fit the step's output.
pub const MAX_COMMAND_BYTES: usize = 1024;

fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0;
    let total = raw.len();
    for arg in raw.split(|b| *b == 0).filter(|a| !a.is_empty()) {
        let arg = String::from_utf8_lossy(arg);
        if used + arg.len() > MAX_COMMAND_BYTES {
            let room = MAX_COMMAND_BYTES.saturating_sub(used);
            let mut cut = room.min(arg.len());
            while !arg.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut > 0 {
                out.push(arg[..cut].to_owned());
            }
            out.push(format!(
                "…(command line of {total} bytes cut at {MAX_COMMAND_BYTES})"
            ));
            break;
        }
        used += arg.len() + 1;
        out.push(arg.into_owned());
    }
    out
}

/// The sandbox or container a runtime shim serves: containerd's shim v2 (`-id <sandbox id>`),
/// the v1 shim (`-workdir …/<container id>`) and CRI-O's conmon (`-c`/`--cid <container id>`).
fn shim_target(comm: &str, command: &[String]) -> Option<String> {
    let program = command.first().map(|p| p.rsplit('/').next().unwrap_or(p));
    let is_shim = comm.starts_with("containerd-shim")
        || program.is_some_and(|p| p.starts_with("containerd-shim"));
    let is_conmon = comm == "conmon" || program == Some("conmon");
    let value_of = |flags: &[&str]| {
        command.iter().enumerate().find_map(|(i, a)| {
            flags.iter().find_map(|f| {
                if a == f {
                    command.get(i + 1).cloned()
                } else {
                    a.strip_prefix(&format!("{f}=")).map(str::to_owned)
                }
            })
        })
    };
    if is_shim {
        if let Some(id) = value_of(&["-id", "--id"]) {
            return Some(id);
        }
        return value_of(&["-workdir", "--workdir"])
            .and_then(|w| w.rsplit('/').next().map(str::to_owned))
            .filter(|id| cgroup::is_container_id(id));
    }
    if is_conmon {
        return value_of(&["-c", "--cid"]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_parses() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 5 1 0 123456 10485760 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "my (odd) name");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!((s.utime, s.stime), (7, 3));
        assert_eq!(s.nice, 5);
        assert_eq!(s.starttime, 123456);
        assert_eq!(s.vsize, 10485760);
        assert_eq!(s.rss_pages, 250);
    }

    #[test]
    fn status_gives_memory_signals_and_the_namespace_pid() {
        let text = "Name:\tsleep\nTgid:\t77\nNSpid:\t77\t1\nVmHWM:\t  1024 kB\nVmData:\t 200 kB\nVmStk:\t 132 kB\nVmLck:\t 0 kB\nVmSwap:\t 8 kB\nSigIgn:\t0000000000004000\nSigCgt:\t0000000000000000\n";
        let s = parse_status(text);
        assert_eq!(s.tgid, Some(77));
        assert_eq!(s.ns_pid, Some(1));
        assert_eq!(s.hwm_kb, 1024);
        assert_eq!(s.swap_kb, 8);
        let sig = SignalInfo {
            ignored: s.sig_ign,
            caught: s.sig_cgt,
            ns_pid: s.ns_pid,
        };
        assert!(sig.ignores_sigterm(77));
    }

    #[test]
    fn a_containers_init_without_a_handler_ignores_sigterm_but_one_with_a_handler_does_not() {
        let init = SignalInfo {
            ignored: 0,
            caught: 0,
            ns_pid: Some(1),
        };
        assert!(init.ignores_sigterm(500));
        let handler = SignalInfo {
            caught: 1 << 14,
            ..init.clone()
        };
        assert!(!handler.ignores_sigterm(500));
        let host_process = SignalInfo {
            ns_pid: Some(500),
            ..init
        };
        assert!(!host_process.ignores_sigterm(500));
    }

    #[test]
    fn a_very_long_command_line_is_cut_and_says_so() {
        let long = format!("java\0-cp\0{}\0Main\0", "x".repeat(5000));
        let cmd = parse_cmdline(long.as_bytes());
        assert_eq!(&cmd[..2], ["java", "-cp"]);
        assert!(cmd.iter().map(String::len).sum::<usize>() < MAX_COMMAND_BYTES + 100);
        assert!(cmd.last().unwrap().contains("cut at 1024"), "{cmd:?}");
        assert_eq!(parse_cmdline(b"sleep\x003600\x00"), ["sleep", "3600"]);
    }

    #[test]
    fn shims_name_what_they_serve() {
        let cmd = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let id = "8c615157bcdf17f16e3c4c1a0e27634b90608c9e64ab3a145205ad2a3908e9fd";
        assert_eq!(
            shim_target(
                "containerd-shim",
                &cmd(&format!(
                    "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {id} -address /run/containerd/containerd.sock"
                ))
            ),
            Some(id.to_owned())
        );
        assert_eq!(
            shim_target(
                "containerd-shim",
                &cmd(&format!(
                    "containerd-shim -namespace moby -workdir /var/lib/containerd/io.containerd.runtime.v1.linux/moby/{id} -address x"
                ))
            ),
            Some(id.to_owned())
        );
        assert_eq!(
            shim_target(
                "conmon",
                &cmd(&format!("/usr/bin/conmon -b /run/x -c {id} -n k8s_x"))
            ),
            Some(id.to_owned())
        );
        assert_eq!(shim_target("sleep", &cmd("sleep 10")), None);
    }

    #[test]
    fn this_process_is_found_with_its_command_line_and_start_time() {
        let snap = scan(Path::new("/proc"), Deadline::never(), 2).unwrap();
        assert!(snap.complete);
        let me = std::process::id() as i32;
        let p = snap
            .processes
            .iter()
            .find(|p| p.pid == me)
            .expect("own pid");
        assert!(!p.command.is_empty());
        assert!(p.start_time > 0);
        assert!(p.memory_info.rss > 0);
        let again = read_process(Path::new("/proc"), me).unwrap();
        assert_eq!(again.start_time, p.start_time);
    }
}
