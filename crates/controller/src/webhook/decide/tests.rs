use super::*;
use serde_json::json;

/// Registrations as config/deploy has them (built-ins in kube-diagnoser), plus a plugin.
struct Registered;

impl Registry for Registered {
    fn get(&self, _stage: Stage, name: &NamespacedName) -> Option<ProcessorEndpoint> {
        if name.name == "my-plugin" {
            return Some(ProcessorEndpoint {
                external_ip: Some("10.0.0.9".into()),
                external_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80),
                ),
                ..Default::default()
            });
        }
        Some(ProcessorEndpoint::default())
    }
    fn names(&self, stage: Stage) -> Vec<String> {
        match stage {
            Stage::InformationCollecting => vec!["kube-diagnoser/pod-detail-collector".into()],
            Stage::Diagnosing => vec!["kube-diagnoser/pod-triage-diagnoser".into()],
            Stage::Recovering => vec!["kube-diagnoser/signal-recoverer".into()],
        }
    }
    fn builtins(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

fn abnormal(namespace: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
           "metadata": {"name": "a", "namespace": namespace}, "spec": spec})
}

fn check(kind: Kind, operation: &str, user: &str, object: &serde_json::Value) -> Verdict {
    check_update(kind, operation, user, None, object)
}

fn check_update(
    kind: Kind,
    operation: &str,
    user: &str,
    old: Option<&serde_json::Value>,
    object: &serde_json::Value,
) -> Verdict {
    let exempt = vec!["system:serviceaccount:kube-diagnoser:kdiag-controller".to_owned()];
    let triage = Triage::default();
    decide(
        &Request {
            kind,
            operation,
            user,
            object: Some(object),
            old_object: old,
        },
        &Setting {
            exempt: &exempt,
            registry: &Registered,
            triage: &triage,
        },
    )
}

fn rights(v: Verdict) -> Vec<String> {
    match v {
        Verdict::Check(needs) => needs
            .iter()
            .map(|n| {
                let r = &n.right;
                format!(
                    "{} {}/{} ns={} name={}",
                    r.verb, r.resource, r.subresource, r.namespace, r.name
                )
            })
            .collect(),
        other => panic!("expected a check, got {other:?}"),
    }
}

fn becauses(v: Verdict) -> Vec<String> {
    match v {
        Verdict::Check(needs) => needs.into_iter().map(|n| n.because).collect(),
        other => panic!("expected a check, got {other:?}"),
    }
}

#[test]
fn read_only_collection_about_a_pod_needs_get_pods_log_in_the_pods_namespace() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"namespace": "team-b", "name": "web"},
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}],
               "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "pod-triage-diagnoser"}]}),
    );
    assert_eq!(
        rights(check(Kind::Abnormal, "CREATE", "alice", &a)),
        ["get pods/log ns=team-b name=web"]
    );
}

#[test]
fn a_pod_reference_without_a_namespace_is_in_the_abnormals_namespace() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"name": "web"},
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}]}),
    );
    assert_eq!(
        rights(check(Kind::Abnormal, "CREATE", "alice", &a)),
        ["get pods/log ns=team-a name=web"]
    );
}

#[test]
fn signals_and_profilers_against_a_pod_need_create_pods_exec_there() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "assignedRecoverers": [{"namespace": "kube-diagnoser", "name": "signal-recoverer"}],
               "profilers": [{"name": "heap", "type": "Diagnoser", "java": {"type": "Arthas"}}]}),
    );
    let v = check(Kind::Abnormal, "CREATE", "alice", &a);
    let because = becauses(check(Kind::Abnormal, "CREATE", "alice", &a));
    assert_eq!(rights(v), ["create pods/exec ns=team-a name=web"]);
    assert_eq!(
        because,
        ["it runs signal-recoverer against pod team-a/web"],
        "one right, the first reason"
    );
}

#[test]
fn commands_run_on_the_host_and_need_the_node_right_even_about_a_pod() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "commandExecutors": [{"command": ["ps", "aux"], "type": "InformationCollector"}]}),
    );
    let v = check(Kind::Abnormal, "CREATE", "alice", &a);
    assert_eq!(rights(v), ["get nodes/proxy ns= name="]);
    let because = becauses(check(Kind::Abnormal, "CREATE", "alice", &a));
    assert!(
        because[0].contains("command-executor \"ps aux\""),
        "{because:?}"
    );
}

#[test]
fn node_wide_built_ins_host_pids_and_node_files_need_the_node_right() {
    for spec in [
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "process-collector"}]}),
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "profilers": [{"name": "heap", "type": "Diagnoser", "java": {"type": "Arthas", "pid": 1}}]}),
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "profilers": [{"name": "heap", "type": "Diagnoser", "go": {"source": "/var/run/pprof/heap"}}]}),
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}],
               "context": {"signalRecovery": [{"pid": 1, "signal": 9}]}}),
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "no-such-built-in"}]}),
    ] {
        let r = rights(check(
            Kind::Abnormal,
            "CREATE",
            "alice",
            &abnormal("team-a", spec.clone()),
        ));
        assert!(
            r.contains(&"get nodes/proxy ns= name=".to_owned()),
            "{spec}: {r:?}"
        );
    }
}

