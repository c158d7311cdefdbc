//! The CRDs and types against a real kube-apiserver (kdiag-testenv): they install, accept the
//! originals' objects verbatim, keep every field, and reject wrongly typed ones clearly.

use std::path::{Path, PathBuf};

use kdiag_api::*;
use kdiag_testenv::{ControlPlane, control_plane};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_yaml(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The control plane with the committed config/crd/ applied by kubectl, once per test binary.
async fn apiserver() -> &'static ControlPlane {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let cp = control_plane().await;
    INSTALLED
        .get_or_init(|| async {
            let out = cp
                .kubectl()
                .arg("apply")
                .arg("-f")
                .arg(repo_root().join("config/crd"))
                .output()
                .expect("run kubectl");
            assert!(
                out.status.success(),
                "kubectl apply -f config/crd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Same CRDs through server-side apply, which waits until each is Established.
            cp.apply_crds(&kdiag_api::crds::all())
                .await
                .expect("CRDs become Established");
        })
        .await;
    cp
}

fn dynamic_api(client: Client, api_version: &str, kind: &str, ns: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').expect("group/version");
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase()).replace("statuss", "statuses");
    Api::namespaced_with(
        client,
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

/// Removes what carries no information (null, false, "", [], {}) so that two documents that say
/// the same thing compare equal, whatever the writer's omitempty habits.
fn prune(v: &Value) -> Option<Value> {
    match v {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let items: Vec<Value> = a.iter().map(|x| prune(x).unwrap_or(Value::Null)).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(o) => {
            let m: serde_json::Map<String, Value> = o
                .iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k.clone(), v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other.clone()),
    }
}

fn assert_same_content(what: &str, expected: &Value, actual: &Value) {
    assert_eq!(
        prune(expected),
        prune(actual),
        "{what}: expected\n{}\nactual\n{}",
        serde_json::to_string_pretty(expected).unwrap(),
        serde_json::to_string_pretty(actual).unwrap()
    );
}

/// Reads an object back raw, parses it into the Rust type and serializes it again: nothing the
/// apiserver holds may be lost on the way.
async fn assert_round_trips<K>(api: &Api<DynamicObject>, name: &str)
where
    K: Resource + serde::de::DeserializeOwned + serde::Serialize,
{
    let raw = serde_json::to_value(api.get(name).await.expect("read back")).unwrap();
    let typed: K = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{name} does not parse into the Rust type: {e}"));
    let again = serde_json::to_value(&typed).unwrap();
    assert_same_content(&format!("{name} through the Rust type"), &raw, &again);
}

async fn create_from(api: &Api<DynamicObject>, mut doc: Value, ns: &str) -> DynamicObject {
    doc["metadata"]["namespace"] = json!(ns);
    let obj: DynamicObject = serde_json::from_value(doc).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"))
}

async fn replace_status(api: &Api<DynamicObject>, name: &str, status: &Value) -> Value {
    let patch = json!({ "status": status });
    let obj = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patch status of {name}: {e}"));
    serde_json::to_value(obj).unwrap()
}

#[tokio::test]
async fn every_crd_is_established_with_its_names_and_status_subresource() {
    let cp = apiserver().await;
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(cp.client().await);
    for crd in kdiag_api::crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        let live = api
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{name} is not installed: {e}"));
        let conditions = live.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name} is not Established: {conditions:?}"
        );
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "NamesAccepted" && c.status == "True"),
            "{name}: names not accepted: {conditions:?}"
        );
    }
}

