//! Reads: watch caches (kube-runtime reflectors) of the managed namespaces, sessions, permission
//! and access-key RoleBindings, access-key ServiceAccounts and ProjectSettings; reads are served
//! from them (fast at 1 000 projects), and a synchronous write waits until its resourceVersion
//! is visible here so that the caller's next read sees it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use chrono::{DateTime, SecondsFormat, Utc};
use events::Principal;
use events::crd::{AgenticSession, ProjectSettings};
use events::labels;
use events::status::{Incarnation, KeyView, PermissionView, ProjectView};
use events::views::{self, KeyBinding};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::visibility::Visibility;

/// KV bucket of access-key last-use times (`<project>.<keyId>` → RFC 3339).
pub const KEY_USAGE_BUCKET: &str = events::streams::api_buckets::KEY_USAGE;

/// The watch caches.
pub struct Reads {
    /// Managed namespaces (projects).
    pub namespaces: Store<Namespace>,
    /// Sessions of every namespace.
    pub sessions: Store<AgenticSession>,
    /// Permission and access-key RoleBindings.
    pub rolebindings: Store<RoleBinding>,
    /// Access-key ServiceAccounts.
    pub serviceaccounts: Store<ServiceAccount>,
    /// ProjectSettings.
    pub settings: Store<ProjectSettings>,
    /// Which namespaces have a RoleBinding naming a caller (narrows project lists).
    pub visibility: Arc<Visibility>,
    /// Accepted, not yet applied commands, shown where the cluster has nothing yet.
    pub pending: Arc<crate::pending::Pending>,
    /// Bumped after every change any cache applied: read-your-writes waits wake on it.
    changed: Arc<watch::Sender<u64>>,
    key_usage: Option<kv::Store>,
    ready: std::sync::atomic::AtomicBool,
    last_noted: Mutex<HashMap<String, Instant>>,
}

/// What the sessions watch tells beyond its cache (for purging the messages of deleted sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionsChange {
    /// The session `namespace/name` was deleted.
    Deleted { namespace: String, name: String },
    /// A (re)list completed: deletions missed while disconnected are not reported one by one.
    Relisted,
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    shutdown: CancellationToken,
    changed: Arc<watch::Sender<u64>>,
    changes: Option<mpsc::UnboundedSender<SessionsChange>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    // No read shows field-manager bookkeeping, and it is a large part of an object several
    // managers write (a session: the api, the reconciler, the runner).
    let stream = watcher(api, cfg).default_backoff().modify(|o| o.meta_mut().managed_fields = None).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(shutdown.cancelled_owned()));
        while let Some(ev) = stream.next().await {
            // The store has applied the event by now (reflect() writes before passing it on).
            if ev.is_ok() {
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            let change = match ev {
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "watch error; retrying");
                    continue;
                }
                Ok(watcher::Event::Delete(o)) => SessionsChange::Deleted {
                    namespace: o.meta().namespace.clone().unwrap_or_default(),
                    name: o.meta().name.clone().unwrap_or_default(),
                },
                Ok(watcher::Event::InitDone) => SessionsChange::Relisted,
                Ok(_) => continue,
            };
            if let Some(tx) = &changes {
                let _ = tx.send(change);
            }
        }
    });
    store
}

