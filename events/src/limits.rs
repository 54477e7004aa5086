//! Bounds of every command: each free-text field, each list, and the whole encoded command.
//!
//! The api checks them at its edge (a field over its bound is a 422 naming the field, a command
//! over [`MAX_COMMAND_BYTES`] a 413) before anything is recorded or published, and documents them
//! in its OpenAPI document ([`field_bounds`]). They live here once so that the api, the reconciler
//! and the CRD schema (`crd.rs`, whose `schemars` bounds agree) cannot drift apart.
//!
//! Lengths in characters count Unicode scalar values (the SPEC's "≤ 100 000 chars"); lengths in
//! bytes count UTF-8 bytes and apply to fields that are identifiers, URLs or machine values.
//!
//! The per-project backlog limits of the api charge each pending command its type's bound
//! ([`charge_bytes`]), so that a project's share of the commands stream is bounded without
//! reading the messages back.

use std::ops::RangeInclusive;

use crate::commands::{Command, CommandBody, CommandData, CommandType, RunnerStatus, SessionPatch};
use crate::crd::resources::check_environment;
use crate::crd::{AgenticSessionSpec, LlmSettings};
use crate::names::ValidationError;

/// `prompt` (SPEC: ≤ 100 000 characters).
pub const PROMPT_MAX_CHARS: usize = 100_000;
/// `displayName` of a session or a project.
pub const DISPLAY_NAME_MAX_CHARS: usize = 100;
/// A project's `description`.
pub const PROJECT_DESCRIPTION_MAX_CHARS: usize = 2_000;
/// An access key's `description`.
pub const KEY_DESCRIPTION_MAX_CHARS: usize = 500;
/// `llmSettings.model`.
pub const LLM_MODEL_MAX_BYTES: usize = 200;
/// Entries of `repos`.
pub const REPOS_MAX: usize = 20;
/// `repos[].input.url` and `repos[].output.url`.
pub const REPO_URL_MAX_BYTES: usize = 2_048;
/// `repos[].input.branch` and `repos[].output.branch`.
pub const REPO_BRANCH_MAX_BYTES: usize = 255;
/// Entries of `environmentVariables`.
pub const ENV_VARS_MAX: usize = 100;
/// One environment variable name.
pub const ENV_NAME_MAX_BYTES: usize = 253;
/// One environment variable value.
pub const ENV_VALUE_MAX_BYTES: usize = 32 * 1024;
/// All environment variable names and values together.
pub const ENV_TOTAL_MAX_BYTES: usize = 64 * 1024;
/// A runner status report's `message`.
pub const STATUS_MESSAGE_MAX_BYTES: usize = 32 * 1024;
/// A runner status report's `result` (the agent's final answer).
pub const STATUS_RESULT_MAX_BYTES: usize = 256 * 1024;
/// A runner status report's `subtype` and `session_id`.
pub const STATUS_TOKEN_MAX_BYTES: usize = 256;
/// A runner status report's free-form `usage`, JSON-encoded.
pub const STATUS_USAGE_MAX_BYTES: usize = 16 * 1024;
/// Keys of a runner secret.
pub const RUNNER_SECRET_KEYS_MAX: usize = 100;
/// A runner secret's sealed data (its JSON object of values, sealed: about 48 bytes more than
/// the plaintext).
pub const RUNNER_SECRET_MAX_BYTES: usize = 128 * 1024;
/// A Kubernetes object name given in a command (`keyId`, `secretName`).
pub const OBJECT_NAME_MAX_BYTES: usize = 253;
/// `resourceOverrides.cpu` and `resourceOverrides.memory` (Kubernetes quantities).
pub const QUANTITY_MAX_BYTES: usize = 32;

/// A session's `timeout`, in seconds.
pub const TIMEOUT_SECONDS: RangeInclusive<i64> = 30..=86_400;
/// `llmSettings.temperature`.
pub const TEMPERATURE: RangeInclusive<f64> = 0.0..=2.0;
/// `llmSettings.maxTokens`.
pub const MAX_TOKENS: RangeInclusive<i64> = 1..=1_000_000;

/// Largest command: its JSON data (principal and request), encoded. A command whose fields are
/// within their bounds and whose text needs no JSON escapes (no control characters) fits, with
/// room for a principal of a few hundred groups; anything larger is refused with 413. The api's
/// default request body limit is the same, and the commands stream's message limit a little
/// larger (headers).
pub const MAX_COMMAND_BYTES: usize = 640 * 1024;

