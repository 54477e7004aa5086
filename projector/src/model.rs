//! What the projector keeps of each watched object (compact records, never a secret), the
//! public views computed from them, and the diff of a view against the last projected one.
//!
//! Everything here is pure: the watch side converts Kubernetes objects into [`Rec`]s, the
//! projection loop asks [`desired_for_project`] what the read model should hold and [`diff`]
//! which status events bring a consumer from the last projected state to it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::crd::AgenticSession;
use events::status::{KeyView, PermissionView, PhaseTransition, ProjectView, SessionView, Tombstone};
use events::streams::{ACCESS_BUCKET, PROJECTS_BUCKET, SESSIONS_BUCKET};
use events::{Phase, ProjectName, Role, StatusBody, StatusEvent, SubjectName, SubjectType};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

/// Label of a managed namespace (a project).
pub const MANAGED_LABEL: &str = "ambient-code.io/managed";
/// Label of permission RoleBindings.
pub const PERMISSION_SELECTOR: &str = "app=ambient-permission";
/// Label of access-key ServiceAccounts and RoleBindings.
pub const ACCESS_KEY_SELECTOR: &str = "app=ambient-access-key";

const ANN_DISPLAY_NAME: &str = "openshift.io/display-name";
const ANN_DESCRIPTION: &str = "openshift.io/description";
const ANN_REQUESTER: &str = "openshift.io/requester";
const ANN_SUBJECT_KIND: &str = "ambient-code.io/subject-kind";
const ANN_SUBJECT_NAME: &str = "ambient-code.io/subject-name";
const ANN_ROLE: &str = "ambient-code.io/role";
const ANN_KEY_NAME: &str = "ambient-code.io/key-name";
const ANN_KEY_DESCRIPTION: &str = "ambient-code.io/description";
const ANN_CREATED_AT: &str = "ambient-code.io/created-at";
const ANN_LAST_USED_AT: &str = "ambient-code.io/last-used-at";
const ANN_SA_NAME: &str = "ambient-code.io/sa-name";

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
}

impl Res {
    /// Every watched resource.
    pub const ALL: [Res; 5] = [Res::Namespaces, Res::Sessions, Res::PermissionBindings, Res::KeyAccounts, Res::KeyBindings];

    /// Metric/log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Res::Namespaces => "namespaces",
            Res::Sessions => "agenticsessions",
            Res::PermissionBindings => "permission-rolebindings",
            Res::KeyAccounts => "key-serviceaccounts",
            Res::KeyBindings => "key-rolebindings",
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

fn meta_of<K: ResourceExt>(obj: &K) -> Meta {
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

/// A grant found in a permission RoleBinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// User or group.
    pub subject_type: SubjectType,
    /// Its name.
    pub subject_name: String,
    /// Its role.
    pub role: Role,
}

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
    /// The user-given name.
    pub key_name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Role annotation (the RoleBinding is authoritative when present).
    pub role: Option<Role>,
    /// When created.
    pub created_at: Option<DateTime<Utc>>,
    /// When last used.
    pub last_used_at: Option<DateTime<Utc>>,
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
        }
    }
}

/// Kubernetes timestamps (jiff) as chrono.
pub fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

fn ann<'a, K: ResourceExt>(obj: &'a K, key: &str) -> Option<&'a str> {
    obj.annotations().get(key).map(String::as_str).filter(|s| !s.is_empty())
}

fn ann_time<K: ResourceExt>(obj: &K, key: &str) -> Option<DateTime<Utc>> {
    ann(obj, key).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
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
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    NamespaceRec {
        meta: meta_of(ns),
        managed: ns.labels().get(MANAGED_LABEL).map(String::as_str) == Some("true"),
        in_scope: selector.matches(ns.labels()),
        view: ProjectView {
            name: ns.name_any(),
            display_name: ann(ns, ANN_DISPLAY_NAME).map(str::to_string),
            description: ann(ns, ANN_DESCRIPTION).map(str::to_string),
            requester: ann(ns, ANN_REQUESTER).map(str::to_string),
            creation_timestamp: ns.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)),
            status: if terminating { "Terminating" } else { "Active" }.to_string(),
        },
    }
}

