//! The projection loop: applies watch observations to the in-memory cluster state, in order,
//! and for each affected project diffs what the read model should hold against what it holds,
//! publishing the status events before writing the read model.
//!
//! One task processes everything sequentially, so events of one object are published in
//! order. Nothing is projected before every watcher finished its first list: a partial view
//! of the cluster would look like deletions. After a relist (`Init`…`InitDone`) everything is
//! diffed again, which also catches objects deleted while the watch was down; a view equal to
//! the projected one emits nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::Utc;
use events::ProjectName;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::bus::{Bus, BusError};
use crate::model::{self, ClusterState, ObjKey, Projected, Rec, Res, Scope};
use crate::watch::WatchMsg;

/// The projection state.
pub struct Projection {
    bus: Bus,
    /// Asks the API server directly before purging an orphan's history.
    kube: kube::Client,
    state: ClusterState,
    /// The read model as last written, by project.
    projected: BTreeMap<String, BTreeMap<ObjKey, Projected>>,
    lists: BTreeMap<Res, BTreeMap<(String, String), Rec>>,
    listed: BTreeSet<Res>,
    ready: Arc<AtomicBool>,
}

impl Projection {
    /// Starts from the read model's last state.
    pub fn new(bus: Bus, kube: kube::Client, projected: BTreeMap<ObjKey, Projected>, ready: Arc<AtomicBool>) -> Self {
        let mut by_project: BTreeMap<String, BTreeMap<ObjKey, Projected>> = BTreeMap::new();
        for (k, v) in projected {
            by_project.entry(k.project().to_string()).or_default().insert(k, v);
        }
        Projection {
            bus,
            kube,
            state: ClusterState::default(),
            projected: by_project,
            lists: BTreeMap::new(),
            listed: BTreeSet::new(),
            ready,
        }
    }

