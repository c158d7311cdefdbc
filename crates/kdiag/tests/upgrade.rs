//! Installing kdiag over an existing Kube Diagnoser: its CRDs as Kube Diagnoser v0.1.x shipped
//! them (apiextensions.k8s.io/v1beta1, so unknown fields were kept; written here from their
//! documented fields) with objects stored under them, then `kubectl apply -f config/crd` and the
//! rest of config/deploy as docs/install.md says, and kdiag's controller and an agent. This
//! binary has a control plane of its own, so replacing CRDs disturbs no other test.

mod common;

use std::process::Stdio;

use common::*;
use kdiag_api::*;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

/// A CRD of Kube Diagnoser's group as its v0.1.x releases installed it: v1beta1, one version
/// `v1`, a status subresource and a schema for the spec. v1beta1 keeps fields the schema does not
/// name (`preserveUnknownFields` defaults to true there).
fn upstream_crd(plural: &str, kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1beta1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.diagnosis.netease.com")},
        "spec": {
            "group": "diagnosis.netease.com",
            "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                      "singular": kind.to_lowercase()},
            "scope": "Namespaced",
            "subresources": {"status": {}},
            "validation": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": spec,
                "status": {"type": "object"},
            }}},
            "version": "v1",
            "versions": [{"name": "v1", "served": true, "storage": true}],
        }
    })
}

fn processor_spec() -> Value {
    json!({"type": "object", "properties": {
        "ip": {"type": "string"},
        "port": {"type": "integer", "format": "int32"},
        "path": {"type": "string"},
        "scheme": {"type": "string"},
        "timeoutSeconds": {"type": "integer", "format": "int32"},
    }})
}

fn named_list() -> Value {
    json!({"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"}}}})
}

