//! config/crd/ must be exactly what the Rust types generate (`make crd` regenerates it).

use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/crd");
    let mut expected_files = Vec::new();
    for crd in kdiag_api::crds::all() {
        let name = kdiag_api::crds::file_name(&crd);
        let path = dir.join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run `make crd` and commit config/crd",
                path.display()
            )
        });
        let generated = kdiag_api::crds::to_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "{} differs from the Rust types: run `make crd` and commit config/crd",
            path.display()
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "config/crd holds files the types do not generate"
    );
}

#[test]
fn no_crd_uses_schema_features_kubernetes_1_20_rejects() {
    let yaml = kdiag_api::crds::all_to_yaml().unwrap();
    for forbidden in [
        "uint32",
        "uint64",
        "x-kubernetes-validations",
        "selectableFields",
        "anyOf",
        "oneOf",
        "allOf",
    ] {
        assert!(
            !yaml.contains(forbidden),
            "generated CRDs contain {forbidden}"
        );
    }
}
