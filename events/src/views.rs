//! Cluster objects as the public views of [`crate::status`]: one conversion per kind, used by
//! the api's reads and by the projector's status events, so that a list and an event about the
//! same object never disagree.
//!
//! The rules, in one place:
//! - a project is `Terminating` once its namespace has a deletion time or that phase; empty
//!   display-name and description annotations count as absent;
//! - a permission is what RBAC grants: a RoleBinding's `User` and `Group` subjects with one of
//!   the project ClusterRoles. Annotations never grant (a binding with no subjects grants
//!   nothing, so it shows nothing). A subject bound twice (a role change in flight, or a
//!   creator later granted less) shows once, with its strongest role;
//! - an access key's role is its RoleBinding's (the binding whose subject is the key's
//!   ServiceAccount); until that binding exists, the role the key was asked with. When it was
//!   last used is not a property of the cluster objects: the api keeps it (see the api's key
//!   list), and status events leave it out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;

use crate::correlation::Correlation;
use crate::crd::{AgenticSession, ProjectSettings};
use crate::labels;
use crate::status::{KeyView, PermissionView, ProjectView, SessionView, SettingsView};
use crate::{Role, SubjectType};

/// A Kubernetes timestamp as chrono's.
pub fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

/// A non-empty annotation.
fn annotation<'a, K: ResourceExt>(obj: &'a K, key: &str) -> Option<&'a str> {
    obj.annotations().get(key).map(String::as_str).filter(|s| !s.is_empty())
}

/// The project role a RoleBinding's `roleRef` grants, if it is one of the project ClusterRoles.
fn bound_role(rb: &RoleBinding) -> Option<Role> {
    (rb.role_ref.kind == "ClusterRole").then(|| Role::from_cluster_role(&rb.role_ref.name)).flatten()
}

impl ProjectView {
    /// The view of a project's namespace.
    pub fn from_namespace(ns: &Namespace) -> Self {
        let terminating = ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        ProjectView {
            name: ns.name_any(),
            display_name: annotation(ns, labels::DISPLAY_NAME).map(str::to_string),
            description: annotation(ns, labels::DESCRIPTION).map(str::to_string),
            requester: annotation(ns, labels::REQUESTER).map(str::to_string),
            creation_timestamp: ns.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)),
            status: if terminating { "Terminating" } else { "Active" }.to_string(),
        }
    }
}

/// Whether a namespace is a project (carries [`labels::MANAGED`]` = true`).
pub fn is_project(ns: &Namespace) -> bool {
    ns.labels().get(labels::MANAGED).map(String::as_str) == Some("true")
}

impl SessionView {
    /// The public view of a session: environment variable names only, never the prompt.
    pub fn from_session(s: &AgenticSession) -> Self {
        let status = s.status.clone().unwrap_or_default();
        let user = Correlation::of(s.labels(), s.annotations());
        SessionView {
            name: s.name_any(),
            uid: s.uid().unwrap_or_default(),
            resource_version: s.resource_version().unwrap_or_default(),
            generation: s.metadata.generation.unwrap_or_default(),
            creation_timestamp: s.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)),
            display_name: s.spec.display_name.clone(),
            created_by: s.spec.user_context.as_ref().map(|u| u.user_id.clone()),
            interactive: s.spec.interactive.unwrap_or(false),
            timeout: s.spec.timeout,
            llm_settings: s.spec.llm_settings.clone(),
            repos: s.spec.repos.clone(),
            environment_variable_names: s.spec.environment_variables.keys().cloned().collect(),
            phase: status.phase.unwrap_or_default(),
            message: status.message,
            reason: status.reason,
            start_time: status.start_time,
            completion_time: status.completion_time,
            result: status.result,
            total_cost_usd: status.total_cost_usd,
            num_turns: status.num_turns,
            labels: user.labels,
            annotations: user.annotations,
        }
    }
}

impl SettingsView {
    /// The view of a project's ProjectSettings: group grants, and whether a runner Secret is
    /// named (never the name).
    pub fn from_settings(ps: &ProjectSettings) -> Self {
        SettingsView {
            exists: true,
            group_access: ps.spec.group_access.clone(),
            runner_secret_configured: ps.spec.runner_secrets_name.as_deref().is_some_and(|n| !n.trim().is_empty()),
        }
    }

    /// The view of a project without ProjectSettings.
    pub fn absent() -> Self {
        SettingsView { exists: false, group_access: Vec::new(), runner_secret_configured: false }
    }
}

impl PermissionView {
    /// The grants a permission RoleBinding makes: its `User` and `Group` subjects, when its
    /// `roleRef` is a project ClusterRole.
    pub fn grants_of(rb: &RoleBinding) -> Vec<PermissionView> {
        let Some(role) = bound_role(rb) else { return Vec::new() };
        rb.subjects
            .iter()
            .flatten()
            .filter_map(|s| {
                let subject_type = match s.kind.as_str() {
                    "User" => SubjectType::User,
                    "Group" => SubjectType::Group,
                    _ => return None,
                };
                Some(PermissionView { subject_type, subject_name: s.name.clone(), role })
            })
            .collect()
    }
}

/// One grant per subject, its strongest role, sorted by subject type and name.
pub fn strongest_per_subject(grants: impl IntoIterator<Item = PermissionView>) -> Vec<PermissionView> {
    let mut best: BTreeMap<(SubjectType, String), Role> = BTreeMap::new();
    for g in grants {
        let role = best.entry((g.subject_type, g.subject_name)).or_insert(g.role);
        // Roles are ordered strongest first.
        *role = (*role).min(g.role);
    }
    best.into_iter()
        .map(|((subject_type, subject_name), role)| PermissionView { subject_type, subject_name, role })
        .collect()
}

