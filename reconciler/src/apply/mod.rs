//! Applying commands to the cluster. Every apply is idempotent: deterministic object names,
//! server-side apply with field manager `ambient-reconciler`, and the applying command's id
//! recorded in the `ambient-code.io/last-command` annotation, so that a command re-delivered
//! after its cluster write (but before its result was stored) recognises its own effect.

mod key;
mod permission;
pub mod project;
mod runner_secret;
pub mod session;

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::{Api, PostParams};

use events::Command;
use events::commands::CommandBody;
use events::crd::{PROJECT_SETTINGS_NAME, ProjectSettings, ProjectSettingsSpec};
use events::results::ResourceRef;
use events::sealing::{SealedBox, SealingSecretKey};

use crate::authz::{self, SelfProvision};
use crate::error::ApplyError;
use crate::labels;
use crate::namespaces::Projects;
pub use crate::namespaces::managed_namespace;

pub use permission::sync_group_bindings;
pub use runner_secret::valid_secret_name as runner_secret_name_ok;

/// What the reconciler needs to apply commands.
#[derive(Clone)]
pub struct Applier {
    /// Cluster client (the reconciler's own ServiceAccount).
    pub client: kube::Client,
    /// Project-creation policy.
    pub policy: SelfProvision,
    /// Opens sealed runner secrets.
    pub sealing: SealingSecretKey,
    /// Default access-key token lifetime, seconds.
    pub key_token_seconds: i64,
    /// Managed namespaces, cached (the hot path skips its namespace GET).
    pub projects: Projects,
    /// The operator's bounds on runner pods: a session create or clone beyond them fails (422).
    pub runner: std::sync::Arc<events::crd::RunnerBounds>,
    /// The per-user project quota and its claims (decided when a project is created).
    pub quota: project::ProjectQuota,
}

/// A successful apply.
#[derive(Debug)]
pub struct Applied {
    /// The object written.
    pub resource: ResourceRef,
    /// For key creation: the token sealed to the command's reply key.
    pub sealed_token: Option<SealedBox>,
}

impl Applied {
    fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        Applied { resource: resource_ref(obj), sealed_token: None }
    }
}

/// The reference of an object already deleted (by an earlier delivery of the same command).
pub fn gone<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> Applied {
    Applied {
        resource: ResourceRef {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespace: namespace.map(Into::into),
            name: name.into(),
            uid: None,
            resource_version: None,
        },
        sealed_token: None,
    }
}

/// The result reference of an object.
pub fn resource_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ResourceRef {
    ResourceRef {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: obj.meta().namespace.clone(),
        name: obj.meta().name.clone().unwrap_or_default(),
        uid: obj.meta().uid.clone(),
        resource_version: obj.meta().resource_version.clone(),
    }
}

/// How a delivery relates to earlier ones: a redelivered delete that finds nothing was most
/// likely applied by an earlier delivery whose result was lost with the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// First delivery.
    First,
    /// Delivered before (the reconciler crashed or timed out with it).
    Redelivered,
}

impl Applier {
    /// Re-authorizes and applies one command.
    pub async fn apply(&self, cmd: &Command, delivery: Delivery) -> Result<Applied, ApplyError> {
        let c = &self.client;
        if let CommandBody::SessionCreate(_) = &cmd.body {
            // The hottest command: check the principal and the project in parallel (the project
            // is usually known from the namespace cache); a refusal still wins over a missing
            // project.
            let (allowed, project) =
                tokio::join!(authz::authorize(c, cmd, &self.policy), self.projects.require(&cmd.project));
            allowed?;
            project?;
        } else {
            authz::authorize(c, cmd, &self.policy).await?;
        }
        // The api checked the same rules; a command it did not check (an older api, one written
        // to the bus by hand) is refused here, before anything is written.
        events::limits::check_body(&cmd.body).map_err(|e| ApplyError::invalid(e.to_string()))?;
        match &cmd.body {
            CommandBody::ProjectCreate(r) => project::create(c, cmd, r, &self.quota).await,
            CommandBody::ProjectUpdate(r) => project::update(c, cmd, r).await,
            CommandBody::ProjectDelete(_) => project::delete(c, cmd, delivery).await,
            CommandBody::SessionCreate(r) => session::create_in_project(c, cmd, r, &self.runner).await,
            CommandBody::SessionUpdate(r) => session::update(c, cmd, r).await,
            CommandBody::SessionDelete(r) => session::delete(c, cmd, &r.name, delivery).await,
            CommandBody::SessionStart(r) => session::start(c, cmd, &r.name).await,
            CommandBody::SessionStop(r) => session::stop(c, cmd, &r.name).await,
            CommandBody::SessionClone(r) => session::clone(c, cmd, r, &self.runner).await,
            CommandBody::SessionStatus(r) => session::report_status(c, cmd, r).await,
            CommandBody::SessionDisplayName(r) => session::display_name(c, cmd, r).await,
            CommandBody::PermissionGrant(r) => permission::grant(c, cmd, r).await,
            CommandBody::PermissionRevoke(r) => permission::revoke(c, cmd, r, delivery).await,
            CommandBody::KeyCreate(r) => key::create(c, cmd, r, self.key_token_seconds).await,
            CommandBody::KeyRevoke(r) => key::revoke(c, cmd, r, delivery).await,
            CommandBody::RunnerSecretPut(r) => runner_secret::put(c, cmd, r, &self.sealing).await,
            CommandBody::RunnerSecretConfig(r) => runner_secret::config(c, cmd, r).await,
        }
    }
}

/// The command id recorded on an object.
pub fn last_command<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().annotations.as_ref()?.get(labels::LAST_COMMAND).map(String::as_str)
}

/// Labels map from pairs.
pub fn string_map<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The project's ProjectSettings, created (empty) when missing.
pub async fn ensure_project_settings(client: &kube::Client, ns: &str) -> Result<ProjectSettings, ApplyError> {
    let api = Api::<ProjectSettings>::namespaced(client.clone(), ns);
    if let Some(ps) = api.get_opt(PROJECT_SETTINGS_NAME).await? {
        return Ok(ps);
    }
    let mut ps = ProjectSettings::new(PROJECT_SETTINGS_NAME, ProjectSettingsSpec::default());
    ps.metadata.namespace = Some(ns.into());
    match api.create(&PostParams::default(), &ps).await {
        Ok(ps) => Ok(ps),
        Err(e) if crate::error::already_exists(&e) => Ok(api.get(PROJECT_SETTINGS_NAME).await?),
        Err(e) => Err(e.into()),
    }
}
