//! `/api/projects`, `/api/projects/{project}` and `/api/projects/{project}/access`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use events::commands::{Empty, ProjectCreate, ProjectUpdate};
use events::{CommandBody, ProjectName};
use futures::StreamExt as _;
use kube::ResourceExt as _;
use serde_json::json;

use crate::auth::Caller;
use crate::authz::{RBAC, check, project_visible};
use crate::bodies::{Accepted, CreateProject, Project, ProjectAccess, ProjectList, UpdateProject};
use crate::commands::Mutation;
use crate::errors::ApiError;
use crate::extract::{JsonBody, strict};
use crate::reads::{project_json, rv_at_least};
use crate::routes::{Page, paginate};
use crate::state::{AppState, READ_YOUR_WRITES, accepted};

/// Projects the caller may see (and only those).
#[utoipa::path(get, path = "/api/projects", tag = "projects", params(Page),
    responses((status = 200, description = "`{items: [AmbientProject]}`", body = ProjectList), (status = 401, description = "no or invalid token")))]
pub async fn list_projects(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let who = &caller.principal;
    let mut all = st.reads.projects();
    // A cluster-wide grant shows every project: one review instead of one per project.
    let visible = if st.authz.allowed(who, &project_visible("")).await? {
        all
    } else {
        // Otherwise RBAC can only grant a project through a RoleBinding in it (see
        // `visibility`); each remaining candidate is still decided by the API server.
        if let Some(named) = st.reads.visibility.candidates(who) {
            all.retain(|ns| named.contains(ns.name_any().as_str()));
        }
        let checks = futures::stream::iter(all.into_iter().map(|ns| {
            let st = st.clone();
            async move {
                let ok = st.authz.allowed(who, &project_visible(&ns.name_any())).await;
                (ns, ok)
            }
        }))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
        let mut visible = Vec::with_capacity(checks.len());
        for (ns, ok) in checks {
            if ok? {
                visible.push(ns);
            }
        }
        visible
    };
    let mut items: Vec<_> = visible.iter().map(|n| (n.name_any(), n)).collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let items: Vec<_> = items.into_iter().map(|(_, n)| project_json(n)).collect();
    Ok(axum::Json(paginate(items, &page)?).into_response())
}

/// Creates a project: namespace, labels, the creator's admin RoleBinding and ProjectSettings.
#[utoipa::path(post, path = "/api/projects", tag = "projects", request_body(content = CreateProject, description = "`{name, displayName?, description?}`"),
    responses((status = 201, description = "AmbientProject", body = Project), (status = 202, description = "accepted; see Location", body = Accepted),
        (status = 400, description = "invalid body"), (status = 403, description = "not a self-provisioner"), (status = 409, description = "exists"),
        (status = 422, description = "a field over its bound, named in `field`"), (status = 429, description = "the user's project quota is reached, or too many requests")))]
pub async fn create_project(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let req: CreateProject = strict(&v)?;
    let name = ProjectName::new(req.name.clone()).map_err(|e| ApiError::from(e.at("name")))?;
    name.check_creatable().map_err(|e| ApiError::from(e.at("name")))?;
    let body = CommandBody::ProjectCreate(ProjectCreate {
        display_name: req.display_name.clone(),
        description: req.description.clone(),
    });
    // The bounds (events::limits) before any authorization or publish: 422 naming the field.
    events::limits::check_body(&body)?;
    match st.mutate(&caller, name.clone(), body, &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => {
            // The creator's next request finds the project: in our caches, in their project list
            // and allowed by RBAC.
            st.wait_granted(&caller.principal, name.as_str(), || {
                st.reads.project(name.as_str()).is_some()
                    && st.reads.visibility.is_candidate(&caller.principal, name.as_str())
            })
            .await;
            let body = match st.reads.project(name.as_str()) {
                Some(ns) => project_json(&ns),
                None => {
                    json!({"name": name.as_str(), "displayName": req.display_name.unwrap_or_else(|| name.to_string()),
                    "description": req.description.unwrap_or_default(), "labels": {}, "annotations": {}, "creationTimestamp": "", "status": "Active"})
                }
            };
            Ok((StatusCode::CREATED, axum::Json(body)).into_response())
        }
    }
}

/// One project.
#[utoipa::path(get, path = "/api/projects/{project}", tag = "projects", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "AmbientProject", body = Project), (status = 404, description = "project not found (or not visible)")))]
pub async fn get_project(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    let ns = st.reads.project(&p).ok_or_else(ApiError::project_not_found)?;
    Ok(axum::Json(project_json(&ns)).into_response())
}

/// Updates the display fields.
#[utoipa::path(put, path = "/api/projects/{project}", tag = "projects", params(("project" = ProjectName, Path)),
    request_body(content = UpdateProject, description = "`{name?, displayName?, description?}`"),
    responses((status = 200, description = "AmbientProject", body = Project), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn update_project(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let req: UpdateProject = strict(&v)?;
    if req.name.as_ref().is_some_and(|n| n != &p) {
        return Err(ApiError::bad_field("name", "name cannot be changed"));
    }
    let body =
        CommandBody::ProjectUpdate(ProjectUpdate { display_name: req.display_name, description: req.description });
    events::limits::check_body(&body)?;
    match st.mutate(&caller, project, body, &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { resource, .. } => {
            if let Some(rv) = &resource.resource_version {
                st.reads
                    .wait_until(READ_YOUR_WRITES, || {
                        st.reads.project(&p).is_some_and(|n| rv_at_least(n.metadata.resource_version.as_deref(), rv))
                    })
                    .await;
            }
            let ns = st.reads.project(&p).ok_or_else(ApiError::project_not_found)?;
            Ok(axum::Json(project_json(&ns)).into_response())
        }
    }
}

/// Deletes the project and everything in it.
#[utoipa::path(delete, path = "/api/projects/{project}", tag = "projects", params(("project" = ProjectName, Path)),
    responses((status = 204, description = "deleted"), (status = 202, description = "accepted", body = Accepted), (status = 403, description = "forbidden"), (status = 404, description = "project not found")))]
pub async fn delete_project(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    match st.mutate(&caller, project, CommandBody::ProjectDelete(Empty {}), &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// The caller's role in the project: `{project, allowed, reason, userRole}`.
#[utoipa::path(get, path = "/api/projects/{project}/access", tag = "projects", params(("project" = ProjectName, Path)),
    responses((status = 200, description = "`{project, allowed, reason, userRole}`", body = ProjectAccess), (status = 404, description = "project not found")))]
pub async fn project_access(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    let admin = st.authz.allowed(&caller.principal, &check(&p, "create", RBAC, "rolebindings", None)).await?;
    let role = if admin {
        "admin"
    } else if st
        .authz
        .allowed(&caller.principal, &check(&p, "create", events::crd::GROUP, "agenticsessions", None))
        .await?
    {
        "edit"
    } else {
        "view"
    };
    let reason =
        if admin { "caller may manage the project" } else { "caller may not manage permissions in the project" };
    Ok(axum::Json(json!({"project": p, "allowed": admin, "reason": reason, "userRole": role})).into_response())
}
