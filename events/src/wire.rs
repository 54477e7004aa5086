//! Typed encoding of every event of the catalogue to and from NATS messages.
//!
//! | event | CloudEvent `source` | `subject` attribute | extensions |
//! |---|---|---|---|
//! | command | `/ambient/api` | object key (`session/<name>`, `project`, …) | `ambientproject`, `ambientsig`, `traceparent` |
//! | result | `/ambient/reconciler` | the command id | `ambientproject`, `traceparent` |
//! | status | `/ambient/projector` | `<kind>/<name>` | `ambientproject`, `ambientprojectuid` |

use std::borrow::Cow;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use uuid::Uuid;

use crate::binding::{self, BindingError};
use crate::commands::{Command, CommandBody, CommandData, CommandType};
use crate::names::ProjectName;
use crate::results::CommandResult;
use crate::signing::{CommandSigner, CommandVerifier, SIGNATURE_EXTENSION, SignedFields};
use crate::status::{StatusBody, StatusEvent};
use crate::subjects;

/// CloudEvent source of commands.
pub const API_SOURCE: &str = "/ambient/api";
/// CloudEvent source of results.
pub const RECONCILER_SOURCE: &str = "/ambient/reconciler";
/// CloudEvent source of status events.
pub const PROJECTOR_SOURCE: &str = "/ambient/projector";
/// Extension naming the project.
pub const PROJECT_EXTENSION: &str = "ambientproject";
/// Extension of status events: the uid of the project's namespace (see
/// [`StatusEvent::project_uid`]).
pub const PROJECT_UID_EXTENSION: &str = "ambientprojectuid";
/// W3C trace context extension (CloudEvents distributed tracing).
pub const TRACEPARENT_EXTENSION: &str = "traceparent";
/// Largest command accepted, in bytes of data (the commands stream refuses larger messages).
pub const MAX_COMMAND_BYTES: usize = crate::limits::MAX_COMMAND_BYTES;

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// NATS subject.
    pub subject: String,
    /// `ce-*` headers and `Nats-Msg-Id`.
    pub headers: HeaderMap,
    /// The data.
    pub payload: Bytes,
}

/// Why a message is not an acceptable event. Permanent: redelivering it cannot help.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a CloudEvent at all.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// Larger than the limit.
    #[error("message of {0} bytes exceeds the limit")]
    Oversized(usize),
    /// A type this version does not know.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The attributes or data do not match the contract.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// A command that is not signed by a trusted api key, or whose signed fields were changed.
    #[error("command is not genuine: {0}")]
    NotGenuine(String),
}

/// What a consumer can still address about a refused command (to publish its failed result).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandAddress {
    /// The command id.
    pub id: Uuid,
    /// Its project.
    pub project: ProjectName,
    /// Its type string.
    pub ty: String,
}

