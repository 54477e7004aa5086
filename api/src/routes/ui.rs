//! Routes the existing Ambient web UI (the Next.js frontend of `ambient-code/vTeam`) calls that
//! are not part of SPEC §3: cluster facts, the runner's Kubernetes resources, and the features
//! this platform does not offer (workflows, a git workspace, content pods, the GitHub App).
//!
//! Why each answer is what it is (research: `notes/ui-routes.md`):
//!
//! - The UI's Next proxies force `Content-Type: application/json` and several re-issue our
//!   answer with `new Response(text, {status})` without a try/catch: an empty body becomes a
//!   `SyntaxError` shown as the error text, and a 204 makes the proxy itself fail with 500. So
//!   every route here answers with a JSON body, never 204.
//! - Reads the UI makes on page load (`git/status`, `workflows/ootb`, `k8s-resources` every 5 s,
//!   …) get **200 with an empty, well-formed body**: the feature then renders as absent ("None",
//!   no changes, no PVC) and nothing is logged or toasted.
//! - Actions a user clicks get **404 `{"error": "<X> is not available on this platform",
//!   "code": "not_available"}`**: the UI toasts `error`, carries `code` into its
//!   `ApiClientError`, and SPEC §7 forbids 5xx (so not 501) for client input.
//! - The one automatic action, `spawn-content-pod` (fired when a finished session's page opens),
//!   answers the only shape that shows no toast and starts no 30 s polling: `exists` + `ready`.
//! - Session-scoped routes authorize exactly like `GET` of the session (the project is visible,
//!   `get agenticsessions/<s>`, the session exists): a stranger gets the same 404 as for the
//!   session, and for the project, itself. Nothing here changes anything, so no further right is
//!   exercised; a click-only action answers `not_available` to anyone who can see the session.
//! - `cluster-info` and `workflows/ootb` are public: the UI's proxies send no identity at all for
//!   them. They carry no tenant data, extract no `Caller` (so nothing is charged to a
//!   principal), and like every request without a token they take a cell of the client
//!   address's pre-authentication bucket (`limits::per_address`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use events::crd::{AgenticSession, GROUP};
use events::status::{ContainerState, RunnerJob, RunnerView};
use events::{ProjectName, SessionName};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::authz::check;
use crate::errors::ApiError;
use crate::state::AppState;

/// OpenAPI tag of these routes (also keeps them out of the command-publishing documentation in
/// `limits_doc`: none of them publishes anything).
pub const TAG: &str = "ui";

/// The API group whose presence makes a cluster OpenShift (what the UI's `isOpenShift` means).
const OPENSHIFT_PROJECT_GROUP: &str = "project.openshift.io";

/// Discovers `isOpenShift` from the API server's group list, retrying until it answers once
/// (a cluster does not become OpenShift while the api runs).
pub async fn discover_cluster(st: Arc<AppState>) {
    let mut wait = Duration::from_secs(1);
    loop {
        match st.kube.list_api_groups().await {
            Ok(groups) => {
                let openshift = groups.groups.iter().any(|g| g.name == OPENSHIFT_PROJECT_GROUP);
                st.ui.discovered(openshift);
                tracing::info!(openshift, "cluster discovered");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "API discovery failed; isOpenShift is false until it succeeds"),
        }
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

/// The session `s` of project `p` if the caller may read it: the same checks and the same 404s
/// as `GET …/agentic-sessions/{session}`.
async fn readable_session(st: &AppState, caller: &Caller, p: &str, s: &str) -> Result<Arc<AgenticSession>, ApiError> {
    st.visible_project(caller, p).await?;
    let s = SessionName::new(s).map_err(|_| ApiError::NotFound("session not found".into()))?;
    st.require(caller, &[check(p, "get", GROUP, "agenticsessions", Some(s.as_str()))]).await?;
    st.reads.session(p, s.as_str()).ok_or_else(|| ApiError::NotFound("session not found".into()))
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

/// Whether the cluster is OpenShift and whether the runner uses Vertex AI (public: the UI's proxy
/// sends no identity).
#[utoipa::path(get, path = "/api/cluster-info", tag = "ui",
    responses((status = 200, description = "`{isOpenShift, vertexEnabled}`: `isOpenShift` from API discovery (the `project.openshift.io` group), `vertexEnabled` from `--vertex-enabled`"),
        (status = 429, description = "too many requests from this client address")))]
pub async fn cluster_info(State(st): State<Arc<AppState>>) -> Response {
    ok(json!({"isOpenShift": st.ui.is_openshift(), "vertexEnabled": st.config.vertex_enabled}))
}

/// Out-of-the-box workflows: none on this platform (public: the UI's proxy sends no identity).
#[utoipa::path(get, path = "/api/workflows/ootb", tag = "ui",
    responses((status = 200, description = "`{workflows: []}`"), (status = 429, description = "too many requests from this client address")))]
