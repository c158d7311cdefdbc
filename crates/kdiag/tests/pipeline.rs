//! The pipeline end to end on a real apiserver: the controller and agents run in-process with
//! their own ServiceAccount tokens under config/deploy's RBAC; plugins are real HTTP servers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kdiag_api::*;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

const FINISH: Duration = Duration::from_secs(60);

fn labels(a: &Abnormal) -> Vec<(String, ProcessorResult)> {
    a.status
        .as_ref()
        .unwrap()
        .processors
        .iter()
        .map(|r| (r.processor.clone(), r.result))
        .collect()
}

fn condition(a: &Abnormal, t: AbnormalConditionType) -> AbnormalCondition {
    a.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
        .unwrap_or_else(|| panic!("no {t:?}"))
}

#[tokio::test]
async fn an_abnormal_walks_through_its_stages_running_processors_in_the_order_listed() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("order").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    for (kind, name, path) in [
        ("InformationCollector", "zeta", "/echo/zeta"),
        ("InformationCollector", "alpha", "/echo/alpha"),
        ("InformationCollector", "mid", "/echo/mid"),
        ("Diagnoser", "finder", "/root-cause/DiskFull"),
        ("Recoverer", "fixer", "/echo/fixed"),
    ] {
        register_plugin(&client, &ns, kind, name, plugin.port, path, 5).await;
    }
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "ordered",
        json!({
            "nodeName": node,
            "assignedInformationCollectors": [{"name": "zeta"}, {"name": "alpha"}, {"name": "mid"}],
            "assignedDiagnosers": [{"name": "finder"}],
            "assignedRecoverers": [{"name": "fixer"}],
        }),
    )
    .await;
    let a = wait_final(&client, &ns, "ordered", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    assert_eq!(
        plugin.calls(),
        [
            "/echo/zeta",
            "/echo/alpha",
            "/echo/mid",
            "/root-cause/DiskFull",
            "/echo/fixed"
        ]
    );
    let ns_ = |n: &str| format!("{ns}/{n}");
    assert_eq!(
        labels(&a),
        [
            (ns_("zeta"), ProcessorResult::Succeeded),
            (ns_("alpha"), ProcessorResult::Succeeded),
            (ns_("mid"), ProcessorResult::Succeeded),
            (ns_("finder"), ProcessorResult::Succeeded),
            (ns_("fixer"), ProcessorResult::Succeeded),
        ]
    );
    assert!(
        st.processors
            .iter()
            .all(|r| r.duration_milliseconds.is_some())
    );
    let ctx = st.context.unwrap();
    for key in ["zeta", "alpha", "mid", "fixed"] {
        assert_eq!(ctx[key], json!(format!("{key}-value")));
    }
    assert!(st.identifiable && st.recoverable);
    assert_eq!(st.diagnoser, Some(nn(&ns, "finder")));
    assert_eq!(st.recoverer, Some(nn(&ns, "fixer")));
    assert_eq!(st.root_cause.unwrap().reason, "DiskFull");
    assert!(st.start_time.is_some());
    for t in [
        AbnormalConditionType::Accepted,
        AbnormalConditionType::InformationCollected,
        AbnormalConditionType::Identified,
        AbnormalConditionType::Recovered,
    ] {
        assert_eq!(condition(&a, t).status, ConditionStatus::True, "{t:?}");
    }
    assert_eq!(a.labels().get(labels::NODE_LABEL), Some(&node));
    let reasons = event_reasons_at_least(&client, &ns, "ordered", 4).await;
    assert_eq!(
        reasons,
        ["Accepted", "Collected", "Identified", "Recovered"]
    );
    agent.stop().await;
}

#[tokio::test]
async fn every_plugin_failure_kind_fails_its_processor_with_a_clear_message_and_the_stage_moves_on()
{
    let cp = with_controller().await;
    let ns = cp.create_namespace("failures").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        (
            "refused",
            closed_port,
            "/echo/x",
            "could not connect to http://127.0.0.1",
        ),
        (
            "timeout",
            plugin.port,
            "/sleep/5000/x",
            "did not answer within 2s",
        ),
        (
            "http500",
            plugin.port,
            "/fail/500",
            "answered HTTP 500: plugin exploded on purpose",
        ),
        (
            "notjson",
            plugin.port,
            "/invalid-json",
            "not an Abnormal in JSON",
        ),
        (
            "oversize",
            plugin.port,
            "/oversize",
            "more than 2097152 bytes",
        ),
        ("liar", plugin.port, "/change-phase", "changed status.phase"),
        (
            "slowbody",
            plugin.port,
            "/slow-body",
            "did not answer within 2s",
        ),
        ("good", plugin.port, "/echo/good", "answered 200"),
    ];
    for (name, port, path, _) in &cases {
        register_plugin(&client, &ns, "InformationCollector", name, *port, path, 2).await;
    }
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let collectors: Vec<_> = cases.iter().map(|(n, ..)| json!({"name": n})).collect();
    create_abnormal(
        &client,
        &ns,
        "failing",
        json!({"nodeName": node, "assignedInformationCollectors": collectors}),
    )
    .await;
    let a = wait_final(&client, &ns, "failing", FINISH).await;
    let st = a.status.clone().unwrap();
    for (record, (name, port, _, expected)) in st.processors.iter().zip(&cases) {
        assert_eq!(record.processor, format!("{ns}/{name}"));
        assert!(
            record.message.contains(expected),
            "{name}: {:?} should contain {expected:?}",
            record.message
        );
        assert!(
            record.message.contains(&format!("127.0.0.1:{port}")),
            "{name}: the message names the address: {}",
            record.message
        );
        let want = if *name == "good" {
            ProcessorResult::Succeeded
        } else {
            ProcessorResult::Failed
        };
        assert_eq!(record.result, want, "{name}");
    }
    assert_eq!(st.processors.len(), cases.len());
    assert_eq!(
        condition(&a, AbnormalConditionType::InformationCollected).message,
        "1 of 8 information collectors succeeded"
    );
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
    // What the liar tried to change did not stick.
    assert!(!st.context.unwrap().contains_key("x"));
    agent.stop().await;
}

