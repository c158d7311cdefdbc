//! Micro-benchmarks of two parsers on the triage path, for before/after comparisons when their
//! implementation changes:
//!
//! - CRI messages: decoding a ListContainers answer of 1,000 containers (kubelet labels and
//!   annotations, as containerd sends them) and a verbose ContainerStatus answer;
//! - Kubernetes quantities: the requests, limits and allocatable values a triage reads.
//!
//! Each measurement is the median of `--runs` batches (default 15) after one warm-up batch.
//!
//! Usage: cargo run --release -p kdiag-collectors --example bench_parsers -- [--runs N]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use kdiag_collectors::cri::proto;
use prost::Message;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median time of one call of `f`, over `runs` batches of `per_batch` calls.
fn time(runs: usize, per_batch: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..per_batch {
        f();
    }
    let batches = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed() / per_batch as u32
        })
        .collect();
    median(batches)
}

fn labels(i: usize) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".into(), format!("web-{i}")),
        ("io.kubernetes.pod.namespace".into(), "shop".into()),
        (
            "io.kubernetes.pod.uid".into(),
            format!("6f1c2a4e-0000-4000-8000-{i:012}"),
        ),
        ("io.kubernetes.container.name".into(), "app".into()),
        ("app".into(), "web".into()),
        ("pod-template-hash".into(), "5d8f7c9b6".into()),
    ])
}

fn annotations() -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.container.hash".into(), "8a3f2c1d".into()),
        ("io.kubernetes.container.restartCount".into(), "0".into()),
        (
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".into(),
            "File".into(),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".into(),
            "30".into(),
        ),
    ])
}

fn list_answer(n: usize) -> Vec<u8> {
    let containers = (0..n)
        .map(|i| proto::Container {
            id: format!("{i:064x}"),
            pod_sandbox_id: format!("{:064x}", i + 1_000_000),
            metadata: Some(proto::ContainerMetadata {
                name: "app".into(),
                attempt: (i % 3) as u32,
            }),
            image: Some(proto::ImageSpec {
                image: format!("sha256:{i:064x}"),
                ..Default::default()
            }),
            image_ref: format!("docker.io/library/nginx@sha256:{i:064x}"),
            state: (i % 3) as i32,
            created_at: 1_700_000_000_000_000_000 + i as i64,
            labels: labels(i),
            annotations: annotations(),
            ..Default::default()
        })
        .collect();
    proto::ListContainersResponse { containers }.encode_to_vec()
}

fn status_answer() -> Vec<u8> {
    let info = format!(
        r#"{{"sandboxID":"{:064x}","pid":4242,"removing":false,"snapshotKey":"{:064x}","snapshotter":"overlayfs","runtimeType":"io.containerd.runc.v2","runtimeOptions":{{"systemd_cgroup":false}},"config":{{"metadata":{{"name":"app"}},"image":{{"image":"nginx"}},"envs":[{{"key":"PATH","value":"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}],"mounts":[{{"container_path":"/var/run/secrets/kubernetes.io/serviceaccount","host_path":"/var/lib/kubelet/pods/x/volumes/kubernetes.io~secret/token","readonly":true}}],"log_path":"app/0.log","linux":{{"resources":{{"cpu_period":100000,"cpu_quota":50000,"cpu_shares":512,"memory_limit_in_bytes":134217728,"oom_score_adj":-997}}}}}}}}"#,
        7, 9
    );
    proto::ContainerStatusResponse {
        status: Some(proto::ContainerStatus {
            id: format!("{:064x}", 7),
            metadata: Some(proto::ContainerMetadata {
                name: "app".into(),
                attempt: 1,
            }),
            state: 1,
            created_at: 1_700_000_000_000_000_000,
            started_at: 1_700_000_001_000_000_000,
            image: Some(proto::ImageSpec {
                image: "docker.io/library/nginx:1.25".into(),
                ..Default::default()
            }),
            image_ref: format!("docker.io/library/nginx@sha256:{:064x}", 7),
            labels: labels(7),
            annotations: annotations(),
            log_path: "/var/log/pods/shop_web-7_x/app/1.log".into(),
            ..Default::default()
        }),
        info: HashMap::from([("info".to_owned(), info)]),
    }
    .encode_to_vec()
}

/// What a triage reads: container requests and limits, init containers, node allocatable.
const QUANTITIES: [&str; 16] = [
    "100m",
    "250m",
    "500m",
    "1",
    "2",
    "64Mi",
    "128Mi",
    "1Gi",
    "1.5Gi",
    "512Ki",
    "10G",
    "110",
    "3800m",
    "16266384Ki",
    "100Gi",
    "1e3",
];

fn parse_quantity_millis(q: &str) -> Option<i64> {
    kdiag_collectors::quantity::Quantity::parse(q).map(|q| q.ceil_scaled(3))
}

fn main() {
    let mut runs = 15;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--runs" {
            runs = it
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--runs needs a number");
        }
    }
    let list = list_answer(1000);
    let status = status_answer();
    let list_decode = time(runs, 20, || {
        let r = proto::ListContainersResponse::decode(black_box(list.as_slice())).unwrap();
        black_box(r);
    });
    let status_decode = time(runs, 20_000, || {
        let r = proto::ContainerStatusResponse::decode(black_box(status.as_slice())).unwrap();
        black_box(r);
    });
    let quantities = time(runs, 20_000, || {
        for q in QUANTITIES {
            black_box(parse_quantity_millis(black_box(q)));
        }
    });
    println!("| what | median |");
    println!("|---|---|");
    println!(
        "| decode ListContainersResponse, 1,000 containers ({} KiB) | {:.1} µs |",
        list.len() / 1024,
        list_decode.as_secs_f64() * 1e6
    );
    println!(
        "| decode verbose ContainerStatusResponse ({} B) | {:.2} µs |",
        status.len(),
        status_decode.as_secs_f64() * 1e6
    );
    println!(
        "| parse {} quantities | {:.0} ns ({:.1} ns each) |",
        QUANTITIES.len(),
        quantities.as_secs_f64() * 1e9,
        quantities.as_secs_f64() * 1e9 / QUANTITIES.len() as f64
    );
}