pub async fn ootb_workflows() -> Response {
    ok(json!({"workflows": []}))
}

/// GitHub App connection of the caller: never connected on this platform.
#[utoipa::path(get, path = "/api/auth/github/status", tag = "ui",
    responses((status = 200, description = "`{installed: false}`"), (status = 401, description = "no or invalid token")))]
pub async fn github_status(_caller: Caller) -> Response {
    ok(json!({"installed": false}))
}

/// Connecting a GitHub App installation: not offered.
#[utoipa::path(post, path = "/api/auth/github/install", tag = "ui",
    responses((status = 404, description = "`{error, code: \"not_available\"}`"), (status = 401, description = "no or invalid token")))]
pub async fn github_install(_caller: Caller) -> ApiError {
    ApiError::NotAvailable("GitHub App integration is not available on this platform")
}

/// Disconnecting GitHub: nothing is connected, so there is nothing to do.
#[utoipa::path(post, path = "/api/auth/github/disconnect", tag = "ui",
    responses((status = 200, description = "`{message}`"), (status = 401, description = "no or invalid token")))]
pub async fn github_disconnect(_caller: Caller) -> Response {
    ok(json!({"message": "GitHub is not connected"}))
}

/// The session's runner Job and its newest pod, from the projector's read model (the runner
/// view also carried by the session's event stream); no PVC on this platform.
#[utoipa::path(get, path = "/api/projects/{project}/agentic-sessions/{session}/k8s-resources", tag = "ui",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
    responses((status = 200, description = "`{jobName, jobStatus?, jobConditions?, pods: [{name, phase, containers: [{name, state, exitCode?, reason?}]}], pvcName: \"\", pvcExists: false}`"),
        (status = 404, description = "project or session not found"), (status = 503, description = "the read model is unavailable")))]
pub async fn k8s_resources(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let session = readable_session(&st, &caller, &p, &s).await?;
    let view = st.runner_views.of(st.commands.jetstream(), &p, &session).await?;
    Ok(ok(k8s_resources_json(&session, view.as_ref())))
}

/// The Go backend's `k8s-resources` shape from a runner view (job fields only while a Job exists).
fn k8s_resources_json(session: &AgenticSession, view: Option<&RunnerView>) -> Value {
    let status_job = session.status.as_ref().and_then(|s| s.job_name.clone()).unwrap_or_default();
    let job = view.and_then(|v| v.job.as_ref());
    let mut out = json!({
        "jobName": job.map(|j| j.name.clone()).unwrap_or(status_job),
        "pods": [],
        "pvcName": "",
        "pvcExists": false,
    });
    if let Some(j) = job {
        out["jobStatus"] = json!(job_status(j));
        out["jobConditions"] = j.conditions.iter().map(|c| json!({"type": c.type_, "reason": c.reason})).collect();
    }
    if let Some(pod) = view.and_then(|v| v.pod.as_ref()).filter(|_| job.is_some()) {
        let containers: Vec<Value> = pod
            .container
            .iter()
            .map(|c| {
                let state = match c.state {
                    ContainerState::Waiting => "Waiting",
                    ContainerState::Running => "Running",
                    ContainerState::Terminated => "Terminated",
                };
                let mut v = json!({"name": c.name, "state": state});
                if let Some(code) = c.exit_code {
                    v["exitCode"] = json!(code);
                }
                if let Some(r) = &c.reason {
                    v["reason"] = json!(r);
                }
                v
            })
            .collect();
        out["pods"] = json!([{"name": pod.name, "phase": pod.phase, "containers": containers}]);
    }
    out
}

/// `Active`, `Succeeded`, `Failed` or `Unknown`, as the Go backend reports a Job.
fn job_status(j: &RunnerJob) -> &'static str {
    let holds = |t: &str| j.conditions.iter().any(|c| c.type_ == t);
    if holds("Complete") || (j.succeeded > 0 && j.active == 0) {
        "Succeeded"
    } else if holds("Failed") {
        "Failed"
    } else if j.active > 0 {
        "Active"
    } else if j.failed > 0 {
        "Failed"
    } else {
        "Unknown"
    }
}

