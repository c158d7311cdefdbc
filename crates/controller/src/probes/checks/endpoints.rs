//! HTTP and TCP endpoint checks.

use std::time::Instant;

use kdiag_api::{HttpCheck, TcpCheck};

use super::{Outcome, seconds};

pub async fn http(c: &HttpCheck) -> Outcome {
    let timeout = seconds(c.timeout_seconds, 5);
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Outcome::error(format!("cannot build an HTTP client: {e}")),
    };
    let started = Instant::now();
    match client.get(&c.url).send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let ok = match c.expect_status {
                Some(want) => i32::from(code) == want,
                None => resp.status().is_success(),
            };
            let took = started.elapsed().as_millis();
            if ok {
                Outcome::pass(format!("{} answered {code} in {took} ms", c.url))
            } else {
                let want = c
                    .expect_status
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "2xx".into());
                Outcome::error(format!("{} answered {code}, expected {want}", c.url))
            }
        }
        Err(e) if e.is_timeout() => Outcome::error(format!(
            "{} did not answer within {}s",
            c.url,
            timeout.as_secs()
        )),
        Err(e) => Outcome::error(format!("{} cannot be reached: {}", c.url, chain(&e))),
    }
}

pub async fn tcp(c: &TcpCheck) -> Outcome {
    let timeout = seconds(c.timeout_seconds, 5);
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&c.address)).await {
        Ok(Ok(_)) => Outcome::pass(format!(
            "{} accepted a connection in {} ms",
            c.address,
            started.elapsed().as_millis()
        )),
        Ok(Err(e)) => Outcome::error(format!("{} refused the connection: {e}", c.address)),
        Err(_) => Outcome::error(format!(
            "{} did not accept a connection within {}s",
            c.address,
            timeout.as_secs()
        )),
    }
}

pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}