/// What an access-key RoleBinding says: whose it is and the role it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The key id: the ServiceAccount the binding's subject names.
    pub key_id: String,
    /// The role it grants, if its `roleRef` is a project ClusterRole.
    pub role: Option<Role>,
}

impl KeyBinding {
    /// The binding's key: its first `ServiceAccount` subject (what RBAC grants to), never an
    /// annotation.
    pub fn of(rb: &RoleBinding) -> Option<Self> {
        let key_id = rb.subjects.iter().flatten().find(|s| s.kind == "ServiceAccount")?.name.clone();
        Some(KeyBinding { key_id, role: bound_role(rb) })
    }
}

impl KeyView {
    /// The view of an access key's ServiceAccount (annotations only; its tokens are never read)
    /// given the role of its binding, if one was found, and when it was last used, if known.
    pub fn from_account(sa: &ServiceAccount, binding_role: Option<Role>, last_used_at: Option<DateTime<Utc>>) -> Self {
        let id = sa.name_any();
        KeyView {
            name: annotation(sa, labels::KEY_NAME).map_or_else(|| id.clone(), str::to_string),
            description: annotation(sa, labels::KEY_DESCRIPTION).map(str::to_string),
            role: binding_role.or_else(|| annotation(sa, labels::ROLE).and_then(Role::parse)),
            created_at: sa.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)).or_else(|| {
                annotation(sa, labels::KEY_CREATED_AT)
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc))
            }),
            last_used_at,
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rb(role_kind: &str, role: &str, subjects: serde_json::Value) -> RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": "b", "namespace": "p",
                "annotations": {labels::SUBJECT_KIND: "User", labels::SUBJECT_NAME: "mallory"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects,
        }))
        .unwrap()
    }

    fn grant(t: SubjectType, name: &str, role: Role) -> PermissionView {
        PermissionView { subject_type: t, subject_name: name.into(), role }
    }

    #[test]
    fn grants_are_what_rbac_grants() {
        let users = json!([{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
            {"kind": "ServiceAccount", "name": "robot", "namespace": "p"}]);
        let cases = [
            (
                "ClusterRole",
                "ambient-project-edit",
                users.clone(),
                vec![grant(SubjectType::User, "alice", Role::Edit), grant(SubjectType::Group, "devs", Role::Edit)],
            ),
            // A Role of the same name in the namespace is not the project role.
            ("Role", "ambient-project-admin", users.clone(), vec![]),
            ("ClusterRole", "cluster-admin", users, vec![]),
            // The annotations name mallory, but a binding without subjects grants nothing.
            ("ClusterRole", "ambient-project-admin", json!([]), vec![]),
            ("ClusterRole", "ambient-project-admin", serde_json::Value::Null, vec![]),
        ];
        for (kind, role, subjects, want) in cases {
            assert_eq!(PermissionView::grants_of(&rb(kind, role, subjects.clone())), want, "{kind} {role} {subjects}");
        }
    }

    #[test]
    fn a_subject_shows_once_with_its_strongest_role() {
        let got = strongest_per_subject([
            grant(SubjectType::User, "bob", Role::View),
            grant(SubjectType::User, "alice", Role::View),
            grant(SubjectType::User, "alice", Role::Admin),
            grant(SubjectType::Group, "alice", Role::Edit),
            grant(SubjectType::User, "alice", Role::Edit),
        ]);
        assert_eq!(
            got,
            [
                grant(SubjectType::User, "alice", Role::Admin),
                grant(SubjectType::User, "bob", Role::View),
                grant(SubjectType::Group, "alice", Role::Edit),
            ]
        );
    }

    #[test]
    fn a_key_binding_is_read_from_its_subject() {
        let b = rb(
            "ClusterRole",
            "ambient-project-view",
            json!([{"kind": "ServiceAccount", "name": "ambient-key-ci", "namespace": "p"}]),
        );
        assert_eq!(KeyBinding::of(&b), Some(KeyBinding { key_id: "ambient-key-ci".into(), role: Some(Role::View) }));
        assert_eq!(
            KeyBinding::of(&rb("ClusterRole", "ambient-project-view", json!([{"kind": "User", "name": "x"}]))),
            None
        );
    }

    #[test]
    fn a_key_shows_its_bindings_role_else_the_one_asked_for() {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "ambient-key-ci", "namespace": "p",
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "annotations": {labels::KEY_NAME: "ci", labels::ROLE: "admin", labels::KEY_DESCRIPTION: ""}}}))
            .unwrap();
        let v = KeyView::from_account(&sa, Some(Role::View), None);
        assert_eq!(
            (v.id.as_str(), v.name.as_str(), v.role, v.description),
            ("ambient-key-ci", "ci", Some(Role::View), None)
        );
        assert_eq!(v.created_at.map(|t| t.to_rfc3339()), Some("2026-01-02T03:04:05+00:00".into()));
        assert_eq!(KeyView::from_account(&sa, None, None).role, Some(Role::Admin));
    }

    #[test]
    fn a_project_is_terminating_from_its_deletion_time() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "p",
            "labels": {labels::MANAGED: "true"}, "annotations": {labels::DISPLAY_NAME: "", labels::DESCRIPTION: "d"},
            "deletionTimestamp": "2026-01-02T03:04:05Z"}, "status": {"phase": "Active"}}))
        .unwrap();
        let v = ProjectView::from_namespace(&ns);
        assert_eq!((v.display_name, v.description.as_deref(), v.status.as_str()), (None, Some("d"), "Terminating"));
        assert!(is_project(&ns));
    }
}