/// Defines a session-scoped route that answers a fixed body once the session is readable.
macro_rules! session_route {
    ($name:ident, $method:ident, $path:literal, $doc:literal, $what:literal, $body:expr) => {
        #[doc = $doc]
        #[utoipa::path($method, path = $path, tag = "ui",
            params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
            responses((status = 200, description = $what), (status = 404, description = "project or session not found")))]
        pub async fn $name(State(st): State<Arc<AppState>>, caller: Caller, Path((p, s)): Path<(String, String)>) -> Result<Response, ApiError> {
            readable_session(&st, &caller, &p, &s).await?;
            Ok(ok($body))
        }
    };
}

/// Defines a session-scoped click-only action: 404 `not_available` once the session is readable.
macro_rules! unavailable_route {
    ($name:ident, $method:ident, $path:literal, $doc:literal, $sentence:literal) => {
        #[doc = $doc]
        #[utoipa::path($method, path = $path, tag = "ui",
            params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
            responses((status = 404, description = "`{error, code: \"not_available\"}`; or project or session not found")))]
        pub async fn $name(State(st): State<Arc<AppState>>, caller: Caller, Path((p, s)): Path<(String, String)>) -> ApiError {
            match readable_session(&st, &caller, &p, &s).await {
                Ok(_) => ApiError::NotAvailable($sentence),
                Err(e) => e,
            }
        }
    };
}

session_route!(
    workflow_metadata,
    get,
    "/api/projects/{project}/agentic-sessions/{session}/workflow/metadata",
    "Commands and agents of the session's workflow: none (no workflows on this platform).",
    "`{commands: [], agents: []}`",
    json!({"commands": [], "agents": []})
);
session_route!(
    git_status,
    get,
    "/api/projects/{project}/agentic-sessions/{session}/git/status",
    "Git status of a workspace directory (`?path=`, ignored): no git workspace on this platform.",
    "`{initialized: false, hasChanges: false}`",
    json!({"initialized": false, "hasChanges": false})
);
session_route!(
    git_merge_status,
    get,
    "/api/projects/{project}/agentic-sessions/{session}/git/merge-status",
    "Merge status against a remote (`?path=&branch=`, ignored): nothing to merge on this platform.",
    "`{canMergeClean: true, localChanges: 0, remoteCommitsAhead: 0, conflictingFiles: [], remoteBranchExists: false}`",
    json!({"canMergeClean": true, "localChanges": 0, "remoteCommitsAhead": 0, "conflictingFiles": [], "remoteBranchExists": false})
);
session_route!(
    git_list_branches,
    get,
    "/api/projects/{project}/agentic-sessions/{session}/git/list-branches",
    "Branches of a workspace directory (`?path=`, ignored): none on this platform.",
    "`{branches: []}`",
    json!({"branches": []})
);
session_route!(
    workspace,
    get,
    "/api/projects/{project}/agentic-sessions/{session}/workspace",
    "Files of the session's workspace (`?path=`, ignored): none are served on this platform.",
    "`{items: []}`",
    json!({"items": []})
);
session_route!(
    spawn_content_pod,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/spawn-content-pod",
    "The workspace viewer: there is none to start; `exists` + `ready` is the answer the UI takes quietly (no toast, no polling).",
    "`{status: \"exists\", podName: \"\", ready: true}`",
    json!({"status": "exists", "podName": "", "ready": true})
);
session_route!(
    content_pod_status,
    get,
    "/api/projects/{project}/agentic-sessions/{session}/content-pod-status",
    "State of the workspace viewer: unavailable on this platform.",
    "`{status: \"unavailable\", ready: false, podName: \"\"}`",
    json!({"status": "unavailable", "ready": false, "podName": ""})
);
session_route!(
    delete_content_pod,
    delete,
    "/api/projects/{project}/agentic-sessions/{session}/content-pod",
    "Removes the workspace viewer: there is none.",
    "`{message}`",
    json!({"message": "no content pod on this platform"})
);

