//! The real `kdiag` binary as its own process (`kdiag agent`, `kdiag controller`), configured as
//! in a cluster except for where it reaches the apiserver: a kubeconfig with its ServiceAccount's
//! token. Its memory and CPU are read from /proc, its readiness from its /readyz.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct RealProc {
    pub what: String,
    pub port: u16,
    child: Child,
}

impl RealProc {
    /// Starts `kdiag <args>` with `--bind-address 127.0.0.1 --port <free>`, logging to `log`.
    /// `kdiag controller …` and `kdiag agent …` run as the shipped manifests run them: the role
    /// binary next to `kdiag` (`kdiag-controller …`, `kdiag-agent …`) when it is there.
    ///
    /// `wrapper` is a command line put in front, for profiling: it must exec kdiag (`env
    /// LD_PRELOAD=… kdiag`), so the process measured and signalled is kdiag itself.
    pub fn spawn(
        kdiag: &Path,
        wrapper: Option<&str>,
        what: &str,
        args: &[String],
        kubeconfig: &Path,
        log: &Path,
    ) -> Result<Self> {
        let port = crate::env::free_port()?;
        let log_file = std::fs::File::create(log)?;
        let (kdiag, args) = match args.split_first() {
            Some((role, rest)) if role == "controller" || role == "agent" => {
                let binary = kdiag.with_file_name(format!("kdiag-{role}"));
                if binary.is_file() {
                    (binary, rest)
                } else {
                    (kdiag.to_path_buf(), args)
                }
            }
            _ => (kdiag.to_path_buf(), args),
        };
        let kdiag = kdiag.as_path();
        let mut words = wrapper.unwrap_or_default().split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(kdiag);
                c
            }
            None => Command::new(kdiag),
        };
        cmd.args(args)
            .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with cargo build --release)",
                kdiag.display()
            )
        })?;
        Ok(Self {
            what: what.into(),
            port,
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until /readyz answers 200 (its watches have synced).
    pub async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before it was ready", self.what);
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within 60s", self.what);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its Prometheus metrics.
    pub async fn metrics(&self, http: &reqwest::Client) -> Result<String> {
        Ok(http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await?
            .text()
            .await?)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RealProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
