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

use crate::commands::{Command, CommandBody};
use crate::crd::{GROUP, PROJECT_SETTINGS_NAME};
use crate::domain::Principal;
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
    /// uid, groups) may do this.
    pub fn review_for(&self, who: &Principal) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                uid: (!who.uid.is_empty()).then(|| who.uid.clone()),
                groups: Some(who.groups.clone()),
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

/// The decision of a reviewed SubjectAccessReview: allowed, and not explicitly denied.
pub fn is_allowed(status: Option<&SubjectAccessReviewStatus>) -> bool {
    status.is_some_and(|s| s.allowed && !s.denied.unwrap_or(false))
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

fn check(ns: &str, verb: &'static str, group: &'static str, resource: &'static str, name: Option<&str>) -> ResourceCheck {
    ResourceCheck { namespace: ns.into(), verb, group, resource, subresource: None, name: name.map(Into::into) }
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
            CommandBody::SessionStart(c) | CommandBody::SessionStop(c) => one(sessions("update", Some(c.name.as_str()))),
            CommandBody::SessionClone(c) => Requirement::All(vec![
                sessions("get", Some(c.name.as_str())),
                check(c.target_project.as_str(), "create", GROUP, "agenticsessions", None),
            ]),
            CommandBody::SessionStatus(c) => one(ResourceCheck::session_status(ns, c.name.as_str())),
            CommandBody::SessionDisplayName(c) => one(ResourceCheck::session_status(ns, c.name.as_str())),
            CommandBody::PermissionGrant(_) => one(check(ns, "create", RBAC, "rolebindings", None)),
            CommandBody::PermissionRevoke(_) => one(check(ns, "delete", RBAC, "rolebindings", None)),
            CommandBody::KeyCreate(_) => one(check(ns, "create", "", "serviceaccounts", None)),
            CommandBody::KeyRevoke(c) => one(check(ns, "delete", "", "serviceaccounts", Some(c.key_id.as_str()))),
            CommandBody::RunnerSecretPut(_) => one(check(ns, "update", "", "secrets", None)),
            CommandBody::RunnerSecretConfig(_) => one(settings("update")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{KeyView, PermissionView, SettingsView, Tombstone};
    use crate::{Role, SubjectType};

    #[test]
    fn every_status_event_has_the_audience_of_the_rest_read_that_shows_it() {
        let t = Tombstone { name: "x".into(), uid: None, at: chrono::Utc::now() };
        let key = KeyView { id: "k".into(), name: "k".into(), description: None, role: Some(Role::Admin), created_at: None, last_used_at: None };
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
            assert_eq!((c.verb, c.group, c.resource, c.namespace.as_str()), (verb, group, resource, "team-a"), "{}", body.type_str());
        }
    }
}
