//! What the projector keeps of each watched object (compact records, never a secret), the
//! public views computed from them, and the diff of a view against the last projected one.
//!
//! Everything here is pure: the watch side converts Kubernetes objects into [`Rec`]s, the
//! projection loop asks [`desired_for_project`] what the read model should hold and [`diff`]
//! which status events bring a consumer from the last projected state to it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::crd::{AgenticSession, PROJECT_SETTINGS_NAME, ProjectSettings};
use events::status::{
    KeyView, PermissionView, PhaseTransition, ProjectView, RunnerView, SessionView, SettingsView, Tombstone,
};
use events::streams::{ACCESS_BUCKET, PROJECTS_BUCKET, SESSIONS_BUCKET};
use events::views::{self, KeyBinding};
use events::{Phase, ProjectName, Role, StatusBody, StatusEvent, SubjectName, SubjectType};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::runner::{self, JobRec, PodRec};

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

/// Identity and version of a watched object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Namespace (the namespace's own name for a Namespace).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// uid.
    pub uid: String,
    /// resourceVersion.
    pub resource_version: String,
}

/// The identity of any object.
pub fn meta_of<K: ResourceExt>(obj: &K) -> Meta {
    Meta {
        namespace: obj.namespace().unwrap_or_else(|| obj.name_any()),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        resource_version: obj.resource_version().unwrap_or_default(),
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

/// Which read-model objects a watch observation can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any object of the project: namespaces, settings, permissions and keys change rarely.
    Project,
    /// One session and its runner view: sessions, their Jobs and pods, the busy path, where
    /// re-deriving a whole project per change would cost as much as the project is large.
    Session(String),
}

impl Scope {
    /// The read-model keys of project `ns` this scope covers beyond what is desired now (so
    /// that what went is deleted); `None` for the whole project.
    pub fn keys(&self, ns: &str) -> Option<[ObjKey; 2]> {
        match self {
            Scope::Project => None,
            Scope::Session(s) => Some([ObjKey::Session(ns.into(), s.clone()), ObjKey::Runner(ns.into(), s.clone())]),
        }
    }
}

impl Rec {
    /// What a change of this object can change in the read model.
    pub fn scope(&self) -> Scope {
        match self {
            Rec::Session(s) => Scope::Session(s.meta.name.clone()),
            // A Job counts only for the session whose runner Job name it has (see `JobRec::runs`).
            Rec::Job(j) => {
                runner::session_of_job(&j.meta.name).map_or(Scope::Project, |s| Scope::Session(s.to_string()))
            }
            Rec::Pod(p) => p.session.clone().map_or(Scope::Project, Scope::Session),
            _ => Scope::Project,
        }
    }
}

pub use events::views::to_chrono;

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

/// One object of the read model: a bucket key and the status subject name token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjKey {
    /// `<project>` in the projects bucket.
    Project(String),
    /// `<project>.<session>` in the sessions bucket.
    Session(String, String),
    /// `<project>.<session>.runner` in the sessions bucket: the session's runner view.
    Runner(String, String),
    /// `<project>.permission.<subjectType>-<suffix>` in the access bucket.
    Permission(String, String),
    /// `<project>.key.<id>` in the access bucket.
    Key(String, String),
    /// `<project>.settings.projectsettings` in the access bucket: the project's settings view.
    Settings(String),
}

impl ObjKey {
    /// The project.
    pub fn project(&self) -> &str {
        match self {
            ObjKey::Project(p)
            | ObjKey::Settings(p)
            | ObjKey::Session(p, _)
            | ObjKey::Runner(p, _)
            | ObjKey::Permission(p, _)
            | ObjKey::Key(p, _) => p,
        }
    }

    /// The status subject's name token.
    pub fn name(&self) -> &str {
        match self {
            ObjKey::Project(p) | ObjKey::Settings(p) => p,
            ObjKey::Session(_, n) | ObjKey::Runner(_, n) | ObjKey::Permission(_, n) | ObjKey::Key(_, n) => n,
        }
    }

    /// The KV bucket.
    pub fn bucket(&self) -> &'static str {
        match self {
            ObjKey::Project(_) => PROJECTS_BUCKET,
            ObjKey::Session(..) | ObjKey::Runner(..) => SESSIONS_BUCKET,
            ObjKey::Permission(..) | ObjKey::Key(..) | ObjKey::Settings(_) => ACCESS_BUCKET,
        }
    }

    /// The key in its bucket.
    pub fn kv_key(&self) -> String {
        match self {
            ObjKey::Project(p) => p.clone(),
            ObjKey::Session(p, s) => format!("{p}.{s}"),
            ObjKey::Permission(p, n) => format!("{p}.permission.{n}"),
            ObjKey::Key(p, n) => format!("{p}.key.{n}"),
            ObjKey::Runner(p, s) => format!("{p}.{s}.runner"),
            ObjKey::Settings(p) => format!("{p}.settings.{PROJECT_SETTINGS_NAME}"),
        }
    }

    /// Parses a bucket key back (`None` for keys the projector does not own).
    pub fn from_kv(bucket: &str, key: &str) -> Option<ObjKey> {
        let valid = |s: &str| events::names::check_dns1123_label("key", s, 63).is_ok();
        let parts: Vec<&str> = key.split('.').collect();
        let k = match (bucket, parts.as_slice()) {
            (PROJECTS_BUCKET, [p]) => ObjKey::Project(p.to_string()),
            (SESSIONS_BUCKET, [p, s]) => ObjKey::Session(p.to_string(), s.to_string()),
            (ACCESS_BUCKET, [p, "permission", n]) => ObjKey::Permission(p.to_string(), n.to_string()),
            (ACCESS_BUCKET, [p, "key", n]) => ObjKey::Key(p.to_string(), n.to_string()),
            (SESSIONS_BUCKET, [p, s, "runner"]) => ObjKey::Runner(p.to_string(), s.to_string()),
            (ACCESS_BUCKET, [p, "settings", PROJECT_SETTINGS_NAME]) => ObjKey::Settings(p.to_string()),
            _ => return None,
        };
        (valid(k.project()) && valid(k.name())).then_some(k)
    }

    /// A view attached to a parent object (the session's runner, the project's settings): it
    /// lives while its parent does, has a "gone" state of its own, and no deletion event (its
    /// parent's tells).
    pub fn is_subview(&self) -> bool {
        matches!(self, ObjKey::Runner(..) | ObjKey::Settings(_))
    }
}

/// A public view of any kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum View {
    /// Session (first: its required fields make the untagged match unambiguous).
    Session(Box<SessionView>),
    /// Key.
    Key(KeyView),
    /// Permission.
    Permission(PermissionView),
    /// Project.
    Project(ProjectView),
    /// Project settings (after Project: its required `exists` tells it apart).
    Settings(SettingsView),
    /// Session runner (last: only `name` is required, so anything above matches first).
    Runner(RunnerView),
}

