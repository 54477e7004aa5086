//! Session lifecycle through kwok: Completed, Failed/Timeout, Stopped, start again, runner
//! status reports, delete garbage-collects. The reconciler runs under its deploy/ ServiceAccount.

mod common;

use std::time::Duration;

use ambient_tests::DemoUser::{Alice, Bob};
use ambient_tests::{TestEnv, eventually};
use common::{Harness, code};
use events::commands::*;
use events::crd::AgenticSession;
use events::{Phase, Principal, ProjectName, SessionName};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams};

fn create(name: &str, timeout: i64, run_for: &str) -> CommandBody {
    CommandBody::SessionCreate(SessionCreate::new(
        SessionName::new(name).unwrap(),
        serde_json::from_value(serde_json::json!({
            "prompt": "do it",
            "timeout": timeout,
            "environmentVariables": {"KWOK_RUN_DURATION": run_for},
        }))
        .unwrap(),
    ))
}

fn sref(name: &str) -> SessionRef {
    SessionRef { name: SessionName::new(name).unwrap() }
}

async fn wait_phase(
    env: &TestEnv,
    p: &ProjectName,
    s: &str,
    want: Phase,
    within: Duration,
) -> anyhow::Result<AgenticSession> {
    let api = Api::<AgenticSession>::namespaced(env.admin(), p.as_str());
    eventually(&format!("{s} {want}"), within, || {
        let api = api.clone();
        let s = s.to_string();
        async move {
            let got = api.get(&s).await?;
            Ok((got.status.as_ref().and_then(|st| st.phase) == Some(want)).then_some(got))
        }
    })
    .await
}

async fn job_and_pods(env: &TestEnv, p: &ProjectName, s: &str) -> anyhow::Result<(bool, usize)> {
    let job = Api::<Job>::namespaced(env.admin(), p.as_str()).get_opt(&format!("{s}-job")).await?;
    let pods = Api::<Pod>::namespaced(env.admin(), p.as_str())
        .list(&ListParams::default().labels(&format!("job-name={s}-job")))
        .await?;
    Ok((job.is_some(), pods.items.len()))
}

