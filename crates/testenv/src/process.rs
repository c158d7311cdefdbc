//! Child processes that never outlive the test binary.
//!
//! Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`: the kernel
//! kills it when that thread (and so the test binary) goes away, even on abort or SIGKILL. It
//! also gets its own process group so a stop reaches anything it forked.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::TestEnvError;

type SpawnRequest = (Command, Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // The parent-death signal fires when the spawning *thread* exits, so this thread must
        // live as long as the process: it does, because its channel's sender is in a static.
        std::thread::Builder::new()
            .name("kdiag-testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the kdiag-testenv spawner thread");
        Mutex::new(tx)
    })
}

/// A running child with its log file. Public so that tests can run kdiag's own binary the same
/// way (it dies with the test binary), kill it as a crash would and start it again.
#[derive(Debug)]
pub struct ManagedProcess {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// How it was started, for [`ManagedProcess::respawn`].
    program: PathBuf,
    args: Vec<String>,
}

impl ManagedProcess {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, TestEnvError> {
        Self::spawn_with(name, program, args, log, |_| {})
    }

    /// Like [`spawn`](Self::spawn), letting `configure` adjust the command (its environment)
    /// first.
    pub fn spawn_with(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Self, TestEnvError> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(TestEnvError::io(log))?;
        let err = out.try_clone().map_err(TestEnvError::io(log))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        configure(&mut cmd);
        // SAFETY: only async-signal-safe calls (prctl, setpgid) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                    .map_err(io::Error::from)?;
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((cmd, tx))
            .map_err(|_| TestEnvError::Other("the kdiag-testenv spawner thread is gone".into()))?;
        let child = rx
            .recv()
            .map_err(|_| TestEnvError::Other("the kdiag-testenv spawner thread is gone".into()))?
            .map_err(|source| TestEnvError::Spawn {
                process: name.into(),
                source,
            })?;
        Ok(Self {
            name: name.into(),
            child,
            log: log.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
        })
    }

    /// Starts it again with the same program, arguments and log (the old one must have been
    /// stopped or killed). The environment is the test binary's: a `configure` of
    /// [`spawn_with`](Self::spawn_with) is not repeated.
    pub fn respawn(&mut self) -> Result<(), TestEnvError> {
        let again = Self::spawn(&self.name, &self.program, &self.args, &self.log)?;
        *self = again;
        Ok(())
    }

    /// Its command line arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// SIGKILL to its process group, as a crash or `kill -9` would end it: nothing gets to
    /// clean up. Reaps the child.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // Reaped already: its pid (and group id) may belong to another process by now.
            return;
        }
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the child has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails with the log tail if the process has already exited.
    pub fn check_running(&mut self) -> Result<(), TestEnvError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(TestEnvError::ExitedEarly {
                process: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: tail(&self.log, 30),
            }),
            _ => Ok(()),
        }
    }

    /// SIGTERM to its process group, then SIGKILL after `grace`. Always reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = Pid::from_raw(self.pid());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The group may hold children of the child even when the child itself has exited.
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file, for error messages, without Go stack dumps: a Go
/// program that dies on a fatal log line (klog's `F…`) or a panic follows it with every
/// goroutine's stack, which would push the one line that says why out of any tail.
pub fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 512 * 1024;
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut bytes = Vec::new();
    let _ = f.take(WINDOW).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let kept = without_stack_dumps(&text);
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

fn without_stack_dumps(text: &str) -> Vec<&str> {
    let all: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    for (i, line) in all.iter().enumerate() {
        let frame_location = line.starts_with('\t');
        // A frame's function line is followed by its tab-indented location.
        let frame_function = all.get(i + 1).is_some_and(|next| next.starts_with('\t'));
        let header = line.starts_with("goroutine ") && line.ends_with(':');
        if !(frame_location || frame_function || header || line.is_empty()) {
            kept.push(*line);
        }
    }
    kept
}

type Cleanup = Box<dyn FnOnce() + Send>;

fn cleanups() -> &'static Mutex<Vec<(u64, Cleanup)>> {
    static CLEANUPS: OnceLock<Mutex<Vec<(u64, Cleanup)>>> = OnceLock::new();
    CLEANUPS.get_or_init(|| {
        extern "C" fn run_at_exit() {
            run_all_cleanups();
        }
        // SAFETY: registering a plain extern "C" function with no arguments.
        unsafe {
            libc::atexit(run_at_exit);
        }
        Mutex::new(Vec::new())
    })
}

/// Registers work to run when the process exits normally (the test harness exits through
/// `exit`, which runs atexit handlers). Returns a key to run it earlier with [`run_cleanup`].
pub(crate) fn at_exit(f: impl FnOnce() + Send + 'static) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let key = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cleanups()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key, Box::new(f)));
    key
}

/// Runs one registered cleanup now, if it has not run yet.
pub(crate) fn run_cleanup(key: u64) {
    let f = {
        let mut all = cleanups().lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .position(|(k, _)| *k == key)
            .map(|i| all.remove(i).1)
    };
    if let Some(f) = f {
        f();
    }
}

fn run_all_cleanups() {
    let all = std::mem::take(&mut *cleanups().lock().unwrap_or_else(|e| e.into_inner()));
    for (_, f) in all.into_iter().rev() {
        f();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_go_stack_dump_does_not_hide_the_fatal_line() {
        let log = "I0101 starting\nF0101 server.go:156] unknown flag: --nope\ngoroutine 1 [running]:\nk8s.io/klog.stacks(0x1)\n\t/src/klog.go:1 +0x85\nmain.main()\n\t/src/main.go:41 +0xc5\n\ngoroutine 6 [chan receive]:\nk8s.io/klog.flush()\n\t/src/klog.go:2 +0x1\n";
        assert_eq!(
            super::without_stack_dumps(log),
            vec![
                "I0101 starting",
                "F0101 server.go:156] unknown flag: --nope"
            ]
        );
    }
}
