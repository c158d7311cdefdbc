//! Memory and CPU of a process, as the kernel accounts them: VmRSS/VmHWM from
//! /proc/<pid>/status and utime+stime from /proc/<pid>/stat.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// Peak RSS since the process started.
    pub hwm_kib: u64,
    /// Of the RSS: anonymous memory (heap, stacks) and file pages (the binary's code and data).
    pub anon_kib: u64,
    pub file_kib: u64,
    pub threads: u64,
    /// User + system CPU time.
    pub cpu: Duration,
    pub at: Instant,
}

pub fn sample(pid: i32) -> Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
        threads: field("Threads:"),
        cpu: cpu_time(pid)?,
        at,
    })
}

/// utime + stime of `pid` (all its threads).
pub fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name in parentheses may contain spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("malformed stat")?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// CPU used between two readings, as a share of one core.
pub fn cpu_share(a: &ProcSample, b: &ProcSample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall == 0.0 {
        0.0
    } else {
        b.cpu.saturating_sub(a.cpu).as_secs_f64() / wall
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
