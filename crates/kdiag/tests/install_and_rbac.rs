//! The install manifests against a real apiserver: they apply as documented, and the RBAC they
//! grant is enough (the other tests run the components with these very tokens) and no more.

mod common;

use common::*;
use kdiag_testenv::ControlPlane;

/// The tests of this file share one control plane and each applies config/deploy; two
/// `kubectl apply` runs at once race (both see an object missing, the second create fails with
/// AlreadyExists), so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn can_i(cp: &ControlPlane, who: &str, args: &[&str]) -> bool {
    let out = cp
        .kubectl()
        .args([
            "auth",
            "can-i",
            &format!("--as=system:serviceaccount:kube-diagnoser:{who}"),
        ])
        .args(args)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i said {answer:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

#[tokio::test]
async fn config_crd_and_config_deploy_apply_in_one_kubectl_command() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cp = kdiag_testenv::control_plane().await;
    let out = cp
        .kubectl()
        .arg("apply")
        .arg("-f")
        .arg(repo_root().join("config/crd"))
        .arg("-f")
        .arg(repo_root().join("config/deploy"))
        .output()
        .unwrap();
    // CRDs take a moment to be served; kubectl reports the registrations it could not map yet.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            stderr.contains("ensure CRDs are installed first"),
            "{stderr}"
        );
        // The first run installed the admission webhook's configuration, which fails closed;
        // in a cluster the controller it installed serves the webhook before the second run,
        // here no controller runs.
        remove_webhook(cp.kubectl());
        let again = cp
            .kubectl()
            .arg("apply")
            .arg("-f")
            .arg(repo_root().join("config/crd"))
            .arg("-f")
            .arg(repo_root().join("config/deploy"))
            .output()
            .unwrap();
        assert!(
            again.status.success(),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
    for what in [
        "deployment/kdiag-controller",
        "daemonset/kdiag-agent",
        "serviceaccount/kdiag-agent",
        "informationcollector/pod-collector",
        "validatingwebhookconfiguration/kdiag-webhook",
    ] {
        let got = cp
            .kubectl()
            .args(["get", "-n", "kube-diagnoser", what])
            .output()
            .unwrap();
        assert!(
            got.status.success(),
            "{what} is missing: {}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
}

#[tokio::test]
async fn the_agent_may_process_its_abnormals_and_nothing_more() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cp = installed().await;
    let allowed: &[&[&str]] = &[
        &["watch", "abnormals.diagnosis.netease.com", "-A"],
        &[
            "update",
            "abnormals.diagnosis.netease.com",
            "--subresource=status",
            "-n",
            "team",
        ],
        &["list", "pods", "-A"],
        &["create", "events.events.k8s.io", "-n", "team"],
        &["get", "configmaps", "-n", "kube-diagnoser"],
        &["get", "secrets", "-n", "kube-diagnoser"],
        // The pod triage: log tails, Events, nodes, claims and the controllers above a pod.
        &["get", "pods", "--subresource=log", "-n", "team"],
        &["list", "events", "-A"],
        &["get", "nodes"],
        &["list", "nodes"],
        &["get", "persistentvolumeclaims", "-n", "team"],
        &["get", "replicasets.apps", "-n", "team"],
        &["get", "deployments.apps", "-n", "team"],
        &["get", "statefulsets.apps", "-n", "team"],
        &["get", "daemonsets.apps", "-n", "team"],
        &["get", "jobs.batch", "-n", "team"],
        &["get", "cronjobs.batch", "-n", "team"],
        // The node triage of a cordoned node: the budgets that hold its drain.
        &["list", "poddisruptionbudgets.policy", "-A"],
        // The node API checks its callers' tokens and rights (docs/security.md).
        &["create", "tokenreviews.authentication.k8s.io"],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
    ];
    for a in allowed {
        assert!(can_i(cp, "kdiag-agent", a), "the agent needs {a:?}");
    }
    let denied: &[&[&str]] = &[
        &["create", "abnormals.diagnosis.netease.com", "-n", "team"],
        &["delete", "abnormals.diagnosis.netease.com", "-n", "team"],
        &["patch", "abnormals.diagnosis.netease.com", "-n", "team"],
        &["get", "secrets", "-n", "team"],
        &["list", "secrets", "-A"],
        &["create", "pods", "-n", "team"],
        &["delete", "pods", "-n", "team"],
        &["update", "nodes"],
        &["patch", "nodes"],
        &["create", "pods", "--subresource=exec", "-n", "team"],
        &["delete", "events", "-n", "team"],
        &["update", "deployments.apps", "-n", "team"],
        &["list", "persistentvolumeclaims", "-A"],
        &["delete", "poddisruptionbudgets.policy", "-n", "team"],
        // What the node API asks of its callers, the agent does not have itself.
        &["get", "nodes", "--subresource=proxy"],
        &[
            "create",
            "informationcollectors.diagnosis.netease.com",
            "-n",
            "kube-diagnoser",
        ],
    ];
    for d in denied {
        assert!(
            !can_i(cp, "kdiag-agent", d),
            "the agent must not be allowed {d:?}"
        );
    }
}

#[tokio::test]
async fn the_controller_may_admit_and_collect_abnormals_and_nothing_more() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cp = installed().await;
    let allowed: &[&[&str]] = &[
        &["watch", "abnormals.diagnosis.netease.com", "-A"],
        &["patch", "abnormals.diagnosis.netease.com", "-n", "team"],
        &["delete", "abnormals.diagnosis.netease.com", "-n", "team"],
        &[
            "update",
            "abnormals.diagnosis.netease.com",
            "--subresource=status",
            "-n",
            "team",
        ],
        &["get", "pods", "-n", "team"],
        // A failing probe checker judged on its component: the DNS Service (or the Service
        // behind a refused address), its Endpoints, in any namespace.
        &["list", "services", "-A"],
        &["get", "endpoints", "-n", "kube-system"],
        // Reports: who sent one (TokenReview), the alert token Secret, the round trip check.
        &["create", "tokenreviews.authentication.k8s.io"],
        &["get", "secrets/kdiag-alert-token", "-n", "kube-diagnoser"],
        &["create", "secrets", "-n", "kube-diagnoser"],
        &[
            "create",
            "leases.coordination.k8s.io",
            "-n",
            "kube-diagnoser",
        ],
        &[
            "delete",
            "leases.coordination.k8s.io",
            "-n",
            "kube-diagnoser",
        ],
        // The probe runner (ClusterRole kdiag-probe-runner, documented in docs/security.md).
        &["create", "jobs.batch", "-n", "team"],
        // Its checker pods' account kubeprober-worker, bound to that one ClusterRole.
        &["create", "serviceaccounts", "-n", "team"],
        &[
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            "team",
        ],
        &[
            "bind",
            "clusterroles.rbac.authorization.k8s.io/kubeprober-worker",
        ],
        // A continuous probe's resident checker pod: a Deployment the Probe owns.
        &["create", "deployments.apps", "-n", "team"],
        &["patch", "deployments.apps", "-n", "team"],
        // Probes triggered by change (ClusterRole kdiag-probe-triggers): watches only.
        &["watch", "daemonsets.apps", "-A"],
        &["list", "deployments.apps", "-A"],
        &["watch", "statefulsets.apps", "-A"],
        &["watch", "configmaps", "-A"],
        &["watch", "nodes"],
        // The admission webhook: reviews, its configuration's caBundle, its certificate.
        &["create", "subjectaccessreviews.authorization.k8s.io"],
        &[
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/kdiag-webhook",
        ],
        &[
            "update",
            "secrets/kdiag-webhook-cert",
            "-n",
            "kube-diagnoser",
        ],
    ];
    for a in allowed {
        assert!(
            can_i(cp, "kdiag-controller", a),
            "the controller needs {a:?}"
        );
    }
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", "kube-diagnoser"],
        &["create", "pods", "-n", "team"],
        &[
            "delete",
            "probestatuses.kubeprober.erda.cloud",
            "-n",
            "team",
        ],
        &[
            "get",
            "customresourcedefinitions/abnormals.diagnosis.netease.com",
        ],
        &[
            "delete",
            "informationcollectors.diagnosis.netease.com",
            "-n",
            "kube-diagnoser",
        ],
        &["get", "configmaps", "-n", "kube-diagnoser"],
        // No namespace of its own making: the round trip check stays in kube-diagnoser.
        &["create", "namespaces"],
        &["delete", "namespaces/team"],
        &["delete", "namespaces/kube-diagnoser"],
        &["create", "leases.coordination.k8s.io", "-n", "team"],
        // Only its own Secret, and none outside kube-diagnoser.
        &[
            "get",
            "secrets/kdiag-agent-plugin-token",
            "-n",
            "kube-diagnoser",
        ],
        &["list", "secrets", "-n", "kube-diagnoser"],
        &[
            "delete",
            "secrets/kdiag-alert-token",
            "-n",
            "kube-diagnoser",
        ],
        &["create", "secrets", "-n", "team"],
        // kubeprober-worker is created, never changed; no other role may be bound.
        &["update", "serviceaccounts/kubeprober-worker", "-n", "team"],
        &[
            "delete",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            "team",
        ],
        &[
            "bind",
            "clusterroles.rbac.authorization.k8s.io/cluster-admin",
        ],
        &["bind", "clusterroles.rbac.authorization.k8s.io/edit"],
        &[
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            "team",
        ],
        // Probe triggers read and never write what they watch (Deployments are written only as
        // continuous probes' resident pods, above).
        &["update", "daemonsets.apps", "-n", "team"],
        &["patch", "statefulsets.apps", "-n", "team"],
        &["patch", "configmaps", "-n", "team"],
        &["patch", "nodes"],
        // Jobs only for probes: no CronJobs, no pods of its own, no exec.
        &["create", "cronjobs.batch", "-n", "team"],
        &["create", "pods/exec", "-n", "team"],
        &[
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/other",
        ],
        &[
            "create",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
    ];
    for d in denied {
        assert!(
            !can_i(cp, "kdiag-controller", d),
            "the controller must not be allowed {d:?}"
        );
    }
}
