//! The OpenAPI document: utoipa's paths (from the handlers' annotations), completed with what
//! the routes share, in one place:
//!
//! - `components.schemas` from the schemars derives of the bodies (`bodies`, `events`), so the
//!   document and the event JSON Schemas are one schema system;
//! - bearer authentication as a security scheme (the schema routes and this document are public);
//! - the `{error, field?, reason?}` body on every error answer, and the error answers every route
//!   can give (401, 403, 404, 429, 500, 503; with a body also 400, 408, 413, 415, 422);
//! - `Idempotency-Key` and `Prefer: respond-async` on every command-publishing operation, with
//!   the 202 answer's `Location` and the `Retry-After` of 429 and 503;
//! - the command bounds of `events::limits` on each request body.
//!
//! [`document`] fails when a `$ref` does not resolve: the api refuses to start rather than serve
//! a document no generator can use.

use serde_json::{Map, Value, json};

use events::CommandType;

/// Which command each documented request body becomes (for its bounds).
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

/// Routes anyone may read.
const PUBLIC: &[&str] =
    &["/openapi.json", "/api/schemas/events", "/api/schemas/events/{type}", "/api/cluster-info", "/api/workflows/ootb"];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

/// Why the document cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// utoipa's document did not serialize.
    #[error("the OpenAPI document does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A `$ref` names nothing.
    #[error("the OpenAPI document refers to {0}, which it does not define")]
    Dangling(String),
}

/// The served document.
pub fn document(doc: &utoipa::openapi::OpenApi) -> Result<Value, DocumentError> {
    let mut v = serde_json::to_value(doc)?;
    let mut g = events::schemas::openapi_generator();
    events::schemas::register_openapi(&mut g);
    crate::bodies::register(&mut g);
    let components = object(&mut v, "components");
    let schemas = components.entry("schemas").or_insert_with(|| json!({}));
    if let Value::Object(schemas) = schemas {
        let mut bodies = Value::Object(g.take_definitions(true));
        events::schemas::close_objects(&mut bodies);
        if let Value::Object(bodies) = bodies {
            schemas.extend(bodies);
        }
    }
    components.insert("securitySchemes".into(), json!({"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "A Kubernetes bearer token: a user's (OIDC, `oc whoami -t`), a ServiceAccount's, or an access key's. The api checks it with a TokenReview and every action with a SubjectAccessReview."
    }}));
    components.insert("parameters".into(), json!({
        "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes a retry safe: the same key and body within 24 h return the first request's command instead of publishing another (a different body with the same key is a 409).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
        "Prefer": {"name": "Prefer", "in": "header", "required": false,
            "description": "`respond-async`: answer 202 as soon as the command is accepted instead of waiting for it to be applied.",
            "schema": {"type": "string", "examples": ["respond-async"]}},
    }));
    components.insert("headers".into(), json!({
        "Location": {"description": "`/api/commands/{id}`: where the command's outcome appears.", "schema": {"type": "string"}},
        "RetryAfter": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}},
    }));
    v["security"] = json!([{"bearerAuth": []}]);

    let paths: Vec<String> = v["paths"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    for path in paths {
        for method in METHODS {
            let Some(op) = v["paths"][&path].get_mut(*method).and_then(Value::as_object_mut) else { continue };
            complete_operation(&path, method, op);
        }
    }
    for &(method, path, ty) in BODIES {
        bound_body(&mut v, method, path, ty);
    }
    check_refs(&v, &v)?;
    Ok(v)
}

fn object<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v[key].is_object() {
        v[key] = json!({});
    }
    match v.get_mut(key) {
        Some(Value::Object(m)) => m,
        _ => unreachable!("just set to an object"),
    }
}

