//! Failing probes: which probe (liveness, readiness, startup) of which container, what it
//! checks, the error it gets, and how many restarts it caused.

use k8s_openapi::api::core::v1::{Event, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kdiag_collectors::pod_detail::event_time;

use super::facts::Facts;
use super::finding::{Finding, Rank, quote};

/// A probe failure older than this, on a container that is ready now, is over.
const OVER_AFTER_SECONDS: i64 = 300;

/// What a probe checks, in words: `HTTP GET http://:8080/healthz`, `TCP port 9000`,
/// `command cat /tmp/ready`.
pub fn target(p: &Probe) -> String {
    let port = |p: &IntOrString| match p {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    if let Some(h) = &p.http_get {
        format!(
            "HTTP GET {}://{}:{}{}",
            h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase(),
            h.host.as_deref().unwrap_or(""),
            port(&h.port),
            h.path.as_deref().unwrap_or("/")
        )
    } else if let Some(t) = &p.tcp_socket {
        format!("TCP port {}", port(&t.port))
    } else if let Some(e) = &p.exec {
        format!(
            "command `{}`",
            e.command.clone().unwrap_or_default().join(" ")
        )
    } else if let Some(g) = &p.grpc {
        format!("gRPC port {}", g.port)
    } else {
        "an unknown check".into()
    }
}

/// What to do, by the error the probe gets.
fn suggestion(kind: &str, error: &str, probe: &Probe) -> String {
    let e = error.to_ascii_lowercase();
    let period = probe.period_seconds.unwrap_or(10);
    let threshold = probe.failure_threshold.unwrap_or(3);
    let timeout = probe.timeout_seconds.unwrap_or(1);
    let what = if e.contains("connection refused") {
        "Nothing listens on the probed port: check that the probe's port is the one the program listens on (containerPort, 0.0.0.0 rather than 127.0.0.1), and that it has started by then.".to_owned()
    } else if e.contains("statuscode: 404") {
        "The probed path does not exist: fix the probe's path, or serve it.".to_owned()
    } else if e.contains("statuscode: 5") {
        "The health endpoint reports the program unhealthy (5xx): its own checks (a dependency, a database) fail; see the container's log.".to_owned()
    } else if e.contains("timeout") || e.contains("deadline exceeded") {
        format!(
            "The check takes longer than its timeoutSeconds ({timeout} s): make the health endpoint cheap, or raise timeoutSeconds."
        )
    } else if e.contains("no such file") || e.contains("can't open") || e.contains("not found") {
        "The probe's command checks a file or program that is not there: create it when the program is ready (readiness), or fix the command.".to_owned()
    } else {
        "Run the probe's check by hand in the container (kubectl exec) and fix what fails."
            .to_owned()
    };
    match kind {
        "liveness" => format!(
            "{what} Each failure streak of {threshold} × {period} s restarts the container; if it only starts slowly, add a startupProbe or raise initialDelaySeconds instead of letting liveness kill it."
        ),
        "startup" => format!(
            "{what} The container gets {threshold} × {period} s to pass before it is restarted; raise failureThreshold if it needs longer to start."
        ),
        _ => format!("{what} While readiness fails the pod gets no Service traffic."),
    }
}

pub fn check(f: &Facts) -> Vec<Finding> {
    let object = f.object();
    let mut out = Vec::new();
    for c in f.containers() {
        for (kind, prefix, probe) in [
            (
                "startup",
                "Startup probe failed: ",
                c.spec.startup_probe.as_ref(),
            ),
            (
                "liveness",
                "Liveness probe failed: ",
                c.spec.liveness_probe.as_ref(),
            ),
            (
                "readiness",
                "Readiness probe failed: ",
                c.spec.readiness_probe.as_ref(),
            ),
        ] {
            let Some(probe) = probe else { continue };
            let failures: Vec<&Event> = f
                .events_with("Unhealthy")
                .filter(|e| {
                    Facts::event_container(e) == Some(c.name)
                        && e.message.as_deref().is_some_and(|m| m.starts_with(prefix))
                })
                .collect();
            let Some(last) = failures.last() else {
                continue;
            };
            let ready = c.status.is_some_and(|s| s.ready);
            let age = event_time(last)
                .map(|t| f.now.duration_since(t).as_secs())
                .unwrap_or(0);
            if ready && age > OVER_AFTER_SECONDS {
                continue;
            }
            let error = last
                .message
                .as_deref()
                .and_then(|m| m.strip_prefix(prefix))
                .unwrap_or("")
                .trim()
                .to_owned();
            let count: i64 = failures.iter().map(|e| e.count.unwrap_or(1) as i64).sum();
            let kills: Vec<&Event> = f
                .events_with("Killing")
                .filter(|e| {
                    Facts::event_container(e) == Some(c.name)
                        && e.message
                            .as_deref()
                            .is_some_and(|m| m.contains(&format!("failed {kind} probe")))
                })
                .collect();
            let restarts: i64 = kills.iter().map(|e| e.count.unwrap_or(1) as i64).sum();
            let restart_count = c.status.map_or(0, |s| s.restart_count);
            let (reason, rank, effect) = match kind {
                "liveness" => (
                    "LivenessProbeFailed",
                    Rank::Probe,
                    format!(
                        "the container restarted {restart_count} time(s), {restarts} recorded as ordered for this probe"
                    ),
                ),
                "startup" => (
                    "StartupProbeFailed",
                    Rank::Probe,
                    format!(
                        "the container restarted {restart_count} time(s), {restarts} recorded as ordered for this probe"
                    ),
                ),
                _ => (
                    "ReadinessProbeFailed",
                    Rank::NotReady,
                    if ready {
                        "the container is ready again".to_owned()
                    } else {
                        "the container is not ready, so the pod gets no Service traffic".to_owned()
                    },
                ),
            };
            let mut finding = Finding::new(
                reason,
                rank,
                format!(
                    "{kind} probe of container {} of pod {} ({}) fails: \"{}\"; {count} failure(s), {effect}",
                    c.name,
                    f.key(),
                    target(probe),
                    quote(&error, 160)
                ),
                suggestion(kind, &error, probe),
            )
            .weighted(restarts.max(count.min(1)));
            for e in failures.iter().rev().take(3).rev() {
                finding = finding.with_event(e, &object);
            }
            for e in &kills {
                finding = finding.with_event(e, &object);
            }
            out.push(finding);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_probe_target_reads_as_what_it_checks() {
        let p: Probe =
            serde_json::from_value(json!({"httpGet": {"path": "/healthz", "port": 8080}})).unwrap();
        assert_eq!(target(&p), "HTTP GET http://:8080/healthz");
        let p: Probe = serde_json::from_value(json!({"tcpSocket": {"port": "http"}})).unwrap();
        assert_eq!(target(&p), "TCP port http");
        let p: Probe =
            serde_json::from_value(json!({"exec": {"command": ["cat", "/tmp/ready"]}})).unwrap();
        assert_eq!(target(&p), "command `cat /tmp/ready`");
    }

    #[test]
    fn the_suggestion_follows_the_error() {
        let p = Probe::default();
        assert!(
            suggestion(
                "liveness",
                "dial tcp 10.0.0.1:8080: connect: connection refused",
                &p
            )
            .contains("Nothing listens")
        );
        assert!(
            suggestion("liveness", "HTTP probe failed with statuscode: 404", &p)
                .contains("path does not exist")
        );
        assert!(
            suggestion(
                "readiness",
                "cat: can't open '/tmp/ready': No such file or directory",
                &p
            )
            .contains("no Service traffic")
        );
    }
}