unavailable_route!(
    set_workflow,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/workflow",
    "Selecting a workflow: not offered.",
    "Workflows are not available on this platform"
);
unavailable_route!(
    git_pull,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/git/pull",
    "Git pull: not offered.",
    "Git operations are not available on this platform"
);
unavailable_route!(
    git_push,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/git/push",
    "Git push: not offered.",
    "Git operations are not available on this platform"
);
unavailable_route!(
    git_synchronize,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/git/synchronize",
    "Git synchronize: not offered.",
    "Git operations are not available on this platform"
);
unavailable_route!(
    git_create_branch,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/git/create-branch",
    "Creating a branch: not offered.",
    "Git operations are not available on this platform"
);
unavailable_route!(
    git_configure_remote,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/git/configure-remote",
    "Configuring a git remote: not offered.",
    "Git operations are not available on this platform"
);
unavailable_route!(
    add_repo,
    post,
    "/api/projects/{project}/agentic-sessions/{session}/repos",
    "Adding a repository to a running session: not offered (repositories are part of the session's spec).",
    "Git operations are not available on this platform"
);

/// Removing a repository from a running session: not offered.
#[utoipa::path(delete, path = "/api/projects/{project}/agentic-sessions/{session}/repos/{repo}", tag = "ui",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path), ("repo" = String, Path)),
    responses((status = 404, description = "`{error, code: \"not_available\"}`; or project or session not found")))]
pub async fn remove_repo(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s, _repo)): Path<(String, String, String)>,
) -> ApiError {
    match readable_session(&st, &caller, &p, &s).await {
        Ok(_) => ApiError::NotAvailable("Git operations are not available on this platform"),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::status::{RunnerCondition, RunnerContainer, RunnerPod};

    fn session(job_name: Option<&str>) -> AgenticSession {
        let mut s: AgenticSession = serde_json::from_value(json!({
            "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSession",
            "metadata": {"name": "s", "namespace": "p", "uid": "u"},
            "spec": {"prompt": "x"},
        }))
        .unwrap();
        if let Some(j) = job_name {
            s.status = Some(serde_json::from_value(json!({"jobName": j})).unwrap());
        }
        s
    }

    fn job(active: i32, succeeded: i32, failed: i32, conditions: &[&str]) -> RunnerJob {
        RunnerJob {
            name: "s-job".into(),
            active,
            succeeded,
            failed,
            conditions: conditions.iter().map(|t| RunnerCondition { type_: t.to_string(), reason: None }).collect(),
            start_time: None,
            completion_time: None,
        }
    }

    #[test]
    fn without_a_runner_view_only_the_status_job_name() {
        let v = k8s_resources_json(&session(Some("s-job")), None);
        assert_eq!(v, json!({"jobName": "s-job", "pods": [], "pvcName": "", "pvcExists": false}));
        let gone = RunnerView { name: "s".into(), run: None, job: None, pod: None };
        assert_eq!(k8s_resources_json(&session(None), Some(&gone))["jobName"], "");
    }

    #[test]
    fn a_runner_view_becomes_job_and_pod() {
        let view = RunnerView {
            name: "s".into(),
            run: Some(1),
            job: Some(job(0, 0, 1, &["Failed"])),
            pod: Some(RunnerPod {
                name: "s-job-abc".into(),
                uid: "u-1".into(),
                phase: "Failed".into(),
                node_name: None,
                scheduling_reason: None,
                reason: None,
                container: Some(RunnerContainer {
                    name: "ambient-code-runner".into(),
                    state: ContainerState::Terminated,
                    reason: Some("OOMKilled".into()),
                    exit_code: Some(137),
                    restart_count: 0,
                }),
            }),
        };
        let v = k8s_resources_json(&session(None), Some(&view));
        assert_eq!(v["jobName"], "s-job");
        assert_eq!(v["jobStatus"], "Failed");
        assert_eq!(v["jobConditions"], json!([{"type": "Failed", "reason": null}]));
        assert_eq!(
            v["pods"],
            json!([{"name": "s-job-abc", "phase": "Failed", "containers": [{"name": "ambient-code-runner", "state": "Terminated", "exitCode": 137, "reason": "OOMKilled"}]}])
        );
        assert_eq!((v["pvcName"].clone(), v["pvcExists"].clone()), (json!(""), json!(false)));
    }

    #[test]
    fn job_statuses() {
        assert_eq!(job_status(&job(1, 0, 0, &[])), "Active");
        assert_eq!(job_status(&job(0, 1, 0, &["Complete"])), "Succeeded");
        assert_eq!(job_status(&job(0, 0, 2, &["Failed"])), "Failed");
        assert_eq!(job_status(&job(0, 0, 0, &[])), "Unknown");
    }
}
