//! AgenticSession → Job `<session>-job`, whose pod runs as the project's runner ServiceAccount
//! (`controllers/limits.rs`).
//!
//! Phases: Pending → Creating (Job being created) → Running (runner pod runs) → Completed |
//! Failed (reason `Timeout` on deadline) | Stopped (on request; Job and pods deleted) | Error
//! (unusable spec). `status.run` numbers the runs: a start on a finished session bumps it, and a
//! Job of an older run (label `ambient-code.io/run`) is deleted before the new one is created.
//! Status is written only when it changed, so the controller's own writes cannot loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, ResourceRequirements, SecretEnvSource,
    SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use events::Phase;
use events::crd::{AgenticSession, PROJECT_SETTINGS_NAME, ProjectSettings, RunnerBounds, RunnerResources};
use events::secrets::INTEGRATION_SECRET_NAME;

use super::limits::Limits;
use super::{ControllerError, Retries};
use crate::labels;
use crate::namespaces::Projects;
use crate::runs::{delete_seen_job, guarded, with_phase_conditions};

/// What the session controller runs with: the cluster, the runner image and bounds, the
/// projects and the partitions this replica owns.
pub struct Setup {
    /// Cluster client.
    pub client: kube::Client,
    /// Runner image.
    pub runner_image: String,
    /// `BACKEND_API_URL` for runners.
    pub backend_api_url: String,
    /// Periodic resync of finished sessions.
    pub resync: Duration,
    /// Managed namespaces, cached (a reconcile pass skips its namespace GET).
    pub projects: Projects,
    /// The operator's bounds on runner pods, checked again before every Job.
    pub bounds: Arc<RunnerBounds>,
    /// Every project's ResourceQuota and LimitRange, made sure of before its first Job.
    pub limits: Limits,
    /// The projects this replica looks after (the others' sessions are another replica's).
    pub shards: crate::members::Shards,
}

/// Shared state of a reconcile pass: the configuration and the runner Jobs as the controller's
/// own watch holds them, so that a pass does not GET its Job (only one the cache lacks).
struct Ctx {
    cfg: Setup,
    jobs: Store<Job>,
    retries: Retries,
    /// Each project's share of the controller's workers.
    shares: Arc<crate::fair::Shares>,
}

/// When a project holds its share of workers, its next session is looked at again after this.
const SHARE_RETRY: Duration = Duration::from_secs(1);

impl Ctx {
    /// Waits for the Job cache's first full list: before it, a missing Job would look deleted.
    async fn cache_ready(&self) -> Result<(), ControllerError> {
        self.jobs.wait_until_ready().await.map_err(|_| ControllerError::CacheClosed)
    }

    fn job(&self, ns: &str, session: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(&labels::job_name(session)).within(ns))
    }
}

/// The status fields the controller owns.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    phase: Phase,
    reason: Option<String>,
    message: Option<String>,
    start_time: Option<DateTime<Utc>>,
    completion_time: Option<DateTime<Utc>>,
    job_name: Option<String>,
    run: i64,
}

impl Observed {
    fn of(s: &AgenticSession) -> Option<Self> {
        let st = s.status.as_ref()?;
        Some(Observed {
            phase: st.phase?,
            reason: st.reason.clone(),
            message: st.message.clone(),
            start_time: st.start_time,
            completion_time: st.completion_time,
            job_name: st.job_name.clone(),
            run: st.run.unwrap_or(1),
        })
    }

    fn with(&self, phase: Phase, reason: Option<&str>, message: &str) -> Self {
        let mut next = self.clone();
        next.phase = phase;
        next.reason = reason.map(Into::into);
        next.message = Some(message.into());
        if phase.is_terminal() && next.completion_time.is_none() {
            next.completion_time = Some(Utc::now());
        }
        next
    }
}

