//! Label and annotation keys kdiag sets, and the pure helpers that compute their values.

/// The label the controller sets on an admitted Abnormal and the node agent selects on, so each
/// agent watches only its own node's Abnormals (label selectors work on custom resources on
/// every Kubernetes version; field selectors on them do not).
pub const NODE_LABEL: &str = "kdiag.io/node";

/// Annotation the controller sets on an Abnormal it routes to another node's agent because its
/// pod is on no node: a JSON object `{"pod", "why", "leftOut"}` (kdiag_pipeline's `StandIn`).
/// With the node label and `spec.nodeName` it records the routing, so that a controller reads
/// it back after a restart instead of parsing a condition's message.
pub const STAND_IN_ANNOTATION: &str = "kdiag.io/stand-in";

/// Label on the Abnormals the controller creates for one that names no node and no pod (one per
/// node, as Kube Diagnoser v0.1.0–v0.1.5 ran such an Abnormal on every node): the parent's uid.
pub const FAN_OUT_PARENT_LABEL: &str = "kdiag.io/fan-out-parent";

/// Annotation the controller sets on an Abnormal when it routes it: a fingerprint of what the
/// agent builds the Abnormal's steps from (its command executors, profilers, assigned
/// processors, skip flags and Kube Diagnoser rules), as admitted. The agent runs only that plan:
/// if the spec no longer matches it, the Abnormal ends Failed (PlanChanged) instead of running
/// steps nobody admitted or matching results to the wrong steps.
pub const PLAN_ANNOTATION: &str = "kdiag.io/plan";

/// Annotation on an Abnormal asking for the rules of the Kube Diagnoser release that wrote it,
/// `v0.1.0` to `v0.1.6`, where they differ from kdiag's: with `v0.1.0`–`v0.1.3` an empty
/// processor list (and the stage's skip flag false) means every registered processor of the
/// stage's kind, and with `v0.1.2`–`v0.1.3` a skip flag skips the stage's processors but not its
/// command executors and profilers (docs/compatibility.md). Without it kdiag's rules apply,
/// which are those of v0.1.4–v0.1.6.
pub const KUBE_DIAGNOSER_VERSION_ANNOTATION: &str = "kdiag.io/kube-diagnoser-version";

/// Annotation on an Abnormal a source (an Event or an alert) created: when its trigger was last
/// seen. Events of one incident join the Abnormal whose trigger was seen within the grouping
/// window, so the controller's cache keeps this one annotation even of finished Abnormals.
pub const TRIGGER_LAST_SEEN_ANNOTATION: &str = "kdiag.io/trigger-last-seen";

/// Field manager for every write kdiag makes.
pub const FIELD_MANAGER: &str = "kdiag";

/// Annotation on a ProbeStatus holding each checker's diagnosis when the installed CRD prunes the
/// `spec.checkers[].diagnosis` field (KubeProber's own CRD does): the controller writes it,
/// `kubectl diag probes` reads it.
pub const DIAGNOSES_ANNOTATION: &str = "kdiag.io/diagnoses";
/// Prefix of the per-checker diagnosis annotation `kdiag.io/diagnosis.<checker>` (plain text or
/// `{abnormal, phase, rootCause}`), for tools that annotate one checker at a time.
pub const DIAGNOSIS_ANNOTATION_PREFIX: &str = "kdiag.io/diagnosis.";

/// The value of [`NODE_LABEL`] for a node.
///
/// Node names may be up to 253 characters of a DNS subdomain; label values at most 63 of
/// `[A-Za-z0-9._-]` starting and ending alphanumeric. A name that fits is used as is (readable
/// in `kubectl get -l`); a longer one becomes `h-` and a stable FNV-1a hash of it, which the
/// agent computes the same way.
pub fn node_label_value(node_name: &str) -> String {
    if is_valid_label_value(node_name) {
        return node_name.to_owned();
    }
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in node_name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("h-{hash:016x}")
}

/// True when `s` is a valid, non-empty label value.
pub fn is_valid_label_value(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_node_names_are_used_as_they_are() {
        assert_eq!(node_label_value("10.177.16.22"), "10.177.16.22");
        assert_eq!(node_label_value("node-a"), "node-a");
    }

    #[test]
    fn long_node_names_become_a_stable_valid_hash() {
        let long = format!("{}.example.com", "a".repeat(70));
        let v = node_label_value(&long);
        assert!(v.starts_with("h-"));
        assert!(is_valid_label_value(&v));
        assert_eq!(v, node_label_value(&long));
        assert_ne!(v, node_label_value(&format!("b{long}")));
    }
}
