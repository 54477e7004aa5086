//! The router: every route of SPEC §3, the routes the existing web UI calls beyond it (`ui`), its
//! OpenAPI document, and the layers around it.

pub mod access;
pub mod me;
pub mod messages;
pub mod projects;
pub mod schemas;
pub mod secrets;
pub mod sessions;
pub mod ui;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::errors::ApiError;
use crate::state::AppState;

/// Largest page of a list.
pub const MAX_PAGE: usize = 1000;

/// Paging of lists: `?limit=&offset=` (limit capped at 1000).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Items per page, 1..=1000 (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Items to skip.
    #[param(value_type = Option<u32>, minimum = 0)]
    pub offset: Option<String>,
}

/// `{items: [...]}` for one page (never null), with `total` and, when more remain, `nextOffset`.
pub fn paginate(items: Vec<Value>, page: &Page) -> Result<Value, ApiError> {
    let parse = |f: &str, v: &Option<String>| -> Result<Option<usize>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.parse::<usize>().map_err(|_| ApiError::bad_field(f, format!("{f} must be a non-negative integer")))
            })
            .transpose()
    };
    let limit = parse("limit", &page.limit)?.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_field("limit", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let offset = parse("offset", &page.offset)?.unwrap_or(0);
    let total = items.len();
    let items: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let mut v = json!({"items": items, "total": total});
    if offset.saturating_add(limit) < total {
        v["nextOffset"] = json!(offset + limit);
    }
    Ok(v)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Ambient control plane API", description = "Projects, agentic sessions, permissions, access keys and runner secrets over an event-sourced command bus."),
    tags((name = "projects"), (name = "sessions"), (name = "permissions"), (name = "keys"), (name = "runner-secrets"), (name = "events"), (name = "messages"), (name = "commands"), (name = "identity"), (name = "operations"),
        (name = "ui", description = "What the existing web UI calls beyond the platform's own routes: cluster facts, the runner's Kubernetes resources, and quiet answers for features this platform does not offer"))
)]
struct ApiDoc;

/// The api's routes and their OpenAPI document.
pub fn api_router() -> (axum::Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(projects::get_project, projects::update_project, projects::delete_project))
        .routes(routes!(projects::project_access))
        .routes(routes!(sessions::list_sessions, sessions::create_session))
        .routes(routes!(sessions::get_session, sessions::update_session, sessions::delete_session))
        .routes(routes!(sessions::start_session))
        .routes(routes!(sessions::stop_session))
        .routes(routes!(sessions::clone_session))
        .routes(routes!(sessions::session_status))
        .routes(routes!(sessions::session_display_name))
        .routes(routes!(access::list_permissions, access::add_permission))
        .routes(routes!(access::delete_permission))
        .routes(routes!(access::list_groups, access::add_group))
        .routes(routes!(access::delete_group))
        .routes(routes!(access::list_keys, access::create_key))
        .routes(routes!(access::delete_key))
        .routes(routes!(secrets::get_runner_secrets, secrets::put_runner_secrets))
        .routes(routes!(secrets::get_integration_secrets, secrets::put_integration_secrets))
        .routes(routes!(secrets::get_runner_config, secrets::put_runner_config))
        .routes(routes!(messages::list_messages, messages::post_message))
        .routes(routes!(messages::list_messages_alias, messages::post_message_alias))
        .routes(routes!(crate::sse::project_events))
        .routes(routes!(crate::sse::session_events))
        .routes(routes!(me::me))
        .routes(routes!(me::get_command))
        .routes(routes!(crate::ops::openapi_json))
        .routes(routes!(schemas::event_schema_index))
        .routes(routes!(schemas::event_schema))
        .routes(routes!(ui::cluster_info))
        .routes(routes!(ui::ootb_workflows))
        .routes(routes!(ui::github_status))
        .routes(routes!(ui::github_install))
        .routes(routes!(ui::github_disconnect))
        .routes(routes!(ui::k8s_resources))
        .routes(routes!(ui::workflow_metadata))
        .routes(routes!(ui::set_workflow))
        .routes(routes!(ui::git_status))
        .routes(routes!(ui::git_merge_status))
        .routes(routes!(ui::git_list_branches))
        .routes(routes!(ui::git_pull))
        .routes(routes!(ui::git_push))
        .routes(routes!(ui::git_synchronize))
        .routes(routes!(ui::git_create_branch))
        .routes(routes!(ui::git_configure_remote))
        .routes(routes!(ui::workspace))
        .routes(routes!(ui::add_repo))
        .routes(routes!(ui::remove_repo))
        .routes(routes!(ui::spawn_content_pod))
        .routes(routes!(ui::content_pod_status))
        .routes(routes!(ui::delete_content_pod))
        .split_for_parts();
    (router, doc)
}
