//! The runner and settings views: a stop reports the runner gone exactly once, a new run is
//! reported again, a ProjectSettings edit gives exactly one settings event (status writes and
//! a renamed runner Secret give none), and a projector killed in the middle of a run catches up
//! with one event per view, repeating nothing.

mod common;

use std::time::Duration;

use ambient_tests::{TestEnv, eventually};
use common::*;
use events::Role;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

/// Waits until the runner view of `session` satisfies `check`.
async fn wait_runner<F>(env: &TestEnv, p: &str, session: &str, what: &str, check: F) -> anyhow::Result<Vec<Stored>>
where
    F: Fn(&events::status::RunnerView) -> bool,
{
    wait_events(env, p, what, |e| runner_views(e, session).last().is_some_and(|(_, v)| check(v))).await
}

/// The run is over and the Job says so (its last status write).
fn succeeded(v: &events::status::RunnerView) -> bool {
    v.job.as_ref().is_some_and(|j| j.succeeded == 1 && j.conditions.iter().any(|c| c.type_ == "Complete"))
        && v.pod.as_ref().is_some_and(|p| p.phase == "Succeeded")
}

#[tokio::test]
async fn stop_reports_the_runner_gone_once_and_a_new_run_again() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let _projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-stop").await?;
    let session = create_session(&env, &p, "st1", "v").await?;
    // A long run, stopped while its pod runs.
    create_runner_job(&env, &p, &session, 1, "120s", "v", None).await?;
    wait_runner(&env, &p, "st1", "pod running", |v| v.pod.as_ref().is_some_and(|p| p.phase == "Running")).await?;
    delete_runner_job(&env, &p, "st1").await?;
    let evs = wait_runner(&env, &p, "st1", "runner gone", |v| v.job.is_none()).await?;
    let gone = runner_views(&evs, "st1");
    let (last, v) = gone.last().expect("gone");
    assert_eq!(v.pod, None);
    assert!(last.event.id.ends_with("+gone/ambient.session.runner.v1"), "{}", last.event.id);
    // Its pods going away after the Job changes nothing more.
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.admin(), &p);
    eventually("pods gone", Duration::from_secs(60), || async {
        Ok(pods
            .list(&kube::api::ListParams::default().labels("agentic-session=st1"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs = status_events(&env, &p).await?;
    let runner = runner_views(&evs, "st1");
    assert_eq!(runner.iter().filter(|(_, v)| v.job.is_none()).count(), 1, "one gone event:\n{}", summary(&evs));
    assert!(runner.last().is_some_and(|(_, v)| v.job.is_none()), "{}", summary(&evs));

    // Started again: a new Job (run 2) is reported, to its end.
    create_runner_job(&env, &p, &session, 2, "1s", "v", None).await?;
    let evs = wait_runner(&env, &p, "st1", "second run succeeded", succeeded).await?;
    let runner = runner_views(&evs, "st1");
    assert!(runner.last().is_some_and(|(_, v)| v.run == Some(2)));
    assert!(runner.windows(2).all(|w| w[0].1 != w[1].1), "only changes are published:\n{}", summary(&evs));
    assert_unique_ids(&evs);
    // The read model holds the last runner view next to the session.
    let kv = kv_entries(&env, &p).await?;
    let (_, _, value) = kv.iter().find(|(_, k, _)| k == &format!("{p}.st1.runner")).expect("runner in the read model");
    let value: serde_json::Value = serde_json::from_str(value)?;
    assert_eq!(value["view"]["job"]["succeeded"], 1);
    Ok(())
}

#[tokio::test]
async fn a_settings_edit_yields_exactly_one_event() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let _projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-settings").await?;
    put_settings(
        &env,
        &p,
        serde_json::json!({"groupAccess": [{"groupName": "team-a", "role": "view"}], "runnerSecretsName": "runner-a"}),
    )
    .await?;
    let evs = wait_events(&env, &p, "settings", |e| settings_views(e, &p).len() == 1).await?;
    let (first, v) = settings_views(&evs, &p)[0];
    assert!(v.exists && v.runner_secret_configured);
    assert_eq!(v.group_access.len(), 1);
    assert_eq!(first.subject, format!("ambient.status.{p}.project.{p}"));
    // The project came first.
    assert!(of(&evs, "project", &p)[0].seq < first.seq);

    // Nothing public changes: a status write, another runner Secret name.
    let api = Api::<events::crd::ProjectSettings>::namespaced(env.admin(), &p);
    api.patch_status(
        "projectsettings",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"observedGeneration": 1}})),
    )
    .await?;
    put_settings(
        &env,
        &p,
        serde_json::json!({"groupAccess": [{"groupName": "team-a", "role": "view"}], "runnerSecretsName": "runner-b"}),
    )
    .await?;
    // One edit: a second group.
    put_settings(
        &env,
        &p,
        serde_json::json!({"groupAccess": [{"groupName": "team-a", "role": "view"}, {"groupName": "team-b", "role": "edit"}], "runnerSecretsName": "runner-b"}),
    )
    .await?;
    let evs = wait_events(&env, &p, "edit", |e| settings_views(e, &p).len() >= 2).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs_final = status_events(&env, &p).await?;
    assert_eq!(evs_final.len(), evs.len(), "{}", summary(&evs_final));
    let views = settings_views(&evs_final, &p);
    assert_eq!(views.len(), 2, "{}", summary(&evs_final));
    assert!(views[1].1.group_access.iter().any(|g| g.group_name == "team-b" && g.role == Role::Edit));

    // Deleted while the project remains: reported once as not existing.
    api.delete("projectsettings", &DeleteParams::default()).await?;
    let evs = wait_events(&env, &p, "settings gone", |e| settings_views(e, &p).last().is_some_and(|(_, v)| !v.exists))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_events(&env, &p).await?.len(), evs.len());
    assert_eq!(settings_views(&evs, &p).len(), 3, "{}", summary(&evs));
    assert_unique_ids(&evs);
    Ok(())
}

