//! Commands: what the api asks the reconciler to do, on behalf of an authenticated principal.
//!
//! A command is a CloudEvent with type `ambient.<kind>.<action>.v1`, published on
//! `ambient.cmd.<project>.<kind>.<action>`; its data is
//! `{"principal": {…}, "request": {…}}`, where `request` is the kind-specific payload below.
//! Command ids are UUID v7 (time-ordered) and double as the JetStream `Nats-Msg-Id`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::correlation::Correlation;
use crate::crd::{AgenticSessionSpec, LlmSettings};
use crate::domain::{Phase, Principal, Role, SubjectType};
use crate::names::{KeyName, ProjectName, SessionName, SubjectName};
use crate::sealing::{SealedBox, SealingPublicKey};

/// The kind of object a command acts on: the `<kind>` token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A project (namespace).
    Project,
    /// An agentic session.
    Session,
    /// A user or group permission.
    Permission,
    /// An access key.
    Key,
    /// The project's runner secret and its configuration.
    #[serde(rename = "runnersecret")]
    RunnerSecret,
}

impl Kind {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::Session => "session",
            Kind::Permission => "permission",
            Kind::Key => "key",
            Kind::RunnerSecret => "runnersecret",
        }
    }
}

/// `POST /api/projects`: a managed namespace, its display annotations, the creator's admin
/// RoleBinding and its ProjectSettings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectCreate {
    /// Display name (`openshift.io/display-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description (`openshift.io/description`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PUT /api/projects/{p}`: change the display fields. An absent field is left as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectUpdate {
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A request with no payload beyond its subject (e.g. project delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Names one session of the command's project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionRef {
    /// The session.
    pub name: SessionName,
}

/// Create a session. `spec.userContext` is ignored: the reconciler sets it from the principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionCreate {
    /// The new session's name.
    pub name: SessionName,
    /// Its spec.
    pub spec: AgenticSessionSpec,
    /// Labels for correlation, e.g. `jira-issue: ABC-123` (see [`Correlation`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for correlation (see [`Correlation`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl SessionCreate {
    /// A session without labels or annotations.
    pub fn new(name: SessionName, spec: AgenticSessionSpec) -> Self {
        SessionCreate { name, spec, labels: BTreeMap::new(), annotations: BTreeMap::new() }
    }

    /// Its labels and annotations.
    pub fn correlation(&self) -> Correlation {
        Correlation { labels: self.labels.clone(), annotations: self.annotations.clone() }
    }
}

/// Change a session's spec; absent fields are left as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPatch {
    /// New prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// New timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// New model parameters (replaces the old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_settings: Option<LlmSettings>,
    /// New chat mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
}

/// Update a session's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionUpdate {
    /// The session.
    pub name: SessionName,
    /// What to change.
    pub patch: SessionPatch,
}

/// Copy a session's spec into a new session, possibly in another project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionClone {
    /// The session to copy.
    pub name: SessionName,
    /// Where to create the copy; the principal must be allowed to create sessions there.
    pub target_project: ProjectName,
    /// The copy's name.
    pub new_session_name: SessionName,
}

/// What a runner may report about its own session (`PUT …/{s}/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RunnerStatus {
    /// The runner's view of the phase: `Running`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A human sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The final answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Result subtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    /// Error result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Agent turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<i64>,
    /// SDK session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Cost in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    /// Token usage, free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
}

/// A runner's status report for its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionStatusReport {
    /// The session.
    pub name: SessionName,
    /// The report.
    pub status: RunnerStatus,
}

/// Set a session's display name (runners do this after naming the session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionDisplayName {
    /// The session.
    pub name: SessionName,
    /// The new display name (at most 100 characters).
    pub display_name: String,
}

/// Grant `role` to a user or group. Granting again with another role replaces the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PermissionGrant {
    /// User or group.
    pub subject_type: SubjectType,
    /// Its name.
    pub subject_name: SubjectName,
    /// The role.
    pub role: Role,
}

/// Remove every permission binding of a user or group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PermissionRevoke {
    /// User or group.
    pub subject_type: SubjectType,
    /// Its name.
    pub subject_name: SubjectName,
}

/// Create an access key: a ServiceAccount, its RoleBinding and a long-lived token. The token
/// comes back in the result sealed to `replyKey`, an ephemeral key only the requesting api
/// process holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyCreate {
    /// The key's name.
    pub name: KeyName,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its role in the project.
    pub role: Role,
    /// Token lifetime in seconds; the reconciler's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
    /// Where to seal the token to.
    pub reply_key: SealingPublicKey,
}

