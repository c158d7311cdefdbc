//! Go: a pprof profile fetched over HTTP from the program's own endpoint (`go.source`).

use std::time::Duration;

use kdiag_api::Abnormal;

use super::{MAX_PROFILE_BYTES, Profilers};

impl Profilers {
    pub(super) async fn go(
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
