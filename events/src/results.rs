//! Results: what became of a command. Published by the reconciler on
//! `ambient.result.<project>.<commandId>`, exactly one per command (the CloudEvent id and
//! `Nats-Msg-Id` are `result-<commandId>`, so a republished result is de-duplicated).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::ProjectName;
use crate::sealing::SealedBox;

/// CloudEvent type of a successful result.
pub const SUCCEEDED_TYPE: &str = "ambient.result.succeeded.v1";
/// CloudEvent type of a failed result.
pub const FAILED_TYPE: &str = "ambient.result.failed.v1";

/// The object a command created or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRef {
    /// `apiVersion` of the object.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its namespace, absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The `resourceVersion` written; reading at or after it shows the command's effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Why a command failed; each maps to an HTTP-like code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureReason {
    /// The request is malformed (400).
    BadRequest,
    /// The principal may not do this (403).
    Forbidden,
    /// The object does not exist (404).
    NotFound,
    /// The object already exists, or the change conflicts with its state (409).
    Conflict,
    /// The request is well-formed but cannot be applied (422).
    Invalid,
    /// A quota or limit was reached (429).
    LimitReached,
    /// The command is not genuine: unsigned, forged or tampered (403).
    NotGenuine,
    /// It could not be applied after every retry (503).
    Unavailable,
}

impl FailureReason {
    /// The HTTP status the api answers with.
    pub fn http_code(self) -> u16 {
        match self {
            FailureReason::BadRequest => 400,
            FailureReason::Forbidden | FailureReason::NotGenuine => 403,
            FailureReason::NotFound => 404,
            FailureReason::Conflict => 409,
            FailureReason::Invalid => 422,
            FailureReason::LimitReached => 429,
            FailureReason::Unavailable => 503,
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    /// Applied.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        /// The object written.
        resource: ResourceRef,
        /// For `ambient.key.create.v1`: the token, sealed to the command's `replyKey`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed_token: Option<SealedBox>,
    },
    /// Not applied, and never will be.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// HTTP-like code (400, 403, 404, 409, 422, 429, 503).
        code: u16,
        /// Machine-readable reason.
        reason: FailureReason,
        /// A human sentence.
        message: String,
    },
}

impl Outcome {
    /// A failure with the reason's code.
    pub fn failed(reason: FailureReason, message: impl Into<String>) -> Self {
        Outcome::Failed { code: reason.http_code(), reason, message: message.into() }
    }
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// The command's id.
    pub command_id: Uuid,
    /// The command's CloudEvent type.
    pub command_type: String,
    /// The command's project.
    pub project: ProjectName,
    /// When the result was decided.
    pub time: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl CommandResult {
    /// The CloudEvent type for this result.
    pub fn type_str(&self) -> &'static str {
        match self.outcome {
            Outcome::Succeeded { .. } => SUCCEEDED_TYPE,
            Outcome::Failed { .. } => FAILED_TYPE,
        }
    }

    /// The CloudEvent id and `Nats-Msg-Id`: `result-<commandId>`.
    pub fn event_id(&self) -> String {
        format!("result-{}", self.command_id)
    }
}
