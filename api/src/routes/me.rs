//! `GET /api/me` and `GET /api/commands/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use events::ProjectName;
use events::results::Outcome;
use uuid::Uuid;

use crate::auth::Caller;
use crate::authz::check;
use crate::bodies::{CommandState, CommandStatus, Me};
use crate::commands::public_result;
use crate::errors::ApiError;
use crate::state::AppState;

/// The identity and groups the server resolved from the token.
#[utoipa::path(get, path = "/api/me", tag = "identity",
    responses((status = 200, description = "`{authenticated, userId, username, displayName, uid, groups, extra}`; `extra` is the authenticator's extra attributes (e.g. token scopes), `{}` when none", body = Me), (status = 401, description = "no or invalid token")))]
pub async fn me(caller: Caller) -> Response {
    let p = caller.principal;
    axum::Json(Me {
        authenticated: true,
        user_id: p.user.clone(),
        username: p.user.clone(),
        display_name: p.user,
        uid: p.uid,
        groups: p.groups,
        extra: p.extra,
    })
    .into_response()
}

/// A command's state (`pending`, `succeeded`, `failed`) and result, for its submitter only.
#[utoipa::path(get, path = "/api/commands/{id}", tag = "commands", params(("id" = String, Path)),
    responses((status = 200, description = "`{id, type, project, state, result?, key?}`", body = CommandStatus), (status = 404, description = "command not found (or not the caller's)")))]
pub async fn get_command(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("command not found".into());
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let record = st.commands.record(id).await?.ok_or_else(not_found)?;
    if record.submitter != caller.principal.user {
        return Err(not_found());
    }
    let project = ProjectName::new(record.project.clone()).map_err(|_| not_found())?;
    let mut body = CommandStatus {
        id,
        ty: record.ty.clone(),
        project: record.project,
        state: CommandState::Pending,
        result: None,
        key: None,
    };
    if let Some(result) = st.commands.stored_result(&project, id).await? {
        body.state = match result.outcome {
            Outcome::Succeeded { .. } => CommandState::Succeeded,
            Outcome::Failed { .. } => CommandState::Failed,
        };
        // A key's token, once, and only to a submitter who may still create keys there (one
        // removed from the project since gets the outcome, not a credential of it).
        let key_create = events::CommandType::KeyCreate.type_str();
        if record.ty == key_create
            && matches!(result.outcome, Outcome::Succeeded { .. })
            && st.require(&caller, &[check(project.as_str(), "create", "", "serviceaccounts", None)]).await.is_ok()
        {
            body.key = st.commands.parked().take(id, &result).await;
        }
        body.result = Some(public_result(result));
    }
    Ok(axum::Json(body).into_response())
}