#[test]
fn a_pod_abnormal_naming_a_node_wide_collector_says_what_a_tenant_may_name_instead() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"namespace": "team-a", "name": "web"},
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "container-collector"}]}),
    );
    let because = becauses(check(Kind::Abnormal, "CREATE", "alice", &a));
    assert!(
        because.iter().any(
            |b| b.contains("container-collector, which reads the whole node")
                && b.contains("--collector pod-detail-collector --diagnoser pod-triage-diagnoser")
        ),
        "{because:?}"
    );
    // About a node, there is no pod to diagnose instead.
    let n = abnormal(
        "team-a",
        json!({"nodeName": "n1",
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "container-collector"}]}),
    );
    let because = becauses(check(Kind::Abnormal, "CREATE", "alice", &n));
    assert!(
        because.iter().all(|b| !b.contains("--collector")),
        "{because:?}"
    );
}

#[test]
fn an_abnormal_about_a_node_needs_the_node_right_on_that_node() {
    for spec in [
        json!({"nodeName": "n1"}),
        json!({"nodeName": "n1",
               "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}]}),
    ] {
        assert_eq!(
            rights(check(
                Kind::Abnormal,
                "CREATE",
                "alice",
                &abnormal("team-a", spec)
            )),
            ["get nodes/proxy ns= name=n1"]
        );
    }
}

#[test]
fn the_pod_triage_needs_what_its_processors_need() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"namespace": "team-a", "name": "web"}}),
    );
    let v = check(Kind::Abnormal, "CREATE", "alice", &a);
    assert_eq!(
        rights(v),
        [
            "get pods/log ns=team-a name=web",
            "get nodes/proxy ns= name="
        ]
    );
    let because = becauses(check(Kind::Abnormal, "CREATE", "alice", &a));
    assert!(
        because[1].contains("the pod triage's container-collector"),
        "{because:?}"
    );
    assert!(
        because[1].contains("--collector pod-detail-collector --diagnoser pod-triage-diagnoser"),
        "a tenant is told how to diagnose its pod without node rights: {because:?}"
    );
}

#[test]
fn a_plugin_collector_reads_what_concerns_the_pod() {
    let a = abnormal(
        "team-a",
        json!({"podReference": {"name": "web"},
               "assignedInformationCollectors": [{"name": "my-plugin"}]}),
    );
    assert_eq!(
        rights(check(Kind::Abnormal, "CREATE", "alice", &a)),
        ["get pods/log ns=team-a name=web"]
    );
}

#[test]
fn kdiags_own_identities_are_not_checked() {
    let a = abnormal("team-a", json!({"nodeName": "n1"}));
    assert_eq!(
        check(
            Kind::Abnormal,
            "CREATE",
            "system:serviceaccount:kube-diagnoser:kdiag-controller",
            &a
        ),
        Verdict::Allow
    );
}