fn time_str(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn build(b: EventBuilderV10) -> Event {
    // Every attribute we set is a literal or validated value: building cannot fail.
    b.build().unwrap_or_else(|e| panic!("event attributes are valid: {e}"))
}

fn ext(ev: &Event, name: &str) -> Option<String> {
    ev.extension(name).map(|v| v.to_string())
}

fn outgoing(subject: String, ev: &Event) -> Outgoing {
    let (headers, payload) = binding::to_nats(ev);
    Outgoing { subject, headers, payload }
}

/// A command's data, `{principal, request}`, as a JSON value and as the compact bytes that are
/// signed and sent (keys sorted: one encoding for the signer, the wire and the examples).
fn command_data(cmd: &Command) -> (serde_json::Value, Vec<u8>) {
    let data = CommandData { principal: cmd.principal.clone(), request: cmd.body.request_json() };
    let value = serde_json::to_value(&data).unwrap_or_default();
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    (value, bytes)
}

/// The command's event, its signature over `bytes` and carrying `data` (those bytes, or their
/// JSON value for display).
fn signed_command(cmd: &Command, signer: &CommandSigner, bytes: &[u8], data: impl Into<cloudevents::Data>) -> Event {
    let ty = cmd.body.command_type();
    let id = cmd.id.to_string();
    let time = time_str(&cmd.time);
    let subject = cmd.subject();
    let sig = signer.sign(&SignedFields {
        id: &id,
        ty: ty.type_str(),
        subject: &subject,
        project: cmd.project.as_str(),
        time: &time,
        data: bytes,
    });
    let mut b = EventBuilderV10::new()
        .id(id)
        .ty(ty.type_str())
        .source(API_SOURCE)
        .subject(cmd.body.object_key())
        .time(time)
        .extension(PROJECT_EXTENSION, cmd.project.as_str())
        .extension(SIGNATURE_EXTENSION, sig)
        .data("application/json", data);
    if let Some(tp) = &cmd.traceparent {
        b = b.extension(TRACEPARENT_EXTENSION, tp.as_str());
    }
    build(b)
}

/// A command as a CloudEvent, signed, its data as JSON (structured mode, documentation).
pub fn command_event(cmd: &Command, signer: &CommandSigner) -> Event {
    let (value, bytes) = command_data(cmd);
    signed_command(cmd, signer, &bytes, value)
}

/// Encodes and signs a command for publishing: the payload is exactly the bytes signed.
pub fn encode_command(cmd: &Command, signer: &CommandSigner) -> Outgoing {
    let (_, bytes) = command_data(cmd);
    let ev = signed_command(cmd, signer, &bytes, bytes.clone());
    outgoing(cmd.subject(), &ev)
}

/// Decodes a command received on `subject` (as published, or as stored in a partition) and
/// verifies that it is genuine. On error, the address is returned when the message carried
/// enough to publish a failed result.
pub fn decode_command(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    verifier: &CommandVerifier,
) -> Result<Command, (DecodeError, Option<CommandAddress>)> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err((DecodeError::Oversized(payload.len()), None));
    }
    let ev = binding::from_nats(headers, payload).map_err(|e| (e.into(), None))?;
    let address = command_address(&ev);
    let fail = |e: DecodeError| (e, address.clone());
    let ty = CommandType::from_type_str(ev.ty()).ok_or_else(|| fail(DecodeError::UnknownType(ev.ty().into())))?;
    let project = ProjectName::new(ext(&ev, PROJECT_EXTENSION).unwrap_or_default())
        .map_err(|e| fail(DecodeError::Invalid(e.to_string())))?;
    // The subject must agree with the signed attributes: a command cannot be replayed into
    // another project or re-typed by moving it.
    let parsed =
        subjects::parse_command(subject).ok_or_else(|| fail(DecodeError::Invalid("bad command subject".into())))?;
    if parsed.project != project || parsed.ty != ty {
        return Err(fail(DecodeError::NotGenuine("subject does not match the command".into())));
    }
    let time = ev.time().copied().ok_or_else(|| fail(DecodeError::Invalid("missing time".into())))?;
    // The signature covers the bytes received, not a re-encoding of them; only a structured-mode
    // event (data inside a JSON envelope) has no bytes of its own.
    let data =
        if binding::is_structured(headers) { Cow::Owned(binding::data_bytes(&ev)) } else { Cow::Borrowed(payload) };
    let canonical_subject = subjects::command(&project, ty);
    verifier
        .verify(
            &SignedFields {
                id: ev.id(),
                ty: ev.ty(),
                subject: &canonical_subject,
                project: project.as_str(),
                time: &time_str(&time),
                data: &data,
            },
            ext(&ev, SIGNATURE_EXTENSION).as_deref(),
        )
        .map_err(|e| fail(DecodeError::NotGenuine(e.to_string())))?;
    let id = Uuid::parse_str(ev.id()).map_err(|_| fail(DecodeError::Invalid("id is not a UUID".into())))?;
    let data: CommandData = serde_json::from_slice(&data).map_err(|e| fail(DecodeError::Invalid(e.to_string())))?;
    let body =
        CommandBody::from_request_json(ty, data.request).map_err(|e| fail(DecodeError::Invalid(e.to_string())))?;
    Ok(Command { id, project, principal: data.principal, time, traceparent: ext(&ev, TRACEPARENT_EXTENSION), body })
}

