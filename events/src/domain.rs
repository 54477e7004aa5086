//! Closed sets of values (roles, subject types, phases) and the authenticated principal.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A project role. Each maps to one ClusterRole bound per namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the project, including permissions and access keys.
    Admin,
    /// Create, change, start, stop and delete sessions.
    Edit,
    /// Read only.
    View,
}

impl Role {
    /// All roles, strongest first.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Edit, Role::View];

    /// `admin`, `edit` or `view`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Edit => "edit",
            Role::View => "view",
        }
    }

    /// The ClusterRole this role is bound to: `ambient-project-<role>`.
    pub fn cluster_role(self) -> &'static str {
        match self {
            Role::Admin => "ambient-project-admin",
            Role::Edit => "ambient-project-edit",
            Role::View => "ambient-project-view",
        }
    }

    /// The role whose ClusterRole is `name`, if it is one of ours.
    pub fn from_cluster_role(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.cluster_role() == name)
    }

    /// Parses `admin`, `edit` or `view`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a permission is granted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubjectType {
    /// A user, as the authenticator names it.
    User,
    /// A group of users.
    Group,
}

impl SubjectType {
    /// `user` or `group`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectType::User => "user",
            SubjectType::Group => "group",
        }
    }

    /// The RBAC subject kind: `User` or `Group`.
    pub fn rbac_kind(self) -> &'static str {
        match self {
            SubjectType::User => "User",
            SubjectType::Group => "Group",
        }
    }

    /// Parses `user` or `group`.
    pub fn parse(s: &str) -> Option<SubjectType> {
        match s {
            "user" => Some(SubjectType::User),
            "group" => Some(SubjectType::Group),
            _ => None,
        }
    }
}

impl fmt::Display for SubjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle phase of an agentic session.
///
/// `Pending → Creating → Running → Completed | Failed | Stopped`; `Error` when the spec cannot be
/// run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
pub enum Phase {
    /// Accepted; nothing created yet.
    #[default]
    Pending,
    /// The Job and the runner identity are being created.
    Creating,
    /// The runner pod runs.
    Running,
    /// The runner finished successfully.
    Completed,
    /// The runner failed, or hit its deadline (condition reason `Timeout`).
    Failed,
    /// Stopped on request; its Job and pods are gone.
    Stopped,
    /// The spec cannot be run.
    Error,
}

impl Phase {
    /// True for phases that end a run: `Completed`, `Failed`, `Stopped`, `Error`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Stopped | Phase::Error)
    }

    /// The phase name as it appears in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Creating => "Creating",
            Phase::Running => "Running",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
            Phase::Stopped => "Stopped",
            Phase::Error => "Error",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a request was made by, exactly as the API server's TokenReview resolved it.
/// Commands carry it so that the reconciler can re-authorize them at apply time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Principal {
    /// The user name (`alice`, `system:serviceaccount:<ns>:<sa>`).
    pub user: String,
    /// The user's uid, when the authenticator gives one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups, including `system:authenticated`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The authenticator's extra attributes (`user.extra` of the TokenReview), e.g. OpenShift's
    /// token scopes `scopes.authorization.openshift.io: ["user:info"]`. Every
    /// SubjectAccessReview made for the principal carries them, so that an authorizer that
    /// restricts by them (a scope authorizer) decides as it would for the token itself.
    /// Ordered, so that equal principals hash alike (the api caches reviews by principal).
    /// Omitted when empty: commands signed before it existed decode unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Principal {
    /// The identity Kubernetes authenticates a token of ServiceAccount `name` in `namespace` as:
    /// its user name and the groups every ServiceAccount token carries.
    pub fn of_service_account(namespace: &str, name: &str) -> Self {
        Principal {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// When the principal is a ServiceAccount, its namespace and name.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.user.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(Role::from_cluster_role(r.cluster_role()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Role::parse("owner"), None);
    }

    #[test]
    fn service_account_principal() {
        let p = Principal::of_service_account("p1", "ambient-key-ci");
        assert_eq!(p.service_account(), Some(("p1", "ambient-key-ci")));
        assert!(p.groups.contains(&"system:serviceaccounts:p1".to_string()));
        let p = Principal { user: "system:serviceaccount:ns1:runner".into(), ..Default::default() };
        assert_eq!(p.service_account(), Some(("ns1", "runner")));
        let u = Principal { user: "alice".into(), ..Default::default() };
        assert_eq!(u.service_account(), None);
    }

    #[test]
    fn extra_is_omitted_when_empty_and_kept_otherwise() {
        let plain = Principal { user: "alice".into(), groups: vec!["team-a".into()], ..Default::default() };
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(v, serde_json::json!({"user": "alice", "groups": ["team-a"]}));
        // A principal serialized before `extra` existed still decodes.
        let old: Principal =
            serde_json::from_value(serde_json::json!({"user": "alice", "groups": ["team-a"]})).unwrap();
        assert_eq!(old, plain);
        let mut scoped = plain.clone();
        scoped.extra.insert("scopes.authorization.openshift.io".into(), vec!["user:info".into()]);
        let v = serde_json::to_value(&scoped).unwrap();
        assert_eq!(v["extra"], serde_json::json!({"scopes.authorization.openshift.io": ["user:info"]}));
        assert_eq!(serde_json::from_value::<Principal>(v).unwrap(), scoped);
        assert_ne!(scoped, plain);
    }
}
