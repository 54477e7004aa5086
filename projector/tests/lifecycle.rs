//! A session run yields exactly the expected ordered status events and read model; a
//! deletion yields one deleted event; restarts (kill -9) with changes and deletions made while
//! the projector is down lose nothing and repeat nothing.

mod common;

use std::time::Duration;

use ambient_tests::TestEnv;
use common::*;
use events::{Phase, StatusBody};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};

#[tokio::test]
async fn session_run_yields_ordered_events_and_one_deletion() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-life").await?;
    create_session(&env, &p, "run1", "env-secret-value-1").await?;
    let phases = [Phase::Creating, Phase::Running, Phase::Completed];
    wait_events(&env, &p, "session created", |e| of(e, "session", "run1").len() == 2).await?;
    for (i, ph) in phases.iter().enumerate() {
        set_phase(&env, &p, "run1", *ph).await?;
        // One step at a time, as a reconciler and a runner would move it.
        wait_events(&env, &p, &format!("phase {ph:?}"), |e| of(e, "session", "run1").len() == 4 + 2 * i).await?;
    }
    // A status write that changes nothing public (a heartbeat) emits nothing.
    sessions(&env, &p)
        .patch_status(
            "run1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"observedGeneration": 1}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let evs = status_events(&env, &p).await?;
    let s = of(&evs, "session", "run1");
    assert_eq!(
        kinds(&s),
        ["changed", "phase", "changed", "phase", "changed", "phase", "changed", "phase"],
        "{}",
        summary(&evs)
    );
    assert_eq!(
        transitions(&s),
        [
            (None, Phase::Pending),
            (Some(Phase::Pending), Phase::Creating),
            (Some(Phase::Creating), Phase::Running),
            (Some(Phase::Running), Phase::Completed),
        ]
    );
    // Transitions after the first carry how long the previous phase lasted and the run's times.
    for t in s.iter().filter_map(|x| match &x.event.body {
        StatusBody::SessionPhase(t) if t.previous_phase.is_some() => Some(t),
        _ => None,
    }) {
        assert!(t.previous_phase_seconds.is_some_and(|x| x >= 0.0), "{t:?}");
    }
    match &s[7].event.body {
        StatusBody::SessionPhase(t) => {
            assert!(t.start_time.is_some() && t.completion_time.is_some(), "{t:?}");
        }
        b => panic!("{b:?}"),
    }
    match &s[6].event.body {
        StatusBody::SessionChanged(v) => {
            assert_eq!(v.phase, Phase::Completed);
            assert_eq!(v.environment_variable_names, ["API_KEY"]);
            assert_eq!(v.created_by.as_deref(), Some("alice"));
        }
        b => panic!("{b:?}"),
    }
    // The project appeared once, before its session.
    let proj = of(&evs, "project", &p);
    assert_eq!(kinds(&proj), ["changed"]);
    assert!(proj[0].seq < s[0].seq);
    // Stream order is per-object order; ids are unique.
    assert!(s.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_unique_ids(&evs);

    // The read model holds the last view.
    let kv = kv_entries(&env, &p).await?;
    let sess = kv.iter().find(|(_, k, _)| k == &format!("{p}.run1")).expect("session in the read model");
    let v: serde_json::Value = serde_json::from_str(&sess.2)?;
    assert_eq!(v["view"]["phase"], "Completed");
    assert!(v["uid"].is_string() && v["version"].is_string());
    assert!(kv.iter().any(|(_, k, _)| k == &p));

    delete_session(&env, &p, "run1").await?;
    wait_events(&env, &p, "deleted", |e| of(e, "session", "run1").len() == 9).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs = status_events(&env, &p).await?;
    let s = of(&evs, "session", "run1");
    assert_eq!(kinds(&s).last().map(String::as_str), Some("deleted"));
    assert_eq!(s.len(), 9, "exactly one deleted event:\n{}", summary(&evs));
    assert!(!kv_entries(&env, &p).await?.iter().any(|(_, k, _)| k == &format!("{p}.run1")));

    // Unlabelled (no longer a project): the project is deleted once, and its history purged:
    // only the deletion tombstone (stamped with the namespace's uid) stays for consumers.
    let ns_uid = Api::<Namespace>::all(env.admin()).get(&p).await?.metadata.uid;
    Api::<Namespace>::all(env.admin())
        .patch(
            &p,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"ambient-code.io/managed": null}}})),
        )
        .await?;
    let evs = wait_events(&env, &p, "project deleted and purged", |e| {
        e.len() == 1 && kinds(&of(e, "project", &p)) == ["deleted"]
    })
    .await?;
    assert_eq!(evs[0].event.project_uid, ns_uid);
    assert!(kv_entries(&env, &p).await?.is_empty());
    let metrics = projector.metrics().await?;
    assert!(metrics.contains("projector_events_emitted_total"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn restart_catches_up_without_loss_or_duplicates() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let mut projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-restart").await?;
    for s in ["s1", "s2", "s3"] {
        create_session(&env, &p, s, "v").await?;
    }
    set_phase(&env, &p, "s3", Phase::Running).await?;
    let gone = create_project(&env, &scope, "proj-gone").await?;
    create_session(&env, &gone, "g1", "v").await?;
    wait_events(&env, &p, "initial sessions", |e| {
        ["s1", "s2"].iter().all(|s| of(e, "session", s).len() == 2) && of(e, "session", "s3").len() == 4
    })
    .await?;
    wait_events(&env, &gone, "second project", |e| of(e, "session", "g1").len() == 2).await?;

    projector.kill9().await;
    // While it is down: a phase change, a deletion, a creation, a project change, a project
    // deleted with its session.
    set_phase(&env, &p, "s1", Phase::Creating).await?;
    set_phase(&env, &p, "s1", Phase::Running).await?;
    delete_session(&env, &p, "s2").await?;
    create_session(&env, &p, "s4", "v").await?;
    Api::<Namespace>::all(env.admin())
        .patch(
            &p,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"openshift.io/description": "changed while down"}}}),
            ),
        )
        .await?;
    Api::<Namespace>::all(env.admin())
        .patch(
            &gone,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"ambient-code.io/managed": null}}})),
        )
        .await?;

    projector.restart().await?;
    wait_ready(&projector).await?;
    let evs = wait_events(&env, &p, "catch-up", |e| {
        of(e, "session", "s1").len() == 4 && of(e, "session", "s2").len() == 3 && of(e, "session", "s4").len() == 2
    })
    .await?;
    let s1 = of(&evs, "session", "s1");
    assert_eq!(kinds(&s1), ["changed", "phase", "changed", "phase"]);
    // What happened while down is one transition from the last projected phase.
    assert_eq!(transitions(&s1), [(None, Phase::Pending), (Some(Phase::Pending), Phase::Running)]);
    assert_eq!(kinds(&of(&evs, "session", "s2")), ["changed", "phase", "deleted"]);
    assert_eq!(kinds(&of(&evs, "session", "s3")), ["changed", "phase", "changed", "phase"]);
    let proj = of(&evs, "project", &p);
    assert_eq!(kinds(&proj), ["changed", "changed"]);
    match &proj[1].event.body {
        StatusBody::ProjectChanged(v) => assert_eq!(v.description.as_deref(), Some("changed while down")),
        b => panic!("{b:?}"),
    }
    // Gone while down: reported deleted on restart, and its history purged but the tombstone.
    let g =
        wait_events(&env, &gone, "project gone while down", |e| kinds(&of(e, "project", &gone)) == ["deleted"]).await?;
    assert_eq!(g.len(), 1, "only the tombstone stays:\n{}", summary(&g));

    // Another crash and restart with nothing changed: nothing is emitted again.
    let before = status_events(&env, &p).await?.len();
    projector.kill9().await;
    projector.restart().await?;
    wait_ready(&projector).await?;
    // Live changes after the restart still flow.
    set_phase(&env, &p, "s4", Phase::Creating).await?;
    let evs = wait_events(&env, &p, "live after restart", |e| of(e, "session", "s4").len() == 4).await?;
    assert_eq!(evs.len(), before + 2, "only the new change was emitted:\n{}", summary(&evs));
    assert_unique_ids(&evs);
    assert_unique_ids(&g);
    let log = projector.log();
    assert!(log.contains("\"initial catch-up done\"") || log.contains("initial catch-up done"));
    Ok(())
}