fn command_address(ev: &Event) -> Option<CommandAddress> {
    Some(CommandAddress {
        id: Uuid::parse_str(ev.id()).ok()?,
        project: ProjectName::new(ext(ev, PROJECT_EXTENSION)?).ok()?,
        ty: ev.ty().to_string(),
    })
}

/// A result as a CloudEvent.
pub fn result_event(result: &CommandResult, traceparent: Option<&str>) -> Event {
    let mut b = EventBuilderV10::new()
        .id(result.event_id())
        .ty(result.type_str())
        .source(RECONCILER_SOURCE)
        .subject(result.command_id.to_string())
        .time(time_str(&result.time))
        .extension(PROJECT_EXTENSION, result.project.as_str())
        .data("application/json", serde_json::to_value(result).unwrap_or_default());
    if let Some(tp) = traceparent {
        b = b.extension(TRACEPARENT_EXTENSION, tp);
    }
    build(b)
}

/// Encodes a result for publishing on `ambient.result.<project>.<commandId>`.
pub fn encode_result(result: &CommandResult, traceparent: Option<&str>) -> Outgoing {
    outgoing(subjects::result(&result.project, result.command_id), &result_event(result, traceparent))
}

/// Decodes a result.
pub fn decode_result(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<CommandResult, DecodeError> {
    let ev = binding::from_nats(headers, payload)?;
    if ev.ty() != crate::results::SUCCEEDED_TYPE && ev.ty() != crate::results::FAILED_TYPE {
        return Err(DecodeError::UnknownType(ev.ty().into()));
    }
    serde_json::from_slice(&binding::data_bytes(&ev)).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// A status event as a CloudEvent.
pub fn status_event(event: &StatusEvent) -> Event {
    let mut b = EventBuilderV10::new()
        .id(event.id.as_str())
        .ty(event.body.type_str())
        .source(PROJECTOR_SOURCE)
        .subject(format!("{}/{}", event.body.kind().as_str(), event.name))
        .time(time_str(&event.time))
        .extension(PROJECT_EXTENSION, event.project.as_str());
    if let Some(uid) = &event.project_uid {
        b = b.extension(PROJECT_UID_EXTENSION, uid.as_str());
    }
    build(b.data("application/json", event.body.data_json()))
}

/// Encodes a status event for publishing on `ambient.status.<project>.<kind>.<name>`.
pub fn encode_status(event: &StatusEvent) -> Result<Outgoing, crate::ValidationError> {
    Ok(outgoing(event.subject()?, &status_event(event)))
}

/// Decodes a status event.
pub fn decode_status(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<StatusEvent, DecodeError> {
    let ev = binding::from_nats(headers, payload)?;
    let data = serde_json::from_slice(&binding::data_bytes(&ev)).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let body = StatusBody::from_json(ev.ty(), data)
        .ok_or_else(|| DecodeError::UnknownType(ev.ty().into()))?
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let project = ProjectName::new(ext(&ev, PROJECT_EXTENSION).unwrap_or_default())
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let name = ev
        .subject()
        .and_then(|s| s.split_once('/'))
        .map(|(_, n)| n.to_string())
        .ok_or_else(|| DecodeError::Invalid("missing subject".into()))?;
    let time = ev.time().copied().ok_or_else(|| DecodeError::Invalid("missing time".into()))?;
    let project_uid = ext(&ev, PROJECT_UID_EXTENSION);
    Ok(StatusEvent { id: ev.id().to_string(), project, name, time, project_uid, body })
}
