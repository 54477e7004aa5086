//! Two projectors share one Lease: only the holder projects, both are ready; when the holder
//! dies the other takes over and continues without missing or repeating an event.

mod common;

use std::time::Duration;

use ambient_tests::TestEnv;
use ambient_tests::components::{Component, ServiceProcess};
use common::*;
use events::Phase;

async fn readyz(p: &ServiceProcess) -> anyhow::Result<u16> {
    Ok(reqwest::get(format!("http://{}/readyz", p.health_addr())).await?.status().as_u16())
}

#[tokio::test]
async fn only_the_lease_holder_projects_and_a_standby_takes_over() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let mut leader = start_projector(&env, &scope, None).await?;
    // The standby is ready (a rollout may proceed, a node may drain) but does not lead while
    // another instance holds the Lease.
    let kubeconfig = Component::Projector.kubeconfig(&env).await?;
    let nats = env.nats_url().to_string();
    let (lease, run) = (scope.lease.clone(), scope.run.clone());
    let standby = ServiceProcess::start(Component::Projector, move |health| {
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--nats-url={nats}"),
            format!("--health-addr={health}"),
            format!("--lease-name={lease}"),
            "--lease-seconds=3".into(),
            format!("--project-selector={RUN_LABEL}={run}"),
        ]
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(readyz(&standby).await?, 200);
    assert_eq!(leader_gauge(&standby).await?, Some(0.0));
    assert_eq!(leader_gauge(&leader).await?, Some(1.0));

    let p = create_project(&env, &scope, "proj-lease").await?;
    create_session(&env, &p, "s", "v").await?;
    wait_events(&env, &p, "created", |e| of(e, "session", "s").len() == 2).await?;
    assert!(!standby.log().contains("status event published"), "the standby emitted events");

    leader.kill9().await;
    wait_ready(&standby).await?;
    assert_eq!(leader_gauge(&standby).await?, Some(1.0));
    set_phase(&env, &p, "s", Phase::Running).await?;
    let evs = wait_events(&env, &p, "after failover", |e| of(e, "session", "s").len() == 4).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let evs_final = status_events(&env, &p).await?;
    assert_eq!(evs_final.len(), evs.len(), "{}", summary(&evs_final));
    assert_eq!(kinds(&of(&evs, "project", &p)), ["changed"]);
    assert_eq!(
        transitions(&of(&evs, "session", "s")),
        [(None, Phase::Pending), (Some(Phase::Pending), Phase::Running)]
    );
    assert_unique_ids(&evs);
    assert!(standby.log().contains("leadership acquired"));
    drop(leader);
    Ok(())
}
