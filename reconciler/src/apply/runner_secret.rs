//! The project's credential Secrets (`events::secrets`): a change opened from its sealed box
//! here and merged into the runner secret `ambient-runner-secrets` (then named in
//! `ProjectSettings.spec.runnerSecretsName`) or the integration secret. The values never appear
//! in logs, results or status.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use events::Command;
use events::commands::{RunnerSecretConfig, RunnerSecretPut};
use events::crd::{PROJECT_SETTINGS_NAME, ProjectSettings};
use events::sealing::SealingSecretKey;
use events::secrets::{INTEGRATION_SECRET_NAME, MASK, ProjectSecret, RUNNER_SECRET_NAME, SecretChange};

use super::{Applied, ensure_project_settings, managed_namespace, string_map};
use crate::error::ApplyError;
use crate::labels;

use events::secrets::is_env_name as valid_env_name;

/// A DNS-1123 subdomain (a Secret name).
pub fn valid_secret_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|part| events::names::check_dns1123_label("secretName", part, 63).is_ok())
}

pub async fn put(
    client: &kube::Client,
    cmd: &Command,
    req: &RunnerSecretPut,
    key: &SealingSecretKey,
) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    managed_namespace(client, &cmd.project).await?;
    let plain = key.open(&req.data).map_err(|e| ApplyError::invalid(format!("secret: {e}")))?;
    let change: SecretChange = serde_json::from_slice(&plain)
        .map_err(|_| ApplyError::invalid("a secret change must be a JSON object of string or null values"))?;
    if let Some(k) = change.0.keys().find(|k| !valid_env_name(k)) {
        return Err(ApplyError::invalid(format!("secret key {k:?} is not a valid environment variable name")));
    }
    // The api drops masked values (they mean "keep"); one that arrives anyway is never stored.
    if let Some(k) = change.0.iter().find(|(_, v)| v.as_deref() == Some(MASK)).map(|(k, _)| k) {
        return Err(ApplyError::invalid(format!("secret key {k}: the mask is not a value")));
    }
    let name = match req.secret {
        ProjectSecret::Runner => RUNNER_SECRET_NAME,
        ProjectSecret::Integration => INTEGRATION_SECRET_NAME,
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    // A merge patch changes only the keys sent (null removes one): the reconciler never reads
    // a Secret, so a key it was not told about cannot be lost.
    let data: serde_json::Map<String, serde_json::Value> = change
        .0
        .iter()
        .map(|(k, v)| {
            (k.clone(), v.as_ref().map_or(serde_json::Value::Null, |v| json!(ByteString(v.clone().into_bytes()))))
        })
        .collect();
    let patch = json!({
        "metadata": {
            "labels": {labels::APP: req.secret.app_label()},
            "annotations": {labels::LAST_COMMAND: cmd.id.to_string()},
        },
        "data": data,
    });
    let pp = PatchParams { field_manager: Some(labels::FIELD_MANAGER.into()), ..Default::default() };
    let secret = match secrets.patch(name, &pp, &Patch::Merge(&patch)).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    labels: Some(string_map([(labels::APP, req.secret.app_label())])),
                    annotations: Some(string_map([(labels::LAST_COMMAND, cmd.id.to_string().as_str())])),
                    ..Default::default()
                },
                data: Some(
                    change
                        .0
                        .into_iter()
                        .filter_map(|(k, v)| v.map(|v| (k, ByteString(v.into_bytes()))))
                        .collect::<BTreeMap<_, _>>(),
                ),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match secrets
                .create(
                    &PostParams { field_manager: Some(labels::FIELD_MANAGER.into()), ..Default::default() },
                    &secret,
                )
                .await
            {
                Ok(s) => s,
                // Created meanwhile (a retry of this command): patch it.
                Err(e) if crate::error::already_exists(&e) => secrets.patch(name, &pp, &Patch::Merge(&patch)).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if req.secret == ProjectSecret::Runner {
        set_runner_secrets_name(client, ns, RUNNER_SECRET_NAME).await?;
    }
    Ok(Applied::of(&secret))
}

pub async fn config(client: &kube::Client, cmd: &Command, req: &RunnerSecretConfig) -> Result<Applied, ApplyError> {
    managed_namespace(client, &cmd.project).await?;
    if !valid_secret_name(&req.secret_name) {
        return Err(ApplyError::invalid(format!("secretName {:?} is not a valid Secret name", req.secret_name)));
    }
    let ps = set_runner_secrets_name(client, cmd.project.as_str(), &req.secret_name).await?;
    Ok(Applied::of(&ps))
}

async fn set_runner_secrets_name(client: &kube::Client, ns: &str, name: &str) -> Result<ProjectSettings, ApplyError> {
    ensure_project_settings(client, ns).await?;
    let patch = json!({"spec": {"runnerSecretsName": name}});
    Ok(Api::<ProjectSettings>::namespaced(client.clone(), ns)
        .patch(PROJECT_SETTINGS_NAME, &PatchParams::default(), &Patch::Merge(patch))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_env_name("ANTHROPIC_API_KEY"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
        assert!(valid_secret_name("my.secret-1"));
        assert!(!valid_secret_name("Bad"));
        assert!(!valid_secret_name("a..b"));
    }
}
