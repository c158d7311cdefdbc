//! type Arthas: the node's jcmd (VM.version, Thread.print -l, GC.class_histogram -all) against
//! each JVM, as the JVM's user when the agent may switch to it, each run in its own process group
//! killed at the profiler's timeout, output capped.

use std::path::Path;
use std::time::{Duration, Instant};

use kdiag_api::Abnormal;
use kdiag_recoverers::command::{Ended, run_bounded};

use super::JavaTarget;
use crate::Error;
use crate::profiler::MAX_PROFILE_BYTES;

/// JVMs of one pod profiled by one profiler, at most.
const MAX_JAVA_TARGETS: usize = 4;
/// The diagnostic commands of a jcmd report: each only reads the JVM (the histogram walks the
/// heap at a safepoint without forcing a full GC, `-all`).
const JCMD_COMMANDS: [&[&str]; 3] = [
    &["VM.version"],
    &["Thread.print", "-l"],
    &["GC.class_histogram", "-all"],
];

/// A jcmd report and what it holds.
pub(super) struct JcmdReport {
    pub(super) text: String,
    pub(super) summary: String,
}

/// Runs the report's jcmd commands against each JVM, sequentially, until `deadline`.
pub(super) async fn jcmd_report(
    jcmd: &Path,
    abnormal: &Abnormal,
    name: &str,
    jvms: &[JavaTarget],
    deadline: Instant,
) -> Result<JcmdReport, Error> {
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
    let may_switch_user = may_switch_user().await;
    for jvm in jvms {
        let run_as = run_as(jvm, may_switch_user);
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
        return Err(Error::JcmdAttach {
            failures: failures.join("; "),
            hint: attach_hint(),
        });
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

/// The user jcmd runs as: the JVM's, when the JVM's is not root and the agent may switch to it;
/// otherwise the agent's own.
fn run_as(jvm: &JavaTarget, may_switch_user: bool) -> Option<(u32, u32)> {
    (may_switch_user && jvm.uid != 0).then_some((jvm.uid, jvm.gid))
}

/// Whether the agent may run jcmd as another user: it is root with CAP_SETUID and CAP_SETGID.
async fn may_switch_user() -> bool {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let status = tokio::fs::read_to_string("/proc/self/status")
        .await
        .unwrap_or_default();
    effective_capabilities(&status)
        .is_some_and(|eff| eff & (1 << CAP_SETUID) != 0 && eff & (1 << CAP_SETGID) != 0)
}

/// The `CapEff:` mask of a `/proc/<pid>/status`.
fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_the_last_lines_of_jcmds_output() {
        let out = "123:\n\njava.io.IOException: Permission denied\n\tat a\n\tat b\n";
        assert_eq!(
            last_lines(out, 3),
            "java.io.IOException: Permission denied | \tat a | \tat b"
        );
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn the_effective_capabilities_are_read_from_the_status_file() {
        let status = "Name:\tkdiag\nCapPrm:\t000001ffffffffff\nCapEff:\t00000000000000c0\n";
        assert_eq!(effective_capabilities(status), Some(0xc0));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
        let jvm = |uid| JavaTarget {
            pid: 1,
            uid,
            gid: 7,
            command: String::new(),
            jvm: true,
            origin: String::new(),
        };
        assert_eq!(run_as(&jvm(1000), true), Some((1000, 7)));
        assert_eq!(
            run_as(&jvm(0), true),
            None,
            "a root JVM: the agent's own user"
        );
        assert_eq!(run_as(&jvm(1000), false), None);
    }
}
