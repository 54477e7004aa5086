//! The project's runner secret: opened from its sealed box here, written as the Secret
//! `ambient-runner-secrets`, and named in `ProjectSettings.spec.runnerSecretsName`. The values
//! never appear in logs, results or status.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde_json::json;

use events::Command;
use events::commands::{RunnerSecretConfig, RunnerSecretPut};
use events::crd::{PROJECT_SETTINGS_NAME, ProjectSettings};
use events::sealing::SealingSecretKey;

use super::{Applied, ensure_project_settings, managed_namespace, string_map};
use crate::error::ApplyError;
use crate::labels;

/// A Secret data key usable as an environment variable name.
pub fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A DNS-1123 subdomain (a Secret name).
pub fn valid_secret_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|part| events::names::check_dns1123_label("secretName", part, 63).is_ok())
}

pub async fn put(client: &kube::Client, cmd: &Command, req: &RunnerSecretPut, key: &SealingSecretKey) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    managed_namespace(client, &cmd.project).await?;
    let plain = key.open(&req.data).map_err(|e| ApplyError::invalid(format!("runner secret: {e}")))?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&plain)
        .map_err(|_| ApplyError::invalid("runner secret must be a JSON object of string values"))?;
    let mut data = BTreeMap::new();
    for (k, v) in map {
        let serde_json::Value::String(v) = v else {
            return Err(ApplyError::invalid(format!("runner secret value of {k} must be a string")));
        };
        if !valid_env_name(&k) {
            return Err(ApplyError::invalid(format!("runner secret key {k:?} is not a valid environment variable name")));
        }
        data.insert(k, ByteString(v.into_bytes()));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(labels::RUNNER_SECRET_NAME.into()),
            namespace: Some(ns.into()),
            labels: Some(string_map([(labels::APP, labels::APP_RUNNER_SECRETS)])),
            annotations: Some(string_map([(labels::LAST_COMMAND, cmd.id.to_string().as_str())])),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    // Server-side apply owns the whole data map: keys left out of this put are removed.
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .patch(labels::RUNNER_SECRET_NAME, &PatchParams::apply(labels::FIELD_MANAGER).force(), &Patch::Apply(&secret))
        .await?;
    set_runner_secrets_name(client, ns, labels::RUNNER_SECRET_NAME).await?;
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
