//! The project's credential Secrets (`events::secrets`): the runner secret and the integration
//! secret. Reads show key names only (every value is the mask); a write is a change (a string
//! sets a key, the mask keeps it, `null` removes it, an absent key is unchanged) sealed to the
//! reconciler, so a form filled from a read can be saved unchanged without destroying anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use events::commands::{RunnerSecretConfig, RunnerSecretPut};
use events::secrets::{INTEGRATION_SECRET_NAME, MASK, MAX_KEYS, ProjectSecret, RUNNER_SECRET_NAME};
use events::{CommandBody, ProjectName};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

use crate::auth::Caller;
use crate::authz::check;
use crate::bodies::{Accepted, Acknowledged, MaskedSecrets, PutSecrets, SecretConfig};
use crate::commands::Mutation;
use crate::errors::ApiError;
use crate::extract::{JsonBody, strict};
use crate::reads::rv_at_least;
use crate::state::{AppState, READ_YOUR_WRITES, accepted};

/// The keys of the Secret `name` in `p` (none when it does not exist). The api may read only
/// the two fixed names (deploy/base/rbac/api.yaml); any other name reads as empty.
async fn stored_keys(st: &AppState, p: &str, name: &str) -> Result<Vec<String>, ApiError> {
    match Api::<Secret>::namespaced(st.kube.clone(), p).get_opt(name).await {
        Ok(Some(s)) => {
            Ok(s.data.unwrap_or_default().into_keys().chain(s.string_data.unwrap_or_default().into_keys()).collect())
        }
        Ok(None) => Ok(Vec::new()),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Vec::new()),
        Err(e) => Err(ApiError::kube("reading the secret", &e)),
    }
}

/// `{"data": {"KEY": "********"}}` for the Secret `name`.
async fn read_masked(st: &AppState, caller: &Caller, p: &str, name: &str) -> Result<Response, ApiError> {
    st.visible_project(caller, p).await?;
    st.require(caller, &[check(p, "get", "", "secrets", Some(name))]).await?;
    let data: BTreeMap<String, &str> = stored_keys(st, p, name).await?.into_iter().map(|k| (k, MASK)).collect();
    Ok(axum::Json(json!({"data": data})).into_response())
}

/// Applies a write to one of the project's Secrets.
async fn write(
    st: &AppState,
    caller: &Caller,
    p: &str,
    which: ProjectSecret,
    headers: &HeaderMap,
    v: serde_json::Value,
) -> Result<Response, ApiError> {
    let project = st.visible_project(caller, p).await?;
    let req: PutSecrets = strict(&v)?;
    if req.data.len() > MAX_KEYS {
        return Err(ApiError::invalid("data", format!("at most {MAX_KEYS} keys")));
    }
    // Authorized before the stored keys are consulted: a refusal naming a key must not tell a
    // stranger which keys exist.
    st.require(caller, &[check(p, "update", "", "secrets", None)]).await?;
    let name = match which {
        ProjectSecret::Runner => RUNNER_SECRET_NAME,
        ProjectSecret::Integration => INTEGRATION_SECRET_NAME,
    };
    // A project may point its runner at a Secret of its own (runner-secrets/config): this api
    // writes only its own, and writing it would silently move the runner off the chosen one.
    if which == ProjectSecret::Runner && secret_name(st, p) != RUNNER_SECRET_NAME {
        return Err(ApiError::Conflict {
            reason: "CustomRunnerSecret",
            message: format!(
                "the project's runner secret is the Secret {}, which is managed outside this api; change it there, or set runner-secrets/config back to {RUNNER_SECRET_NAME}",
                secret_name(st, p)
            ),
        });
    }
    let stored = stored_keys(st, p, name).await?;
    let change = events::secrets::plan(&stored, req.data).map_err(|e| ApiError::invalid(e.field, e.message))?;
    if change.0.is_empty() {
        // Nothing changes (a form saved as it was read): nothing to publish.
        return Ok(axum::Json(json!({"message": updated(which)})).into_response());
    }
    let plain = serde_json::to_vec(&change).map_err(ApiError::internal)?;
    let sealed = st.reconciler_key.seal(&plain).map_err(ApiError::internal)?;
    let body = CommandBody::RunnerSecretPut(RunnerSecretPut { data: sealed, secret: which });
    match st.mutate(caller, project, body, headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => Ok(axum::Json(json!({"message": updated(which)})).into_response()),
    }
}

