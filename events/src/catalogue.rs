//! One example of every event type, for `events/README.md` and its test: the README is
//! rendered from these (`UPDATE_EVENTS_README=1 cargo test -p events --test readme`) and every
//! example in it is checked to parse and round-trip through the NATS binding.

use chrono::{DateTime, TimeZone, Utc};
use cloudevents::Event;
use uuid::Uuid;

use crate::commands::*;
use crate::crd::{AgenticSessionSpec, GroupAccess};
use crate::domain::{Phase, Principal, Role, SubjectType};
use crate::names::{KeyName, ProjectName, SessionName, SubjectName};
use crate::results::{CommandResult, FailureReason, Outcome, ResourceRef};
use crate::sealing::SealingSecretKey;
use crate::signing::CommandSigner;
use crate::status::*;
use crate::wire;

/// The signing key of the documentation examples (never used for anything else).
pub fn example_signer() -> CommandSigner {
    CommandSigner::from_seed([7; 32])
}

/// One documented event.
pub struct Example {
    /// `command`, `result` or `status`.
    pub family: &'static str,
    /// The CloudEvent type.
    pub ty: String,
    /// The NATS subject it is published on.
    pub subject: String,
    /// One sentence on what it means.
    pub doc: String,
    /// The event.
    pub event: Event,
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 9, 30, 0).single().unwrap_or_default()
}

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap_or_else(|e| panic!("example name {s}: {e:?}"))
}

/// Example payloads, one per command type.
pub fn example_command_bodies() -> Vec<(CommandBody, &'static str)> {
    let s: SessionName = name("fix-login-bug");
    let spec: AgenticSessionSpec = serde_json::from_value(serde_json::json!({
        "prompt": "Fix the login bug described in JIRA-123",
        "displayName": "Fix login",
        "llmSettings": {"model": "sonnet", "temperature": 0.7, "maxTokens": 4000},
        "timeout": 1800,
        "repos": [{"input": {"url": "https://git.example.com/team/app.git", "branch": "main"}}]
    }))
    .unwrap_or_else(|e| panic!("example spec: {e}"));
    let reply = SealingSecretKey::generate().public_key();
    vec![
        (
            CommandBody::ProjectCreate(ProjectCreate {
                display_name: Some("Team A".into()),
                description: Some("Team A's agents".into()),
            }),
            "Create the project (namespace, admin RoleBinding for the creator, ProjectSettings).",
        ),
        (
            CommandBody::ProjectUpdate(ProjectUpdate { display_name: Some("Team A (prod)".into()), description: None }),
            "Change the project's display name or description.",
        ),
        (CommandBody::ProjectDelete(Empty {}), "Delete the project and everything in it."),
        (
            CommandBody::SessionCreate(SessionCreate {
                labels: [("jira-issue".to_string(), "ABC-123".to_string())].into(),
                ..SessionCreate::new(s.clone(), spec)
            }),
            "Create a session; `userContext` is set from the principal; `labels` and `annotations` (optional) are the creator's, for correlation.",
        ),
        (
            CommandBody::SessionUpdate(SessionUpdate {
                name: s.clone(),
                patch: SessionPatch { prompt: Some("Fix it, with tests".into()), ..Default::default() },
            }),
            "Change fields of a session's spec.",
        ),
        (CommandBody::SessionDelete(SessionRef { name: s.clone() }), "Delete a session and everything it owns."),
        (CommandBody::SessionStart(SessionRef { name: s.clone() }), "Run a session again."),
        (CommandBody::SessionStop(SessionRef { name: s.clone() }), "Stop a running session."),
        (
            CommandBody::SessionClone(SessionClone {
                name: s.clone(),
                target_project: name("team-b"),
                new_session_name: name("fix-login-bug-copy"),
            }),
            "Copy a session into another project.",
        ),
        (
            CommandBody::SessionStatus(SessionStatusReport {
                name: s.clone(),
                status: RunnerStatus {
                    phase: Some(Phase::Completed),
                    result: Some("Fixed in PR 42".into()),
                    num_turns: Some(12),
                    total_cost_usd: Some(0.42),
                    ..Default::default()
                },
            }),
            "A runner reports on its own session.",
        ),
        (
            CommandBody::SessionDisplayName(SessionDisplayName { name: s.clone(), display_name: "Login bug".into() }),
            "A runner names its session.",
        ),
        (
            CommandBody::PermissionGrant(PermissionGrant {
                subject_type: SubjectType::Group,
                subject_name: SubjectName::new("team-b").unwrap_or_else(|e| panic!("{e}")),
                role: Role::Edit,
            }),
            "Grant a role to a user or group.",
        ),
        (
            CommandBody::PermissionRevoke(PermissionRevoke {
                subject_type: SubjectType::User,
                subject_name: SubjectName::new("bob").unwrap_or_else(|e| panic!("{e}")),
            }),
            "Remove a user's or group's access.",
        ),
        (
            CommandBody::KeyCreate(KeyCreate {
                name: name::<KeyName>("ci-bot"),
                description: Some("CI pipeline".into()),
                role: Role::Edit,
                expiration_seconds: Some(7_776_000),
                reply_key: reply.clone(),
            }),
            "Create an access key; its token comes back sealed to `replyKey`.",
        ),
        (CommandBody::KeyRevoke(KeyRevoke { key_id: "ambient-key-ci-bot".into() }), "Revoke an access key."),
        (
            CommandBody::RunnerSecretPut(RunnerSecretPut {
                data: reply.seal(b"{\"ANTHROPIC_API_KEY\":\"...\",\"OLD_KEY\":null}").unwrap_or_else(|e| panic!("{e}")),
                secret: Default::default(),
            }),
            "Change the runner secret (`secret: \"integration\"`: the integration secret); `data`, sealed to the reconciler's key, sets keys to strings and removes keys given null; other keys are unchanged.",
        ),
        (
            CommandBody::RunnerSecretConfig(RunnerSecretConfig { secret_name: "my-runner-secret".into() }),
            "Choose which Secret is the runner secret.",
        ),
    ]
}

