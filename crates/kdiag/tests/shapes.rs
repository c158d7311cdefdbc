//! What Kube Diagnoser's plugins and users meet on a real apiserver with the controller and an
//! agent running: a built-in's output decoded by a plugin with Kube Diagnoser's Go field types,
//! and a Go profiler reading a pprof file on the node (docs/compatibility.md).

mod common;

use std::time::Duration;

use common::*;
use kdiag_api::*;
use serde::Deserialize;
use serde_json::json;

const FINISH: Duration = Duration::from_secs(60);

/// Kube Diagnoser's `types.FileStatusList` as a Go plugin declares it, each Go type as the Rust
/// type encoding/json accepts for it (`time.Time`: an RFC 3339 string; `int`: a number).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct UpstreamFileStatusList {
    uid: u32,
    gid: u32,
    inode: u64,
    links: u64,
    mode: String,
    mod_time: jiff::Timestamp,
    disk_usage: i64,
    path: String,
    #[serde(default)]
    file_statuses: Vec<UpstreamFileStatus>,
}

/// Kube Diagnoser's `types.FileStatus`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct UpstreamFileStatus {
    uid: u32,
    gid: u32,
    inode: u64,
    links: u64,
    mode: String,
    mod_time: jiff::Timestamp,
    disk_usage: i64,
    path: String,
}

#[tokio::test]
async fn a_plugin_after_file_status_collector_decodes_its_output_with_kube_diagnosers_types() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("shapes").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "Diagnoser",
        "go-plugin",
        plugin.port,
        "/echo/seen",
        5,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/app.log"), vec![b'x'; 300_000]).unwrap();
    std::fs::write(dir.path().join("small.txt"), b"hello").unwrap();
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "disk",
        json!({
            "nodeName": node,
            "context": {"filePathInformation": [dir.path()]},
            "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "file-status-collector"}],
            "assignedDiagnosers": [{"name": "go-plugin"}],
        }),
    )
    .await;
    let a = wait_final(&client, &ns, "disk", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");

    // What the plugin was sent, decoded as Kube Diagnoser's Go plugin decodes it.
    let sent = plugin.body_of("/echo/seen").expect("the plugin was called");
    let lists: Vec<UpstreamFileStatusList> =
        serde_json::from_value(sent["status"]["context"]["fileStatusInformation"].clone())
            .unwrap_or_else(|e| {
                panic!(
                    "fileStatusInformation does not decode as []types.FileStatusList: {e}\n{}",
                    sent["status"]["context"]
                )
            });
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].path, dir.path().display().to_string());
    assert!(lists[0].mode.starts_with('d'), "{}", lists[0].mode);
    let entries: Vec<(&str, i64)> = lists[0]
        .file_statuses
        .iter()
        .map(|f| (f.path.rsplit('/').next().unwrap(), f.disk_usage))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0].0, "logs", "the largest first: {entries:?}");
    assert!(entries[0].1 >= 300_000, "{entries:?}");
    assert_eq!(entries[1].0, "small.txt");
    agent.stop().await;
}

/// A gzip-compressed pprof file as Go's runtime/pprof writes one starts like this; the agent does
/// not parse it, it copies the bytes.
const PPROF_BYTES: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffkdiag-test-profile";

