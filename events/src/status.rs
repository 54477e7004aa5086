//! Status events: what changed in the cluster, as public views (never a secret or token).
//!
//! Published by the projector on `ambient.status.<project>.<kind>.<name>`, ordered per object.
//! The JetStream stream sequence is the resume point (`Last-Event-ID` of the SSE streams). The
//! event id is derived from the object's uid, its resourceVersion and the event type, so that
//! a replay after a restart is de-duplicated by JetStream.
//!
//! A project name can be deleted and created again by someone else. Every status event
//! therefore carries the uid of the project namespace it was observed in
//! ([`StatusEvent::project_uid`], the CloudEvent extension `ambientprojectuid`), and a reader
//! serves a project's stream only with the events of the namespace that exists now
//! ([`Incarnation::admits`]). The projector also purges a project's status subjects when its
//! namespace goes (keeping only the `ambient.project.deleted.v1` tombstone).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::{GroupAccess, LlmSettings, RepoMapping};
use crate::domain::{Phase, Role, SubjectType};
use crate::names::ProjectName;

/// The kind of object a status event is about: the `<kind>` token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    /// A project; the name token is the project itself.
    Project,
    /// A session.
    Session,
    /// A permission; the name token is `<subjectType>-<object suffix of the subject>`.
    Permission,
    /// An access key; the name token is its key id.
    Key,
}

impl StatusKind {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Project => "project",
            StatusKind::Session => "session",
            StatusKind::Permission => "permission",
            StatusKind::Key => "key",
        }
    }
}

/// Public view of a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectView {
    /// Project (namespace) name.
    pub name: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// `Active` or `Terminating`.
    pub status: String,
}

/// Public view of a session: its spec without the prompt's neighbours that may hold secrets
/// (environment variable values are never included, only their names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// Session name.
    pub name: String,
    /// Object uid.
    pub uid: String,
    /// Object resourceVersion this view was taken at.
    pub resource_version: String,
    /// Spec generation.
    pub generation: i64,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Chat mode.
    #[serde(default)]
    pub interactive: bool,
    /// Timeout in seconds.
    pub timeout: i64,
    /// Model parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_settings: Option<LlmSettings>,
    /// Repositories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<RepoMapping>,
    /// Names of extra environment variables (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment_variable_names: Vec<String>,
    /// Phase.
    pub phase: Phase,
    /// Phase message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Phase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Start of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// End of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// The runner's final answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Cost in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    /// Agent turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<i64>,
    /// The labels its creator gave it (e.g. `jira-issue: ABC-123`), for correlation; never the
    /// platform's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The annotations its creator gave it; never the platform's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A session changed phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    /// Session name.
    pub name: String,
    /// The phase before (absent for the first phase of a new session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_phase: Option<Phase>,
    /// The new phase.
    pub phase: Phase,
    /// When the transition was observed.
    pub at: DateTime<Utc>,
    /// Seconds spent in the previous phase, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_phase_seconds: Option<f64>,
    /// Phase reason, e.g. `Timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Phase message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Start of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// End of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
}

/// Public view of a permission grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PermissionView {
    /// User or group.
    pub subject_type: SubjectType,
    /// Its name.
    pub subject_name: String,
    /// Its role.
    pub role: Role,
}

/// Public view of an access key (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    /// Key id (its ServiceAccount name).
    pub id: String,
    /// The name the user gave it.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When it was last used, if ever: the api's key list shows it (it records each key's use);
    /// status events leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What runs a session: its runner Job and that Job's newest pod, as the cluster reports them.
///
/// Published as `ambient.session.runner.v1` on the session's subject whenever this view
/// changes, so a consumer sees why a run is slow or failed (`Unschedulable`,
/// `ImagePullBackOff`, `OOMKilled`, an exit code) without cluster access. `job: null` is the
/// *runner gone* state: the session still exists but has no runner Job any more (stopped,
/// being restarted, or the Job was removed). A session's deletion ends its subject with
/// `ambient.session.deleted.v1`; no runner event follows it. Never environment values, the
/// prompt or Secret names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    /// Session name.
    pub name: String,
    /// The run the Job belongs to (label `ambient-code.io/run`; a start after a finished run
    /// makes a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// The runner Job; `null` when the session has none (any more).
    pub job: Option<RunnerJob>,
    /// The Job's newest pod; `null` until the Job made one, and whenever `job` is `null`.
    pub pod: Option<RunnerPod>,
}

