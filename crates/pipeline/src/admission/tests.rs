use std::collections::BTreeMap;

use kdiag_api::*;
use serde_json::json;

use super::*;

struct Known(BTreeMap<(Stage, String), ProcessorEndpoint>);

impl Registry for Known {
    fn get(&self, stage: Stage, name: &NamespacedName) -> Option<ProcessorEndpoint> {
        self.0.get(&(stage, name.to_string())).cloned()
    }
    fn names(&self, stage: Stage) -> Vec<String> {
        self.0
            .keys()
            .filter(|(s, _)| *s == stage)
            .map(|(_, n)| n.clone())
            .collect()
    }
    fn builtins(&self) -> Vec<&'static str> {
        vec!["pod-collector"]
    }
}

fn registry() -> Known {
    let mut m = BTreeMap::new();
    m.insert(
        (
            Stage::InformationCollecting,
            "kube-diagnoser/pod-collector".to_owned(),
        ),
        ProcessorEndpoint::default(),
    );
    m.insert(
        (
            Stage::InformationCollecting,
            "kube-diagnoser/not-built-in".to_owned(),
        ),
        ProcessorEndpoint::default(),
    );
    m.insert(
        (Stage::Diagnosing, "kube-diagnoser/remote".to_owned()),
        ProcessorEndpoint {
            external_ip: Some("10.0.0.1".into()),
            external_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80)),
            ..Default::default()
        },
    );
    Known(m)
}

fn abnormal(spec: serde_json::Value) -> Abnormal {
    serde_json::from_value(
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "a", "namespace": "team"}, "spec": spec}),
    )
    .unwrap()
}

/// `decide` with no stand-in candidates.
fn decided(
    a: &Abnormal,
    registry: &dyn Registry,
    pod: &PodLookup,
    waited: Duration,
    pod_wait: Duration,
) -> Decision {
    decide(
        a,
        registry,
        &Facts {
            node_exists: None,
            pod: pod.clone(),
            stand_ins: StandIns::default(),
            waited,
            pod_wait,
        },
    )
}

/// The node an Admit routes to.
fn admitted_to(d: &Decision) -> Option<&str> {
    match d {
        Decision::Admit(route) => Some(&route.routing.node),
        _ => None,
    }
}

