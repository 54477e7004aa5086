//! The custom resources, wire-compatible with the existing platform (group `vteam.ambient-code`,
//! version `v1alpha1`): existing objects keep their group, names and field names.
//!
//! Every field a component writes is declared here, so the API server never prunes it; the CRD
//! YAML in `deploy/crds/` is generated from these types (see [`crd_yaml`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::{Phase, Role};

// Bounds of resourceOverrides and environmentVariables (doc comments of the CRD fields are
// their schema descriptions: changing them changes deploy/crds/).
pub mod resources;
pub use resources::{Amount, QuantityError, RUNNER_PLATFORM_ENV, RunnerBounds, RunnerResources, is_env_name};

/// The API group of both resources.
pub const GROUP: &str = "vteam.ambient-code";
/// The served (and stored) version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in objects and owner references.
pub const API_VERSION: &str = "vteam.ambient-code/v1alpha1";
/// The only allowed name of a ProjectSettings object.
pub const PROJECT_SETTINGS_NAME: &str = "projectsettings";
/// Default `spec.timeout` in seconds.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3_600;

/// An AI run, executed as a Kubernetes Job.
// Printer columns repeat `type_ = "string"`, which the lint takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vteam.ambient-code",
    version = "v1alpha1",
    kind = "AgenticSession",
    plural = "agenticsessions",
    singular = "agenticsession",
    shortname = "as",
    namespaced,
    status = "AgenticSessionStatus",
    derive = "PartialEq",
    category = "ambient",
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(name = "Started", type_ = "date", json_path = ".status.startTime", priority = 1),
    printcolumn(name = "Run", type_ = "integer", json_path = ".status.run", priority = 1),
    printcolumn(name = "Job", type_ = "string", json_path = ".status.jobName", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AgenticSessionSpec {
    /// The task for the agent.
    #[schemars(length(min = 1, max = 100_000))]
    pub prompt: String,
    /// A human name for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub display_name: Option<String>,
    /// Model parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_settings: Option<LlmSettings>,
    /// Seconds the run may take: the Job's `activeDeadlineSeconds`.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 30, max = 86_400))]
    pub timeout: i64,
    /// Chat mode: the runner reads user messages from its inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
    /// Repositories the runner works on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub repos: Vec<RepoMapping>,
    /// Index into `repos` of the main repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 19))]
    pub main_repo_index: Option<i32>,
    /// Who asked for the session. Set by the server from the authenticated caller, never from a
    /// request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_context: Option<UserContext>,
    /// Extra environment for the runner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100))]
    pub environment_variables: BTreeMap<String, String>,
    /// Resource requests and scheduling priority for the runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_overrides: Option<ResourceOverrides>,
}

fn default_timeout() -> i64 {
    DEFAULT_TIMEOUT_SECONDS
}

/// Model parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LlmSettings {
    /// Model name, e.g. `sonnet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub model: Option<String>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Largest number of tokens per response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_tokens: Option<i64>,
}

impl LlmSettings {
    /// The model a runner gets when none is set.
    pub const DEFAULT_MODEL: &'static str = "sonnet";
    /// The temperature a runner gets when none is set.
    pub const DEFAULT_TEMPERATURE: f64 = 0.7;
    /// The token limit a runner gets when none is set.
    pub const DEFAULT_MAX_TOKENS: i64 = 4000;

    /// Every parameter as the runner gets it: set, or its default.
    pub fn effective(&self) -> LlmSettings {
        LlmSettings {
            model: Some(self.model.clone().unwrap_or_else(|| Self::DEFAULT_MODEL.into())),
            temperature: Some(self.temperature.unwrap_or(Self::DEFAULT_TEMPERATURE)),
            max_tokens: Some(self.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS)),
        }
    }
}

/// An input repository and where the runner pushes its output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoMapping {
    /// Where to clone from.
    pub input: RepoRef,
    /// Where to push to, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<RepoRef>,
}

/// A repository URL and branch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoRef {
    /// Clone URL.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Branch, `main` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub branch: Option<String>,
}

/// The caller who created the session, as the server authenticated it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct UserContext {
    /// The authenticated user name.
    pub user_id: String,
    /// A display name, the user name when nothing better is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Resource requests and priority of the runner pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceOverrides {
    /// CPU request and limit, e.g. `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
    /// PriorityClass of the runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class: Option<String>,
}