fn kubectl_apply_stdin(cp: &kdiag_testenv::ControlPlane, objects: &[Value]) {
    let mut child = cp
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), list.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kubectl_ok(cp: &kdiag_testenv::ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_over_kube_diagnoser_keeps_every_object_and_runs_the_abnormals_it_never_processed()
 {
    init_logging();
    let cp = kdiag_testenv::control_plane().await;
    let crds = [
        upstream_crd(
            "abnormals",
            "Abnormal",
            json!({"type": "object", "properties": {
                "source": {"type": "string"},
                "nodeName": {"type": "string"},
                "assignedInformationCollectors": named_list(),
                "assignedDiagnosers": named_list(),
                "assignedRecoverers": named_list(),
                "skipInformationCollection": {"type": "boolean"},
                "skipDiagnosis": {"type": "boolean"},
                "skipRecovery": {"type": "boolean"},
            }}),
        ),
        upstream_crd(
            "informationcollectors",
            "InformationCollector",
            processor_spec(),
        ),
        upstream_crd("diagnosers", "Diagnoser", processor_spec()),
        upstream_crd("recoverers", "Recoverer", processor_spec()),
        upstream_crd(
            "abnormalsources",
            "AbnormalSource",
            json!({"type": "object", "properties": {"sourceTemplate": {"type": "object"}}}),
        ),
    ];
    tokio::task::block_in_place(|| {
        kubectl_apply_stdin(cp, &crds);
        kubectl_ok(
            cp,
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "abnormals.diagnosis.netease.com",
                "informationcollectors.diagnosis.netease.com",
                "diagnosers.diagnosis.netease.com",
                "recoverers.diagnosis.netease.com",
                "abnormalsources.diagnosis.netease.com",
            ],
        );
    });
    let ns = cp.create_namespace("upgrade").await;
    // Objects as a Kube Diagnoser v0.1.5 install holds them: a registration by ip and port, a
    // source, an Abnormal it finished and one it never processed.
    let objects = [
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "InformationCollector",
               "metadata": {"name": "old-collector", "namespace": ns},
               "spec": {"ip": "10.0.0.7", "port": 8090, "path": "/collect", "scheme": "http",
                        "timeoutSeconds": 0}}),
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Diagnoser",
               "metadata": {"name": "old-diagnoser", "namespace": ns},
               "spec": {"ip": "10.0.0.7", "port": 8090, "path": "/diagnose", "scheme": "http"}}),
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
               "metadata": {"name": "old-source", "namespace": ns},
               "spec": {"sourceTemplate": {"type": "KubernetesEvent",
                        "kubernetesEventTemplate": {"regexp": {"reason": "BackOff"}}}}}),
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
               "metadata": {"name": "finished", "namespace": ns},
               "spec": {"source": "Custom", "nodeName": "node-1",
                        "assignedDiagnosers": [{"name": "old-diagnoser", "namespace": ns}],
                        "skipInformationCollection": true}}),
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
               "metadata": {"name": "never-processed", "namespace": ns},
               "spec": {"source": "Custom", "nodeName": "node-1"}}),
    ];
    tokio::task::block_in_place(|| kubectl_apply_stdin(cp, &objects));
    let client = cp.client().await;
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<Abnormal>(&()),
    );
    let mut finished = raw.get("finished").await.unwrap();
    finished.data["status"] = json!({
        "phase": "Succeeded", "identifiable": true, "recoverable": false,
        "diagnoser": {"name": "old-diagnoser", "namespace": ns},
        "context": {"diagnosis": "found by Kube Diagnoser"},
        "conditions": [{"type": "Identified", "status": "True",
                        "lastTransitionTime": "2021-03-01T10:00:00Z"}],
    });
    raw.replace_status("finished", &PostParams::default(), &finished)
        .await
        .unwrap();

    // The upgrade, as docs/install.md says.
    let applied = tokio::task::block_in_place(|| {
        let out = cp
            .kubectl()
            .arg("apply")
            .arg("-f")
            .arg(repo_root().join("config/crd"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    });
    assert!(
        applied.0,
        "kubectl apply -f config/crd over Kube Diagnoser's CRDs: {}",
        applied.1
    );
    tokio::task::block_in_place(|| {
        kubectl_ok(
            cp,
            &[
                "wait",
                "--for=condition=Established",
                "-f",
                repo_root().join("config/crd").to_str().unwrap(),
            ],
        )
    });

    // Every object is still there and reads as kdiag's types.
    let abnormals: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = abnormals
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let f = abnormals.get("finished").await.unwrap();
    let st = f
        .status
        .clone()
        .expect("the finished Abnormal keeps its status");
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
    assert_eq!(
        st.context.unwrap_or_default()["diagnosis"],
        json!("found by Kube Diagnoser")
    );
    assert_eq!(f.spec.assigned_diagnosers, [nn(&ns, "old-diagnoser")]);
    assert!(f.spec.skip_information_collection);
    let pending = abnormals.get("never-processed").await.unwrap();
    assert!(pending.status.is_none() || pending.phase().is_none());

    let collectors: Api<InformationCollector> = Api::namespaced(client.clone(), &ns);
    let c = collectors.get("old-collector").await.unwrap();
    let c = serde_json::to_value(&c.spec).unwrap();
    assert_eq!(c["ip"], json!("10.0.0.7"), "{c}");
    assert_eq!(c["port"], json!(8090), "{c}");
    let sources: Api<AbnormalSource> = Api::namespaced(client.clone(), &ns);
    sources.get("old-source").await.unwrap();

    // Pruning is on now (the v1 API leaves out a false value): fields no schema names are
    // dropped from now on, as kdiag's schema says.
    let crd = tokio::task::block_in_place(|| {
        kubectl_ok(
            cp,
            &[
                "get",
                "crd",
                "abnormals.diagnosis.netease.com",
                "-o",
                "json",
            ],
        )
    });
    let crd: Value = serde_json::from_str(&crd).unwrap();
    assert_ne!(crd["spec"]["preserveUnknownFields"], json!(true));
    assert_eq!(
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["title"],
        json!("Abnormal"),
        "the definition is kdiag's"
    );

    // Then the rest of the install, kdiag's controller and the node's agent (Kube Diagnoser's
    // workloads are gone): the Abnormal Kube Diagnoser never processed is admitted and run, the
    // one it finished is left as it was.
    tokio::task::block_in_place(|| {
        kubectl_apply(cp, "config/deploy/00-namespace.yaml");
        kubectl_apply(cp, "config/deploy");
        remove_webhook(cp.kubectl());
    });
    ensure_node(&client, "node-1").await;
    start_background_controller(cp, kdiag_controller::ControllerConfig::default());
    let agent = TestAgent::start(cp, "node-1").await;
    let processed = wait_final(
        &client,
        &ns,
        "never-processed",
        std::time::Duration::from_secs(60),
    )
    .await;
    let st = processed.status.unwrap();
    assert!(
        st.conditions.iter().any(
            |c| c.type_ == AbnormalConditionType::Accepted && c.status == ConditionStatus::True
        ),
        "admitted by kdiag: {st:#?}"
    );
    let untouched = abnormals.get("finished").await.unwrap().status.unwrap();
    assert_eq!(untouched.phase, Some(AbnormalPhase::Succeeded));
    assert!(
        untouched
            .conditions
            .iter()
            .all(|c| c.type_ != AbnormalConditionType::Accepted),
        "kdiag leaves an Abnormal Kube Diagnoser finished as it was: {untouched:#?}"
    );
    agent.stop().await;
}
