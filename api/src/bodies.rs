//! The JSON bodies of the routes as types. The OpenAPI document's schemas are derived from
//! them (schemars; see `openapi`), and the handlers build their answers from them, so the
//! document cannot describe a shape the api does not send.

use std::collections::BTreeMap;

use events::crd::{AgenticSessionSpec, AgenticSessionStatus};
use events::messages::SessionMessage;
use events::{CommandResult, KeyName, ProjectName, Role, SessionName, SubjectName, SubjectType};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Every error answer: `{error, field?, reason?, commandId?, code?}`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// A human sentence.
    pub error: String,
    /// The request field at fault (400 and 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A machine-readable reason, e.g. `AlreadyExists`, `ProjectBacklogFull`, `KeyCreationPending`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The command whose outcome is not known yet (503): look it up at `/api/commands/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<uuid::Uuid>,
    /// `not_available` for a feature of the existing web UI that this platform does not offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Where a command stands.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommandState {
    /// Accepted, not applied yet.
    Pending,
    /// Applied.
    Succeeded,
    /// Refused; changed nothing.
    Failed,
}

/// 202: the command is accepted and will be applied; `Location` (and `location`) is where its
/// outcome appears.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Accepted {
    /// The command id.
    pub id: uuid::Uuid,
    /// Always `pending`.
    pub state: CommandState,
    /// `/api/commands/{id}`.
    pub location: String,
    /// The name of the object the command creates, when it creates one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A sentence for the UI, when the command creates an object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Empty until the object exists (the UI reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// `GET /api/commands/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandStatus {
    /// The command id.
    pub id: uuid::Uuid,
    /// Its CloudEvent type, e.g. `ambient.session.create.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The project it acts in.
    pub project: String,
    /// Where it stands.
    pub state: CommandState,
    /// The outcome, once applied or refused (never a sealed token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
    /// An access key's token, returned once to its creator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A sentence acknowledging a change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Acknowledged {
    /// What was done.
    pub message: String,
}

/// A project as the web UI's `AmbientProject`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    /// The project (namespace) name.
    pub name: String,
    /// Display name (the name when none was given).
    pub display_name: String,
    /// Description (empty when none).
    pub description: String,
    /// The namespace's labels.
    pub labels: BTreeMap<String, String>,
    /// The namespace's annotations.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub creation_timestamp: String,
    /// `Active` or `Terminating`.
    pub status: String,
}

/// A page of projects.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectList {
    /// This page.
    pub items: Vec<Project>,
    /// How many there are in all.
    pub total: usize,
    /// The `offset` of the next page, when one remains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// A session as reads show it: the `AgenticSession` object. While a stop is queued and not
/// applied yet, its phase reads `Stopping`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "AgenticSession")]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// `vteam.ambient-code/v1alpha1`.
    pub api_version: String,
    /// `AgenticSession`.
    pub kind: String,
    /// The object's metadata.
    pub metadata: ObjectMeta,
    /// What to run.
    pub spec: AgenticSessionSpec,
    /// Where it stands.
    #[schemars(schema_with = "read_status")]
    pub status: serde_json::Value,
}

/// `AgenticSessionStatus` with the read-only phase `Stopping`.
fn read_status(g: &mut SchemaGenerator) -> Schema {
    let mut status = <AgenticSessionStatus as JsonSchema>::json_schema(g);
    let phase = g.subschema_for::<events::Phase>();
    if let Some(props) = status.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert(
            "phase".into(),
            serde_json::json!({
                "description": "The phase; `Stopping` while a stop is queued and not applied yet.",
                "anyOf": [phase, {"const": crate::pending::STOPPING}, {"type": "null"}],
            }),
        );
    }
    status
}

/// A page of sessions.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionList {
    /// This page.
    pub items: Vec<Session>,
    /// How many there are in all.
    pub total: usize,
    /// The `offset` of the next page, when one remains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// `POST /api/projects`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProject {
    /// The project (namespace) name: a DNS-1123 label.
    #[schemars(with = "ProjectName")]
    pub name: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PUT /api/projects/{project}`: the fields to change.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProject {
    /// The project's own name, if given (it cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /api/projects/{project}/access`: what the caller may do in the project.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectAccess {
    /// The project.
    pub project: String,
    /// Whether the caller administers it.
    pub allowed: bool,
    /// Why, in a sentence.
    pub reason: String,
    /// The caller's strongest role there.
    pub user_role: Role,
}

/// `POST /api/projects/{project}/agentic-sessions`: a session's spec and, optionally, its name
/// (generated when absent). `userContext` is set by the server.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSession {
    /// The session name: a DNS-1123 label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SessionName>")]
    pub name: Option<String>,
    /// Labels and annotations for correlation, e.g. `labels: {jira-issue: ABC-123}`: at most
    /// 32 of each, 8 KiB in all; stored on the session and shown in its every status event.
    #[serde(flatten)]
    pub correlation: events::correlation::Correlation,
    /// The spec.
    #[serde(flatten)]
    pub spec: AgenticSessionSpec,
}

/// 201 to a session creation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionCreated {
    /// A sentence for the UI.
    pub message: String,
    /// The session name.
    pub name: String,
    /// The session's uid.
    pub uid: String,
}

