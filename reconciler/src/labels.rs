//! Labels, annotations and deterministic object names the reconciler writes (wire-compatible
//! with the existing platform where it had them).

use events::{Role, SubjectName, SubjectType};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "ambient-reconciler";
/// Label marking a namespace as a project.
pub const MANAGED: &str = "ambient-code.io/managed";
/// The id of the last command that wrote an object: a re-delivered command recognises its own
/// write, another command gets 409.
pub const LAST_COMMAND: &str = "ambient-code.io/last-command";
/// `app` label.
pub const APP: &str = "app";
/// `app` value of permission RoleBindings.
pub const APP_PERMISSION: &str = "ambient-permission";
/// `app` value of access-key ServiceAccounts and RoleBindings.
pub const APP_ACCESS_KEY: &str = "ambient-access-key";

/// Display name annotation.
pub const DISPLAY_NAME: &str = "openshift.io/display-name";
/// Description annotation.
pub const DESCRIPTION: &str = "openshift.io/description";
/// Requester annotation (the creator; counts against the project quota).
pub const REQUESTER: &str = "openshift.io/requester";

/// Permission annotations.
pub const SUBJECT_KIND: &str = "ambient-code.io/subject-kind";
/// Permission annotations.
pub const SUBJECT_NAME: &str = "ambient-code.io/subject-name";
/// Role annotation (permissions and keys).
pub const ROLE: &str = "ambient-code.io/role";
/// Where a group binding comes from (`projectsettings`).
pub const SOURCE: &str = "ambient-code.io/source";
/// Value of [`SOURCE`] for bindings derived from `groupAccess`.
pub const SOURCE_PROJECT_SETTINGS: &str = "projectsettings";

/// Access-key annotations.
pub const KEY_NAME: &str = "ambient-code.io/key-name";
/// Access-key annotations.
pub const KEY_DESCRIPTION: &str = "ambient-code.io/description";
/// Access-key annotations.
pub const KEY_CREATED_AT: &str = "ambient-code.io/created-at";
/// The ServiceAccount an access-key RoleBinding belongs to.
pub const SA_NAME: &str = "ambient-code.io/sa-name";

pub use events::crd::runner::{RUN_LABEL, SESSION_LABEL, job_name};

/// The creator's admin RoleBinding: `ambient-admin-<subject suffix>`.
pub fn creator_binding(user: &SubjectName) -> String {
    format!("ambient-admin-{}", user.object_suffix(63 - "ambient-admin-".len()))
}

/// A user permission RoleBinding: `ambient-permission-<role>-<type>-<subject suffix>`.
pub fn permission_binding(role: Role, ty: SubjectType, subject: &SubjectName) -> String {
    let prefix = format!("ambient-permission-{}-{}-", role.as_str(), ty.as_str());
    format!("{prefix}{}", subject.object_suffix(63 - prefix.len()))
}

/// A group binding derived from ProjectSettings.groupAccess: `ambient-group-<role>-<suffix>`.
pub fn group_binding(role: Role, group: &SubjectName) -> String {
    let prefix = format!("ambient-group-{}-", role.as_str());
    format!("{prefix}{}", group.object_suffix(63 - prefix.len()))
}

/// The ServiceAccount (and key id) of an access key.
pub fn key_service_account(name: &events::KeyName) -> String {
    format!("ambient-key-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::names::check_dns1123_label;

    #[test]
    fn names_are_labels() {
        let s = SubjectName::new(format!("system:serviceaccount:{}:x", "n".repeat(200))).unwrap();
        for n in [
            creator_binding(&s),
            permission_binding(Role::Admin, SubjectType::Group, &s),
            group_binding(Role::View, &s),
        ] {
            check_dns1123_label("n", &n, 63).unwrap();
        }
        assert_ne!(
            permission_binding(Role::Edit, SubjectType::User, &SubjectName::new("Alice").unwrap()),
            permission_binding(Role::Edit, SubjectType::User, &SubjectName::new("alice").unwrap())
        );
    }
}
