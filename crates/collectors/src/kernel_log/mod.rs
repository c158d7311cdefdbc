//! `kernel-log-collector` → `kernelLogInformation`: recent kernel messages, with OOM kills,
//! hung tasks and I/O errors parsed into entries with wall-clock timestamps.
//!
//! Reads the ring buffer from /dev/kmsg without blocking (every record still in it, oldest
//! first); where the device cannot be opened (a container without a device rule), falls back to
//! syslog(2) (needs only CAP_SYSLOG), then to `dmesg --raw`. Kernel stamps are
//! microseconds since boot; boot time = now − /proc/uptime turns them into wall-clock times.

pub mod parse;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use futures::FutureExt;
use futures::future::BoxFuture;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::KERNEL_LOG_INFORMATION;
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use serde_json::{Value, json};

use crate::budget::{Deadline, blocking, output_budget};
use crate::process::scan::read_uptime;
pub use parse::{Events, HungTask, IoError, KernelMessage, OomKill};

/// Context input: only messages of the last this many seconds (default: the whole buffer).
pub const SINCE_SECONDS_KEY: &str = "kernelLogSinceSeconds";
/// Context input: how many of the most recent warning-or-worse messages to include (default 200).
pub const MAX_MESSAGES_KEY: &str = "kernelLogMaxMessages";
const DEFAULT_MAX_MESSAGES: usize = 200;
/// Structured events of each kind kept, most recent first.
const MAX_EVENTS: usize = 100;
/// Levels 0–4: emerg, alert, crit, err, warning. Info-level chatter (veth up/down) is left out
/// of `messages`; the events are parsed from every level.
const MESSAGE_LEVEL: u8 = 4;

/// The kernel log as read, with the source it came from.
#[derive(Debug, Default)]
pub struct KernelLog {
    pub source: String,
    pub boot_time: jiff::Timestamp,
    pub messages: Vec<KernelMessage>,
    /// Why /dev/kmsg was not used, when dmesg was.
    pub fallback_reason: Option<String>,
}

/// Reads the kernel's ring buffer: /dev/kmsg, or dmesg when the device cannot be opened.
pub fn read(kmsg: &Path, proc_root: &Path, deadline: Deadline) -> Result<KernelLog, String> {
    let uptime = read_uptime(proc_root)?;
    let now = jiff::Timestamp::now();
    let boot_time = now
        .checked_sub(jiff::SignedDuration::from_secs_f64(uptime))
        .map_err(|e| format!("computing boot time from uptime {uptime}: {e}"))?;
    let (source, mut messages, fallback_reason) = match read_kmsg(kmsg, deadline) {
        Ok(m) => (kmsg.display().to_string(), m, None),
        Err(kmsg_err) => match read_syslog()
            .or_else(|syslog_err| read_dmesg().map_err(|e| format!("{syslog_err}; and {e}")))
        {
            Ok((source, m)) => (source, m, Some(kmsg_err)),
            Err(dmesg_err) => {
                return Err(format!(
                    "cannot read the kernel log: {kmsg_err}; and {dmesg_err}. The agent needs \
                     the host's /dev/kmsg (privileged, or CAP_SYSLOG with the device mounted)"
                ));
            }
        },
    };
    for m in &mut messages {
        m.timestamp = boot_time
            .checked_add(jiff::SignedDuration::from_micros(m.monotonic_usec as i64))
            .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
            .unwrap_or_default();
    }
    Ok(KernelLog {
        source,
        boot_time,
        messages,
        fallback_reason,
    })
}

fn read_kmsg(path: &Path, deadline: Deadline) -> Result<Vec<KernelMessage>, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // Each read returns one record; a buffer smaller than a record gives EINVAL.
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        if deadline.passed() {
            break;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(m) = parse::parse_kmsg_record(&String::from_utf8_lossy(&buf[..n])) {
                    out.push(m);
                }
            }
            // The end of the buffer: nothing more without waiting.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // EPIPE: records were overwritten while we read; the next read goes on after them.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
    }
    Ok(out)
}

