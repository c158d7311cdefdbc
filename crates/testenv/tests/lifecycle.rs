//! The test environment itself: it really serves the API, and it leaves nothing behind however
//! the test binary ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kdiag_testenv::{ControlPlane, TestEnvError, control_plane};
use kube::api::Api;

/// Held by tests that start a control plane of their own: a start removes stale run directories,
/// which must not happen behind the back of the test that checks exactly that.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    kdiag_procstat::alive(Path::new("/proc"), pid)
}

fn wait_until_gone(pids: &[i32], dir: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if pids.iter().all(|p| !alive(*p)) && dir.is_none_or(|d| !d.exists()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    panic!(
        "left behind: processes {left:?}, directory {:?}",
        dir.filter(|d| d.exists())
    );
}

#[tokio::test]
async fn a_control_plane_serves_the_api_with_rbac_and_stops_completely_when_dropped() {
    let cp = {
        let _serial = SERIAL.lock().await;
        ControlPlane::start().await.expect("start a control plane")
    };
    let pids = cp.pids();
    let dir = cp.run_dir().to_owned();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(pids.iter().all(|p| alive(*p)));

    // Admin through the kubeconfig, as kubectl sees it.
    let out = cp
        .kubectl()
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));

    // A ServiceAccount token is authenticated but, with RBAC and no binding, may do nothing.
    let ns = cp.create_namespace("rbac").await;
    let token = cp.service_account_token(&ns, "nobody").await;
    let err = Api::<Namespace>::all(cp.client_with_token(&token).await)
        .list(&Default::default())
        .await
        .expect_err("RBAC must deny an unbound ServiceAccount");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );

    drop(cp);
    wait_until_gone(&pids, Some(&dir));
}

#[tokio::test]
async fn the_shared_control_plane_is_one_instance_per_test_binary() {
    let a = {
        let _serial = SERIAL.lock().await;
        control_plane().await
    };
    let b = control_plane().await;
    assert!(std::ptr::eq(a, b));
    let namespaces = Api::<Namespace>::all(a.client().await)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        namespaces
            .items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("kube-system"))
    );
}

#[tokio::test]
async fn a_failing_apiserver_start_reports_its_log() {
    let _serial = SERIAL.lock().await;
    let err = ControlPlane::start_with(vec!["--no-such-flag=1".into()])
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, TestEnvError::ExitedEarly { .. }), "{err}");
    assert!(err.to_string().contains("no-such-flag"), "{err}");
}

/// Runs the helper below in a child test process and returns what it printed.
fn run_helper(mode: &str) -> (std::process::Output, Vec<i32>, PathBuf) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_shared_control_plane_then_end",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KDIAG_TESTENV_HELPER", mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout
        .lines()
        // The harness prints "test <name> ... " on the same line before the helper's output.
        .find_map(|l| l.split_once("HELPER ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no pids: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned();
    let mut parts = line.split_whitespace();
    let dir = PathBuf::from(parts.next().unwrap());
    let pids = parts.map(|p| p.parse().unwrap()).collect();
    (out, pids, dir)
}

#[test]
fn a_test_that_panics_leaves_no_process_or_directory_behind() {
    let (out, pids, dir) = run_helper("panic");
    assert!(!out.status.success(), "the helper test must have failed");
    wait_until_gone(&pids, Some(&dir));
}

#[test]
fn a_killed_test_binary_leaves_no_process_and_its_directory_goes_at_the_next_start() {
    let _serial = SERIAL.blocking_lock();
    let (out, pids, dir) = run_helper("abort");
    assert!(!out.status.success());
    // SIGKILLed processes run no cleanup: the kernel's parent-death signal stops the children…
    wait_until_gone(&pids, None);
    assert!(
        dir.exists(),
        "an aborted run cannot remove its own directory"
    );
    // …and the next start removes the directory.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = rt.block_on(ControlPlane::start()).unwrap();
    assert!(
        !dir.exists(),
        "the next start must remove {}",
        dir.display()
    );
    drop(cp);
}

/// Not a test: the child process of the two tests above. It starts the shared control plane,
/// prints its pids and directory, then ends the way KDIAG_TESTENV_HELPER says.
#[tokio::test]
#[ignore = "helper run by other tests in a child process"]
async fn helper_start_shared_control_plane_then_end() {
    let Ok(mode) = std::env::var("KDIAG_TESTENV_HELPER") else {
        return;
    };
    let cp = control_plane().await;
    let pids: Vec<String> = cp.pids().iter().map(i32::to_string).collect();
    println!("HELPER {} {}", cp.run_dir().display(), pids.join(" "));
    match mode.as_str() {
        "abort" => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        _ => panic!("the helper panics on purpose"),
    }
}
