//! HTTP and TCP endpoint checks.
//!
//! A refused connection is said in Go's words, `dial tcp ADDR: connect: connection refused`,
//! as KubeProber's checkers say it: the probe-failure classifier reads that phrase, so a native
//! check's refusal is diagnosed like theirs (the Service whose ClusterIP is ADDR, its endpoints
//! and pods, or the pod at ADDR) instead of being left to the Abnormals' processors.

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
        Err(e) if is_refused(&e) => match dialled(&c.url) {
            Some(addr) => {
                Outcome::error(format!("{} cannot be reached: {}", c.url, refused(&addr)))
            }
            None => Outcome::error(format!("{} cannot be reached: {}", c.url, chain(&e))),
        },
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
        Ok(Err(e)) if is_refused(&e) => Outcome::error(refused(&c.address)),
        Ok(Err(e)) => Outcome::error(format!("{} cannot be connected to: {e}", c.address)),
        Err(_) => Outcome::error(format!(
            "{} did not accept a connection within {}s",
            c.address,
            timeout.as_secs()
        )),
    }
}

/// Go's wording of a refused dial, which the probe-failure classifier recognises.
fn refused(addr: &str) -> String {
    format!("dial tcp {addr}: connect: connection refused")
}

/// Whether an error, or one of its causes, is a refused connection (ECONNREFUSED; with
/// kube-proxy, also a Service without ready endpoints, which it rejects).
fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(x) = next {
        let io_refused = x
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        if io_refused || x.to_string().to_lowercase().contains("connection refused") {
            return true;
        }
        next = x.source();
    }
    false
}

/// `HOST:PORT` an HTTP check dials for `url` (the scheme's port when the URL names none).
fn dialled(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_diagnosers::probe_failure::{Component, Fault, classify};

    /// A port of this machine that nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_refused_http_check_names_the_address_it_dialled_as_the_classifier_reads_it() {
        // What main does for the binary: reqwest's client needs one rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = closed_port();
        let out = http(&HttpCheck {
            url: format!("http://127.0.0.1:{port}/healthz"),
            ..Default::default()
        })
        .await;
        assert_eq!(out.status, kdiag_api::CheckerStatus::Error);
        assert_eq!(
            out.message,
            format!(
                "http://127.0.0.1:{port}/healthz cannot be reached: dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
        let c = classify("web", &out.message).expect("a refusal is classified");
        assert_eq!(
            (c.fault, c.component, c.endpoint.as_str()),
            (
                Fault::ConnectionRefused,
                Component::Endpoint,
                format!("127.0.0.1:{port}").as_str()
            )
        );
    }

    #[tokio::test]
    async fn a_refused_tcp_check_is_classified_as_a_refused_endpoint() {
        let address = format!("127.0.0.1:{}", closed_port());
        let out = tcp(&TcpCheck {
            address: address.clone(),
            ..Default::default()
        })
        .await;
        assert_eq!(out.status, kdiag_api::CheckerStatus::Error);
        let c = classify("redis", &out.message).expect("a refusal is classified");
        assert_eq!((c.fault, c.endpoint), (Fault::ConnectionRefused, address));
    }

    #[test]
    fn the_dialled_address_carries_the_schemes_port_when_the_url_names_none() {
        assert_eq!(
            dialled("http://10.0.0.7/healthz").as_deref(),
            Some("10.0.0.7:80")
        );
        assert_eq!(
            dialled("https://[fd00::1]:8443/").as_deref(),
            Some("[fd00::1]:8443")
        );
        assert_eq!(dialled("not a url"), None);
    }
}
