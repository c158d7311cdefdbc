//! Java profilers against real JVMs (the JDK's `java` and `jcmd`, installed by `make setup`): a
//! jcmd report of a JVM named by pid, the raw HPROF file for MemoryAnalyzer, the errors when
//! there is no target, and a JVM in its own mount and pid namespace running as another user, as
//! a container's would.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kdiag_api::*;
use serde_json::json;

const FINISH: Duration = Duration::from_secs(90);

/// A Java program with one thread of a recognisable name and some objects of its own class.
const SPIN: &str = r#"
public class Spin {
    static final java.util.List<Object> KEEP = new java.util.ArrayList<>();
    static class KdiagMarkerObject { final byte[] b = new byte[64]; }
    public static void main(String[] a) throws Exception {
        for (int i = 0; i < 1000; i++) KEEP.add(new KdiagMarkerObject());
        Thread t = new Thread(() -> {
            while (true) {
                try { Thread.sleep(1000); } catch (InterruptedException e) { return; }
            }
        }, a[0]);
        t.start();
        System.out.println("ready");
        System.out.flush();
        t.join();
    }
}
"#;

/// A JVM started for a test, killed when dropped.
struct Jvm {
    child: Child,
    /// The JVM's host pid (the child itself, or a process below it).
    pid: i32,
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn spin_source(dir: &Path) -> PathBuf {
    let src = dir.join("Spin.java");
    std::fs::write(&src, SPIN).unwrap();
    src
}

/// Waits for the program's "ready" line.
fn wait_ready(child: &mut Child) {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let ready = lines.any(|l| l.is_ok_and(|l| l.trim() == "ready"));
        let _ = tx.send(ready);
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(60)).unwrap_or(false),
        "the JVM did not start"
    );
}

/// `java Spin.java <thread>` on the host, as this test's user.
fn start_jvm(dir: &Path, thread: &str) -> Jvm {
    assert!(
        have("java") && have("jcmd"),
        "java and jcmd are needed (make setup installs openjdk-17-jdk-headless)"
    );
    let src = spin_source(dir);
    // jcmd leaves an .attach_pid<pid> file in the JVM's working directory: keep it out of the
    // repository.
    let mut child = Command::new("java")
        .current_dir(dir)
        .args(["-Xmx64m", "-XX:+UseSerialGC"])
        .arg(&src)
        .arg(thread)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut child);
    let pid = child.id() as i32;
    Jvm { child, pid }
}

fn pid_of_thread_owner(marker: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "java")
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
}

