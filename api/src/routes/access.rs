//! Permissions, the group view of them, and access keys.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use events::access::Requirement;
use events::commands::{KeyCreate, KeyRevoke, PermissionGrant, PermissionRevoke};
use events::results::Outcome;
use events::{Command, CommandBody, KeyName, Principal, ProjectName, Role, SubjectName, SubjectType};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::authz::{RBAC, check};
use crate::bodies::{
    Accepted, Acknowledged, CreateKey, Grant, GroupGrant, GroupList, KeyCreated, KeyList, PermissionList,
};
use crate::commands::Mutation;
use crate::errors::ApiError;
use crate::extract::{JsonBody, strict};
use crate::parked::Reply;
use crate::state::{AppState, READ_YOUR_WRITES, accepted};

fn role(field: &str, r: &str) -> Result<Role, ApiError> {
    Role::parse(r).ok_or_else(|| ApiError::bad_field(field, format!("{field} must be admin, edit or view")))
}

fn subject_type(field: &str, t: &str) -> Result<SubjectType, ApiError> {
    SubjectType::parse(t).ok_or_else(|| ApiError::bad_field(field, format!("{field} must be user or group")))
}

async fn list_guard(st: &AppState, caller: &Caller, p: &str) -> Result<(), ApiError> {
    st.visible_project(caller, p).await?;
    st.require(caller, &[check(p, "list", RBAC, "rolebindings", None)]).await
}

fn has_grant(st: &AppState, p: &str, ty: SubjectType, name: &str, role: Option<Role>) -> bool {
    st.reads.permissions_of(p).iter().any(|g| {
        g["subjectType"] == ty.as_str() && g["subjectName"] == name && role.is_none_or(|r| g["role"] == r.as_str())
    })
}

#[allow(clippy::too_many_arguments)]
async fn grant(
    st: &AppState,
    caller: &Caller,
    project: ProjectName,
    ty: SubjectType,
    name: SubjectName,
    role: Role,
    headers: &HeaderMap,
    message: &str,
) -> Result<Response, ApiError> {
    let p = project.to_string();
    let body = CommandBody::PermissionGrant(PermissionGrant { subject_type: ty, subject_name: name.clone(), role });
    match st.mutate(caller, project, body, headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => {
            st.reads.wait_until(READ_YOUR_WRITES, || has_grant(st, &p, ty, name.as_str(), Some(role))).await;
            Ok((StatusCode::CREATED, axum::Json(json!({"message": message}))).into_response())
        }
    }
}

