//! Strict JSON request bodies: `application/json` only (415), bounded in size (413) and in time
//! (408), and every field must be known (400 naming the unknown field).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

use crate::auth::{Caller, bearer_token, hex};
use crate::errors::ApiError;
use crate::limits::RequestKind;
use crate::state::AppState;

/// A JSON body, parsed but not yet typed.
pub struct JsonBody(pub Value);

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.config.max_body_bytes;
        // Bounded in time as well as size: a client that stops sending holds no task for long.
        let wait = state.config.body_read_timeout;
        let bytes = tokio::time::timeout(wait, axum::body::to_bytes(req.into_body(), limit))
            .await
            .map_err(|_| ApiError::RequestTimeout(wait))?
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
            message: format!("request body is not valid JSON: {e}"),
            field: None,
        })?;
        if !v.is_object() {
            return Err(ApiError::BadRequest { message: "request body must be a JSON object".into(), field: None });
        }
        Ok(JsonBody(v))
    }
}

/// Refuses fields the server owns, naming the first one present.
pub fn refuse_server_owned(v: &Value, fields: &[&str]) -> Result<(), ApiError> {
    for f in fields {
        if v.get(*f).is_some() {
            return Err(ApiError::bad_field(*f, format!("field {f} is set by the server and may not be given")));
        }
    }
    Ok(())
}

/// Parses `v` as `T`, refusing any field `T` does not know (also in nested objects).
pub fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, ApiError> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .or_else(|| msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()))
            .map(String::from);
        ApiError::BadRequest { message: format!("invalid request body: {msg}"), field }
    })?;
    let back = serde_json::to_value(&t).map_err(ApiError::internal)?;
    if let Some(path) = unknown_path(v, &back, String::new()) {
        return Err(ApiError::bad_field(path.clone(), format!("unknown field {path}")));
    }
    Ok(t)
}

/// Null, `{}` or `[]`.
fn carries_nothing(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The first path present (and carrying something) in `given` but absent from `known`.
fn unknown_path(given: &Value, known: &Value, prefix: String) -> Option<String> {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => g.iter().find_map(|(key, gv)| {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match k.get(key) {
                // An empty map or list says nothing: a type that leaves it out when empty
                // (`labels: {}`, `repos: []`) knows it.
                None if !carries_nothing(gv) => Some(path),
                None => None,
                Some(kv) => unknown_path(gv, kv, path),
            }
        }),
        (Value::Array(g), Value::Array(k)) => {
            g.iter().zip(k.iter()).enumerate().find_map(|(i, (gv, kv))| unknown_path(gv, kv, format!("{prefix}[{i}]")))
        }
        _ => None,
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let token = bearer_token(parts).ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        let token_hash = hex(&Sha256::digest(token.as_bytes()));
        let principal =
            state.auth.review(&token).await?.ok_or(ApiError::Unauthenticated("the token is invalid or expired"))?;
        state
            .limits
            .per_principal
            .check(&principal.user, RequestKind::of(&parts.method))
            .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
        state.reads.note_key_use(&principal).await;
        let caller = Caller { principal, token_hash };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_nested_fields_are_named() {
        let v = json!({"prompt": "x", "llmSettings": {"model": "m", "tmperature": 1}});
        let e = strict::<events::crd::AgenticSessionSpec>(&v).err().unwrap();
        assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "llmSettings.tmperature"), "{e:?}");
        let ok = json!({"prompt": "x", "timeout": 60, "environmentVariables": {"A": "b"}, "displayName": null});
        assert!(strict::<events::crd::AgenticSessionSpec>(&ok).is_ok());
        let repos = json!({"prompt": "x", "repos": [{"input": {"url": "u", "brnch": "b"}}]});
        let e = strict::<events::crd::AgenticSessionSpec>(&repos).err().unwrap();
        assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "repos[0].input.brnch"), "{e:?}");
    }

    #[test]
    fn server_owned_fields_are_refused() {
        let e = refuse_server_owned(&json!({"status": {}}), &["userContext", "status"]).err().unwrap();
        assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "status"));
    }
}
