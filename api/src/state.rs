//! Shared state of the handlers, and the steps every project route takes.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use events::access::{Requirement, ResourceCheck};
use events::sealing::SealingPublicKey;
use events::{Command, CommandBody, Principal, ProjectName};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{Authenticator, Caller};
use crate::authz::{Authorizer, project_visible};
use crate::commands::{Commands, Mutation, SubmitOptions};
use crate::config::Config;
use crate::errors::ApiError;
use crate::messages::MessageLog;
use crate::reads::Reads;
use crate::runners::{VIEW_LAG, is_current_runner};
use events::crd::runner::BoundPod;

/// Everything the handlers share.
pub struct AppState {
    /// Configuration.
    pub config: Config,
    /// The api's own kube client (its ServiceAccount).
    pub kube: kube::Client,
    /// TokenReview.
    pub auth: Authenticator,
    /// SubjectAccessReview.
    pub authz: Authorizer,
    /// Rate limits (per client address, per principal) and the cap on open streams.
    pub limits: crate::limits::Limits,
    /// Watch caches.
    pub reads: Reads,
    /// The command bus.
    pub commands: Commands,
    /// Session messages.
    pub messages: MessageLog,
    /// The reconciler's sealing key (runner secrets are sealed to it).
    pub reconciler_key: SealingPublicKey,
    /// Cancelled on shutdown (ends SSE streams).
    pub shutdown: CancellationToken,
    /// What the web UI's compatibility routes know of the cluster (`routes::ui`).
    pub ui: crate::cluster::UiState,
    /// The projector's runner views, which say whose runner a pod-bound token is.
    pub runner_views: crate::runners::RunnerViews,
}

/// How long a synchronous write waits for the watch caches to show it.
pub const READ_YOUR_WRITES: Duration = Duration::from_secs(3);

impl AppState {
    /// The project `name` if the caller may see it; a missing project, an unmanaged namespace,
    /// an invisible one and an invalid name all answer the same 404.
    pub async fn visible_project(&self, caller: &Caller, name: &str) -> Result<ProjectName, ApiError> {
        let Ok(project) = ProjectName::new(name) else { return Err(ApiError::project_not_found()) };
        // Ask RBAC first so that timing does not tell existing from missing projects apart.
        let allowed = self.authz.allowed(&caller.principal, &project_visible(name)).await?;
        if !allowed || self.reads.project(name).is_none() {
            return Err(ApiError::project_not_found());
        }
        Ok(project)
    }

    /// Read-your-writes for access our own write just granted: waits (up to READ_YOUR_WRITES)
    /// until `cached` holds for our watch caches and the API server's RBAC lets `who` see
    /// `project` (its authorizer follows RoleBindings through its own watch and may lag). Best
    /// effort: the write stands either way.
    pub async fn wait_granted(&self, who: &Principal, project: &str, cached: impl FnMut() -> bool) {
        let visible = project_visible(project);
        let (_, allowed) = tokio::join!(
            self.reads.wait_until(READ_YOUR_WRITES, cached),
            self.authz.wait_allowed(who, &visible, READ_YOUR_WRITES),
        );
        match allowed {
            Ok(true) => {}
            Ok(false) => tracing::warn!(project, user = %who.user, "RBAC did not show the new access in time"),
            Err(e) => tracing::warn!(project, user = %who.user, error = %e, "could not confirm the new access"),
        }
    }

    /// Fails with 403, naming the first check refused, unless every check is allowed.
    pub async fn require(&self, caller: &Caller, checks: &[ResourceCheck]) -> Result<(), ApiError> {
        let decisions =
            futures::future::try_join_all(checks.iter().map(|c| self.authz.allowed(&caller.principal, c))).await?;
        match checks.iter().zip(decisions).find(|(_, allowed)| !allowed) {
            Some((c, _)) => Err(ApiError::Forbidden(format!("you may not {c}"))),
            None => Ok(()),
        }
    }

