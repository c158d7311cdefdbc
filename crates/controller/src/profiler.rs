//! Profilers: a Go program's pprof profile fetched over HTTP and kept under the agent's data root,
//! served by the agent's own HTTP server under a per-Abnormal path until it expires (no random
//! host ports, unlike Kube Diagnoser).

use std::path::PathBuf;
use std::time::Duration;

use kdiag_api::{Abnormal, ProfilerSpec, ProfilerStatus};

/// Default seconds a profiling run may take.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 30;
/// Default seconds a profile stays available.
pub const DEFAULT_EXPIRATION_SECONDS: i32 = 7200;
/// The most bytes of one profile kept.
const MAX_PROFILE_BYTES: usize = 64 * 1024 * 1024;

/// Where profiles are kept and how they are reached.
pub struct Profilers {
    /// Directory profiles are written to.
    pub data_root: PathBuf,
    /// Base URL of the agent's HTTP server as others reach it, e.g. http://10.0.0.5:10357.
    pub public_url: String,
}

impl Profilers {
    /// The file and URL path of one profile.
    fn location(&self, abnormal: &Abnormal, name: &str) -> (PathBuf, String) {
        let ns = abnormal.metadata.namespace.clone().unwrap_or_default();
        let ab = abnormal.metadata.name.clone().unwrap_or_default();
        let file = self
            .data_root
            .join("profiles")
            .join(&ns)
            .join(&ab)
            .join(sanitize(name));
        (file, format!("/profiles/{ns}/{ab}/{}", sanitize(name)))
    }

    /// Runs a profiler and says where its result is, or why there is none.
    pub async fn run(&self, abnormal: &Abnormal, spec: &ProfilerSpec) -> ProfilerStatus {
        let mut status = ProfilerStatus {
            name: spec.name.clone(),
            type_: spec.type_,
            endpoint: String::new(),
            error: String::new(),
        };
        let timeout = Duration::from_secs(
            spec.timeout_seconds
                .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
                .max(1) as u64,
        );
        let result = match (&spec.go, &spec.java) {
            (Some(go), None) => self.go(abnormal, &spec.name, &go.source, timeout).await,
            (None, Some(_)) => Err(java_unavailable()),
            _ => Err("a profiler needs exactly one of go and java".to_owned()),
        };
        match result {
            Ok(url_path) => status.endpoint = format!("{}{url_path}", self.public_url),
            Err(e) => status.error = e,
        }
        status
    }

    async fn go(
        &self,
        abnormal: &Abnormal,
        name: &str,
        source: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let url = reqwest::Url::parse(source)
            .map_err(|e| format!("go.source {source:?} is not a URL: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "go.source {source:?} must be an http or https URL of a pprof endpoint"
            ));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let mut resp = client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("fetching {source}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{source} answered HTTP {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading {source}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_PROFILE_BYTES {
                return Err(format!("{source} sent more than {MAX_PROFILE_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let (file, url_path) = self.location(abnormal, name);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        tokio::fs::write(&file, &body)
            .await
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        Ok(url_path)
    }
}

fn java_unavailable() -> String {
    match which("jcmd") {
        Some(_) => "Java profiling through jcmd is not supported by this kdiag version; fetch a heap dump with a command executor instead".into(),
        None => "Java profiling needs jcmd (a JDK) on the node, and none was found in PATH".into(),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file())
}

/// A name safe as one path segment.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}
