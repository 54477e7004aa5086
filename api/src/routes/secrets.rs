//! Runner secrets: values go to the reconciler sealed to its key; reads show key names only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use events::CommandBody;
use events::commands::{RunnerSecretConfig, RunnerSecretPut};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Caller;
use crate::authz::check;
use crate::errors::ApiError;
use crate::extract::{JsonBody, strict};
use crate::reads::rv_at_least;
use crate::routes::sessions::is_env_name;
use crate::state::{AppState, Mutation, READ_YOUR_WRITES, accepted};

/// The runner secret's name when ProjectSettings names none.
pub const DEFAULT_RUNNER_SECRET: &str = "ambient-runner-secrets";
/// What a value reads as: values are never returned.
pub const REDACTED: &str = "********";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecrets {
    data: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretConfig {
    secret_name: String,
}

/// The runner secret's keys, values redacted: `{"data": {"KEY": "********"}}`.
#[utoipa::path(get, path = "/api/projects/{project}/runner-secrets", tag = "runner-secrets", params(("project" = String, Path)),
    responses((status = 200, description = "`{data: {KEY: \"********\"}}` (values are never returned)"), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn get_runner_secrets(State(st): State<Arc<AppState>>, caller: Caller, Path(p): Path<String>) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    let name = secret_name(&st, &p);
    st.require(&caller, &[check(&p, "get", "", "secrets", Some(&name))]).await?;
    // The api may read only Secrets with this fixed name (deploy/base/rbac/api.yaml); any other
    // configured name reads as empty.
    let data = match Api::<Secret>::namespaced(st.kube.clone(), &p).get_opt(&name).await {
        Ok(Some(s)) => s.data.unwrap_or_default().into_keys().chain(s.string_data.unwrap_or_default().into_keys()).map(|k| (k, REDACTED)).collect(),
        Ok(None) => BTreeMap::new(),
        Err(kube::Error::Api(s)) if s.code == 403 => BTreeMap::new(),
        Err(e) => return Err(ApiError::Unavailable(format!("reading the runner secret failed: {e}"))),
    };
    Ok(axum::Json(json!({"data": data})).into_response())
}

/// Replaces the runner secret's data (sealed to the reconciler; never on the bus in plaintext).
#[utoipa::path(put, path = "/api/projects/{project}/runner-secrets", tag = "runner-secrets", params(("project" = String, Path)),
    request_body(content = Object, description = "`{data: {KEY: value}}`"),
    responses((status = 200, description = "`{message}`"), (status = 202, description = "accepted"), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found"), (status = 422, description = "invalid key")))]
pub async fn put_runner_secrets(State(st): State<Arc<AppState>>, caller: Caller, Path(p): Path<String>, headers: HeaderMap, JsonBody(v): JsonBody) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let req: PutSecrets = strict(&v)?;
    if req.data.len() > 100 {
        return Err(ApiError::invalid("data", "at most 100 keys"));
    }
    if let Some(k) = req.data.keys().find(|k| !is_env_name(k)) {
        return Err(ApiError::invalid(format!("data.{k}"), "keys must match [A-Za-z_][A-Za-z0-9_]*"));
    }
    let plain = serde_json::to_vec(&req.data).map_err(|e| ApiError::Internal(e.to_string()))?;
    let sealed = st.reconciler_key.seal(&plain).map_err(|e| ApiError::Internal(e.to_string()))?;
    match st.mutate(&caller, project, CommandBody::RunnerSecretPut(RunnerSecretPut { data: sealed }), &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => Ok(axum::Json(json!({"message": "runner secrets updated"})).into_response()),
    }
}

fn secret_name(st: &AppState, p: &str) -> String {
    st.reads
        .settings_of(p)
        .and_then(|s| s.spec.runner_secrets_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_RUNNER_SECRET.into())
}

/// Which Secret is the runner secret: `{secretName}`.
#[utoipa::path(get, path = "/api/projects/{project}/runner-secrets/config", tag = "runner-secrets", params(("project" = String, Path)),
    responses((status = 200, description = "`{secretName}`"), (status = 404, description = "project not found")))]
pub async fn get_runner_config(State(st): State<Arc<AppState>>, caller: Caller, Path(p): Path<String>) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    let name = st.reads.settings_of(&p).and_then(|s| s.spec.runner_secrets_name.clone()).unwrap_or_default();
    Ok(axum::Json(json!({"secretName": name})).into_response())
}

/// Chooses the runner secret's name.
#[utoipa::path(put, path = "/api/projects/{project}/runner-secrets/config", tag = "runner-secrets", params(("project" = String, Path)),
    request_body(content = Object, description = "`{secretName}`"),
    responses((status = 200, description = "`{secretName}`"), (status = 202, description = "accepted"), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn put_runner_config(State(st): State<Arc<AppState>>, caller: Caller, Path(p): Path<String>, headers: HeaderMap, JsonBody(v): JsonBody) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let req: SecretConfig = strict(&v)?;
    let valid = !req.secret_name.is_empty()
        && req.secret_name.len() <= 253
        && req.secret_name.split('.').all(|l| events::names::check_dns1123_label("secretName", l, 63).is_ok());
    if !valid {
        return Err(ApiError::bad_field("secretName", "secretName must be a DNS-1123 subdomain"));
    }
    let body = CommandBody::RunnerSecretConfig(RunnerSecretConfig { secret_name: req.secret_name.clone() });
    match st.mutate(&caller, project, body, &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { resource, .. } => {
            if let Some(rv) = &resource.resource_version {
                st.reads.wait_until(READ_YOUR_WRITES, || st.reads.settings_of(&p).is_some_and(|s| rv_at_least(s.metadata.resource_version.as_deref(), rv))).await;
            }
            Ok(axum::Json(json!({"secretName": req.secret_name})).into_response())
        }
    }
}