#[tokio::test]
async fn a_plugin_behind_a_service_with_no_ready_endpoint_yet_is_waited_for_within_its_timeout() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("not-ready-yet").await;
    let client = cp.client().await;
    let ip = host_ipv4();
    let plugin = TestPlugin::start_on(ip).await;
    // A Service whose Endpoints list no ready address yet: its pod is starting. A transient
    // state, so the step retries resolving it instead of failing at once.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
    services
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "echo"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(client.clone(), &ns);
    endpoints
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "echo"}, "subsets": []})).unwrap(),
        )
        .await
        .unwrap();
    let collector = kdiag_api::InformationCollector::new(
        "echo",
        InformationCollectorSpec {
            endpoint: ProcessorEndpoint {
                service: Some(ServiceReference {
                    namespace: ns.clone(),
                    name: "echo".into(),
                    port: 80,
                }),
                path: Some("/echo/ready".into()),
                timeout_seconds: Some(20),
                ..Default::default()
            },
        },
    );
    Api::<kdiag_api::InformationCollector>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &collector)
        .await
        .unwrap();
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "waits",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "echo"}]}),
    )
    .await;
    // Once the step has started trying, the plugin's pod becomes ready.
    wait_until(|| {
        agent.metrics.render().lines().any(|l| {
            l.starts_with("kdiag_agent_errors_total{")
                && l.contains(r#"error="no_ready_endpoint""#)
                && l.contains(r#"category="transient""#)
        })
    })
    .await;
    endpoints
        .replace(
            "echo",
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "echo",
                "resourceVersion": endpoints.get("echo").await.unwrap().resource_version()},
                "subsets": [{"addresses": [{"ip": ip.to_string()}],
                             "ports": [{"name": "http", "port": plugin.port}]}]}))
            .unwrap(),
        )
        .await
        .unwrap();
    let a = wait_final(&client, &ns, "waits", FINISH).await;
    let record = &a.status.as_ref().unwrap().processors[0];
    assert_eq!(record.result, ProcessorResult::Succeeded, "{record:?}");
    assert!(
        record.message.contains("answered 200"),
        "{}",
        record.message
    );
    assert_eq!(plugin.calls(), ["/echo/ready"]);
    agent.stop().await;
}

#[tokio::test]
async fn invalid_abnormals_fail_at_admission_with_a_reason_and_what_to_do() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("invalid").await;
    let client = cp.client().await;
    let cases = [
        (
            "shell-command",
            json!({"nodeName": "n", "commandExecutors": [{"command": ["ps aux"], "type": "InformationCollector"}]}),
            "InvalidCommandExecutor",
            "never run through a shell",
        ),
        (
            "bad-profiler",
            json!({"nodeName": "n", "profilers": [{"name": "p", "type": "Diagnoser"}]}),
            "InvalidProfiler",
            "exactly one of go and java",
        ),
        (
            "missing-pod",
            json!({"podReference": {"name": "no-such-pod"}}),
            "PodNotFound",
            "does not exist",
        ),
    ];
    for (name, spec, ..) in &cases {
        create_abnormal(&client, &ns, name, spec.clone()).await;
    }
    for (name, _, reason, hint) in &cases {
        let a = wait_final(&client, &ns, name, FINISH).await;
        let st = a.status.clone().unwrap();
        assert_eq!(st.phase, Some(AbnormalPhase::Failed), "{name}");
        assert_eq!(st.reason, *reason, "{name}");
        assert!(st.message.contains(hint), "{name}: {}", st.message);
        let accepted = condition(&a, AbnormalConditionType::Accepted);
        assert_eq!(
            (accepted.status, accepted.reason.as_str()),
            (ConditionStatus::False, *reason)
        );
        assert!(
            a.labels().get(labels::NODE_LABEL).is_none(),
            "{name} must not be routed"
        );
        assert_eq!(
            event_reasons_at_least(&client, &ns, name, 1).await,
            ["Rejected"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_pod_reference_is_resolved_to_the_pods_node_and_waited_for_while_missing() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("podref").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "late-pod",
        json!({"podReference": {"namespace": ns, "name": "web"}}),
    )
    .await;
    // The controller says it waits for the pod (for 4s in these tests); the pod appears then.
    wait_for(&client, &ns, "late-pod", FINISH, |a| {
        a.status.as_ref().map(|s| s.reason.as_str()) == Some("WaitingForPod")
    })
    .await;
    // Level 1 runs no controller-manager, so the namespace has no default ServiceAccount yet.
    cp.service_account_token(&ns, "default").await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    Api::namespaced(client.clone(), &ns)
        .create(&Default::default(), &pod)
        .await
        .unwrap();
    let a = wait_final(&client, &ns, "late-pod", FINISH).await;
    assert_eq!(a.spec.node_name, node);
    // No processors named: the controller assigned the pod triage, which finds nothing wrong
    // with a pod no kubelet runs (docs/triage.md).
    let status = a.status.clone().unwrap_or_default();
    assert_eq!(
        (a.phase(), status.reason.as_str()),
        (Some(AbnormalPhase::Failed), "NotIdentified"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("pod-triage-diagnoser"),
        "{}",
        status.message
    );
    assert_eq!(a.labels().get(labels::NODE_LABEL), Some(&node));
    agent.stop().await;
}

#[tokio::test]
async fn an_abnormal_for_node_b_is_never_touched_by_node_as_agent() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("isolation").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "c",
        plugin.port,
        "/echo/c",
        5,
    )
    .await;
    let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
    let agent_a = TestAgent::start(cp, &node_a).await;
    let agent_b = TestAgent::start(cp, &node_b).await;
    create_abnormal(
        &client,
        &ns,
        "for-b",
        json!({"nodeName": node_b, "assignedInformationCollectors": [{"name": "c"}]}),
    )
    .await;
    let a = wait_final(&client, &ns, "for-b", FINISH).await;
    assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded));
    let metrics_a = agent_a.metrics_text().await;
    let metrics_b = agent_b.metrics_text().await;
    assert!(
        !metrics_a.contains("kdiag_steps_total{"),
        "node A's agent ran a step:\n{metrics_a}"
    );
    assert!(metrics_b.contains(&format!("kdiag_steps_total{{processor=\"{ns}/c\",result=\"Succeeded\",stage=\"InformationCollecting\"}} 1")), "{metrics_b}");
    // Node A's agent never even cached it: its watch selects only node A's label.
    assert!(agent_a.metrics.agent.original.node_abnormal_count.get() == 0);
    agent_a.stop().await;
    agent_b.stop().await;
}

