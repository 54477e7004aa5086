//! The reconciler's deploy/ RBAC is least privilege: no wildcards, no impersonate or escalate,
//! `bind` only on the three project ClusterRoles by resourceNames. (Text-level checks of the
//! manifest; the other test binaries prove the reconciler works with exactly these rules.)

#[test]
fn reconciler_rbac_is_least_privilege() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/rbac/reconciler.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let rules: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    for banned in ["\"*\"", "'*'", "impersonate", "escalate", "cluster-admin"] {
        assert!(!rules.contains(banned), "{banned} in reconciler RBAC");
    }
    // Every rule holding `bind` is limited to the project roles.
    let blocks: Vec<&str> = rules.split("  - apiGroups:").collect();
    let bind: Vec<&&str> = blocks.iter().filter(|b| b.contains("\"bind\"")).collect();
    assert_eq!(bind.len(), 1);
    assert!(
        bind[0].contains(r#"resourceNames: ["ambient-project-admin", "ambient-project-edit", "ambient-project-view"]"#)
    );
    assert!(bind[0].contains(r#"verbs: ["bind"]"#), "bind stands alone in its rule");
    assert!(rules.contains("name: ambient-reconciler\n  namespace: ambient-system"));
}
