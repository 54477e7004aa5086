//! The api's routes as the tests probe them: taken from its `/openapi.json` (so a new route is
//! probed without anyone remembering to add it), with the path parameters filled in and a
//! well-formed sample body for each mutation.

use reqwest::Method;
use serde_json::{Value, json};

/// One operation of the OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The OpenAPI path, e.g. `/api/projects/{project}/keys/{keyId}`.
    pub template: String,
}

impl Route {
    /// The reqwest method.
    pub fn method(&self) -> Method {
        Method::from_bytes(self.method.as_bytes()).unwrap_or(Method::GET)
    }

    /// Whether the route is inside one project.
    pub fn in_project(&self) -> bool {
        self.template.contains("{project}")
    }

    /// `GET /api/projects/{project}` style label.
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// Every operation of an OpenAPI document, sorted.
pub fn operations(doc: &Value) -> Vec<Route> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (template, ops) in paths {
            for method in ops.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                out.push(Route { method: method.to_uppercase(), template: template.clone() });
            }
        }
    }
    out.sort();
    out
}

/// Values of the path parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// `{project}`.
    pub project: String,
    /// `{session}`.
    pub session: String,
    /// `{subjectType}` and `{subjectName}`.
    pub subject: (String, String),
    /// `{group}`.
    pub group: String,
    /// `{keyId}`.
    pub key_id: String,
    /// `{id}` of `/api/commands/{id}`.
    pub command_id: String,
}

impl Params {
    /// Parameters naming `project` and `session`, with harmless defaults for the rest.
    pub fn new(project: &str, session: &str) -> Self {
        Params {
            project: project.into(),
            session: session.into(),
            subject: ("user".into(), "nobody-in-particular".into()),
            group: "no-such-group".into(),
            key_id: "no-such-key".into(),
            command_id: "0190f0f0-0000-7000-8000-000000000000".into(),
        }
    }

    /// The template with every parameter filled in.
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{project}", &self.project)
            .replace("{session}", &self.session)
            .replace("{subjectType}", &self.subject.0)
            .replace("{subjectName}", &self.subject.1)
            .replace("{group}", &self.group)
            .replace("{keyId}", &self.key_id)
            .replace("{id}", &self.command_id)
            .replace("{type}", "ambient.session.phase.v1")
            // A session repository of the web UI's git routes (none exist: those answer not_available).
            .replace("{repo}", "no-such-repo")
    }
}

/// A well-formed body for a mutation (None for routes without one). `target` is the project
/// a clone goes to; `unique` makes names of created objects distinct.
pub fn sample_body(route: &Route, target: &str, unique: &str) -> Option<Value> {
    let t = route.template.as_str();
    let body = match (route.method.as_str(), t.rsplit('/').next().unwrap_or("")) {
        ("POST", "projects") => json!({"name": unique, "displayName": "probe"}),
        ("PUT", "{project}") => json!({"displayName": format!("probe {unique}")}),
        ("POST", "agentic-sessions") => json!({"name": unique, "prompt": "probe"}),
        ("PUT", "{session}") => json!({"prompt": format!("probe {unique}")}),
        ("POST", "start") | ("POST", "stop") => json!({}),
        ("POST", "clone") => json!({"targetProject": target, "newSessionName": unique}),
        ("PUT", "status") => json!({"phase": "Running", "message": "probe"}),
        ("PUT", "displayname") => json!({"displayName": format!("probe {unique}")}),
        ("POST", "permissions") => json!({"subjectType": "user", "subjectName": unique, "role": "view"}),
        ("POST", "groups") => json!({"groupName": unique, "role": "view"}),
        ("POST", "keys") => json!({"name": unique, "role": "view"}),
        ("PUT", "runner-secrets") | ("PUT", "integration-secrets") => json!({"data": {"PROBE": unique}}),
        ("PUT", "config") => json!({"secretName": "ambient-runner-secrets"}),
        ("POST", "messages") => json!({"type": "user.message", "payload": {"content": unique}}),
        ("POST", _) | ("PUT", _) => json!({}),
        _ => return None,
    };
    Some(body)
}