impl KeyCreate {
    /// The token lifetimes a key may ask for, in seconds: 10 minutes to 2 years. One rule,
    /// checked by the api (a 422 before anything is accepted) and again at apply time.
    pub const EXPIRATION_SECONDS: std::ops::RangeInclusive<i64> = 600..=2 * 365 * 24 * 3600;

    /// Why `expiration_seconds`, when given, is not a lifetime a key may have.
    pub fn check_expiration(seconds: Option<i64>) -> Result<(), crate::names::ValidationError> {
        match seconds {
            Some(s) if !Self::EXPIRATION_SECONDS.contains(&s) => Err(crate::names::ValidationError::new(
                "expirationSeconds",
                format!(
                    "must be between {} and {} (10 minutes to 2 years)",
                    Self::EXPIRATION_SECONDS.start(),
                    Self::EXPIRATION_SECONDS.end()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Revoke an access key: delete its ServiceAccount (which invalidates its tokens) and binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRevoke {
    /// The key id (its ServiceAccount name).
    pub key_id: String,
}

/// Change one of the project's credential Secrets (the runner secret unless `secret` says
/// otherwise). `data` is a [`crate::secrets::SecretChange`] (`{"KEY": "value" | null, …}`: set,
/// or remove; keys not in it are unchanged), sealed to the reconciler's key: plaintext never
/// reaches the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerSecretPut {
    /// The sealed change.
    pub data: SealedBox,
    /// Which Secret (absent: the runner secret).
    #[serde(default, skip_serializing_if = "is_runner_secret")]
    pub secret: crate::secrets::ProjectSecret,
}

fn is_runner_secret(s: &crate::secrets::ProjectSecret) -> bool {
    *s == crate::secrets::ProjectSecret::Runner
}

/// Choose which Secret is the project's runner secret (`ProjectSettings.spec.runnerSecretsName`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerSecretConfig {
    /// The Secret's name.
    pub secret_name: String,
}

macro_rules! command_catalogue {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $kind:ident . $action:literal ),* $(,)?) => {
        /// Every command, with its payload. The variant decides the CloudEvent type and subject.
        #[derive(Debug, Clone, PartialEq)]
        pub enum CommandBody {
            $( $(#[$doc])* $variant($payload), )*
        }

        /// The type of a command, without its payload.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CommandType {
            $( $(#[$doc])* $variant, )*
        }

        impl CommandType {
            /// Every command type.
            pub const ALL: &'static [CommandType] = &[$(CommandType::$variant),*];

            /// The object kind.
            pub fn kind(self) -> Kind {
                match self { $(CommandType::$variant => Kind::$kind,)* }
            }

            /// The action token, e.g. `create`.
            pub fn action(self) -> &'static str {
                match self { $(CommandType::$variant => $action,)* }
            }

            /// The CloudEvent type, e.g. `ambient.session.create.v1`.
            pub fn type_str(self) -> &'static str {
                match self {
                    $(CommandType::$variant => concat!("ambient.", command_catalogue!(@kind $kind), ".", $action, ".v1"),)*
                }
            }

            /// The command type named by a CloudEvent type.
            pub fn from_type_str(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|t| t.type_str() == s)
            }

            /// The JSON schema of the `request` payload.
            pub fn request_schema(self) -> schemars::Schema {
                match self { $(CommandType::$variant => schemars::schema_for!($payload),)* }
            }

            /// The `request` payload's schema as a subschema of `g` (its definitions go to `g`).
            pub fn request_subschema(self, g: &mut schemars::SchemaGenerator) -> schemars::Schema {
                match self { $(CommandType::$variant => g.subschema_for::<$payload>(),)* }
            }
        }

        impl CommandBody {
            /// The type of this command.
            pub fn command_type(&self) -> CommandType {
                match self { $(CommandBody::$variant(_) => CommandType::$variant,)* }
            }

            /// The payload as JSON.
            pub fn request_json(&self) -> serde_json::Value {
                let v = match self { $(CommandBody::$variant(p) => serde_json::to_value(p),)* };
                // Payloads are plain data (strings, numbers, maps): serialization cannot fail.
                v.unwrap_or(serde_json::Value::Null)
            }

            /// Decodes the payload of a command of type `ty`.
            pub fn from_request_json(ty: CommandType, v: serde_json::Value) -> Result<Self, serde_json::Error> {
                Ok(match ty { $(CommandType::$variant => CommandBody::$variant(serde_json::from_value(v)?),)* })
            }
        }
    };
    (@kind Project) => { "project" };
    (@kind Session) => { "session" };
    (@kind Permission) => { "permission" };
    (@kind Key) => { "key" };
    (@kind RunnerSecret) => { "runnersecret" };
}

command_catalogue! {
    /// Create the project.
    ProjectCreate(ProjectCreate) = Project."create",
    /// Change its display fields.
    ProjectUpdate(ProjectUpdate) = Project."update",
    /// Delete the project and everything in it.
    ProjectDelete(Empty) = Project."delete",
    /// Create a session.
    SessionCreate(SessionCreate) = Session."create",
    /// Update a session's spec.
    SessionUpdate(SessionUpdate) = Session."update",
    /// Delete a session and everything it owns.
    SessionDelete(SessionRef) = Session."delete",
    /// Run a session (again, when it had finished).
    SessionStart(SessionRef) = Session."start",
    /// Stop a running session: its Job and pods are deleted, the phase becomes Stopped.
    SessionStop(SessionRef) = Session."stop",
    /// Copy a session, possibly into another project.
    SessionClone(SessionClone) = Session."clone",
    /// A runner's status report.
    SessionStatus(SessionStatusReport) = Session."status",
    /// A runner sets the display name.
    SessionDisplayName(SessionDisplayName) = Session."displayname",
    /// Grant a role to a user or group.
    PermissionGrant(PermissionGrant) = Permission."grant",
    /// Revoke a user's or group's access.
    PermissionRevoke(PermissionRevoke) = Permission."revoke",
    /// Create an access key.
    KeyCreate(KeyCreate) = Key."create",
    /// Revoke an access key.
    KeyRevoke(KeyRevoke) = Key."revoke",
    /// Replace the runner secret's data.
    RunnerSecretPut(RunnerSecretPut) = RunnerSecret."put",
    /// Choose the runner secret's name.
    RunnerSecretConfig(RunnerSecretConfig) = RunnerSecret."config",
}

impl CommandBody {
    /// The object this command changes, as `<kind>/<name>`. Commands with the same key are
    /// applied in acceptance order; different keys may be applied in parallel.
    pub fn object_key(&self) -> String {
        match self {
            CommandBody::ProjectCreate(_) | CommandBody::ProjectUpdate(_) | CommandBody::ProjectDelete(_) => {
                "project".into()
            }
            CommandBody::SessionCreate(c) => format!("session/{}", c.name),
            CommandBody::SessionUpdate(c) => format!("session/{}", c.name),
            CommandBody::SessionDelete(c) | CommandBody::SessionStart(c) | CommandBody::SessionStop(c) => {
                format!("session/{}", c.name)
            }
            // A clone writes the new session; reading the source needs no ordering.
            CommandBody::SessionClone(c) => format!("session/{}", c.new_session_name),
            CommandBody::SessionStatus(c) => format!("session/{}", c.name),
            CommandBody::SessionDisplayName(c) => format!("session/{}", c.name),
            CommandBody::PermissionGrant(c) => format!("permission/{}/{}", c.subject_type, c.subject_name),
            CommandBody::PermissionRevoke(c) => format!("permission/{}/{}", c.subject_type, c.subject_name),
            CommandBody::KeyCreate(c) => format!("key/{}", c.name),
            CommandBody::KeyRevoke(c) => format!("key/{}", c.key_id),
            CommandBody::RunnerSecretPut(_) | CommandBody::RunnerSecretConfig(_) => "runnersecret".into(),
        }
    }
}

/// A command as the api issues it and the reconciler applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// UUID v7; also the JetStream `Nats-Msg-Id`.
    pub id: Uuid,
    /// The project it acts in.
    pub project: ProjectName,
    /// Who asked, as the api authenticated them.
    pub principal: Principal,
    /// When the api accepted it.
    pub time: DateTime<Utc>,
    /// W3C trace context of the HTTP request, if any.
    pub traceparent: Option<String>,
    /// What to do.
    pub body: CommandBody,
}

impl Command {
    /// A new command with a fresh UUID v7 id, accepted now.
    pub fn new(project: ProjectName, principal: Principal, body: CommandBody) -> Self {
        // Microsecond precision: the time travels as an RFC 3339 attribute and is signed.
        let time = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        Self { id: Uuid::now_v7(), project, principal, time, traceparent: None, body }
    }
}

/// The JSON data of a command CloudEvent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandData {
    /// Who asked.
    pub principal: Principal,
    /// The kind-specific payload.
    pub request: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lifetimes_are_ten_minutes_to_two_years() {
        for ok in [None, Some(600), Some(90 * 24 * 3600), Some(2 * 365 * 24 * 3600)] {
            assert!(KeyCreate::check_expiration(ok).is_ok(), "{ok:?}");
        }
        for bad in [Some(599), Some(0), Some(-1), Some(2 * 365 * 24 * 3600 + 1), Some(i64::MAX)] {
            assert_eq!(KeyCreate::check_expiration(bad).unwrap_err().field, "expirationSeconds", "{bad:?}");
        }
    }
}
