//! Generated files must match what the code generates: `crds/` is `portcullis crds --dir crds`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

#[test]
fn crds_folder_matches_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected = portcullis::crd::crd_files().unwrap();
    let mut actual = BTreeMap::new();
    for entry in std::fs::read_dir(root.join("crds")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        actual.insert(name, std::fs::read_to_string(&path).unwrap());
    }
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "crds/ holds other files than the CRDs; regenerate with `cargo run -- crds --dir crds`"
    );
    for (name, yaml) in &expected {
        assert!(
            actual[name] == *yaml,
            "crds/{name} drifted from the Rust types: run `cargo run -- crds --dir crds && charts/sync-crds.sh`"
        );
    }
}

#[test]
fn crds_command_prints_the_same_documents() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    for yaml in portcullis::crd::crd_files().unwrap().values() {
        assert!(printed.contains(yaml.as_str()));
    }
}
