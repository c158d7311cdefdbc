//! Conditions with Kubernetes semantics: lastTransitionTime changes only when status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::{AbnormalCondition, AbnormalConditionType, ConditionStatus};

/// Sets a condition, keeping its lastTransitionTime when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<AbnormalCondition>,
    type_: AbnormalConditionType,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: &Time,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status || c.last_transition_time.is_none() {
                c.last_transition_time = Some(now.clone());
            }
            c.status = status;
            c.reason = reason.to_owned();
            c.message = message.to_owned();
        }
        None => conditions.push(AbnormalCondition {
            type_,
            status,
            last_transition_time: Some(now.clone()),
            reason: reason.to_owned(),
            message: message.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let mut cs = Vec::new();
        let (t1, t2) = (t("2026-01-01T00:00:00Z"), t("2026-01-01T00:05:00Z"));
        set_condition(
            &mut cs,
            AbnormalConditionType::Identified,
            ConditionStatus::False,
            "A",
            "a",
            &t1,
        );
        set_condition(
            &mut cs,
            AbnormalConditionType::Identified,
            ConditionStatus::False,
            "B",
            "b",
            &t2,
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, Some(t1.clone()));
        assert_eq!(cs[0].reason, "B");
        set_condition(
            &mut cs,
            AbnormalConditionType::Identified,
            ConditionStatus::True,
            "C",
            "c",
            &t2,
        );
        assert_eq!(cs[0].last_transition_time, Some(t2));
    }
}