#[tokio::test]
async fn two_hundred_abnormals_on_one_node_all_finish_while_one_plugin_sleeps() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("many").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "fast",
        plugin.port,
        "/echo/fast",
        5,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "sleepy",
        plugin.port,
        "/sleep/60000/sleepy",
        120,
    )
    .await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start_with(cp, &node, 8).await;
    create_abnormal(
        &client,
        &ns,
        "sleeper",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "sleepy"}]}),
    )
    .await;
    // The sleeper holds a worker from here on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while plugin.count("/sleep") == 0 {
        assert!(
            Instant::now() < deadline,
            "the sleeping plugin was never called"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let creates = (0..200).map(|i| {
        let (client, ns, node) = (client.clone(), ns.clone(), node.clone());
        async move {
            create_abnormal(
                &client,
                &ns,
                &format!("a-{i:03}"),
                json!({"nodeName": node, "assignedInformationCollectors": [{"name": "fast"}]}),
            )
            .await;
        }
    });
    futures::future::join_all(creates).await;
    for i in 0..200 {
        let a = wait_final(&client, &ns, &format!("a-{i:03}"), Duration::from_secs(120)).await;
        assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded), "a-{i:03}");
    }
    eprintln!(
        "200 Abnormals finished in {:?} while one plugin slept",
        started.elapsed()
    );
    let sleeper = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .get("sleeper")
        .await
        .unwrap();
    assert!(
        !sleeper.phase().is_some_and(AbnormalPhase::is_final),
        "the sleeper should still be running"
    );
    assert_eq!(plugin.count("/echo/fast"), 200);
    agent.kill();
}

#[tokio::test]
async fn a_killed_agent_resumes_mid_stage_and_never_repeats_a_recovery() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("resume").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "first",
        plugin.port,
        "/echo/first",
        10,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "slow",
        plugin.port,
        "/sleep/3000/slow",
        10,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "risky",
        plugin.port,
        "/sleep/3000/recovered",
        10,
    )
    .await;
    let node = format!("{ns}-node");

    // Resume: killed while the second collector runs; the next agent finishes the stage.
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(&client, &ns, "collect", json!({"nodeName": node, "assignedInformationCollectors": [{"name": "first"}, {"name": "slow"}]})).await;
    wait_until(|| plugin.count("/sleep/3000/slow") == 1).await;
    agent.kill();
    let agent = TestAgent::start(cp, &node).await;
    let a = wait_final(&client, &ns, "collect", FINISH).await;
    assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded));
    assert_eq!(
        labels(&a).len(),
        2,
        "each collector recorded once: {:?}",
        labels(&a)
    );

    // Recovery: killed while the recoverer runs; it is never called again.
    create_abnormal(
        &client,
        &ns,
        "recover",
        json!({"nodeName": node, "assignedRecoverers": [{"name": "risky"}]}),
    )
    .await;
    wait_until(|| plugin.count("/sleep/3000/recovered") == 1).await;
    agent.kill();
    let running = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .get("recover")
        .await
        .unwrap();
    assert_eq!(
        labels(&running),
        [(format!("{ns}/risky"), ProcessorResult::Running)],
        "the intent was written before acting"
    );
    let agent = TestAgent::start(cp, &node).await;
    let a = wait_final(&client, &ns, "recover", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "RecoveryInterrupted");
    assert!(st.message.contains("not run again"), "{}", st.message);
    // A canary through the same agent, after the interrupted recovery ended: once it is done,
    // the agent has handled everything it saw before it, the recovery's end included.
    create_abnormal(
        &client,
        &ns,
        "canary",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "first"}]}),
    )
    .await;
    assert_eq!(
        wait_final(&client, &ns, "canary", FINISH).await.phase(),
        Some(AbnormalPhase::Succeeded)
    );
    assert_eq!(
        plugin.count("/sleep/3000/recovered"),
        1,
        "the recoverer must run at most once"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_recovery_that_ends_while_the_apiserver_is_unreachable_is_recorded_once_it_is_back() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("unreachable").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "slow-fix",
        plugin.port,
        "/sleep/3000/fixed",
        10,
    )
    .await;
    let node = format!("{ns}-node");
    // The agent reaches the real apiserver through a link the test can cut.
    let link = kdiag_testenv::Link::to(cp.url()).await.unwrap();
    let token = cp
        .service_account_token(kdiag_api::SYSTEM_NAMESPACE, "kdiag-agent")
        .await;
    let agent_client = cp.client_with_token_at(link.url(), &token).await;
    let agent = TestAgent::start_as(cp, agent_client, &node, 32, "kdiag-policy").await;
    agent.wait_ready().await;
    create_abnormal(
        &client,
        &ns,
        "fix",
        json!({"nodeName": node, "assignedRecoverers": [{"name": "slow-fix"}]}),
    )
    .await;
    // The recoverer is called once its intent is recorded; while it runs, the apiserver
    // becomes unreachable, so the first writes of its result fail.
    wait_until(|| plugin.count("/sleep/3000/fixed") == 1).await;
    link.cut();
    let failed_writes = || {
        agent
            .metrics
            .agent
            .api_errors
            .with_label_values(&["replace_status"])
            .get()
    };
    let before = failed_writes();
    wait_until(|| {
        plugin.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 && failed_writes() > before
    })
    .await;
    link.restore();
    let a = wait_final(&client, &ns, "fix", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(
        st.phase,
        Some(AbnormalPhase::Succeeded),
        "the recovery that succeeded is recorded, not called interrupted: {st:?}"
    );
    assert_eq!(
        labels(&a),
        [(format!("{ns}/slow-fix"), ProcessorResult::Succeeded)],
        "one record for the one recovery"
    );
    assert_eq!(
        plugin.count("/sleep/3000/fixed"),
        1,
        "the recoverer must run at most once"
    );
    // The recovery named its decision, for plugins that deduplicate (docs/plugins.md).
    assert_eq!(
        *plugin.idempotency_keys.lock().unwrap(),
        [(
            "/sleep/3000/fixed".to_owned(),
            format!("{}/Recovering/{ns}/slow-fix", a.uid().unwrap())
        )]
    );
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_stopped_gracefully_finishes_a_running_recovery_first() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("graceful").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "careful",
        plugin.port,
        "/sleep/1500/done",
        10,
    )
    .await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "graceful",
        json!({"nodeName": node, "assignedRecoverers": [{"name": "careful"}]}),
    )
    .await;
    wait_until(|| plugin.count("/sleep/1500/done") == 1).await;
    agent.stop().await;
    let a = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .get("graceful")
        .await
        .unwrap();
    assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded), "{:#?}", a.status);
    assert!(a.status.unwrap().recoverable);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("metrics").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "ok",
        plugin.port,
        "/echo/ok",
        5,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "Diagnoser",
        "nope",
        plugin.port,
        "/fail/500",
        5,
    )
    .await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    for i in 0..3 {
        create_abnormal(
            &client,
            &ns,
            &format!("good-{i}"),
            json!({"nodeName": node, "assignedInformationCollectors": [{"name": "ok"}]}),
        )
        .await;
    }
    create_abnormal(&client, &ns, "bad", json!({"nodeName": node, "assignedInformationCollectors": [{"name": "ok"}], "assignedDiagnosers": [{"name": "nope"}]})).await;
    for name in ["good-0", "good-1", "good-2", "bad"] {
        wait_final(&client, &ns, name, FINISH).await;
    }
    // The agent counts an Abnormal's end right after writing it: wait until all four are counted.
    let mut samples = parse_prometheus(&agent.metrics_text().await);
    let ended = |samples: &[(String, f64)]| {
        samples
            .iter()
            .filter(|(n, _)| n.starts_with("kdiag_abnormal_duration_seconds_count"))
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    for _ in 0..50 {
        if ended(&samples) >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples = parse_prometheus(&agent.metrics_text().await);
    }
    let get = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name}"))
    };
    assert_eq!(
        get(&format!(
            "kdiag_steps_total{{processor=\"{ns}/ok\",result=\"Succeeded\",stage=\"InformationCollecting\"}}"
        )),
        4.0
    );
    assert_eq!(
        get(&format!(
            "kdiag_steps_total{{processor=\"{ns}/nope\",result=\"Failed\",stage=\"Diagnosing\"}}"
        )),
        1.0
    );
    assert_eq!(get("information_manager_sync_success_count"), 4.0);
    assert_eq!(get("diagnoser_chain_sync_skip_count"), 3.0);
    assert_eq!(get("diagnoser_chain_sync_fail_count"), 1.0);
    assert_eq!(get("recoverer_chain_sync_skip_count"), 3.0);
    assert_eq!(
        get("kdiag_abnormal_duration_seconds_count{phase=\"Succeeded\"}"),
        3.0
    );
    assert_eq!(
        get("kdiag_abnormal_duration_seconds_count{phase=\"Failed\"}"),
        1.0
    );
    assert_eq!(
        get(
            "kdiag_stage_duration_seconds_count{result=\"Succeeded\",stage=\"InformationCollecting\"}"
        ),
        4.0
    );
    assert_eq!(get("kdiag_agent_queue_depth"), 0.0);
    // /healthz and /readyz answer too.
    assert_eq!(
        reqwest_get(&format!("http://{}/healthz", agent.addr)).await,
        (200, "ok".into())
    );
    assert_eq!(
        reqwest_get(&format!("http://{}/readyz", agent.addr))
            .await
            .0,
        200
    );
    agent.stop().await;
}