#[tokio::test]
async fn session_lifecycle() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let env = h.env.clone();
    let p = h.project("sess", Alice).await?;

    // Runs to Completed through kwok; the Job is owned with the served apiVersion.
    h.ok(&p, Alice, create("quick", 600, "2s")).await?;
    wait_phase(&env, &p, "quick", Phase::Running, Duration::from_secs(60)).await?;
    let job = Api::<Job>::namespaced(env.admin(), p.as_str()).get("quick-job").await?;
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.api_version, "vteam.ambient-code/v1alpha1");
    assert_eq!(owner.controller, Some(true));
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(600));
    assert_eq!(spec.backoff_limit, Some(0));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("ambient-runner"));
    let envs: Vec<_> = pod.containers[0].env.as_ref().unwrap().iter().map(|e| e.name.clone()).collect();
    for want in [
        "AGENTIC_SESSION_NAME",
        "AGENTIC_SESSION_NAMESPACE",
        "PROMPT",
        "LLM_MODEL",
        "LLM_TEMPERATURE",
        "LLM_MAX_TOKENS",
        "TIMEOUT",
        "BACKEND_API_URL",
        "INTERACTIVE",
        "KWOK_RUN_DURATION",
    ] {
        assert!(envs.contains(&want.to_string()), "{want} missing from {envs:?}");
    }
    // The project's runner ServiceAccount exists, and no session has one of its own.
    Api::<ServiceAccount>::namespaced(env.admin(), p.as_str()).get("ambient-runner").await?;
    let runner_pod = ambient_tests::runner_pod(&env.admin(), p.as_str(), "quick").await?;
    let done = wait_phase(&env, &p, "quick", Phase::Completed, Duration::from_secs(90)).await?;
    let st = done.status.unwrap();
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    assert_eq!(st.job_name.as_deref(), Some("quick-job"));
    assert_eq!(st.observed_generation, done.metadata.generation);
    // kstatus reads a Completed session as done (Current), not as still progressing.
    let holds = |t: &str| st.conditions.iter().find(|c| c.type_ == t).map(|c| c.status.as_str());
    assert_eq!((holds("Ready"), holds("Reconciling"), holds("Stalled")), (Some("True"), Some("False"), Some("False")));

    // The runner reports status with its pod-bound identity; others may not: not the
    // ServiceAccount without a pod, nor a pod whose name is another session's.
    let bound_to = |pod: &str| {
        let mut who = Principal::of_service_account(p.as_str(), "ambient-runner");
        who.extra.insert(events::crd::runner::POD_NAME_EXTRA.into(), vec![pod.into()]);
        who.extra.insert(events::crd::runner::POD_UID_EXTRA.into(), vec!["u-1".into()]);
        who
    };
    let runner = bound_to(runner_pod.metadata.name.as_deref().unwrap_or_default());
    let report = CommandBody::SessionStatus(SessionStatusReport {
        name: SessionName::new("quick")?,
        status: RunnerStatus { result: Some("42".into()), num_turns: Some(3), ..Default::default() },
    });
    let cmd = events::Command::new(p.clone(), runner.clone(), report.clone());
    h.publish(&cmd).await?;
    let r = h.result(&cmd).await?;
    assert_eq!(code(&r), 200, "{r:?}");
    let s = Api::<AgenticSession>::namespaced(env.admin(), p.as_str()).get("quick").await?;
    assert_eq!(s.status.as_ref().unwrap().result.as_deref(), Some("42"));
    assert_eq!(code(&h.run(&p, Bob, report.clone()).await?), 403);
    for who in [Principal::of_service_account(p.as_str(), "ambient-runner"), bound_to("other-job-x7k2p")] {
        let cmd = events::Command::new(p.clone(), who.clone(), report.clone());
        h.publish(&cmd).await?;
        assert_eq!(code(&h.result(&cmd).await?), 403, "{who:?}");
    }
    let dn = CommandBody::SessionDisplayName(SessionDisplayName {
        name: SessionName::new("quick")?,
        display_name: "Quick one".into(),
    });
    let cmd = events::Command::new(p.clone(), runner, dn);
    h.publish(&cmd).await?;
    assert_eq!(code(&h.result(&cmd).await?), 200);

    // Start on a finished session runs it again (run 2); start while running is a conflict.
    h.ok(&p, Alice, CommandBody::SessionStart(sref("quick"))).await?;
    assert_eq!(code(&h.run(&p, Alice, CommandBody::SessionStart(sref("quick"))).await?), 409);
    let again = wait_phase(&env, &p, "quick", Phase::Completed, Duration::from_secs(120)).await?;
    assert_eq!(again.status.as_ref().unwrap().run, Some(2));
    assert!(again.status.as_ref().unwrap().result.is_none(), "the previous run's result is cleared");
    let job = Api::<Job>::namespaced(env.admin(), p.as_str()).get("quick-job").await?;
    assert_eq!(job.metadata.labels.as_ref().unwrap()["ambient-code.io/run"], "2");

    // Stop: Stopped, no Job and no pods.
    h.ok(&p, Alice, create("long", 600, "1h")).await?;
    wait_phase(&env, &p, "long", Phase::Running, Duration::from_secs(60)).await?;
    assert_eq!(code(&h.run(&p, Bob, CommandBody::SessionStop(sref("long"))).await?), 403);
    h.ok(&p, Alice, CommandBody::SessionStop(sref("long"))).await?;
    let stopped = wait_phase(&env, &p, "long", Phase::Stopped, Duration::from_secs(30)).await?;
    assert_eq!(stopped.status.unwrap().reason.as_deref(), Some("StopRequested"));
    eventually("no job or pods after stop", Duration::from_secs(60), || {
        let (env, p) = (env.clone(), p.clone());
        async move { Ok((job_and_pods(&env, &p, "long").await? == (false, 0)).then_some(())) }
    })
    .await?;
    assert_eq!(
        code(&h.run(&p, Alice, CommandBody::SessionStop(sref("quick"))).await?),
        409,
        "a completed session is not running"
    );

    // Deadline: Failed with reason Timeout.
    h.ok(&p, Alice, create("slow", 30, "1h")).await?;
    let failed = wait_phase(&env, &p, "slow", Phase::Failed, Duration::from_secs(150)).await?;
    assert_eq!(failed.status.unwrap().reason.as_deref(), Some("Timeout"));

    // An unusable spec: refused when its command is applied (the rule of the api, checked
    // again), and Error when written straight to the cluster, bypassing commands.
    let spec: events::crd::AgenticSessionSpec =
        serde_json::from_value(serde_json::json!({"prompt": "x", "environmentVariables": {"NOT-VALID": "1"}}))?;
    let bad = CommandBody::SessionCreate(SessionCreate::new(SessionName::new("bad-env")?, spec.clone()));
    assert_eq!(code(&h.run(&p, Alice, bad).await?), 422, "an invalid variable name is refused at apply time");
    Api::<AgenticSession>::namespaced(env.admin(), p.as_str())
        .create(&Default::default(), &AgenticSession::new("bad-env", spec))
        .await?;
    let errored = wait_phase(&env, &p, "bad-env", Phase::Error, Duration::from_secs(30)).await?;
    assert_eq!(errored.status.unwrap().reason.as_deref(), Some("InvalidSpec"));

    // Delete garbage-collects the Job and pods.
    h.ok(&p, Alice, CommandBody::SessionDelete(sref("quick"))).await?;
    eventually("quick's children collected", Duration::from_secs(90), || {
        let (env, p) = (env.clone(), p.clone());
        async move {
            let gone = job_and_pods(&env, &p, "quick").await? == (false, 0);
            Ok(gone.then_some(()))
        }
    })
    .await?;
    Ok(())
}
