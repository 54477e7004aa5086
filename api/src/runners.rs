//! Who a session's runner is.
//!
//! Runner pods run as their project's ServiceAccount `ambient-runner`, which holds no RBAC
//! rights. The token the kubelet mounts is bound to the pod, and the TokenReview names that pod
//! (`events::crd::runner::BoundPod`). The token speaks for session S while its pod is the
//! runner pod the projector shows for S: the newest pod of S's current Job (owned by this very
//! session, not an earlier one of the same name), of S's current run. So a runner of a stopped or
//! earlier run, of a deleted session whose name was reused, or of another session reports on
//! nothing, as soon as the projector has seen the change; and the api needs no read of pods.
//!
//! Anyone else is a runner if allowed `update agenticsessions/status` on the session: a cluster
//! admin, or the per-session ServiceAccount of a session started before runners shared one.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use events::crd::AgenticSession;
use events::crd::runner::BoundPod;
use events::status::RunnerView;

use crate::errors::{ApiError, Cause};

/// How long a runner's token waits for the projector to show its pod: a runner's first call
/// comes after its container started, long after the pod was created, so this is only a
/// backstop for a projector that runs behind.
pub const VIEW_LAG: Duration = Duration::from_secs(3);

/// The projector's runner views (the sessions bucket), opened on first use.
#[derive(Default)]
pub struct RunnerViews {
    store: tokio::sync::OnceCell<kv::Store>,
}

impl RunnerViews {
    /// The projector's runner view of `session`, if it has one of this very session (a view left
    /// by an earlier session of the same name is not its).
    pub async fn of(
        &self,
        js: &jetstream::Context,
        project: &str,
        session: &AgenticSession,
    ) -> Result<Option<RunnerView>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Projected {
            uid: String,
            view: RunnerView,
        }
        let unavailable = |e: Cause| ApiError::unavailable_from("the runner view is unavailable", e);
        let store = self
            .store
            .get_or_try_init(|| async { js.get_key_value(events::streams::SESSIONS_BUCKET).await })
            .await
            .map_err(|e| unavailable(e.into()))?;
        let name = session.metadata.name.as_deref().unwrap_or_default();
        let key = format!("{project}.{name}.runner");
        let Some(bytes) = store.get(key).await.map_err(|e| unavailable(e.into()))? else {
            return Ok(None);
        };
        // A value this api cannot read (another projector version) is no runner view, not an error.
        let Ok(v) = serde_json::from_slice::<Projected>(&bytes) else { return Ok(None) };
        Ok((session.metadata.uid.as_deref() == Some(v.uid.as_str())).then_some(v.view))
    }
}

/// Whether `pod` is the runner `view` shows for `session`: the pod of its Job, of its current
/// run.
pub fn is_current_runner(view: &RunnerView, session: &AgenticSession, pod: &BoundPod) -> bool {
    let run = session.status.as_ref().and_then(|s| s.run);
    view.job.is_some()
        && view.run.is_some()
        && view.run == run
        && view.pod.as_ref().is_some_and(|p| p.name == pod.name && p.uid == pod.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::crd::AgenticSessionStatus;
    use events::status::{RunnerJob, RunnerPod};

    fn session(run: Option<i64>) -> AgenticSession {
        let mut s = AgenticSession::new("demo", serde_json::from_value(serde_json::json!({"prompt": "x"})).unwrap());
        s.status = Some(AgenticSessionStatus { run, ..Default::default() });
        s
    }

    fn view(run: Option<i64>, job: bool, pod: Option<(&str, &str)>) -> RunnerView {
        RunnerView {
            name: "demo".into(),
            run,
            job: job.then(|| serde_json::from_value::<RunnerJob>(serde_json::json!({"name": "demo-job"})).unwrap()),
            pod: pod.map(|(name, uid)| {
                serde_json::from_value::<RunnerPod>(serde_json::json!({"name": name, "uid": uid, "phase": "Running"}))
                    .unwrap()
            }),
        }
    }

    #[test]
    fn the_runner_is_the_pod_of_the_current_run() {
        let bound = BoundPod { project: "p", name: "demo-job-x7k2p", uid: "u-1" };
        let current = Some(("demo-job-x7k2p", "u-1"));
        let cases = [
            (view(Some(2), true, current), session(Some(2)), true),
            // The session moved on to another run (a start after a finished one).
            (view(Some(1), true, current), session(Some(2)), false),
            (view(Some(2), true, current), session(None), false),
            (view(None, true, current), session(None), false),
            // The Job is gone (stopped, deleted), or has another pod (same name, other uid).
            (view(Some(2), false, current), session(Some(2)), false),
            (view(Some(2), true, None), session(Some(2)), false),
            (view(Some(2), true, Some(("demo-job-x7k2p", "u-2"))), session(Some(2)), false),
            (view(Some(2), true, Some(("demo-job-b4c5d", "u-1"))), session(Some(2)), false),
        ];
        for (i, (v, s, want)) in cases.iter().enumerate() {
            assert_eq!(is_current_runner(v, s, &bound), *want, "case {i}");
        }
    }
}