    /// Processes watch observations until the watchers stop or the bus is shut down.
    pub async fn run(mut self, mut rx: mpsc::Receiver<(Instant, WatchMsg)>) -> Result<(), BusError> {
        while let Some((received, msg)) = rx.recv().await {
            metrics::gauge!("projector_watch_queue_depth").set(rx.len() as f64);
            let live = matches!(msg, WatchMsg::Applied(..) | WatchMsg::Deleted(..));
            self.handle(msg).await?;
            if live {
                // From the watch delivering a change to its events being stored.
                metrics::histogram!("projector_event_lag_seconds").record(received.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    fn all_listed(&self) -> bool {
        Res::ALL.iter().all(|r| self.listed.contains(r))
    }

    async fn handle(&mut self, msg: WatchMsg) -> Result<(), BusError> {
        match msg {
            WatchMsg::Init(res) => {
                self.lists.insert(res, BTreeMap::new());
            }
            WatchMsg::InitItem(res, rec) => {
                let m = rec.meta();
                let k = (m.namespace.clone(), m.name.clone());
                self.lists.entry(res).or_default().insert(k, rec);
            }
            WatchMsg::InitDone(res) => {
                let items = self.lists.remove(&res).unwrap_or_default();
                tracing::info!(resource = res.as_str(), objects = items.len(), "watch listed");
                self.state.replace(res, items);
                self.listed.insert(res);
                if self.all_listed() {
                    self.sync_all().await?;
                    if !self.ready.swap(true, Ordering::SeqCst) {
                        tracing::info!("initial catch-up done");
                    }
                }
            }
            WatchMsg::Applied(res, rec) => {
                let ns = rec.meta().namespace.clone();
                let scope = rec.scope();
                self.state.apply(res, rec);
                if self.all_listed() {
                    self.sync(&ns, &scope).await?;
                }
            }
            WatchMsg::Deleted(res, rec) => {
                let m = rec.meta();
                let ns = m.namespace.clone();
                self.state.remove(res, &m.namespace, &m.name);
                // Another shard's project: its projector reports the deletion.
                let foreign = matches!(&rec, Rec::Namespace(n) if !n.in_scope);
                if self.all_listed() && !foreign {
                    self.sync(&ns, &rec.scope()).await?;
                }
            }
        }
        Ok(())
    }

    async fn sync_all(&mut self) -> Result<(), BusError> {
        let started = Instant::now();
        // Read-model projects whose namespace is gone are included: their objects were
        // deleted while we were not watching.
        let projects: BTreeSet<String> =
            self.state.projects().into_iter().chain(self.projected.keys().cloned()).collect();
        for p in &projects {
            self.sync(p, &Scope::Project).await?;
        }
        self.purge_orphans().await?;
        metrics::histogram!("projector_full_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("projector_read_model_objects")
            .set(self.projected.values().map(BTreeMap::len).sum::<usize>() as f64);
        Ok(())
    }

    /// Brings the read model and the status stream of project `ns` in step with the cluster,
    /// for the objects of `scope`.
    ///
    /// When the projected namespace is over (gone, unmanaged, or the name now belongs to
    /// another namespace), everything projected of it is reported deleted first, whatever the
    /// scope, and its status history purged (see [`Projection::apply`]); then the current
    /// namespace, if any, is projected as new.
    async fn sync(&mut self, ns: &str, scope: &Scope) -> Result<(), BusError> {
        let Ok(project) = ProjectName::new(ns) else { return Ok(()) };
        if self.state.out_of_scope(ns) {
            return Ok(());
        }
        let projected_uid =
            self.projected.get(ns).and_then(|m| m.get(&ObjKey::Project(ns.to_string()))).map(|p| p.uid.clone());
        let inc = model::incarnation(&self.state, ns, projected_uid.as_deref());
        if let model::Incarnation::Over { now, .. } = &inc {
            let keys: BTreeSet<ObjKey> =
                self.projected.get(ns).map(|m| m.keys().cloned().collect()).unwrap_or_default();
            self.apply(&project, model::stamp_for(&inc), &BTreeMap::new(), keys).await?;
            if now.is_none() {
                return Ok(());
            }
        }
        let desired = match scope {
            Scope::Project => model::desired_for_project(&self.state, ns),
            Scope::Session(s) => model::desired_for_session(&self.state, ns, s),
        };
        let empty = BTreeMap::new();
        let current = self.projected.get(ns).unwrap_or(&empty);
        let keys: BTreeSet<ObjKey> = match scope.keys(ns) {
            None => desired.keys().chain(current.keys()).cloned().collect(),
            Some(keys) => desired.keys().cloned().chain(keys).collect(),
        };
        let stamp = model::project_uid(&self.state, ns).map(String::from);
        self.apply(&project, stamp.as_deref(), &desired, keys).await
    }

    /// Publishes the events and writes the read model that bring `keys` of `project` from the
    /// projected state to `desired`, stamping events with `project_uid`.
    ///
    /// The project's own deletion goes last; once its tombstone is stored, every earlier
    /// status event of the project is purged (the tombstone stays, so that consumers learn of
    /// the deletion), and only then is the project's read-model value removed: a crash in
    /// between finds the project still projected and does it all again (the tombstone's
    /// re-publish is a duplicate, its sequence the stored one's, the purge idempotent).
    async fn apply(
        &mut self,
        project: &ProjectName,
        project_uid: Option<&str>,
        desired: &BTreeMap<ObjKey, model::Desired>,
        keys: BTreeSet<ObjKey>,
    ) -> Result<(), BusError> {
        let ns = project.as_str();
        let empty = BTreeMap::new();
        let current = self.projected.get(ns).unwrap_or(&empty);
        let now = Utc::now();
        let mut steps = Vec::new();
        for k in keys {
            if let Some(step) = model::diff(project, project_uid, &k, desired.get(&k), current.get(&k), now) {
                steps.push((k, step));
            }
        }
        // The project first when it appears, last when it goes.
        steps.sort_by_key(|(k, s)| {
            let is_project = matches!(k, ObjKey::Project(_));
            match (s.store.is_some(), is_project) {
                (true, true) => 0,
                (true, false) | (false, false) => 1,
                (false, true) => 2,
            }
        });
        for (key, step) in steps {
            let span = tracing::info_span!("project_object", project = %ns, object = %key.kv_key());
            let bus = &self.bus;
            let project_gone = matches!(key, ObjKey::Project(_)) && step.store.is_none();
            async {
                // Events first, then the read model: a crash in between re-derives the same
                // event ids on restart, and JetStream drops them as duplicates.
                let mut last = None;
                for ev in &step.events {
                    last = bus.publish(ev).await?.or(last);
                }
                if project_gone {
                    // Purging below a sequence never touches what the next owner of the
                    // name publishes after it.
                    bus.purge_project(project, last).await?;
                }
                bus.store(&key, step.store.as_ref()).await
            }
            .instrument(span)
            .await?;
            let entry = self.projected.entry(ns.to_string()).or_default();
            match step.store {
                Some(v) => {
                    entry.insert(key, v);
                }
                None => {
                    entry.remove(&key);
                }
            }
        }
        if self.projected.get(ns).is_some_and(BTreeMap::is_empty) {
            self.projected.remove(ns);
        }
        Ok(())
    }

    /// Purges the status history of projects that have some in the stream but neither a
    /// namespace of ours nor a read-model entry (e.g. deleted while the read model was lost, or
    /// before this projector purged on deletion). A project's own deletion tombstone, when it
    /// is the last event of the project subject, is kept and everything before it goes (which
    /// never touches a later owner's events). Without one, the history goes whole, but only
    /// once the API server, asked directly, says there is no such namespace: our watch may not
    /// show a project created a moment ago whose events another projector (shard) published.
    async fn purge_orphans(&mut self) -> Result<(), BusError> {
        let projects = match self.bus.projects_with_status().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing projects in the status stream failed; orphan sweep skipped");
                return Ok(());
            }
        };
        let live: BTreeSet<String> = self.state.projects().into_iter().collect();
        for p in projects {
            let Ok(project) = ProjectName::new(p.as_str()) else { continue };
            // Ours and projected, another shard's, or a project now: not orphans.
            if self.projected.contains_key(&p) || self.state.out_of_scope(&p) || live.contains(&p) {
                continue;
            }
            let below = self.bus.last_tombstone(&project).await?;
            if below.is_none() {
                match kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(self.kube.clone()).get_opt(&p).await {
                    Ok(None) => {}
                    Ok(Some(_)) => continue,
                    Err(e) => {
                        tracing::warn!(project = %p, error = %e, "namespace lookup failed; orphaned status history not purged");
                        continue;
                    }
                }
            }
            self.bus.purge_project(&project, below).await?;
        }
        Ok(())
    }
}
