//! config/deploy/processors.yaml registers every built-in under its name, as the kind it is,
//! at `/processor/<name>`, and nothing that is not built in.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn every_built_in_collector_and_diagnoser_is_registered_under_its_name_and_path() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/deploy/processors.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut registered = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
        let kind = v["kind"].as_str().expect("kind").to_owned();
        let name = v["metadata"]["name"].as_str().expect("name").to_owned();
        assert_eq!(
            v["metadata"]["namespace"].as_str(),
            Some("kube-diagnoser"),
            "{name}"
        );
        assert_eq!(
            v["spec"]["path"].as_str(),
            Some(format!("/processor/{name}").as_str()),
            "{name}"
        );
        for endpoint in ["externalIP", "externalPort", "service"] {
            assert!(
                v["spec"].get(endpoint).is_none(),
                "{name} has {endpoint}: not a built-in"
            );
        }
        registered.insert(name, kind);
    }
    let mut built_in = BTreeMap::new();
    for p in kdiag_collectors::all() {
        built_in.insert(p.name().to_owned(), "InformationCollector".to_owned());
    }
    for p in kdiag_diagnosers::all() {
        built_in.insert(p.name().to_owned(), "Diagnoser".to_owned());
    }
    // Recoverers are registered by their own crate's owner; compare collectors and diagnosers.
    registered.retain(|_, kind| kind != "Recoverer");
    assert_eq!(registered, built_in);
}
