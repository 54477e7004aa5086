//! Session messages: the agent's conversation, an append-only log per session on
//! `ambient.msg.<project>.<session>`. The JetStream sequence is the message id (`seq`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Message types the existing runner and UI use. Other types are refused.
pub const MESSAGE_TYPES: &[&str] = &[
    "agent.message",
    "agent.running",
    "agent.waiting",
    "user.message",
    "message.partial",
    "result.message",
    "system.message",
    "interrupt",
    "end_session",
];

/// Types only a user (not the runner) may append.
pub const USER_MESSAGE_TYPES: &[&str] = &["user.message", "interrupt", "end_session"];

/// The type of partial (streaming) fragments, folded when reading unless asked for.
pub const PARTIAL_TYPE: &str = "message.partial";

/// The envelope of a session message as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionMessage {
    /// Message type, one of [`MESSAGE_TYPES`].
    #[serde(rename = "type")]
    pub ty: String,
    /// The content, free-form JSON.
    pub payload: serde_json::Value,
    /// When it was appended.
    pub timestamp: DateTime<Utc>,
    /// Its position in the session's log (the stream sequence); 0 before it is stored.
    #[serde(default)]
    pub seq: u64,
}