/// Observed state of a session, written by the reconciler and (result fields) by the runner.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgenticSessionStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A human sentence about the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Machine-readable reason for the phase, e.g. `Timeout`, `StopRequested`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the current run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When the current run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// The Job running the session: `<session>-job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions (`Ready`, `JobCreated`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many times the session was (re)started; each start runs a fresh Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// The runner's final answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The runner's result subtype (e.g. `success`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    /// True when the runner reported an error result.
    #[serde(default, rename = "is_error", skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Agent turns taken.
    #[serde(default, rename = "num_turns", skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<i64>,
    /// The runner's SDK session id.
    #[serde(default, rename = "session_id", skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Cost of the run in USD.
    #[serde(default, rename = "total_cost_usd", skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    /// Token usage as the runner reports it (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub usage: Option<serde_json::Value>,
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Per-project settings; exactly one per managed namespace, named `projectsettings`.
/// Created by the reconciler, never exposed as a REST resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "vteam.ambient-code",
    version = "v1alpha1",
    kind = "ProjectSettings",
    plural = "projectsettings",
    singular = "projectsettings",
    shortname = "ps",
    namespaced,
    status = "ProjectSettingsStatus",
    derive = "PartialEq",
    derive = "Default",
    validation = Rule::new("self.metadata.name == 'projectsettings'").message("a ProjectSettings must be named projectsettings (one per project)"),
    category = "ambient",
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSettingsSpec {
    /// Groups granted a role in the project; kept in sync with RoleBindings both ways.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub group_access: Vec<GroupAccess>,
    /// Name of the Secret whose keys become the runner's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub runner_secrets_name: Option<String>,
}

/// A group and its role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupAccess {
    /// The group name.
    #[schemars(length(min = 1, max = 253))]
    pub group_name: String,
    /// Its role.
    pub role: Role,
}

/// Observed state of ProjectSettings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSettingsStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRDs as multi-document YAML, exactly as committed in `deploy/crds/`.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    let render = |crd| serde_saphyr::to_string(&crd).unwrap_or_else(|e| panic!("CRD serializes: {e}"));
    vec![
        ("agenticsessions.yaml", render(AgenticSession::crd())),
        ("projectsettings.yaml", render(ProjectSettings::crd())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_name_leads_back_to_its_session() {
        assert_eq!(runner::session_of_job(&runner::job_name("s1")), Some("s1"));
        assert_eq!(runner::session_of_job("a-job-job"), Some("a-job"));
        assert_eq!(runner::session_of_job("-job"), None);
        assert_eq!(runner::session_of_job("s1"), None);
    }

    #[test]
    fn spec_defaults_and_names() {
        let s: AgenticSessionSpec = serde_json::from_str(r#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(s.timeout, 3600);
        let st = AgenticSessionStatus { is_error: Some(true), num_turns: Some(3), ..Default::default() };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["is_error"], true);
        assert_eq!(v["num_turns"], 3);
    }

    #[test]
    fn crd_shape() {
        let crd = serde_json::to_value(AgenticSession::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "as");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["subresources"]["status"], serde_json::json!({}));
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["timeout"]["maximum"].as_f64(), Some(86400.0));
        assert_eq!(spec["properties"]["prompt"]["maxLength"].as_u64(), Some(100000));
        let ps = serde_json::to_string(&ProjectSettings::crd()).unwrap();
        assert!(ps.contains("self.metadata.name == 'projectsettings'"));
    }
}

/// How the reconciler runs a session, as far as watchers of its Jobs and pods (the projector)
/// rely on it: one definition for the writer and its readers.
pub mod runner {
    /// Label on a session's Job and pods: the session's name.
    pub const SESSION_LABEL: &str = "agentic-session";
    /// Label on a session's Job and pods: the run number they belong to.
    pub const RUN_LABEL: &str = "ambient-code.io/run";
    /// Name of the runner container in the Job's pod.
    pub const CONTAINER: &str = "ambient-code-runner";

    /// The Job of session `session`: `<session>-job`.
    pub fn job_name(session: &str) -> String {
        format!("{session}-job")
    }

    /// The session whose Job name `job` is (the inverse of [`job_name`]), if any.
    pub fn session_of_job(job: &str) -> Option<&str> {
        job.strip_suffix("-job").filter(|s| !s.is_empty())
    }

    /// The ServiceAccount every runner pod of a project runs as. It holds no RBAC rights: what a
    /// runner may do is decided from the pod its token is bound to ([`BoundPod`]), so a session
    /// costs no ServiceAccount, Role or RoleBinding of its own.
    pub const SERVICE_ACCOUNT: &str = "ambient-runner";
    /// TokenReview `user.extra` key of a pod-bound ServiceAccount token: the pod's name.
    pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
    /// TokenReview `user.extra` key of a pod-bound ServiceAccount token: the pod's uid.
    pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