#[tokio::test]
async fn the_seed_readme_abnormal_is_accepted_verbatim_and_keeps_its_v010_fields() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("seed-abnormal").await;
    let doc = read_yaml("examples/kube-diagnoser/pod-disk-usage-diagnosis.yaml");
    let api = dynamic_api(
        cp.client().await,
        "diagnosis.netease.com/v1",
        "Abnormal",
        &ns,
    );

    let created = serde_json::to_value(create_from(&api, doc.clone(), &ns).await).unwrap();
    assert_same_content("spec as stored", &doc["spec"], &created["spec"]);
    // The v0.1.0 fields must not be pruned: the apiserver drops fields its schema lacks.
    assert_eq!(created["spec"]["skipRecovery"], json!(true));
    assert_eq!(created["spec"]["skipDiagnosis"], json!(false));
    assert_eq!(created["spec"]["skipInformationCollection"], json!(false));

    let stored = replace_status(&api, "pod-disk-usage-diagnosis", &doc["status"]).await;
    assert_same_content("status as stored", &doc["status"], &stored["status"]);
    assert_round_trips::<Abnormal>(&api, "pod-disk-usage-diagnosis").await;

    let typed: Api<Abnormal> = Api::namespaced(cp.client().await, &ns);
    let abnormal = typed.get("pod-disk-usage-diagnosis").await.unwrap();
    assert!(abnormal.spec.skip_recovery);
    assert!(abnormal.skips_processors(Stage::Recovering));
    assert!(!abnormal.skips_processors(Stage::Diagnosing));
    assert_eq!(abnormal.phase(), Some(AbnormalPhase::Succeeded));
    assert_eq!(
        abnormal.assigned(Stage::Diagnosing),
        &[NamespacedName::new(
            "kube-diagnoser",
            "pod-disk-usage-diagnoser"
        )]
    );
}

#[tokio::test]
async fn the_command_executor_example_and_its_status_are_accepted_verbatim() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("command-executor").await;
    let doc = read_yaml("examples/kube-diagnoser/command-executor.yaml");
    let status = read_yaml("examples/kube-diagnoser/command-executor-status.yaml");
    let api = dynamic_api(
        cp.client().await,
        "diagnosis.netease.com/v1",
        "Abnormal",
        &ns,
    );

    let created = serde_json::to_value(create_from(&api, doc.clone(), &ns).await).unwrap();
    assert_same_content("spec as stored", &doc["spec"], &created["spec"]);
    let stored = replace_status(&api, "command-executor", &status["status"]).await;
    assert_same_content("status as stored", &status["status"], &stored["status"]);
    assert_round_trips::<Abnormal>(&api, "command-executor").await;

    let typed: Api<Abnormal> = Api::namespaced(cp.client().await, &ns);
    let abnormal = typed.get("command-executor").await.unwrap();
    assert_eq!(
        abnormal.spec.command_executors[1].command,
        ["du", "-sh", "/"]
    );
    assert_eq!(
        abnormal.spec.command_executors[1].type_,
        ProcessorType::Diagnoser
    );
    let st = abnormal.status.unwrap();
    assert_eq!(
        st.command_executors[1].error,
        "command [du -sh /] timed out"
    );
}

#[tokio::test]
async fn a_kubeprober_probestatus_is_accepted_and_round_trips() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("probestatus").await;
    let doc = read_yaml("examples/kubeprober/probestatus.yaml");
    let api = dynamic_api(
        cp.client().await,
        "kubeprober.erda.cloud/v1",
        "ProbeStatus",
        &ns,
    );
    let created = serde_json::to_value(create_from(&api, doc.clone(), &ns).await).unwrap();
    assert_same_content("spec as stored", &doc["spec"], &created["spec"]);
    let stored = replace_status(&api, "prober-demo-example", &doc["status"]).await;
    assert_same_content("status as stored", &doc["status"], &stored["status"]);
    assert_round_trips::<ProbeStatus>(&api, "prober-demo-example").await;

    let typed: Api<ProbeStatus> = Api::namespaced(cp.client().await, &ns);
    let ps = typed.get("prober-demo-example").await.unwrap();
    assert_eq!(ps.spec.checkers[1].status, CheckerStatus::Error);
    assert_eq!(ps.status.unwrap().status, Some(CheckerStatus::Error));
}

