//! Server-side apply of multi-document YAML manifests, like `kubectl apply --server-side`.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};

use crate::Error;

/// Applies every document of `yaml` (named `source_name` in errors), in order.
pub async fn apply_yaml(client: &Client, source_name: &str, yaml: &str) -> Result<usize, Error> {
    let mut applied = 0;
    for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_json::Value::deserialize_yaml(doc).map_err(|e| Error::ManifestParse {
            source_name: source_name.into(),
            index,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject =
            serde_json::from_value(value).map_err(|e| Error::ManifestParse {
                source_name: source_name.into(),
                index,
                reason: e.to_string(),
            })?;
        let types = obj.types.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), types.api_version.clone()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &types.kind);
        let (resource, caps) =
            pinned_kind(client, &gvk)
                .await
                .map_err(|e| Error::ManifestDiscovery {
                    source_name: source_name.into(),
                    kind: types.kind.clone(),
                    name: name.clone(),
                    api_version: types.api_version.clone(),
                    source: Box::new(e),
                })?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(kdiag_api::labels::FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(|e| Error::ManifestApply {
            source_name: source_name.into(),
            kind: types.kind.clone(),
            name: name.clone(),
            source: Box::new(e),
        })?;
        applied += 1;
    }
    Ok(applied)
}

trait FromYaml: Sized {
    fn deserialize_yaml(doc: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl FromYaml for serde_json::Value {
    fn deserialize_yaml(doc: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(doc)
    }
}
