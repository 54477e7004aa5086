//! Sessions: create, update, delete, start, stop, clone, and the runner's reports.
//!
//! Start and stop only record intent in the session's status (phase, run number, reason); the
//! session controller turns that into Jobs, level-triggered, so a crash in between loses nothing.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use events::commands::{SessionClone, SessionCreate, SessionDisplayName, SessionStatusReport, SessionUpdate};
use events::correlation::Correlation;
use events::crd::{AgenticSession, AgenticSessionSpec, AgenticSessionStatus, RunnerBounds, UserContext};
use events::{Command, Phase, Principal, SessionName};

use super::{Applied, Delivery, gone, last_command, managed_namespace};
use crate::error::ApplyError;
use crate::labels;
use crate::runs::{condition, guarded};

/// Condition recording the command that requested the current run (idempotent start).
pub const START_CONDITION: &str = "StartRequested";

fn user_context(p: &Principal) -> UserContext {
    UserContext { user_id: p.user.clone(), display_name: Some(p.user.clone()), groups: p.groups.clone() }
}

async fn get(api: &Api<AgenticSession>, name: &SessionName) -> Result<AgenticSession, ApplyError> {
    api.get_opt(name.as_str()).await?.ok_or_else(|| ApplyError::not_found(format!("session {name} not found")))
}

async fn create_session(
    api: &Api<AgenticSession>,
    ns: &str,
    name: &SessionName,
    mut spec: AgenticSessionSpec,
    cmd: &Command,
    extra: Option<(&str, String)>,
    user: Correlation,
) -> Result<Applied, ApplyError> {
    let id = cmd.id.to_string();
    // userContext always comes from the authenticated principal, never from the request.
    spec.user_context = Some(user_context(&cmd.principal));
    // The user's entries are outside the reserved prefixes (validated), so ours cannot be
    // overwritten by them.
    let mut annotations = user.annotations;
    annotations.insert(labels::LAST_COMMAND.into(), id.clone());
    if let Some((k, v)) = extra {
        annotations.insert(k.into(), v);
    }
    let session = AgenticSession {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.into()),
            labels: Some(user.labels).filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec,
        status: None,
    };
    // Create first (the common case costs one request); an existing session is ours only when
    // it records this very command, i.e. this is a redelivery after the write.
    match api.create(&PostParams::default(), &session).await {
        Ok(s) => Ok(Applied::of(&s)),
        Err(e) if crate::error::already_exists(&e) => match api.get_opt(name.as_str()).await? {
            Some(existing) if last_command(&existing) == Some(id.as_str()) => Ok(Applied::of(&existing)),
            _ => Err(ApplyError::conflict(format!("session {name} already exists"))),
        },
        Err(e) => Err(e.into()),
    }
}

/// The runner bounds, checked again at apply time (a command the api did not check, or bounds
/// that tightened since): a failed result naming the field, nothing written.
fn check_runner(spec: &AgenticSessionSpec, bounds: &RunnerBounds) -> Result<(), ApplyError> {
    spec.check_runner(bounds).map(|_| ()).map_err(|e| ApplyError::invalid(e.to_string()))
}

/// Creates a session in a project known to be managed.
pub async fn create_in_project(
    client: &kube::Client,
    cmd: &Command,
    req: &SessionCreate,
    bounds: &RunnerBounds,
) -> Result<Applied, ApplyError> {
    check_runner(&req.spec, bounds)?;
    let user = req.correlation();
    user.validate().map_err(|e| ApplyError::invalid(e.to_string()))?;
    let api = Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str());
    create_session(&api, cmd.project.as_str(), &req.name, req.spec.clone(), cmd, None, user).await
}

pub async fn update(client: &kube::Client, cmd: &Command, req: &SessionUpdate) -> Result<Applied, ApplyError> {
    let api = Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str());
    let mut s = get(&api, &req.name).await?;
    let p = &req.patch;
    if let Some(v) = &p.prompt {
        s.spec.prompt = v.clone();
    }
    if let Some(v) = &p.display_name {
        s.spec.display_name = Some(v.clone());
    }
    if let Some(v) = p.timeout {
        s.spec.timeout = v;
    }
    if let Some(v) = &p.llm_settings {
        s.spec.llm_settings = Some(v.clone());
    }
    if let Some(v) = p.interactive {
        s.spec.interactive = Some(v);
    }
    s.metadata.annotations.get_or_insert_default().insert(labels::LAST_COMMAND.into(), cmd.id.to_string());
    // Replace carries the resourceVersion: a concurrent writer makes this a retried conflict.
    let s = api.replace(req.name.as_str(), &PostParams::default(), &s).await?;
    Ok(Applied::of(&s))
}

pub async fn delete(
    client: &kube::Client,
    cmd: &Command,
    name: &SessionName,
    delivery: Delivery,
) -> Result<Applied, ApplyError> {
    let api = Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str());
    let s = match api.get_opt(name.as_str()).await? {
        Some(s) => s,
        None if delivery == Delivery::Redelivered => {
            return Ok(gone::<AgenticSession>(Some(cmd.project.as_str()), name.as_str()));
        }
        None => return Err(ApplyError::not_found(format!("session {name} not found"))),
    };
    // Background propagation: the garbage collector removes the Job and its pods (and, for a
    // session started before runners shared a ServiceAccount, its runner identity), all owned
    // by the session.
    api.delete(name.as_str(), &DeleteParams::background()).await?;
    Ok(Applied::of(&s))
}

fn phase(s: &AgenticSession) -> Option<Phase> {
    s.status.as_ref().and_then(|st| st.phase)
}

