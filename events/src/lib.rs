//! # events — the contract of the Ambient control plane
//!
//! Everything the api, the reconciler, the projector and outside subscribers (UI, Jira bridges,
//! observability) agree on lives here:
//!
//! - [`names`] and [`domain`]: validated names and closed sets (roles, phases, principal);
//! - [`crd`]: the `AgenticSession` and `ProjectSettings` custom resources;
//! - [`labels`]: the labels and annotations on cluster objects; [`views`]: cluster objects as
//!   the public views that reads and status events show;
//! - [`commands`], [`results`], [`status`], [`messages`]: the catalogue of CloudEvents;
//! - [`correlation`]: the labels and annotations users give sessions;
//! - [`limits`]: the bounds of every command field and of whole commands;
//! - [`subjects`]: the subject scheme; [`streams`]: JetStream streams, consumers and buckets;
//! - [`binding`]: CloudEvents ⇄ NATS binary mode; [`wire`]: typed encode/decode of each event;
//! - [`schemas`]: the JSON Schema of every event type and of the api's bodies;
//! - [`signing`]: how a consumer recognises a genuine command; [`sealing`]: secrets on the bus.
//!
//! See `events/README.md` for the catalogue of every event type with its subject and an example.

pub mod access;
pub mod binding;
#[cfg(feature = "cli")]
pub mod bus;
pub mod catalogue;
pub mod commands;
pub mod correlation;
pub mod crd;
pub mod domain;
pub mod labels;
pub mod limits;
pub mod messages;
pub mod names;
pub mod results;
pub mod schemas;
pub mod sealing;
pub mod secrets;
#[cfg(feature = "service")]
pub mod service;
pub mod signing;
pub mod status;
pub mod streams;
pub mod subjects;
pub mod views;
pub mod wire;

pub use commands::{Command, CommandBody, CommandType};
pub use domain::{Phase, Principal, Role, SubjectType};
pub use names::{KeyName, ProjectName, SessionName, SubjectName, ValidationError};
pub use results::{CommandResult, FailureReason, Outcome};
pub use status::{StatusBody, StatusEvent, StatusKind};

/// What failed underneath an error of a service (a NATS, kube or serde error, or a sentence),
/// kept as the error's `source()` so that logs show the whole chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;
