//! Labels and annotations on cluster objects, each name defined once.
//!
//! The reconciler writes them, the api and the projector select and read by them, and outside
//! tools (`kubectl -l`, policy engines) may rely on them. Names shared with the existing platform
//! keep its spelling so that objects it made are still recognised.

/// Label marking a namespace as a project (value `true`).
pub const MANAGED: &str = "ambient-code.io/managed";
/// Label selector of every project namespace.
pub const MANAGED_SELECTOR: &str = "ambient-code.io/managed=true";

/// Annotation: the id of the last command that wrote an object. A redelivered command
/// recognises its own write; another command finds a conflict.
pub const LAST_COMMAND: &str = "ambient-code.io/last-command";
/// Annotation on a session created by cloning: the session it was cloned from.
pub const CLONED_FROM: &str = "ambient-code.io/cloned-from";

/// The `app` label, which says what a RoleBinding, ServiceAccount or Secret is for.
pub const APP: &str = "app";
/// [`APP`] of permission RoleBindings.
pub const APP_PERMISSION: &str = "ambient-permission";
/// [`APP`] of access-key ServiceAccounts and RoleBindings.
pub const APP_ACCESS_KEY: &str = "ambient-access-key";
/// Label selector of permission RoleBindings.
pub const PERMISSION_SELECTOR: &str = "app=ambient-permission";
/// Label selector of access-key ServiceAccounts and RoleBindings.
pub const ACCESS_KEY_SELECTOR: &str = "app=ambient-access-key";
/// Label selector of both permission and access-key objects.
pub const PERMISSION_OR_KEY_SELECTOR: &str = "app in (ambient-permission,ambient-access-key)";

/// Namespace annotation: the project's display name.
pub const DISPLAY_NAME: &str = "openshift.io/display-name";
/// Namespace annotation: the project's description.
pub const DESCRIPTION: &str = "openshift.io/description";
/// Namespace annotation: who created the project.
pub const REQUESTER: &str = "openshift.io/requester";

/// Permission RoleBinding annotation: the subject's kind as the user gave it (informative: the
/// binding's subjects are what grants access).
pub const SUBJECT_KIND: &str = "ambient-code.io/subject-kind";
/// Permission RoleBinding annotation: the subject's name (informative, as [`SUBJECT_KIND`]).
pub const SUBJECT_NAME: &str = "ambient-code.io/subject-name";
/// Annotation on permission RoleBindings and access-key ServiceAccounts: the role asked for.
pub const ROLE: &str = "ambient-code.io/role";
/// Permission RoleBinding annotation: where a group binding comes from.
pub const SOURCE: &str = "ambient-code.io/source";
/// [`SOURCE`] of bindings that follow ProjectSettings `groupAccess`.
pub const SOURCE_PROJECT_SETTINGS: &str = "projectsettings";

/// Access-key ServiceAccount annotation: the name the user gave the key.
pub const KEY_NAME: &str = "ambient-code.io/key-name";
/// Access-key ServiceAccount annotation: what the key is for.
pub const KEY_DESCRIPTION: &str = "ambient-code.io/description";
/// Access-key ServiceAccount annotation: when the key was created (RFC 3339).
pub const KEY_CREATED_AT: &str = "ambient-code.io/created-at";
/// Access-key RoleBinding annotation: the ServiceAccount (key id) it belongs to.
pub const SA_NAME: &str = "ambient-code.io/sa-name";

pub use crate::crd::runner::{RUN_LABEL, SESSION_LABEL};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_spell_their_labels() {
        assert_eq!(MANAGED_SELECTOR, format!("{MANAGED}=true"));
        assert_eq!(PERMISSION_SELECTOR, format!("{APP}={APP_PERMISSION}"));
        assert_eq!(ACCESS_KEY_SELECTOR, format!("{APP}={APP_ACCESS_KEY}"));
        assert_eq!(PERMISSION_OR_KEY_SELECTOR, format!("{APP} in ({APP_PERMISSION},{APP_ACCESS_KEY})"));
    }
}