impl View {
    /// Equal as far as a consumer can tell: the session's resourceVersion is bookkeeping.
    pub fn same_public(&self, other: &View) -> bool {
        match (self, other) {
            (View::Session(a), View::Session(b)) => {
                let mut b = b.as_ref().clone();
                b.resource_version.clone_from(&a.resource_version);
                **a == b
            }
            _ => self == other,
        }
    }

    /// The "gone" state of a sub-view: a runner without a Job, settings without their object.
    pub fn is_gone(&self) -> bool {
        match self {
            View::Runner(v) => v.job.is_none(),
            View::Settings(v) => !v.exists,
            _ => false,
        }
    }

    fn phase(&self) -> Option<Phase> {
        match self {
            View::Session(s) => Some(s.phase),
            _ => None,
        }
    }
}

/// What the read model should hold for one object now.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// uid of the object the view is about (the permission's strongest binding).
    pub uid: String,
    /// Version the view was taken at: the resourceVersion, or `rv+rv` for a view built from
    /// two objects (a key's ServiceAccount and RoleBinding, a runner's Job and pod). Empty for
    /// a sub-view's gone state, whose version [`diff`] derives from the last projected one.
    pub version: String,
    /// The view.
    pub view: View,
}

/// The last projected state of one object: the value in its read-model bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Projected {
    /// uid of the object.
    pub uid: String,
    /// Version the view was taken at (see [`Desired::version`]).
    pub version: String,
    /// When this view was projected.
    pub projected_at: DateTime<Utc>,
    /// Sessions: since when the session is in its current phase (as observed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<DateTime<Utc>>,
    /// The public view.
    pub view: View,
}

/// The watched objects, by resource and `(namespace, name)`.
#[derive(Debug, Default)]
pub struct ClusterState {
    maps: BTreeMap<Res, BTreeMap<(String, String), Rec>>,
}

impl ClusterState {
    /// Replaces everything of `res` (after a (re)list).
    pub fn replace(&mut self, res: Res, items: BTreeMap<(String, String), Rec>) {
        self.maps.insert(res, items);
    }

    /// Adds or replaces one object.
    pub fn apply(&mut self, res: Res, rec: Rec) {
        let m = rec.meta();
        let k = (m.namespace.clone(), m.name.clone());
        self.maps.entry(res).or_default().insert(k, rec);
    }

    /// One object.
    pub fn get(&self, res: Res, namespace: &str, name: &str) -> Option<&Rec> {
        self.maps.get(&res)?.get(&(namespace.to_string(), name.to_string()))
    }

    /// Removes one object.
    pub fn remove(&mut self, res: Res, namespace: &str, name: &str) {
        if let Some(m) = self.maps.get_mut(&res) {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    fn in_ns(&self, res: Res, ns: &str) -> impl Iterator<Item = &Rec> {
        self.maps
            .get(&res)
            .into_iter()
            .flat_map(move |m| m.range((ns.to_string(), String::new())..).take_while(move |((n, _), _)| n == ns))
            .map(|(_, r)| r)
    }

    /// A project that exists but belongs to another projector (`--project-selector`): this
    /// one neither projects nor deletes anything of it.
    pub fn out_of_scope(&self, ns: &str) -> bool {
        matches!(self.in_ns(Res::Namespaces, ns).next(), Some(Rec::Namespace(n)) if !n.in_scope)
    }

    /// Names of the managed namespaces this projector owns.
    pub fn projects(&self) -> Vec<String> {
        self.in_all(Res::Namespaces)
            .filter_map(|r| match r {
                Rec::Namespace(n) if n.managed && n.in_scope => Some(n.meta.name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Objects of `res` in `ns` whose names start with `prefix`.
    fn in_ns_prefixed<'a>(&'a self, res: Res, ns: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a Rec> {
        self.maps
            .get(&res)
            .into_iter()
            .flat_map(move |m| {
                m.range((ns.to_string(), prefix.to_string())..)
                    .take_while(move |((n, name), _)| n == ns && name.starts_with(prefix))
            })
            .map(|(_, r)| r)
    }

    fn in_all(&self, res: Res) -> impl Iterator<Item = &Rec> {
        self.maps.get(&res).into_iter().flat_map(|m| m.values())
    }
}

/// The name token of a permission of `subject`: `<subjectType>-<sanitized subject + hash>`.
pub fn permission_token(subject_type: SubjectType, subject_name: &str) -> Option<String> {
    let prefix = subject_type.as_str();
    let subject = SubjectName::new(subject_name).ok()?;
    Some(format!("{prefix}-{}", subject.object_suffix(63 - prefix.len() - 1)))
}

fn is_token(s: &str) -> bool {
    events::names::check_dns1123_label("name", s, 63).is_ok()
}

/// The namespace of project `ns`, if it is a managed project this projector owns.
fn owned_project<'a>(state: &'a ClusterState, ns: &str) -> Option<&'a NamespaceRec> {
    match state.in_ns(Res::Namespaces, ns).next() {
        Some(Rec::Namespace(nsr)) if nsr.managed && nsr.in_scope && ProjectName::new(ns).is_ok() => Some(nsr),
        _ => None,
    }
}

/// The incarnation of project `ns` the read model holds (`projected_uid`, the uid of its
/// projected project view) and the one the cluster has now: [`Incarnation::Current`] while
/// they are the same namespace, [`Incarnation::Over`] once that namespace is gone, is no
/// longer a managed project of ours, or the name belongs to another namespace.
pub fn incarnation(state: &ClusterState, ns: &str, projected_uid: Option<&str>) -> Incarnation {
    let now = project_uid(state, ns).map(String::from);
    match projected_uid {
        Some(old) if now.as_deref() != Some(old) => Incarnation::Over { old: old.to_string(), now },
        _ => Incarnation::Current(now),
    }
}

/// See [`incarnation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incarnation {
    /// The read model is of the namespace that exists now (its uid; `None` if there is none
    /// and nothing of it is projected).
    Current(Option<String>),
    /// The read model is of namespace `old`, which is over: everything of it is projected as
    /// deleted and its history purged before anything of `now` (if any) is projected.
    Over {
        /// The projected namespace's uid.
        old: String,
        /// The current namespace's uid, if the name is a project again.
        now: Option<String>,
    },
}

/// The uid of project `ns`'s namespace, if it is a managed project this projector owns.
pub fn project_uid<'a>(state: &'a ClusterState, ns: &str) -> Option<&'a str> {
    owned_project(state, ns).map(|n| n.meta.uid.as_str())
}

/// The uid to stamp events of project `ns` with while its incarnation is `inc`.
pub fn stamp_for(inc: &Incarnation) -> Option<&str> {
    match inc {
        Incarnation::Current(uid) => uid.as_deref(),
        Incarnation::Over { old, .. } => Some(old),
    }
}

/// What the read model should hold for session `session` of project `ns`: its view and its
/// runner's (empty if the session or the project is gone, so that both are projected as
/// deleted). The same as [`desired_for_project`] restricted to those keys.
pub fn desired_for_session(state: &ClusterState, ns: &str, session: &str) -> BTreeMap<ObjKey, Desired> {
    let mut out = BTreeMap::new();
    let Some(nsr) = owned_project(state, ns) else { return out };
    let Some(Rec::Session(s)) = state.get(Res::Sessions, ns, session) else { return out };
    // The Job controller names a Job's pods `<job>-<suffix>`.
    let prefix = format!("{}-", runner::job_name(session));
    let newest_pod = |job_uid: &str| {
        let mut newest: Option<&PodRec> = None;
        for r in state.in_ns_prefixed(Res::Pods, ns, &prefix) {
            if let Rec::Pod(p) = r
                && p.job_uid.as_deref() == Some(job_uid)
                && newest.is_none_or(|q| p.newer_than(q))
            {
                newest = Some(p);
            }
        }
        newest
    };
    insert_session(&mut out, state, ns, s, nsr.view.status == "Terminating", newest_pod);
    out
}

/// Adds the views of session `s` and its runner; `newest_pod` finds the newest pod of a Job.
fn insert_session<'a>(
    out: &mut BTreeMap<ObjKey, Desired>,
    state: &'a ClusterState,
    ns: &str,
    s: &SessionRec,
    terminating: bool,
    newest_pod: impl Fn(&str) -> Option<&'a PodRec>,
) {
    if !is_token(&s.meta.name) {
        return;
    }
    out.insert(
        ObjKey::Session(ns.to_string(), s.meta.name.clone()),
        Desired {
            uid: s.meta.uid.clone(),
            version: s.meta.resource_version.clone(),
            view: View::Session(Box::new(s.view.clone())),
        },
    );
    // The runner's identity is its session's: every run of the session is one story.
    let job = match state.get(Res::Jobs, ns, &runner::job_name(&s.meta.name)) {
        Some(Rec::Job(j)) if j.runs(&s.meta.name, &s.meta.uid) => Some(j),
        _ => None,
    };
    let runner = match job {
        Some(j) => Some(runner::runner_view(&s.meta.name, j, newest_pod(j.meta.uid.as_str()))),
        None if terminating => None,
        None => Some((String::new(), runner::gone(&s.meta.name))),
    };
    if let Some((version, view)) = runner {
        out.insert(
            ObjKey::Runner(ns.to_string(), s.meta.name.clone()),
            Desired { uid: s.meta.uid.clone(), version, view: View::Runner(view) },
        );
    }
}

