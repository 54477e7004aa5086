//! The committed CRD YAML in deploy/crds/ is exactly what the Rust types generate.
//! Regenerate with `UPDATE_CRDS=1 cargo test -p events --test crds`.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    for (file, yaml) in events::crd::crd_yaml() {
        let path = dir.join(file);
        let header = "# Generated from events/src/crd.rs; do not edit. Regenerate: UPDATE_CRDS=1 cargo test -p events --test crds\n";
        let want = format!("{header}{yaml}");
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} drifted from the Rust types; run UPDATE_CRDS=1 cargo test -p events --test crds",
            path.display()
        );
    }
}

#[test]
fn sessions_print_what_an_operator_looks_for() {
    use kube::CustomResourceExt as _;
    let crd = events::crd::AgenticSession::crd();
    assert_eq!(crd.spec.names.categories.as_deref(), Some(&["ambient".to_string()][..]), "kubectl get ambient");
    let columns = &crd.spec.versions[0].additional_printer_columns.as_ref().expect("printer columns");
    let shown: Vec<(&str, i32)> = columns.iter().map(|c| (c.name.as_str(), c.priority.unwrap_or(0))).collect();
    assert_eq!(
        shown,
        [("Display Name", 0), ("Phase", 0), ("Reason", 0), ("Started", 1), ("Run", 1), ("Job", 1), ("Age", 0)],
        "the wide columns (priority 1) only with -o wide"
    );
}