#[tokio::test]
async fn checker_statuses_are_accepted_in_any_case_and_an_unknown_one_is_refused() {
    // docs/compatibility.md: statuses are case-insensitive on input, written upper-case.
    let cp = apiserver().await;
    let ns = cp.create_namespace("status-case").await;
    let api = dynamic_api(
        cp.client().await,
        "kubeprober.erda.cloud/v1",
        "ProbeStatus",
        &ns,
    );
    create_from(
        &api,
        json!({"apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus", "metadata": {"name": "lower"},
               "spec": {"checkers": [{"name": "a", "status": "pass"}, {"name": "b", "status": "Error", "message": "down"}]}}),
        &ns,
    )
    .await;
    replace_status(&api, "lower", &json!({"status": "warn"})).await;
    let ps: ProbeStatus = Api::namespaced(cp.client().await, &ns)
        .get("lower")
        .await
        .unwrap();
    assert_eq!(
        ps.spec
            .checkers
            .iter()
            .map(|c| c.status)
            .collect::<Vec<_>>(),
        [CheckerStatus::Pass, CheckerStatus::Error]
    );
    assert_eq!(ps.status.unwrap().status, Some(CheckerStatus::Warn));
    assert_eq!(
        serde_json::to_value(&ps.spec).unwrap()["checkers"][0]["status"],
        json!("PASS")
    );

    let unknown: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus", "metadata": {"name": "ok", "namespace": ns},
        "spec": {"checkers": [{"name": "a", "status": "OK"}]}
    }))
    .unwrap();
    let err = api
        .create(&PostParams::default(), &unknown)
        .await
        .expect_err("a status outside the five must be refused");
    assert!(
        err.to_string().contains("spec.checkers") && err.to_string().contains("PASS|INFO"),
        "{err}"
    );
}

#[tokio::test]
async fn kdiag_extensions_are_stored_and_read_back() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("extensions").await;
    let client = cp.client().await;
    let api: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    let mut ab = Abnormal::new(
        "probe-failure",
        AbnormalSpec {
            source: AbnormalSourceType::ProbeStatus,
            probe_status: Some(ProbeReference {
                namespace: "kubeprober".into(),
                name: "k8s".into(),
                checker: "dns-resolution-check".into(),
                status: "ERROR".into(),
                message: "lookup kubernetes.default failed".into(),
            }),
            node_name: "node-a".into(),
            ..Default::default()
        },
    );
    let created = api.create(&PostParams::default(), &ab).await.unwrap();
    assert_eq!(created.spec, ab.spec);

    ab.status = Some(AbnormalStatus {
        phase: Some(AbnormalPhase::Succeeded),
        processors: vec![ProcessorRecord {
            processor: "kube-diagnoser/pod-collector".into(),
            kind: ProcessorKind::Processor,
            stage: Stage::InformationCollecting,
            result: ProcessorResult::Succeeded,
            message: "collected 12 pods".into(),
            start_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-22T10:00:00Z".parse().unwrap(),
            ),
            duration_milliseconds: Some(42),
            context_keys: vec!["podInformation".into()],
        }],
        root_cause: Some(RootCause {
            summary: "pod default/web is OOM-killed: container app exceeds its 64Mi limit".into(),
            reason: "OOMKilled".into(),
            processor: "kube-diagnoser/oom-diagnoser".into(),
            suggestion: "raise the memory limit or fix the leak".into(),
            evidence: vec![Evidence {
                kind: "KernelLog".into(),
                message: "oom-kill:constraint=CONSTRAINT_MEMCG".into(),
                object: "Pod/default/web".into(),
                context_key: "kernelLogInformation".into(),
                timestamp: None,
            }],
            since: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-22T09:58:00Z".parse().unwrap(),
            )),
            others: vec![],
        }),
        ..Default::default()
    });
    let patched = api
        .patch_status(
            "probe-failure",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": ab.status })),
        )
        .await
        .unwrap();
    assert_eq!(patched.status, ab.status);

    // The defaulted source and the printer columns work as kubectl users see them.
    let out = cp
        .kubectl()
        .args(["get", "abn", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "PHASE", "NODE", "SOURCE", "ROOT CAUSE", "AGE"] {
        assert!(
            header.contains(column),
            "missing column {column} in {header:?}"
        );
    }
    assert!(
        table.contains("Succeeded") && table.contains("node-a") && table.contains("ProbeStatus"),
        "{table}"
    );
    assert!(table.contains("pod default/web is OOM-killed"), "{table}");
}

