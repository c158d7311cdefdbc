//! The AdmissionReview wire format (admission.k8s.io/v1 and v1beta1, which share their fields):
//! reading a request and writing the answer. Pure.

use std::collections::BTreeMap;

use kdiag_runtime::auth::User;
use serde::Deserialize;
use serde_json::{Value, json};

/// The request part of an AdmissionReview, as far as the webhook reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub resource: GroupVersionResource,
    #[serde(default)]
    pub sub_resource: String,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub old_object: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn user(&self) -> User {
        User {
            name: self.username.clone(),
            uid: self.uid.clone(),
            groups: self.groups.clone(),
            extra: self.extra.clone(),
        }
    }
}

/// A review the apiserver sent: its apiVersion (answered in kind) and the request.
#[derive(Debug)]
pub struct Review {
    pub api_version: String,
    pub request: AdmissionRequest,
}

/// Reads an AdmissionReview. Err says what is wrong with it.
pub fn parse(body: &[u8]) -> Result<Review, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        #[serde(default)]
        api_version: String,
        #[serde(default)]
        kind: String,
        request: Option<AdmissionRequest>,
    }
    let wire: Wire = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    if wire.kind != "AdmissionReview" {
        return Err(format!(
            "the body is a {:?}, not an AdmissionReview",
            wire.kind
        ));
    }
    let api_version = match wire.api_version.as_str() {
        v @ ("admission.k8s.io/v1" | "admission.k8s.io/v1beta1") => v.to_owned(),
        other => {
            return Err(format!(
                "AdmissionReview {other:?}: kdiag reads admission.k8s.io/v1 and v1beta1"
            ));
        }
    };
    let request = wire
        .request
        .ok_or_else(|| "the AdmissionReview has no request".to_owned())?;
    Ok(Review {
        api_version,
        request,
    })
}

/// The answer to the review with `uid`: allowed, or refused with `message` (403 Forbidden).
pub fn answer(api_version: &str, uid: &str, refusal: Option<&str>) -> Value {
    let response = match refusal {
        None => json!({"uid": uid, "allowed": true}),
        Some(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": message},
        }),
    };
    json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_review_is_read_and_answered_in_v1() {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "diagnosis.netease.com", "version": "v1", "kind": "Abnormal"},
                "resource": {"group": "diagnosis.netease.com", "version": "v1", "resource": "abnormals"},
                "operation": "CREATE",
                "userInfo": {"username": "alice", "groups": ["team-a", "system:authenticated"],
                             "extra": {"scopes": ["x"]}},
                "object": {"metadata": {"name": "a"}}
            }
        });
        let review = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(review.request.resource.resource, "abnormals");
        assert_eq!(review.request.user_info.user().groups.len(), 2);
        assert_eq!(review.request.user_info.extra["scopes"], ["x"]);
        let out = answer(&review.api_version, &review.request.uid, Some("no"));
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["message"], "no");
    }

    #[test]
    fn a_v1beta1_review_is_answered_in_v1beta1() {
        let body = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                          "request": {"uid": "u-2", "operation": "DELETE"}});
        let review = parse(body.to_string().as_bytes()).unwrap();
        let out = answer(&review.api_version, &review.request.uid, None);
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn anything_else_is_not_a_review() {
        for body in [
            "not json".to_owned(),
            json!({"apiVersion": "v1", "kind": "Pod"}).to_string(),
            json!({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview",
                   "request": {"uid": "x"}})
            .to_string(),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body}");
        }
    }
}