/// `POST …/clone`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloneSession {
    /// The project to copy the session into.
    #[schemars(with = "ProjectName")]
    pub target_project: String,
    /// The copy's name.
    #[schemars(with = "SessionName")]
    pub new_session_name: String,
}

/// `PUT …/displayname` (the runner names its session).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisplayName {
    /// The new display name.
    pub display_name: String,
}

/// `POST /api/projects/{project}/permissions`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// `user` or `group`.
    #[schemars(with = "SubjectType")]
    pub subject_type: String,
    /// The user or group name.
    #[schemars(with = "SubjectName")]
    pub subject_name: String,
    /// `admin`, `edit` or `view`.
    #[schemars(with = "Role")]
    pub role: String,
}

/// One subject's access.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PermissionRow {
    /// `user` or `group`.
    pub subject_type: SubjectType,
    /// The user or group name.
    pub subject_name: String,
    /// Its strongest role.
    pub role: Role,
    /// A queued change not applied yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<bool>,
    /// A queued revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoking: Option<bool>,
}

/// The permissions of a project.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PermissionList {
    /// Every subject with access.
    pub items: Vec<PermissionRow>,
}

/// `POST /api/projects/{project}/groups`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupGrant {
    /// The group name.
    #[schemars(with = "SubjectName")]
    pub group_name: String,
    /// `admin`, `edit` or `view`.
    #[schemars(with = "Role")]
    pub role: String,
}

/// One group's access.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupRow {
    /// The group name.
    pub group_name: String,
    /// Its strongest role.
    pub role: Role,
    /// A queued change not applied yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<bool>,
    /// A queued revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoking: Option<bool>,
}

/// The groups with access to a project.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GroupList {
    /// Every group with access.
    pub items: Vec<GroupRow>,
}

/// `POST /api/projects/{project}/keys`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    /// The key's name: a DNS-1123 label.
    #[schemars(with = "KeyName")]
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `admin`, `edit` (default) or `view`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Role>")]
    pub role: Option<String>,
    /// Lifetime of its token in seconds: 600 to two years (default 90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
}

/// An access key (never its token).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRow {
    /// The key's id (its ServiceAccount's name), used to revoke it.
    pub id: String,
    /// Its name.
    pub name: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of its last use, empty when unused.
    pub last_used_at: String,
    /// What it is for.
    pub description: String,
    /// Its role, empty while its binding is missing.
    pub role: String,
}

/// The access keys of a project.
#[derive(Debug, Serialize, JsonSchema)]
pub struct KeyList {
    /// Every key.
    pub items: Vec<KeyRow>,
}

/// 201 to a key creation: the token, shown once.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyCreated {
    /// The key's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The bearer token (shown once).
    pub key: String,
    /// What it is for.
    pub description: String,
    /// Its role.
    pub role: Role,
    /// Empty: it has not been used.
    pub last_used_at: String,
}

/// `PUT …/runner-secrets` and `…/integration-secrets`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecrets {
    /// Key → new value; `"********"` keeps the stored value; `null` removes the key. Keys not
    /// named are unchanged.
    pub data: BTreeMap<String, Option<String>>,
}

/// The keys of a secret, each value masked as `"********"` (values are never returned).
#[derive(Debug, Serialize, JsonSchema)]
pub struct MaskedSecrets {
    /// Key → `"********"`.
    pub data: BTreeMap<String, String>,
}

/// Which Secret is the runner secret.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretConfig {
    /// The Secret's name.
    pub secret_name: String,
}

/// `POST …/messages`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendMessage {
    /// The message type (`user.message`, `interrupt`, `end_session` for users; the runner's
    /// types for the runner).
    #[serde(rename = "type")]
    #[schemars(schema_with = "message_type")]
    pub ty: String,
    /// The content, free-form JSON.
    #[serde(default)]
    pub payload: serde_json::Value,
}

fn message_type(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "enum": events::messages::MESSAGE_TYPES})
}

/// A page of a session's messages.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    /// The session.
    pub session_id: String,
    /// The messages, oldest first.
    pub messages: Vec<SessionMessage>,
    /// The `after` of the next read.
    pub last_seq: u64,
    /// Whether more are stored after this page.
    pub has_more: bool,
}

/// `GET /api/me`: who the token authenticates as.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// Always true.
    pub authenticated: bool,
    /// The user name.
    pub user_id: String,
    /// The user name.
    pub username: String,
    /// The user name.
    pub display_name: String,
    /// The user's uid, when the authenticator gives one.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The authenticator's extra attributes (e.g. token scopes); `{}` when none.
    pub extra: BTreeMap<String, Vec<String>>,
}

events::openapi_schemas! {
    pub fn register;
    ErrorBody, Session, Accepted, CommandStatus, Acknowledged, Project, ProjectList, SessionList, CreateProject,
    UpdateProject, ProjectAccess, CreateSession, SessionCreated, CloneSession, DisplayName, Grant,
    PermissionList, GroupGrant, GroupList, CreateKey, KeyList, KeyCreated, PutSecrets, MaskedSecrets,
    SecretConfig, AppendMessage, MessagePage, Me, EventSchemaList,
}

/// An event type and where its JSON Schema is.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventSchemaRef {
    /// The CloudEvent type, e.g. `ambient.session.phase.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// `/api/schemas/events/{type}`.
    pub url: String,
}

/// The event types of the catalogue.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventSchemaList {
    /// Every type.
    pub items: Vec<EventSchemaRef>,
}
