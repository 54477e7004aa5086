//! The cluster watches: one kube-runtime watcher per resource, each reducing objects to
//! [`Rec`]s at once (so no prompt, env value or token is ever kept) and feeding them, in watch
//! order, to the projection loop.
//!
//! Sessions' runner Jobs and pods are watched (label `agentic-session` only) for the runner
//! view: why a run waits or failed (`Unschedulable`, `ImagePullBackOff`, `OOMKilled`, an exit
//! code), which the session's phase does not say. They are read through status-only types
//! (`runner::JobStatusOnly`, `runner::PodStatusOnly`), so the runner's environment is never
//! even deserialized. ProjectSettings (name `projectsettings` only) feed the settings view.
//! Secrets are never watched.

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use events::labels::{ACCESS_KEY_SELECTOR, PERMISSION_SELECTOR};

use crate::model::runner::{self, JobStatusOnly, PodStatusOnly};
use crate::model::{self, ProjectSelector, Rec, Res};

/// One watch observation, in the order the watch delivered it.
#[derive(Debug)]
pub enum WatchMsg {
    /// A (re)list starts.
    Init(Res),
    /// An object of the (re)list.
    InitItem(Res, Rec),
    /// The (re)list is complete.
    InitDone(Res),
    /// An object was added or changed.
    Applied(Res, Rec),
    /// An object was deleted.
    Deleted(Res, Rec),
}

/// Starts every watcher; they stop on `cancel`.
pub fn spawn_all(
    client: Client,
    selector: ProjectSelector,
    tx: mpsc::Sender<(Instant, WatchMsg)>,
    cancel: CancellationToken,
) {
    // All namespaces, not only managed ones: a namespace that lost its managed label is then
    // known to exist, and one of another projector's shard (--project-selector) is known to
    // be foreign rather than gone.
    spawn(
        Res::Namespaces,
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        move |o| Rec::Namespace(model::namespace_rec(o, &selector)),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::Sessions,
        Api::<events::crd::AgenticSession>::all(client.clone()),
        watcher::Config::default(),
        |o| Rec::Session(Box::new(model::session_rec(o))),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::PermissionBindings,
        Api::<RoleBinding>::all(client.clone()),
        watcher::Config::default().labels(PERMISSION_SELECTOR),
        |o| Rec::PermissionBinding(model::permission_rec(o)),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::KeyAccounts,
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default().labels(ACCESS_KEY_SELECTOR),
        |o| Rec::KeyAccount(model::key_account_rec(o)),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::KeyBindings,
        Api::<RoleBinding>::all(client.clone()),
        watcher::Config::default().labels(ACCESS_KEY_SELECTOR),
        |o| Rec::KeyBinding(model::key_binding_rec(o)),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::Jobs,
        Api::<JobStatusOnly>::all(client.clone()),
        watcher::Config::default().labels(runner::SESSION_LABEL),
        |o| Rec::Job(runner::job_rec(o)),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::Pods,
        Api::<PodStatusOnly>::all(client.clone()),
        watcher::Config::default().labels(runner::SESSION_LABEL),
        |o| Rec::Pod(runner::pod_rec(o)),
        tx.clone(),
        cancel.clone(),
    );
    spawn(
        Res::Settings,
        Api::<events::crd::ProjectSettings>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={}", events::crd::PROJECT_SETTINGS_NAME)),
        |o| Rec::Settings(model::settings_rec(o)),
        tx,
        cancel,
    );
}

fn spawn<K, F>(
    res: Res,
    api: Api<K>,
    cfg: watcher::Config,
    reduce: F,
    tx: mpsc::Sender<(Instant, WatchMsg)>,
    cancel: CancellationToken,
) where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(&K) -> Rec + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut lists = 0u64;
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let Some(item) = item else {
                tracing::error!(resource = res.as_str(), "watch stream ended");
                return;
            };
            let msg = match item {
                Ok(watcher::Event::Init) => {
                    lists += 1;
                    if lists > 1 {
                        metrics::counter!("projector_watch_restarts_total", "resource" => res.as_str()).increment(1);
                        tracing::info!(resource = res.as_str(), "watch relisting");
                    }
                    WatchMsg::Init(res)
                }
                Ok(watcher::Event::InitApply(o)) => WatchMsg::InitItem(res, reduce(&o)),
                Ok(watcher::Event::InitDone) => WatchMsg::InitDone(res),
                Ok(watcher::Event::Apply(o)) => WatchMsg::Applied(res, reduce(&o)),
                Ok(watcher::Event::Delete(o)) => WatchMsg::Deleted(res, reduce(&o)),
                Err(e) => {
                    // The watcher recovers by itself (with backoff); a 410 leads to a relist.
                    metrics::counter!("projector_watch_errors_total", "resource" => res.as_str()).increment(1);
                    tracing::warn!(resource = res.as_str(), error = %e, "watch error");
                    continue;
                }
            };
            // Stamped on receipt: the projection reports watch-to-publish lag.
            if tx.send((Instant::now(), msg)).await.is_err() {
                return;
            }
        }
    });
}