    /// Authorizes, publishes and waits for a command, per the request's `Prefer` and
    /// `Idempotency-Key` headers.
    pub async fn mutate(
        &self,
        caller: &Caller,
        project: ProjectName,
        body: CommandBody,
        headers: &HeaderMap,
        reply: Option<crate::parked::Reply>,
    ) -> Result<Mutation, ApiError> {
        self.mutate_as(caller, Command::new(project, caller.principal.clone(), body), headers, reply).await
    }

    /// [`AppState::mutate`] of a command made by the caller (e.g. a retry under an earlier
    /// command's id: JetStream drops it if the earlier one was stored, the reconciler applies
    /// an id once).
    pub async fn mutate_as(
        &self,
        caller: &Caller,
        mut cmd: Command,
        headers: &HeaderMap,
        reply: Option<crate::parked::Reply>,
    ) -> Result<Mutation, ApiError> {
        cmd.traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
            .map(String::from);
        match cmd.requirement() {
            Requirement::SelfProvision => {
                // Access keys and runners are ServiceAccounts scoped to one project: they never
                // create projects, whatever groups they are in.
                if caller.principal.service_account().is_some() {
                    return Err(ApiError::Forbidden(
                        "ServiceAccounts (access keys, runners) may not create projects".into(),
                    ));
                }
                if !caller.principal.groups.iter().any(|g| g == &self.config.self_provisioner_group) {
                    return Err(ApiError::Forbidden("you may not create projects".into()));
                }
                // E.g. a token whose scopes do not cover it.
                if self.authz.denied(&caller.principal, &events::access::self_provision_check()).await? {
                    return Err(ApiError::Forbidden(
                        "your token may not create projects (an authorizer denies it, e.g. its scopes)".into(),
                    ));
                }
            }
            Requirement::All(checks) => self.require(caller, &checks).await?,
            Requirement::Runner { session, otherwise } => {
                if !self.runs(&caller.principal, cmd.project.as_str(), &session).await? {
                    return Err(ApiError::Forbidden(format!(
                        "you are not this session's runner and may not {otherwise}"
                    )));
                }
            }
        }
        // Every log line of the submission carries the command id and project.
        let span = tracing::info_span!("command", command_id = %cmd.id, project = %cmd.project);
        let opts = SubmitOptions {
            respond_async: prefers_async(headers),
            idempotency_key: headers.get("idempotency-key").map(|v| v.to_str().unwrap_or("").to_string()),
            reply,
        };
        // The overlay of this replica learns of the command before the answer leaves: a client's
        // next read must show it even when the announcement to every replica runs behind.
        let shown = crate::pending::shows(cmd.body.command_type()).then(|| cmd.clone());
        let mutation = tracing::Instrument::instrument(self.commands.submit(cmd, opts), span).await?;
        if let (Mutation::Accepted(id), Some(mut cmd)) = (&mutation, shown) {
            cmd.id = *id;
            self.reads.pending.accepted(&cmd);
        }
        Ok(mutation)
    }

    /// Whether `who` is session `session`'s runner in `project` (see the module doc).
    pub async fn runs(&self, who: &Principal, project: &str, session: &str) -> Result<bool, ApiError> {
        let Some(pod) = BoundPod::of(who) else {
            return Ok(self.authz.allowed(who, &ResourceCheck::session_status(project, session)).await?);
        };
        if pod.project != project || !pod.could_run(session) {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + VIEW_LAG;
        loop {
            if let Some(s) = self.reads.session(project, session) {
                let view = self.runner_views.of(self.commands.jetstream(), project, &s).await?;
                if view.is_some_and(|v| is_current_runner(&v, &s, &pod)) {
                    return Ok(true);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `Prefer: respond-async`.
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// 202 with `Location: /api/commands/{id}`.
pub fn accepted(id: Uuid) -> Response {
    accepted_with(id, json!({}))
}

/// 202 as [`accepted`], the fields of `resource` (what a client reads of the created object,
/// e.g. its `name`) added to the body.
pub fn accepted_with(id: Uuid, resource: Value) -> Response {
    let location = format!("/api/commands/{id}");
    let mut body = json!({"id": id.to_string(), "state": "pending", "location": location});
    if let (Value::Object(b), Value::Object(extra)) = (&mut body, resource) {
        for (k, v) in extra {
            b.entry(k).or_insert(v);
        }
    }
    let mut r = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