fn error_ref() -> Value {
    json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
}

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let public = PUBLIC.contains(&path);
    if public {
        op.insert("security".into(), json!([]));
    }
    let has_body = op.contains_key("requestBody");
    let publishes = op.get("responses").and_then(|r| r.get("202")).is_some();
    let mut codes: Vec<(&str, &str)> = vec![
        ("429", "too many requests; see `Retry-After`"),
        ("500", "a bug (never client input)"),
        (
            "503",
            "a dependency (the API server, NATS) is unavailable; see `Retry-After` when given, and `commandId` when a command's publication is undetermined",
        ),
    ];
    if !public {
        codes.extend([
            ("400", "a malformed path, query or body (`field` names it)"),
            ("401", "no bearer token, or it did not authenticate"),
            ("403", "the caller may not do this"),
            ("404", "not found, or not visible to the caller"),
        ]);
    }
    if has_body {
        codes.extend([
            ("408", "the body did not arrive in time"),
            ("413", "the body, or the command it becomes, is too large"),
            ("415", "the body is not `application/json`"),
            ("422", "a field's value is invalid or over its bound (`field` names it)"),
        ]);
    }
    if publishes {
        codes.extend([
            ("409", "the command conflicts with the current state (`reason`, e.g. `AlreadyExists`)"),
            ("422", "invalid, or the `Idempotency-Key` was used for a different request (`IdempotencyKeyReused`)"),
        ]);
    }
    let responses = match op.entry("responses").or_insert_with(|| json!({})) {
        Value::Object(m) => m,
        _ => return,
    };
    for (code, description) in codes {
        responses.entry(code).or_insert_with(|| json!({"description": description}));
    }
    for (code, response) in responses.iter_mut() {
        let Some(r) = response.as_object_mut() else { continue };
        if code.starts_with('4') || code.starts_with('5') {
            r.insert("content".into(), error_ref());
        }
        if code == "202" {
            r.insert("headers".into(), json!({"Location": {"$ref": "#/components/headers/Location"}}));
        }
        if code == "429" || code == "503" {
            r.insert("headers".into(), json!({"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}));
        }
    }
    if publishes && method != "get" {
        let params = match op.entry("parameters").or_insert_with(|| json!([])) {
            Value::Array(a) => a,
            _ => return,
        };
        params.push(json!({"$ref": "#/components/parameters/IdempotencyKey"}));
        params.push(json!({"$ref": "#/components/parameters/Prefer"}));
    }
}

/// The command's bounds on a request body: its description, and `maxLength` of the body
/// schema's top-level string fields.
fn bound_body(v: &mut Value, method: &str, path: &str, ty: CommandType) {
    let Some(body) = v["paths"].get_mut(path).and_then(|p| p.get_mut(method)).and_then(|o| o.get_mut("requestBody"))
    else {
        return;
    };
    let text = events::limits::describe(ty);
    body["description"] = Value::String(match body["description"].as_str() {
        Some(d) => format!("{d}. {text}"),
        None => text,
    });
    let Some(name) = body["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .map(str::to_string)
    else {
        return;
    };
    let Some(props) = v["components"]["schemas"].get_mut(&name).and_then(|s| s.get_mut("properties")) else { return };
    for f in events::limits::field_bounds(ty) {
        let Some(prop) = props.get_mut(f.field) else { continue };
        let string = prop["type"] == "string" || prop["type"].as_array().is_some_and(|t| t.contains(&json!("string")));
        if string && f.unit != "maxItems" {
            let unit = if f.unit == "maxBytes" { "UTF-8 bytes" } else { "characters" };
            prop["maxLength"] = json!(f.max);
            let d = prop["description"].as_str().map(|d| format!("{d} ")).unwrap_or_default();
            prop["description"] = Value::String(format!("{d}(at most {} {unit})", f.max));
        }
    }
}

/// Every `#/…` reference in `v` resolves in `root`.
fn check_refs(v: &Value, root: &Value) -> Result<(), DocumentError> {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let pointer = r.strip_prefix('#').ok_or_else(|| DocumentError::Dangling(r.clone()))?;
                if root.pointer(pointer).is_none() {
                    return Err(DocumentError::Dangling(r.clone()));
                }
            }
            m.values().try_for_each(|x| check_refs(x, root))
        }
        Value::Array(a) => a.iter().try_for_each(|x| check_refs(x, root)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Value {
        let (_, doc) = crate::routes::api_router();
        document(&doc).expect("the document completes")
    }

    fn operations(v: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in v["paths"].as_object().unwrap() {
            for m in METHODS {
                if let Some(op) = item.get(*m) {
                    out.push((path.clone(), m.to_string(), op.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_error_answer_has_the_error_schema_and_every_route_its_security() {
        let v = served();
        assert_eq!(v["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
        for (path, method, op) in operations(&v) {
            let public = PUBLIC.contains(&path.as_str());
            assert_eq!(op.get("security") == Some(&json!([])), public, "{method} {path}: security");
            let responses = op["responses"].as_object().unwrap();
            for code in ["429", "500", "503"] {
                assert!(responses.contains_key(code), "{method} {path} lacks {code}");
            }
            if !public {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
            for (code, r) in responses {
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }

    #[test]
    fn bodies_have_schemas_and_commands_take_idempotency_keys() {
        let v = served();
        for (path, method, op) in operations(&v) {
            let ui = op["tags"].as_array().is_some_and(|t| t.contains(&json!(crate::routes::ui::TAG)));
            if let Some(body) = op.get("requestBody")
                && !ui
            {
                let schema = &body["content"]["application/json"]["schema"];
                assert!(schema.get("$ref").is_some(), "{method} {path}: request body without a schema: {schema}");
            }
            for (code, r) in op["responses"].as_object().unwrap() {
                if code.starts_with('2') && code != "204" && !ui {
                    let content =
                        r["content"].as_object().unwrap_or_else(|| panic!("{method} {path} {code}: no content"));
                    for (media, c) in content {
                        assert!(c.get("schema").is_some(), "{method} {path} {code} {media}: no schema");
                    }
                }
            }
            if op["responses"].get("202").is_some() {
                let params = op["parameters"].to_string();
                assert!(params.contains("IdempotencyKey") && params.contains("Prefer"), "{method} {path}");
                assert_eq!(
                    op["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Accepted",
                    "{method} {path}"
                );
            }
        }
    }

    #[test]
    fn a_dangling_reference_is_refused() {
        let mut v = served();
        assert!(check_refs(&v, &v).is_ok());
        v["paths"]["/api/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
            json!({"$ref": "#/components/schemas/Nothing"});
        assert!(matches!(check_refs(&v, &v), Err(DocumentError::Dangling(r)) if r.ends_with("Nothing")));
    }

    #[test]
    fn request_bodies_carry_the_command_bounds() {
        let v = served();
        let create = &v["components"]["schemas"]["CreateSession"]["properties"]["prompt"];
        assert!(create["maxLength"].as_u64().is_some_and(|n| n > 0), "{create}");
        let props = &v["components"]["schemas"]["CreateSession"]["properties"];
        for field in ["name", "labels", "annotations", "prompt"] {
            assert!(props[field].is_object(), "CreateSession.{field}: {props}");
        }
    }

    /// Validates `instance` against the served document's schema `name`.
    fn conforms(doc: &Value, name: &str, instance: &Value) {
        let root = json!({
            "$schema": events::schemas::DIALECT,
            "components": doc["components"],
            "$ref": format!("#/components/schemas/{name}"),
        });
        let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{name} rejects what the api sends: {errors:#?}\n{instance:#}");
    }

    #[test]
    fn what_the_handlers_build_conforms_to_the_document() {
        let doc = served();
        // Every command result of the catalogue, as GET /api/commands/{id} shows it.
        let results: Vec<events::CommandResult> = events::catalogue::examples()
            .into_iter()
            .filter(|e| e.family == "result")
            .map(|e| serde_json::from_slice(&events::binding::data_bytes(&e.event)).unwrap())
            .collect();
        assert_eq!(results.len(), 2);
        for r in results {
            let status = crate::bodies::CommandStatus {
                id: r.command_id,
                ty: "ambient.key.create.v1".into(),
                project: r.project.to_string(),
                state: crate::bodies::CommandState::Succeeded,
                result: Some(crate::commands::public_result(r)),
                key: Some("token".into()),
            };
            conforms(&doc, "CommandStatus", &serde_json::to_value(status).unwrap());
        }
        // A session as reads show it: fresh, running, and with a queued stop.
        let spec: events::crd::AgenticSessionSpec = serde_json::from_value(json!({"prompt": "hi",
            "llmSettings": {"model": "sonnet"}, "repos": [{"input": {"url": "https://git/x.git"}}],
            "environmentVariables": {"A": "b"}}))
        .unwrap();
        let mut s = events::crd::AgenticSession::new("s1", spec);
        s.metadata.namespace = Some("team-a".into());
        s.metadata.labels = Some([("jira-issue".to_string(), "ABC-1".to_string())].into());
        conforms(&doc, "AgenticSession", &crate::reads::session_json(&s));
        s.status = Some(events::crd::AgenticSessionStatus {
            phase: Some(events::Phase::Running),
            message: Some("up".into()),
            start_time: Some(chrono::Utc::now()),
            ..Default::default()
        });
        let mut v = crate::reads::session_json(&s);
        conforms(&doc, "AgenticSession", &v);
        v["status"]["phase"] = json!(crate::pending::STOPPING);
        conforms(&doc, "AgenticSession", &v);
        let list = json!({"items": [v], "total": 1});
        conforms(&doc, "SessionList", &list);
        // A project.
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some("team-a".into()),
                labels: Some([(events::labels::MANAGED.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        conforms(&doc, "Project", &crate::reads::project_json(&ns));
        // And the document refuses what the api never sends.
        let root = json!({"components": doc["components"], "$ref": "#/components/schemas/Project"});
        let mut extra = crate::reads::project_json(&ns);
        extra["secret"] = json!("x");
        assert!(!jsonschema::validator_for(&root).unwrap().is_valid(&extra), "closed objects");
    }
}
