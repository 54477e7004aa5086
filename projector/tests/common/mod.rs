//! Helpers of the projector's integration tests: a projector under its deploy/ ServiceAccount,
//! scoped to the test's own projects (`--project-selector`) and with its own Lease, so tests
//! sharing a cluster and a NATS server do not see each other's projector.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ambient_tests::components::{Component, ServiceProcess};
use ambient_tests::{TestEnv, eventually, unique_name};
use anyhow::Context as _;
use async_nats::jetstream::consumer;
use events::crd::AgenticSession;
use events::status::{RunnerView, SettingsView};
use events::{Phase, StatusBody, StatusEvent};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

/// Label the tests put on their projects; the projector under test selects on it.
pub const RUN_LABEL: &str = "ambient-tests/projector-run";

/// One test's scope: its run id (label value) and projector arguments.
pub struct Scope {
    /// Label value of this test's projects.
    pub run: String,
    /// Lease of this test's projector.
    pub lease: String,
}

impl Scope {
    pub fn new() -> Self {
        Scope { run: unique_name("run"), lease: unique_name("projector-test") }
    }
}

/// Starts a projector for `scope`, optionally with a sinks file.
pub async fn start_projector(env: &TestEnv, scope: &Scope, sinks: Option<&Path>) -> anyhow::Result<ServiceProcess> {
    let kubeconfig = Component::Projector.kubeconfig(env).await?;
    let nats = env.nats_url().to_string();
    let selector = format!("{RUN_LABEL}={}", scope.run);
    let lease = scope.lease.clone();
    let sinks = sinks.map(|p| p.display().to_string());
    let p = ServiceProcess::start(Component::Projector, move |health| {
        let mut a = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--nats-url={nats}"),
            format!("--health-addr={health}"),
            "--log-format=json".into(),
            format!("--lease-name={lease}"),
            // Short lease: a killed projector's lease expires quickly for its restart.
            "--lease-seconds=3".into(),
            format!("--project-selector={selector}"),
        ];
        if let Some(s) = sinks {
            a.push(format!("--sinks-file={s}"));
        }
        a
    })
    .await?;
    wait_ready(&p).await?;
    Ok(p)
}

/// Waits for `/readyz` (leadership and the initial catch-up done).
/// Waits until `p` leads and has caught up: the `projector_leader` gauge at 1, then `/readyz`
/// 200 (a standby is ready too; the leader turns unready before the gauge turns 1).
pub async fn wait_ready(p: &ServiceProcess) -> anyhow::Result<()> {
    let url = format!("http://{}/readyz", p.health_addr());
    eventually("projector leading and ready", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let leading = leader_gauge(p).await? == Some(1.0);
            Ok((leading && reqwest::get(&url).await?.status().is_success()).then_some(()))
        }
    })
    .await
    .with_context(|| format!("log:\n{}", p.log()))
}

/// The `projector_leader` gauge of `p`, if it is exported yet.
pub async fn leader_gauge(p: &ServiceProcess) -> anyhow::Result<Option<f64>> {
    let text = p.metrics().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix("projector_leader ")).and_then(|v| v.trim().parse().ok()))
}

/// Creates a managed namespace in the test's scope.
pub async fn create_project(env: &TestEnv, scope: &Scope, prefix: &str) -> anyhow::Result<String> {
    let name = unique_name(prefix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    ("ambient-code.io/managed".to_string(), "true".to_string()),
                    (RUN_LABEL.to_string(), scope.run.clone()),
                    ("app.kubernetes.io/managed-by".to_string(), "ambient-tests".to_string()),
                ]
                .into(),
            ),
            annotations: Some([("openshift.io/display-name".to_string(), format!("Project {name}"))].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(env.admin()).create(&PostParams::default(), &ns).await?;
    Ok(name)
}

pub fn sessions(env: &TestEnv, ns: &str) -> Api<AgenticSession> {
    Api::namespaced(env.admin(), ns)
}

/// Creates a session whose environment carries `env_value` (which must never be projected).
pub async fn create_session(env: &TestEnv, ns: &str, name: &str, env_value: &str) -> anyhow::Result<AgenticSession> {
    let s: AgenticSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "vteam.ambient-code/v1alpha1",
        "kind": "AgenticSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "prompt": "summarise the repository",
            "displayName": format!("Session {name}"),
            "timeout": 600,
            "llmSettings": {"model": "sonnet", "temperature": 0.5, "maxTokens": 1000},
            "userContext": {"userId": "alice"},
            "environmentVariables": {"API_KEY": env_value},
        }
    }))?;
    Ok(sessions(env, ns).create(&PostParams::default(), &s).await?)
}