#[tokio::test]
async fn a_source_left_out_defaults_to_custom() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("default-source").await;
    let api = dynamic_api(
        cp.client().await,
        "diagnosis.netease.com/v1",
        "Abnormal",
        &ns,
    );
    let created = create_from(
        &api,
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal", "metadata": {"name": "no-source"}, "spec": {"nodeName": "n1"}}),
        &ns,
    )
    .await;
    assert_eq!(created.data["spec"]["source"], json!("Custom"));
}

#[tokio::test]
async fn an_empty_source_from_a_go_client_is_accepted_and_read_as_custom() {
    // Kube Diagnoser's Go types have no omitempty on source: an unset one is sent as "".
    let cp = apiserver().await;
    let ns = cp.create_namespace("empty-source").await;
    let api = dynamic_api(
        cp.client().await,
        "diagnosis.netease.com/v1",
        "Abnormal",
        &ns,
    );
    create_from(
        &api,
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal", "metadata": {"name": "go-client"},
               "spec": {"source": "", "nodeName": "n1"}}),
        &ns,
    )
    .await;
    let typed: Abnormal = Api::namespaced(cp.client().await, &ns)
        .get("go-client")
        .await
        .expect("an Abnormal with source \"\" reads back");
    assert_eq!(typed.spec.source, AbnormalSourceType::Custom);
    // An explicit null (`source:` with no value in YAML) is refused, as Kube Diagnoser's CRD
    // refused it, naming the values to use.
    let null: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal", "metadata": {"name": "yaml-null", "namespace": ns},
        "spec": {"source": null, "nodeName": "n1"}
    }))
    .unwrap();
    let err = api
        .create(&PostParams::default(), &null)
        .await
        .expect_err("source: null is refused");
    assert!(
        err.to_string().contains("spec.source") && err.to_string().contains("\"Custom\""),
        "{err}"
    );
    // kdiag writes it back as Custom, which the schema accepts as well.
    assert_eq!(
        serde_json::to_value(&typed.spec).unwrap()["source"],
        json!("Custom")
    );
}