#[test]
fn the_spec_of_an_abnormal_cannot_change_but_its_other_metadata_can() {
    let old = abnormal("team-a", json!({"podReference": {"name": "web"}}));
    let mut new = old.clone();
    new["spec"]["podReference"]["namespace"] = json!("team-b");
    match check_update(Kind::Abnormal, "UPDATE", "alice", Some(&old), &new) {
        Verdict::Deny(m) => assert!(m.contains("spec of Abnormal team-a/a cannot change"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut labelled = old.clone();
    labelled["metadata"]["labels"] = json!({"mine": "yes"});
    assert_eq!(
        check_update(Kind::Abnormal, "UPDATE", "alice", Some(&old), &labelled),
        Verdict::Allow
    );
    let mut rerouted = old.clone();
    rerouted["metadata"]["labels"] = json!({(kdiag_api::labels::NODE_LABEL): "other"});
    assert!(matches!(
        check_update(Kind::Abnormal, "UPDATE", "alice", Some(&old), &rerouted),
        Verdict::Deny(_)
    ));
    // The plan admission froze is the controller's too: nobody else may set or change it.
    let mut replanned = old.clone();
    replanned["metadata"]["annotations"] = json!({(kdiag_api::labels::PLAN_ANNOTATION): "0"});
    match check_update(Kind::Abnormal, "UPDATE", "alice", Some(&old), &replanned) {
        Verdict::Deny(m) => assert!(m.contains("kdiag.io/plan"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        check_update(
            Kind::Abnormal,
            "UPDATE",
            "system:serviceaccount:kube-diagnoser:kdiag-controller",
            Some(&old),
            &new
        ),
        Verdict::Allow
    );
}

#[test]
fn a_tenants_event_source_needs_its_processors_rights_in_its_namespace() {
    let s = json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
        "metadata": {"name": "s", "namespace": "team-a"},
        "spec": {"sourceTemplate": {"type": "KubernetesEvent",
                  "kubernetesEventTemplate": {"regexp": {"reason": "BackOff"}}},
                 "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}],
                 "assignedRecoverers": [{"namespace": "kube-diagnoser", "name": "signal-recoverer"}]}});
    assert_eq!(
        rights(check(Kind::AbnormalSource, "CREATE", "alice", &s)),
        [
            "get pods/log ns=team-a name=",
            "create pods/exec ns=team-a name="
        ]
    );
}

#[test]
fn sources_that_may_act_on_nodes_or_every_namespace_need_the_node_right() {
    for (ns, template) in [
        (
            "team-a",
            json!({"type": "PrometheusAlert", "prometheusAlertTemplate": {"regexp": {"alertName": "x"}}}),
        ),
        (
            "kube-diagnoser",
            json!({"type": "KubernetesEvent", "kubernetesEventTemplate": {"regexp": {"reason": "x"}}}),
        ),
    ] {
        let s = json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
            "metadata": {"name": "s", "namespace": ns},
            "spec": {"sourceTemplate": template,
                     "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}]}});
        assert_eq!(
            rights(check(Kind::AbnormalSource, "CREATE", "alice", &s)),
            ["get nodes/proxy ns= name="],
            "{ns}"
        );
    }
}

#[test]
fn a_registration_needs_what_its_processor_does_within_its_namespace() {
    let reg = |ns: &str, name: &str, spec: serde_json::Value| json!({"metadata": {"name": name, "namespace": ns}, "spec": spec});
    let collector = Kind::Registration(Stage::InformationCollecting);
    let recoverer = Kind::Registration(Stage::Recovering);
    let cases = [
        (
            collector,
            reg("team-a", "pod-detail-collector", json!({})),
            "get pods/log ns=team-a name=",
        ),
        (
            collector,
            reg("team-a", "process-collector", json!({})),
            "get nodes/proxy ns= name=",
        ),
        (
            collector,
            reg(
                "team-a",
                "mine",
                json!({"externalIP": "10.0.0.1", "externalPort": 80}),
            ),
            "get pods/log ns=team-a name=",
        ),
        (
            recoverer,
            reg(
                "team-a",
                "mine",
                json!({"externalIP": "10.0.0.1", "externalPort": 80}),
            ),
            "create pods/exec ns=team-a name=",
        ),
        (
            collector,
            reg(
                "kube-diagnoser",
                "mine",
                json!({"externalIP": "10.0.0.1", "externalPort": 80}),
            ),
            "get pods/log ns= name=",
        ),
    ];
    for (kind, object, want) in cases {
        assert_eq!(
            rights(check(kind, "CREATE", "alice", &object)),
            [want],
            "{object}"
        );
    }
}

#[test]
fn an_unchanged_source_update_and_deletes_are_not_checked() {
    let s = json!({"metadata": {"name": "s", "namespace": "team-a"}, "spec": {"x": 1}});
    assert_eq!(
        check_update(Kind::AbnormalSource, "UPDATE", "alice", Some(&s), &s),
        Verdict::Allow
    );
    assert_eq!(check(Kind::Abnormal, "DELETE", "alice", &s), Verdict::Allow);
}

#[test]
fn an_object_kdiag_cannot_read_is_refused() {
    let bad = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"podReference": 5}});
    assert!(matches!(
        check(Kind::Abnormal, "CREATE", "alice", &bad),
        Verdict::Deny(_)
    ));
}

#[test]
fn every_built_in_is_classified() {
    let builtins = kdiag_runtime::builtin::Builtins::standard();
    for name in builtins.names() {
        assert!(
            POD_READS.contains(&name) || NODE_READS.contains(&name) || POD_ACTIONS.contains(&name),
            "{name} is in none of POD_READS, NODE_READS, POD_ACTIONS: say what it may do"
        );
    }
}

#[test]
fn a_new_abnormal_cannot_carry_kdiags_routing() {
    let mut a = abnormal(
        "team-a",
        json!({"podReference": {"name": "web"}, "nodeName": "n1"}),
    );
    a["metadata"]["labels"] = json!({(kdiag_api::labels::NODE_LABEL): "n1"});
    match check(Kind::Abnormal, "CREATE", "alice", &a) {
        Verdict::Deny(m) => assert!(m.contains(kdiag_api::labels::NODE_LABEL), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        check(
            Kind::Abnormal,
            "CREATE",
            "system:serviceaccount:kube-diagnoser:kdiag-controller",
            &a
        ),
        Verdict::Allow
    );
}

#[test]
fn under_old_kube_diagnoser_rules_every_registered_processor_admission_fills_in_is_checked() {
    let mut a = abnormal(
        "team-a",
        json!({"podReference": {"namespace": "team-a", "name": "web"}}),
    );
    a["metadata"]["annotations"] = json!({"kdiag.io/kube-diagnoser-version": "v0.1.0"});
    let because = becauses(check(
        Kind::Abnormal,
        "CREATE",
        "system:serviceaccount:team-a:dev",
        &a,
    ));
    assert!(
        because.iter().any(|b| b.contains("signal-recoverer")),
        "{because:?}"
    );
}