fn reject_reason(a: &Abnormal) -> (&'static str, String) {
    match decided(
        a,
        &registry(),
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    ) {
        Decision::Reject { reason, message } => (reason, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn an_abnormal_with_a_node_and_known_processors_is_admitted_to_that_node() {
    let a = abnormal(
        json!({"nodeName": "n1", "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-collector"}],
        "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "remote"}]}),
    );
    let d = decided(
        &a,
        &registry(),
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let Decision::Admit(route) = d else {
        panic!("{d:?}")
    };
    assert_eq!(route.routing.node, "n1");
    assert_eq!(route.routing.stand_in, None);
    assert_eq!(
        route.collectors, a.spec.assigned_information_collectors,
        "the processors are its own"
    );
}

#[test]
fn an_abnormal_without_node_or_pod_is_rejected_with_what_to_set() {
    let (reason, message) = reject_reason(&abnormal(json!({})));
    assert_eq!(reason, "MissingTarget");
    assert!(message.contains("spec.nodeName") && message.contains("spec.podReference"));
}

#[test]
fn without_fan_out_an_abnormal_for_every_node_is_told_how_to_get_it() {
    // decide() sees such an Abnormal only when the controller does not fan out
    // (--fan-out-max-nodes=0); the message says so.
    for release in ["v0.1.0", "v0.1.5"] {
        let (reason, message) = reject_reason(&of_release(release, json!({})));
        assert_eq!(reason, "MissingTarget");
        assert!(
            message.contains("ran such an Abnormal on every node")
                && message.contains("--fan-out-max-nodes=0"),
            "{message}"
        );
    }
}

#[test]
fn an_unregistered_processor_does_not_reject_the_abnormal_as_in_kube_diagnoser() {
    let a = abnormal(json!({"nodeName": "n", "assignedInformationCollectors": [
        {"namespace": "kube-diagnoser", "name": "podcollector"},
        {"namespace": "kube-diagnoser", "name": "pod-collector"}]}));
    let d = decided(
        &a,
        &registry(),
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    assert!(matches!(d, Decision::Admit(_)), "{d:?}");
}

#[test]
fn a_timeout_of_zero_means_the_default_and_a_negative_one_is_rejected() {
    let zero = abnormal(json!({"nodeName": "n",
        "commandExecutors": [{"command": ["ps"], "type": "Diagnoser", "timeoutSeconds": 0}],
        "profilers": [{"name": "p", "type": "Diagnoser", "go": {"source": "http://x/debug/pprof/heap"},
                       "timeoutSeconds": 0, "expirationSeconds": 0}]}));
    let d = decided(
        &zero,
        &registry(),
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    assert!(matches!(d, Decision::Admit(_)), "{d:?}");
    assert_eq!(zero.spec.command_executors[0].timeout(), 30);
    assert_eq!(zero.spec.profilers[0].timeout(), 30);
    assert_eq!(zero.spec.profilers[0].expiration(), 7200);
    let (reason, m) = reject_reason(&abnormal(
        json!({"nodeName": "n", "commandExecutors": [{"command": ["ps"], "type": "Diagnoser", "timeoutSeconds": -1}]}),
    ));
    assert_eq!(reason, "InvalidCommandExecutor");
    assert!(
        m.contains("timeoutSeconds is -1") && m.contains("0 or left out for 30"),
        "{m}"
    );
}

#[test]
fn a_processor_without_namespace_is_looked_up_in_the_abnormals_namespace() {
    let mut known = registry();
    known.0.insert(
        (Stage::InformationCollecting, "team/not-built-in".to_owned()),
        ProcessorEndpoint::default(),
    );
    let d = decided(
        &abnormal(
            json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "not-built-in"}]}),
        ),
        &known,
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let Decision::Reject { message, .. } = d else {
        panic!("{d:?}")
    };
    assert!(message.contains("team/not-built-in"), "{message}");
}

#[test]
fn a_registration_without_address_must_name_a_built_in() {
    let (reason, message) = reject_reason(&abnormal(
        json!({"nodeName": "n", "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "not-built-in"}]}),
    ));
    assert_eq!(reason, "UnknownBuiltinProcessor");
    assert!(message.contains("built-ins: pod-collector"), "{message}");
}

#[test]
fn malformed_command_executors_are_rejected() {
    let (reason, m) = reject_reason(&abnormal(
        json!({"nodeName": "n", "commandExecutors": [{"command": [], "type": "Diagnoser"}]}),
    ));
    assert_eq!(reason, "InvalidCommandExecutor");
    assert!(
        m.contains("spec.commandExecutors[0].command is empty"),
        "{m}"
    );
    let (_, m) = reject_reason(&abnormal(
        json!({"nodeName": "n", "commandExecutors": [{"command": ["ps aux"], "type": "Diagnoser"}]}),
    ));
    assert!(m.contains("never run through a shell"), "{m}");
    let (_, m) = reject_reason(&abnormal(
        json!({"nodeName": "n", "commandExecutors": [{"command": ["ps"], "type": "Diagnoser", "timeoutSeconds": 3601}]}),
    ));
    assert!(m.contains("timeoutSeconds is 3601"), "{m}");
}

#[test]
fn malformed_profilers_are_rejected() {
    let (reason, m) = reject_reason(&abnormal(
        json!({"nodeName": "n", "profilers": [{"name": "p", "type": "Diagnoser"}]}),
    ));
    assert_eq!(reason, "InvalidProfiler");
    assert!(m.contains("exactly one of go and java"), "{m}");
    for source in ["tmp/x", "file://tmp/x", "ftp://x/heap"] {
        let (_, m) = reject_reason(&abnormal(
            json!({"nodeName": "n", "profilers": [{"name": "p", "type": "Diagnoser", "go": {"source": source}}]}),
        ));
        assert!(
            m.contains("must be an http(s) URL") && m.contains("absolute path"),
            "{source}: {m}"
        );
    }
    let (_, m) = reject_reason(&abnormal(json!({"nodeName": "n", "profilers": [
        {"name": "p", "type": "Diagnoser", "go": {"source": "http://x/debug/pprof/heap"}},
        {"name": "p", "type": "Diagnoser", "go": {"source": "http://x/debug/pprof/heap"}}]})));
    assert!(m.contains("used twice"), "{m}");
    let (_, m) = reject_reason(&abnormal(json!({"nodeName": "n", "profilers": [
        {"name": "p", "type": "Diagnoser", "java": {"type": "Arthas", "pid": 0}}]})));
    assert!(m.contains("java.pid must be the host pid"), "{m}");
    let (_, m) = reject_reason(&abnormal(json!({"nodeName": "n", "profilers": [
        {"name": "p", "type": "Diagnoser", "java": {"type": "Arthas"}}]})));
    assert!(m.contains("names no JVM"), "{m}");
}

#[test]
fn a_go_profiler_may_name_a_pprof_file_on_the_node_as_in_kube_diagnoser() {
    for source in [
        "/var/run/pprof/heap.pprof",
        "file:///var/run/pprof/heap.pprof",
    ] {
        let a = abnormal(
            json!({"nodeName": "n1", "profilers": [{"name": "p", "type": "Diagnoser", "go": {"source": source}}]}),
        );
        let d = decided(
            &a,
            &registry(),
            &PodLookup::NotNeeded,
            Duration::ZERO,
            Duration::from_secs(60),
        );
        assert_eq!(admitted_to(&d), Some("n1"), "{source}: {d:?}");
    }
}

#[test]
fn a_pod_abnormal_without_processors_gets_the_registered_part_of_the_triage() {
    let a = abnormal(json!({"podReference": {"name": "web"}}));
    let triage = Triage {
        collectors: vec![
            NamespacedName::new("kube-diagnoser", "pod-collector"),
            NamespacedName::new("kube-diagnoser", "gone"),
        ],
        diagnosers: vec![NamespacedName::new("kube-diagnoser", "remote")],
    };
    let t = with_triage(&a, &triage, &registry()).unwrap();
    assert_eq!(
        t.spec.assigned_information_collectors,
        [NamespacedName::new("kube-diagnoser", "pod-collector")]
    );
    assert_eq!(
        t.spec.assigned_diagnosers,
        [NamespacedName::new("kube-diagnoser", "remote")]
    );
    let named = abnormal(
        json!({"podReference": {"name": "web"}, "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "remote"}]}),
    );
    assert!(
        with_triage(&named, &triage, &registry()).is_none(),
        "a user's choice is kept"
    );
    assert!(
        with_triage(&abnormal(json!({"nodeName": "n"})), &triage, &registry()).is_none(),
        "a node is not a pod"
    );
}

#[test]
fn a_pod_reference_resolves_to_the_pods_node() {
    let a = abnormal(json!({"podReference": {"name": "web"}}));
    let d = decided(
        &a,
        &registry(),
        &PodLookup::Found {
            node: Some("n7".into()),
            unschedulable: false,
        },
        Duration::ZERO,
        Duration::from_secs(60),
    );
    assert_eq!(admitted_to(&d), Some("n7"));
}

#[test]
fn a_missing_pod_is_waited_for_then_rejected() {
    let a = abnormal(json!({"podReference": {"name": "web"}}));
    let wait = Duration::from_secs(60);
    assert!(matches!(
        decided(
            &a,
            &registry(),
            &PodLookup::Missing,
            Duration::from_secs(10),
            wait
        ),
        Decision::Wait { .. }
    ));
    let Decision::Reject { reason, message } = decided(
        &a,
        &registry(),
        &PodLookup::Missing,
        Duration::from_secs(61),
        wait,
    ) else {
        panic!()
    };
    assert_eq!(reason, "PodNotFound");
    assert!(message.contains("team/web"), "{message}");
}

#[test]
fn an_unscheduled_pod_is_waited_for_then_rejected() {
    let a = abnormal(json!({"podReference": {"namespace": "x", "name": "web"}}));
    let pod = PodLookup::Found {
        node: None,
        unschedulable: true,
    };
    assert!(matches!(
        decided(
            &a,
            &registry(),
            &pod,
            Duration::from_secs(1),
            Duration::from_secs(60)
        ),
        Decision::Wait { .. }
    ));
    let Decision::Reject { reason, .. } = decided(
        &a,
        &registry(),
        &pod,
        Duration::from_secs(60),
        Duration::from_secs(60),
    ) else {
        panic!()
    };
    assert_eq!(
        reason, "PodNotScheduled",
        "pod-collector needs the pod's node"
    );
}

fn triaged_pod(extra: serde_json::Value) -> Abnormal {
    let mut spec = json!({"podReference": {"namespace": "x", "name": "big"},
        "assignedInformationCollectors": [
            {"namespace": "kube-diagnoser", "name": "pod-detail-collector"},
            {"namespace": "kube-diagnoser", "name": "process-collector"}],
        "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "pod-triage-diagnoser"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    abnormal(spec)
}

struct Anything;

impl Registry for Anything {
    fn get(&self, _: Stage, _: &NamespacedName) -> Option<ProcessorEndpoint> {
        Some(ProcessorEndpoint::default())
    }
    fn names(&self, _: Stage) -> Vec<String> {
        vec![]
    }
    fn builtins(&self) -> Vec<&'static str> {
        vec![
            "pod-detail-collector",
            "process-collector",
            "pod-triage-diagnoser",
            "signal-recoverer",
        ]
    }
}

fn unschedulable() -> PodLookup {
    PodLookup::Found {
        node: None,
        unschedulable: true,
    }
}

fn facts(pod: PodLookup, waited: Duration, stand_ins: &[&str]) -> Facts {
    Facts {
        node_exists: None,
        pod,
        stand_ins: StandIns {
            agent_nodes: stand_ins.iter().map(|n| n.to_string()).collect(),
            ready_nodes: vec![],
        },
        waited,
        pod_wait: Duration::from_secs(60),
    }
}

#[test]
fn an_unschedulable_pods_triage_is_run_at_once_by_another_node_with_only_apiserver_collectors() {
    let a = triaged_pod(json!({}));
    let f = facts(unschedulable(), Duration::ZERO, &["n2"]);
    assert!(needs_stand_ins(&a, &f));
    let d = decide(&a, &Anything, &f);
    let Decision::Admit(route) = d else {
        panic!("{d:?}")
    };
    assert_eq!(route.routing.node, "n2");
    let stand_in = route.routing.stand_in.clone().unwrap();
    assert_eq!(stand_in.pod, "x/big");
    assert!(
        stand_in.why.contains("no node that fits"),
        "{}",
        stand_in.why
    );
    assert_eq!(stand_in.left_out, ["process-collector"]);
    assert_eq!(
        route.collectors,
        vec![NamespacedName::new(
            "kube-diagnoser",
            "pod-detail-collector"
        )],
        "node-local collectors are left out"
    );
    assert_eq!(route.diagnosers, a.spec.assigned_diagnosers);
    assert_eq!(
        route.routing.accepted_message(),
        "routed to node n2 to stand in for unscheduled pod x/big: it is on no node (the scheduler found no node that fits it); only collectors that read the apiserver run (left out: process-collector)"
    );
}

#[test]
fn a_pod_no_scheduler_placed_is_triaged_elsewhere_once_the_wait_is_over() {
    let a = triaged_pod(json!({}));
    let pending = PodLookup::Found {
        node: None,
        unschedulable: false,
    };
    let early = facts(pending.clone(), Duration::from_secs(5), &[]);
    assert!(!needs_stand_ins(&a, &early), "no listing while waiting");
    assert!(matches!(
        decide(&a, &Anything, &early),
        Decision::Wait {
            reason: "WaitingForPod",
            ..
        }
    ));
    let late = facts(pending, Duration::from_secs(60), &["n2"]);
    assert!(needs_stand_ins(&a, &late));
    let d = decide(&a, &Anything, &late);
    assert_eq!(admitted_to(&d), Some("n2"));
}

#[test]
fn without_a_node_to_stand_in_it_waits_then_is_rejected_saying_what_to_check() {
    let a = triaged_pod(json!({}));
    let d = decide(&a, &Anything, &facts(unschedulable(), Duration::ZERO, &[]));
    assert!(
        matches!(
            d,
            Decision::Wait {
                reason: "WaitingForNode",
                ..
            }
        ),
        "{d:?}"
    );
    let d = decide(
        &a,
        &Anything,
        &facts(unschedulable(), Duration::from_secs(60), &[]),
    );
    let Decision::Reject { reason, message } = d else {
        panic!("{d:?}")
    };
    assert_eq!(reason, "NoNodeToRunOn");
    assert!(message.contains("kdiag-agent DaemonSet"), "{message}");
}

#[test]
fn nothing_that_acts_on_a_node_ever_runs_on_a_stand_in() {
    let a = triaged_pod(
        json!({"assignedRecoverers": [{"namespace": "kube-diagnoser", "name": "signal-recoverer"}]}),
    );
    assert!(!can_stand_in(&a));
    let f = facts(unschedulable(), Duration::ZERO, &["n2"]);
    assert!(!needs_stand_ins(&a, &f));
    assert!(matches!(
        decide(&a, &Anything, &f),
        Decision::Wait {
            reason: "WaitingForPod",
            ..
        }
    ));
}

#[test]
fn a_scheduled_pod_or_a_named_node_never_needs_a_stand_in() {
    let a = triaged_pod(json!({}));
    let scheduled = PodLookup::Found {
        node: Some("n1".into()),
        unschedulable: false,
    };
    assert!(!needs_stand_ins(
        &a,
        &facts(scheduled, Duration::from_secs(90), &[])
    ));
    assert!(!needs_stand_ins(
        &a,
        &facts(PodLookup::Missing, Duration::from_secs(90), &[])
    ));
    let named = triaged_pod(json!({"nodeName": "n1"}));
    assert!(!needs_stand_ins(
        &named,
        &facts(unschedulable(), Duration::ZERO, &[])
    ));
}

#[test]
fn the_stand_in_is_an_agents_node_else_a_ready_one_and_stable_per_abnormal() {
    let both = StandIns {
        agent_nodes: vec!["b".to_owned(), "a".to_owned()],
        ready_nodes: vec!["c".to_owned()],
    };
    let ready_only = StandIns {
        agent_nodes: vec![],
        ready_nodes: vec!["c".to_owned()],
    };
    let first = choose_stand_in(&both, "x/one").unwrap();
    assert!(both.agent_nodes.contains(&first));
    assert_eq!(choose_stand_in(&both, "x/one").unwrap(), first);
    assert_eq!(choose_stand_in(&ready_only, "x/one").as_deref(), Some("c"));
    assert_eq!(choose_stand_in(&StandIns::default(), "x/one"), None);
    let spread: std::collections::BTreeSet<String> = (0..20)
        .map(|i| choose_stand_in(&both, &format!("x/{i}")).unwrap())
        .collect();
    assert_eq!(spread.len(), 2, "different Abnormals use different nodes");
}

/// `abnormal` with a JSON merge patch applied, as the apiserver would.
fn patched(abnormal: &Abnormal, patch: &serde_json::Value) -> Abnormal {
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match patch {
            serde_json::Value::Object(p) => {
                if !target.is_object() {
                    *target = json!({});
                }
                let t = target.as_object_mut().unwrap();
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(json!(null)), v);
                    }
                }
            }
            other => *target = other.clone(),
        }
    }
    let mut v = serde_json::to_value(abnormal).unwrap();
    merge(&mut v, patch);
    serde_json::from_value(v).unwrap()
}

#[test]
fn the_routing_is_read_back_from_what_the_routing_patch_wrote() {
    let a = triaged_pod(json!({}));
    assert_eq!(Routing::recorded(&a), None, "not routed yet");
    let Decision::Admit(route) = decide(
        &a,
        &Anything,
        &facts(unschedulable(), Duration::ZERO, &["n2"]),
    ) else {
        panic!()
    };
    let routed = patched(&a, &route.patch(&a));
    assert_eq!(Routing::recorded(&routed), Some(route.routing.clone()));
    assert_eq!(
        routed.spec.assigned_information_collectors,
        route.collectors
    );
    assert_eq!(
        crate::plan_changed(&routed),
        None,
        "the plan recorded is the routed spec's, with the processors admission chose"
    );
    assert_eq!(
        routed
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::PLAN_ANNOTATION)),
        Some(&crate::fingerprint(&routed))
    );
    let plain = abnormal(json!({"nodeName": "n1"}));
    let Decision::Admit(route) = decided(
        &plain,
        &registry(),
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    ) else {
        panic!()
    };
    let patch = route.patch(&plain);
    assert!(
        patch["spec"].get("assignedInformationCollectors").is_none(),
        "processors unchanged are not written: {patch}"
    );
    let routed = patched(&plain, &patch);
    assert_eq!(
        Routing::recorded(&routed),
        Some(Routing {
            node: "n1".into(),
            stand_in: None
        })
    );
    assert_eq!(
        Routing::recorded(&routed).unwrap().accepted_message(),
        "routed to node n1"
    );
}

#[test]
fn a_node_label_that_disagrees_with_spec_node_name_is_no_routing() {
    let mut a = abnormal(json!({"nodeName": "n1"}));
    a.metadata.labels = Some([(labels::NODE_LABEL.to_owned(), "n2".to_owned())].into());
    assert_eq!(Routing::recorded(&a), None);
    let long = format!("{}.example.com", "a".repeat(70));
    let mut a = abnormal(json!({ "nodeName": long }));
    a.metadata.labels = Some(
        [(
            labels::NODE_LABEL.to_owned(),
            labels::node_label_value(&long),
        )]
        .into(),
    );
    assert_eq!(Routing::recorded(&a).unwrap().node, long);
}

#[test]
fn the_routing_patch_is_conditional_on_the_version_decided_on() {
    let mut a = abnormal(json!({"nodeName": "n1"}));
    a.metadata.resource_version = Some("42".into());
    let Decision::Admit(route) = decided(
        &a,
        &registry(),
        &PodLookup::NotNeeded,
        Duration::ZERO,
        Duration::from_secs(60),
    ) else {
        panic!()
    };
    assert_eq!(route.patch(&a)["metadata"]["resourceVersion"], json!("42"));
}

#[test]
fn accepting_starts_collection_once_with_the_routings_message() {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    );
    let mut status = AbnormalStatus {
        reason: "WaitingForPod".into(),
        message: "pod team/web does not exist yet".into(),
        ..Default::default()
    };
    let routing = Routing {
        node: "n1".into(),
        stand_in: None,
    };
    accept(&mut status, &routing, &now);
    assert_eq!(status.phase, Some(AbnormalPhase::InformationCollecting));
    assert_eq!(status.start_time, Some(now.clone()));
    assert!(status.reason.is_empty() && status.message.is_empty());
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.conditions[0].message, "routed to node n1");
    assert_eq!(status.conditions[0].status, ConditionStatus::True);

    let mut waiting = AbnormalStatus::default();
    assert!(wait(&mut waiting, "WaitingForPod", "m"));
    assert!(
        !wait(&mut waiting, "WaitingForPod", "m"),
        "nothing to write"
    );
    reject(&mut waiting, "PodNotFound", "gone", &now);
    assert_eq!(waiting.phase, Some(AbnormalPhase::Failed));
    assert_eq!(waiting.conditions[0].status, ConditionStatus::False);
}