    /// The pod a runner's token is bound to, as the API server's TokenReview vouched for it: the
    /// token is valid only while that pod (that uid) exists.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct BoundPod<'a> {
        /// The project (namespace) of the pod and its ServiceAccount.
        pub project: &'a str,
        /// The pod's name.
        pub name: &'a str,
        /// The pod's uid.
        pub uid: &'a str,
    }

    impl<'a> BoundPod<'a> {
        /// The pod of `principal` when it is a project's runner ServiceAccount with a pod-bound
        /// token (exactly one pod name and uid); `None` for anyone else, including a token of
        /// that ServiceAccount bound to no pod (e.g. a legacy token Secret).
        pub fn of(principal: &'a crate::Principal) -> Option<Self> {
            let (project, sa) = principal.service_account()?;
            let one = |key: &str| match principal.extra.get(key).map(Vec::as_slice) {
                Some([v]) if !v.is_empty() => Some(v.as_str()),
                _ => None,
            };
            (sa == SERVICE_ACCOUNT).then_some(())?;
            Some(BoundPod { project, name: one(POD_NAME_EXTRA)?, uid: one(POD_UID_EXTRA)? })
        }

        /// Whether this pod's name is one the Job controller could give a pod of `session`'s Job
        /// (see [`could_be_pod_of`]).
        pub fn could_run(&self, session: &str) -> bool {
            could_be_pod_of(self.name, session)
        }
    }

    /// The longest prefix the API server keeps of a `generateName` (63 less its 5 random
    /// characters).
    const MAX_GENERATE_PREFIX: usize = 58;

    /// Whether `pod` is a name the Job controller could give a pod of `session`'s Job: the
    /// generateName `<job>-`, cut at 58 characters as the API server cuts it, then 5 random
    /// characters. A name check only: sessions whose names agree up to that cut (over 53
    /// characters) cannot be told apart by it, so the api also reads the pod's labels.
    pub fn could_be_pod_of(pod: &str, session: &str) -> bool {
        let prefix = format!("{}-", job_name(session));
        // Bytes: a name that is not ASCII is no session's and must not panic the cut.
        let prefix = &prefix.as_bytes()[..prefix.len().min(MAX_GENERATE_PREFIX)];
        pod.as_bytes()
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 5 && rest.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::Principal;

        #[test]
        fn pod_names_of_a_sessions_job() {
            let long = "s".repeat(58);
            let cases: &[(&str, &str, bool)] = &[
                ("demo-job-x7k2p", "demo", true),
                ("demo-job-x7k2", "demo", false),
                ("demo-job-x7k2pq", "demo", false),
                ("demo-job-X7K2P", "demo", false),
                ("demo-x-job-x7k2p", "demo", false),
                ("demo-job-x7k2p", "demo-x", false),
                // Another session's Job whose name starts like ours.
                ("demo-job-abc-job-x7k2p", "demo", false),
                ("demo-job-abc-job-x7k2p", "demo-job-abc", true),
                ("", "demo", false),
                ("démo-job-x7k2p", "démo", true),
            ];
            for (pod, session, want) in cases {
                assert_eq!(could_be_pod_of(pod, session), *want, "{pod} of {session}");
            }
            // generateName is cut at 58 characters: `<58 s>` then the random part.
            assert!(could_be_pod_of(&format!("{long}x7k2p"), &long));
            assert!(!could_be_pod_of(&format!("{long}-job-x7k2p"), &long));
            let s53 = "s".repeat(53);
            assert!(could_be_pod_of(&format!("{s53}-job-x7k2p"), &s53));
            let s54 = "s".repeat(54);
            assert!(could_be_pod_of(&format!("{s54}-jobx7k2p"), &s54));
        }

        /// TokenReview `extra` entries.
        type Extra<'a> = &'a [(&'a str, &'a [&'a str])];

        fn runner(user: &str, extra: Extra) -> Principal {
            Principal {
                user: user.into(),
                extra: extra.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect(),
                ..Default::default()
            }
        }

        #[test]
        fn a_runner_pod_is_the_runner_account_with_one_bound_pod() {
            let sa = "system:serviceaccount:team:ambient-runner";
            let bound: Extra = &[(POD_NAME_EXTRA, &["demo-job-x7k2p"]), (POD_UID_EXTRA, &["u-1"])];
            assert_eq!(
                BoundPod::of(&runner(sa, bound)),
                Some(BoundPod { project: "team", name: "demo-job-x7k2p", uid: "u-1" })
            );
            let refused: &[(&str, Extra)] = &[
                // Another ServiceAccount, a user, a look-alike.
                ("system:serviceaccount:team:ambient-key-ci", bound),
                ("ambient-runner", bound),
                ("system:serviceaccount:team:ambient-runner:x", bound),
                // Not bound to a pod, or ambiguously.
                (sa, &[]),
                (sa, &[(POD_NAME_EXTRA, &["demo-job-x7k2p"])]),
                (sa, &[(POD_UID_EXTRA, &["u-1"])]),
                (sa, &[(POD_NAME_EXTRA, &["a", "b"]), (POD_UID_EXTRA, &["u-1"])]),
                (sa, &[(POD_NAME_EXTRA, &[""]), (POD_UID_EXTRA, &["u-1"])]),
                (sa, &[(POD_NAME_EXTRA, &["demo-job-x7k2p"]), (POD_UID_EXTRA, &[])]),
            ];
            for (user, extra) in refused {
                assert_eq!(BoundPod::of(&runner(user, extra)), None, "{user} {extra:?}");
            }
        }
    }
}