impl Reads {
    /// Starts every reflector (and the RoleBinding index when `project_list_prefilter`).
    /// Deletions and relists of sessions go to `session_changes` when given.
    pub fn start(
        client: kube::Client,
        key_usage: Option<kv::Store>,
        shutdown: CancellationToken,
        session_changes: Option<mpsc::UnboundedSender<SessionsChange>>,
        project_list_prefilter: bool,
    ) -> Self {
        let changed = Arc::new(watch::Sender::new(0));
        let managed = watcher::Config::default().labels(labels::MANAGED_SELECTOR);
        let rbs = watcher::Config::default().labels(labels::PERMISSION_OR_KEY_SELECTOR);
        let sas = watcher::Config::default().labels(labels::ACCESS_KEY_SELECTOR);
        Self {
            namespaces: spawn_reflector(Api::all(client.clone()), managed, shutdown.clone(), changed.clone(), None),
            sessions: spawn_reflector(
                Api::all(client.clone()),
                watcher::Config::default(),
                shutdown.clone(),
                changed.clone(),
                session_changes,
            ),
            rolebindings: spawn_reflector(Api::all(client.clone()), rbs, shutdown.clone(), changed.clone(), None),
            serviceaccounts: spawn_reflector(Api::all(client.clone()), sas, shutdown.clone(), changed.clone(), None),
            settings: spawn_reflector(
                Api::all(client.clone()),
                watcher::Config::default(),
                shutdown.clone(),
                changed.clone(),
                None,
            ),
            visibility: Visibility::start(client, project_list_prefilter, changed.clone(), shutdown),
            pending: Arc::default(),
            changed,
            key_usage,
            ready: std::sync::atomic::AtomicBool::new(false),
            last_noted: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until every cache has its first full list.
    pub async fn wait_ready(&self) -> bool {
        let all = async {
            let _ = self.namespaces.wait_until_ready().await;
            let _ = self.sessions.wait_until_ready().await;
            let _ = self.rolebindings.wait_until_ready().await;
            let _ = self.serviceaccounts.wait_until_ready().await;
            let _ = self.settings.wait_until_ready().await;
            while !self.visibility.ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let ok = tokio::time::timeout(Duration::from_secs(60), all).await.is_ok();
        self.ready.store(ok, std::sync::atomic::Ordering::Relaxed);
        ok
    }

    /// Whether every cache has been filled once.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until `ready()` holds, re-checking whenever a cache changes;
    /// returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Mark the current version seen before checking, so a change right after the
            // check still wakes us.
            rx.borrow_and_update();
            if ready() {
                return true;
            }
            if !matches!(tokio::time::timeout_at(deadline, rx.changed()).await, Ok(Ok(()))) {
                return ready();
            }
        }
    }

    /// The managed namespace `name`, if it exists.
    pub fn project(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(&reflector::ObjectRef::new(name))
    }

    /// The incarnation of project `name`: its namespace's uid and creation. Streams serve a
    /// project's events only of this namespace, never of an earlier one of the same name.
    pub fn project_incarnation(&self, name: &str) -> Option<Incarnation> {
        self.project(name).as_deref().and_then(incarnation_of)
    }

    /// The incarnation of session `ns/name` (messages are served only of it).
    pub fn session_incarnation(&self, ns: &str, name: &str) -> Option<Incarnation> {
        self.session(ns, name).as_deref().and_then(incarnation_of)
    }

    /// Every managed namespace.
    pub fn projects(&self) -> Vec<Arc<Namespace>> {
        self.namespaces.state()
    }

    /// The session `ns/name`: the cluster's, else an accepted creation still queued.
    pub fn session(&self, ns: &str, name: &str) -> Option<Arc<AgenticSession>> {
        self.sessions
            .get(&reflector::ObjectRef::new(name).within(ns))
            .or_else(|| self.pending.session(ns, self.project_since(ns), name))
    }

    /// Sessions of `ns`, sorted by name, accepted creations still queued included.
    pub fn sessions_of(&self, ns: &str) -> Vec<Arc<AgenticSession>> {
        let mut v: Vec<_> =
            self.sessions.state().into_iter().filter(|s| s.namespace().as_deref() == Some(ns)).collect();
        let cluster: BTreeSet<String> = v.iter().map(|s| s.name_any()).collect();
        let queued: Vec<_> = self
            .pending
            .sessions_of(ns, self.project_since(ns))
            .into_iter()
            .filter(|q| !cluster.contains(&q.name_any()))
            .collect();
        v.extend(queued);
        v.sort_by_key(|s| s.name_any());
        v
    }

    /// When the project `ns` (as the cache knows it) was created: queued commands before it were
    /// for an earlier project of the name.
    fn project_since(&self, ns: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let created = self.project(ns)?.metadata.creation_timestamp.clone()?;
        chrono::DateTime::from_timestamp(created.0.as_second(), 0)
    }

    /// A session as reads show it: its JSON with a queued stop or deletion shown.
    pub fn session_view(&self, ns: &str, s: &AgenticSession) -> Value {
        let mut v = session_json(s);
        self.pending.overlay_session(ns, self.project_since(ns), &mut v);
        v
    }

    /// The sessions of `ns` as lists show them: queued creations in, queued deletions out.
    pub fn sessions_view(&self, ns: &str) -> Vec<Value> {
        let deleting = self.pending.deleting(ns, self.project_since(ns));
        self.sessions_of(ns)
            .iter()
            .filter(|s| !deleting.contains(&s.name_any()))
            .map(|s| self.session_view(ns, s))
            .collect()
    }

    /// The permission rows of `ns` as lists show them: queued grants and revocations marked
    /// `pending`.
    pub fn permissions_view(&self, ns: &str) -> Vec<Value> {
        let mut rows = self.permissions_of(ns);
        self.pending.overlay_permissions(ns, self.project_since(ns), &mut rows);
        rows
    }

    /// The ProjectSettings of `ns`.
    pub fn settings_of(&self, ns: &str) -> Option<Arc<ProjectSettings>> {
        self.settings.get(&reflector::ObjectRef::new(events::crd::PROJECT_SETTINGS_NAME).within(ns))
    }

    /// The permission grants of `ns` (one row per subject, its strongest role; see
    /// `events::views` for what counts as a grant).
    pub fn permissions_of(&self, ns: &str) -> Vec<Value> {
        let grants = self
            .rolebindings
            .state()
            .into_iter()
            .filter(|rb| rb.namespace().as_deref() == Some(ns))
            .filter(|rb| rb.labels().get(labels::APP).map(String::as_str) == Some(labels::APP_PERMISSION))
            .flat_map(|rb| PermissionView::grants_of(&rb));
        views::strongest_per_subject(grants)
            .into_iter()
            .map(|g| json!({"subjectType": g.subject_type, "subjectName": g.subject_name, "role": g.role}))
            .collect()
    }

    /// The access keys of `ns`: `{id, name, createdAt, lastUsedAt, description, role}`.
    pub async fn keys_of(&self, ns: &str) -> Vec<Value> {
        let mut sas: Vec<_> =
            self.serviceaccounts.state().into_iter().filter(|s| s.namespace().as_deref() == Some(ns)).collect();
        sas.sort_by_key(|s| s.name_any());
        let bindings: Vec<KeyBinding> = self
            .rolebindings
            .state()
            .iter()
            .filter(|rb| rb.namespace().as_deref() == Some(ns))
            .filter(|rb| rb.labels().get(labels::APP).map(String::as_str) == Some(labels::APP_ACCESS_KEY))
            .filter_map(|rb| KeyBinding::of(rb))
            .collect();
        let mut out = Vec::with_capacity(sas.len());
        for sa in sas {
            let id = sa.name_any();
            let role = bindings.iter().filter(|b| b.key_id == id).find_map(|b| b.role);
            let key = KeyView::from_account(&sa, role, self.last_used(ns, &id).await);
            let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
            let row = crate::bodies::KeyRow {
                id: key.id,
                name: key.name,
                created_at: time(key.created_at).unwrap_or_default(),
                last_used_at: time(key.last_used_at).unwrap_or_default(),
                description: key.description.unwrap_or_default(),
                role: key.role.map(|r| r.as_str().to_string()).unwrap_or_default(),
            };
            out.push(serde_json::to_value(row).unwrap_or(Value::Null));
        }
        out
    }

    async fn last_used(&self, ns: &str, id: &str) -> Option<DateTime<Utc>> {
        let kv = self.key_usage.as_ref()?;
        let v = kv.get(format!("{ns}.{id}")).await.ok().flatten()?;
        DateTime::parse_from_rfc3339(std::str::from_utf8(&v).ok()?).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Records that an access key authenticated a request (at most one write per key per
    /// minute). The api writes no tenant state: this goes to its own KV bucket.
    pub async fn note_key_use(&self, who: &Principal) {
        let Some((ns, name)) = who.service_account() else { return };
        let Some(kv) = &self.key_usage else { return };
        if self.serviceaccounts.get(&reflector::ObjectRef::new(name).within(ns)).is_none() {
            return;
        }
        let key = format!("{ns}.{name}");
        {
            let Ok(mut m) = self.last_noted.lock() else { return };
            if m.get(&key).is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(key.clone(), Instant::now());
        }
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Err(e) = kv.put(key, now.into_bytes().into()).await {
            tracing::warn!(error = %e, "recording access key use failed");
        }
    }
}

/// The uid and creation of an object (both are set on every stored object).
pub fn incarnation_of<K: Resource>(o: &K) -> Option<Incarnation> {
    let m = o.meta();
    let t = m.creation_timestamp.as_ref()?;
    let created = DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)?;
    Some(Incarnation { uid: m.uid.clone().filter(|u| !u.is_empty())?, created })
}

/// Whether `have` is at or after `want` (etcd resourceVersions are integers in practice; when
/// either is not, only equality counts).
pub fn rv_at_least(have: Option<&str>, want: &str) -> bool {
    match (have.and_then(|h| h.parse::<u64>().ok()), want.parse::<u64>().ok()) {
        (Some(h), Some(w)) => h >= w,
        _ => have == Some(want),
    }
}

/// A namespace as the UI's AmbientProject:
/// `{name, displayName, description, labels, annotations, creationTimestamp, status}`.
pub fn project_json(ns: &Namespace) -> Value {
    let view = ProjectView::from_namespace(ns);
    let project = crate::bodies::Project {
        display_name: view.display_name.unwrap_or_else(|| view.name.clone()),
        name: view.name,
        description: view.description.unwrap_or_default(),
        labels: ns.labels().clone(),
        annotations: ns.annotations().clone(),
        creation_timestamp: view
            .creation_timestamp
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default(),
        status: view.status,
    };
    serde_json::to_value(project).unwrap_or(Value::Null)
}

/// A session of the cache (which holds no managedFields) as the full `{apiVersion, kind,
/// metadata, spec, status}` object. A session the reconciler has not reached yet has no status
/// and shows phase Pending, as the status stream does. Its model parameters show as the runner
/// gets them, defaults included (the web UI reads `spec.llmSettings.model` unguarded).
pub fn session_json(s: &AgenticSession) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    let llm = s.spec.llm_settings.clone().unwrap_or_default().effective();
    if let (Some(spec), Ok(llm)) = (v.get_mut("spec"), serde_json::to_value(llm)) {
        spec["llmSettings"] = llm;
    }
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::String(events::crd::API_VERSION.into()));
        m.insert("kind".into(), Value::String("AgenticSession".into()));
        if let Value::Object(status) = m.entry("status").or_insert_with(|| json!({})) {
            status.entry("phase").or_insert_with(|| Value::String(events::Phase::Pending.as_str().into()));
        }
    }
    v
}

/// Annotation/label maps for tests of shapes.
pub type Labels = BTreeMap<String, String>;

impl Reads {
    /// Whether the access key `id` of `ns` is in the cache.
    pub fn keys_of_sync(&self, ns: &str, id: &str) -> bool {
        self.serviceaccounts.get(&reflector::ObjectRef::new(id).within(ns)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_without_status_shows_pending() {
        let spec: events::crd::AgenticSessionSpec = serde_json::from_value(json!({"prompt": "hi"})).unwrap();
        let mut s = AgenticSession::new("s1", spec);
        assert_eq!(session_json(&s)["status"]["phase"], "Pending");
        assert_eq!(session_json(&s)["kind"], "AgenticSession");
        s.status =
            Some(events::crd::AgenticSessionStatus { phase: Some(events::Phase::Running), ..Default::default() });
        assert_eq!(session_json(&s)["status"]["phase"], "Running", "a written phase is never replaced");
    }
}