#[test]
fn the_registered_part_of_the_triage_keeps_its_order() {
    let triage = Triage::default();
    let registered = triage
        .registered(&|stage, n| stage == Stage::Diagnosing || n.name != "container-collector");
    assert_eq!(
        registered
            .collectors
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        [
            "pod-detail-collector",
            "process-collector",
            "kernel-log-collector"
        ]
    );
    assert_eq!(registered.diagnosers, triage.diagnosers);
    assert_eq!(
        triage.registered(&|_, _| false),
        Triage {
            collectors: vec![],
            diagnosers: vec![]
        }
    );
}

#[test]
fn an_abnormal_for_a_node_that_does_not_exist_is_rejected_naming_the_node_and_what_to_do() {
    let a = abnormal(json!({"nodeName": "nod-1"}));
    let facts = |exists| Facts {
        node_exists: exists,
        pod: PodLookup::NotNeeded,
        stand_ins: StandIns::default(),
        waited: Duration::ZERO,
        pod_wait: Duration::from_secs(60),
    };
    let Decision::Reject { reason, message } = decide(&a, &registry(), &facts(Some(false))) else {
        panic!("not a rejection")
    };
    assert_eq!(reason, "NodeNotFound");
    assert!(message.contains("\"nod-1\""), "{message}");
    assert!(message.contains("kubectl get nodes"), "{message}");
    assert_eq!(
        admitted_to(&decide(&a, &registry(), &facts(Some(true)))),
        Some("nod-1")
    );
    assert_eq!(
        admitted_to(&decide(&a, &registry(), &facts(None))),
        Some("nod-1"),
        "not looked up: not held against it"
    );
}

