//! What the projector keeps of each watched object: compact records, never a secret. The watch
//! side converts Kubernetes objects into [`Rec`]s with the functions here.

use std::collections::BTreeMap;

use events::Role;
use events::crd::{AgenticSession, ProjectSettings};
use events::status::{KeyView, PermissionView, ProjectView, SessionView, SettingsView};
use events::views::{self, KeyBinding};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;

use super::meta::{Meta, meta_of};
use super::runner::{JobRec, PodRec};

/// The resources the projector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    /// Managed namespaces.
    Namespaces,
    /// AgenticSessions.
    Sessions,
    /// Permission RoleBindings.
    PermissionBindings,
    /// Access-key ServiceAccounts.
    KeyAccounts,
    /// Access-key RoleBindings.
    KeyBindings,
    /// Sessions' runner Jobs.
    Jobs,
    /// Sessions' runner pods.
    Pods,
    /// ProjectSettings.
    Settings,
}

impl Res {
    /// Every watched resource.
    pub const ALL: [Res; 8] = [
        Res::Namespaces,
        Res::Sessions,
        Res::PermissionBindings,
        Res::KeyAccounts,
        Res::KeyBindings,
        Res::Jobs,
        Res::Pods,
        Res::Settings,
    ];

    /// Metric/log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Res::Namespaces => "namespaces",
            Res::Sessions => "agenticsessions",
            Res::PermissionBindings => "permission-rolebindings",
            Res::KeyAccounts => "key-serviceaccounts",
            Res::KeyBindings => "key-rolebindings",
            Res::Jobs => "runner-jobs",
            Res::Pods => "runner-pods",
            Res::Settings => "projectsettings",
        }
    }
}

/// A namespace as the projector keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceRec {
    /// Identity.
    pub meta: Meta,
    /// Carries `ambient-code.io/managed=true`.
    pub managed: bool,
    /// Matches this projector's `--project-selector` (always true without one).
    pub in_scope: bool,
    /// Its public view.
    pub view: ProjectView,
}

/// A session as the projector keeps it: the view only (the prompt and env values are dropped
/// at the watch).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRec {
    /// Identity.
    pub meta: Meta,
    /// Its public view.
    pub view: SessionView,
}

/// A grant found in a permission RoleBinding (see `events::views` for what counts).
pub type Grant = PermissionView;

/// A permission RoleBinding.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionRbRec {
    /// Identity.
    pub meta: Meta,
    /// The grants it makes (normally one).
    pub grants: Vec<Grant>,
}

/// An access-key ServiceAccount (its tokens are never read).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAccountRec {
    /// Identity.
    pub meta: Meta,
    /// Its view before its RoleBinding is looked at (role: the one asked for).
    pub view: KeyView,
}

/// An access-key RoleBinding.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBindingRec {
    /// Identity.
    pub meta: Meta,
    /// The ServiceAccount (key id) it binds.
    pub key_id: Option<String>,
    /// The role it grants.
    pub role: Option<Role>,
}

/// A project's ProjectSettings: its public view only (the runner Secret's name is reduced to
/// whether there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsRec {
    /// Identity.
    pub meta: Meta,
    /// Its public view.
    pub view: SettingsView,
}

/// A watched object, reduced to what the views need.
#[derive(Debug, Clone, PartialEq)]
pub enum Rec {
    /// Namespace.
    Namespace(NamespaceRec),
    /// Session.
    Session(Box<SessionRec>),
    /// Permission RoleBinding.
    PermissionBinding(PermissionRbRec),
    /// Access-key ServiceAccount.
    KeyAccount(KeyAccountRec),
    /// Access-key RoleBinding.
    KeyBinding(KeyBindingRec),
    /// A session's runner Job.
    Job(JobRec),
    /// A session's runner pod.
    Pod(PodRec),
    /// ProjectSettings.
    Settings(SettingsRec),
}

impl Rec {
    /// Identity.
    pub fn meta(&self) -> &Meta {
        match self {
            Rec::Namespace(r) => &r.meta,
            Rec::Session(r) => &r.meta,
            Rec::PermissionBinding(r) => &r.meta,
            Rec::KeyAccount(r) => &r.meta,
            Rec::KeyBinding(r) => &r.meta,
            Rec::Job(r) => &r.meta,
            Rec::Pod(r) => &r.meta,
            Rec::Settings(r) => &r.meta,
        }
    }
}

/// An equality-based label selector (`k=v,k2!=v2,k3`) restricting which projects this
/// projector owns, so that several projectors can share a bus, each with its own projects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectSelector {
    terms: Vec<(String, Option<(bool, String)>)>,
}

impl ProjectSelector {
    /// Parses `k=v`, `k==v`, `k!=v` and `k` (exists) terms separated by commas.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v) = if let Some((k, v)) = t.split_once("!=") {
                (k, Some((false, v)))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k, Some((true, v)))
            } else {
                (t, None)
            };
            let k = k.trim();
            if k.is_empty() || k.contains(' ') {
                return Err(format!("invalid selector term {t:?}"));
            }
            terms.push((k.to_string(), v.map(|(eq, v)| (eq, v.trim().to_string()))));
        }
        Ok(ProjectSelector { terms })
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|(k, v)| match v {
            None => labels.contains_key(k),
            Some((true, v)) => labels.get(k) == Some(v),
            Some((false, v)) => labels.get(k) != Some(v),
        })
    }
}

/// Reduces a Namespace.
pub fn namespace_rec(ns: &Namespace, selector: &ProjectSelector) -> NamespaceRec {
    NamespaceRec {
        meta: meta_of(ns),
        managed: views::is_project(ns),
        in_scope: selector.matches(ns.labels()),
        view: ProjectView::from_namespace(ns),
    }
}

/// Reduces an AgenticSession to its public view: environment variable *names* only, no prompt.
pub fn session_rec(s: &AgenticSession) -> SessionRec {
    SessionRec { meta: meta_of(s), view: SessionView::from_session(s) }
}

/// Reduces a ProjectSettings to its public view: group grants, and whether a runner Secret is
/// named (never the name).
pub fn settings_rec(ps: &ProjectSettings) -> SettingsRec {
    SettingsRec { meta: meta_of(ps), view: SettingsView::from_settings(ps) }
}

/// Reduces a permission RoleBinding to the grants RBAC makes of it.
pub fn permission_rec(rb: &RoleBinding) -> PermissionRbRec {
    PermissionRbRec { meta: meta_of(rb), grants: PermissionView::grants_of(rb) }
}

/// Reduces an access-key ServiceAccount (annotations only; its secrets are never looked at).
pub fn key_account_rec(sa: &ServiceAccount) -> KeyAccountRec {
    KeyAccountRec { meta: meta_of(sa), view: KeyView::from_account(sa, None, None) }
}

/// Reduces an access-key RoleBinding.
pub fn key_binding_rec(rb: &RoleBinding) -> KeyBindingRec {
    let binding = KeyBinding::of(rb);
    KeyBindingRec {
        meta: meta_of(rb),
        key_id: binding.as_ref().map(|b| b.key_id.clone()),
        role: binding.and_then(|b| b.role),
    }
}