/// Sets the session's phase (as the reconciler would), with timestamps.
pub async fn set_phase(env: &TestEnv, ns: &str, name: &str, phase: Phase) -> anyhow::Result<()> {
    let now = chrono::Utc::now().to_rfc3339();
    let mut status = serde_json::json!({"phase": phase.as_str(), "message": format!("now {}", phase.as_str())});
    if phase == Phase::Running {
        status["startTime"] = serde_json::json!(now);
    }
    if phase.is_terminal() {
        status["completionTime"] = serde_json::json!(now);
    }
    sessions(env, ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": status })))
        .await?;
    Ok(())
}

pub async fn delete_session(env: &TestEnv, ns: &str, name: &str) -> anyhow::Result<()> {
    sessions(env, ns).delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// A status message as stored: its stream sequence, the decoded event and the raw message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub event: StatusEvent,
    pub subject: String,
    pub raw: String,
}

/// Every status event of `project`, in stream order.
pub async fn status_events(env: &TestEnv, project: &str) -> anyhow::Result<Vec<Stored>> {
    let stream = env.jetstream().get_stream(events::streams::STATUS_STREAM).await?;
    let filter = format!("ambient.status.{project}.>");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    let pending = consumer.cached_info().num_pending as usize;
    while out.len() < pending {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let event = events::wire::decode_status(m.headers.as_ref(), &m.payload)?;
            let raw = format!("{:?}{}", m.headers, String::from_utf8_lossy(&m.payload));
            out.push(Stored { seq: info.stream_sequence, event, subject: m.subject.to_string(), raw });
        }
        if out.len() == before {
            break;
        }
    }
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(out)
}

/// Waits until `check` accepts the project's events; returns them.
pub async fn wait_events<F>(env: &TestEnv, project: &str, what: &str, check: F) -> anyhow::Result<Vec<Stored>>
where
    F: Fn(&[Stored]) -> bool,
{
    let last = std::sync::Mutex::new(Vec::new());
    let r = eventually(what, Duration::from_secs(60), || async {
        let evs = status_events(env, project).await?;
        let ok = check(&evs);
        *last.lock().unwrap() = evs.clone();
        Ok(ok.then_some(evs))
    })
    .await;
    r.with_context(|| format!("events so far:\n{}", summary(&last.lock().unwrap())))
}

/// `<name> <type-suffix>` lines, for failure messages.
pub fn summary(evs: &[Stored]) -> String {
    evs.iter()
        .map(|s| format!("{} {} {} {}", s.seq, s.event.name, s.event.body.type_str(), phase_of(&s.event.body)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn phase_of(b: &StatusBody) -> String {
    match b {
        StatusBody::SessionPhase(t) => format!("{:?}->{:?}", t.previous_phase, t.phase),
        StatusBody::SessionChanged(v) => format!("[{:?}]", v.phase),
        StatusBody::SessionRunner(v) => runner_summary(v),
        StatusBody::ProjectSettings(v) => {
            format!("exists={} groups={} secret={}", v.exists, v.group_access.len(), v.runner_secret_configured)
        }
        _ => String::new(),
    }
}

/// `job(active/succeeded/failed) pod(phase container-state reason exit)` of a runner view.
pub fn runner_summary(v: &RunnerView) -> String {
    let job = v.job.as_ref().map(|j| {
        format!(
            "job({}/{}/{} {:?})",
            j.active,
            j.succeeded,
            j.failed,
            j.conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>()
        )
    });
    let pod = v.pod.as_ref().map(|p| {
        let c = p
            .container
            .as_ref()
            .map(|c| format!(" {:?} {:?} {:?}", c.state, c.reason, c.exit_code))
            .unwrap_or_default();
        format!("pod({}{c})", p.phase)
    });
    format!("{} {}", job.unwrap_or_else(|| "job(null)".into()), pod.unwrap_or_else(|| "pod(null)".into()))
}

/// Sub-view events: a session's runner, a project's settings.
fn is_subview(b: &StatusBody) -> bool {
    matches!(b, StatusBody::SessionRunner(_) | StatusBody::ProjectSettings(_))
}

/// The events about one object itself (changed, phase, deleted), in order: not its runner or
/// settings views (see [`runner_views`], [`settings_views`]).
pub fn of<'a>(evs: &'a [Stored], kind: &str, name: &str) -> Vec<&'a Stored> {
    evs.iter()
        .filter(|s| s.event.body.kind().as_str() == kind && s.event.name == name && !is_subview(&s.event.body))
        .collect()
}

/// The runner views of session `name`, in order, with their stored messages.
pub fn runner_views<'a>(evs: &'a [Stored], name: &str) -> Vec<(&'a Stored, &'a RunnerView)> {
    evs.iter()
        .filter(|s| s.event.name == name)
        .filter_map(|s| match &s.event.body {
            StatusBody::SessionRunner(v) => Some((s, v)),
            _ => None,
        })
        .collect()
}

