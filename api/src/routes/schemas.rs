//! `/api/schemas/events…`: the JSON Schema of every event type (see `events::schemas`), public
//! like the OpenAPI document, for subscribers that validate what they receive.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::bodies::{EventSchemaList, EventSchemaRef};
use crate::errors::ApiError;

/// Every event type and where its schema is.
#[utoipa::path(get, path = "/api/schemas/events", tag = "events",
    responses((status = 200, description = "the event types of the catalogue", body = EventSchemaList)))]
pub async fn event_schema_index() -> Response {
    let items = events::schemas::event_types()
        .into_iter()
        .map(|ty| EventSchemaRef { ty: ty.to_string(), url: format!("/api/schemas/events/{ty}") })
        .collect();
    axum::Json(EventSchemaList { items }).into_response()
}

/// The JSON Schema (2020-12) of one whole event of a type, in structured mode.
#[utoipa::path(get, path = "/api/schemas/events/{type}", tag = "events", params(("type" = String, Path, description = "an event type, e.g. `ambient.session.phase.v1`")),
    responses((status = 200, description = "a JSON Schema (draft 2020-12)", content_type = "application/schema+json", body = Object),
        (status = 404, description = "no such event type")))]
pub async fn event_schema(Path(ty): Path<String>) -> Result<Response, ApiError> {
    let schema = rendered().get(ty.as_str()).ok_or_else(|| ApiError::NotFound("no such event type".into()))?;
    Ok(([(header::CONTENT_TYPE, "application/schema+json")], schema.clone()).into_response())
}

/// Every schema, rendered once: the routes are public and the schemas never change.
fn rendered() -> &'static BTreeMap<&'static str, String> {
    static SCHEMAS: OnceLock<BTreeMap<&'static str, String>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        events::schemas::event_types()
            .into_iter()
            .filter_map(|ty| Some((ty, serde_json::to_string(&events::schemas::event_schema(ty)?).ok()?)))
            .collect()
    })
}