/// The ring buffer through syslog(2), which needs only CAP_SYSLOG: a container may not open
/// /dev/kmsg without a device rule (privileged), but may make this call.
fn read_syslog() -> Result<(String, Vec<KernelMessage>), String> {
    const SIZE_BUFFER: libc::c_int = 10;
    const READ_ALL: libc::c_int = 3;
    // SAFETY: SIZE_BUFFER takes no buffer; READ_ALL writes at most `size` bytes into `buf`.
    let size = unsafe { libc::klogctl(SIZE_BUFFER, std::ptr::null_mut(), 0) };
    if size <= 0 {
        return Err(format!("syslog(2): {}", std::io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; size as usize];
    let n = unsafe { libc::klogctl(READ_ALL, buf.as_mut_ptr().cast(), size) };
    if n < 0 {
        return Err(format!("syslog(2): {}", std::io::Error::last_os_error()));
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]);
    Ok((
        "syslog(2)".to_owned(),
        text.lines().filter_map(parse::parse_dmesg_line).collect(),
    ))
}

fn read_dmesg() -> Result<(String, Vec<KernelMessage>), String> {
    let out = std::process::Command::new("dmesg")
        .args(["--raw", "--kernel"])
        .output()
        .map_err(|e| format!("running dmesg: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dmesg: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((
        "dmesg --raw".to_owned(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse::parse_dmesg_line)
            .collect(),
    ))
}

/// Reads the kernel log of the node (`ctx.node.kmsg`).
pub struct KernelLogCollector;

impl Processor for KernelLogCollector {
    fn name(&self) -> &'static str {
        "kernel-log-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let since: Option<f64> = abnormal.context_as(SINCE_SECONDS_KEY)?;
            let max_messages: usize = abnormal
                .context_as(MAX_MESSAGES_KEY)?
                .unwrap_or(DEFAULT_MAX_MESSAGES);
            let (kmsg, proc_root) = (ctx.node.kmsg.clone(), ctx.node.proc_root.clone());
            let deadline = Deadline::within(ctx.timeout);
            let log = blocking("reading the kernel log", move || {
                read(&kmsg, &proc_root, deadline)
            })
            .await?
            .map_err(ProcessorError::Failed)?;
            let (value, message) = summarize(&log, since, max_messages, ctx.max_output_bytes);
            Ok(ProcessorOutput::message(message).with_context(KERNEL_LOG_INFORMATION, value))
        }
        .boxed()
    }
}

/// The `kernelLogInformation` value and the step's message.
pub fn summarize(
    log: &KernelLog,
    since_seconds: Option<f64>,
    max_messages: usize,
    max_output_bytes: usize,
) -> (Value, String) {
    let cutoff_usec = since_seconds.map(|s| {
        let now_usec = jiff::Timestamp::now()
            .duration_since(log.boot_time)
            .as_micros()
            .max(0) as u64;
        now_usec.saturating_sub((s.max(0.0) * 1e6) as u64)
    });
    let window: Vec<KernelMessage> = log
        .messages
        .iter()
        .filter(|m| cutoff_usec.is_none_or(|c| m.monotonic_usec >= c))
        .cloned()
        .collect();
    let events = parse::extract(&window);
    let last = |n: usize, len: usize| len.saturating_sub(n);
    let important: Vec<&KernelMessage> =
        window.iter().filter(|m| m.level <= MESSAGE_LEVEL).collect();
    let mut shown_messages = important[last(max_messages, important.len())..].to_vec();
    let oom = &events.oom_kills[last(MAX_EVENTS, events.oom_kills.len())..];
    let hung = &events.hung_tasks[last(MAX_EVENTS, events.hung_tasks.len())..];
    let io = &events.io_errors[last(MAX_EVENTS, events.io_errors.len())..];
    let build = |messages: &[&KernelMessage], dropped: usize| {
        json!({
            "source": log.source,
            "bootTime": log.boot_time.to_string(),
            "collectedAt": jiff::Timestamp::now().to_string(),
            "messagesRead": window.len(),
            "oomKills": oom,
            "hungTasks": hung,
            "ioErrors": io,
            "counts": {
                "oomKills": events.oom_kills.len(),
                "hungTasks": events.hung_tasks.len(),
                "ioErrors": events.io_errors.len(),
            },
            "messages": messages,
            "truncated": if dropped > 0 || oom.len() < events.oom_kills.len()
                || hung.len() < events.hung_tasks.len() || io.len() < events.io_errors.len() {
                json!({
                    "messagesDropped": dropped,
                    "reason": format!("kept the most recent {MAX_EVENTS} events of each kind and as many recent messages as fit the output cap"),
                })
            } else { Value::Null },
        })
    };
    // Shed the oldest messages until the whole value fits the budget.
    let budget = output_budget(max_output_bytes);
    let mut dropped = important.len() - shown_messages.len();
    let mut value = build(&shown_messages, dropped);
    while serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0) > budget
        && !shown_messages.is_empty()
    {
        let cut = shown_messages.len().div_ceil(4);
        shown_messages.drain(..cut);
        dropped += cut;
        value = build(&shown_messages, dropped);
    }
    let mut message = format!(
        "read {} kernel messages from {}: {} OOM kills, {} hung tasks, {} I/O errors",
        window.len(),
        log.source,
        events.oom_kills.len(),
        events.hung_tasks.len(),
        events.io_errors.len()
    );
    if let Some(why) = &log.fallback_reason {
        message.push_str(&format!(" (from {} because {why})", log.source));
    }
    (value, message)
}

#[cfg(test)]
mod syslog_tests {
    #[test]
    fn syslog_2_reads_the_same_ring_buffer_as_dev_kmsg() {
        // The path a container without /dev/kmsg takes (CAP_SYSLOG only).
        let (source, messages) = super::read_syslog().expect("syslog(2) as root");
        assert_eq!(source, "syslog(2)");
        assert!(!messages.is_empty(), "the ring buffer is not empty");
        assert!(messages.iter().all(|m| !m.message.is_empty()));
    }
}