pub async fn start(client: &kube::Client, cmd: &Command, name: &SessionName) -> Result<Applied, ApplyError> {
    let api = Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str());
    let s = get(&api, name).await?;
    let id = cmd.id.to_string();
    let st = s.status.clone().unwrap_or_default();
    if st.conditions.iter().any(|c| c.type_ == START_CONDITION && c.message == id) {
        return Ok(Applied::of(&s));
    }
    match phase(&s) {
        Some(p) if p.is_terminal() => {}
        _ => return Err(ApplyError::conflict(format!("session {name} is already running"))),
    }
    let run = st.run.unwrap_or(1) + 1;
    let mut conditions: Vec<_> = st.conditions.iter().filter(|c| c.type_ != START_CONDITION).cloned().collect();
    conditions.push(condition(START_CONDITION, "True", "Command", &id, s.metadata.generation));
    let status = AgenticSessionStatus {
        phase: Some(Phase::Pending),
        message: Some(format!("run {run} requested")),
        run: Some(run),
        conditions,
        observed_generation: st.observed_generation,
        ..Default::default()
    };
    let mut next = s.clone();
    next.status = Some(status);
    // Replace (not patch) so a concurrent status write makes this a retried conflict and the
    // runner's result fields of the previous run are cleared.
    let s = api.replace_status(name.as_str(), &PostParams::default(), &next).await?;
    Ok(Applied::of(&s))
}

pub async fn stop(client: &kube::Client, cmd: &Command, name: &SessionName) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    let api = Api::<AgenticSession>::namespaced(client.clone(), ns);
    let s = get(&api, name).await?;
    let s = match phase(&s) {
        Some(Phase::Stopped) => s,
        Some(p) if p.is_terminal() => return Err(ApplyError::conflict(format!("session {name} is not running ({p})"))),
        _ => {
            // Guarded: a concurrent status write (409) makes this a retried transient failure.
            let patch = guarded(
                &s,
                json!({
                    "phase": "Stopped",
                    "reason": "StopRequested",
                    "message": "stopped on request",
                    "completionTime": chrono::Utc::now(),
                }),
            );
            api.patch_status(name.as_str(), &PatchParams::default(), &Patch::Merge(patch)).await?
        }
    };
    // The controller also does this (level-triggered); doing it now makes stop prompt.
    delete_job_and_pods(client, ns, name.as_str()).await?;
    Ok(Applied::of(&s))
}

/// Deletes a session's Job and its pods (the Job API's default would orphan them).
pub async fn delete_job_and_pods(client: &kube::Client, ns: &str, session: &str) -> Result<(), kube::Error> {
    let job = labels::job_name(session);
    match Api::<Job>::namespaced(client.clone(), ns).delete(&job, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete_collection(&DeleteParams::background(), &ListParams::default().labels(&format!("job-name={job}")))
        .await?;
    Ok(())
}

pub async fn clone(
    client: &kube::Client,
    cmd: &Command,
    req: &SessionClone,
    bounds: &RunnerBounds,
) -> Result<Applied, ApplyError> {
    let src = get(&Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str()), &req.name).await?;
    check_runner(&src.spec, bounds)?;
    managed_namespace(client, &req.target_project).await?;
    let api = Api::<AgenticSession>::namespaced(client.clone(), req.target_project.as_str());
    let from = format!("{}/{}", cmd.project, req.name);
    create_session(
        &api,
        req.target_project.as_str(),
        &req.new_session_name,
        src.spec.clone(),
        cmd,
        Some((labels::CLONED_FROM, from)),
        // The copy is about the same thing: it keeps the source's labels and annotations.
        Correlation::of(src.labels(), src.annotations()),
    )
    .await
}

pub async fn report_status(
    client: &kube::Client,
    cmd: &Command,
    req: &SessionStatusReport,
) -> Result<Applied, ApplyError> {
    let api = Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str());
    let s = get(&api, &req.name).await?;
    let r = &req.status;
    let mut status = serde_json::Map::new();
    if let Some(p) = r.phase {
        if !matches!(p, Phase::Running | Phase::Completed | Phase::Failed) {
            return Err(ApplyError::invalid(format!("a runner may report Running, Completed or Failed, not {p}")));
        }
        // A finished or stopped run stays as it is; the Job decides otherwise.
        if !phase(&s).is_some_and(Phase::is_terminal) {
            status.insert("phase".into(), json!(p));
            if p.is_terminal() {
                status.insert("completionTime".into(), json!(chrono::Utc::now()));
            }
        }
    }
    let fields = serde_json::to_value(r).map_err(|e| ApplyError::invalid(e.to_string()))?;
    if let serde_json::Value::Object(m) = fields {
        for (k, v) in m {
            if k != "phase" {
                status.insert(k, v);
            }
        }
    }
    let s =
        api.patch_status(req.name.as_str(), &PatchParams::default(), &Patch::Merge(guarded(&s, status.into()))).await?;
    Ok(Applied::of(&s))
}

pub async fn display_name(
    client: &kube::Client,
    cmd: &Command,
    req: &SessionDisplayName,
) -> Result<Applied, ApplyError> {
    let api = Api::<AgenticSession>::namespaced(client.clone(), cmd.project.as_str());
    get(&api, &req.name).await?;
    let patch = json!({
        "metadata": {"annotations": {labels::LAST_COMMAND: cmd.id.to_string()}},
        "spec": {"displayName": req.display_name},
    });
    let s = api.patch(req.name.as_str(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(Applied::of(&s))
}
