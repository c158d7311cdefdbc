use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

const QUOTA: &str = "pods \"web-5d9f-b\" is forbidden: exceeded quota: tiny, requested: pods=1, used: pods=1, limited: pods=1";

fn deployment(conditions: Value) -> DeploymentFacts {
    DeploymentFacts {
        key: "shop/web".into(),
        deployment: Some(from(
            json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app"}]}}},
            "status": {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                "conditions": conditions}}),
        )),
        replica_sets: vec![
            from(
                json!({"metadata": {"name": "web-old", "namespace": "shop", "uid": "rs-0",
                "annotations": {"deployment.kubernetes.io/revision": "1"}},
                "spec": {"replicas": 0, "selector": {}}, "status": {"replicas": 0}}),
            ),
            from(
                json!({"metadata": {"name": "web-5d9f", "namespace": "shop", "uid": "rs-1",
                "annotations": {"deployment.kubernetes.io/revision": "2"}},
                "spec": {"replicas": 2, "selector": {}},
                "status": {"replicas": 1, "conditions": [{"type": "ReplicaFailure", "status": "True",
                    "reason": "FailedCreate", "message": QUOTA, "lastTransitionTime": "2026-12-01T10:00:00Z"}]}}),
            ),
        ],
        pods: vec![ready_pod("web-5d9f-a", "rs-1")],
        events: from(
            json!([{"metadata": {"name": "e1"}, "involvedObject": {"kind": "ReplicaSet", "name": "web-5d9f"},
            "reason": "FailedCreate", "count": 7, "lastTimestamp": "2026-12-01T10:01:00Z",
            "message": format!("Error creating: {QUOTA}")}]),
        ),
        quotas: vec![from(
            json!({"metadata": {"name": "tiny", "namespace": "shop"},
            "spec": {"hard": {"pods": "1"}}, "status": {"hard": {"pods": "1"}, "used": {"pods": "1"}}}),
        )],
        webhooks: Vec::new(),
    }
}

fn ready_pod(name: &str, owner: &str) -> Pod {
    from(
        json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-12-01T09:00:00Z",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": owner}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
}

fn waiting_pod(name: &str, owner: &str, reason: &str, message: &str) -> Pod {
    from(
        json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-12-01T09:00:00Z",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": owner}]},
        "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}}}]}}),
    )
}

#[test]
fn a_quota_without_room_names_the_replicaset_the_quota_and_what_it_lacks() {
    let c = deployment_stuck(&deployment(json!([]))).unwrap();
    assert_eq!(c.reason, "ResourceQuotaExceeded");
    assert_eq!(
        c.summary,
        "Deployment shop/web cannot create its pods (1 of 2 exist): its ReplicaSet shop/web-5d9f is refused by ResourceQuota shop/tiny, which has no room for pods (a pod asks 1, 1 of 1 used)"
    );
    let kinds: Vec<&str> = c.evidence.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ReplicaSetStatus",
            "Event",
            "ResourceQuota",
            "DeploymentStatus"
        ]
    );
    assert_eq!(c.evidence[2].object, "resourcequota/shop/tiny");
    assert_eq!(c.evidence[2].message, "hard pods=1; used pods=1");
    assert!(
        c.evidence[1]
            .message
            .starts_with("FailedCreate (7 time(s))")
    );
    assert!(
        c.suggestion.contains("resourcequota -n shop tiny"),
        "{}",
        c.suggestion
    );
}

#[test]
fn a_refusal_only_in_the_events_counts_while_pods_are_missing() {
    let mut f = deployment(json!([]));
    let rs = &mut f.replica_sets[1];
    rs.status.as_mut().unwrap().conditions = None;
    let c = deployment_stuck(&f).unwrap();
    assert_eq!(c.reason, "ResourceQuotaExceeded");
    assert_eq!(c.evidence[0].kind, "Event");
    // Once the ReplicaSet has its pods, an old FailedCreate is history.
    f.replica_sets[1].status.as_mut().unwrap().replicas = 2;
    f.pods.push(ready_pod("web-5d9f-b", "rs-1"));
    f.deployment
        .as_mut()
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .ready_replicas = Some(2);
    assert_eq!(deployment_stuck(&f), None);
}

