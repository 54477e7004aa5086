//! The command bounds of `events::limits` in the OpenAPI document: each mutation's request body
//! gets its field bounds (in its description and as `maxLength` of its top-level string fields),
//! and every command-publishing operation documents 413 (command too large) and 429 (rate limit
//! or the project's backlog of pending commands is full, with `Retry-After`).

use events::CommandType;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Response};

/// Which command each documented request body becomes.
const BODIES: &[(&str, &str, CommandType)] = &[
    ("post", "/api/projects", CommandType::ProjectCreate),
    ("put", "/api/projects/{project}", CommandType::ProjectUpdate),
    ("post", "/api/projects/{project}/agentic-sessions", CommandType::SessionCreate),
    ("put", "/api/projects/{project}/agentic-sessions/{session}", CommandType::SessionUpdate),
    ("put", "/api/projects/{project}/agentic-sessions/{session}/status", CommandType::SessionStatus),
    ("put", "/api/projects/{project}/agentic-sessions/{session}/displayname", CommandType::SessionDisplayName),
    ("post", "/api/projects/{project}/keys", CommandType::KeyCreate),
    ("put", "/api/projects/{project}/runner-secrets", CommandType::RunnerSecretPut),
    ("put", "/api/projects/{project}/integration-secrets", CommandType::RunnerSecretPut),
    ("put", "/api/projects/{project}/runner-secrets/config", CommandType::RunnerSecretConfig),
];

fn operation<'a>(doc: &'a mut OpenApi, method: &str, path: &str) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    match method {
        "post" => item.post.as_mut(),
        "put" => item.put.as_mut(),
        "delete" => item.delete.as_mut(),
        _ => None,
    }
}

/// Adds the bounds to `doc`.
pub fn document(doc: &mut OpenApi) {
    for &(method, path, ty) in BODIES {
        let Some(op) = operation(doc, method, path) else { continue };
        if let Some(RefOr::T(body)) = op.request_body.as_mut() {
            let text = events::limits::describe(ty);
            body.description = Some(match body.description.take() {
                Some(d) => format!("{d}. {text}"),
                None => text,
            });
            let mut schema = ObjectBuilder::new().schema_type(Type::Object);
            for f in events::limits::field_bounds(ty) {
                let plain = f.field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if plain && f.unit != "maxItems" {
                    let unit = if f.unit == "maxBytes" { "UTF-8 bytes" } else { "characters" };
                    let prop = ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(f.max))
                        .description(Some(format!("at most {} {unit}", f.max)));
                    schema = schema.property(f.field, prop);
                }
            }
            let schema: RefOr<utoipa::openapi::schema::Schema> = schema.build().into();
            for content in body.content.values_mut() {
                if let RefOr::T(c) = content {
                    c.schema = Some(schema.clone());
                }
            }
        }
    }
    // Every operation that publishes a command.
    let publishing: Vec<(String, &'static str)> = doc
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            let mut v = Vec::new();
            if path.starts_with("/api/projects") && !path.ends_with("/messages") {
                for (m, op) in [("post", &item.post), ("put", &item.put), ("delete", &item.delete)] {
                    // The web UI's compatibility routes publish nothing.
                    let ui = op.as_ref().is_some_and(|o| o.tags.iter().flatten().any(|t| t == super::ui::TAG));
                    if op.is_some() && !ui {
                        v.push((path.clone(), m));
                    }
                }
            }
            v
        })
        .collect();
    for (path, method) in publishing {
        let Some(op) = operation(doc, method, &path) else { continue };
        op.responses.responses.entry("413".into()).or_insert_with(|| {
            RefOr::T(Response::new(format!(
                "the command is larger than {} bytes once encoded (or the body than --max-body-bytes)",
                events::limits::MAX_COMMAND_BYTES
            )))
        });
        op.responses.responses.entry("429".into()).or_insert_with(|| {
            RefOr::T(Response::new(
                "too many requests, or the project's backlog of pending commands is at its limit (reason `ProjectBacklogFull`); see `Retry-After`",
            ))
        });
    }
}