/// What a command of a type without large fields (names, roles, descriptions, references) is
/// charged against its project's backlog: its payload is at most ~10 KiB, the rest is headroom
/// for the principal and the CloudEvent headers.
pub const SMALL_COMMAND_CHARGE: usize = 16 * 1024;

/// A field over its bound, or a command over [`MAX_COMMAND_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitError {
    /// The field (JSON path as the client wrote it, e.g. `environmentVariables.HOME`), or
    /// `body` for the whole command.
    pub field: String,
    /// A human sentence naming the bound.
    pub message: String,
    /// True when the whole command is too large (413) rather than one field (422).
    pub whole: bool,
}

impl From<ValidationError> for LimitError {
    fn from(e: ValidationError) -> Self {
        LimitError::field(e.field, e.rule)
    }
}

impl LimitError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        LimitError { field: field.into(), message: message.into(), whole: false }
    }
}

fn max_chars(field: &str, v: Option<&str>, max: usize) -> Result<(), LimitError> {
    match v {
        // `len()` bounds the character count from above: count only when it could matter.
        Some(s) if s.len() > max && s.chars().count() > max => {
            Err(LimitError::field(field, format!("{field} must be at most {max} characters")))
        }
        _ => Ok(()),
    }
}

fn max_bytes(field: &str, v: Option<&str>, max: usize) -> Result<(), LimitError> {
    match v {
        Some(s) if s.len() > max => Err(LimitError::field(field, format!("{field} must be at most {max} bytes"))),
        _ => Ok(()),
    }
}

impl AgenticSessionSpec {
    /// Every rule of a session spec but the operator's runner bounds (`check_runner`): the
    /// text bounds, the value ranges and formats. The api checks it at its edge (a 422 naming
    /// the field) and the reconciler again at apply time, so a command from an older api or
    /// written by hand cannot slip past it.
    pub fn validate(&self) -> Result<(), LimitError> {
        check_spec_text(self)?;
        check_prompt(&self.prompt)?;
        check_timeout(self.timeout)?;
        if let Some(l) = &self.llm_settings {
            l.validate()?;
        }
        for (i, r) in self.repos.iter().enumerate() {
            for (which, rr) in [("input", Some(&r.input)), ("output", r.output.as_ref())] {
                if rr.is_some_and(|rr| rr.url.is_empty()) {
                    let field = format!("repos[{i}].{which}.url");
                    return Err(LimitError::field(field, format!("url must be 1 to {REPO_URL_MAX_BYTES} bytes")));
                }
            }
        }
        if let Some(i) = self.main_repo_index
            && (i < 0 || i as usize >= self.repos.len().max(1))
        {
            return Err(LimitError::field("mainRepoIndex", "mainRepoIndex must index repos"));
        }
        check_environment(&self.environment_variables)?;
        if let Some(r) = &self.resource_overrides {
            for (f, v, max) in [
                ("cpu", &r.cpu, QUANTITY_MAX_BYTES),
                ("memory", &r.memory, QUANTITY_MAX_BYTES),
                ("priorityClass", &r.priority_class, OBJECT_NAME_MAX_BYTES),
            ] {
                max_bytes(&format!("resourceOverrides.{f}"), v.as_deref(), max)?;
            }
        }
        Ok(())
    }
}

impl SessionPatch {
    /// The rules of [`AgenticSessionSpec::validate`] for the fields a patch sets.
    pub fn validate(&self) -> Result<(), LimitError> {
        if let Some(p) = &self.prompt {
            max_chars("prompt", Some(p), PROMPT_MAX_CHARS)?;
            check_prompt(p)?;
        }
        max_chars("displayName", self.display_name.as_deref(), DISPLAY_NAME_MAX_CHARS)?;
        if let Some(t) = self.timeout {
            check_timeout(t)?;
        }
        if let Some(l) = &self.llm_settings {
            l.validate()?;
        }
        Ok(())
    }
}

impl LlmSettings {
    /// The model's name bound and the parameters' ranges.
    pub fn validate(&self) -> Result<(), LimitError> {
        max_bytes("llmSettings.model", self.model.as_deref(), LLM_MODEL_MAX_BYTES)?;
        if self.temperature.is_some_and(|t| !TEMPERATURE.contains(&t)) {
            return Err(LimitError::field("llmSettings.temperature", "temperature must be between 0 and 2"));
        }
        if self.max_tokens.is_some_and(|t| !MAX_TOKENS.contains(&t)) {
            return Err(LimitError::field("llmSettings.maxTokens", "maxTokens must be between 1 and 1000000"));
        }
        Ok(())
    }
}

