//! kdiag-procstat: what /proc says of one process, read without panics.
//!
//! - The crate root: `/proc/<pid>/stat`.
//! - [`cgroup`]: which pod and container `/proc/<pid>/cgroup` places a process in.
//!
//! `/proc/<pid>/stat`: `pid (comm) state ppid … starttime …`, one line per process (proc(5)).
//!
//! The command name (field 2) may hold spaces and parentheses, so the fields after it are
//! counted from the *last* `)`. Nothing here panics, whatever the text: `proc_root` is
//! configurable and tests point it at fake trees.
//!
//! Why not the `procfs` crate for this: its `Stat` parser (procfs-core 0.18) slices
//! `buf[end_paren + 2..]` and `buf[..start_paren - 1]`, which panic on exactly the malformed
//! lines this crate must survive, and it fails unless all of the 44 or more fields parse.

pub mod cgroup;

use std::path::Path;
use std::str::SplitAsciiWhitespace;

/// One `/proc/<pid>/stat` line, split after the command name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat<'a> {
    comm: &'a str,
    /// Fields 3 onwards.
    rest: &'a str,
}

impl<'a> Stat<'a> {
    /// `None` when the line has no `(`…`)` around a command name.
    pub fn parse(text: &'a str) -> Option<Self> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        Some(Self {
            comm: text.get(open + 1..close)?,
            rest: text.get(close + 1..)?,
        })
    }

    /// Field 2 without its parentheses: the first 15 bytes of the executable's name.
    pub fn comm(&self) -> &'a str {
        self.comm
    }

    /// Fields 3 onwards in order (state, ppid, pgrp, …): the fast way to read several.
    pub fn fields(&self) -> SplitAsciiWhitespace<'a> {
        self.rest.split_ascii_whitespace()
    }

    /// Field `n` as proc(5) numbers them, from 3 (the state) on; `None` below 3 or past the end.
    pub fn field(&self, n: usize) -> Option<&'a str> {
        self.fields().nth(n.checked_sub(3)?)
    }

    /// Field 3: R, S, D, Z, T, …
    pub fn state(&self) -> Option<char> {
        self.field(3)?.chars().next()
    }

    /// Field 4: the parent's pid.
    pub fn ppid(&self) -> Option<i32> {
        self.field(4)?.parse().ok()
    }

    /// Field 22: when the process started, in clock ticks since boot. With the pid it names a
    /// process for good: a reused pid has a later start time.
    pub fn start_time(&self) -> Option<u64> {
        self.field(22)?.parse().ok()
    }
}

/// Reads `<proc_root>/<pid>/stat`.
pub fn read(proc_root: &Path, pid: i32) -> std::io::Result<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))
}

/// Field 22 of `<proc_root>/<pid>/stat`; `None` when the process is gone or the line is not
/// one.
pub fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    Stat::parse(&read(proc_root, pid).ok()?)?.start_time()
}

/// Field 4 of `<proc_root>/<pid>/stat`.
pub fn parent(proc_root: &Path, pid: i32) -> Option<i32> {
    Stat::parse(&read(proc_root, pid).ok()?)?.ppid()
}

/// Whether the process exists and is not a zombie (a zombie keeps its /proc entry until its
/// parent reaps it).
pub fn alive(proc_root: &Path, pid: i32) -> bool {
    read(proc_root, pid)
        .ok()
        .and_then(|text| Stat::parse(&text)?.state())
        .is_some_and(|state| state != 'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 7 3 0 0 20 0 1 0 123456 12345678 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        let s = Stat::parse(LINE).unwrap();
        assert_eq!(s.comm(), "my (odd) name");
        assert_eq!(s.state(), Some('S'));
        assert_eq!(s.ppid(), Some(1));
        assert_eq!(s.start_time(), Some(123_456));
        assert_eq!(s.field(14), Some("7"), "utime");
        assert_eq!(s.field(23), Some("12345678"), "vsize");
        assert_eq!(s.field(2), None, "the command name is comm()");
        assert_eq!(s.fields().next(), Some("S"));
    }

    #[test]
    fn malformed_lines_give_none_instead_of_a_panic() {
        for text in [
            "",
            "1",
            "1 (x)",
            "1 (x) ",
            "(x)",
            ")",
            "1 )x( S",
            "1 (x) S",
            "1 (x) S notanumber",
            "(\u{e9})",
            "1 (x\u{e9})\u{e9}",
        ] {
            let s = Stat::parse(text);
            assert_eq!(s.and_then(|s| s.start_time()), None, "{text:?}");
            assert_eq!(s.and_then(|s| s.ppid()), None, "{text:?}");
        }
        assert_eq!(Stat::parse("1 (x)").map(|s| s.comm()), Some("x"));
        assert_eq!(Stat::parse("1 (x)").and_then(|s| s.state()), None);
    }

    #[test]
    fn this_process_is_alive_and_started_after_boot() {
        let me = std::process::id() as i32;
        let proc = Path::new("/proc");
        assert!(alive(proc, me));
        assert!(start_time(proc, me).is_some_and(|t| t > 0));
        assert_eq!(parent(proc, me), Some(parent_pid_from_status()));
        assert!(!alive(proc, -1));
        assert_eq!(start_time(Path::new("/nonexistent"), me), None);
    }

    fn parent_pid_from_status() -> i32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_fake_proc_tree_is_read_like_the_real_one() {
        let root = std::env::temp_dir().join(format!("kdiag-procstat-{}", std::process::id()));
        std::fs::create_dir_all(root.join("7")).unwrap();
        std::fs::write(root.join("7/stat"), LINE).unwrap();
        std::fs::create_dir_all(root.join("8")).unwrap();
        std::fs::write(root.join("8/stat"), "8 (zombie) Z 1").unwrap();
        std::fs::create_dir_all(root.join("9")).unwrap();
        std::fs::write(root.join("9/stat"), "9 (cut)").unwrap();
        let found = (
            start_time(&root, 7),
            alive(&root, 8),
            start_time(&root, 9),
            alive(&root, 9),
        );
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(found, (Some(123_456), false, None, false));
    }
}