/// Reduces an AgenticSession to its public view: environment variable *names* only, no prompt.
pub fn session_rec(s: &AgenticSession) -> SessionRec {
    let status = s.status.clone().unwrap_or_default();
    SessionRec {
        meta: meta_of(s),
        view: SessionView {
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
        },
    }
}

/// Reduces a permission RoleBinding to its grants (User and Group subjects only).
pub fn permission_rec(rb: &RoleBinding) -> PermissionRbRec {
    // Only a binding to one of the project ClusterRoles grants a project role.
    let role = if rb.role_ref.kind == "ClusterRole" { Role::from_cluster_role(&rb.role_ref.name) } else { None };
    let mut grants = Vec::new();
    if let Some(role) = role {
        for s in rb.subjects.iter().flatten() {
            let subject_type = match s.kind.as_str() {
                "User" => SubjectType::User,
                "Group" => SubjectType::Group,
                _ => continue,
            };
            grants.push(Grant { subject_type, subject_name: s.name.clone(), role });
        }
        // Legacy bindings may carry the subject only in annotations.
        if grants.is_empty()
            && let (Some(kind), Some(name)) = (ann(rb, ANN_SUBJECT_KIND), ann(rb, ANN_SUBJECT_NAME))
            && let Some(subject_type) = SubjectType::parse(&kind.to_ascii_lowercase())
        {
            grants.push(Grant { subject_type, subject_name: name.to_string(), role });
        }
    }
    PermissionRbRec { meta: meta_of(rb), grants }
}

/// Reduces an access-key ServiceAccount (annotations only; its secrets are never looked at).
pub fn key_account_rec(sa: &ServiceAccount) -> KeyAccountRec {
    KeyAccountRec {
        meta: meta_of(sa),
        key_name: ann(sa, ANN_KEY_NAME).map(str::to_string),
        description: ann(sa, ANN_KEY_DESCRIPTION).map(str::to_string),
        role: ann(sa, ANN_ROLE).and_then(Role::parse),
        created_at: ann_time(sa, ANN_CREATED_AT).or_else(|| sa.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0))),
        last_used_at: ann_time(sa, ANN_LAST_USED_AT),
    }
}

/// Reduces an access-key RoleBinding.
pub fn key_binding_rec(rb: &RoleBinding) -> KeyBindingRec {
    let key_id = ann(rb, ANN_SA_NAME).map(str::to_string).or_else(|| {
        rb.subjects.iter().flatten().find(|s| s.kind == "ServiceAccount").map(|s| s.name.clone())
    });
    KeyBindingRec {
        meta: meta_of(rb),
        key_id,
        role: if rb.role_ref.kind == "ClusterRole" { Role::from_cluster_role(&rb.role_ref.name) } else { None },
    }
}

/// One object of the read model: a bucket key and the status subject name token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjKey {
    /// `<project>` in the projects bucket.
    Project(String),
    /// `<project>.<session>` in the sessions bucket.
    Session(String, String),
    /// `<project>.permission.<subjectType>-<suffix>` in the access bucket.
    Permission(String, String),
    /// `<project>.key.<id>` in the access bucket.
    Key(String, String),
}

impl ObjKey {
    /// The project.
    pub fn project(&self) -> &str {
        match self {
            ObjKey::Project(p) | ObjKey::Session(p, _) | ObjKey::Permission(p, _) | ObjKey::Key(p, _) => p,
        }
    }

    /// The status subject's name token.
    pub fn name(&self) -> &str {
        match self {
            ObjKey::Project(p) => p,
            ObjKey::Session(_, n) | ObjKey::Permission(_, n) | ObjKey::Key(_, n) => n,
        }
    }