/// Parses Prometheus' text format strictly enough to catch a malformed line.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"HELP") | Some(&"TYPE")),
                "bad comment line: {line}"
            );
            if words[0] == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&words[2]),
                    "bad type: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        out.push((series.to_owned(), v));
    }
    out
}

async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_python_plugin_example_identifies_an_evicted_pod_after_the_builtin_pod_collector() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("python").await;
    let client = cp.client().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let script = repo_root().join("examples/plugins/python/disk_pressure_diagnoser.py");
    let mut python = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--address", "127.0.0.1", "--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example plugin");
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::io::BufReader::new(python.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(line.starts_with("listening"), "{line}");
    register_plugin(&client, &ns, "Diagnoser", "disk-pressure", port, "/", 10).await;

    let node = format!("{ns}-node");
    cp.service_account_token(&ns, "default").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "hog", "namespace": ns},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let agent = TestAgent::start(cp, &node).await;
    let spec = json!({"nodeName": node,
        "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-collector"}],
        "assignedDiagnosers": [{"name": "disk-pressure"}]});

    // Nothing evicted yet: the plugin says what it checked and the diagnosis fails with it.
    create_abnormal(&client, &ns, "healthy", spec.clone()).await;
    let a = wait_final(&client, &ns, "healthy", FINISH).await;
    let st = a.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert!(
        st.message
            .contains("checked 1 pods for disk-pressure evictions; none found"),
        "{}",
        st.message
    );

    // The kubelet's eviction, as it writes it into the pod's status.
    let status = json!({"status": {"phase": "Failed", "reason": "Evicted",
        "message": "Pod ephemeral local storage usage exceeds the total limit of containers 64Mi. "}});
    pods.patch_status(
        "hog",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .unwrap();
    create_abnormal(&client, &ns, "evicted", spec).await;
    let a = wait_final(&client, &ns, "evicted", FINISH).await;
    let st = a.status.unwrap();
    assert_eq!(
        st.phase,
        Some(AbnormalPhase::Succeeded),
        "{:#?}",
        st.processors
    );
    let cause = st.root_cause.unwrap();
    assert_eq!(cause.reason, "EvictedForDiskPressure");
    assert!(
        cause.summary.contains(&format!("pod {ns}/hog")),
        "{}",
        cause.summary
    );
    assert_eq!(cause.evidence[0].context_key, "podInformation");
    agent.stop().await;
}

/// Writes a node policy ConfigMap in kube-diagnoser.
async fn policy_configmap(client: &kube::Client, name: &str, policy: &str) {
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": kdiag_api::SYSTEM_NAMESPACE}, "data": {"policy.yaml": policy}}))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
        client.clone(),
        kdiag_api::SYSTEM_NAMESPACE,
    )
    .create(&Default::default(), &cm)
    .await
    .unwrap();
}

#[tokio::test]
async fn denied_commands_are_recorded_and_not_run_while_allowed_ones_run() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("commands").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    create_abnormal(
        &client,
        &ns,
        "cmds",
        json!({"nodeName": node, "commandExecutors": [
        {"command": ["uptime"], "type": "InformationCollector", "timeoutSeconds": 5},
        {"command": ["kill", "-9", pid], "type": "Diagnoser", "timeoutSeconds": 5}]}),
    )
    .await;
    let a = wait_final(&client, &ns, "cmds", FINISH).await;
    let st = a.status.unwrap();
    assert_eq!(
        st.phase,
        Some(AbnormalPhase::Succeeded),
        "commands never change the phase"
    );
    let uptime = &st.command_executors[0];
    assert!(uptime.stdout.contains("load average"), "{uptime:?}");
    assert!(uptime.error.is_empty());
    let kill = &st.command_executors[1];
    assert!(
        kill.error
            .starts_with("denied by policy rule commands.allow"),
        "{kill:?}"
    );
    let record = st
        .processors
        .iter()
        .find(|r| r.kind == ProcessorKind::CommandExecutor && r.processor.starts_with("kill"))
        .unwrap();
    assert_eq!(record.result, ProcessorResult::Skipped);
    assert!(
        record.message.contains("commands.allow"),
        "{}",
        record.message
    );
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the denied kill must not have run"
    );
    let _ = sleeper.kill();
    agent.stop().await;
}