/// Every example: commands, results, status events.
pub fn examples() -> Vec<Example> {
    let project: ProjectName = name("team-a");
    let principal = Principal {
        user: "alice".into(),
        uid: "4b1c…".into(),
        groups: vec!["team-a".into(), "system:authenticated".into()],
        ..Default::default()
    };
    let signer = example_signer();
    let mut out = Vec::new();
    for (i, (body, doc)) in example_command_bodies().into_iter().enumerate() {
        let cmd = Command {
            id: Uuid::from_u128(0x019ac9d2_5a40_7000_8000_000000000000 + i as u128),
            project: project.clone(),
            principal: principal.clone(),
            time: at(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            body,
        };
        out.push(Example {
            family: "command",
            ty: cmd.body.command_type().type_str().into(),
            subject: cmd.subject(),
            doc: doc.into(),
            event: wire::command_event(&cmd, &signer),
        });
    }
    let cmd_id = Uuid::from_u128(0x019ac9d2_5a40_7000_8000_000000000003);
    let ok = CommandResult {
        command_id: cmd_id,
        command_type: "ambient.session.create.v1".into(),
        project: project.clone(),
        time: at(),
        outcome: Outcome::Succeeded {
            resource: ResourceRef {
                api_version: "vteam.ambient-code/v1alpha1".into(),
                kind: "AgenticSession".into(),
                namespace: Some("team-a".into()),
                name: "fix-login-bug".into(),
                uid: Some("9e0f…".into()),
                resource_version: Some("48211".into()),
            },
            sealed_token: None,
        },
    };
    let failed = CommandResult {
        outcome: Outcome::failed(FailureReason::Forbidden, "alice may not create agenticsessions in team-a"),
        ..ok.clone()
    };
    for (r, doc) in [
        (ok, "The command was applied; `resource` names what it wrote."),
        (failed, "The command was refused and changed nothing; `code` is the HTTP status the api answers."),
    ] {
        out.push(Example {
            family: "result",
            ty: r.type_str().into(),
            subject: crate::subjects::result(&r.project, r.command_id),
            doc: doc.into(),
            event: wire::result_event(&r, None),
        });
    }
    for (body, obj, doc) in example_status_bodies() {
        let ev = StatusEvent {
            id: StatusEvent::derive_id("9e0f…", "48230", body.type_str()),
            project: project.clone(),
            name: obj.into(),
            time: at(),
            project_uid: Some("3c1d…".into()),
            body,
        };
        let subject = ev.subject().unwrap_or_else(|e| panic!("{e}"));
        out.push(Example {
            family: "status",
            ty: ev.body.type_str().into(),
            subject,
            doc: doc.into(),
            event: wire::status_event(&ev),
        });
    }
    out
}

fn example_status_bodies() -> Vec<(StatusBody, &'static str, &'static str)> {
    let t = at();
    let session = SessionView {
        name: "fix-login-bug".into(),
        uid: "9e0f…".into(),
        resource_version: "48230".into(),
        generation: 1,
        creation_timestamp: Some(t),
        display_name: Some("Fix login".into()),
        created_by: Some("alice".into()),
        interactive: false,
        timeout: 1800,
        llm_settings: None,
        repos: vec![],
        environment_variable_names: vec!["LOG_LEVEL".into()],
        phase: Phase::Running,
        message: Some("runner pod is running".into()),
        reason: None,
        start_time: Some(t),
        completion_time: None,
        result: None,
        total_cost_usd: None,
        num_turns: None,
        labels: [("jira-issue".to_string(), "ABC-123".to_string())].into(),
        annotations: Default::default(),
    };
    let runner = RunnerView {
        name: "fix-login-bug".into(),
        run: Some(1),
        job: Some(RunnerJob {
            name: "fix-login-bug-job".into(),
            active: 1,
            succeeded: 0,
            failed: 0,
            conditions: vec![],
            start_time: Some(t),
            completion_time: None,
        }),
        pod: Some(RunnerPod {
            name: "fix-login-bug-job-x7k2p".into(),
            uid: "5c1f0a2e-7d3b-4e8a-9f61-2b7c4d9e0a13".into(),
            phase: "Pending".into(),
            node_name: Some("worker-3".into()),
            scheduling_reason: None,
            reason: None,
            container: Some(RunnerContainer {
                name: "ambient-code-runner".into(),
                state: ContainerState::Waiting,
                reason: Some("ImagePullBackOff".into()),
                exit_code: None,
                restart_count: 0,
            }),
        }),
    };
    let tomb = |n: &str| Tombstone { name: n.into(), uid: Some("9e0f…".into()), at: t };
    vec![
        (
            StatusBody::ProjectChanged(ProjectView {
                name: "team-a".into(),
                display_name: Some("Team A".into()),
                description: None,
                requester: Some("alice".into()),
                creation_timestamp: Some(t),
                status: "Active".into(),
            }),
            "team-a",
            "A project was created or its public view changed.",
        ),
        (StatusBody::ProjectDeleted(tomb("team-a")), "team-a", "A project is gone."),
        (
            StatusBody::ProjectSettings(SettingsView {
                exists: true,
                group_access: vec![GroupAccess { group_name: "team-b".into(), role: Role::Edit }],
                runner_secret_configured: true,
            }),
            "team-a",
            "A project's settings changed: group access, and whether a runner Secret is configured (never its name or values).",
        ),
        (
            StatusBody::SessionChanged(session),
            "fix-login-bug",
            "A session was created or its public view changed (never env var values).",
        ),
        (
            StatusBody::SessionPhase(PhaseTransition {
                name: "fix-login-bug".into(),
                previous_phase: Some(Phase::Creating),
                phase: Phase::Running,
                at: t,
                previous_phase_seconds: Some(2.4),
                reason: None,
                message: None,
                start_time: Some(t),
                completion_time: None,
            }),
            "fix-login-bug",
            "A session changed phase.",
        ),
        (StatusBody::SessionDeleted(tomb("fix-login-bug")), "fix-login-bug", "A session is gone."),
        (
            StatusBody::SessionRunner(runner),
            "fix-login-bug",
            "A session's runner Job or pod changed (here: the pod cannot pull its image); `job: null` when the runner is gone (stopped, restarted, removed).",
        ),
        (
            StatusBody::PermissionChanged(PermissionView {
                subject_type: SubjectType::Group,
                subject_name: "team-b".into(),
                role: Role::Edit,
            }),
            "group-team-b-1f2e3d4c",
            "A permission was granted or changed.",
        ),
        (
            StatusBody::PermissionDeleted(tomb("group-team-b-1f2e3d4c")),
            "group-team-b-1f2e3d4c",
            "A permission was revoked.",
        ),
        (
            StatusBody::KeyChanged(KeyView {
                id: "ambient-key-ci-bot".into(),
                name: "ci-bot".into(),
                description: Some("CI pipeline".into()),
                role: Some(Role::Edit),
                created_at: Some(t),
                last_used_at: None,
            }),
            "ambient-key-ci-bot",
            "An access key was created or changed (never its token).",
        ),
        (StatusBody::KeyDeleted(tomb("ambient-key-ci-bot")), "ambient-key-ci-bot", "An access key was revoked."),
    ]
}

/// Start and end markers of the generated part of `events/README.md`.
pub const README_BEGIN: &str =
    "<!-- catalogue:begin (generated by `UPDATE_EVENTS_README=1 cargo test -p events --test readme`) -->";
/// End marker.
pub const README_END: &str = "<!-- catalogue:end -->";

/// A property's type in a few words: `string`, `Phase | null`, `one of ["a","b"]`.
fn type_words(p: &serde_json::Value) -> String {
    if let Some(t) = p.get("type") {
        return match t.as_array() {
            Some(ts) => ts.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(" | "),
            None => t.as_str().unwrap_or("object").to_string(),
        };
    }
    if let Some(r) = p.get("$ref").and_then(|r| r.as_str()) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(e) = p.get("enum") {
        return format!("one of {e}");
    }
    if let Some(c) = p.get("const") {
        return format!("always {c}");
    }
    if let Some(alts) = p.get("anyOf").or_else(|| p.get("oneOf")).and_then(|a| a.as_array()) {
        return alts.iter().map(type_words).collect::<Vec<_>>().join(" | ");
    }
    "any".into()
}

fn schema_fields(schema: &schemars::Schema) -> Vec<String> {
    let v = schema.as_value();
    let props = v.get("properties").and_then(|p| p.as_object());
    let required: Vec<&str> = v
        .get("required")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (k, p) in props.into_iter().flatten() {
        let ty = type_words(p);
        let desc = p.get("description").and_then(|d| d.as_str()).unwrap_or("").replace('\n', " ");
        let req = if required.contains(&k.as_str()) { ", required" } else { "" };
        out.push(format!("- `{k}` ({ty}{req}) — {desc}"));
    }
    out
}

/// The generated catalogue section of the README (between the markers).
pub fn render_markdown() -> String {
    let examples = examples();
    let mut md = String::new();
    md.push_str(README_BEGIN);
    md.push_str("\n\n| type | subject | meaning |\n|---|---|---|\n");
    for e in &examples {
        md.push_str(&format!("| [`{}`](#{}) | `{}` | {} |\n", e.ty, e.ty.replace('.', ""), e.subject, e.doc));
    }
    for e in &examples {
        md.push_str(&format!("\n### {}\n\n{}\n\nSubject: `{}`\n\n", e.ty, e.doc, e.subject));
        let fields = match e.family {
            "command" => {
                let ty = CommandType::from_type_str(&e.ty).map(|t| t.request_schema());
                md.push_str("Data: `{\"principal\": {user, uid, groups}, \"request\": {…}}`; `request` fields:\n\n");
                ty.map(|s| schema_fields(&s)).unwrap_or_default()
            }
            "result" => {
                md.push_str("Data fields:\n\n");
                schema_fields(&schemars::schema_for!(CommandResult))
            }
            _ => {
                md.push_str("Data fields:\n\n");
                StatusBody::schema(&e.ty).map(|s| schema_fields(&s)).unwrap_or_default()
            }
        };
        if fields.is_empty() {
            md.push_str("- (none)\n");
        }
        for f in fields {
            md.push_str(&f);
            md.push('\n');
        }
        let json = serde_json::to_string_pretty(&e.event).unwrap_or_default();
        md.push_str(&format!(
            "\nExample (structured mode, as JSON; on NATS the attributes are `ce-*` headers):\n\n```json\n{json}\n```\n"
        ));
        let schema =
            crate::schemas::event_schema(&e.ty).and_then(|s| serde_json::to_string_pretty(&s).ok()).unwrap_or_default();
        md.push_str(&format!(
            "\n<details><summary>JSON Schema of <code>{}</code> (also served at <code>/api/schemas/events/{}</code>)</summary>\n\n```json\n{schema}\n```\n\n</details>\n",
            e.ty, e.ty
        ));
    }
    md.push('\n');
    md.push_str(README_END);
    md
}
