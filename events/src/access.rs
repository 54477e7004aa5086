//! What each command requires of its principal, as Kubernetes RBAC checks. The api checks it
//! before accepting a command and the reconciler checks it again at apply time, so a role
//! revoked in between wins. One table, used by both.
//!
//! Also what each status event requires of its reader ([`StatusAudience`]): the check of the
//! REST read that shows the same facts, so a live stream never tells a reader more than the
//! REST reads would.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};

use crate::commands::{Command, CommandBody, SessionDisplayName, SessionStatusReport};
use crate::crd::{GROUP, PROJECT_SETTINGS_NAME};
use crate::domain::{Principal, Role};
use crate::status::StatusBody;

/// One SubjectAccessReview's resource attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceCheck {
    /// Namespace (project) the check is made in.
    pub namespace: String,
    /// Verb, e.g. `create`.
    pub verb: &'static str,
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource, e.g. `agenticsessions`.
    pub resource: &'static str,
    /// Subresource, e.g. `status`.
    pub subresource: Option<&'static str>,
    /// Object name, for checks on one object (matters for `resourceNames` rules).
    pub name: Option<String>,
}

impl ResourceCheck {
    /// `update agenticsessions/status` on one session: what a session's own runner may do, and
    /// what the runner callbacks (status, display name, agent messages) require.
    pub fn session_status(namespace: &str, session: &str) -> Self {
        ResourceCheck {
            namespace: namespace.into(),
            verb: "update",
            group: GROUP,
            resource: "agenticsessions",
            subresource: Some("status"),
            name: Some(session.into()),
        }
    }

    /// The SubjectAccessReview asking whether `who` (as the authenticator resolved it: user,
    /// uid, groups and extra, e.g. token scopes) may do this.
    pub fn review_for(&self, who: &Principal) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                uid: (!who.uid.is_empty()).then(|| who.uid.clone()),
                groups: Some(who.groups.clone()),
                // Without it a scope authorizer would judge the user's full rights.
                extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.namespace.clone()),
                    verb: Some(self.verb.into()),
                    group: Some(self.group.into()),
                    resource: Some(self.resource.into()),
                    subresource: self.subresource.map(Into::into),
                    name: self.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// `bind clusterroles/ambient-project-admin in project p1`: what was asked, for error messages.
impl std::fmt::Display for ResourceCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(s) = self.subresource {
            write!(f, "/{s}")?;
        }
        // A named check is shown by name only where the name is ours to show (a role).
        if let (Some(n), "clusterroles") = (&self.name, self.resource) {
            write!(f, " {n}")?;
        }
        write!(f, " in project {}", self.namespace)
    }
}

/// The decision of a reviewed SubjectAccessReview: allowed, and not explicitly denied.
pub fn is_allowed(status: Option<&SubjectAccessReviewStatus>) -> bool {
    status.is_some_and(|s| s.allowed && !s.denied.unwrap_or(false))
}

/// An authorizer explicitly denied the review (e.g. a token-scope authorizer: the token's scopes
/// do not cover it), which no grant overrides.
pub fn is_denied(status: Option<&SubjectAccessReviewStatus>) -> bool {
    status.is_some_and(|s| s.denied == Some(true))
}

/// What creating a project does on the principal's behalf: `create namespaces`, cluster-wide.
/// Self-provisioning is granted by configuration (a group), not by RBAC, so RBAC's silence on it
/// means nothing; but an explicit deny (a token scoped to `user:info`) refuses it, in the api and
/// again at apply time.
pub fn self_provision_check() -> ResourceCheck {
    ResourceCheck {
        namespace: String::new(),
        verb: "create",
        group: "",
        resource: "namespaces",
        subresource: None,
        name: None,
    }
}

/// What a command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Creating a project: membership of the self-provisioner group (configurable, default
    /// `system:authenticated`) and the per-user project quota; decided by configuration, not
    /// by namespaced RBAC.
    SelfProvision,
    /// Every listed check must be allowed.
    All(Vec<ResourceCheck>),
    /// A runner's report on session `session`: made with a token bound to a pod of that
    /// session's Job ([`crate::crd::runner::BoundPod`]), or by a principal allowed `otherwise`
    /// (`update agenticsessions/status` on it: a cluster admin, or the per-session runner
    /// ServiceAccount of a session started before runners shared one).
    Runner {
        /// The session reported on.
        session: String,
        /// What anyone else must be allowed.
        otherwise: ResourceCheck,
    },
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// Who may read a status event: the readers of the REST route that shows what it tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusAudience {
    /// The project itself (`GET /api/projects/{p}`): `get projectsettings/projectsettings`.
    Project,
    /// Sessions (`GET …/agentic-sessions`): `list agenticsessions`.
    Sessions,
    /// Grants: permissions and the settings' group access (`GET …/permissions`,
    /// `GET …/groups`): `list rolebindings`.
    Grants,
    /// Access keys (`GET …/keys`): `list serviceaccounts`.
    Keys,
}