/// The settings views of `project`, in order.
pub fn settings_views<'a>(evs: &'a [Stored], project: &str) -> Vec<(&'a Stored, &'a SettingsView)> {
    evs.iter()
        .filter(|s| s.event.name == project)
        .filter_map(|s| match &s.event.body {
            StatusBody::ProjectSettings(v) => Some((s, v)),
            _ => None,
        })
        .collect()
}

/// Creates the runner Job of `session` as the reconciler does (name `<session>-job`, labels
/// `agentic-session` and `ambient-code.io/run` on the Job and its pods, owned by the session);
/// kwok runs its pod for `run_for` (e.g. `3s`). `env` goes into the container (and must never be
/// projected), `env_secret` is referenced with `envFrom`.
pub async fn create_runner_job(
    env: &TestEnv,
    ns: &str,
    session: &AgenticSession,
    run: i64,
    run_for: &str,
    env_value: &str,
    env_secret: Option<&str>,
) -> anyhow::Result<k8s_openapi::api::batch::v1::Job> {
    let name = session.metadata.name.clone().unwrap_or_default();
    let labels = serde_json::json!({"agentic-session": name, "app": "ambient-code-runner", "ambient-code.io/run": run.to_string()});
    let env_from: Vec<serde_json::Value> =
        env_secret.iter().map(|s| serde_json::json!({"secretRef": {"name": s, "optional": true}})).collect();
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-job"), "labels": labels, "ownerReferences": [{
            "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSession", "name": name,
            "uid": session.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600, "template": {
            "metadata": {"labels": labels},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false, "containers": [{
                "name": "ambient-code-runner", "image": "example.invalid/runner:test",
                "env": [
                    {"name": "KWOK_RUN_DURATION", "value": run_for},
                    {"name": "PROMPT", "value": "summarise the repository"},
                    {"name": "API_KEY", "value": env_value},
                ],
                "envFrom": env_from}]}}}
    }))?;
    Ok(Api::namespaced(env.admin(), ns).create(&PostParams::default(), &job).await?)
}

/// Removes a session's runner Job and its pods as the reconciler's stop does.
pub async fn delete_runner_job(env: &TestEnv, ns: &str, session: &str) -> anyhow::Result<()> {
    let job = format!("{session}-job");
    Api::<k8s_openapi::api::batch::v1::Job>::namespaced(env.admin(), ns)
        .delete(&job, &DeleteParams::background())
        .await?;
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.admin(), ns)
        .delete_collection(
            &DeleteParams::background(),
            &kube::api::ListParams::default().labels(&format!("job-name={job}")),
        )
        .await?;
    Ok(())
}

/// Creates or replaces the project's ProjectSettings spec.
pub async fn put_settings(env: &TestEnv, ns: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    let api = Api::<events::crd::ProjectSettings>::namespaced(env.admin(), ns);
    let ps = serde_json::json!({
        "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "ProjectSettings",
        "metadata": {"name": "projectsettings"}, "spec": spec,
    });
    api.patch("projectsettings", &PatchParams::apply("ambient-tests").force(), &Patch::Apply(&ps)).await?;
    Ok(())
}

/// Short type names (`changed`, `phase`, `deleted`) of `evs`.
pub fn kinds(evs: &[&Stored]) -> Vec<String> {
    evs.iter().map(|s| s.event.body.type_str().split('.').nth(2).unwrap_or("").to_string()).collect()
}

/// `(previous, new)` of every phase event.
pub fn transitions(evs: &[&Stored]) -> Vec<(Option<Phase>, Phase)> {
    evs.iter()
        .filter_map(|s| match &s.event.body {
            StatusBody::SessionPhase(t) => Some((t.previous_phase, t.phase)),
            _ => None,
        })
        .collect()
}

/// Read-model values of `project`: `(bucket, key, value)`.
pub async fn kv_entries(env: &TestEnv, project: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for bucket in [events::streams::PROJECTS_BUCKET, events::streams::SESSIONS_BUCKET, events::streams::ACCESS_BUCKET] {
        let kv = env.jetstream().get_key_value(bucket).await?;
        let mut keys = kv.keys().await?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k?;
            if k == project || k.starts_with(&format!("{project}.")) {
                names.push(k);
            }
        }
        for k in names {
            if let Some(v) = kv.get(k.as_str()).await? {
                out.push((bucket.to_string(), k, String::from_utf8_lossy(&v).to_string()));
            }
        }
    }
    Ok(out)
}

/// Asserts ids are unique.
pub fn assert_unique_ids(evs: &[Stored]) {
    let mut seen = std::collections::BTreeSet::new();
    for s in evs {
        assert!(seen.insert(s.event.id.clone()), "duplicate event {}:\n{}", s.event.id, summary(evs));
    }
}