#[test]
fn a_rollout_on_an_unready_pod_points_at_that_pods_own_cause_and_the_deadline() {
    let mut f = deployment(
        json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"web-5d9f\" has timed out progressing."}]),
    );
    f.replica_sets[1].status = Some(from(json!({"replicas": 2})));
    f.pods.push(waiting_pod(
        "web-5d9f-b",
        "rs-1",
        "CreateContainerConfigError",
        "configmap \"web-config\" not found",
    ));
    f.deployment
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .progress_deadline_seconds = Some(10);
    let c = deployment_stuck(&f).unwrap();
    assert_eq!(c.reason, "RolloutPodsNotReady");
    assert_eq!(
        c.summary,
        "Deployment shop/web has 1 of 2 pods ready: pod shop/web-5d9f-b is not ready: container app is waiting with CreateContainerConfigError: configmap \"web-config\" not found; it gave up after its progress deadline of 10 s (ReplicaSet \"web-5d9f\" has timed out progressing.)"
    );
    assert_eq!(c.evidence[0].object, "pod/shop/web-5d9f-b");
    assert!(
        c.suggestion
            .contains("kubectl diag run --pod shop/web-5d9f-b")
    );
}

#[test]
fn a_pod_of_an_older_revision_is_not_what_the_rollout_waits_for() {
    let mut f = deployment(json!([]));
    f.replica_sets[1].status = Some(from(json!({"replicas": 2})));
    f.pods.push(ready_pod("web-5d9f-b", "rs-1"));
    f.pods
        .push(waiting_pod("web-old-a", "rs-0", "ImagePullBackOff", "old"));
    f.deployment
        .as_mut()
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .ready_replicas = Some(2);
    assert_eq!(deployment_stuck(&f), None);
}

#[test]
fn a_deadline_with_nothing_else_found_is_its_own_cause() {
    let mut f = deployment(
        json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"web-5d9f\" has timed out progressing."}]),
    );
    f.replica_sets[1].status = Some(from(json!({"replicas": 2})));
    f.pods.push(ready_pod("web-5d9f-b", "rs-1"));
    let c = deployment_stuck(&f).unwrap();
    assert_eq!(c.reason, "ProgressDeadlineExceeded");
    assert!(c.summary.starts_with("Deployment shop/web stopped progressing: it gave up after its progress deadline of 600 s"), "{}", c.summary);
}

#[test]
fn a_missing_deployment_is_said_so() {
    let c = deployment_stuck(&DeploymentFacts {
        key: "shop/nope".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.reason, "DeploymentNotFound");
}

fn statefulset(created: i32, pods: Vec<Pod>, events: Value) -> StatefulSetFacts {
    StatefulSetFacts {
        key: "shop/db".into(),
        stateful_set: Some(from(
            json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"replicas": 3, "serviceName": "db", "selector": {}, "template": {}},
            "status": {"replicas": created, "readyReplicas": 0}}),
        )),
        pods,
        events: from(events),
        quotas: Vec::new(),
        webhooks: Vec::new(),
    }
}

#[test]
fn a_statefulset_waits_for_its_lowest_unready_ordinal() {
    let f = statefulset(
        1,
        vec![waiting_pod(
            "db-0",
            "ss",
            "CrashLoopBackOff",
            "back-off 40s",
        )],
        json!([]),
    );
    let c = statefulset_stuck(&f).unwrap();
    assert_eq!(c.reason, "RolloutPodsNotReady");
    assert!(
        c.summary.starts_with("StatefulSet shop/db has 0 of 3 pods ready: pod shop/db-0 is not ready: container app is waiting with CrashLoopBackOff"),
        "{}",
        c.summary
    );
    assert!(
        c.summary
            .ends_with("the 2 pod(s) after it are not created until it is ready"),
        "{}",
        c.summary
    );
}

#[test]
fn a_statefulset_whose_pod_is_denied_names_the_admission_that_said_no() {
    let f = statefulset(
        0,
        vec![],
        json!([{"metadata": {"name": "e"}, "involvedObject": {"kind": "StatefulSet", "name": "db"},
            "reason": "FailedCreate", "count": 3, "lastTimestamp": "2026-12-01T10:01:00Z",
            "message": "create Pod db-0 in StatefulSet db failed error: admission webhook \"policy.example.com\" denied the request: privileged containers are not allowed"}]),
    );
    let c = statefulset_stuck(&f).unwrap();
    assert_eq!(c.reason, "PodCreationDenied");
    assert_eq!(
        c.summary,
        "StatefulSet shop/db cannot create its pods (0 of 3 exist): it is refused by admission webhook \"policy.example.com\": privileged containers are not allowed"
    );
}