fn jcmd(pid: i32, args: &[&str]) -> String {
    let out = Command::new("jcmd")
        .arg(pid.to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "jcmd {pid} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one profiler in an Abnormal for `node` and returns its status and step message.
async fn profile(
    client: &kube::Client,
    ns: &str,
    name: &str,
    node: &str,
    java: serde_json::Value,
) -> (ProfilerStatus, String, ProcessorResult) {
    profile_within(client, ns, name, node, java, 60).await
}

async fn profile_within(
    client: &kube::Client,
    ns: &str,
    name: &str,
    node: &str,
    java: serde_json::Value,
    timeout_seconds: i32,
) -> (ProfilerStatus, String, ProcessorResult) {
    create_abnormal(
        client,
        ns,
        name,
        json!({
            "nodeName": node,
            "profilers": [{
                "name": "jvm", "type": "InformationCollector", "java": java, "timeoutSeconds": timeout_seconds
            }]
        }),
    )
    .await;
    let a = wait_final(client, ns, name, FINISH).await;
    let st = a.status.unwrap();
    let record = st
        .processors
        .iter()
        .find(|r| r.kind == ProcessorKind::Profiler)
        .unwrap_or_else(|| panic!("no profiler step in {:?}", st.processors))
        .clone();
    assert_eq!(st.profilers.len(), 1, "{:?}", st.profilers);
    (st.profilers[0].clone(), record.message, record.result)
}

#[tokio::test]
async fn a_jcmd_report_of_a_jvm_named_by_pid_is_served_by_the_agent() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("java-report").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let dir = tempfile::tempdir().unwrap();
    let jvm = start_jvm(dir.path(), "kdiag-report-thread");

    let (status, message, result) = profile(
        &client,
        &ns,
        "report",
        &node,
        json!({"type": "Arthas", "pid": jvm.pid}),
    )
    .await;
    assert_eq!(status.error, "");
    assert_eq!(result, ProcessorResult::Succeeded, "{message}");
    assert_eq!(
        status.endpoint,
        format!("http://{}/profiles/{ns}/report/jvm", agent.addr)
    );
    assert!(message.contains("jcmd report"), "{message}");
    assert!(message.contains("Thread.print"), "{message}");
    assert!(message.contains(&format!("pid {}", jvm.pid)), "{message}");
    let (code, report) = get_with_token(&status.endpoint, cp.admin_token()).await;
    assert_eq!(code, 200);
    assert!(report.contains("Arthas is not part of kdiag"), "{report}");
    assert!(report.contains(&format!("### jcmd {} VM.version", jvm.pid)));
    assert!(report.contains("OpenJDK"), "the VM version: {report}");
    assert!(
        report.contains("\"kdiag-report-thread\""),
        "the thread dump has the program's thread: {report}"
    );
    assert!(
        report.contains("#instances") && report.contains("Spin$KdiagMarkerObject"),
        "a class histogram with the program's class"
    );
    assert!(!report.contains("[kdiag:"), "nothing failed or was cut");
    agent.stop().await;
}

#[tokio::test]
async fn a_java_profiler_without_a_target_fails_saying_what_was_searched() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("java-missing").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;

    // No pid and no pod: rejected at admission, before any agent looks.
    create_abnormal(
        &client,
        &ns,
        "nothing",
        json!({"nodeName": node, "profilers": [{"name": "jvm", "type": "InformationCollector", "java": {"type": "Arthas"}}]}),
    )
    .await;
    let st = wait_final(&client, &ns, "nothing", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(st.reason, "InvalidProfiler");
    assert!(
        st.message.contains("names no JVM") && st.message.contains("java.pid"),
        "{}",
        st.message
    );

    // A pid that does not exist (above any pid_max).
    let (status, _, _) = profile(
        &client,
        &ns,
        "gone",
        &node,
        json!({"type": "Arthas", "pid": 1_999_999_999}),
    )
    .await;
    assert_eq!(
        status.error, "process 1999999999 does not exist on this node",
        "{status:?}"
    );

    // A process that is not a JVM.
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    let pid = sleeper.id();
    let (status, _, _) = profile(
        &client,
        &ns,
        "not-java",
        &node,
        json!({"type": "Arthas", "pid": pid}),
    )
    .await;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        status.error.contains("no Java process found")
            && status.error.contains(&format!(
                "process {pid} (java.pid), which is not a JVM (sleep 300)"
            )),
        "{}",
        status.error
    );

    // MemoryAnalyzer: a file that is not there, and one that is not an HPROF file.
    let (status, _, _) = profile(
        &client,
        &ns,
        "no-dump",
        &node,
        json!({"type": "MemoryAnalyzer", "hprofFilePath": "/nonexistent/kdiag/heap.hprof"}),
    )
    .await;
    assert_eq!(
        status.error,
        "no HPROF file: looked for /nonexistent/kdiag/heap.hprof on the node"
    );
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.hprof");
    std::fs::write(&fake, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let (status, _, _) = profile(
        &client,
        &ns,
        "not-hprof",
        &node,
        json!({"type": "MemoryAnalyzer", "hprofFilePath": fake}),
    )
    .await;
    assert!(
        status.error.contains("is not an HPROF file"),
        "{}",
        status.error
    );
    agent.stop().await;
}

/// A JVM that does not answer (stopped, as a hung one would be): jcmd gives up within the
/// profiler's timeout and the profiler fails saying what to check.
#[tokio::test]
async fn a_jvm_that_does_not_answer_fails_the_profiler_within_its_timeout() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("java-stopped").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let dir = tempfile::tempdir().unwrap();
    let jvm = start_jvm(dir.path(), "kdiag-stopped-thread");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jvm.pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (status, message, result) = profile_within(
        &client,
        &ns,
        "stopped",
        &node,
        json!({"type": "Arthas", "pid": jvm.pid}),
        6,
    )
    .await;
    assert_eq!(result, ProcessorResult::Failed, "{message}");
    assert!(
        status.error.starts_with("jcmd could not attach to any JVM")
            || status
                .error
                .contains("did not finish within its timeout of 6s"),
        "{}",
        status.error
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let report = agent.data_root.join(format!("profiles/{ns}/stopped/jvm"));
    assert!(!report.exists(), "no report for a JVM that did not answer");
    // No jcmd left behind.
    let jcmds = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "jcmd")
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.split(|b| *b == 0)
                        .any(|a| a == jvm.pid.to_string().as_bytes())
                })
        })
        .count();
    assert_eq!(jcmds, 0);
    agent.stop().await;
}