#[test]
fn the_stand_in_is_pinned_so_it_survives_restarts_and_upgrades() {
    let nodes = vec!["n3".to_owned(), "n1".to_owned(), "n2".to_owned()];
    let agents = StandIns {
        agent_nodes: nodes.clone(),
        ready_nodes: vec![],
    };
    let chosen = |abnormal: &str| choose_stand_in(&agents, abnormal).unwrap();
    // FNV-1a of the name modulo 3, over the nodes in name order.
    assert_eq!(chosen("shop/web-oom"), "n3");
    assert_eq!(chosen("shop/db-oom"), "n2");
    assert_eq!(chosen("x/one"), "n1");
    let ready_only = StandIns {
        agent_nodes: vec![],
        ready_nodes: nodes,
    };
    assert_eq!(choose_stand_in(&ready_only, "x/two").unwrap(), "n3");
}

#[test]
fn a_processor_registered_in_another_tenants_namespace_is_refused() {
    let (reason, message) = reject_reason(&abnormal(
        json!({"nodeName": "n", "assignedDiagnosers": [{"namespace": "team-b", "name": "their-plugin"}]}),
    ));
    assert_eq!(reason, "ProcessorOutOfNamespace");
    assert!(
        message.contains("team-b/their-plugin")
            && message.contains("only processors registered in team or in kube-diagnoser"),
        "{message}"
    );
    assert!(registration_in_scope("kube-diagnoser", "team"));
    assert!(registration_in_scope("team", "team"));
    assert!(!registration_in_scope("team-b", "team"));
}

