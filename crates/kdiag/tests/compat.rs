//! Kube Diagnoser's and KubeProber's objects and plugins, read as the originals read them, on a
//! real apiserver with the controller and an agent running (docs/compatibility.md).

mod common;

use std::time::Duration;

use common::*;
use kdiag_api::*;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const FINISH: Duration = Duration::from_secs(60);

fn record<'a>(a: &'a Abnormal, processor: &str, stage: Stage) -> &'a ProcessorRecord {
    a.status
        .as_ref()
        .unwrap()
        .processors
        .iter()
        .find(|r| r.processor == processor && r.stage == stage)
        .unwrap_or_else(|| panic!("no record of {processor} in {stage:?}: {a:#?}"))
}

#[tokio::test]
async fn a_plugin_may_answer_with_status_alone_and_remove_the_context_key_it_wrote() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("status-only").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    // One plugin registered as collector and diagnoser under one name: its diagnosis drops the
    // scratch key its collection wrote, and may not drop the other collector's key.
    for (kind, name, path) in [
        ("InformationCollector", "helper", "/status-only/scratch"),
        ("InformationCollector", "other", "/echo/kept"),
        ("Diagnoser", "helper", "/drop/scratch"),
        ("Recoverer", "trier", "/drop/kept"),
    ] {
        register_plugin(&client, &ns, kind, name, plugin.port, path, 5).await;
    }
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "partial",
        json!({
            "nodeName": node,
            "assignedInformationCollectors": [{"name": "helper"}, {"name": "other"}],
            "assignedDiagnosers": [{"name": "helper"}],
            "assignedRecoverers": [{"name": "trier"}],
        }),
    )
    .await;
    let a = wait_final(&client, &ns, "partial", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    let helper = format!("{ns}/helper");
    let collected = record(&a, &helper, Stage::InformationCollecting);
    assert_eq!(
        collected.result,
        ProcessorResult::Succeeded,
        "{collected:?}"
    );
    assert_eq!(collected.context_keys, ["scratch"]);
    let context = st.context.unwrap();
    assert!(
        !context.contains_key("scratch"),
        "the diagnoser removed the key its collector wrote: {context:?}"
    );
    assert_eq!(context["kept"], json!("kept-value"));
    let recovered = record(&a, &format!("{ns}/trier"), Stage::Recovering);
    assert!(
        recovered.message.contains("did not write: kept"),
        "{}",
        recovered.message
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_context_key_removed_after_it_was_stored_is_gone_from_the_stored_abnormal() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("removed-key").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    for (kind, name, path) in [
        ("InformationCollector", "helper", "/status-only/scratch"),
        ("Diagnoser", "helper", "/drop/scratch"),
    ] {
        register_plugin(&client, &ns, kind, name, plugin.port, path, 5).await;
    }
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    // The diagnosing stage's command is written as Running before it runs, so the collected
    // key is stored before the diagnoser removes it: the last write must remove it there too.
    create_abnormal(
        &client,
        &ns,
        "stored-then-removed",
        json!({
            "nodeName": node,
            "assignedInformationCollectors": [{"name": "helper"}],
            "assignedDiagnosers": [{"name": "helper"}],
            "commandExecutors": [{"command": ["uptime"], "type": "Diagnoser", "timeoutSeconds": 5}],
        }),
    )
    .await;
    let a = wait_final(&client, &ns, "stored-then-removed", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    assert!(
        st.command_executors
            .iter()
            .any(|c| c.stdout.contains("load average")),
        "{st:#?}"
    );
    let context = st.context.unwrap_or_default();
    assert!(
        !context.contains_key("scratch"),
        "the diagnoser removed the key after it was stored: {context:?}"
    );
    agent.stop().await;
}

/// A registration as Kube Diagnoser v0.1.0–v0.1.5 wrote it, created from JSON so that only the
/// apiserver's schema decides what is kept.
async fn register_legacy(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    let o: InformationCollector = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "InformationCollector",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap();
    Api::<InformationCollector>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &o)
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
}

#[tokio::test]
async fn registrations_with_kube_diagnosers_old_ip_and_port_are_called_and_say_what_to_rename() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("legacy-ip").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    // v0.1.5: port a number. The plugin answers after 1.5 s and timeoutSeconds is 0, which
    // Kube Diagnoser read as its default of 30 s.
    register_legacy(
        &client,
        &ns,
        "v015",
        json!({"ip": "127.0.0.1", "port": plugin.port, "path": "/sleep/1500/v015",
               "metricPath": "/metrics", "scheme": "http", "timeoutSeconds": 0}),
    )
    .await;
    // v0.1.0: port a string, and a readinessProbe.
    register_legacy(
        &client,
        &ns,
        "v010",
        json!({"ip": "127.0.0.1", "port": plugin.port.to_string(), "path": "/echo/v010",
               "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10}}),
    )
    .await;
    // Kube Diagnoser's own built-in registration, naming its agent's address.
    register_legacy(
        &client,
        &ns,
        "node-collector",
        json!({"ip": "0.0.0.0", "port": 8090, "path": "/informationcollector/nodecollector"}),
    )
    .await;
    // status.ready is kept, not pruned.
    let ics: Api<InformationCollector> = Api::namespaced(client.clone(), &ns);
    let patched = ics
        .patch_status(
            "v010",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.and_then(|s| s.ready), Some(true));
    let stored = ics.get("v010").await.unwrap();
    assert_eq!(
        stored.spec.endpoint.port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                plugin.port.to_string()
            )
        )
    );
    assert!(stored.spec.endpoint.readiness_probe.is_some());
    assert_eq!(
        ics.get("v015")
            .await
            .unwrap()
            .spec
            .endpoint
            .metric_path
            .as_deref(),
        Some("/metrics")
    );

    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "old-plugins",
        json!({"nodeName": node,
               "assignedInformationCollectors": [{"name": "v015"}, {"name": "v010"}, {"name": "node-collector"}]}),
    )
    .await;
    let a = wait_final(&client, &ns, "old-plugins", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    for name in ["v015", "v010", "node-collector"] {
        let r = record(&a, &format!("{ns}/{name}"), Stage::InformationCollecting);
        assert_eq!(
            r.result,
            ProcessorResult::Succeeded,
            "{name}: {}",
            r.message
        );
        assert!(
            r.message.contains("deprecated spec.ip/spec.port"),
            "{name}: {}",
            r.message
        );
    }
    let r = record(&a, &format!("{ns}/v015"), Stage::InformationCollecting);
    assert!(
        r.message
            .contains("rename them spec.externalIP and spec.externalPort"),
        "{}",
        r.message
    );
    let r = record(
        &a,
        &format!("{ns}/node-collector"),
        Stage::InformationCollecting,
    );
    assert!(r.message.contains("built-in"), "{}", r.message);
    let context = st.context.unwrap();
    assert_eq!(context["v015"], json!("v015-value"));
    assert_eq!(context["v010"], json!("v010-value"));
    assert!(context.contains_key(context_keys::NODE_INFORMATION));
    assert_eq!(plugin.calls(), ["/sleep/1500/v015", "/echo/v010"]);
    agent.stop().await;
}