/// Everything the read model should hold for project `ns` (empty if it is not a managed
/// namespace, so that all its objects are projected as deleted).
pub fn desired_for_project(state: &ClusterState, ns: &str) -> BTreeMap<ObjKey, Desired> {
    let mut out = BTreeMap::new();
    let Some(nsr) = owned_project(state, ns) else { return out };
    out.insert(
        ObjKey::Project(ns.to_string()),
        Desired {
            uid: nsr.meta.uid.clone(),
            version: nsr.meta.resource_version.clone(),
            view: View::Project(nsr.view.clone()),
        },
    );
    // While the project is being deleted, sub-views that go are dropped without a "gone"
    // event: the deletions of their parents follow and tell.
    let terminating = nsr.view.status == "Terminating";
    // The settings' identity is the project's (a re-created ProjectSettings is the same
    // settings); gone settings are reported only after present ones (see `diff`).
    let settings = match state.get(Res::Settings, ns, PROJECT_SETTINGS_NAME) {
        Some(Rec::Settings(ps)) => Some((ps.meta.resource_version.clone(), ps.view.clone())),
        _ if terminating => None,
        _ => Some((String::new(), SettingsView::absent())),
    };
    if let Some((version, view)) = settings {
        out.insert(
            ObjKey::Settings(ns.to_string()),
            Desired { uid: nsr.meta.uid.clone(), version, view: View::Settings(view) },
        );
    }
    // The newest pod of each Job, by Job uid (one pass, not one per session).
    let mut newest_pod: BTreeMap<&str, &PodRec> = BTreeMap::new();
    for r in state.in_ns(Res::Pods, ns) {
        let Rec::Pod(p) = r else { continue };
        let Some(job_uid) = p.job_uid.as_deref() else { continue };
        if newest_pod.get(job_uid).is_none_or(|q| p.newer_than(q)) {
            newest_pod.insert(job_uid, p);
        }
    }
    for r in state.in_ns(Res::Sessions, ns) {
        if let Rec::Session(s) = r {
            insert_session(&mut out, state, ns, s, terminating, |uid| newest_pod.get(uid).copied());
        }
    }
    // Permissions: one per subject; the strongest role wins while a role change briefly
    // leaves two bindings.
    let mut perms: BTreeMap<String, (Grant, &Meta, Vec<&Meta>)> = BTreeMap::new();
    for r in state.in_ns(Res::PermissionBindings, ns) {
        let Rec::PermissionBinding(rb) = r else { continue };
        for g in &rb.grants {
            let Some(token) = permission_token(g.subject_type, &g.subject_name) else { continue };
            match perms.get_mut(&token) {
                None => {
                    perms.insert(token, (g.clone(), &rb.meta, vec![&rb.meta]));
                }
                Some((best, best_meta, all)) => {
                    all.push(&rb.meta);
                    if g.role < best.role {
                        *best = g.clone();
                        *best_meta = &rb.meta;
                    }
                }
            }
        }
    }
    for (token, (g, best_meta, all)) in perms {
        let version = all.iter().map(|m| m.resource_version.as_str()).collect::<Vec<_>>().join("+");
        out.insert(
            ObjKey::Permission(ns.to_string(), token),
            Desired {
                uid: best_meta.uid.clone(),
                version,
                view: View::Permission(PermissionView {
                    subject_type: g.subject_type,
                    subject_name: g.subject_name,
                    role: g.role,
                }),
            },
        );
    }
    for r in state.in_ns(Res::KeyAccounts, ns) {
        let Rec::KeyAccount(sa) = r else { continue };
        if !is_token(&sa.meta.name) {
            continue;
        }
        let rb = state.in_ns(Res::KeyBindings, ns).find_map(|r| match r {
            Rec::KeyBinding(b) if b.key_id.as_deref() == Some(sa.meta.name.as_str()) => Some(b),
            _ => None,
        });
        let version = match rb {
            Some(b) => format!("{}+{}", sa.meta.resource_version, b.meta.resource_version),
            None => sa.meta.resource_version.clone(),
        };
        out.insert(
            ObjKey::Key(ns.to_string(), sa.meta.name.clone()),
            Desired {
                uid: sa.meta.uid.clone(),
                version,
                view: View::Key(KeyView { role: rb.and_then(|b| b.role).or(sa.view.role), ..sa.view.clone() }),
            },
        );
    }
    out
}