#[tokio::test]
async fn a_go_profiler_copies_a_pprof_file_only_from_a_directory_the_agent_allows() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("go-file").await;
    let client = cp.client().await;
    let allowed = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("heap.pprof"), PPROF_BYTES).unwrap();
    std::fs::write(elsewhere.path().join("secret.pprof"), PPROF_BYTES).unwrap();
    // A link inside the allowed directory to a file outside it.
    std::os::unix::fs::symlink(
        elsewhere.path().join("secret.pprof"),
        allowed.path().join("link.pprof"),
    )
    .unwrap();
    let node = format!("{ns}-node");
    let allowed_dir = allowed.path().to_owned();
    let agent = TestAgent::start_tweaked(cp, &node, 8, move |c| {
        c.go_profile_dirs = vec![allowed_dir];
    })
    .await;
    let profile = |name: &str, source: String| {
        let client = client.clone();
        let (ns, node, name) = (ns.clone(), node.clone(), name.to_owned());
        async move {
            create_abnormal(
                &client,
                &ns,
                &name,
                json!({
                    "nodeName": node,
                    "profilers": [{"name": "heap", "type": "InformationCollector",
                        "timeoutSeconds": 10, "go": {"source": source}}],
                }),
            )
            .await;
            let a = wait_final(&client, &ns, &name, FINISH).await;
            let st = a.status.unwrap();
            st.profilers
                .first()
                .cloned()
                .unwrap_or_else(|| panic!("{name}: no profiler status in {st:#?}"))
        }
    };

    // A path and a file:// URL under the allowed directory: copied, served from the agent.
    let file = allowed.path().join("heap.pprof").display().to_string();
    for (name, source) in [
        ("by-path", file.clone()),
        ("by-url", format!("file://{file}")),
    ] {
        let p = profile(name, source.clone()).await;
        assert_eq!(p.error, "", "{source}: {p:?}");
        assert!(
            p.endpoint.ends_with(&format!("/profiles/{ns}/{name}/heap")),
            "{p:?}"
        );
        let kept = std::fs::read(
            agent
                .data_root
                .join("profiles")
                .join(&ns)
                .join(name)
                .join("heap"),
        )
        .unwrap();
        assert_eq!(kept, PPROF_BYTES);
    }

    // Outside it, or through a link leading out of it: refused, saying what to configure.
    let outside = profile(
        "outside",
        elsewhere.path().join("secret.pprof").display().to_string(),
    )
    .await;
    assert!(outside.endpoint.is_empty(), "{outside:?}");
    assert!(
        outside.error.contains("--go-profile-dir")
            && outside
                .error
                .contains(&allowed.path().display().to_string()),
        "{}",
        outside.error
    );
    let linked = profile(
        "linked",
        allowed.path().join("link.pprof").display().to_string(),
    )
    .await;
    assert!(
        linked.endpoint.is_empty() && linked.error.contains("symlink"),
        "{linked:?}"
    );
    agent.stop().await;

    // An agent started without --go-profile-dir reads no file at all.
    let plain_node = format!("{ns}-plain");
    let plain = TestAgent::start(cp, &plain_node).await;
    create_abnormal(
        &client,
        &ns,
        "no-dirs",
        json!({
            "nodeName": plain_node,
            "profilers": [{"name": "heap", "type": "InformationCollector", "go": {"source": file}}],
        }),
    )
    .await;
    let a = wait_final(&client, &ns, "no-dirs", FINISH).await;
    let p = &a.status.as_ref().unwrap().profilers[0];
    assert!(
        p.endpoint.is_empty() && p.error.contains("it gives none"),
        "{p:?}"
    );
    plain.stop().await;
}

/// The Go plugin's process, stopped when dropped.
struct GoPlugin(std::process::Child);

impl Drop for GoPlugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds and starts the Go plugin in tests/upstream_go_plugin (standard library only); returns
/// the process and its port.
fn start_go_plugin(dir: &std::path::Path) -> (GoPlugin, u16) {
    let source = repo_root().join("crates/kdiag/tests/upstream_go_plugin/main.go");
    let binary = dir.join("upstream-go-plugin");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(&source)
        .env("GO111MODULE", "off")
        .output()
        .expect("the go toolchain runs");
    assert!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let port_file = dir.join("port");
    let child = GoPlugin(
        std::process::Command::new(&binary)
            .arg("--port-file")
            .arg(&port_file)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return (child, port);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Go plugin never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_go_plugin_built_on_kube_diagnosers_types_decodes_what_kdiags_built_ins_wrote() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("go-plugin").await;
    let client = cp.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (go, port) = tokio::task::block_in_place(|| start_go_plugin(dir.path()));
    register_plugin(&client, &ns, "Diagnoser", "go-types", port, "/", 10).await;
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("logs")).unwrap();
    std::fs::write(files.join("logs/app.log"), vec![b'x'; 100_000]).unwrap();
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "decoded",
        json!({
            "nodeName": node,
            "context": {"filePathInformation": [files]},
            "assignedInformationCollectors": [
                {"namespace": "kube-diagnoser", "name": "process-collector"},
                {"namespace": "kube-diagnoser", "name": "file-status-collector"}],
            "assignedDiagnosers": [{"name": "go-types"}],
        }),
    )
    .await;
    let a = wait_final(&client, &ns, "decoded", FINISH).await;
    drop(go);
    let st = a.status.unwrap();
    assert_eq!(
        st.phase,
        Some(AbnormalPhase::Succeeded),
        "{:#?}",
        st.processors
    );
    let decoded = &st.context.unwrap_or_default()["goPluginDecoded"];
    assert!(decoded["processes"].as_u64().unwrap() > 1, "{decoded}");
    assert!(
        decoded["oldestProcess"]
            .as_str()
            .is_some_and(|t| t.len() >= 20),
        "createTime decoded as Go's time.Time: {decoded}"
    );
    assert_eq!(decoded["files"], json!(1), "{decoded}");
    assert!(decoded["fileStatuses"].as_u64().unwrap() >= 1, "{decoded}");
    agent.stop().await;
}