#[tokio::test]
async fn an_abnormal_naming_an_unregistered_collector_runs_the_registered_ones() {
    // Kube Diagnoser ran the registered processors an Abnormal named and passed over the rest.
    let cp = with_controller().await;
    let ns = cp.create_namespace("unregistered").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "present",
        plugin.port,
        "/echo/present",
        5,
    )
    .await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    create_abnormal(
        &client,
        &ns,
        "one-missing",
        json!({"nodeName": node,
               "assignedInformationCollectors": [{"name": "absent"}, {"name": "present"}]}),
    )
    .await;
    let a = wait_final(&client, &ns, "one-missing", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    let missing = record(&a, &format!("{ns}/absent"), Stage::InformationCollecting);
    assert_eq!(missing.result, ProcessorResult::Failed);
    assert!(
        missing.message.contains("does not exist")
            && missing.message.contains(&format!("{ns}/present")),
        "{}",
        missing.message
    );
    assert_eq!(st.context.unwrap()["present"], json!("present-value"));
    agent.stop().await;
}

#[tokio::test]
async fn a_report_with_one_bad_checker_stores_the_others_and_names_the_bad_one() {
    let cp = installed().await;
    let ns = cp.create_namespace("bad-checker").await;
    let controller = service_account_client(cp, "kdiag-controller").await;
    // KubeProber's SDK sends no token: the opt-in the controller's flag gives.
    let reports = kdiag_controller::probes::report::ProbeReports::new(
        controller.clone(),
        true,
        std::sync::Arc::new(kdiag_controller::nodes::KnownNodes::new(controller)),
    );
    let body = json!({"probeName": "k8s", "probeNamespace": ns, "checkers": [
        {"name": "dns", "status": "pass"},
        {"name": "", "status": "PASS"},
        {"name": "custom", "status": "OK", "message": "fine"},
        {"name": "api", "status": "ERROR", "message": "the apiserver answered 500"}]});
    let (code, answer) = reports
        .receive(None, &serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(code.as_u16(), 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["success"], true);
    let rejected: Vec<&str> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["checker"].as_str().unwrap())
        .collect();
    assert_eq!(rejected, ["checkers[1]", "custom"]);

    let client = cp.client().await;
    let ps: ProbeStatus = Api::namespaced(client.clone(), &ns)
        .get("k8s")
        .await
        .unwrap();
    assert_eq!(
        ps.spec
            .checkers
            .iter()
            .map(|c| (c.name.as_str(), c.status))
            .collect::<Vec<_>>(),
        [("dns", CheckerStatus::Pass), ("api", CheckerStatus::Error)]
    );
    assert_eq!(
        event_reasons_at_least(&client, &ns, "k8s", 1).await,
        ["CheckersRejected"]
    );

    // Nothing to store: refused as a whole, saying why.
    let (code, answer) = reports
        .receive(
            None,
            &serde_json::to_vec(
                &json!({"probeName": "k8s", "probeNamespace": ns, "checkers": [{"name": "x", "status": "ERROR"}]}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(code.as_u16(), 400, "{answer}");
    assert!(answer.contains("has no message"), "{answer}");
}

#[tokio::test]
async fn an_expired_profiles_endpoint_says_expired_as_in_kube_diagnoser() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("expired").await;
    let client = cp.client().await;
    create_abnormal(&client, &ns, "profiled", json!({"nodeName": "n"})).await;
    // Admission is done with it (no node n: rejected) before its status is set by hand.
    wait_final(&client, &ns, "profiled", FINISH).await;
    let url = format!("http://10.0.0.5:10357/profiles/{ns}/profiled/heap");
    Api::<Abnormal>::namespaced(client.clone(), &ns)
        .patch_status(
            "profiled",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"profilers": [
                {"name": "heap", "type": "InformationCollector", "endpoint": url}]}})),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profilers = kdiag_agent::profiler::Profilers {
        data_root: dir.path().to_owned(),
        public_url: "http://10.0.0.5:10357".into(),
        proc_root: "/proc".into(),
        client: Some(service_account_client(cp, "kdiag-agent").await),
        limits: Default::default(),
        go_file_dirs: Vec::new(),
    };
    profilers
        .mark_expired(&[kdiag_agent::profiler::ExpiredProfile {
            namespace: ns.clone(),
            abnormal: "profiled".into(),
            profile: "heap".into(),
        }])
        .await;
    let a: Abnormal = Api::namespaced(client, &ns).get("profiled").await.unwrap();
    assert_eq!(
        a.status.unwrap().profilers[0].endpoint,
        kdiag_agent::profiler::EXPIRED_ENDPOINT
    );
}