#[tokio::test]
async fn the_recovery_budget_and_dry_run_of_the_node_policy_are_enforced() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("budget").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "fix",
        plugin.port,
        "/echo/fixed",
        5,
    )
    .await;

    let budget = format!("{ns}-budget");
    policy_configmap(&client, &budget, "budget:\n  recoveriesPerHour: 1\n").await;
    let node = format!("{ns}-a");
    // The agent takes no Abnormal before it has read its policy: no wait needed here.
    let agent = TestAgent::start_with_policy(cp, &node, 4, &budget).await;
    for name in ["first", "second"] {
        create_abnormal(
            &client,
            &ns,
            name,
            json!({"nodeName": node, "assignedRecoverers": [{"name": "fix"}]}),
        )
        .await;
        wait_final(&client, &ns, name, FINISH).await;
    }
    let second = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .get("second")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(second.phase, Some(AbnormalPhase::Failed));
    assert_eq!(second.processors[0].result, ProcessorResult::Skipped);
    assert!(
        second.processors[0]
            .message
            .contains("budget.recoveriesPerHour: 1 recoveries ran on this node in the last hour"),
        "{}",
        second.processors[0].message
    );
    assert_eq!(
        plugin.count("/echo/fixed"),
        1,
        "the budget let one recovery through"
    );
    agent.stop().await;

    let dry = format!("{ns}-dry");
    policy_configmap(&client, &dry, "dryRun: true\n").await;
    let node = format!("{ns}-b");
    let agent = TestAgent::start_with_policy(cp, &node, 4, &dry).await;
    create_abnormal(
        &client,
        &ns,
        "dry",
        json!({"nodeName": node, "assignedRecoverers": [{"name": "fix"}]}),
    )
    .await;
    let st = wait_final(&client, &ns, "dry", FINISH)
        .await
        .status
        .unwrap();
    assert!(
        st.processors[0]
            .message
            .starts_with("dry run: would have called recoverer"),
        "{}",
        st.processors[0].message
    );
    assert_eq!(plugin.count("/echo/fixed"), 1, "dry run calls nothing");
    agent.stop().await;
}

/// A metric's value from the agent's /metrics (None if absent).
async fn agent_metric(agent: &TestAgent, name: &str) -> Option<f64> {
    parse_prometheus(&agent.metrics_text().await)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// Waits (up to a minute) until `f` holds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + FINISH;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_agent_started_while_its_abnormals_wait_runs_them_with_its_registrations_and_policy() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("backlog").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "collect",
        plugin.port,
        "/echo/collected",
        5,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "fix",
        plugin.port,
        "/echo/fixed",
        5,
    )
    .await;
    // More than the defaults allow: a command outside the default list, and a bigger budget. A
    // step run before this policy is read would be denied.
    let policy = format!("{ns}-policy");
    policy_configmap(
        &client,
        &policy,
        "commands:\n  allow:\n  - argv: [echo]\nbudget:\n  recoveriesPerHour: 100\n",
    )
    .await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    let names: Vec<String> = (0..20).map(|i| format!("waiting-{i:02}")).collect();
    for name in &names {
        create_abnormal(
            &client,
            &ns,
            name,
            json!({"nodeName": node,
                "assignedInformationCollectors": [{"name": "collect"}],
                "assignedRecoverers": [{"name": "fix"}],
                "commandExecutors": [{"command": ["echo", "hello"], "type": "InformationCollector", "timeoutSeconds": 5}]}),
        )
        .await;
    }
    // Admitted and routed to a node whose agent is not running yet, as after an agent restart.
    for name in &names {
        wait_for(&client, &ns, name, FINISH, |a| {
            a.labels().contains_key(labels::NODE_LABEL)
        })
        .await;
    }
    let agent = TestAgent::start_with_policy(cp, &node, 32, &policy).await;
    for name in &names {
        let st = wait_final(&client, &ns, name, FINISH).await.status.unwrap();
        for r in &st.processors {
            assert!(
                r.result == ProcessorResult::Succeeded
                    && !r.message.contains("does not exist")
                    && !r.message.contains("denied"),
                "{name}: {} {:?}: {}",
                r.processor,
                r.result,
                r.message
            );
        }
        assert_eq!(st.processors.len(), 3, "{name}: {:#?}", st.processors);
        assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{name}");
        assert_eq!(st.command_executors[0].stdout.trim(), "hello", "{name}");
    }
    assert_eq!(plugin.count("/echo/fixed"), names.len());
    agent.stop().await;
}