/// The runner Job of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerJob {
    /// Job name (`<session>-job`).
    pub name: String,
    /// Pods running.
    #[serde(default)]
    pub active: i32,
    /// Pods that succeeded.
    #[serde(default)]
    pub succeeded: i32,
    /// Pods that failed.
    #[serde(default)]
    pub failed: i32,
    /// The Job's conditions that hold (`status: True`), e.g. `Complete`, or `Failed` with
    /// reason `DeadlineExceeded` (the session's timeout) or `BackoffLimitExceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RunnerCondition>,
    /// When the Job controller started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When it completed (successfully).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
}

/// A condition that holds, without its message or times (which change without news).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerCondition {
    /// Condition type, e.g. `Complete`, `Failed`, `Suspended`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Machine-readable reason, e.g. `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The runner pod of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPod {
    /// Pod name.
    pub name: String,
    /// Pod uid: with the name, what a runner's pod-bound token names (the api lets the token
    /// report on the session only while this pod is its runner).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    /// The node it was scheduled to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Why it is not scheduled: the reason of its `PodScheduled` condition while that is
    /// `False`, e.g. `Unschedulable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_reason: Option<String>,
    /// The pod's own reason, e.g. `Evicted` or `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The runner container, once the kubelet reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<RunnerContainer>,
}

/// The state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Not running yet (or restarting).
    Waiting,
    /// Running.
    Running,
    /// Ended.
    Terminated,
}

/// The runner container of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerContainer {
    /// Container name.
    pub name: String,
    /// Its state.
    pub state: ContainerState,
    /// Why it waits or ended, e.g. `ContainerCreating`, `ImagePullBackOff`,
    /// `CrashLoopBackOff`, `OOMKilled`, `Error`, `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code, once terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: i32,
}

/// Public view of a project's settings (its `ProjectSettings` object): the group grants it
/// asks for, and *whether* a runner Secret is configured, never which one or what it holds.
///
/// Published as `ambient.project.settings.v1` on the project's subject when the view changes.
/// `exists: false` (with empty fields) reports a ProjectSettings deleted while the project
/// remains (the reconciler re-creates it, which is reported again); a project's deletion ends
/// its subject with `ambient.project.deleted.v1` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    /// Whether the project's ProjectSettings exists.
    pub exists: bool,
    /// Groups granted a role in the project (the permission RoleBindings follow them).
    #[serde(default)]
    pub group_access: Vec<GroupAccess>,
    /// Whether a runner Secret is configured (`runnerSecretsName`); its name and values are
    /// never published.
    pub runner_secret_configured: bool,
}

/// An object is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    /// The name token of the object.
    pub name: String,
    /// The last uid seen, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// When the deletion was observed.
    pub at: DateTime<Utc>,
}

macro_rules! status_catalogue {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $kind:ident, $ty:literal ),* $(,)?) => {
        /// Every status event, with its data.
        // Events are short-lived values; boxing the session view would only add noise.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum StatusBody {
            $( $(#[$doc])* $variant($payload), )*
        }

        impl StatusBody {
            /// Every CloudEvent type of a status event.
            pub const TYPES: &'static [&'static str] = &[$($ty),*];

            /// The CloudEvent type, e.g. `ambient.session.phase.v1`.
            pub fn type_str(&self) -> &'static str {
                match self { $(StatusBody::$variant(_) => $ty,)* }
            }

            /// The kind of object.
            pub fn kind(&self) -> StatusKind {
                match self { $(StatusBody::$variant(_) => StatusKind::$kind,)* }
            }

            /// The data as JSON.
            pub fn data_json(&self) -> serde_json::Value {
                let v = match self { $(StatusBody::$variant(p) => serde_json::to_value(p),)* };
                v.unwrap_or(serde_json::Value::Null)
            }

            /// Decodes the data of an event of type `ty`; `None` for an unknown type.
            pub fn from_json(ty: &str, v: serde_json::Value) -> Option<Result<Self, serde_json::Error>> {
                match ty {
                    $($ty => Some(serde_json::from_value(v).map(StatusBody::$variant)),)*
                    _ => None,
                }
            }

            /// The JSON schema of the data of type `ty`.
            pub fn schema(ty: &str) -> Option<schemars::Schema> {
                match ty { $($ty => Some(schemars::schema_for!($payload)),)* _ => None }
            }

            /// The data schema of type `ty` as a subschema of `g` (its definitions go to `g`).
            pub fn data_subschema(ty: &str, g: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
                match ty { $($ty => Some(g.subschema_for::<$payload>()),)* _ => None }
            }
        }
    };
}