fn updated(which: ProjectSecret) -> &'static str {
    match which {
        ProjectSecret::Runner => "runner secrets updated",
        ProjectSecret::Integration => "integration secrets updated",
    }
}

/// The runner secret's keys, values masked: `{"data": {"KEY": "********"}}`.
#[utoipa::path(get, path = "/api/projects/{project}/runner-secrets", tag = "runner-secrets", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{data: {KEY: \"********\"}}` (values are never returned)", body = MaskedSecrets), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn get_runner_secrets(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    let name = secret_name(&st, &p);
    read_masked(&st, &caller, &p, &name).await
}

/// Changes the runner secret (sealed to the reconciler; never on the bus in plaintext). Each key
/// of `data`: a string sets it, `"********"` (what a read shows) keeps the stored value, `null`
/// removes it; keys not sent are unchanged.
#[utoipa::path(put, path = "/api/projects/{project}/runner-secrets", tag = "runner-secrets", params(("project" = ProjectName, Path)),
    request_body(content = PutSecrets, description = "`{data: {KEY: value | \"********\" | null}}`: set, keep, remove; other keys unchanged"),
    responses((status = 200, description = "`{message}`", body = Acknowledged), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found"),
        (status = 422, description = "invalid key, or the mask for a key with no stored value")))]
pub async fn put_runner_secrets(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    write(&st, &caller, &p, ProjectSecret::Runner, &headers, v).await
}

/// The integration secret's keys (Git, GitHub, GitLab, Jira credentials the runner receives),
/// values masked: `{"data": {"KEY": "********"}}`.
#[utoipa::path(get, path = "/api/projects/{project}/integration-secrets", tag = "runner-secrets", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{data: {KEY: \"********\"}}` (values are never returned)", body = MaskedSecrets), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn get_integration_secrets(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    read_masked(&st, &caller, &p, INTEGRATION_SECRET_NAME).await
}

/// Changes the integration secret, as the runner secret: a string sets a key, `"********"`
/// keeps it, `null` removes it; keys not sent are unchanged.
#[utoipa::path(put, path = "/api/projects/{project}/integration-secrets", tag = "runner-secrets", params(("project" = ProjectName, Path)),
    request_body(content = PutSecrets, description = "`{data: {KEY: value | \"********\" | null}}`: set, keep, remove; other keys unchanged"),
    responses((status = 200, description = "`{message}`", body = Acknowledged), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found"),
        (status = 422, description = "invalid key, or the mask for a key with no stored value")))]
pub async fn put_integration_secrets(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    write(&st, &caller, &p, ProjectSecret::Integration, &headers, v).await
}

fn secret_name(st: &AppState, p: &str) -> String {
    st.reads
        .settings_of(p)
        .and_then(|s| s.spec.runner_secrets_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| RUNNER_SECRET_NAME.into())
}

/// Which Secret is the runner secret: `{secretName}`.
#[utoipa::path(get, path = "/api/projects/{project}/runner-secrets/config", tag = "runner-secrets", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{secretName}`", body = SecretConfig), (status = 404, description = "project not found")))]
pub async fn get_runner_config(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    let name = st.reads.settings_of(&p).and_then(|s| s.spec.runner_secrets_name.clone()).unwrap_or_default();
    Ok(axum::Json(json!({"secretName": name})).into_response())
}

/// Chooses the runner secret's name.
#[utoipa::path(put, path = "/api/projects/{project}/runner-secrets/config", tag = "runner-secrets", params(("project" = ProjectName, Path)),
    request_body(content = SecretConfig, description = "`{secretName}`"),
    responses((status = 200, description = "`{secretName}`", body = SecretConfig), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn put_runner_config(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
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
                st.reads
                    .wait_until(READ_YOUR_WRITES, || {
                        st.reads
                            .settings_of(&p)
                            .is_some_and(|s| rv_at_least(s.metadata.resource_version.as_deref(), rv))
                    })
                    .await;
            }
            Ok(axum::Json(json!({"secretName": req.secret_name})).into_response())
        }
    }
}