fn of_release(release: &str, spec: serde_json::Value) -> Abnormal {
    let mut a = abnormal(spec);
    a.metadata.annotations = Some(
        [(
            kdiag_api::labels::KUBE_DIAGNOSER_VERSION_ANNOTATION.to_owned(),
            release.to_owned(),
        )]
        .into(),
    );
    a
}

/// A built-in and a plugin collector, a tenant's collector in another namespace, a diagnoser and
/// a recoverer.
fn with_recoverer() -> Known {
    let remote = || ProcessorEndpoint {
        external_ip: Some("10.0.0.1".into()),
        external_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80)),
        ..Default::default()
    };
    let mut m = BTreeMap::new();
    for (stage, name, endpoint) in [
        (
            Stage::InformationCollecting,
            "kube-diagnoser/pod-collector",
            ProcessorEndpoint::default(),
        ),
        (
            Stage::InformationCollecting,
            "kube-diagnoser/a-plugin",
            remote(),
        ),
        (Stage::InformationCollecting, "other-team/theirs", remote()),
        (Stage::Diagnosing, "kube-diagnoser/remote", remote()),
        (Stage::Recovering, "kube-diagnoser/restarter", remote()),
    ] {
        m.insert((stage, name.to_owned()), endpoint);
    }
    Known(m)
}

