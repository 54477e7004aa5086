//! The deterministic object names the reconciler writes (wire-compatible with the existing
//! platform where it had them), and the labels and annotations of `events::labels`.

use events::{Role, SubjectName, SubjectType};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "ambient-reconciler";
pub use events::crd::runner::job_name;
pub use events::labels::*;

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
