//! Go: a pprof profile fetched over HTTP from the program's own endpoint (`go.source`).

use std::time::Duration;

use kdiag_api::Abnormal;

use super::{MAX_PROFILE_BYTES, Profilers};
use crate::Error;

impl Profilers {
    pub(super) async fn go(
        &self,
        abnormal: &Abnormal,
        name: &str,
        source: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let url = reqwest::Url::parse(source).map_err(|e| Error::GoSourceNotUrl {
            url: source.to_owned(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Error::GoSourceScheme {
                url: source.to_owned(),
            });
        }
        let client =
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| Error::HttpClient {
                    reason: e.to_string(),
                })?;
        let mut resp =
            client
                .get(url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| Error::GoFetch {
                    url: source.to_owned(),
                    reason: e.to_string(),
                })?;
        if !resp.status().is_success() {
            return Err(Error::GoStatus {
                url: source.to_owned(),
                code: resp.status().as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| Error::GoRead {
            url: source.to_owned(),
            reason: e.to_string(),
        })? {
            if body.len() + chunk.len() > MAX_PROFILE_BYTES {
                return Err(Error::GoTooLarge {
                    url: source.to_owned(),
                    limit: MAX_PROFILE_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let (file, url_path) = self.location(abnormal, name);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|error| Error::Io {
                    action: "creating",
                    path: dir.to_owned(),
                    error,
                })?;
        }
        tokio::fs::write(&file, &body)
            .await
            .map_err(|error| Error::Io {
                action: "writing",
                path: file.clone(),
                error,
            })?;
        Ok(url_path)
    }
}