#[tokio::test]
async fn a_minimal_object_of_every_kind_round_trips() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("minimal").await;
    let client = cp.client().await;
    let pp = PostParams::default();

    let ic = InformationCollector::new("pod-collector", InformationCollectorSpec::default());
    assert_eq!(
        Api::<InformationCollector>::namespaced(client.clone(), &ns)
            .create(&pp, &ic)
            .await
            .unwrap()
            .spec,
        ic.spec
    );
    let dg = Diagnoser::new(
        "remote",
        DiagnoserSpec {
            endpoint: ProcessorEndpoint {
                external_ip: Some("diagnoser.example.svc".into()),
                external_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080),
                ),
                path: Some("/diagnose".into()),
                scheme: Some("https".into()),
                timeout_seconds: Some(10),
                tls: Some(TlsConfig {
                    ca_bundle: "-----BEGIN CERTIFICATE-----\n".into(),
                    ..Default::default()
                }),
                bearer_token_secret_ref: Some(SecretKeyRef {
                    name: "plugin-token".into(),
                    key: "token".into(),
                }),
                service: None,
                ..Default::default()
            },
        },
    );
    assert_eq!(
        Api::<Diagnoser>::namespaced(client.clone(), &ns)
            .create(&pp, &dg)
            .await
            .unwrap()
            .spec,
        dg.spec
    );
    let rc = Recoverer::new("signal-recoverer", RecovererSpec::default());
    assert_eq!(
        Api::<Recoverer>::namespaced(client.clone(), &ns)
            .create(&pp, &rc)
            .await
            .unwrap()
            .spec,
        rc.spec
    );

    let src = AbnormalSource::new(
        "events",
        AbnormalSourceSpec {
            source_template: SourceTemplate {
                type_: AbnormalSourceType::KubernetesEvent,
                kubernetes_event_template: Some(KubernetesEventTemplate {
                    regexp: KubernetesEventTemplateRegexp {
                        reason: "BackOff".into(),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            },
            assigned_information_collectors: vec![NamespacedName::new(
                "kube-diagnoser",
                "pod-collector",
            )],
            ..Default::default()
        },
    );
    assert_eq!(
        Api::<AbnormalSource>::namespaced(client.clone(), &ns)
            .create(&pp, &src)
            .await
            .unwrap()
            .spec,
        src.spec
    );

    let probe: Probe = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe", "metadata": {"name": "k8s"},
        "spec": {"policy": {"runInterval": 30}, "template": {"containers": [{"name": "k8s", "image": "kubeprober/probe-k8s:v0.1.5"}], "restartPolicy": "Never"},
                 "configs": [{"name": "env", "env": [{"name": "PUBLIC_DOMAIN", "value": "www.example.com"}]}]}
    }))
    .unwrap();
    assert_eq!(
        Api::<Probe>::namespaced(client.clone(), &ns)
            .create(&pp, &probe)
            .await
            .unwrap()
            .spec,
        probe.spec
    );

    let cluster = Cluster::new(
        "moon",
        ClusterSpec {
            k8s_version: "v1.20.2".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        Api::<Cluster>::namespaced(client.clone(), &ns)
            .create(&pp, &cluster)
            .await
            .unwrap()
            .spec,
        cluster.spec
    );
}

#[tokio::test]
async fn a_wrongly_typed_field_is_rejected_with_a_clear_message() {
    let cp = apiserver().await;
    let ns = cp.create_namespace("bad-type").await;
    let api = dynamic_api(
        cp.client().await,
        "diagnosis.netease.com/v1",
        "Abnormal",
        &ns,
    );
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal", "metadata": {"name": "bad", "namespace": ns},
        "spec": {"nodeName": "n1", "commandExecutors": [{"command": "ps aux", "type": "InformationCollector"}]}
    }))
    .unwrap();
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("a string where a list belongs must be rejected");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.commandExecutors"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("must be of type array"),
        "{}",
        status.message
    );

    let bad_enum: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal", "metadata": {"name": "bad-source", "namespace": ns},
        "spec": {"nodeName": "n1", "source": "Pager"}
    }))
    .unwrap();
    let err = api
        .create(&PostParams::default(), &bad_enum)
        .await
        .expect_err("an unknown source must be rejected");
    assert!(
        err.to_string().contains("spec.source") && err.to_string().contains("Unsupported value"),
        "{err}"
    );

    // kubectl users see the same explanation.
    let file = cp.run_dir().join("bad-abnormal.yaml");
    std::fs::write(&file, format!("apiVersion: diagnosis.netease.com/v1\nkind: Abnormal\nmetadata:\n  name: bad-kubectl\n  namespace: {ns}\nspec:\n  nodeName: n1\n  assignedDiagnosers: pod-disk-usage-diagnoser\n")).unwrap();
    let out = cp
        .kubectl()
        .arg("create")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // kubectl validates against the schema the apiserver publishes once it has published this
    // CRD's (asynchronously), else the apiserver rejects it: either way the message names the
    // field and the type it must have.
    let client_side = stderr.contains("Abnormal.spec.assignedDiagnosers")
        && stderr.contains(r#"expected "array""#);
    let server_side =
        stderr.contains("spec.assignedDiagnosers") && stderr.contains("must be of type array");
    assert!(client_side || server_side, "{stderr}");
}
