//! The runner of a session: its Job and the Job's pods, reduced at the watch to what the public
//! [`RunnerView`] shows.
//!
//! Jobs and pods are read through narrow types ([`JobStatusOnly`], [`PodStatusOnly`]) that
//! deserialize metadata and status only (plus the pod's node): the pod template and spec carry
//! the runner's environment (the prompt, the session's variables), and skipping them while
//! deserializing keeps them out of the projector's memory altogether.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use events::status::{ContainerState, RunnerCondition, RunnerContainer, RunnerJob, RunnerPod, RunnerView};
use k8s_openapi::api::batch::v1::JobStatus;
use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Deserialize;

use events::views::to_chrono;

use super::meta::{Meta, meta_of};

pub use events::crd::runner::{CONTAINER as RUNNER_CONTAINER, RUN_LABEL, SESSION_LABEL, job_name, session_of_job};

macro_rules! narrow_resource {
    ($ty:ident, $api_version:literal, $group:literal, $kind:literal, $plural:literal) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = $api_version;
            const GROUP: &'static str = $group;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Job as the projector reads it: metadata and status, never the pod template.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobStatusOnly {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Status.
    #[serde(default)]
    pub status: Option<JobStatus>,
}
narrow_resource!(JobStatusOnly, "batch/v1", "batch", "Job", "jobs");

/// The one field of a pod's spec the projector reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlacement {
    /// The node it was scheduled to.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// A pod as the projector reads it: metadata, status and its node, never containers or env.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatusOnly {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Placement only.
    #[serde(default)]
    pub spec: Option<PodPlacement>,
    /// Status.
    #[serde(default)]
    pub status: Option<PodStatus>,
}
narrow_resource!(PodStatusOnly, "v1", "", "Pod", "pods");

/// A runner Job as the projector keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRec {
    /// Identity.
    pub meta: Meta,
    /// The session it runs (label `agentic-session`).
    pub session: Option<String>,
    /// uid of its controlling owner (the AgenticSession), if it has one.
    pub owner_uid: Option<String>,
    /// The run it belongs to.
    pub run: Option<i64>,
    /// Its public part.
    pub view: RunnerJob,
}

impl JobRec {
    /// Whether this is the runner Job of the session `name` with uid `uid`: the reconciler's
    /// name and label, and not a Job left by an earlier session of the same name.
    pub fn runs(&self, name: &str, uid: &str) -> bool {
        self.meta.name == job_name(name)
            && self.session.as_deref() == Some(name)
            && self.owner_uid.as_deref().is_none_or(|o| o == uid)
    }
}

/// A runner pod as the projector keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRec {
    /// Identity.
    pub meta: Meta,
    /// uid of the Job that owns it (so a new Job of the same name does not adopt old pods).
    pub job_uid: Option<String>,
    /// The session it runs (label `agentic-session`, copied from its Job's pod template).
    pub session: Option<String>,
    /// When it was created (the newest pod of a Job is shown).
    pub created: Option<DateTime<Utc>>,
    /// Its public part.
    pub view: RunnerPod,
}

impl PodRec {
    /// Newer than `other`: created later (then by name, for a stable choice).
    pub fn newer_than(&self, other: &PodRec) -> bool {
        match self.created.cmp(&other.created) {
            Ordering::Equal => self.meta.name > other.meta.name,
            o => o == Ordering::Greater,
        }
    }
}

fn controller_uid(meta: &ObjectMeta, kind: &str) -> Option<String> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true) && o.kind == kind).map(|o| o.uid.clone())
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

/// Reduces a Job: counts, the conditions that hold (type and reason only) and its times.
pub fn job_rec(job: &JobStatusOnly) -> JobRec {
    let st = job.status.as_ref();
    let mut conditions: Vec<RunnerCondition> = st
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.status == "True")
        .map(|c| RunnerCondition { type_: c.type_.clone(), reason: non_empty(&c.reason) })
        .collect();
    // The API server's order is not part of the news.
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    JobRec {
        meta: meta_of(job),
        session: job.labels().get(SESSION_LABEL).cloned(),
        owner_uid: controller_uid(&job.metadata, "AgenticSession"),
        run: job.labels().get(RUN_LABEL).and_then(|r| r.parse().ok()),
        view: RunnerJob {
            name: job.name_any(),
            active: st.and_then(|s| s.active).unwrap_or(0),
            succeeded: st.and_then(|s| s.succeeded).unwrap_or(0),
            failed: st.and_then(|s| s.failed).unwrap_or(0),
            conditions,
            start_time: st.and_then(|s| s.start_time.as_ref()).and_then(|t| to_chrono(&t.0)),
            completion_time: st.and_then(|s| s.completion_time.as_ref()).and_then(|t| to_chrono(&t.0)),
        },
    }
}

fn container_view(c: &ContainerStatus) -> RunnerContainer {
    let s = c.state.as_ref();
    let (state, reason, exit_code) = if let Some(t) = s.and_then(|s| s.terminated.as_ref()) {
        (ContainerState::Terminated, non_empty(&t.reason), Some(t.exit_code))
    } else if s.and_then(|s| s.running.as_ref()).is_some() {
        (ContainerState::Running, None, None)
    } else {
        // No state reported means waiting (the API's default).
        (ContainerState::Waiting, s.and_then(|s| s.waiting.as_ref()).and_then(|w| non_empty(&w.reason)), None)
    };
    RunnerContainer { name: c.name.clone(), state, reason, exit_code, restart_count: c.restart_count }
}

