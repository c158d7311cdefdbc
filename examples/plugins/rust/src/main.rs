//! A kdiag (and Kube Diagnoser) diagnoser plugin in Rust, with no HTTP framework: the standard
//! library's TCP listener and serde_json.
//!
//! The protocol: kdiag POSTs the whole Abnormal as JSON; the plugin answers 200 with the whole
//! Abnormal back. It may change `status.context`, `status.commandExecutors`, `status.profilers`
//! and `status.rootCause`; anything else must come back unchanged. Any other answer fails this
//! step, and kdiag moves on to the next processor.
//!
//! This diagnoser reads the `podInformation` a pod-collector wrote and identifies containers the
//! kernel killed for exceeding their memory limit (`OOMKilled`). Finding nothing is not success:
//! it answers 422 with what it checked, so the step fails with that message and the next
//! diagnoser gets its turn.
//!
//! ```text
//! cargo run --release -- --port 8098 &
//! kubectl apply -f registration.yaml
//! kubectl diag run --pod shop/web --collector pod-collector --diagnoser oom-diagnoser --wait
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

/// kdiag answers are at most 2 MiB; an Abnormal sent to us is bounded the same way.
const MAX_BODY: usize = 4 * 1024 * 1024;

fn main() {
    let mut address = "0.0.0.0".to_owned();
    let mut port = "8098".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--address", Some(v)) => address = v,
            ("--port", Some(v)) => port = v,
            _ => {
                eprintln!("usage: oom-diagnoser [--address 0.0.0.0] [--port 8098]");
                std::process::exit(2);
            }
        }
    }
    let listener = match TcpListener::bind(format!("{address}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {address}:{port}: {e}");
            std::process::exit(1);
        }
    };
    // The test (and a person) waits for this line before registering the plugin.
    println!(
        "listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("request failed: {e}");
            }
        });
    }
}