#[tokio::test]
async fn without_a_valid_policy_commands_and_recoveries_are_denied_while_collectors_run() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("fail-closed").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "collect",
        plugin.port,
        "/echo/collected",
        5,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "fix",
        plugin.port,
        "/echo/fixed",
        5,
    )
    .await;
    let policy = format!("{ns}-policy");
    // A typo: the policy does not parse.
    policy_configmap(&client, &policy, "comands: {}\n").await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start_with_policy(cp, &node, 4, &policy).await;
    let spec = json!({"nodeName": node,
        "assignedInformationCollectors": [{"name": "collect"}],
        "assignedRecoverers": [{"name": "fix"}],
        "commandExecutors": [{"command": ["uptime"], "type": "InformationCollector", "timeoutSeconds": 5}]});
    let readyz = format!("http://{}/readyz", agent.addr);

    // Invalid: not ready, gauge 0, a Warning Event on the ConfigMap; the collector runs, the
    // command and the recoverer are denied with the reason, and the Abnormal fails.
    let (code, body) = reqwest_get(&readyz).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("a valid node policy"), "{body}");
    assert_eq!(
        agent_metric(&agent, "kdiag_agent_policy_valid").await,
        Some(0.0)
    );
    create_abnormal(&client, &ns, "invalid", spec.clone()).await;
    let st = wait_final(&client, &ns, "invalid", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    let why = format!("denied: the node policy ConfigMap kube-diagnoser/{policy} is invalid");
    let by_kind = |kind: ProcessorKind, stage: Stage| {
        st.processors
            .iter()
            .find(|r| r.kind == kind && r.stage == stage)
            .unwrap_or_else(|| panic!("no {kind:?} record in {stage:?}: {:#?}", st.processors))
            .clone()
    };
    let collector = by_kind(ProcessorKind::Processor, Stage::InformationCollecting);
    assert_eq!(collector.result, ProcessorResult::Succeeded);
    let command = by_kind(ProcessorKind::CommandExecutor, Stage::InformationCollecting);
    assert_eq!(command.result, ProcessorResult::Skipped);
    assert!(command.message.starts_with(&why), "{}", command.message);
    assert!(st.command_executors[0].error.starts_with(&why));
    let recoverer = by_kind(ProcessorKind::Processor, Stage::Recovering);
    assert_eq!(recoverer.result, ProcessorResult::Skipped);
    assert!(recoverer.message.starts_with(&why), "{}", recoverer.message);
    assert_eq!(plugin.count("/echo/collected"), 1);
    assert_eq!(
        plugin.count("/echo/fixed"),
        0,
        "a denied recoverer is not called"
    );
    let events = event_reasons_at_least(&client, SYSTEM_NAMESPACE, &policy, 1).await;
    assert!(events.contains(&"PolicyInvalid".to_owned()), "{events:?}");

    // Fixed: picked up without a restart.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    cms.patch(
        &policy,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"policy.yaml": "{}\n"}})),
    )
    .await
    .unwrap();
    eventually("a valid policy", || async {
        agent_metric(&agent, "kdiag_agent_policy_valid").await == Some(1.0)
    })
    .await;
    assert_eq!(reqwest_get(&readyz).await.0, 200);
    create_abnormal(&client, &ns, "valid", spec.clone()).await;
    let st = wait_final(&client, &ns, "valid", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(
        st.phase,
        Some(AbnormalPhase::Succeeded),
        "{:#?}",
        st.processors
    );
    assert_eq!(plugin.count("/echo/fixed"), 1);

    // Deleted: closed again.
    cms.delete(&policy, &Default::default()).await.unwrap();
    eventually("the policy closed", || async {
        agent_metric(&agent, "kdiag_agent_policy_valid").await == Some(0.0)
    })
    .await;
    create_abnormal(&client, &ns, "deleted", spec).await;
    let st = wait_final(&client, &ns, "deleted", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    let denied = st
        .processors
        .iter()
        .find(|r| r.stage == Stage::Recovering)
        .unwrap();
    assert!(
        denied.message.starts_with(&format!(
            "denied: the node policy ConfigMap kube-diagnoser/{policy} does not exist"
        )),
        "{}",
        denied.message
    );
    assert_eq!(plugin.count("/echo/fixed"), 1);
    let events = event_reasons_at_least(&client, SYSTEM_NAMESPACE, &policy, 3).await;
    assert!(
        events.contains(&"PolicyLoaded".to_owned()) && events.contains(&"PolicyMissing".to_owned()),
        "{events:?}"
    );
    agent.stop().await;
}

/// Sends only a request's head (a body of `length` bytes announced, none sent) and returns the
/// answer: servers judge a body's size by its Content-Length before reading it.
async fn head_only(addr: &str, method: &str, path: &str, length: Option<u64>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let length = length
        .map(|n| format!("content-length: {n}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{length}connection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn every_rejected_request_to_the_controller_and_agent_servers_gets_its_status_and_why() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("http-status").await;
    let agent = TestAgent::start(cp, &format!("{ns}-node")).await;
    let controller = controller_url();
    let controller_addr = controller.trim_start_matches("http://").to_owned();
    let agent_addr = agent.addr.to_string();
    let over = kdiag_runtime::server::MAX_REQUEST_BYTES + 1;
    let limit = kdiag_runtime::server::MAX_REQUEST_BYTES.to_string();

    // Bodies over the limit: 413 with the limit, on every route that takes a body.
    for (addr, path) in [
        (&controller_addr, "/api/v2/alerts"),
        (&controller_addr, "/api/v1/webhook"),
        (&controller_addr, "/probe-status"),
        (&agent_addr, "/processor/node-collector"),
    ] {
        let (code, body) = head_only(addr, "POST", path, Some(over)).await;
        assert_eq!(code, 413, "POST {path}: {body}");
        assert!(
            body.contains(&limit) && body.contains("3 MiB"),
            "POST {path}: {body}"
        );
    }
    // No Content-Length: 411.
    let (code, body) = head_only(&controller_addr, "POST", "/probe-status", None).await;
    assert_eq!(code, 411, "{body}");
    assert!(body.contains("Content-Length"), "{body}");

    // As an admin, so the node API's authentication is passed and what is checked is the rest.
    let bearer = format!("Bearer {}", cp.admin_token());
    let alerts_bearer = format!("Bearer {ALERT_TOKEN}");
    let request = |base: String, method: &'static str, path: &'static str, body: &'static [u8]| {
        let bearer = if path.starts_with("/api/") {
            alerts_bearer.clone()
        } else {
            bearer.clone()
        };
        async move {
            let url: reqwest_lite::Url = format!("{base}{path}").parse().unwrap();
            reqwest_lite::request_with(url, method, body, &[("authorization", &bearer)]).await
        }
    };
    let agent_url = format!("http://{agent_addr}");
    for (base, method, path, body, code, says) in [
        // Wrong methods: 405 with what the path takes.
        (
            &controller,
            "GET",
            "/probe-status",
            &b""[..],
            405,
            "POST a KubeProber",
        ),
        (
            &controller,
            "GET",
            "/api/v2/alerts",
            b"",
            405,
            "POST alerts",
        ),
        (&controller, "POST", "/metrics", b"{}", 405, "use GET"),
        (
            &agent_url,
            "DELETE",
            "/processor/node-collector",
            b"",
            405,
            "use POST",
        ),
        (
            &agent_url,
            "GET",
            "/processor/node-triage-diagnoser",
            b"",
            405,
            "not a collector",
        ),
        // Recoverers are never served over HTTP, not even to an admin.
        (
            &agent_url,
            "GET",
            "/processor/signal-recoverer",
            b"",
            403,
            "never run over HTTP",
        ),
        (
            &agent_url,
            "POST",
            "/processor/signal-recoverer",
            b"{}",
            403,
            "never run over HTTP",
        ),
        (&agent_url, "POST", "/profiles/x/y", b"", 405, "GET"),
        // Bad bodies: 400 with the parse error.
        (&controller, "POST", "/api/v2/alerts", b"not json", 400, ""),
        (&controller, "POST", "/probe-status", b"not json", 400, ""),
        (
            &agent_url,
            "POST",
            "/processor/node-collector",
            b"not json",
            400,
            "not an Abnormal",
        ),
        // Nothing there: 404 with what there is.
        (
            &controller,
            "POST",
            "/api/v3/alerts",
            b"[]",
            404,
            "/api/v2/alerts",
        ),
        (&controller, "GET", "/nothing-here", b"", 404, "not found"),
        (
            &agent_url,
            "POST",
            "/processor/no-such-processor",
            b"{}",
            404,
            "built-ins:",
        ),
        (
            &agent_url,
            "GET",
            "/profiles/no/such/profile",
            b"",
            404,
            "not found",
        ),
    ] {
        let (got, text) = request(base.clone(), method, path, body).await;
        assert_eq!(got, code, "{method} {path}: {text}");
        assert!(text.contains(says), "{method} {path}: {text}");
        assert!(!text.trim().is_empty(), "{method} {path} says nothing");
    }
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_whose_registrations_load_late_takes_no_abnormal_before_they_do() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
    let cp = with_controller().await;
    let ns = cp.create_namespace("late-caches").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "collect",
        plugin.port,
        "/echo/collected",
        5,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "Recoverer",
        "fix",
        plugin.port,
        "/echo/fixed",
        5,
    )
    .await;
    let policy = format!("{ns}-policy");
    policy_configmap(
        &client,
        &policy,
        "commands:\n  allow:\n  - argv: [echo]\nbudget:\n  recoveriesPerHour: 100\n",
    )
    .await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    let names: Vec<String> = (0..10).map(|i| format!("late-{i:02}")).collect();
    for name in &names {
        create_abnormal(
            &client,
            &ns,
            name,
            json!({"nodeName": node,
                "assignedInformationCollectors": [{"name": "collect"}],
                "assignedRecoverers": [{"name": "fix"}],
                "commandExecutors": [{"command": ["echo", "hello"], "type": "InformationCollector", "timeoutSeconds": 5}]}),
        )
        .await;
        wait_for(&client, &ns, name, FINISH, |a| {
            a.labels().contains_key(labels::NODE_LABEL)
        })
        .await;
    }

    // The agent's own identity, at first allowed everything but reading registrations: their
    // lists are refused and retried, as a slow apiserver would make them late.
    let sa = format!("{ns}-agent");
    let token = cp.service_account_token(SYSTEM_NAMESPACE, &sa).await;
    let subject = json!([{"kind": "ServiceAccount", "name": sa, "namespace": SYSTEM_NAMESPACE}]);
    let mut early: ClusterRole = Api::<ClusterRole>::all(client.clone())
        .get("kdiag-agent")
        .await
        .unwrap();
    early.metadata = kube::core::ObjectMeta {
        name: Some(format!("{ns}-early")),
        ..Default::default()
    };
    early.rules.as_mut().unwrap().retain(|r| {
        !r.resources
            .iter()
            .flatten()
            .any(|res| res == "informationcollectors")
    });
    Api::<ClusterRole>::all(client.clone())
        .create(&Default::default(), &early)
        .await
        .unwrap();
    let binding = |name: String, role_kind: &str, role: String| -> serde_json::Value {
        json!({"metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
               "subjects": subject})
    };
    let cluster_bindings = Api::<ClusterRoleBinding>::all(client.clone());
    cluster_bindings
        .create(
            &Default::default(),
            &serde_json::from_value(binding(
                format!("{ns}-early"),
                "ClusterRole",
                format!("{ns}-early"),
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .create(
            &Default::default(),
            &serde_json::from_value(binding(format!("{ns}-agent"), "Role", "kdiag-agent".into()))
                .unwrap(),
        )
        .await
        .unwrap();
    let agent_client = cp.client_with_token(&token).await;
    let agent = TestAgent::start_as(cp, agent_client, &node, 32, &policy).await;
    // Its watches run (the policy, listed alongside the registrations, has loaded), and it takes
    // no Abnormal while the registrations are refused.
    eventually("the agent's policy loaded", || async {
        agent_metric(&agent, "kdiag_agent_policy_valid").await == Some(1.0)
    })
    .await;
    let (code, body) = reqwest_get(&format!("http://{}/readyz", agent.addr)).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the agent's watches"), "{body}");

    // Now it may read them.
    cluster_bindings
        .create(
            &Default::default(),
            &serde_json::from_value(binding(
                format!("{ns}-agent"),
                "ClusterRole",
                "kdiag-agent".into(),
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    for name in &names {
        let st = wait_final(&client, &ns, name, FINISH).await.status.unwrap();
        for r in &st.processors {
            assert!(
                r.result == ProcessorResult::Succeeded,
                "{name}: {} {:?}: {}",
                r.processor,
                r.result,
                r.message
            );
        }
        assert_eq!(st.processors.len(), 3, "{name}: {:#?}", st.processors);
        assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{name}");
    }
    assert_eq!(plugin.count("/echo/fixed"), names.len());
    agent.stop().await;
}

#[tokio::test]
async fn an_abnormal_that_outlives_its_deadline_ends_failed_saying_what_was_not_run() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("deadline").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    // A collector that would take 20 s of its 30 s timeout, and one after it.
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "slow",
        plugin.port,
        "/sleep/20000/slow",
        30,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "after",
        plugin.port,
        "/echo/after",
        5,
    )
    .await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start_tweaked(cp, &node, 32, |c| {
        c.deadline = Some(Duration::from_secs(3));
    })
    .await;
    let started = Instant::now();
    create_abnormal(
        &client,
        &ns,
        "late",
        json!({"nodeName": node,
               "assignedInformationCollectors": [{"name": "slow"}, {"name": "after"}]}),
    )
    .await;
    let a = wait_final(&client, &ns, "late", FINISH).await;
    let took = started.elapsed();
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed), "{st:#?}");
    assert_eq!(st.reason, "DeadlineExceeded", "{st:#?}");
    assert!(
        st.message.contains("deadline of 3s") && st.message.contains("--abnormal-deadline"),
        "{}",
        st.message
    );
    assert!(
        took < Duration::from_secs(15),
        "it ended {took:?} after creation, not at its 3 s deadline"
    );
    let records: Vec<_> = st
        .processors
        .iter()
        .map(|r| (r.processor.as_str(), r.result, r.message.as_str()))
        .collect();
    let (slow, after) = (format!("{ns}/slow"), format!("{ns}/after"));
    assert!(
        matches!(records[..], [(s, ProcessorResult::Failed, m1), (f, ProcessorResult::Skipped, m2)]
            if s == slow && m1.contains("deadline") && f == after && m2.contains("deadline of 3s")),
        "{records:#?}"
    );
    assert_eq!(
        plugin.count("/echo/after"),
        0,
        "nothing runs after the deadline"
    );
    assert!(
        event_reasons_at_least(&client, &ns, "late", 2)
            .await
            .contains(&"DeadlineExceeded".to_string())
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_long_abnormal_gives_its_worker_to_one_that_waits_between_two_steps() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("turns").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    for i in 0..4 {
        register_plugin(
            &client,
            &ns,
            "InformationCollector",
            &format!("long-{i}"),
            plugin.port,
            &format!("/sleep/1500/long-{i}"),
            10,
        )
        .await;
    }
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "quick",
        plugin.port,
        "/echo/quick",
        5,
    )
    .await;
    let node = format!("{ns}-node");
    // One worker slot, and a turn shorter than one of the long Abnormal's steps.
    let agent = TestAgent::start_tweaked(cp, &node, 1, |c| {
        c.turn = Duration::from_millis(500);
    })
    .await;
    let long: Vec<_> = (0..4)
        .map(|i| json!({"name": format!("long-{i}")}))
        .collect();
    create_abnormal(
        &client,
        &ns,
        "long",
        json!({"nodeName": node, "assignedInformationCollectors": long}),
    )
    .await;
    // The long one holds the only slot (its first step has reached the plugin); then the quick
    // one comes and waits for the slot.
    let deadline = Instant::now() + FINISH;
    while plugin.count("/sleep/1500/long-0") == 0 {
        assert!(Instant::now() < deadline, "the long Abnormal never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    create_abnormal(
        &client,
        &ns,
        "quick",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "quick"}]}),
    )
    .await;
    let quick = wait_final(&client, &ns, "quick", FINISH).await;
    assert_eq!(quick.phase(), Some(AbnormalPhase::Succeeded));
    // Without turns the quick one would wait for all four 1.5 s steps of the long one.
    let long_now = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .get("long")
        .await
        .unwrap();
    assert!(
        !long_now.phase().is_some_and(AbnormalPhase::is_final),
        "the quick Abnormal waited until the long one had ended: {:?}",
        plugin.calls()
    );
    let long_done = wait_final(&client, &ns, "long", FINISH).await;
    assert_eq!(long_done.phase(), Some(AbnormalPhase::Succeeded));
    assert_eq!(
        (0..4)
            .map(|i| plugin.count(&format!("/sleep/1500/long-{i}")))
            .sum::<usize>(),
        4,
        "yielding ran no step of the long Abnormal twice: {:?}",
        plugin.calls()
    );
    agent.stop().await;
}

