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
    state: ClusterState,
    /// The read model as last written, by project.
    projected: BTreeMap<String, BTreeMap<ObjKey, Projected>>,
    lists: BTreeMap<Res, BTreeMap<(String, String), Rec>>,
    listed: BTreeSet<Res>,
    ready: Arc<AtomicBool>,
}

impl Projection {
    /// Starts from the read model's last state.
    pub fn new(bus: Bus, projected: BTreeMap<ObjKey, Projected>, ready: Arc<AtomicBool>) -> Self {
        let mut by_project: BTreeMap<String, BTreeMap<ObjKey, Projected>> = BTreeMap::new();
        for (k, v) in projected {
            by_project.entry(k.project().to_string()).or_default().insert(k, v);
        }
        Projection {
            bus,
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
        metrics::histogram!("projector_full_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("projector_read_model_objects").set(self.projected.values().map(BTreeMap::len).sum::<usize>() as f64);
        Ok(())
    }

    /// Brings the read model and the status stream of project `ns` in step with the cluster,
    /// for the objects of `scope`.
    async fn sync(&mut self, ns: &str, scope: &Scope) -> Result<(), BusError> {
        let Ok(project) = ProjectName::new(ns) else { return Ok(()) };
        if self.state.out_of_scope(ns) {
            return Ok(());
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
        let now = Utc::now();
        let mut steps = Vec::new();
        for k in keys {
            if let Some(step) = model::diff(&project, &k, desired.get(&k), current.get(&k), now) {
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
            async {
                // Events first, then the read model: a crash in between re-derives the same
                // event ids on restart, and JetStream drops them as duplicates.
                for ev in &step.events {
                    bus.publish(ev).await?;
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
}