/// Writes the owned status fields and the kstatus conditions (`runs::phase_conditions`), only
/// when something changed.
/// Writes `want` unless it is already there; returns the new version when it wrote.
async fn write_status(
    api: &Api<AgenticSession>,
    s: &AgenticSession,
    want: &Observed,
) -> Result<Option<AgenticSession>, kube::Error> {
    let generation = s.metadata.generation;
    let have = Observed::of(s);
    let observed_gen = s.status.as_ref().and_then(|st| st.observed_generation);
    let reason = want.reason.clone().unwrap_or_else(|| want.phase.as_str().to_string());
    let have_conditions: Vec<Condition> = s.status.as_ref().map(|st| st.conditions.clone()).unwrap_or_default();
    let message = want.message.as_deref().unwrap_or("");
    let (conditions, conditions_changed) =
        with_phase_conditions(have_conditions, want.phase, &reason, message, generation);
    if have.as_ref() == Some(want) && observed_gen == generation && !conditions_changed {
        return Ok(None);
    }
    let patch = guarded(
        s,
        json!({
            "phase": want.phase,
            "reason": want.reason,
            "message": want.message,
            "startTime": want.start_time,
            "completionTime": want.completion_time,
            "jobName": want.job_name,
            "run": want.run,
            "observedGeneration": generation,
            "conditions": conditions,
        }),
    );
    if let Some(old) = &have
        && old.phase != want.phase
    {
        tracing::info!(from = %old.phase, to = %want.phase, reason = ?want.reason, "session phase");
        metrics::counter!("reconciler_session_transitions_total", "to" => want.phase.as_str()).increment(1);
    }
    Ok(Some(api.patch_status(&s.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?))
}

fn owner(s: &AgenticSession) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    // controller_owner_ref uses the served apiVersion vteam.ambient-code/v1alpha1.
    s.controller_owner_ref(&()).into_iter().collect()
}

/// What the runner may get from the spec under today's bounds, or why the spec cannot run: a
/// session written straight to the cluster, or accepted before the bounds tightened, is checked
/// here against the same rule as at the api and at apply time.
fn check_runner(s: &AgenticSession, bounds: &RunnerBounds) -> Result<RunnerResources, String> {
    s.spec.check_runner(bounds).map_err(|e| e.to_string())
}

/// Why the project's runner secret cannot be used.
fn validate_secret(secret_name: &Option<String>) -> Result<(), String> {
    match secret_name {
        Some(n) if !crate::apply::runner_secret_name_ok(n) => {
            Err(format!("runner secret name {n:?} is not a valid Secret name"))
        }
        _ => Ok(()),
    }
}

/// A literal variable. The kubelet expands `$(NAME)` in `env` values with the variables defined
/// before (the runner Secret's included), so a session's variable or prompt could copy a secret
/// into a value of its choosing; `$$` is the kubelet's escape for `$`, so every value reaches
/// the runner exactly as written.
fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into().replace('$', "$$")), ..Default::default() }
}