impl StatusAudience {
    /// Every audience.
    pub const ALL: [StatusAudience; 4] =
        [StatusAudience::Project, StatusAudience::Sessions, StatusAudience::Grants, StatusAudience::Keys];

    /// The audience of a status event.
    pub fn of(body: &StatusBody) -> Self {
        match body {
            StatusBody::ProjectChanged(_) | StatusBody::ProjectDeleted(_) => StatusAudience::Project,
            // Group access is what `GET …/groups` shows.
            StatusBody::ProjectSettings(_) => StatusAudience::Grants,
            StatusBody::SessionChanged(_)
            | StatusBody::SessionPhase(_)
            | StatusBody::SessionDeleted(_)
            | StatusBody::SessionRunner(_) => StatusAudience::Sessions,
            StatusBody::PermissionChanged(_) | StatusBody::PermissionDeleted(_) => StatusAudience::Grants,
            StatusBody::KeyChanged(_) | StatusBody::KeyDeleted(_) => StatusAudience::Keys,
        }
    }

    /// The check a reader must pass in project `ns`.
    pub fn check(self, ns: &str) -> ResourceCheck {
        match self {
            StatusAudience::Project => check(ns, "get", GROUP, "projectsettings", Some(PROJECT_SETTINGS_NAME)),
            StatusAudience::Sessions => check(ns, "list", GROUP, "agenticsessions", None),
            StatusAudience::Grants => check(ns, "list", RBAC, "rolebindings", None),
            StatusAudience::Keys => check(ns, "list", "", "serviceaccounts", None),
        }
    }
}

fn check(
    ns: &str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    name: Option<&str>,
) -> ResourceCheck {
    ResourceCheck { namespace: ns.into(), verb, group, resource, subresource: None, name: name.map(Into::into) }
}

/// `bind` on `role`'s ClusterRole in the project: what handing that role out requires. The
/// reconciler writes the RoleBinding with its own `bind` right, so Kubernetes' escalation check
/// never sees the caller; this is that check, made for the caller (a role is handed out only
/// by who holds it: the project admin role has `bind` on the three project roles).
pub fn bind_role(ns: &str, role: Role) -> ResourceCheck {
    check(ns, "bind", RBAC, "clusterroles", Some(role.cluster_role()))
}