/// What to do for one object: the events to publish (in order) and the new read-model value
/// (`None`: delete the key).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Events, in publish order.
    pub events: Vec<StatusEvent>,
    /// The new value of the key.
    pub store: Option<Projected>,
}

fn changed_body(view: &View) -> StatusBody {
    match view {
        View::Project(v) => StatusBody::ProjectChanged(v.clone()),
        View::Session(v) => StatusBody::SessionChanged(v.as_ref().clone()),
        View::Permission(v) => StatusBody::PermissionChanged(v.clone()),
        View::Key(v) => StatusBody::KeyChanged(v.clone()),
        View::Runner(v) => StatusBody::SessionRunner(v.clone()),
        View::Settings(v) => StatusBody::ProjectSettings(v.clone()),
    }
}

/// The deletion event of an object; sub-views have none (their parent's deletion tells).
fn deleted_body(key: &ObjKey, t: Tombstone) -> Option<StatusBody> {
    match key {
        ObjKey::Project(_) => Some(StatusBody::ProjectDeleted(t)),
        ObjKey::Session(..) => Some(StatusBody::SessionDeleted(t)),
        ObjKey::Permission(..) => Some(StatusBody::PermissionDeleted(t)),
        ObjKey::Key(..) => Some(StatusBody::KeyDeleted(t)),
        ObjKey::Runner(..) | ObjKey::Settings(_) => None,
    }
}

/// The status events that bring a consumer from `projected` to `desired` for object `key`,
/// observed at `now`; `None` when nothing changed as far as a consumer can tell.
///
/// Ids are `StatusEvent::derive_id(uid, version, type)`: a replay after a crash (events
/// published, read model not yet written) derives the same ids, which JetStream drops as
/// duplicates. A deletion uses the last projected version, known to both the live path and
/// the catch-up after downtime. Every event is stamped with `project_uid`, the uid of the
/// project namespace the events are about (see [`stamp_for`]).
pub fn diff(
    project: &ProjectName,
    project_uid: Option<&str>,
    key: &ObjKey,
    desired: Option<&Desired>,
    projected: Option<&Projected>,
    now: DateTime<Utc>,
) -> Option<Step> {
    if key.is_subview() {
        return diff_subview(project, project_uid, key, desired, projected, now);
    }
    let event = |uid: &str, version: &str, body: StatusBody| StatusEvent {
        id: StatusEvent::derive_id(uid, version, body.type_str()),
        project: project.clone(),
        name: key.name().to_string(),
        time: now,
        project_uid: project_uid.map(String::from),
        body,
    };
    let tombstone = |p: &Projected| -> Vec<StatusEvent> {
        let t = Tombstone { name: key.name().to_string(), uid: Some(p.uid.clone()), at: now };
        deleted_body(key, t).map(|body| event(&p.uid, &p.version, body)).into_iter().collect()
    };
    let created = |d: &Desired, events: &mut Vec<StatusEvent>| -> Projected {
        events.push(event(&d.uid, &d.version, changed_body(&d.view)));
        if let Some(phase) = d.view.phase() {
            events.push(event(
                &d.uid,
                &d.version,
                StatusBody::SessionPhase(transition(key, None, phase, &d.view, now, None)),
            ));
        }
        Projected {
            uid: d.uid.clone(),
            version: d.version.clone(),
            projected_at: now,
            phase_since: d.view.phase().map(|_| now),
            view: d.view.clone(),
        }
    };
    match (desired, projected) {
        (None, None) => None,
        (None, Some(p)) => Some(Step { events: tombstone(p), store: None }),
        (Some(d), None) => {
            let mut events = Vec::new();
            let store = created(d, &mut events);
            Some(Step { events, store: Some(store) })
        }
        // The name now belongs to another object: the old one is gone, a new one exists.
        // (A permission is its subject, whichever binding carries it.)
        (Some(d), Some(p)) if d.uid != p.uid && !matches!(key, ObjKey::Permission(..)) => {
            let mut events = tombstone(p);
            let store = created(d, &mut events);
            Some(Step { events, store: Some(store) })
        }
        (Some(d), Some(p)) => {
            if d.view.same_public(&p.view) {
                return None;
            }
            let mut events = vec![event(&d.uid, &d.version, changed_body(&d.view))];
            let mut phase_since = p.phase_since;
            if let (Some(old), Some(new)) = (p.view.phase(), d.view.phase())
                && old != new
            {
                let secs = p.phase_since.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
                events.push(event(
                    &d.uid,
                    &d.version,
                    StatusBody::SessionPhase(transition(key, Some(old), new, &d.view, now, secs)),
                ));
                phase_since = Some(now);
            }
            Some(Step {
                events,
                store: Some(Projected {
                    uid: d.uid.clone(),
                    version: d.version.clone(),
                    projected_at: now,
                    phase_since,
                    view: d.view.clone(),
                }),
            })
        }
    }
}

/// [`diff`] of a sub-view (a session's runner, a project's settings). It is published with its
/// own type whenever it differs from the projected one. Its gone state is published only after
/// a view that was not gone (nothing to tell before), with the id version `<last projected
/// version>+gone`, the same live and after downtime. It is dropped without an event when its
/// parent goes, and a projected view of an earlier parent of the same name does not count.
fn diff_subview(
    project: &ProjectName,
    project_uid: Option<&str>,
    key: &ObjKey,
    desired: Option<&Desired>,
    projected: Option<&Projected>,
    now: DateTime<Utc>,
) -> Option<Step> {
    let drop = Step { events: Vec::new(), store: None };
    let publish = |d: &Desired, version: String| {
        let body = changed_body(&d.view);
        let ev = StatusEvent {
            id: StatusEvent::derive_id(&d.uid, &version, body.type_str()),
            project: project.clone(),
            name: key.name().to_string(),
            time: now,
            project_uid: project_uid.map(String::from),
            body,
        };
        Step {
            events: vec![ev],
            store: Some(Projected {
                uid: d.uid.clone(),
                version,
                projected_at: now,
                phase_since: None,
                view: d.view.clone(),
            }),
        }
    };
    let Some(d) = desired else {
        return projected.map(|_| drop);
    };
    match projected.filter(|p| p.uid == d.uid) {
        Some(p) if d.view.same_public(&p.view) => None,
        Some(p) if d.view.is_gone() => Some(publish(d, format!("{}+gone", p.version))),
        Some(_) => Some(publish(d, d.version.clone())),
        None if d.view.is_gone() => projected.map(|_| drop),
        None => Some(publish(d, d.version.clone())),
    }
}