#[tokio::test]
async fn an_abnormal_that_would_outgrow_etcd_drops_what_cannot_be_stored_says_so_and_ends() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("too-large").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "big",
        plugin.port,
        "/big/400000/big",
        10,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "small",
        plugin.port,
        "/echo/small",
        10,
    )
    .await;
    // A spec of 1.2 MB: with the big collector's 400 kB the object would pass etcd's 1.5 MiB.
    let spec = |node: &str| {
        json!({"nodeName": node,
               "assignedInformationCollectors": [{"name": "big"}, {"name": "small"}],
               "context": {"blob": "s".repeat(1_200_000)}})
    };

    // The agent's cap on the whole object (1.25 MiB) drops the big output before any write.
    let capped = format!("{ns}-capped");
    let agent = TestAgent::start(cp, &capped).await;
    create_abnormal(&client, &ns, "capped", spec(&capped)).await;
    let a = wait_final(&client, &ns, "capped", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{}", st.message);
    let big = &st.processors[0];
    assert_eq!(big.result, ProcessorResult::Failed);
    assert!(
        big.message.contains("on the whole object"),
        "{}",
        big.message
    );
    assert_eq!(st.context.unwrap()["small"], json!("small-value"));
    agent.stop().await;

    // Without that cap, etcd refuses the final write: what kdiag added is dropped, with a
    // marker, and the Abnormal still ends (its steps did succeed).
    let uncapped = format!("{ns}-uncapped");
    let agent = TestAgent::start_tweaked(cp, &uncapped, 32, |c| {
        c.limits.max_object_bytes = 8 << 20;
    })
    .await;
    create_abnormal(&client, &ns, "uncapped", spec(&uncapped)).await;
    let a = wait_final(&client, &ns, "uncapped", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    assert!(
        st.message
            .contains("refused to store this Abnormal for its size"),
        "{}",
        st.message
    );
    let dropped = &st.context.unwrap()["droppedForSize"];
    assert!(
        dropped.to_string().contains("status.context.big"),
        "{dropped}"
    );
    let deadline = Instant::now() + FINISH;
    loop {
        let reasons = event_reasons(&client, &ns, "uncapped").await;
        if reasons.iter().any(|r| r == "TooLarge") {
            break;
        }
        assert!(Instant::now() < deadline, "no TooLarge Event: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
}

#[tokio::test]
async fn an_idempotent_recovery_stopped_by_a_killed_agent_runs_again_with_the_same_key_and_succeeds()
 {
    let cp = with_controller().await;
    let ns = cp.create_namespace("idempotent").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    let recoverer = kdiag_api::Recoverer::new(
        "safe",
        kdiag_api::RecovererSpec {
            endpoint: ProcessorEndpoint {
                external_ip: Some("127.0.0.1".into()),
                external_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                        plugin.port.into(),
                    ),
                ),
                path: Some("/sleep/3000/recovered".into()),
                timeout_seconds: Some(10),
                ..Default::default()
            },
            idempotent: true,
        },
    );
    Api::namespaced(client.clone(), &ns)
        .create(&kube::api::PostParams::default(), &recoverer)
        .await
        .unwrap();
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "recover",
        json!({"nodeName": node, "assignedRecoverers": [{"name": "safe"}]}),
    )
    .await;
    wait_until(|| plugin.count("/sleep/3000/recovered") == 1).await;
    agent.kill();
    let agent = TestAgent::start(cp, &node).await;
    let a = wait_final(&client, &ns, "recover", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    assert_eq!(
        labels(&a),
        [(format!("{ns}/safe"), ProcessorResult::Succeeded)],
        "one record for the recovery"
    );
    assert_eq!(
        plugin.count("/sleep/3000/recovered"),
        2,
        "called again once"
    );
    let keys: Vec<String> = plugin
        .idempotency_keys
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "the same Idempotency-Key both times");
    agent.stop().await;
}