#[test]
fn under_v0_1_0_to_v0_1_3_rules_an_empty_list_means_every_registered_processor_it_may_use() {
    for release in ["v0.1.0", "v0.1.1", "0.1.2", "v0.1.3"] {
        let a = of_release(
            release,
            json!({"nodeName": "n", "assignedDiagnosers": [{"name": "remote", "namespace": "kube-diagnoser"}]}),
        );
        let filled = with_every_registered(&a, &with_recoverer()).expect(release);
        let names = |l: &[NamespacedName]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&filled.spec.assigned_information_collectors),
            ["kube-diagnoser/a-plugin", "kube-diagnoser/pod-collector"],
            "{release}: sorted, and not another tenant's"
        );
        assert_eq!(
            names(&filled.spec.assigned_diagnosers),
            ["kube-diagnoser/remote"],
            "{release}: a list given is kept"
        );
        assert_eq!(
            names(&filled.spec.assigned_recoverers),
            ["kube-diagnoser/restarter"]
        );
        // What admission routes with is written: the patch carries all three lists.
        let route = match decided(
            &filled,
            &with_recoverer(),
            &PodLookup::NotNeeded,
            Duration::ZERO,
            Duration::from_secs(60),
        ) {
            Decision::Admit(route) => route,
            other => panic!("{other:?}"),
        };
        let routed = patched(&a, &route.patch(&a));
        assert_eq!(routed.spec, filled.spec);
    }
}