fn check_prompt(p: &str) -> Result<(), LimitError> {
    if p.trim().is_empty() {
        return Err(LimitError::field("prompt", format!("prompt must be 1 to {PROMPT_MAX_CHARS} characters")));
    }
    Ok(())
}

fn check_timeout(t: i64) -> Result<(), LimitError> {
    if !TIMEOUT_SECONDS.contains(&t) {
        return Err(LimitError::field("timeout", "timeout must be between 30 and 86400 seconds"));
    }
    Ok(())
}

/// The free-text bounds of a session spec (prompt, display name, model, repositories,
/// environment), the part of [`AgenticSessionSpec::validate`] that bounds sizes.
fn check_spec_text(s: &AgenticSessionSpec) -> Result<(), LimitError> {
    max_chars("prompt", Some(&s.prompt), PROMPT_MAX_CHARS)?;
    max_chars("displayName", s.display_name.as_deref(), DISPLAY_NAME_MAX_CHARS)?;
    max_bytes("llmSettings.model", s.llm_settings.as_ref().and_then(|l| l.model.as_deref()), LLM_MODEL_MAX_BYTES)?;
    if s.repos.len() > REPOS_MAX {
        return Err(LimitError::field("repos", format!("at most {REPOS_MAX} repositories")));
    }
    for (i, r) in s.repos.iter().enumerate() {
        for (which, rr) in [("input", Some(&r.input)), ("output", r.output.as_ref())] {
            if let Some(rr) = rr {
                max_bytes(&format!("repos[{i}].{which}.url"), Some(&rr.url), REPO_URL_MAX_BYTES)?;
                max_bytes(&format!("repos[{i}].{which}.branch"), rr.branch.as_deref(), REPO_BRANCH_MAX_BYTES)?;
            }
        }
    }
    if s.environment_variables.len() > ENV_VARS_MAX {
        return Err(LimitError::field("environmentVariables", format!("at most {ENV_VARS_MAX} environment variables")));
    }
    let mut total = 0usize;
    for (k, v) in &s.environment_variables {
        if k.len() > ENV_NAME_MAX_BYTES {
            let shown: String = k.chars().take(64).collect();
            return Err(LimitError::field(
                format!("environmentVariables.{shown}"),
                format!("environment variable names must be at most {ENV_NAME_MAX_BYTES} bytes"),
            ));
        }
        max_bytes(&format!("environmentVariables.{k}"), Some(v), ENV_VALUE_MAX_BYTES)?;
        total += k.len() + v.len();
    }
    if total > ENV_TOTAL_MAX_BYTES {
        return Err(LimitError::field(
            "environmentVariables",
            format!("environment variable names and values must total at most {ENV_TOTAL_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_status(s: &RunnerStatus) -> Result<(), LimitError> {
    max_bytes("message", s.message.as_deref(), STATUS_MESSAGE_MAX_BYTES)?;
    max_bytes("result", s.result.as_deref(), STATUS_RESULT_MAX_BYTES)?;
    max_bytes("subtype", s.subtype.as_deref(), STATUS_TOKEN_MAX_BYTES)?;
    max_bytes("session_id", s.session_id.as_deref(), STATUS_TOKEN_MAX_BYTES)?;
    if let Some(u) = &s.usage {
        let n = serde_json::to_vec(u).map(|v| v.len()).unwrap_or(usize::MAX);
        if n > STATUS_USAGE_MAX_BYTES {
            return Err(LimitError::field(
                "usage",
                format!("usage must be at most {STATUS_USAGE_MAX_BYTES} bytes of JSON"),
            ));
        }
    }
    Ok(())
}

/// Checks every bounded field of a command's payload, and every rule of a session spec or
/// patch it carries.
pub fn check_body(body: &CommandBody) -> Result<(), LimitError> {
    match body {
        CommandBody::ProjectCreate(r) => {
            max_chars("displayName", r.display_name.as_deref(), DISPLAY_NAME_MAX_CHARS)?;
            max_chars("description", r.description.as_deref(), PROJECT_DESCRIPTION_MAX_CHARS)
        }
        CommandBody::ProjectUpdate(r) => {
            max_chars("displayName", r.display_name.as_deref(), DISPLAY_NAME_MAX_CHARS)?;
            max_chars("description", r.description.as_deref(), PROJECT_DESCRIPTION_MAX_CHARS)
        }
        CommandBody::SessionCreate(r) => r.spec.validate(),
        CommandBody::SessionUpdate(r) => r.patch.validate(),
        CommandBody::SessionStatus(r) => check_status(&r.status),
        CommandBody::SessionDisplayName(r) => max_chars("displayName", Some(&r.display_name), DISPLAY_NAME_MAX_CHARS),
        CommandBody::KeyCreate(r) => max_chars("description", r.description.as_deref(), KEY_DESCRIPTION_MAX_CHARS),
        CommandBody::KeyRevoke(r) => max_bytes("keyId", Some(&r.key_id), OBJECT_NAME_MAX_BYTES),
        CommandBody::RunnerSecretPut(r) => {
            if r.data.as_bytes().len() > RUNNER_SECRET_MAX_BYTES {
                return Err(LimitError::field(
                    "data",
                    format!("the runner secret must be at most {RUNNER_SECRET_MAX_BYTES} bytes"),
                ));
            }
            Ok(())
        }
        CommandBody::RunnerSecretConfig(r) => max_bytes("secretName", Some(&r.secret_name), OBJECT_NAME_MAX_BYTES),
        // Only validated names, roles and references.
        CommandBody::ProjectDelete(_)
        | CommandBody::SessionDelete(_)
        | CommandBody::SessionStart(_)
        | CommandBody::SessionStop(_)
        | CommandBody::SessionClone(_)
        | CommandBody::PermissionGrant(_)
        | CommandBody::PermissionRevoke(_) => Ok(()),
    }
}

/// Checks the size of a whole command, given its encoded data (`{"principal", "request"}`).
pub fn check_encoded(bytes: usize) -> Result<(), LimitError> {
    if bytes > MAX_COMMAND_BYTES {
        return Err(LimitError {
            field: "body".into(),
            message: format!(
                "the command is {bytes} bytes once encoded; at most {MAX_COMMAND_BYTES} bytes are allowed"
            ),
            whole: true,
        });
    }
    Ok(())
}

/// Checks every bounded field of a command and its encoded size; returns that size.
pub fn check_command(cmd: &Command) -> Result<usize, LimitError> {
    check_body(&cmd.body)?;
    let data = CommandData { principal: cmd.principal.clone(), request: cmd.body.request_json() };
    let n = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(usize::MAX);
    check_encoded(n)?;
    Ok(n)
}

/// True for the command types whose payload can approach [`MAX_COMMAND_BYTES`].
pub fn is_large(ty: CommandType) -> bool {
    matches!(
        ty,
        CommandType::SessionCreate
            | CommandType::SessionUpdate
            | CommandType::SessionStatus
            | CommandType::RunnerSecretPut
    )
}

/// What one pending command of type `ty` is charged against its project's backlog bytes: an
/// upper bound of its stored size.
pub fn charge_bytes(ty: CommandType) -> usize {
    if is_large(ty) { MAX_COMMAND_BYTES + 8 * 1024 } else { SMALL_COMMAND_CHARGE }
}

/// One documented bound: the JSON field, what is bounded, and the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldBound {
    /// Request field, as the client writes it.
    pub field: &'static str,
    /// `maxLength` (characters), `maxBytes` (UTF-8 bytes) or `maxItems`.
    pub unit: &'static str,
    /// The bound.
    pub max: usize,
}

const fn b(field: &'static str, unit: &'static str, max: usize) -> FieldBound {
    FieldBound { field, unit, max }
}

/// The bounds of the request bodies of a command type, for documentation (OpenAPI).
pub fn field_bounds(ty: CommandType) -> &'static [FieldBound] {
    const PROJECT: &[FieldBound] = &[
        b("displayName", "maxLength", DISPLAY_NAME_MAX_CHARS),
        b("description", "maxLength", PROJECT_DESCRIPTION_MAX_CHARS),
    ];
    const SPEC: &[FieldBound] = &[
        b("prompt", "maxLength", PROMPT_MAX_CHARS),
        b("displayName", "maxLength", DISPLAY_NAME_MAX_CHARS),
        b("llmSettings.model", "maxBytes", LLM_MODEL_MAX_BYTES),
        b("repos", "maxItems", REPOS_MAX),
        b("repos[].input.url, repos[].output.url", "maxBytes", REPO_URL_MAX_BYTES),
        b("repos[].input.branch, repos[].output.branch", "maxBytes", REPO_BRANCH_MAX_BYTES),
        b("environmentVariables", "maxItems", ENV_VARS_MAX),
        b("environmentVariables (name)", "maxBytes", ENV_NAME_MAX_BYTES),
        b("environmentVariables (value)", "maxBytes", ENV_VALUE_MAX_BYTES),
        b("environmentVariables (names and values together)", "maxBytes", ENV_TOTAL_MAX_BYTES),
    ];
    const PATCH: &[FieldBound] = &[
        b("prompt", "maxLength", PROMPT_MAX_CHARS),
        b("displayName", "maxLength", DISPLAY_NAME_MAX_CHARS),
        b("llmSettings.model", "maxBytes", LLM_MODEL_MAX_BYTES),
    ];
    const STATUS: &[FieldBound] = &[
        b("message", "maxBytes", STATUS_MESSAGE_MAX_BYTES),
        b("result", "maxBytes", STATUS_RESULT_MAX_BYTES),
        b("subtype, session_id", "maxBytes", STATUS_TOKEN_MAX_BYTES),
        b("usage (as JSON)", "maxBytes", STATUS_USAGE_MAX_BYTES),
    ];
    const DISPLAY: &[FieldBound] = &[b("displayName", "maxLength", DISPLAY_NAME_MAX_CHARS)];
    const KEY: &[FieldBound] = &[b("description", "maxLength", KEY_DESCRIPTION_MAX_CHARS)];
    const SECRET: &[FieldBound] = &[
        b("data", "maxItems", RUNNER_SECRET_KEYS_MAX),
        b("data (all values, sealed)", "maxBytes", RUNNER_SECRET_MAX_BYTES),
    ];
    const CONFIG: &[FieldBound] = &[b("secretName", "maxBytes", OBJECT_NAME_MAX_BYTES)];
    match ty {
        CommandType::ProjectCreate | CommandType::ProjectUpdate => PROJECT,
        CommandType::SessionCreate => SPEC,
        CommandType::SessionUpdate => PATCH,
        CommandType::SessionStatus => STATUS,
        CommandType::SessionDisplayName => DISPLAY,
        CommandType::KeyCreate => KEY,
        CommandType::RunnerSecretPut => SECRET,
        CommandType::RunnerSecretConfig => CONFIG,
        _ => &[],
    }
}

/// A sentence listing the bounds of `ty`'s request body and the whole-command bound.
pub fn describe(ty: CommandType) -> String {
    let mut parts: Vec<String> = field_bounds(ty)
        .iter()
        .map(|f| match f.unit {
            "maxLength" => format!("`{}` ≤ {} characters", f.field, f.max),
            "maxItems" => format!("`{}` ≤ {} entries", f.field, f.max),
            _ => format!("`{}` ≤ {} bytes", f.field, f.max),
        })
        .collect();
    parts.push(format!("the whole command ≤ {MAX_COMMAND_BYTES} bytes encoded (413)"));
    format!("Limits: {}; a field over its bound is refused with 422 naming it.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{KeyCreate, ProjectCreate, SessionCreate, SessionStatusReport};
    use crate::crd::{LlmSettings, RepoMapping, RepoRef};
    use crate::{Principal, SessionName};
    use serde_json::json;

    fn spec() -> AgenticSessionSpec {
        serde_json::from_value(json!({"prompt": "p"})).unwrap()
    }

    fn field_of(r: Result<(), LimitError>) -> Option<String> {
        r.err().map(|e| e.field)
    }

    #[test]
    fn each_bound_names_its_field() {
        let create =
            |s: AgenticSessionSpec| CommandBody::SessionCreate(SessionCreate::new(SessionName::new("s").unwrap(), s));
        let cases: Vec<(&str, AgenticSessionSpec, Option<&str>)> = vec![
            ("small spec", spec(), None),
            (
                "prompt at the bound (4-byte characters)",
                AgenticSessionSpec { prompt: "😀".repeat(PROMPT_MAX_CHARS), ..spec() },
                None,
            ),
            ("prompt over", AgenticSessionSpec { prompt: "a".repeat(PROMPT_MAX_CHARS + 1), ..spec() }, Some("prompt")),
            (
                "display name over",
                AgenticSessionSpec { display_name: Some("é".repeat(101)), ..spec() },
                Some("displayName"),
            ),
            (
                "model over",
                AgenticSessionSpec {
                    llm_settings: Some(LlmSettings { model: Some("m".repeat(201)), ..Default::default() }),
                    ..spec()
                },
                Some("llmSettings.model"),
            ),
            (
                "branch over",
                AgenticSessionSpec {
                    repos: vec![RepoMapping {
                        input: RepoRef { url: "u".into(), branch: None },
                        output: Some(RepoRef { url: "u".into(), branch: Some("b".repeat(256)) }),
                    }],
                    ..spec()
                },
                Some("repos[0].output.branch"),
            ),
            (
                "env value over",
                AgenticSessionSpec {
                    environment_variables: [("HOME".to_string(), "v".repeat(ENV_VALUE_MAX_BYTES + 1))].into(),
                    ..spec()
                },
                Some("environmentVariables.HOME"),
            ),
            (
                "env total over",
                AgenticSessionSpec {
                    environment_variables: (0..3)
                        .map(|i| (format!("V{i}"), "v".repeat(ENV_VALUE_MAX_BYTES - 10)))
                        .collect(),
                    ..spec()
                },
                Some("environmentVariables"),
            ),
            (
                "too many env",
                AgenticSessionSpec {
                    environment_variables: (0..101).map(|i| (format!("V{i}"), String::new())).collect(),
                    ..spec()
                },
                Some("environmentVariables"),
            ),
        ];
        for (what, s, want) in cases {
            assert_eq!(field_of(check_body(&create(s))).as_deref(), want, "{what}");
        }
        let project =
            CommandBody::ProjectCreate(ProjectCreate { display_name: None, description: Some("d".repeat(2001)) });
        assert_eq!(field_of(check_body(&project)).as_deref(), Some("description"));
        let report = |status: RunnerStatus| {
            CommandBody::SessionStatus(SessionStatusReport { name: SessionName::new("s").unwrap(), status })
        };
        assert_eq!(
            field_of(check_body(&report(RunnerStatus {
                result: Some("r".repeat(STATUS_RESULT_MAX_BYTES + 1)),
                ..Default::default()
            })))
            .as_deref(),
            Some("result")
        );
        assert_eq!(
            field_of(check_body(&report(RunnerStatus {
                usage: Some(json!({"x": "y".repeat(20_000)})),
                ..Default::default()
            })))
            .as_deref(),
            Some("usage")
        );
        let key = CommandBody::KeyCreate(KeyCreate {
            name: crate::KeyName::new("k").unwrap(),
            description: Some("d".repeat(501)),
            role: crate::Role::View,
            expiration_seconds: None,
            reply_key: crate::sealing::SealingSecretKey::generate().public_key(),
        });
        assert_eq!(field_of(check_body(&key)).as_deref(), Some("description"));
    }

    /// The largest valid session (every field at its bound, text without control characters,
    /// a 4-byte character prompt) fits in one command with a principal of 200 groups.
    #[test]
    fn spec_values_are_checked_with_their_bounds() {
        let cases: &[(&str, serde_json::Value, Option<&str>)] = &[
            ("minimal", json!({"prompt": "p"}), None),
            ("blank prompt", json!({"prompt": "  \n"}), Some("prompt")),
            ("timeout too short", json!({"prompt": "p", "timeout": 29}), Some("timeout")),
            ("timeout at most", json!({"prompt": "p", "timeout": 86_400}), None),
            ("timeout too long", json!({"prompt": "p", "timeout": 86_401}), Some("timeout")),
            (
                "temperature",
                json!({"prompt": "p", "llmSettings": {"temperature": 2.5}}),
                Some("llmSettings.temperature"),
            ),
            ("max tokens", json!({"prompt": "p", "llmSettings": {"maxTokens": 0}}), Some("llmSettings.maxTokens")),
            ("empty url", json!({"prompt": "p", "repos": [{"input": {"url": ""}}]}), Some("repos[0].input.url")),
            (
                "main repo",
                json!({"prompt": "p", "repos": [{"input": {"url": "u"}}], "mainRepoIndex": 1}),
                Some("mainRepoIndex"),
            ),
            ("env name", json!({"prompt": "p", "environmentVariables": {"1X": "v"}}), Some("environmentVariables.1X")),
            (
                "platform env",
                json!({"prompt": "p", "environmentVariables": {"PROMPT": "v"}}),
                Some("environmentVariables.PROMPT"),
            ),
            (
                "cpu text",
                json!({"prompt": "p", "resourceOverrides": {"cpu": "1".repeat(33)}}),
                Some("resourceOverrides.cpu"),
            ),
        ];
        for (what, v, want) in cases {
            let spec: AgenticSessionSpec = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(field_of(spec.validate()).as_deref(), *want, "{what}");
            // The same rule at the edge and at apply time: the command check is the spec's.
            let create = CommandBody::SessionCreate(SessionCreate::new(SessionName::new("s").unwrap(), spec));
            assert_eq!(field_of(check_body(&create)).as_deref(), *want, "{what} (command)");
        }
    }

    #[test]
    fn a_patch_is_checked_like_the_fields_it_sets() {
        let cases: &[(serde_json::Value, Option<&str>)] = &[
            (json!({}), None),
            (json!({"prompt": ""}), Some("prompt")),
            (json!({"timeout": 10}), Some("timeout")),
            (json!({"displayName": "d".repeat(101)}), Some("displayName")),
            (json!({"llmSettings": {"temperature": -1.0}}), Some("llmSettings.temperature")),
            (json!({"interactive": true, "timeout": 60}), None),
        ];
        for (v, want) in cases {
            let patch: SessionPatch = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(field_of(patch.validate()).as_deref(), *want, "{v}");
        }
    }

    #[test]
    fn the_largest_valid_command_fits() {
        let url = "u".repeat(REPO_URL_MAX_BYTES);
        let branch = "b".repeat(REPO_BRANCH_MAX_BYTES);
        let env_count = ENV_VARS_MAX;
        let value_len = ENV_TOTAL_MAX_BYTES / env_count - 8;
        let s = AgenticSessionSpec {
            prompt: "😀".repeat(PROMPT_MAX_CHARS),
            display_name: Some("é".repeat(DISPLAY_NAME_MAX_CHARS)),
            llm_settings: Some(LlmSettings {
                model: Some("m".repeat(LLM_MODEL_MAX_BYTES)),
                temperature: Some(1.0),
                max_tokens: Some(1000),
            }),
            repos: (0..REPOS_MAX)
                .map(|_| RepoMapping {
                    input: RepoRef { url: url.clone(), branch: Some(branch.clone()) },
                    output: Some(RepoRef { url: url.clone(), branch: Some(branch.clone()) }),
                })
                .collect(),
            environment_variables: (0..env_count)
                .map(|i| (format!("VAR_{i:03}"), "\"".repeat(value_len / 2)))
                .collect(),
            ..spec()
        };
        let body = CommandBody::SessionCreate(SessionCreate::new(SessionName::new("s").unwrap(), s));
        check_body(&body).unwrap();
        let principal = Principal {
            user: "someone@example.com".into(),
            uid: "0123456789abcdef".into(),
            groups: (0..200).map(|i| format!("group-with-a-long-name-{i:04}")).collect(),
            ..Default::default()
        };
        let data = CommandData { principal, request: body.request_json() };
        let n = serde_json::to_vec(&data).unwrap().len();
        check_encoded(n).unwrap();
        assert!(n <= charge_bytes(CommandType::SessionCreate));
        assert!(check_encoded(MAX_COMMAND_BYTES + 1).unwrap_err().whole);
    }

    /// Types charged as small really are: their payload at its bounds stays far below the charge.
    #[test]
    fn small_types_are_small() {
        let key = CommandBody::KeyCreate(KeyCreate {
            name: crate::KeyName::new("k".repeat(40)).unwrap(),
            description: Some("😀".repeat(KEY_DESCRIPTION_MAX_CHARS)),
            role: crate::Role::View,
            expiration_seconds: Some(1),
            reply_key: crate::sealing::SealingSecretKey::generate().public_key(),
        });
        let project = CommandBody::ProjectCreate(ProjectCreate {
            display_name: Some("😀".repeat(DISPLAY_NAME_MAX_CHARS)),
            description: Some("😀".repeat(PROJECT_DESCRIPTION_MAX_CHARS)),
        });
        for b in [key, project] {
            assert!(!is_large(b.command_type()));
            assert!(serde_json::to_vec(&b.request_json()).unwrap().len() <= 10 * 1024);
        }
        assert!(describe(CommandType::SessionCreate).contains("`prompt` ≤ 100000 characters"));
    }
}
