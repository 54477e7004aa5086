//! What the command path (`apply`) and the session controller both write about a session:
//! guarded status patches, conditions, and the removal of a run's Job. Both sides decide a
//! session's status, so the rules for writing it live below both.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use events::Phase;
use events::crd::AgenticSession;

/// Now, as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A status merge patch that applies only to the version of `s` it was computed from.
///
/// Status is decided from what was read (the controller's cache, a command's GET); without the
/// precondition a stale view would overwrite a newer phase, e.g. a reconcile that still saw
/// Running turning a just-stopped session back into Running or Failed. A stale write now gets
/// 409 Conflict and is recomputed from fresh state.
pub fn guarded(s: &AgenticSession, status: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"resourceVersion": s.resource_version()}, "status": status})
}

/// A condition with the current time.
pub fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now(),
    }
}

/// The conditions a session shows in `phase`, as kstatus (Argo CD, Flux, `kubectl wait`)
/// reads them: `Ready` once the run is up or has ended as asked (Running, Completed, Stopped),
/// `Reconciling` while it is being set up, `Stalled` when it failed. A Completed session is
/// then done rather than "still progressing".
pub fn phase_conditions(phase: Phase) -> [(&'static str, bool); 3] {
    use Phase::*;
    [
        ("Ready", matches!(phase, Running | Completed | Stopped)),
        ("Reconciling", matches!(phase, Pending | Creating)),
        ("Stalled", matches!(phase, Failed | Error)),
    ]
}

/// `have` with the conditions of `phase`, each with `reason` and `message`; a condition whose
/// status and reason hold keeps its transition time. Also whether any status or reason changed.
pub fn with_phase_conditions(
    mut have: Vec<Condition>,
    phase: Phase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> (Vec<Condition>, bool) {
    let mut changed = false;
    for (type_, holds) in phase_conditions(phase) {
        let status = if holds { "True" } else { "False" };
        match have.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == status && c.reason == reason => c.observed_generation = generation,
            Some(c) => {
                *c = condition(type_, status, reason, message, generation);
                changed = true;
            }
            None => {
                have.push(condition(type_, status, reason, message, generation));
                changed = true;
            }
        }
    }
    (have, changed)
}

/// Deletes the Job `job` as it was seen, and its pods: nothing if the Job of that name is
/// another one by now. The session controller works from a watch cache, and every replica runs
/// it: a pass that still sees the previous run's Job must not delete the next run's, which has
/// the same name (found by a stop and start in quick succession).
pub async fn delete_seen_job(client: &kube::Client, ns: &str, job: &Job) -> Result<(), kube::Error> {
    let (Some(name), Some(uid)) = (job.metadata.name.as_deref(), job.metadata.uid.as_deref()) else {
        return Ok(());
    };
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: Some(uid.into()), resource_version: None }),
        ..DeleteParams::background()
    };
    match Api::<Job>::namespaced(client.clone(), ns).delete(name, &dp).await {
        Ok(_) => {}
        // Gone, or another Job of that name (the uid precondition failed).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => return Err(e),
    }
    // The Job controller labels the pods it makes with their Job's uid.
    let pods = ListParams::default().labels(&format!("batch.kubernetes.io/controller-uid={uid}"));
    Api::<Pod>::namespaced(client.clone(), ns).delete_collection(&DeleteParams::background(), &pods).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kstatus_reads_every_phase_right() {
        // (phase, Ready, Reconciling, Stalled): kstatus says InProgress, Current or Failed.
        let table = [
            (Phase::Pending, false, true, false),
            (Phase::Creating, false, true, false),
            (Phase::Running, true, false, false),
            (Phase::Completed, true, false, false),
            (Phase::Stopped, true, false, false),
            (Phase::Failed, false, false, true),
            (Phase::Error, false, false, true),
        ];
        for (phase, ready, reconciling, stalled) in table {
            assert_eq!(
                phase_conditions(phase),
                [("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled)],
                "{phase}"
            );
        }
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let (first, changed) = with_phase_conditions(vec![], Phase::Running, "Running", "up", Some(1));
        assert!(changed);
        assert_eq!(first.len(), 3);
        let (again, changed) = with_phase_conditions(first.clone(), Phase::Running, "Running", "up", Some(2));
        assert!(!changed);
        assert_eq!(again[0].last_transition_time, first[0].last_transition_time);
        assert_eq!(again[0].observed_generation, Some(2));
        let (done, changed) = with_phase_conditions(again, Phase::Completed, "Completed", "done", Some(2));
        assert!(changed);
        assert!(done.iter().any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Completed"));
        assert!(done.iter().any(|c| c.type_ == "Stalled" && c.status == "False"));
    }
}