#[tokio::test]
async fn a_spec_changed_while_the_agent_works_ends_the_abnormal_plan_changed_and_runs_nothing_new()
{
    let cp = with_controller().await;
    let ns = cp.create_namespace("plan-changed").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    let key = format!("{ns}-held");
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "held",
        plugin.port,
        &format!("/hold/{key}"),
        60,
    )
    .await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "edited",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "held"}]}),
    )
    .await;
    // The agent works on the admitted copy while the spec gains a command nobody admitted (no
    // webhook runs here to refuse the edit).
    let deadline = Instant::now() + FINISH;
    while plugin.count("/hold/") == 0 {
        assert!(Instant::now() < deadline, "the collector was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Api::<Abnormal>::namespaced(client.clone(), &ns)
        .patch(
            "edited",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"commandExecutors": [
                {"command": ["uptime"], "type": "Diagnoser", "timeoutSeconds": 5}]}})),
        )
        .await
        .unwrap();
    common::plugin::release(&key);
    let a = wait_final(&client, &ns, "edited", FINISH).await;
    let st = a.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed), "{st:#?}");
    assert_eq!(st.reason, "PlanChanged", "{}", st.message);
    assert!(
        st.command_executors.is_empty(),
        "the command added after admission never ran: {:?}",
        st.command_executors
    );
    agent.stop().await;
}