/// The same run with a real Job owned by the session, run by kwok: the test plays the
/// reconciler's part (status follows the Job), the projector reports each transition once, and
/// the runner view follows the Job and its pod (created → pod Running → succeeded).
#[tokio::test]
async fn session_run_through_a_kwok_job() -> anyhow::Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;

    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let _projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-kwok").await?;
    let session = create_session(&env, &p, "job1", "v").await?;
    wait_events(&env, &p, "created", |e| of(e, "session", "job1").len() == 2).await?;

    set_phase(&env, &p, "job1", Phase::Creating).await?;
    create_runner_job(&env, &p, &session, 1, "3s", "v", None).await?;
    let jobs = Api::<Job>::namespaced(env.admin(), &p);
    let pods = Api::<Pod>::namespaced(env.admin(), &p);
    // kwok runs the pod briefly: Running, or already past it.
    ambient_tests::components::wait_for("runner pod started", Duration::from_secs(60), || async {
        let l = pods.list(&ListParams::default().labels("job-name=job1-job")).await?;
        Ok(l.items
            .iter()
            .any(|p| matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running" | "Succeeded"))))
    })
    .await?;
    set_phase(&env, &p, "job1", Phase::Running).await?;
    ambient_tests::components::wait_for("Job succeeded", Duration::from_secs(60), || async {
        Ok(jobs.get("job1-job").await?.status.and_then(|s| s.succeeded).unwrap_or(0) >= 1)
    })
    .await?;
    set_phase(&env, &p, "job1", Phase::Completed).await?;
    wait_events(&env, &p, "completed", |e| of(e, "session", "job1").len() == 8).await?;

    // The runner view: the Job first, its pod running, then the Job and pod succeeded. The
    // steps between (scheduling, counts) depend on timing; each event is a change.
    let evs = wait_events(&env, &p, "runner succeeded", |e| {
        runner_views(e, "job1").last().is_some_and(|(_, v)| {
            v.job.as_ref().is_some_and(|j| j.succeeded == 1 && j.conditions.iter().any(|c| c.type_ == "Complete"))
                && v.pod.as_ref().is_some_and(|p| p.phase == "Succeeded")
        })
    })
    .await?;
    let runner = runner_views(&evs, "job1");
    let first_running = runner.iter().position(|(_, v)| v.pod.as_ref().is_some_and(|p| p.phase == "Running"));
    let first_succeeded = runner.iter().position(|(_, v)| v.job.as_ref().is_some_and(|j| j.succeeded == 1));
    assert!(runner[0].1.job.as_ref().is_some_and(|j| j.name == "job1-job" && j.succeeded == 0), "{}", summary(&evs));
    assert_eq!(runner[0].1.run, Some(1));
    assert!(first_running.is_some() && first_running < first_succeeded, "{}", summary(&evs));
    assert!(runner.windows(2).all(|w| w[0].1 != w[1].1), "only changes are published:\n{}", summary(&evs));
    let done = runner.last().and_then(|(_, v)| v.pod.clone()).expect("pod");
    assert_eq!(done.node_name.as_deref(), Some("kwok-node-0"));
    assert!(done.container.as_ref().is_some_and(|c| c.exit_code == Some(0)), "{done:?}");
    // Runner events are on the session's subject, between its phase events.
    assert!(runner.iter().all(|(s, _)| s.subject == format!("ambient.status.{p}.session.job1")));
    let runner_count = runner.len();

    delete_session(&env, &p, "job1").await?;
    wait_events(&env, &p, "deleted", |e| of(e, "session", "job1").len() == 9).await?;
    // The Job goes with its session (garbage collection); the projector reports nothing more.
    ambient_tests::components::wait_for("Job collected", Duration::from_secs(60), || async {
        Ok(jobs.get_opt("job1-job").await?.is_none())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let evs = status_events(&env, &p).await?;
    let s = of(&evs, "session", "job1");
    assert_eq!(
        kinds(&s),
        ["changed", "phase", "changed", "phase", "changed", "phase", "changed", "phase", "deleted"],
        "{}",
        summary(&evs)
    );
    // The session's deletion ends its story: its Job's collection publishes no runner event.
    assert_eq!(runner_views(&evs, "job1").len(), runner_count, "{}", summary(&evs));
    assert!(!kv_entries(&env, &p).await?.iter().any(|(_, k, _)| k.contains("job1")));
    assert_eq!(
        transitions(&s),
        [
            (None, Phase::Pending),
            (Some(Phase::Pending), Phase::Creating),
            (Some(Phase::Creating), Phase::Running),
            (Some(Phase::Running), Phase::Completed),
        ]
    );
    match &s[7].event.body {
        StatusBody::SessionPhase(t) => {
            assert!(t.previous_phase_seconds.is_some_and(|x| x >= 0.0), "{t:?}");
            assert!(t.completion_time.is_some(), "{t:?}");
        }
        b => panic!("{b:?}"),
    }
    assert_unique_ids(&evs);
    Ok(())
}

/// A crash after publishing an object's events but before writing its read-model value: the
/// restarted projector derives the same event ids, and JetStream drops the re-publish.
#[tokio::test]
async fn crash_between_publish_and_read_model_is_deduplicated() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let mut projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-crash").await?;
    create_session(&env, &p, "c1", "v").await?;
    wait_events(&env, &p, "created", |e| of(e, "session", "c1").len() == 2).await?;
    projector.kill9().await;

    // The change the projector "published" just before dying (its read model still says Pending).
    set_phase(&env, &p, "c1", Phase::Running).await?;
    let s = sessions(&env, &p).get("c1").await?;
    let rec = projector::model::session_rec(&s);
    let ty = "ambient.session.changed.v1";
    let ev = events::StatusEvent {
        id: events::StatusEvent::derive_id(&rec.meta.uid, &rec.meta.resource_version, ty),
        project: events::ProjectName::new(&p)?,
        name: "c1".into(),
        time: chrono::Utc::now(),
        project_uid: Api::<Namespace>::all(env.admin()).get(&p).await?.metadata.uid,
        body: StatusBody::SessionChanged(rec.view.clone()),
    };
    let out = events::wire::encode_status(&ev)?;
    env.jetstream().publish_with_headers(out.subject, out.headers, out.payload).await?.await?;

    projector.restart().await?;
    wait_ready(&projector).await?;
    let evs = wait_events(&env, &p, "catch-up", |e| of(e, "session", "c1").len() >= 4).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let evs_final = status_events(&env, &p).await?;
    assert_eq!(evs_final.len(), evs.len());
    let c1 = of(&evs_final, "session", "c1");
    assert_eq!(kinds(&c1), ["changed", "phase", "changed", "phase"], "{}", summary(&evs_final));
    assert_eq!(c1[2].event.id, ev.id, "the pre-crash publish stands for the replayed one");
    assert_unique_ids(&evs_final);
    let metrics = projector.metrics().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("projector_events_duplicate_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    Ok(())
}

/// History a purge missed (the project was deleted while the read model was lost, or before
/// purging existed) is purged at start: with a deletion tombstone last, everything before it;
/// without one, everything, once the API server confirms there is no such namespace.
#[tokio::test]
async fn orphaned_status_history_is_purged_at_start() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let (tombstoned, bare) = (ambient_tests::unique_name("ghost-t"), ambient_tests::unique_name("ghost-b"));
    let publish = |project: String, name: String, body: StatusBody| {
        let env = &env;
        async move {
            let ev = events::StatusEvent {
                id: format!("orphan-{}", uuid::Uuid::now_v7()),
                project: events::ProjectName::new(&project)?,
                name,
                time: chrono::Utc::now(),
                project_uid: Some("gone-uid".into()),
                body,
            };
            let out = events::wire::encode_status(&ev)?;
            env.jetstream().publish_with_headers(out.subject, out.headers, out.payload).await?.await?;
            anyhow::Ok(())
        }
    };
    let tomb =
        |n: &str| events::status::Tombstone { name: n.into(), uid: Some("gone-uid".into()), at: chrono::Utc::now() };
    publish(tombstoned.clone(), "s".into(), StatusBody::SessionDeleted(tomb("s"))).await?;
    publish(tombstoned.clone(), tombstoned.clone(), StatusBody::ProjectDeleted(tomb(&tombstoned))).await?;
    publish(bare.clone(), "s".into(), StatusBody::SessionDeleted(tomb("s"))).await?;
    publish(bare.clone(), bare.clone(), StatusBody::ProjectDeleted(tomb(&bare))).await?;
    publish(bare.clone(), "s2".into(), StatusBody::SessionDeleted(tomb("s2"))).await?;
    // The bare one's project subject must not end in a tombstone: re-use it for a non-tombstone.
    publish(
        bare.clone(),
        bare.clone(),
        StatusBody::ProjectSettings(events::status::SettingsView {
            exists: false,
            group_access: vec![],
            runner_secret_configured: false,
        }),
    )
    .await?;

    let _projector = start_projector(&env, &scope, None).await?;
    let t = wait_events(&env, &tombstoned, "purged below the tombstone", |e| e.len() == 1).await?;
    assert_eq!(kinds(&of(&t, "project", &tombstoned)), ["deleted"]);
    wait_events(&env, &bare, "purged whole", |e| e.is_empty()).await?;
    Ok(())
}
