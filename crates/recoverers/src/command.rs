//! The command executor: runs an argv (never through a shell) in its own process group, kills
//! the whole group on timeout, and keeps stdout and stderr apart, each capped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kdiag_api::{CommandExecutorSpec, CommandExecutorStatus};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::policy::Policy;

/// Default seconds a command may run, as in Kube Diagnoser.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = kdiag_api::DEFAULT_STEP_TIMEOUT_SECONDS;
/// Bytes of stdout and of stderr kept per command.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;

/// How a command run ended, for the step's record.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    pub status: CommandExecutorStatus,
    /// Not run at all: denied by policy (or dry-run). The message says which rule.
    pub denied: bool,
    pub duration: Duration,
}

impl CommandOutcome {
    pub fn succeeded(&self) -> bool {
        !self.denied && self.status.error.is_empty()
    }
}

/// Runs one command executor under `policy`.
pub async fn run(spec: &CommandExecutorSpec, policy: &Policy, output_cap: usize) -> CommandOutcome {
    let started = Instant::now();
    let mut status = CommandExecutorStatus {
        command: spec.command.clone(),
        type_: spec.type_,
        timeout_seconds: spec.timeout_seconds,
        stdout: String::new(),
        stderr: String::new(),
        error: String::new(),
    };
    if let Err(denied) = policy.allows_command(&spec.command) {
        status.error = denied.to_string();
        return CommandOutcome {
            status,
            denied: true,
            duration: started.elapsed(),
        };
    }
    if policy.spec.dry_run {
        status.error = format!(
            "dry run: would have run {:?}; nothing was run (the node policy has dryRun: true)",
            spec.command
        );
        return CommandOutcome {
            status,
            denied: true,
            duration: started.elapsed(),
        };
    }
    let timeout = Duration::from_secs(spec.timeout().max(1) as u64);
    let (stdout, stderr, error) = execute(&spec.command, timeout, output_cap).await;
    status.stdout = stdout;
    status.stderr = stderr;
    status.error = error;
    CommandOutcome {
        status,
        denied: false,
        duration: started.elapsed(),
    }
}

/// Returns (stdout, stderr, error); error is empty on exit status 0.
async fn execute(argv: &[String], timeout: Duration, cap: usize) -> (String, String, String) {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    match run_bounded(cmd, timeout, cap, cap).await {
        Err(e) => (
            String::new(),
            String::new(),
            format!("could not start {}: {e}", argv[0]),
        ),
        Ok(b) => {
            let error = match b.ended {
                Ended::Success => String::new(),
                Ended::Failed(status) => status,
                Ended::WaitError(e) => format!("waiting for the command: {e}"),
                Ended::TimedOut => format!(
                    "command {argv:?} timed out after {}s and was killed",
                    timeout.as_secs()
                ),
            };
            (b.stdout, b.stderr, error)
        }
    }
}

/// How a bounded child process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with status 0.
    Success,
    /// It exited otherwise: the status as text, such as "exit status: 2".
    Failed(String),
    /// Waiting for it failed.
    WaitError(String),
    /// It ran past its time and was killed with its whole process group.
    TimedOut,
}

/// What a bounded child process wrote, each stream capped, and how it ended.
#[derive(Debug, Clone)]
pub struct Bounded {
    pub stdout: String,
    pub stderr: String,
    pub ended: Ended,
}

/// Runs `cmd` with no stdin, in a process group of its own, keeping at most `stdout_cap` and
/// `stderr_cap` bytes of its output, and kills the whole group at `timeout` and again when it
/// has ended (children it started may hold the pipes). Err: it could not be started.
pub async fn run_bounded(
    mut cmd: Command,
    timeout: Duration,
    stdout_cap: usize,
    stderr_cap: usize,
) -> std::io::Result<Bounded> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let out = tokio::spawn(read_capped(child.stdout.take(), stdout_cap));
    let err = tokio::spawn(read_capped(child.stderr.take(), stderr_cap));
    let ended = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ended::Success,
        Ok(Ok(status)) => Ended::Failed(status.to_string()),
        Ok(Err(e)) => Ended::WaitError(e.to_string()),
        Err(_) => {
            // The whole group: the command may have started children of its own.
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Ended::TimedOut
        }
    };
    // Children that inherited the pipes may keep them open; do not wait for them forever.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let collect = |h: tokio::task::JoinHandle<String>| async move {
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    Ok(Bounded {
        stdout: collect(out).await,
        stderr: collect(err).await,
        ended,
    })
}

async fn read_capped(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n[kdiag: {dropped} more bytes not kept]"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySpec;
    use kdiag_api::ProcessorType;

    fn spec(argv: &[&str], timeout: i32) -> CommandExecutorSpec {
        CommandExecutorSpec {
            command: argv.iter().map(|s| (*s).to_owned()).collect(),
            type_: ProcessorType::InformationCollector,
            timeout_seconds: Some(timeout),
        }
    }

    fn allow_all() -> Policy {
        Policy::from_yaml("commands:\n  allow:\n  - argv: [sh]\n  - argv: [uptime]\n  - argv: [no-such-program-kdiag]\n").unwrap()
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_kept_apart() {
        let out = run(
            &spec(&["sh", "-c", "echo out; echo err >&2; exit 3"], 5),
            &allow_all(),
            1024,
        )
        .await;
        assert_eq!(out.status.stdout, "out\n");
        assert_eq!(out.status.stderr, "err\n");
        assert_eq!(out.status.error, "exit status: 3");
        assert!(!out.succeeded());
    }

    #[tokio::test]
    async fn a_command_over_its_timeout_is_killed_with_its_children() {
        let marker = format!("/tmp/kdiag-cmd-test-{}", std::process::id());
        let started = Instant::now();
        let out = run(
            &spec(
                &[
                    "sh",
                    "-c",
                    &format!("(sleep 30; touch {marker}) & sleep 30"),
                ],
                1,
            ),
            &allow_all(),
            1024,
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            out.status.error.contains("timed out after 1s"),
            "{}",
            out.status.error
        );
        // The background child was in the same process group and died too.
        let ps = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        assert!(
            ps.stdout.is_empty(),
            "a child of the timed-out command survived"
        );
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_cut_and_says_so() {
        let out = run(
            &spec(&["sh", "-c", "yes x | head -c 5000"], 5),
            &allow_all(),
            100,
        )
        .await;
        assert!(out.status.stdout.starts_with("x\nx\n"));
        assert!(
            out.status
                .stdout
                .contains("[kdiag: 4900 more bytes not kept]"),
            "{}",
            out.status.stdout
        );
        assert!(out.succeeded());
    }

    #[tokio::test]
    async fn a_denied_command_is_recorded_and_not_run() {
        let out = run(&spec(&["kill", "-10", "1000"], 5), &Policy::default(), 1024).await;
        assert!(out.denied);
        assert!(
            out.status
                .error
                .starts_with("denied by policy rule commands.allow"),
            "{}",
            out.status.error
        );
    }

    #[tokio::test]
    async fn dry_run_records_what_would_have_run() {
        let mut p = allow_all();
        p.spec = PolicySpec {
            dry_run: true,
            ..p.spec
        };
        let out = run(&spec(&["uptime"], 5), &p, 1024).await;
        assert!(out.denied && out.status.error.starts_with("dry run"));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let out = run(&spec(&["no-such-program-kdiag"], 5), &allow_all(), 1024).await;
        assert!(
            out.status
                .error
                .starts_with("could not start no-such-program-kdiag"),
            "{}",
            out.status.error
        );
    }
}
