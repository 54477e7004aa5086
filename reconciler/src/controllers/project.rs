//! Managed namespace → its ProjectSettings exists; ProjectSettings.groupAccess → group
//! RoleBindings (stale ones removed, deleted ones recreated). Only in projects: anyone who may
//! create a ProjectSettings in a namespace of his own must not get RoleBindings written there
//! with the reconciler's `bind` right.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use events::crd::{PROJECT_SETTINGS_NAME, ProjectSettings};

use super::{ControllerError, ERROR_REQUEUE};
use crate::apply::{ensure_project_settings, sync_group_bindings};
use crate::labels;
use crate::namespaces::Projects;

/// Shared state of both controllers.
pub struct Ctx {
    /// Cluster client.
    pub client: kube::Client,
    /// Periodic resync.
    pub resync: Duration,
    /// The managed namespaces (the namespace controller's store).
    pub projects: Projects,
}

async fn reconcile_namespace(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ensure_project_settings(&ctx.client, &ns.name_any()).await?;
    Ok(Action::requeue(ctx.resync))
}

async fn reconcile_settings(ps: Arc<ProjectSettings>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if ps.metadata.deletion_timestamp.is_some() || ps.name_any() != PROJECT_SETTINGS_NAME {
        return Ok(Action::await_change());
    }
    let ns = ps.namespace().unwrap_or_default();
    // Settings outside projects are not ours: nothing is written for them. Looked at again
    // each resync, so that a namespace adopted as a project later gets its bindings.
    if !ctx.projects.is_managed(&ns).await? {
        tracing::debug!(namespace = %ns, "ignoring ProjectSettings outside a project");
        return Ok(Action::requeue(ctx.resync));
    }
    sync_group_bindings(&ctx.client, &ps).await?;
    let generation = ps.metadata.generation;
    let observed = ps.status.as_ref().and_then(|s| s.observed_generation);
    // Written only when the generation moved: no self-triggered loop.
    if observed != generation {
        let ready = crate::runs::condition(
            "Ready",
            "True",
            "BindingsInSync",
            "group RoleBindings match groupAccess",
            generation,
        );
        let patch = json!({"status": {"observedGeneration": generation, "conditions": [ready]}});
        Api::<ProjectSettings>::namespaced(ctx.client.clone(), &ns)
            .patch_status(PROJECT_SETTINGS_NAME, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(Action::requeue(ctx.resync))
}

fn error_policy<K>(_: Arc<K>, e: &ControllerError, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "project reconcile failed");
    Action::requeue(ERROR_REQUEUE)
}

/// Builds both project controllers: the namespace controller's store of managed namespaces
/// (shared with the rest of the reconciler, see `namespaces::Projects`) and a future that runs
/// them until `stop` is cancelled.
pub fn start(
    client: kube::Client,
    resync: Duration,
    stop: CancellationToken,
) -> (Store<Namespace>, impl Future<Output = ()>) {
    // Only a namespace's name, labels and deletion are read (here and through `Projects`).
    let (store, namespaces) = super::trimmed_watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(labels::MANAGED_SELECTOR),
        |ns| {
            ns.metadata.managed_fields = None;
            ns.metadata.annotations = None;
            ns.spec = None;
            ns.status = None;
        },
    );
    let controller = Controller::for_stream(namespaces.applied_objects(), store.clone());
    let ctx = Arc::new(Ctx { client: client.clone(), resync, projects: Projects::new(store.clone(), client.clone()) });
    let namespaces = controller
        .watches(Api::<ProjectSettings>::all(client.clone()), watcher::Config::default(), |ps| {
            ps.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .with_config(super::project_workers())
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile_namespace, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "namespace controller");
            }
        });
    let permission = watcher::Config::default().labels(labels::PERMISSION_SELECTOR);
    // Group grants, generation and status are read; the owner reference needs name and uid.
    let (settings_store, settings) =
        super::trimmed_watch(Api::<ProjectSettings>::all(client.clone()), watcher::Config::default(), |ps| {
            ps.metadata.managed_fields = None;
            ps.metadata.annotations = None;
        });
    let settings = Controller::for_stream(settings.applied_objects(), settings_store)
        .owns(Api::<RoleBinding>::all(client), permission)
        .with_config(super::project_workers())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile_settings, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "projectsettings controller");
            }
        });
    (store, async move {
        tokio::join!(namespaces, settings);
    })
}