#[tokio::test]
async fn restart_in_the_middle_of_a_run_repeats_nothing() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let mut projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-mid").await?;
    put_settings(&env, &p, serde_json::json!({"groupAccess": []})).await?;
    let session = create_session(&env, &p, "m1", "v").await?;
    create_runner_job(&env, &p, &session, 1, "6s", "v", None).await?;
    wait_runner(&env, &p, "m1", "pod running", |v| v.pod.as_ref().is_some_and(|p| p.phase == "Running")).await?;
    wait_events(&env, &p, "settings", |e| settings_views(e, &p).len() == 1).await?;
    projector.kill9().await;
    let before = status_events(&env, &p).await?;

    // While it is down: the run finishes, the settings change.
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(env.admin(), &p);
    eventually("Job succeeded while the projector is down", Duration::from_secs(60), || async {
        let status = jobs.get("m1-job").await?.status.unwrap_or_default();
        let complete = status.conditions.iter().flatten().any(|c| c.type_ == "Complete" && c.status == "True");
        Ok((complete && status.succeeded == Some(1)).then_some(()))
    })
    .await?;
    put_settings(&env, &p, serde_json::json!({"groupAccess": [{"groupName": "team-c", "role": "admin"}]})).await?;

    projector.restart().await?;
    wait_ready(&projector).await?;
    let evs = wait_runner(&env, &p, "m1", "caught up", succeeded).await?;
    let evs = if settings_views(&evs, &p).len() == 2 {
        evs
    } else {
        wait_events(&env, &p, "settings caught up", |e| settings_views(e, &p).len() == 2).await?
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_events(&env, &p).await?;
    assert_eq!(after.len(), evs.len());
    // One event per view that changed while down; nothing else repeated.
    let new: Vec<&Stored> = after.iter().filter(|s| s.seq > before.last().map_or(0, |b| b.seq)).collect();
    let mut types: Vec<&str> = new.iter().map(|s| s.event.body.type_str()).collect();
    types.sort();
    assert_eq!(types, ["ambient.project.settings.v1", "ambient.session.runner.v1"], "{}", summary(&after));
    assert_unique_ids(&after);

    // A second crash and restart with nothing changed emits nothing.
    projector.kill9().await;
    projector.restart().await?;
    wait_ready(&projector).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_events(&env, &p).await?.len(), after.len(), "{}", summary(&status_events(&env, &p).await?));
    Ok(())
}