/// The runner's environment (see reconciler/README.md, "Runner contract").
///
/// Precedence, highest first: the platform's variables (a session cannot name them; they are
/// also the only `env` entries without a duplicate), then a key of the project's runner Secret,
/// then of its integration Secret, then the session's `environmentVariables`. The kubelet gives the last of duplicate `env`
/// entries precedence and skips an optional `secretKeyRef` whose Secret or key is missing, so
/// each session variable is followed by optional references to the integration Secret's and
/// the runner Secret's key of the same name: a Secret wins when it has the key, at the
/// container's start (no race with a later change of the Secret), without the reconciler
/// reading the Secret. Every other key of both Secrets comes in through `envFrom`, below every
/// `env` entry.
fn runner_env(s: &AgenticSession, ns: &str, backend: &str, secret: &str) -> Vec<EnvVar> {
    let spec = &s.spec;
    let llm = spec.llm_settings.clone().unwrap_or_default().effective();
    let mut platform = vec![
        env("AGENTIC_SESSION_NAME", s.name_any()),
        env("AGENTIC_SESSION_NAMESPACE", ns),
        env("PROMPT", spec.prompt.clone()),
        env("LLM_MODEL", llm.model.unwrap_or_default()),
        env("LLM_TEMPERATURE", llm.temperature.unwrap_or_default().to_string()),
        env("LLM_MAX_TOKENS", llm.max_tokens.unwrap_or_default().to_string()),
        env("TIMEOUT", spec.timeout.to_string()),
        env("BACKEND_API_URL", backend),
        env("INTERACTIVE", spec.interactive.unwrap_or(false).to_string()),
        env("HOME", "/tmp"),
    ];
    if let Some(u) = &spec.user_context {
        platform.push(env("USER_ID", u.user_id.clone()));
        platform.push(env("USER_NAME", u.display_name.clone().unwrap_or_else(|| u.user_id.clone())));
    }
    if !spec.repos.is_empty() {
        platform.push(env("REPOS_JSON", serde_json::to_string(&spec.repos).unwrap_or_default()));
        platform.push(env("MAIN_REPO_INDEX", spec.main_repo_index.unwrap_or(0).to_string()));
    }
    // The session's own variables first, each overridden by the runner Secret's key of the
    // same name; platform names never reach here (refused by check_runner), skipped if they do.
    let mut out: Vec<EnvVar> = Vec::with_capacity(2 * spec.environment_variables.len() + platform.len());
    for (k, v) in spec.environment_variables.iter().filter(|(k, _)| !platform.iter().any(|p| &p.name == *k)) {
        out.push(env(k, v.clone()));
        // The integration secret, then the runner secret (the later entry wins).
        for from in [INTEGRATION_SECRET_NAME, secret] {
            out.push(EnvVar {
                name: k.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector { name: from.into(), key: k.clone(), optional: Some(true) }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    out.extend(platform);
    out
}

/// The runner container's resources: an override is its request and its limit (the project's
/// LimitRange supplies whatever is not overridden), written in canonical form from the checked
/// amounts.
fn container_resources(r: &RunnerResources) -> Option<ResourceRequirements> {
    let mut q = BTreeMap::new();
    if let Some(c) = r.cpu {
        q.insert("cpu".to_string(), Quantity(c.cpu_string()));
    }
    if let Some(m) = r.memory {
        q.insert("memory".to_string(), Quantity(m.memory_string()));
    }
    (!q.is_empty()).then(|| ResourceRequirements { requests: Some(q.clone()), limits: Some(q), ..Default::default() })
}

fn build_job(cfg: &Setup, s: &AgenticSession, ns: &str, run: i64, secret: &str, resources: &RunnerResources) -> Job {
    let session = s.name_any();
    let job_labels: BTreeMap<String, String> = crate::apply::string_map([
        (labels::SESSION_LABEL, session.as_str()),
        (labels::APP, "ambient-code-runner"),
        (labels::RUN_LABEL, run.to_string().as_str()),
    ]);

    Job {
        metadata: ObjectMeta {
            name: Some(labels::job_name(&session)),
            namespace: Some(ns.into()),
            labels: Some(job_labels.clone()),
            owner_references: Some(owner(s)),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(s.spec.timeout),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(job_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // The project's runner ServiceAccount holds no rights; the token the kubelet
                    // mounts is bound to this pod, and the api lets it report on the session
                    // whose Job owns the pod (PUT …/status), nothing else.
                    service_account_name: Some(events::crd::runner::SERVICE_ACCOUNT.into()),
                    automount_service_account_token: Some(true),
                    // Only a class on the operator's allow-list; none: the cluster's default.
                    priority_class_name: resources.priority_class.clone(),
                    containers: vec![Container {
                        name: events::crd::runner::CONTAINER.into(),
                        image: Some(cfg.runner_image.clone()),
                        env: Some(runner_env(s, ns, &cfg.backend_api_url, secret)),
                        // Of a key in both, the runner secret's value (the last source wins).
                        env_from: Some(
                            [INTEGRATION_SECRET_NAME, secret]
                                .into_iter()
                                .map(|name| EnvFromSource {
                                    secret_ref: Some(SecretEnvSource { name: name.into(), optional: Some(true) }),
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                        resources: container_resources(resources),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True")
}

async fn reconcile(s: Arc<AgenticSession>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let span = tracing::info_span!("session", project = %s.namespace().unwrap_or_default(), session = %s.name_any());
    let key = retry_key(&s);
    // Another replica's project; should it become ours, the change of partitions brings it back.
    if !ctx.cfg.shards.owns(&s.namespace().unwrap_or_default()) {
        return Ok(Action::await_change());
    }
    // A project with many sessions to reconcile (a flood of creates) must not take every
    // worker: past its share, its sessions wait and other projects' go first.
    let Some(_share) = ctx.shares.try_enter(&s.namespace().unwrap_or_default()) else {
        return Ok(Action::requeue(SHARE_RETRY));
    };
    // Instrument, never enter: an entered guard held across awaits leaks into other tasks.
    let result = tracing::Instrument::instrument(reconcile_session(s, ctx.clone()), span).await;
    if result.is_ok() {
        ctx.retries.succeeded(&key);
    }
    match result {
        // Our view was stale (a command or the runner wrote first); the watch brings the new
        // version, and the short requeue covers a missed event.
        Err(ControllerError::Kube(kube::Error::Api(e))) if e.code == 409 && e.reason == "Conflict" => {
            tracing::debug!("session changed while reconciling; recomputing");
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        other => other,
    }
}

async fn reconcile_session(s: Arc<AgenticSession>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    if s.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.cfg.client;
    let resync = ctx.cfg.resync;
    let api = Api::<AgenticSession>::namespaced(client.clone(), &ns);
    // Sessions outside projects are not ours.
    if !ctx.cfg.projects.is_managed(&ns).await? {
        return Ok(Action::await_change());
    }
    ctx.cache_ready().await?;
    // A new session (no status yet) reads as Pending everywhere; this pass moves it on at once,
    // so Pending is not written on its own (one write less per session on a busy API server).
    let cur = Observed::of(&s).unwrap_or_else(|| Observed {
        phase: Phase::Pending,
        reason: None,
        message: Some("waiting to run".into()),
        start_time: None,
        completion_time: None,
        job_name: None,
        run: s.status.as_ref().and_then(|st| st.run).unwrap_or(1),
    });
    let job_name = labels::job_name(&name);
    let job = match ctx.job(&ns, &name) {
        Some(j) => Some(j),
        // The Job watch may not show a Job created a moment ago yet: ask before creating it
        // again or calling it gone.
        None if matches!(cur.phase, Phase::Creating | Phase::Running) => {
            Api::<Job>::namespaced(client.clone(), &ns).get_opt(&job_name).await?.map(Arc::new)
        }
        None => None,
    };
    let seen = job.as_deref().map(JobSeen::of);
    let runner = check_runner(&s, &ctx.cfg.bounds);
    let then = |wait: Wait| {
        Action::requeue(match wait {
            Wait::Resync => resync,
            Wait::Watch => WATCH_BACKSTOP,
            Wait::Soon => Duration::from_secs(1),
        })
    };
    match plan(&cur, seen.as_ref(), &job_name, runner.as_ref().map(|_| ()), s.spec.timeout) {
        Plan::Wait(wait) => Ok(then(wait)),
        Plan::Record { status, then: wait } => {
            write_status(&api, &s, &status).await?;
            Ok(then(wait))
        }
        Plan::RemoveJob { status, then: wait } => {
            if let Some(j) = &job {
                delete_seen_job(client, &ns, j).await?;
            }
            write_status(&api, &s, &status).await?;
            Ok(then(wait))
        }
        Plan::StartRun { creating } => {
            // `plan` starts a run only with a runnable spec.
            let Ok(resources) = runner else { return Ok(then(Wait::Resync)) };
            // Recording Creating and reading the project's settings do not depend on each
            // other: one round trip's wait instead of two (a crash in between leaves nothing the
            // next pass does not redo idempotently).
            let settings = Api::<ProjectSettings>::namespaced(client.clone(), &ns);
            // No runner pod before its project's quota, limits and runner ServiceAccount
            // (normally there long before).
            let (settings, written, ()) = tokio::try_join!(
                settings.get_opt(PROJECT_SETTINGS_NAME),
                write_status(&api, &s, &creating),
                ctx.cfg.limits.ensure(&ns),
            )?;
            let latest = written.as_ref().unwrap_or(&s);
            let secret = settings.and_then(|ps| ps.spec.runner_secrets_name);
            if let Err(msg) = validate_secret(&secret) {
                write_status(&api, latest, &creating.with(Phase::Error, Some("InvalidSpec"), &msg)).await?;
                return Ok(then(Wait::Resync));
            }
            let secret = secret.unwrap_or_else(|| events::secrets::RUNNER_SECRET_NAME.into());
            let job = build_job(&ctx.cfg, &s, &ns, cur.run, &secret, &resources);
            match Api::<Job>::namespaced(client.clone(), &ns).create(&PostParams::default(), &job).await {
                Ok(_) => {}
                // Created by an earlier pass (not a quota race's 409: that one is retried).
                Err(e) if crate::error::already_exists(&e) => {}
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    let msg = format!("the runner Job is invalid: {}", e.message);
                    write_status(&api, latest, &creating.with(Phase::Error, Some("InvalidSpec"), &msg)).await?;
                    return Ok(then(Wait::Resync));
                }
                Err(e) => return Err(e.into()),
            }
            // The Job watch brings what happens next; the requeue only backs it up.
            Ok(then(Wait::Watch))
        }
    }
}

/// What a pass saw of the session's runner Job.
#[derive(Debug, Clone, PartialEq, Default)]
struct JobSeen {
    /// The run it belongs to (label `ambient-code.io/run`).
    run: i64,
    /// Being deleted.
    deleting: bool,
    /// Condition `Complete` holds.
    complete: bool,
    /// Condition `Failed` holds: its reason and message.
    failed: Option<(Option<String>, Option<String>)>,
    /// A pod of it is ready (the runner has no readiness probe: ready once started).
    ready: bool,
}

impl JobSeen {
    fn of(job: &Job) -> Self {
        JobSeen {
            run: job.labels().get(labels::RUN_LABEL).and_then(|r| r.parse::<i64>().ok()).unwrap_or(1),
            deleting: job.metadata.deletion_timestamp.is_some(),
            complete: job_condition(job, "Complete").is_some(),
            failed: job_condition(job, "Failed").map(|c| (c.reason.clone(), c.message.clone())),
            ready: job.status.as_ref().and_then(|st| st.ready).unwrap_or(0) > 0,
        }
    }
}

/// When a pass looks at the session again (besides the watch events that wake it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// After the periodic resync: nothing is expected to happen.
    Resync,
    /// After [`WATCH_BACKSTOP`]: the Job watch brings what happens next.
    Watch,
    /// In a second: the previous run's Job is going.
    Soon,
}

/// What one pass does, decided by [`plan`] from what it saw and carried out by
/// `reconcile_session`.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// Nothing to change.
    Wait(Wait),
    /// Record `status` (written only when it differs).
    Record { status: Observed, then: Wait },
    /// Delete the Job the pass saw (and its pods), then record `status`.
    RemoveJob { status: Observed, then: Wait },
    /// Record `creating` and create the run's Job (after the project's runner objects and
    /// settings are read; the runner secret's name can still make it an Error).
    StartRun { creating: Observed },
}

/// The session controller's decision, from the session's status as it stands (`cur`), the Job
/// it saw, whether its spec can run (`runner`) and its timeout in seconds. Pure: table-tested.
fn plan(cur: &Observed, job: Option<&JobSeen>, job_name: &str, runner: Result<(), &String>, timeout: i64) -> Plan {
    match cur.phase {
        Phase::Stopped if job.is_some() => return Plan::RemoveJob { status: cur.clone(), then: Wait::Resync },
        Phase::Stopped | Phase::Completed | Phase::Failed | Phase::Error => {
            return Plan::Record { status: cur.clone(), then: Wait::Resync };
        }
        Phase::Pending | Phase::Creating | Phase::Running => {}
    }
    let Some(job) = job else {
        if cur.phase == Phase::Running {
            let status = cur.with(Phase::Failed, Some("JobMissing"), "the runner Job disappeared");
            return Plan::Record { status, then: Wait::Resync };
        }
        if let Err(msg) = runner {
            return Plan::Record { status: cur.with(Phase::Error, Some("InvalidSpec"), msg), then: Wait::Resync };
        }
        let creating = cur.with(Phase::Creating, None, "creating the runner Job");
        return Plan::StartRun { creating: Observed { job_name: Some(job_name.into()), ..creating } };
    };
    // A Job of an earlier run goes first (start on a finished session).
    if job.run != cur.run || job.deleting {
        let status = Observed {
            start_time: None,
            completion_time: None,
            ..cur.with(Phase::Pending, None, "previous run being removed")
        };
        return Plan::RemoveJob { status, then: Wait::Soon };
    }
    let base = Observed { job_name: Some(job_name.into()), ..cur.clone() };
    if job.complete {
        return Plan::Record {
            status: base.with(Phase::Completed, Some("Completed"), "the runner finished"),
            then: Wait::Resync,
        };
    }
    if let Some((reason, message)) = &job.failed {
        let status = if reason.as_deref() == Some("DeadlineExceeded") {
            base.with(Phase::Failed, Some("Timeout"), &format!("the run exceeded its timeout of {timeout}s"))
        } else {
            base.with(Phase::Failed, Some("RunnerFailed"), message.as_deref().unwrap_or("the runner failed"))
        };
        return Plan::Record { status, then: Wait::Resync };
    }
    if job.ready {
        // While it runs, the runner's own progress message (PUT …/status) stays; ours only
        // marks the transition into Running.
        let mut status =
            if cur.phase == Phase::Running { base } else { base.with(Phase::Running, None, "the runner is running") };
        status.start_time = status.start_time.or_else(|| Some(Utc::now()));
        return Plan::Record { status, then: Wait::Watch };
    }
    if cur.phase == Phase::Pending {
        return Plan::Record {
            status: base.with(Phase::Creating, None, "waiting for the runner pod"),
            then: Wait::Watch,
        };
    }
    Plan::Wait(Wait::Watch)
}

/// Requeue of a session waiting on its runner. The Job watch wakes it on every change; this only
/// bounds the wait should an event be missed.
const WATCH_BACKSTOP: Duration = Duration::from_secs(30);

fn retry_key(s: &AgenticSession) -> String {
    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
}

fn error_policy(s: Arc<AgenticSession>, e: &ControllerError, ctx: Arc<Ctx>) -> Action {
    let retry_in = ctx.retries.failed(&retry_key(&s));
    tracing::warn!(project = ?s.namespace(), session = %s.name_any(), error = %e, retry_in_ms = retry_in.as_millis() as u64, "session reconcile failed");
    Action::requeue(retry_in)
}

/// Keeps what the controller reads of a runner Job: its name, labels, owner and status. The
/// pod template (the prompt and environment of every session) would be most of the cache.
fn job_view(job: &mut Job) {
    job.metadata.managed_fields = None;
    job.metadata.annotations = None;
    job.spec = None;
}

/// Keeps all of a session but its field-manager bookkeeping, which no pass reads and which is a
/// large part of an object that several managers write.
fn session_view(s: &mut AgenticSession) {
    s.metadata.managed_fields = None;
}

/// Runs the session controller until `stop` is cancelled.
///
/// Sessions and their Jobs (by owner) trigger reconciles; both are cached, trimmed, for the
/// reconcile passes to read.
pub async fn run(cfg: Setup, concurrency: u16, stop: CancellationToken) {
    let client = cfg.client.clone();
    let runners = watcher::Config::default().labels(labels::SESSION_LABEL);
    let (jobs, job_events) = super::trimmed_watch(Api::<Job>::all(client.clone()), runners, job_view);
    let job_events = job_events.touched_objects();
    let (sessions, session_events) =
        super::trimmed_watch(Api::<AgenticSession>::all(client), watcher::Config::default(), session_view);
    let session_events = session_events.applied_objects();
    let shares = crate::fair::Shares::new(usize::from(concurrency / 2));
    let gained = cfg.shards.changes();
    let ctx = Arc::new(Ctx { cfg, jobs, retries: Retries::default(), shares });
    Controller::for_stream(session_events, sessions)
        .owns_stream(job_events)
        .reconcile_all_on(gained)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "session controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::crd::{AgenticSessionSpec, RUNNER_PLATFORM_ENV};

    fn session(spec: serde_json::Value) -> AgenticSession {
        let spec: AgenticSessionSpec = serde_json::from_value(spec).unwrap();
        AgenticSession::new("s1", spec)
    }

    fn observed(phase: Phase, run: i64) -> Observed {
        Observed { phase, reason: None, message: None, start_time: None, completion_time: None, job_name: None, run }
    }

    /// What a plan does: its kind, the phase and reason it records, when it looks again.
    type Outcome = (&'static str, Option<Phase>, Option<String>, Option<Wait>);

    /// A case: what, the phase and run recorded, the Job seen, whether the spec can run, and
    /// the outcome wanted.
    type Case<'a> = (&'a str, Phase, i64, Option<&'a JobSeen>, Result<(), &'a String>, Outcome);

    fn outcome(p: &Plan) -> Outcome {
        match p {
            Plan::Wait(w) => ("wait", None, None, Some(*w)),
            Plan::Record { status, then } => ("record", Some(status.phase), status.reason.clone(), Some(*then)),
            Plan::RemoveJob { status, then } => ("remove job", Some(status.phase), status.reason.clone(), Some(*then)),
            Plan::StartRun { creating } => ("start run", Some(creating.phase), creating.reason.clone(), None),
        }
    }

    #[test]
    fn the_session_plan() {
        use Phase::*;
        let job = |run: i64| JobSeen { run, ..Default::default() };
        let ready = JobSeen { ready: true, ..job(1) };
        let complete = JobSeen { complete: true, ..job(1) };
        let deadline = JobSeen { failed: Some((Some("DeadlineExceeded".into()), None)), ..job(1) };
        let crashed = JobSeen { failed: Some((Some("BackoffLimitExceeded".into()), Some("exit 1".into()))), ..job(1) };
        let deleting = JobSeen { deleting: true, ..job(1) };
        let run1 = job(1);
        let bad = "spec.x: invalid".to_string();
        let r = |s: &str| Some(s.to_string());
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("a new session starts its run", Pending, 1, None, Ok(()), ("start run", Some(Creating), None, None)),
            ("an unrunnable spec is an Error", Pending, 1, None, Err(&bad), ("record", Some(Error), r("InvalidSpec"), Some(Wait::Resync))),
            ("a Creating session whose Job is not seen creates it (409 if it exists)", Creating, 1, None, Ok(()), ("start run", Some(Creating), None, None)),
            ("a Running session without its Job failed", Running, 1, None, Ok(()), ("record", Some(Failed), r("JobMissing"), Some(Wait::Resync))),
            ("a Job created, no pod ready yet: Creating", Pending, 1, Some(&run1), Ok(()), ("record", Some(Creating), None, Some(Wait::Watch))),
            ("still waiting for the pod", Creating, 1, Some(&run1), Ok(()), ("wait", None, None, Some(Wait::Watch))),
            ("a ready pod: Running", Creating, 1, Some(&ready), Ok(()), ("record", Some(Running), None, Some(Wait::Watch))),
            ("running on", Running, 1, Some(&ready), Ok(()), ("record", Some(Running), None, Some(Wait::Watch))),
            ("the Job completed", Running, 1, Some(&complete), Ok(()), ("record", Some(Completed), r("Completed"), Some(Wait::Resync))),
            ("the deadline passed: Timeout", Running, 1, Some(&deadline), Ok(()), ("record", Some(Failed), r("Timeout"), Some(Wait::Resync))),
            ("the runner failed", Running, 1, Some(&crashed), Ok(()), ("record", Some(Failed), r("RunnerFailed"), Some(Wait::Resync))),
            ("a start after a finished run removes the old Job first", Pending, 2, Some(&run1), Ok(()), ("remove job", Some(Pending), None, Some(Wait::Soon))),
            ("a Job being deleted is waited out", Creating, 1, Some(&deleting), Ok(()), ("remove job", Some(Pending), None, Some(Wait::Soon))),
            ("a stopped session's Job goes", Stopped, 1, Some(&ready), Ok(()), ("remove job", Some(Stopped), None, Some(Wait::Resync))),
            ("a stopped session stays stopped", Stopped, 1, None, Ok(()), ("record", Some(Stopped), None, Some(Wait::Resync))),
            ("a finished session keeps its Job and status", Completed, 1, Some(&complete), Ok(()), ("record", Some(Completed), None, Some(Wait::Resync))),
            ("an Error stays (a new spec is a new run)", Error, 1, None, Err(&bad), ("record", Some(Error), None, Some(Wait::Resync))),
        ];
        for (what, phase, run, seen, runner, want) in cases {
            let got = plan(&observed(phase, run), seen, "s1-job", runner, 600);
            assert_eq!(outcome(&got), want, "{what}: {got:?}");
        }
        // What a plan records carries the run's Job name, a Timeout says the timeout, and a
        // new run's times are cleared.
        let Plan::StartRun { creating } = plan(&observed(Pending, 1), None, "s1-job", Ok(()), 600) else { panic!() };
        assert_eq!(creating.job_name.as_deref(), Some("s1-job"));
        let Plan::Record { status, .. } = plan(&observed(Running, 1), Some(&deadline), "s1-job", Ok(()), 600) else {
            panic!()
        };
        assert_eq!(status.message.as_deref(), Some("the run exceeded its timeout of 600s"));
        assert!(status.completion_time.is_some());
        let finished =
            Observed { start_time: Some(Utc::now()), completion_time: Some(Utc::now()), ..observed(Pending, 2) };
        let Plan::RemoveJob { status, .. } = plan(&finished, Some(&job(1)), "s1-job", Ok(()), 600) else { panic!() };
        assert_eq!((status.start_time, status.completion_time), (None, None));
        let Plan::Record { status, .. } = plan(&observed(Creating, 1), Some(&ready), "s1-job", Ok(()), 600) else {
            panic!()
        };
        assert!(status.start_time.is_some(), "Running records when it started");
    }

    #[test]
    fn a_runner_secret_key_wins_over_a_session_variable_and_the_platform_over_both() {
        let s = session(
            serde_json::json!({"prompt": "p", "environmentVariables": {"API_KEY": "mine", "KWOK_RUN_DURATION": "1h"}}),
        );
        let env = runner_env(&s, "p1", "http://api", "runner-secret");
        let of = |name: &str| env.iter().filter(|e| e.name == name).collect::<Vec<_>>();
        for k in ["API_KEY", "KWOK_RUN_DURATION"] {
            let entries = of(k);
            assert_eq!(entries.len(), 3, "{k}: {entries:?}");
            // First the session's value, then (each overriding it when present) the integration
            // Secret's key and the runner Secret's key.
            assert_eq!(entries[0].value.as_deref(), Some(if k == "API_KEY" { "mine" } else { "1h" }));
            for (entry, secret) in entries[1..].iter().zip([INTEGRATION_SECRET_NAME, "runner-secret"]) {
                let r = entry.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("a secretKeyRef");
                assert_eq!((r.name.as_str(), r.key.as_str(), r.optional), (secret, k, Some(true)));
                assert!(entry.value.is_none());
            }
            let first = env.iter().position(|e| e.name == k).unwrap();
            assert_eq!(
                (env[first + 1].name.as_str(), env[first + 2].name.as_str()),
                (k, k),
                "the references directly follow the value"
            );
        }
        // Platform variables: exactly once each, literal, and all of them reserved in events.
        for e in &env {
            if e.name != "API_KEY" && e.name != "KWOK_RUN_DURATION" {
                assert!(
                    RUNNER_PLATFORM_ENV.contains(&e.name.as_str()),
                    "{} is set by the platform but not reserved",
                    e.name
                );
                assert_eq!(of(&e.name).len(), 1, "{}", e.name);
            }
        }
        // A platform name slipped into a spec is dropped, never duplicated.
        let s = session(serde_json::json!({"prompt": "p", "environmentVariables": {"BACKEND_API_URL": "http://evil"}}));
        let env = runner_env(&s, "p1", "http://api", "runner-secret");
        let urls: Vec<_> = env.iter().filter(|e| e.name == "BACKEND_API_URL").collect();
        assert_eq!(urls.len(), 1);
        assert_eq!(urls[0].value.as_deref(), Some("http://api"));
    }

    #[test]
    fn values_are_never_expanded_by_the_kubelet() {
        let s = session(
            serde_json::json!({"prompt": "say $(API_TOKEN)", "environmentVariables": {"X": "a$(API_TOKEN)b$$c$d"}}),
        );
        let env = runner_env(&s, "p1", "http://api", "x");
        let value = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone()).unwrap();
        assert_eq!(value("X"), "a$$(API_TOKEN)b$$$$c$$d");
        assert_eq!(value("PROMPT"), "say $$(API_TOKEN)");
    }

    #[test]
    fn every_platform_variable_is_reserved() {
        let s = session(serde_json::json!({"prompt": "p", "repos": [{"input": {"url": "https://x"}}],
            "userContext": {"userId": "alice"}}));
        for e in runner_env(&s, "p1", "http://api", "x") {
            assert!(RUNNER_PLATFORM_ENV.contains(&e.name.as_str()), "{} is not in RUNNER_PLATFORM_ENV", e.name);
        }
    }

    #[test]
    fn overrides_become_request_and_limit_in_canonical_form() {
        let bounds = RunnerBounds::default();
        let s =
            session(serde_json::json!({"prompt": "p", "resourceOverrides": {"cpu": "0.5", "memory": "1073741824"}}));
        let r = check_runner(&s, &bounds).unwrap();
        let req = container_resources(&r).unwrap();
        let want = BTreeMap::from([
            ("cpu".to_string(), Quantity("500m".into())),
            ("memory".to_string(), Quantity("1Gi".into())),
        ]);
        assert_eq!(req.requests.as_ref(), Some(&want));
        assert_eq!(req.limits.as_ref(), Some(&want));
        assert!(container_resources(&RunnerResources::default()).is_none(), "no override: the LimitRange's defaults");
        let s =
            session(serde_json::json!({"prompt": "p", "resourceOverrides": {"priorityClass": "system-node-critical"}}));
        assert!(check_runner(&s, &bounds).unwrap_err().starts_with("resourceOverrides.priorityClass:"));
    }
}