#[tokio::test]
async fn under_v0_1_1_rules_admission_fills_empty_lists_with_every_registered_processor() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("every-registered").await;
    let client = cp.client().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "present",
        9,
        "/echo/present",
        5,
    )
    .await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    // Kube Diagnoser v0.1.1's shape: no lists, a skip flag; no agent runs it here.
    let a: Abnormal = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "old", "namespace": ns,
                     "annotations": {"kdiag.io/kube-diagnoser-version": "v0.1.1"}},
        "spec": {"nodeName": node, "skipRecovery": true}
    }))
    .unwrap();
    let api = Api::<Abnormal>::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &a).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let admitted = loop {
        let a = api.get("old").await.unwrap();
        if a.phase().is_some() {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "not admitted: {a:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        admitted.phase(),
        Some(AbnormalPhase::InformationCollecting),
        "{:#?}",
        admitted.status
    );
    let names = |l: &[NamespacedName]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let collectors = names(&admitted.spec.assigned_information_collectors);
    for expected in [
        "kube-diagnoser/pod-collector".to_owned(),
        "kube-diagnoser/process-collector".to_owned(),
        format!("{ns}/present"),
    ] {
        assert!(collectors.contains(&expected), "{expected}: {collectors:?}");
    }
    let mut sorted = collectors.clone();
    sorted.sort();
    assert_eq!(collectors, sorted);
    assert!(
        names(&admitted.spec.assigned_diagnosers)
            .contains(&"kube-diagnoser/pod-triage-diagnoser".to_owned()),
        "{:?}",
        admitted.spec.assigned_diagnosers
    );
    assert!(
        admitted.spec.assigned_recoverers.is_empty(),
        "skipRecovery keeps the recoverers empty"
    );
}