#[test]
fn a_stage_whose_skip_flag_is_set_gets_no_processors_under_old_rules() {
    let a = of_release(
        "v0.1.1",
        json!({"nodeName": "n", "skipDiagnosis": true, "skipRecovery": true}),
    );
    let filled = with_every_registered(&a, &with_recoverer()).unwrap();
    assert_eq!(filled.spec.assigned_information_collectors.len(), 2);
    assert!(filled.spec.assigned_diagnosers.is_empty());
    assert!(filled.spec.assigned_recoverers.is_empty());
}

#[test]
fn under_v0_1_4_rules_or_kdiags_an_empty_list_runs_nothing() {
    let spec = json!({"nodeName": "n"});
    for a in [
        abnormal(spec.clone()),
        of_release("v0.1.4", spec.clone()),
        of_release("v0.1.6", spec.clone()),
    ] {
        assert!(with_every_registered(&a, &with_recoverer()).is_none());
    }
}

#[test]
fn a_kube_diagnoser_version_that_names_no_release_is_rejected_with_the_accepted_values() {
    for bad in ["v0.2.0", "0.1.7", "latest", ""] {
        let (reason, message) = reject_reason(&of_release(bad, json!({"nodeName": "n"})));
        assert_eq!(reason, "InvalidKubeDiagnoserVersion", "{bad:?}");
        assert!(
            message.contains("v0.1.0 to v0.1.6")
                && message.contains("kdiag.io/kube-diagnoser-version"),
            "{message}"
        );
    }
}
