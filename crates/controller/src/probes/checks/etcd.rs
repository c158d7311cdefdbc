//! etcd put/get/delete through its v3 HTTP gateway (JSON, base64 keys and values).

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kdiag_api::EtcdCheck;
use serde_json::{Value, json};

use super::endpoints::chain;
use super::{Outcome, seconds};

pub async fn check(c: &EtcdCheck) -> Outcome {
    let timeout = seconds(c.timeout_seconds, 5);
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Outcome::error(format!("cannot build an HTTP client: {e}")),
    };
    let base = c.endpoint.trim_end_matches('/');
    let key = format!(
        "/kdiag/check/{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let value = "kdiag";
    let (k, v) = (B64.encode(&key), B64.encode(value));
    let started = Instant::now();
    let call = |path: &str, body: Value| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("{url}: {}", chain(&e)))?;
            let code = resp.status();
            let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
            if !code.is_success() {
                return Err(format!("{url} answered {}: {}", code.as_u16(), text.trim()));
            }
            serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("{url} answered something that is not JSON: {e}"))
        }
    };
    if let Err(e) = call("/v3/kv/put", json!({"key": k, "value": v})).await {
        return Outcome::error(format!("etcd put failed: {e}"));
    }
    let got = match call("/v3/kv/range", json!({"key": k})).await {
        Ok(r) => r["kvs"][0]["value"]
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        Err(e) => return Outcome::error(format!("etcd get failed: {e}")),
    };
    if got.as_deref() != Some(value) {
        return Outcome::error(format!(
            "etcd get of {key} returned {got:?}, not the value just put"
        ));
    }
    if let Err(e) = call("/v3/kv/deleterange", json!({"key": k})).await {
        return Outcome::error(format!("etcd delete failed: {e}"));
    }
    let ms = started.elapsed().as_millis();
    if ms > 1000 {
        Outcome::warn(format!("etcd put/get/delete took {ms} ms (over 1000 ms)"))
    } else {
        Outcome::pass(format!("etcd put/get/delete in {ms} ms"))
    }
}