/// One request, one answer, then the connection closes.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let (code, body) = if !request_line.starts_with("POST ") {
        (405, json!({"error": "POST an Abnormal"}))
    } else if length > MAX_BODY {
        (
            413,
            json!({"error": format!("{length} bytes is more than an Abnormal can be")}),
        )
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        match serde_json::from_slice::<Value>(&body) {
            Err(e) => (400, json!({"error": format!("not JSON: {e}")})),
            Ok(abnormal) => match answer(abnormal) {
                Ok(a) => (200, a),
                Err(checked) => (422, json!({"error": checked})),
            },
        }
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Unprocessable Entity",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

/// The Abnormal with its root cause, or what was checked when there is none.
fn answer(mut abnormal: Value) -> Result<Value, String> {
    let cause = diagnose(&abnormal)?;
    let summary = cause["summary"].clone();
    let status = abnormal
        .as_object_mut()
        .ok_or("the body is not an object")?
        .entry("status")
        .or_insert_with(|| json!({}));
    let status = status.as_object_mut().ok_or("status is not an object")?;
    status.insert("rootCause".into(), cause);
    let context = status.entry("context").or_insert_with(|| json!({}));
    if let Some(c) = context.as_object_mut() {
        c.insert("oomKillDiagnosis".into(), summary);
    }
    Ok(abnormal)
}

/// Looks for an OOM kill among the collected pods: the pod the Abnormal is about when it names
/// one, else any pod on the node.
fn diagnose(abnormal: &Value) -> Result<Value, String> {
    // spec.context overrides status.context, as in kdiag.
    let pods = abnormal["spec"]["context"]["podInformation"]
        .as_array()
        .or_else(|| abnormal["status"]["context"]["podInformation"].as_array())
        .ok_or("no podInformation in the context: assign pod-collector before this diagnoser")?;
    let wanted = &abnormal["spec"]["podReference"];
    let wanted_ns = wanted["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or(abnormal["metadata"]["namespace"].as_str());
    let wanted_name = wanted["name"].as_str();
    let mut checked = 0;
    for pod in pods {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        if let Some(w) = wanted_name
            && (w != name || wanted_ns.is_some_and(|n| n != ns))
        {
            continue;
        }
        checked += 1;
        for c in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let container = c["name"].as_str().unwrap_or("?");
            let killed = [&c["state"]["terminated"], &c["lastState"]["terminated"]]
                .into_iter()
                .find(|t| t["reason"].as_str() == Some("OOMKilled"));
            let Some(t) = killed else { continue };
            let limit = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"].as_str() == Some(container))
                .and_then(|s| s["resources"]["limits"]["memory"].as_str())
                .map(|l| format!(" at its {l} memory limit"))
                .unwrap_or_default();
            let restarts = c["restartCount"].as_i64().unwrap_or(0);
            let mut evidence = json!({
                "kind": "PodStatus",
                "object": format!("Pod/{ns}/{name}"),
                "message": format!(
                    "container {container} terminated with reason OOMKilled, exit code {}; restarted {restarts} times",
                    t["exitCode"].as_i64().unwrap_or(137)
                ),
                "contextKey": "podInformation",
            });
            if let Some(at) = t["finishedAt"].as_str() {
                evidence["timestamp"] = json!(at);
            }
            return Ok(json!({
                "summary": format!("container {container} of pod {ns}/{name} was OOM-killed{limit}"),
                "reason": "OOMKilled",
                "suggestion": format!(
                    "raise the memory limit of container {container}, or find what grows in it (a heap profile: spec.profilers)"
                ),
                "evidence": [evidence],
            }));
        }
    }
    let ns = wanted_ns.unwrap_or("");
    Err(match wanted_name {
        Some(n) if checked == 0 => format!(
            "pod {ns}/{n} is not in podInformation ({} pods collected)",
            pods.len()
        ),
        Some(n) => format!("pod {ns}/{n}: no container was OOM-killed"),
        None => format!("checked {checked} pods for OOM-killed containers; none found"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abnormal(pods: Value) -> Value {
        json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "shop"},
            "spec": {"nodeName": "n1", "podReference": {"name": "web"}},
            "status": {"phase": "Diagnosing", "context": {"podInformation": pods}}
        })
    }

    fn pod(name: &str, reason: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "64Mi"}}}]},
            "status": {"containerStatuses": [{"name": "app", "restartCount": 3,
                "lastState": {"terminated": {"reason": reason, "exitCode": 137, "finishedAt": "2026-11-22T10:00:00Z"}}}]}
        })
    }

    #[test]
    fn an_oom_killed_container_of_the_pod_named_is_the_root_cause() {
        let a = answer(abnormal(json!([
            pod("other", "OOMKilled"),
            pod("web", "OOMKilled")
        ])))
        .unwrap();
        let rc = &a["status"]["rootCause"];
        assert_eq!(
            rc["summary"],
            "container app of pod shop/web was OOM-killed at its 64Mi memory limit"
        );
        assert_eq!(rc["reason"], "OOMKilled");
        assert_eq!(rc["evidence"][0]["object"], "Pod/shop/web");
        assert_eq!(rc["evidence"][0]["timestamp"], "2026-11-22T10:00:00Z");
        // Everything else comes back unchanged.
        assert_eq!(a["status"]["phase"], "Diagnosing");
        assert_eq!(a["spec"]["nodeName"], "n1");
    }

    #[test]
    fn finding_nothing_says_what_was_checked() {
        let e = answer(abnormal(json!([pod("web", "Error")]))).unwrap_err();
        assert_eq!(e, "pod shop/web: no container was OOM-killed");
        let e = answer(abnormal(json!([]))).unwrap_err();
        assert_eq!(
            e,
            "pod shop/web is not in podInformation (0 pods collected)"
        );
        let e = answer(json!({"spec": {}, "status": {}})).unwrap_err();
        assert!(e.contains("assign pod-collector"), "{e}");
    }
}