#[tokio::test]
async fn memory_analyzer_keeps_the_raw_hprof_file_of_a_jvm() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("java-hprof").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let dir = tempfile::tempdir().unwrap();
    let jvm = start_jvm(dir.path(), "kdiag-hprof-thread");
    let dump = dir.path().join("heap.hprof");
    jcmd(jvm.pid, &["GC.heap_dump", dump.to_str().unwrap()]);
    let original = std::fs::read(&dump).unwrap();

    let (status, message, result) = profile(
        &client,
        &ns,
        "dump",
        &node,
        json!({"type": "MemoryAnalyzer", "hprofFilePath": dump, "pid": jvm.pid}),
    )
    .await;
    assert_eq!(status.error, "");
    assert_eq!(result, ProcessorResult::Succeeded);
    assert!(message.contains("raw HPROF heap dump"), "{message}");
    assert!(message.contains("Eclipse Memory Analyzer"), "{message}");
    let served = reqwest::Client::new()
        .get(&status.endpoint)
        .bearer_auth(cp.admin_token())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(served.starts_with(b"JAVA PROFILE 1.0."));
    assert_eq!(served.len(), original.len());
    assert!(served[..] == original[..], "the copy is the file");
    agent.stop().await;
}

/// As a container's JVM: its own mount namespace with a private /tmp (where its attach socket
/// is), its own pid namespace (it is pid 1 there), another user. The agent's jcmd reaches it
/// through /proc/<pid>/root, and an HPROF file only in that /tmp is read through it too.
#[tokio::test]
async fn a_jvm_in_its_own_namespaces_as_another_user_is_profiled_through_proc_root() {
    if !nix::unistd::geteuid().is_root() || !have("unshare") || !have("setpriv") {
        eprintln!("skipped: needs root, unshare and setpriv (util-linux)");
        return;
    }
    let cp = with_controller().await;
    let ns = cp.create_namespace("java-ns").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let dir = tempfile::tempdir().unwrap();
    let src = spin_source(dir.path());
    let marker = format!("kdiag-ns-{}", std::process::id());
    // The source is read before the private /tmp hides the test's files.
    let script = format!(
        "src=$(cat {src}) && mount -t tmpfs tmpfs /tmp && mkdir /tmp/app && \
         printf '%s' \"$src\" > /tmp/app/Spin.java && chown -R 65534:65534 /tmp/app && cd /tmp/app && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         java -Xmx64m -XX:+UseSerialGC /tmp/app/Spin.java {marker}",
        src = src.display()
    );
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut child);
    let pid = pid_of_thread_owner(&marker).expect("the JVM's host pid");
    let jvm = Jvm { child, pid };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("\nUid:\t65534"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "{status}"
    );

    let (status, message, _) = profile(
        &client,
        &ns,
        "container-like",
        &node,
        json!({"type": "Arthas", "pid": jvm.pid}),
    )
    .await;
    assert_eq!(status.error, "", "{message}");
    let (_, report) = get_with_token(&status.endpoint, cp.admin_token()).await;
    assert!(report.contains(&format!("\"{marker}\"")), "{report}");
    assert!(report.contains("Spin$KdiagMarkerObject"));
    assert!(
        report.contains("# jcmd ran as uid 65534 gid 65534 (the JVM's user)"),
        "{report}"
    );

    // A heap dump the JVM writes to its own /tmp: not on the host, read through /proc/<pid>/root.
    jcmd(jvm.pid, &["GC.heap_dump", "/tmp/app/heap.hprof"]);
    assert!(!Path::new("/tmp/app/heap.hprof").exists());
    let (status, message, _) = profile(
        &client,
        &ns,
        "container-dump",
        &node,
        json!({"type": "MemoryAnalyzer", "hprofFilePath": "/tmp/app/heap.hprof", "pid": jvm.pid}),
    )
    .await;
    assert_eq!(status.error, "");
    assert!(
        message.contains(&format!(
            "/tmp/app/heap.hprof in the filesystem of pid {pid}"
        )),
        "{message}"
    );
    let served = reqwest::Client::new()
        .get(&status.endpoint)
        .bearer_auth(cp.admin_token())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(served.starts_with(b"JAVA PROFILE 1.0."));
    drop(jvm);
    agent.stop().await;
}