/// Reduces a pod: phase, node, why it is not scheduled, and the runner container's state.
/// Messages are left out: they change without news (the scheduler's retries) and may quote
/// what the runner printed.
pub fn pod_rec(pod: &PodStatusOnly) -> PodRec {
    let st = pod.status.as_ref();
    let statuses = st.and_then(|s| s.container_statuses.as_ref());
    let runner = statuses
        .and_then(|cs| cs.iter().find(|c| c.name == RUNNER_CONTAINER).or_else(|| cs.first()))
        .map(container_view);
    let scheduling_reason = st
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| non_empty(&c.reason).unwrap_or_else(|| "Unscheduled".into()));
    PodRec {
        meta: meta_of(pod),
        job_uid: controller_uid(&pod.metadata, "Job"),
        session: pod.labels().get(SESSION_LABEL).cloned(),
        created: pod.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)),
        view: RunnerPod {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            phase: st.and_then(|s| non_empty(&s.phase)).unwrap_or_else(|| "Pending".into()),
            node_name: pod.spec.as_ref().and_then(|s| non_empty(&s.node_name)),
            scheduling_reason,
            reason: st.and_then(|s| non_empty(&s.reason)),
            container: runner,
        },
    }
}

/// The runner view of a session whose Job is `job` and newest pod `pod`, and the version it
/// was taken at (`<jobRV>` or `<jobRV>+<podRV>`).
pub fn runner_view(session: &str, job: &JobRec, pod: Option<&PodRec>) -> (String, RunnerView) {
    let version = match pod {
        Some(p) => format!("{}+{}", job.meta.resource_version, p.meta.resource_version),
        None => job.meta.resource_version.clone(),
    };
    let view = RunnerView {
        name: session.to_string(),
        run: job.run,
        job: Some(job.view.clone()),
        pod: pod.map(|p| p.view.clone()),
    };
    (version, view)
}

/// The runner-gone view of a session: it has no runner Job (any more).
pub fn gone(session: &str) -> RunnerView {
    RunnerView { name: session.to_string(), run: None, job: None, pod: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> PodRec {
        pod_rec(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn pod_spec_and_env_are_never_read() {
        let secret = "prompt-and-env-value-7f3a";
        let p: PodStatusOnly = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-job-abc", "namespace": "p", "uid": "pu", "resourceVersion": "9",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "s-job", "uid": "ju", "controller": true}]},
            "spec": {"nodeName": "kwok-node-0", "containers": [{"name": "ambient-code-runner", "image": "i",
                "env": [{"name": "PROMPT", "value": secret}]}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "ambient-code-runner", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-28T10:00:00Z"}}}]},
        }))
        .unwrap();
        assert!(!format!("{p:?}").contains(secret));
        let r = pod_rec(&p);
        assert_eq!(r.job_uid.as_deref(), Some("ju"));
        assert_eq!(r.view.node_name.as_deref(), Some("kwok-node-0"));
        assert_eq!(r.view.container.as_ref().map(|c| c.state), Some(ContainerState::Running));
    }

    #[test]
    fn pod_reasons_are_reported() {
        let unschedulable = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available"}]},
        }));
        assert_eq!(unschedulable.view.scheduling_reason.as_deref(), Some("Unschedulable"));
        assert_eq!(unschedulable.view.container, None);
        let pulling = pod(serde_json::json!({
            "metadata": {"name": "b"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "ambient-code-runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]},
        }));
        assert_eq!(pulling.view.scheduling_reason, None);
        let c = pulling.view.container.unwrap();
        assert_eq!(
            (c.state, c.reason.as_deref(), c.exit_code),
            (ContainerState::Waiting, Some("ImagePullBackOff"), None)
        );
        let oom = pod(serde_json::json!({
            "metadata": {"name": "c"},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "sidecar", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}},
                {"name": "ambient-code-runner", "image": "i", "imageID": "", "ready": false, "restartCount": 2,
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "printed by the runner"}}}]},
        }));
        let c = oom.view.container.unwrap();
        assert_eq!(
            (c.name.as_str(), c.state, c.reason.as_deref(), c.exit_code, c.restart_count),
            ("ambient-code-runner", ContainerState::Terminated, Some("OOMKilled"), Some(137), 2)
        );
        assert_eq!(oom.view.phase, "Failed");
    }

    #[test]
    fn job_keeps_counts_and_holding_conditions_only() {
        let j: JobStatusOnly = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-job", "namespace": "p", "uid": "ju", "resourceVersion": "5",
                "labels": {"agentic-session": "s", "ambient-code.io/run": "2"},
                "ownerReferences": [{"apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSession", "name": "s", "uid": "su", "controller": true}]},
            "spec": {"template": {"spec": {"containers": [{"name": "r", "env": [{"name": "PROMPT", "value": "x"}]}]}}},
            "status": {"failed": 1, "startTime": "2026-11-28T10:00:00Z", "conditions": [
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"},
                {"type": "FailureTarget", "status": "False"}]},
        }))
        .unwrap();
        let r = job_rec(&j);
        assert_eq!(r.run, Some(2));
        assert!(r.runs("s", "su"));
        assert!(!r.runs("s", "another-session-of-that-name"));
        assert!(!r.runs("t", "su"));
        assert_eq!((r.view.active, r.view.succeeded, r.view.failed), (0, 0, 1));
        assert_eq!(
            r.view.conditions,
            vec![RunnerCondition { type_: "Failed".into(), reason: Some("DeadlineExceeded".into()) }]
        );
        assert!(r.view.start_time.is_some());
    }
}