fn transition(
    key: &ObjKey,
    previous: Option<Phase>,
    phase: Phase,
    view: &View,
    at: DateTime<Utc>,
    secs: Option<f64>,
) -> PhaseTransition {
    let (reason, message, start_time, completion_time) = match view {
        View::Session(s) => (s.reason.clone(), s.message.clone(), s.start_time, s.completion_time),
        _ => (None, None, None, None),
    };
    PhaseTransition {
        name: key.name().to_string(),
        previous_phase: previous,
        phase,
        at,
        previous_phase_seconds: secs,
        reason,
        message,
        start_time,
        completion_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, name: &str, uid: &str, rv: &str) -> Meta {
        Meta { namespace: ns.into(), name: name.into(), uid: uid.into(), resource_version: rv.into() }
    }

    fn ns_rec(name: &str, managed: bool) -> Rec {
        Rec::Namespace(NamespaceRec {
            meta: meta(name, name, "ns-uid", "1"),
            managed,
            in_scope: true,
            view: ProjectView {
                name: name.into(),
                display_name: None,
                description: None,
                requester: None,
                creation_timestamp: None,
                status: "Active".into(),
            },
        })
    }

    fn session(ns: &str, name: &str, rv: &str, phase: Phase) -> Rec {
        Rec::Session(Box::new(SessionRec {
            meta: meta(ns, name, "s-uid", rv),
            view: SessionView {
                name: name.into(),
                uid: "s-uid".into(),
                resource_version: rv.into(),
                generation: 1,
                creation_timestamp: None,
                display_name: None,
                created_by: None,
                interactive: false,
                timeout: 3600,
                llm_settings: None,
                repos: vec![],
                environment_variable_names: vec!["API_KEY".into()],
                phase,
                message: None,
                reason: None,
                start_time: None,
                completion_time: None,
                result: None,
                total_cost_usd: None,
                num_turns: None,
            },
        }))
    }

    #[test]
    fn a_change_reaches_the_session_it_belongs_to() {
        assert_eq!(Rec::Job(job("p", "s1", "o", "j", "1", 0, 0)).scope(), Scope::Session("s1".into()));
        assert_eq!(Rec::Pod(pod("p", "s1-job-abc", "j", "1", "Running")).scope(), Scope::Session("s1".into()));
        let mut unlabelled = pod("p", "x", "j", "1", "Running");
        unlabelled.session = None;
        assert_eq!(Rec::Pod(unlabelled).scope(), Scope::Project);
        let mut foreign = job("p", "s1", "o", "j", "1", 0, 0);
        foreign.meta.name = "-job".into();
        assert_eq!(Rec::Job(foreign).scope(), Scope::Project);
        assert_eq!(Rec::Settings(settings("p", "1", false)).scope(), Scope::Project);
    }

    /// The projection of one session's change sees what the whole project's does, for that
    /// session's keys (every test that projects goes through here).
    fn assert_session_scope_agrees(state: &ClusterState, ns: &str, desired: &BTreeMap<ObjKey, Desired>) {
        let sessions: Vec<String> =
            state.in_ns(Res::Sessions, ns).map(|r| r.meta().name.clone()).chain(["absent".to_string()]).collect();
        for s in sessions {
            let keys = Scope::Session(s.clone()).keys(ns).unwrap();
            let whole: BTreeMap<ObjKey, Desired> =
                desired.iter().filter(|(k, _)| keys.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(desired_for_session(state, ns, &s), whole, "session {s} of {ns}");
        }
    }

    fn apply_all(state: &ClusterState, store: &mut BTreeMap<ObjKey, Projected>, ns: &str) -> Vec<StatusEvent> {
        let p = ProjectName::new(ns).unwrap();
        let desired = desired_for_project(state, ns);
        assert_session_scope_agrees(state, ns, &desired);
        let keys: std::collections::BTreeSet<ObjKey> =
            desired.keys().cloned().chain(store.keys().filter(|k| k.project() == ns).cloned()).collect();
        let mut out = vec![];
        for k in keys {
            if let Some(step) = diff(&p, Some("ns-uid"), &k, desired.get(&k), store.get(&k), Utc::now()) {
                out.extend(step.events);
                match step.store {
                    Some(v) => store.insert(k, v),
                    None => store.remove(&k),
                };
            }
        }
        out
    }

    fn types(evs: &[StatusEvent]) -> Vec<&'static str> {
        evs.iter().map(|e| e.body.type_str()).collect()
    }

    #[test]
    fn session_lifecycle_emits_changed_and_phase_once() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("p1", true));
        st.apply(Res::Sessions, session("p1", "s1", "10", Phase::Pending));
        let evs = apply_all(&st, &mut store, "p1");
        assert_eq!(
            types(&evs),
            ["ambient.project.changed.v1", "ambient.session.changed.v1", "ambient.session.phase.v1"]
        );
        // A relist or a heartbeat (new resourceVersion, same view) emits nothing.
        st.apply(Res::Sessions, session("p1", "s1", "11", Phase::Pending));
        assert!(apply_all(&st, &mut store, "p1").is_empty());
        st.apply(Res::Sessions, session("p1", "s1", "12", Phase::Running));
        let evs = apply_all(&st, &mut store, "p1");
        assert_eq!(types(&evs), ["ambient.session.changed.v1", "ambient.session.phase.v1"]);
        match &evs[1].body {
            StatusBody::SessionPhase(t) => {
                assert_eq!(t.previous_phase, Some(Phase::Pending));
                assert_eq!(t.phase, Phase::Running);
                assert!(t.previous_phase_seconds.is_some());
            }
            b => panic!("{b:?}"),
        }
        assert_eq!(evs[1].id, "s-uid/12/ambient.session.phase.v1");
        st.remove(Res::Sessions, "p1", "s1");
        let evs = apply_all(&st, &mut store, "p1");
        assert_eq!(types(&evs), ["ambient.session.deleted.v1"]);
        // The deletion id uses the last projected version: the same live or after downtime.
        assert_eq!(evs[0].id, "s-uid/12/ambient.session.deleted.v1");
        assert!(apply_all(&st, &mut store, "p1").is_empty());
    }

    #[test]
    fn unmanaged_namespace_projects_nothing_and_unlabelling_deletes() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("p2", false));
        st.apply(Res::Sessions, session("p2", "s", "1", Phase::Pending));
        assert!(apply_all(&st, &mut store, "p2").is_empty());
        st.apply(Res::Namespaces, ns_rec("p2", true));
        assert_eq!(apply_all(&st, &mut store, "p2").len(), 3);
        st.remove(Res::Namespaces, "p2", "p2");
        let evs = apply_all(&st, &mut store, "p2");
        let mut t = types(&evs);
        t.sort();
        assert_eq!(t, ["ambient.project.deleted.v1", "ambient.session.deleted.v1"]);
    }

    #[test]
    fn a_projects_incarnation_is_over_when_its_namespace_goes_or_is_another() {
        let mut st = ClusterState::default();
        assert_eq!(incarnation(&st, "p9", None), Incarnation::Current(None), "nothing projected, nothing there");
        st.apply(Res::Namespaces, ns_rec("p9", true));
        assert_eq!(incarnation(&st, "p9", None), Incarnation::Current(Some("ns-uid".into())), "a new project");
        assert_eq!(incarnation(&st, "p9", Some("ns-uid")), Incarnation::Current(Some("ns-uid".into())));
        let over = |now: Option<&str>| Incarnation::Over { old: "old-uid".into(), now: now.map(String::from) };
        assert_eq!(
            incarnation(&st, "p9", Some("old-uid")),
            over(Some("ns-uid")),
            "the name was taken by another namespace"
        );
        assert_eq!(
            stamp_for(&over(Some("ns-uid"))),
            Some("old-uid"),
            "the old one's events are stamped as the old one's"
        );
        st.apply(Res::Namespaces, ns_rec("p9", false));
        assert_eq!(
            incarnation(&st, "p9", Some("ns-uid")),
            Incarnation::Over { old: "ns-uid".into(), now: None },
            "no longer managed"
        );
        st.remove(Res::Namespaces, "p9", "p9");
        assert_eq!(
            incarnation(&st, "p9", Some("ns-uid")),
            Incarnation::Over { old: "ns-uid".into(), now: None },
            "gone"
        );
    }

    #[test]
    fn events_carry_the_project_namespace_uid() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("p8", true));
        st.apply(Res::Sessions, session("p8", "s", "1", Phase::Pending));
        let evs = apply_all(&st, &mut store, "p8");
        assert!(!evs.is_empty());
        assert!(evs.iter().all(|e| e.project_uid.as_deref() == Some("ns-uid")), "{evs:?}");
    }

    #[test]
    fn selector_scopes_projects() {
        let sel = ProjectSelector::parse("team=a, tier!=prod,owner").unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
        };
        assert!(sel.matches(&l(&[("team", "a"), ("owner", "x")])));
        assert!(!sel.matches(&l(&[("team", "a"), ("owner", "x"), ("tier", "prod")])));
        assert!(!sel.matches(&l(&[("team", "a")])));
        assert!(ProjectSelector::default().matches(&BTreeMap::new()));
        let mut st = ClusterState::default();
        let Rec::Namespace(mut n) = ns_rec("other", true) else { unreachable!() };
        n.in_scope = false;
        st.apply(Res::Namespaces, Rec::Namespace(n));
        st.apply(Res::Sessions, session("other", "s", "1", Phase::Pending));
        assert!(st.out_of_scope("other"));
        assert!(desired_for_project(&st, "other").is_empty());
        assert!(st.projects().is_empty());
    }

    #[test]
    fn permissions_keep_the_strongest_role_per_subject() {
        let mut st = ClusterState::default();
        st.apply(Res::Namespaces, ns_rec("p3", true));
        let g = |role| Grant { subject_type: SubjectType::User, subject_name: "alice@example.com".into(), role };
        st.apply(
            Res::PermissionBindings,
            Rec::PermissionBinding(PermissionRbRec { meta: meta("p3", "a", "u1", "5"), grants: vec![g(Role::View)] }),
        );
        st.apply(
            Res::PermissionBindings,
            Rec::PermissionBinding(PermissionRbRec { meta: meta("p3", "b", "u2", "6"), grants: vec![g(Role::Admin)] }),
        );
        let d = desired_for_project(&st, "p3");
        let (k, v) = d.iter().find(|(k, _)| matches!(k, ObjKey::Permission(..))).unwrap();
        assert!(k.name().starts_with("user-alice-example-com-"), "{k:?}");
        assert!(is_token(k.name()));
        assert_eq!(v.uid, "u2");
        assert_eq!(
            v.view,
            View::Permission(PermissionView {
                subject_type: SubjectType::User,
                subject_name: "alice@example.com".into(),
                role: Role::Admin
            })
        );
    }

    #[test]
    fn permission_bindings_grant_only_project_cluster_roles() {
        let rb = |kind: &str, name: &str| -> RoleBinding {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "b", "namespace": "p", "uid": "u", "resourceVersion": "1",
                    "annotations": {"ambient-code.io/role": "admin"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                "subjects": [
                    {"kind": "Group", "name": "team-a", "apiGroup": "rbac.authorization.k8s.io"},
                    {"kind": "ServiceAccount", "name": "sa", "namespace": "p"},
                ],
            }))
            .unwrap()
        };
        let r = permission_rec(&rb("ClusterRole", "ambient-project-edit"));
        assert_eq!(
            r.grants,
            vec![Grant { subject_type: SubjectType::Group, subject_name: "team-a".into(), role: Role::Edit }]
        );
        // A namespaced Role of the same name, or another ClusterRole, grants no project role
        // (whatever an annotation claims).
        assert!(permission_rec(&rb("Role", "ambient-project-edit")).grants.is_empty());
        assert!(permission_rec(&rb("ClusterRole", "cluster-admin")).grants.is_empty());
    }

    #[test]
    fn key_view_joins_account_and_binding() {
        let mut st = ClusterState::default();
        st.apply(Res::Namespaces, ns_rec("p4", true));
        st.apply(
            Res::KeyAccounts,
            Rec::KeyAccount(KeyAccountRec {
                meta: meta("p4", "ambient-key-ci-1", "sa", "7"),
                view: KeyView {
                    id: "ambient-key-ci-1".into(),
                    name: "ci".into(),
                    description: None,
                    role: Some(Role::Admin),
                    created_at: None,
                    last_used_at: None,
                },
            }),
        );
        st.apply(
            Res::KeyBindings,
            Rec::KeyBinding(KeyBindingRec {
                meta: meta("p4", "rb", "rbu", "8"),
                key_id: Some("ambient-key-ci-1".into()),
                role: Some(Role::Edit),
            }),
        );
        let d = desired_for_project(&st, "p4");
        let v = &d[&ObjKey::Key("p4".into(), "ambient-key-ci-1".into())];
        assert_eq!(v.version, "7+8");
        match &v.view {
            View::Key(k) => {
                assert_eq!(k.role, Some(Role::Edit));
                assert_eq!(k.name, "ci");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kv_keys_round_trip_and_views_round_trip() {
        for k in [
            ObjKey::Project("p".into()),
            ObjKey::Session("p".into(), "s".into()),
            ObjKey::Permission("p".into(), "group-x-1234abcd".into()),
            ObjKey::Key("p".into(), "k".into()),
            ObjKey::Runner("p".into(), "s".into()),
            ObjKey::Settings("p".into()),
        ] {
            assert_eq!(ObjKey::from_kv(k.bucket(), &k.kv_key()), Some(k.clone()));
        }
        assert_eq!(ObjKey::from_kv(SESSIONS_BUCKET, "p"), None);
        assert_eq!(ObjKey::from_kv(SESSIONS_BUCKET, "p.s.other"), None);
        assert_eq!(ObjKey::from_kv(ACCESS_BUCKET, "p.settings.other"), None);
        // Session keys stay two tokens: `<project>.*` still lists sessions only.
        assert_eq!(ObjKey::Runner("p".into(), "s".into()).kv_key(), "p.s.runner");
        let Rec::Session(s) = session("p", "s", "1", Phase::Running) else { unreachable!() };
        for v in [
            View::Session(Box::new(s.view.clone())),
            View::Permission(PermissionView {
                subject_type: SubjectType::Group,
                subject_name: "g".into(),
                role: Role::View,
            }),
            View::Key(KeyView {
                id: "k".into(),
                name: "k".into(),
                description: None,
                role: None,
                created_at: None,
                last_used_at: None,
            }),
            View::Project(ProjectView {
                name: "p".into(),
                display_name: None,
                description: None,
                requester: None,
                creation_timestamp: None,
                status: "Active".into(),
            }),
            View::Runner(runner::gone("s")),
            View::Runner(RunnerView {
                name: "s".into(),
                run: Some(2),
                job: Some(job("p", "s", "s-uid", "j", "1", 1, 0).view),
                pod: Some(pod("p", "p1", "j", "2", "Running").view),
            }),
            View::Settings(SettingsView { exists: false, group_access: vec![], runner_secret_configured: false }),
            View::Settings(settings("p", "1", true).view),
        ] {
            let back: View = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
    }

    fn job(ns: &str, session: &str, owner: &str, uid: &str, rv: &str, active: i32, succeeded: i32) -> JobRec {
        JobRec {
            meta: meta(ns, &runner::job_name(session), uid, rv),
            session: Some(session.into()),
            owner_uid: Some(owner.into()),
            run: Some(1),
            view: events::status::RunnerJob {
                name: runner::job_name(session),
                active,
                succeeded,
                failed: 0,
                conditions: if succeeded > 0 {
                    vec![events::status::RunnerCondition { type_: "Complete".into(), reason: None }]
                } else {
                    vec![]
                },
                start_time: None,
                completion_time: None,
            },
        }
    }

    fn pod(ns: &str, name: &str, job_uid: &str, rv: &str, phase: &str) -> PodRec {
        PodRec {
            meta: meta(ns, name, &format!("{name}-uid"), rv),
            job_uid: Some(job_uid.into()),
            session: name.split_once("-job-").map(|(s, _)| s.to_string()),
            created: None,
            view: events::status::RunnerPod {
                name: name.into(),
                uid: format!("{name}-uid"),
                phase: phase.into(),
                node_name: Some("kwok-node-0".into()),
                scheduling_reason: None,
                reason: None,
                container: None,
            },
        }
    }

    fn settings(ns: &str, rv: &str, secret: bool) -> SettingsRec {
        SettingsRec {
            meta: meta(ns, PROJECT_SETTINGS_NAME, "ps-uid", rv),
            view: SettingsView {
                exists: true,
                group_access: vec![events::crd::GroupAccess { group_name: "team-a".into(), role: Role::Edit }],
                runner_secret_configured: secret,
            },
        }
    }

    fn runners(evs: &[StatusEvent]) -> Vec<(String, RunnerView)> {
        evs.iter()
            .filter_map(|e| match &e.body {
                StatusBody::SessionRunner(v) => Some((e.id.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn runner_view_follows_job_and_pod_and_is_gone_once() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("r1", true));
        st.apply(Res::Sessions, session("r1", "s1", "10", Phase::Pending));
        // No Job yet: nothing to tell about a runner.
        assert_eq!(
            types(&apply_all(&st, &mut store, "r1")),
            ["ambient.project.changed.v1", "ambient.session.changed.v1", "ambient.session.phase.v1"]
        );
        st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "20", 0, 0)));
        let r = runners(&apply_all(&st, &mut store, "r1"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "s-uid/20/ambient.session.runner.v1");
        assert!(r[0].1.job.is_some() && r[0].1.pod.is_none());
        // A Job heartbeat (new resourceVersion, same view) emits nothing.
        st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "21", 0, 0)));
        assert!(apply_all(&st, &mut store, "r1").is_empty());
        st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "22", 1, 0)));
        st.apply(Res::Pods, Rec::Pod(pod("r1", "s1-job-abc", "j1", "23", "Running")));
        let r = runners(&apply_all(&st, &mut store, "r1"));
        assert_eq!(r.len(), 1, "one event for both changes seen at once");
        assert_eq!(r[0].0, "s-uid/22+23/ambient.session.runner.v1");
        assert_eq!(r[0].1.pod.as_ref().map(|p| p.phase.as_str()), Some("Running"));
        st.apply(Res::Pods, Rec::Pod(pod("r1", "s1-job-abc", "j1", "24", "Succeeded")));
        st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "25", 0, 1)));
        let r = runners(&apply_all(&st, &mut store, "r1"));
        assert_eq!(r[0].1.job.as_ref().map(|j| j.succeeded), Some(1));
        // Stop: the Job goes (its pods linger a moment): one gone event, with an id from the
        // last projected version.
        st.remove(Res::Jobs, "r1", "s1-job");
        let evs = apply_all(&st, &mut store, "r1");
        assert_eq!(types(&evs), ["ambient.session.runner.v1"]);
        assert_eq!(runners(&evs)[0], ("s-uid/25+24+gone/ambient.session.runner.v1".into(), runner::gone("s1")));
        st.remove(Res::Pods, "r1", "s1-job-abc");
        assert!(apply_all(&st, &mut store, "r1").is_empty());
        // A new run: a new Job of the same name.
        st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j2", "30", 0, 0)));
        assert_eq!(runners(&apply_all(&st, &mut store, "r1")).len(), 1);
        // The session's deletion ends its story: no runner event after `deleted`.
        st.remove(Res::Sessions, "r1", "s1");
        let evs = apply_all(&st, &mut store, "r1");
        assert_eq!(types(&evs), ["ambient.session.deleted.v1"]);
        assert!(!store.contains_key(&ObjKey::Runner("r1".into(), "s1".into())));
        // Its Job is collected afterwards: nothing more.
        st.remove(Res::Jobs, "r1", "s1-job");
        assert!(apply_all(&st, &mut store, "r1").is_empty());
    }

    #[test]
    fn runner_catch_up_is_one_event_and_replays_derive_the_same_ids() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("r2", true));
        st.apply(Res::Sessions, session("r2", "s", "10", Phase::Running));
        st.apply(Res::Jobs, Rec::Job(job("r2", "s", "s-uid", "j1", "20", 1, 0)));
        st.apply(Res::Pods, Rec::Pod(pod("r2", "s-job-x", "j1", "21", "Running")));
        apply_all(&st, &mut store, "r2");
        // While the projector is down, the run finishes through several states.
        st.apply(Res::Pods, Rec::Pod(pod("r2", "s-job-x", "j1", "22", "Succeeded")));
        st.apply(Res::Jobs, Rec::Job(job("r2", "s", "s-uid", "j1", "23", 0, 1)));
        let desired = desired_for_project(&st, "r2");
        let k = ObjKey::Runner("r2".into(), "s".into());
        let p = ProjectName::new("r2").unwrap();
        let a = diff(&p, Some("ns-uid"), &k, desired.get(&k), store.get(&k), Utc::now()).unwrap();
        let b = diff(&p, Some("ns-uid"), &k, desired.get(&k), store.get(&k), Utc::now()).unwrap();
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].id, b.events[0].id, "a replay after a crash is de-duplicated");
        apply_all(&st, &mut store, "r2");
        assert!(apply_all(&st, &mut store, "r2").is_empty());
        // Gone while down: the same id as live.
        st.remove(Res::Jobs, "r2", "s-job");
        let evs = apply_all(&st, &mut store, "r2");
        assert_eq!(runners(&evs)[0].0, "s-uid/23+22+gone/ambient.session.runner.v1");
    }

    #[test]
    fn runner_ignores_jobs_and_pods_of_others() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("r3", true));
        st.apply(Res::Sessions, session("r3", "s", "10", Phase::Pending));
        // A Job left by an earlier session of the same name, and a pod of an earlier Job.
        st.apply(Res::Jobs, Rec::Job(job("r3", "s", "old-session-uid", "j0", "5", 1, 0)));
        assert!(runners(&apply_all(&st, &mut store, "r3")).is_empty());
        st.apply(Res::Jobs, Rec::Job(job("r3", "s", "s-uid", "j1", "20", 1, 0)));
        st.apply(Res::Pods, Rec::Pod(pod("r3", "s-job-old", "j0", "21", "Running")));
        let r = runners(&apply_all(&st, &mut store, "r3"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1.pod, None);
        // The newest pod of the Job is shown.
        let mut older = pod("r3", "s-job-a", "j1", "22", "Failed");
        older.created = DateTime::from_timestamp(100, 0);
        let mut newer = pod("r3", "s-job-b", "j1", "23", "Running");
        newer.created = DateTime::from_timestamp(200, 0);
        st.apply(Res::Pods, Rec::Pod(newer));
        st.apply(Res::Pods, Rec::Pod(older));
        let r = runners(&apply_all(&st, &mut store, "r3"));
        assert_eq!(r[0].1.pod.as_ref().map(|p| p.name.as_str()), Some("s-job-b"));
        // A re-created session of the same name starts a new story: no gone event about the
        // old one's runner, and nothing until its own Job exists.
        let Rec::Session(mut s) = session("r3", "s", "30", Phase::Pending) else { unreachable!() };
        s.meta.uid = "s-uid-2".into();
        st.apply(Res::Sessions, Rec::Session(s));
        let evs = apply_all(&st, &mut store, "r3");
        assert!(runners(&evs).is_empty(), "{:?}", types(&evs));
        assert!(!store.contains_key(&ObjKey::Runner("r3".into(), "s".into())));
    }

    #[test]
    fn settings_view_is_public_and_reported_on_change_only() {
        let mut st = ClusterState::default();
        let mut store = BTreeMap::new();
        st.apply(Res::Namespaces, ns_rec("p5", true));
        // A project whose settings do not exist yet: nothing about settings.
        assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.changed.v1"]);
        st.apply(Res::Settings, Rec::Settings(settings("p5", "7", true)));
        let evs = apply_all(&st, &mut store, "p5");
        assert_eq!(types(&evs), ["ambient.project.settings.v1"]);
        assert_eq!(evs[0].id, "ns-uid/7/ambient.project.settings.v1");
        assert_eq!(evs[0].name, "p5");
        // A status write (new resourceVersion) or another Secret name: nothing public changed.
        st.apply(Res::Settings, Rec::Settings(settings("p5", "8", true)));
        assert!(apply_all(&st, &mut store, "p5").is_empty());
        st.apply(Res::Settings, Rec::Settings(settings("p5", "9", false)));
        let evs = apply_all(&st, &mut store, "p5");
        assert!(
            matches!(&evs[..], [StatusEvent { body: StatusBody::ProjectSettings(v), .. }] if !v.runner_secret_configured)
        );
        // Deleted while the project remains: one gone event; re-created: one event.
        st.remove(Res::Settings, "p5", PROJECT_SETTINGS_NAME);
        let evs = apply_all(&st, &mut store, "p5");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].id, "ns-uid/9+gone/ambient.project.settings.v1");
        assert!(matches!(&evs[0].body, StatusBody::ProjectSettings(v) if !v.exists && v.group_access.is_empty()));
        st.apply(Res::Settings, Rec::Settings(settings("p5", "12", false)));
        assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.settings.v1"]);
        // The project goes: only its own deletion is reported.
        let Rec::Namespace(mut n) = ns_rec("p5", true) else { unreachable!() };
        n.view.status = "Terminating".into();
        st.apply(Res::Namespaces, Rec::Namespace(n));
        st.remove(Res::Settings, "p5", PROJECT_SETTINGS_NAME);
        assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.changed.v1"]);
        assert!(!store.contains_key(&ObjKey::Settings("p5".into())));
        st.remove(Res::Namespaces, "p5", "p5");
        assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.deleted.v1"]);
        assert!(store.is_empty());
    }

    #[test]
    fn settings_reduce_the_runner_secret_to_a_boolean() {
        let ps: ProjectSettings = serde_json::from_value(serde_json::json!({
            "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "ProjectSettings",
            "metadata": {"name": "projectsettings", "namespace": "p", "uid": "u", "resourceVersion": "1"},
            "spec": {"groupAccess": [{"groupName": "team-a", "role": "view"}], "runnerSecretsName": "very-private-secret-name"},
        }))
        .unwrap();
        let r = settings_rec(&ps);
        assert!(r.view.runner_secret_configured);
        assert!(!serde_json::to_string(&r.view).unwrap().contains("very-private"));
        assert_eq!(r.view.group_access.len(), 1);
    }
}