impl Command {
    /// The RBAC checks this command's principal must pass.
    pub fn requirement(&self) -> Requirement {
        let ns = self.project.as_str();
        let sessions = |verb, name: Option<&str>| check(ns, verb, GROUP, "agenticsessions", name);
        let settings = |verb| check(ns, verb, GROUP, "projectsettings", Some(PROJECT_SETTINGS_NAME));
        let one = |c| Requirement::All(vec![c]);
        match &self.body {
            CommandBody::ProjectCreate(_) => Requirement::SelfProvision,
            CommandBody::ProjectUpdate(_) => one(settings("update")),
            CommandBody::ProjectDelete(_) => one(settings("delete")),
            CommandBody::SessionCreate(_) => one(sessions("create", None)),
            CommandBody::SessionUpdate(c) => one(sessions("update", Some(c.name.as_str()))),
            CommandBody::SessionDelete(c) => one(sessions("delete", Some(c.name.as_str()))),
            CommandBody::SessionStart(c) | CommandBody::SessionStop(c) => {
                one(sessions("update", Some(c.name.as_str())))
            }
            CommandBody::SessionClone(c) => Requirement::All(vec![
                sessions("get", Some(c.name.as_str())),
                check(c.target_project.as_str(), "create", GROUP, "agenticsessions", None),
            ]),
            CommandBody::SessionStatus(SessionStatusReport { name, .. })
            | CommandBody::SessionDisplayName(SessionDisplayName { name, .. }) => Requirement::Runner {
                session: name.to_string(),
                otherwise: ResourceCheck::session_status(ns, name.as_str()),
            },
            CommandBody::PermissionGrant(c) => {
                Requirement::All(vec![check(ns, "create", RBAC, "rolebindings", None), bind_role(ns, c.role)])
            }
            CommandBody::PermissionRevoke(_) => one(check(ns, "delete", RBAC, "rolebindings", None)),
            CommandBody::KeyCreate(c) => {
                Requirement::All(vec![check(ns, "create", "", "serviceaccounts", None), bind_role(ns, c.role)])
            }
            CommandBody::KeyRevoke(c) => one(check(ns, "delete", "", "serviceaccounts", Some(c.key_id.as_str()))),
            CommandBody::RunnerSecretPut(_) => one(check(ns, "update", "", "secrets", None)),
            CommandBody::RunnerSecretConfig(_) => one(settings("update")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{KeyCreate, PermissionGrant, PermissionRevoke};
    use crate::names::{KeyName, ProjectName, SubjectName};
    use crate::sealing::SealingSecretKey;
    use crate::status::{KeyView, PermissionView, SettingsView, Tombstone};
    use crate::{Role, SubjectType};

    fn checks(body: CommandBody) -> Vec<(String, &'static str, &'static str, Option<String>)> {
        let alice = Principal { user: "alice".into(), ..Default::default() };
        let cmd = Command::new(ProjectName::new("p1").unwrap(), alice, body);
        match cmd.requirement() {
            Requirement::All(cs) => cs.into_iter().map(|c| (c.namespace, c.verb, c.resource, c.name)).collect(),
            Requirement::Runner { otherwise: c, .. } => vec![(c.namespace, c.verb, c.resource, c.name)],
            Requirement::SelfProvision => panic!("not a namespaced requirement"),
        }
    }

    /// Handing out a role needs `bind` on that role's ClusterRole, in the project, for keys and
    /// grants alike; taking a grant away does not.
    #[test]
    fn handing_out_a_role_requires_bind_on_it() {
        for role in Role::ALL {
            let bind = ("p1".to_string(), "bind", "clusterroles", Some(role.cluster_role().to_string()));
            let key = KeyCreate {
                name: KeyName::new("ci").unwrap(),
                description: None,
                role,
                expiration_seconds: None,
                reply_key: SealingSecretKey::generate().public_key(),
            };
            assert_eq!(
                checks(CommandBody::KeyCreate(key)),
                vec![("p1".into(), "create", "serviceaccounts", None), bind.clone()]
            );
            let grant = PermissionGrant {
                subject_type: SubjectType::User,
                subject_name: SubjectName::new("bob").unwrap(),
                role,
            };
            assert_eq!(
                checks(CommandBody::PermissionGrant(grant)),
                vec![("p1".into(), "create", "rolebindings", None), bind]
            );
        }
        let revoke =
            PermissionRevoke { subject_type: SubjectType::Group, subject_name: SubjectName::new("team-b").unwrap() };
        assert_eq!(checks(CommandBody::PermissionRevoke(revoke)), vec![("p1".into(), "delete", "rolebindings", None)]);
    }

    #[test]
    fn bind_review_names_the_cluster_role() {
        let sar = bind_role("p1", Role::Admin).review_for(&Principal {
            user: "bob".into(),
            groups: vec!["g".into()],
            ..Default::default()
        });
        let attrs = sar.spec.resource_attributes.unwrap();
        assert_eq!(attrs.verb.as_deref(), Some("bind"));
        assert_eq!(attrs.group.as_deref(), Some(RBAC));
        assert_eq!(attrs.resource.as_deref(), Some("clusterroles"));
        assert_eq!(attrs.name.as_deref(), Some("ambient-project-admin"));
        assert_eq!(attrs.namespace.as_deref(), Some("p1"));
    }

    #[test]
    fn every_status_event_has_the_audience_of_the_rest_read_that_shows_it() {
        let t = Tombstone { name: "x".into(), uid: None, at: chrono::Utc::now() };
        let key = KeyView {
            id: "k".into(),
            name: "k".into(),
            description: None,
            role: Some(Role::Admin),
            created_at: None,
            last_used_at: None,
        };
        let perm = PermissionView { subject_type: SubjectType::User, subject_name: "bob".into(), role: Role::View };
        let settings = SettingsView { exists: true, group_access: vec![], runner_secret_configured: false };
        let cases = [
            (StatusBody::KeyChanged(key), "list", "", "serviceaccounts"),
            (StatusBody::KeyDeleted(t.clone()), "list", "", "serviceaccounts"),
            (StatusBody::PermissionChanged(perm), "list", RBAC, "rolebindings"),
            (StatusBody::PermissionDeleted(t.clone()), "list", RBAC, "rolebindings"),
            (StatusBody::ProjectSettings(settings), "list", RBAC, "rolebindings"),
            (StatusBody::SessionDeleted(t.clone()), "list", GROUP, "agenticsessions"),
            (StatusBody::ProjectDeleted(t), "get", GROUP, "projectsettings"),
        ];
        for (body, verb, group, resource) in cases {
            let c = StatusAudience::of(&body).check("team-a");
            assert_eq!(
                (c.verb, c.group, c.resource, c.namespace.as_str()),
                (verb, group, resource, "team-a"),
                "{}",
                body.type_str()
            );
        }
    }
}