    /// The KV bucket.
    pub fn bucket(&self) -> &'static str {
        match self {
            ObjKey::Project(_) => PROJECTS_BUCKET,
            ObjKey::Session(..) => SESSIONS_BUCKET,
            ObjKey::Permission(..) | ObjKey::Key(..) => ACCESS_BUCKET,
        }
    }

    /// The key in its bucket.
    pub fn kv_key(&self) -> String {
        match self {
            ObjKey::Project(p) => p.clone(),
            ObjKey::Session(p, s) => format!("{p}.{s}"),
            ObjKey::Permission(p, n) => format!("{p}.permission.{n}"),
            ObjKey::Key(p, n) => format!("{p}.key.{n}"),
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
            _ => return None,
        };
        (valid(k.project()) && valid(k.name())).then_some(k)
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
    /// two objects (a key's ServiceAccount and RoleBinding).
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

/// Everything the read model should hold for project `ns` (empty if it is not a managed
/// namespace, so that all its objects are projected as deleted).
pub fn desired_for_project(state: &ClusterState, ns: &str) -> BTreeMap<ObjKey, Desired> {
    let mut out = BTreeMap::new();
    let Some(Rec::Namespace(nsr)) = state.in_ns(Res::Namespaces, ns).next() else { return out };
    if !nsr.managed || !nsr.in_scope || ProjectName::new(ns).is_err() {
        return out;
    }
    out.insert(
        ObjKey::Project(ns.to_string()),
        Desired {
            uid: nsr.meta.uid.clone(),
            version: nsr.meta.resource_version.clone(),
            view: View::Project(nsr.view.clone()),
        },
    );
    for r in state.in_ns(Res::Sessions, ns) {
        if let Rec::Session(s) = r
            && is_token(&s.meta.name)
        {
            out.insert(
                ObjKey::Session(ns.to_string(), s.meta.name.clone()),
                Desired {
                    uid: s.meta.uid.clone(),
                    version: s.meta.resource_version.clone(),
                    view: View::Session(Box::new(s.view.clone())),
                },
            );
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
                view: View::Key(KeyView {
                    id: sa.meta.name.clone(),
                    name: sa.key_name.clone().unwrap_or_else(|| sa.meta.name.clone()),
                    description: sa.description.clone(),
                    role: rb.and_then(|b| b.role).or(sa.role),
                    created_at: sa.created_at,
                    last_used_at: sa.last_used_at,
                }),
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
    }
}

fn deleted_body(key: &ObjKey, t: Tombstone) -> StatusBody {
    match key {
        ObjKey::Project(_) => StatusBody::ProjectDeleted(t),
        ObjKey::Session(..) => StatusBody::SessionDeleted(t),
        ObjKey::Permission(..) => StatusBody::PermissionDeleted(t),
        ObjKey::Key(..) => StatusBody::KeyDeleted(t),
    }
}

/// The status events that bring a consumer from `projected` to `desired` for object `key`,
/// observed at `now`; `None` when nothing changed as far as a consumer can tell.
///
/// Ids are `StatusEvent::derive_id(uid, version, type)`: a replay after a crash (events
/// published, read model not yet written) derives the same ids, which JetStream drops as
/// duplicates. A deletion uses the last projected version, known to both the live path and
/// the catch-up after downtime.
pub fn diff(
    project: &ProjectName,
    key: &ObjKey,
    desired: Option<&Desired>,
    projected: Option<&Projected>,
    now: DateTime<Utc>,
) -> Option<Step> {
    let event = |uid: &str, version: &str, body: StatusBody| StatusEvent {
        id: StatusEvent::derive_id(uid, version, body.type_str()),
        project: project.clone(),
        name: key.name().to_string(),
        time: now,
        body,
    };
    let tombstone = |p: &Projected| {
        event(&p.uid, &p.version, deleted_body(key, Tombstone { name: key.name().to_string(), uid: Some(p.uid.clone()), at: now }))
    };
    let created = |d: &Desired, events: &mut Vec<StatusEvent>| -> Projected {
        events.push(event(&d.uid, &d.version, changed_body(&d.view)));
        if let Some(phase) = d.view.phase() {
            events.push(event(&d.uid, &d.version, StatusBody::SessionPhase(transition(key, None, phase, &d.view, now, None))));
        }
        Projected { uid: d.uid.clone(), version: d.version.clone(), projected_at: now, phase_since: d.view.phase().map(|_| now), view: d.view.clone() }
    };
    match (desired, projected) {
        (None, None) => None,
        (None, Some(p)) => Some(Step { events: vec![tombstone(p)], store: None }),
        (Some(d), None) => {
            let mut events = Vec::new();
            let store = created(d, &mut events);
            Some(Step { events, store: Some(store) })
        }
        // The name now belongs to another object: the old one is gone, a new one exists.
        // (A permission is its subject, whichever binding carries it.)
        (Some(d), Some(p)) if d.uid != p.uid && !matches!(key, ObjKey::Permission(..)) => {
            let mut events = vec![tombstone(p)];
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
                events.push(event(&d.uid, &d.version, StatusBody::SessionPhase(transition(key, Some(old), new, &d.view, now, secs))));
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

fn transition(key: &ObjKey, previous: Option<Phase>, phase: Phase, view: &View, at: DateTime<Utc>, secs: Option<f64>) -> PhaseTransition {
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

    fn apply_all(state: &ClusterState, store: &mut BTreeMap<ObjKey, Projected>, ns: &str) -> Vec<StatusEvent> {
        let p = ProjectName::new(ns).unwrap();
        let desired = desired_for_project(state, ns);
        let keys: std::collections::BTreeSet<ObjKey> =
            desired.keys().cloned().chain(store.keys().filter(|k| k.project() == ns).cloned()).collect();
        let mut out = vec![];
        for k in keys {
            if let Some(step) = diff(&p, &k, desired.get(&k), store.get(&k), Utc::now()) {
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
        assert_eq!(types(&evs), ["ambient.project.changed.v1", "ambient.session.changed.v1", "ambient.session.phase.v1"]);
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
    fn selector_scopes_projects() {
        let sel = ProjectSelector::parse("team=a, tier!=prod,owner").unwrap();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
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
        st.apply(Res::PermissionBindings, Rec::PermissionBinding(PermissionRbRec { meta: meta("p3", "a", "u1", "5"), grants: vec![g(Role::View)] }));
        st.apply(Res::PermissionBindings, Rec::PermissionBinding(PermissionRbRec { meta: meta("p3", "b", "u2", "6"), grants: vec![g(Role::Admin)] }));
        let d = desired_for_project(&st, "p3");
        let (k, v) = d.iter().find(|(k, _)| matches!(k, ObjKey::Permission(..))).unwrap();
        assert!(k.name().starts_with("user-alice-example-com-"), "{k:?}");
        assert!(is_token(k.name()));
        assert_eq!(v.uid, "u2");
        assert_eq!(v.view, View::Permission(PermissionView { subject_type: SubjectType::User, subject_name: "alice@example.com".into(), role: Role::Admin }));
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
        assert_eq!(r.grants, vec![Grant { subject_type: SubjectType::Group, subject_name: "team-a".into(), role: Role::Edit }]);
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
                key_name: Some("ci".into()),
                description: None,
                role: None,
                created_at: None,
                last_used_at: None,
            }),
        );
        st.apply(Res::KeyBindings, Rec::KeyBinding(KeyBindingRec { meta: meta("p4", "rb", "rbu", "8"), key_id: Some("ambient-key-ci-1".into()), role: Some(Role::Edit) }));
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
        ] {
            assert_eq!(ObjKey::from_kv(k.bucket(), &k.kv_key()), Some(k.clone()));
        }
        assert_eq!(ObjKey::from_kv(SESSIONS_BUCKET, "p"), None);
        let Rec::Session(s) = session("p", "s", "1", Phase::Running) else { unreachable!() };
        for v in [
            View::Session(Box::new(s.view.clone())),
            View::Permission(PermissionView { subject_type: SubjectType::Group, subject_name: "g".into(), role: Role::View }),
            View::Key(KeyView { id: "k".into(), name: "k".into(), description: None, role: None, created_at: None, last_used_at: None }),
            View::Project(ProjectView { name: "p".into(), display_name: None, description: None, requester: None, creation_timestamp: None, status: "Active".into() }),
        ] {
            let back: View = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
    }
}