async fn revoke(
    st: &AppState,
    caller: &Caller,
    project: ProjectName,
    ty: SubjectType,
    name: SubjectName,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let p = project.to_string();
    let body = CommandBody::PermissionRevoke(PermissionRevoke { subject_type: ty, subject_name: name.clone() });
    match st.mutate(caller, project, body, headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => {
            st.reads.wait_until(READ_YOUR_WRITES, || !has_grant(st, &p, ty, name.as_str(), None)).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

/// User and group grants: `{items: [{subjectType, subjectName, role}]}`.
#[utoipa::path(get, path = "/api/projects/{project}/permissions", tag = "permissions", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{items: [{subjectType, subjectName, role}]}`", body = PermissionList), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn list_permissions(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    list_guard(&st, &caller, &p).await?;
    Ok(axum::Json(json!({"items": st.reads.permissions_view(&p)})).into_response())
}

/// Grants a role to a user or group.
#[utoipa::path(post, path = "/api/projects/{project}/permissions", tag = "permissions", params(("project" = ProjectName, Path)),
    request_body(content = Grant, description = "`{subjectType: user|group, subjectName, role: admin|edit|view}`"),
    responses((status = 201, description = "`{message}`", body = Acknowledged), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found"), (status = 409, description = "conflict")))]
pub async fn add_permission(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let req: Grant = strict(&v)?;
    let ty = subject_type("subjectType", &req.subject_type)?;
    let name = SubjectName::new(req.subject_name).map_err(|e| ApiError::from(e.at("subjectName")))?;
    let role = role("role", &req.role)?;
    grant(&st, &caller, project, ty, name, role, &headers, "permission added").await
}

/// Revokes every grant of a user or group.
#[utoipa::path(delete, path = "/api/projects/{project}/permissions/{subjectType}/{subjectName}", tag = "permissions",
    params(("project" = ProjectName, Path), ("subjectType" = String, Path), ("subjectName" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid subject"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn delete_permission(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, t, n)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let ty = subject_type("subjectType", &t)?;
    let name = SubjectName::new(n).map_err(|e| ApiError::from(e.at("subjectName")))?;
    revoke(&st, &caller, project, ty, name, &headers).await
}

/// Group grants: `{items: [{groupName, role}]}`.
#[utoipa::path(get, path = "/api/projects/{project}/groups", tag = "permissions", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{items: [{groupName, role}]}`", body = GroupList), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn list_groups(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    list_guard(&st, &caller, &p).await?;
    let items: Vec<Value> = st
        .reads
        .permissions_view(&p)
        .into_iter()
        .filter(|g| g["subjectType"] == "group")
        .map(|g| {
            let mut row = json!({"groupName": g["subjectName"], "role": g["role"]});
            for flag in ["pending", "revoking"] {
                if let Some(v) = g.get(flag) {
                    row[flag] = v.clone();
                }
            }
            row
        })
        .collect();
    Ok(axum::Json(json!({"items": items})).into_response())
}

/// Grants a role to a group.
#[utoipa::path(post, path = "/api/projects/{project}/groups", tag = "permissions", params(("project" = ProjectName, Path)),
    request_body(content = GroupGrant, description = "`{groupName, role}`"),
    responses((status = 201, description = "`{message}`", body = Acknowledged), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn add_group(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let req: GroupGrant = strict(&v)?;
    let name = SubjectName::new(req.group_name).map_err(|e| ApiError::from(e.at("groupName")))?;
    let role = role("role", &req.role)?;
    grant(&st, &caller, project, SubjectType::Group, name, role, &headers, "group access added").await
}

/// Revokes a group's access.
#[utoipa::path(delete, path = "/api/projects/{project}/groups/{group}", tag = "permissions",
    params(("project" = ProjectName, Path), ("group" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 202, description = "accepted", body = Accepted), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn delete_group(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, g)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let name = SubjectName::new(g).map_err(|e| ApiError::from(e.at("group")))?;
    revoke(&st, &caller, project, SubjectType::Group, name, &headers).await
}

/// Access keys: `{items: [{id, name, createdAt, lastUsedAt, description, role}]}`.
#[utoipa::path(get, path = "/api/projects/{project}/keys", tag = "keys", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{items: [{id, name, createdAt, lastUsedAt, description, role}]}`", body = KeyList), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn list_keys(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    st.require(&caller, &[check(&p, "list", "", "serviceaccounts", None)]).await?;
    Ok(axum::Json(json!({"items": st.reads.keys_of(&p).await})).into_response())
}

/// Creates an access key; the token is in this 201 body and nowhere else, ever. The request
/// waits for it (`--key-result-timeout`, at least 30 s); past that 503 `KeyCreationPending`, and
/// the same request again (same user, project and name; or the same `Idempotency-Key`, or
/// `GET /api/commands/{id}`), on any api replica, returns the token once it exists, exactly once.
#[utoipa::path(post, path = "/api/projects/{project}/keys", tag = "keys", params(("project" = ProjectName, Path)),
    request_body(content = CreateKey, description = "`{name, description?, role? (default edit), expirationSeconds?}`"),
    responses((status = 201, description = "`{id, name, key, description, role, lastUsedAt}`", body = KeyCreated),
        (status = 202, description = "accepted (only with `Prefer: respond-async`); the token is returned once by GET /api/commands/{id}", body = Accepted),
        (status = 400, description = "invalid body"), (status = 403, description = "forbidden"), (status = 404, description = "project not found"), (status = 409, description = "exists"),
        (status = 503, description = "`KeyCreationPending`: not created yet; send the same request again (`Retry-After`) to receive the token")))]
pub async fn create_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let req: CreateKey = strict(&v)?;
    let name = KeyName::new(req.name).map_err(|e| ApiError::from(e.at("name")))?;
    let role = match &req.role {
        Some(r) => role("role", r)?,
        None => Role::Edit,
    };
    if req.description.as_ref().is_some_and(|d| d.chars().count() > 500) {
        return Err(ApiError::invalid("description", "description must be at most 500 characters"));
    }
    KeyCreate::check_expiration(req.expiration_seconds)
        .map_err(|e| ApiError::invalid("expirationSeconds", format!("expirationSeconds {}", e.rule)))?;
    // The whole request names the creation: a retry asking for something else is not a retry.
    let request =
        serde_json::to_string(&json!([name.as_str(), role.as_str(), req.description, req.expiration_seconds]))
            .unwrap_or_default();
    let reply = Reply::new(&caller.principal.user, &p, &request);
    let created = |id: String, token: String| {
        let body = json!({"id": id, "name": name.as_str(), "description": req.description.clone().unwrap_or_default(),
            "role": role.as_str(), "lastUsedAt": "", "key": token});
        (StatusCode::CREATED, axum::Json(body)).into_response()
    };
    let pending = |command_id: uuid::Uuid| ApiError::KeyPending {
        message: format!(
            "the access key {name} is being created, but its token is not ready yet; send the same request again in a few seconds to receive it (it is shown once)"
        ),
        command_id,
    };
    let key_create = KeyCreate {
        name: name.clone(),
        description: req.description.clone(),
        role,
        expiration_seconds: req.expiration_seconds,
        reply_key: reply.key.public_key(),
    };
    let body = CommandBody::KeyCreate(key_create.clone());
    let mut retried = None;
    // The same creation asked again after an answer without its token: the token, once.
    if let Some(earlier) = st
        .commands
        .parked()
        .by_alias(&reply.alias)
        .await
        .map_err(|e| ApiError::unavailable_from("the parked keys are unavailable", e))?
    {
        // Authorized as a new creation would be: the retry may come after a revocation.
        if let Requirement::All(checks) =
            Command::new(project.clone(), caller.principal.clone(), body.clone()).requirement()
        {
            st.require(&caller, &checks).await?;
        }
        match st.commands.stored_result(&project, earlier).await? {
            None => {
                // Not applied yet, or never stored (its publish was not acknowledged): publish it
                // again under its own id and reply key, and wait as the first request did. Stored
                // already, JetStream drops the copy; the reconciler applies an id once.
                let Some(key) = st.commands.parked().reply_key(earlier).await else { return Err(pending(earlier)) };
                let again = KeyCreate { reply_key: key.public_key(), ..key_create.clone() };
                let mut cmd = Command::new(project.clone(), caller.principal.clone(), CommandBody::KeyCreate(again));
                cmd.id = earlier;
                let reply = Reply { key, alias: reply.alias.clone() };
                retried = Some(st.mutate_as(&caller, cmd, &headers, Some(reply)).await?);
            }
            Some(result) => {
                if let Outcome::Succeeded { resource, .. } = &result.outcome {
                    // The key that command created, asked of the API server (a replica's cache
                    // may lag): still there, the very same object (not a namesake made since).
                    let live = Api::<ServiceAccount>::namespaced(st.kube.clone(), &p)
                        .get_opt(&resource.name)
                        .await
                        .map_err(|e| ApiError::kube("looking the key up", &e))?;
                    let same = live.is_some_and(|sa| sa.metadata.uid.is_some() && sa.metadata.uid == resource.uid);
                    if same && let Some(token) = st.commands.parked().take(earlier, &result).await {
                        return Ok(created(resource.name.clone(), token));
                    }
                    if same {
                        // Taken meanwhile by a parallel request: shown there, once.
                        return Err(ApiError::Conflict {
                            reason: "AlreadyExists",
                            message: format!("the access key {name} exists; its token was shown once"),
                        });
                    }
                }
                // Failed, or the key is gone: nothing to show; this request creates anew.
                st.commands.parked().forget(earlier).await;
            }
        }
    }
    let mutation = match retried {
        Some(m) => m,
        None => st.mutate(&caller, project, body, &headers, Some(reply)).await?,
    };
    match mutation {
        Mutation::Accepted(id) if crate::state::prefers_async(&headers) => Ok(accepted(id)),
        // A client that did not ask for 202 (the web UI) would lose the token to one.
        Mutation::Accepted(id) => Err(pending(id)),
        Mutation::Applied { resource, token, replayed } => {
            let id = resource.name.clone();
            // The key is listed, and its token is likely to work on first use (RBAC sees its binding).
            st.wait_granted(&Principal::of_service_account(&p, &id), &p, || st.reads.keys_of_sync(&p, &id)).await;
            match token {
                Some(t) => Ok(created(id, t)),
                None if replayed => {
                    let body = json!({"id": id, "name": name.as_str(), "description": req.description.clone().unwrap_or_default(),
                        "role": role.as_str(), "lastUsedAt": "",
                        "message": "the key was created by an earlier request with this Idempotency-Key; its token was shown only then"});
                    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
                }
                // A parallel request for the same key took the token first (it is shown once).
                None => Err(ApiError::Conflict {
                    reason: "AlreadyExists",
                    message: format!("the access key {name} exists; its token was shown once, to another request"),
                }),
            }
        }
    }
}

/// Revokes an access key (its tokens stop working).
#[utoipa::path(delete, path = "/api/projects/{project}/keys/{keyId}", tag = "keys", params(("project" = ProjectName, Path), ("keyId" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 202, description = "accepted", body = Accepted), (status = 403, description = "forbidden"), (status = 404, description = "not found")))]
pub async fn delete_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, k)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    events::names::check_dns1123_label("keyId", &k, 63).map_err(|_| ApiError::NotFound("key not found".into()))?;
    match st.mutate(&caller, project, CommandBody::KeyRevoke(KeyRevoke { key_id: k.clone() }), &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => {
            st.reads.wait_until(READ_YOUR_WRITES, || !st.reads.keys_of_sync(&p, &k)).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}
