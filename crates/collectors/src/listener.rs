//! Which process of the node serves a port or a unix socket: the node's own kubelet (the one
//! listening on the port the Node object advertises) and its container runtime (the one
//! listening on the CRI socket), with the state /proc gives for it.
//!
//! A machine can run several kubelets (test clusters, kind); the name alone does not tell which
//! one serves this node, the listening socket does. Only processes with one of the given
//! names are looked at, so the fd scan stays a handful of directories.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the wanted process listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen<'a> {
    /// A TCP port on any address (IPv4 or IPv6).
    Tcp(u16),
    /// A unix socket at this path.
    Unix(&'a Path),
}

impl std::fmt::Display for Listen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(port) => write!(f, "TCP port {port}"),
            Listen::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A daemon of the node as /proc shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DaemonProcess {
    pub pid: i32,
    /// The kernel's name for it (comm).
    pub name: String,
    /// The state letter of /proc/<pid>/stat: R, S, D, T (stopped), t (traced), Z.
    pub state: String,
    /// The command line, at most a few arguments.
    pub command: Vec<String>,
}

impl DaemonProcess {
    /// Whether it is stopped (SIGSTOP, or held by a debugger): it cannot answer anything.
    pub fn stopped(&self) -> bool {
        self.state == "T" || self.state == "t"
    }

    /// The state in words, for summaries.
    pub fn state_words(&self) -> &'static str {
        match self.state.as_str() {
            "R" => "running",
            "S" => "sleeping",
            "D" => "in uninterruptible sleep (waiting on I/O)",
            "T" => "stopped (SIGSTOP or a job-control stop)",
            "t" => "stopped by a debugger",
            "Z" => "a zombie",
            _ => "in an unknown state",
        }
    }
}

/// The process named one of `names` that listens at `at`, or None when none does.
pub fn find(proc_root: &Path, names: &[&str], at: &Listen) -> Option<DaemonProcess> {
    let pids = crate::process::scan::list_pids(proc_root).ok()?;
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some(stat) = kdiag_procstat::Stat::parse(&stat) else {
            continue;
        };
        if !names.contains(&stat.comm()) {
            continue;
        }
        // The process's own network namespace: the socket table it listens in.
        let inodes = match at {
            Listen::Tcp(port) => ["tcp", "tcp6"]
                .iter()
                .filter_map(|t| std::fs::read_to_string(dir.join("net").join(t)).ok())
                .flat_map(|text| tcp_listening_inodes(&text, *port))
                .collect::<Vec<_>>(),
            Listen::Unix(path) => std::fs::read_to_string(dir.join("net/unix"))
                .map(|text| unix_listening_inodes(&text, path))
                .unwrap_or_default(),
        };
        if inodes.is_empty() || !holds_socket(&dir, &inodes) {
            continue;
        }
        let command = std::fs::read(dir.join("cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .take(4)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        return Some(DaemonProcess {
            pid,
            name: stat.comm().to_owned(),
            state: stat.state().map(String::from).unwrap_or_default(),
            command,
        });
    }
    None
}

fn holds_socket(dir: &Path, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .any(|i| inodes.contains(&i))
}

/// The inodes of sockets listening on `port` in a /proc/<pid>/net/tcp{,6} table.
fn tcp_listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == LISTEN)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The inodes of sockets listening at `path` in a /proc/<pid>/net/unix table.
fn unix_listening_inodes(table: &str, path: &Path) -> Vec<u64> {
    // Flags __SO_ACCEPTCON (0x10000): a socket that listen() was called on.
    const ACCEPTCON: u32 = 0x10000;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & ACCEPTCON != 0 && Path::new(f.get(7)?) == path)
                .then(|| f.get(6)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_tcp_socket_of_a_port_is_found_and_connections_to_it_are_not() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2A1B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:2A1B 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(tcp_listening_inodes(table, 0x2A1B), [111]);
        assert_eq!(tcp_listening_inodes(table, 22), [333]);
        assert!(tcp_listening_inodes(table, 0x9C40).is_empty());
    }

    #[test]
    fn the_listening_unix_socket_of_a_path_is_found() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/k/containerd.sock
0000000000000000: 00000003 00000000 00000000 0001 03 4343 /run/k/containerd.sock
0000000000000000: 00000002 00000000 00010000 0001 01 4444 /run/other.sock
";
        assert_eq!(
            unix_listening_inodes(table, Path::new("/run/k/containerd.sock")),
            [4242]
        );
    }

    #[test]
    fn this_test_binary_is_found_by_the_unix_socket_it_listens_on() {
        let dir = std::env::temp_dir().join(format!("kdiag-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let comm = kdiag_procstat::Stat::parse(&me).unwrap().comm().to_owned();
        let found = find(Path::new("/proc"), &[&comm], &Listen::Unix(&socket))
            .expect("the listener is this process");
        assert_eq!(found.pid, std::process::id() as i32);
        assert!(!found.stopped(), "{found:?}");
        assert!(
            find(
                Path::new("/proc"),
                &["no-such-daemon"],
                &Listen::Unix(&socket)
            )
            .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