status_catalogue! {
    /// A project was created or its public view changed.
    ProjectChanged(ProjectView) = Project, "ambient.project.changed.v1",
    /// A project is gone.
    ProjectDeleted(Tombstone) = Project, "ambient.project.deleted.v1",
    /// A project's settings (group access, whether a runner Secret is configured) changed.
    ProjectSettings(SettingsView) = Project, "ambient.project.settings.v1",
    /// A session was created or its public view changed.
    SessionChanged(SessionView) = Session, "ambient.session.changed.v1",
    /// A session changed phase.
    SessionPhase(PhaseTransition) = Session, "ambient.session.phase.v1",
    /// A session is gone.
    SessionDeleted(Tombstone) = Session, "ambient.session.deleted.v1",
    /// A session's runner (its Job and pod) changed, or is gone (`job: null`).
    SessionRunner(RunnerView) = Session, "ambient.session.runner.v1",
    /// A permission was granted or its role changed.
    PermissionChanged(PermissionView) = Permission, "ambient.permission.changed.v1",
    /// A permission was revoked.
    PermissionDeleted(Tombstone) = Permission, "ambient.permission.deleted.v1",
    /// An access key was created or changed (e.g. last use).
    KeyChanged(KeyView) = Key, "ambient.key.changed.v1",
    /// An access key was revoked.
    KeyDeleted(Tombstone) = Key, "ambient.key.deleted.v1",
}

/// One status event.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    /// Deterministic id, see [`StatusEvent::derive_id`].
    pub id: String,
    /// The project.
    pub project: ProjectName,
    /// The object's name token.
    pub name: String,
    /// When the change was observed.
    pub time: DateTime<Utc>,
    /// The uid of the project's namespace the event was observed in (extension
    /// `ambientprojectuid`): a project deleted and created again under the same name is
    /// another namespace with another uid. `None` only for events published before the
    /// projector stamped it.
    pub project_uid: Option<String>,
    /// What changed.
    pub body: StatusBody,
}

/// One life of a name: the uid and creation time of the object (a project's namespace, a
/// session) that holds the name now. Events and messages of an earlier object of the same
/// name, e.g. of a deleted project whose name someone else took, are not this one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    /// The object's uid.
    pub uid: String,
    /// Its `creationTimestamp` (whole seconds, as the API server records it).
    pub created: DateTime<Utc>,
}

impl Incarnation {
    /// Whether an event or message stamped with the object uid `uid`, recorded at `time`,
    /// belongs to this incarnation. A stamp decides exactly. Without one (recorded before
    /// stamps existed) only the time can tell, and `creationTimestamp` is truncated to the
    /// second: only what was recorded a full second after it is surely younger than the object.
    pub fn admits(&self, uid: Option<&str>, time: DateTime<Utc>) -> bool {
        match uid {
            Some(uid) => uid == self.uid,
            None => time >= self.created + chrono::Duration::seconds(1),
        }
    }
}

impl StatusEvent {
    /// The id of the event of `ty` about the object `uid` at `resource_version`:
    /// `<uid>/<resourceVersion>/<type>`. Replays of the same observation get the same id.
    pub fn derive_id(uid: &str, resource_version: &str, ty: &str) -> String {
        format!("{uid}/{resource_version}/{ty}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incarnation_admits_its_own_stamp_and_only_surely_younger_unstamped_records() {
        let created = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().with_timezone(&Utc);
        let now = Incarnation { uid: "u2".into(), created };
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let cases = [
            (Some("u2"), "2026-12-01T09:00:00Z", true, "own stamp decides, whatever the clock says"),
            (Some("u1"), "2026-12-01T11:00:00Z", false, "another incarnation's stamp, however late"),
            (Some(""), "2026-12-01T11:00:00Z", false, "an empty stamp is no match"),
            (None, "2026-12-01T09:59:59Z", false, "unstamped, before creation"),
            (None, "2026-12-01T10:00:00.900Z", false, "unstamped, within the truncated second"),
            (None, "2026-12-01T10:00:01Z", true, "unstamped, a full second after"),
        ];
        for (uid, t, want, why) in cases {
            assert_eq!(now.admits(uid, at(t)), want, "{why}");
        }
    }
}
