//! The projector works under the NATS permissions deploy/ gives it: a nats-server runs
//! deploy/base/nats/{nats,accounts}.conf, and the projector connects as user `projector`
//! (`--nats-user`/`--nats-password`). It bootstraps the bus, publishes status events, writes
//! and reads back its read model (also after a restart), and feeds an HTTP sink through its
//! durable consumer.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_tests::TestEnv;
use ambient_tests::components::{Component, DeployNats, ServiceProcess, wait_for};
use anyhow::Context as _;
use common::*;
use events::Phase;

#[tokio::test]
async fn projector_works_under_its_deploy_nats_permissions() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let nats = DeployNats::start().await?;
    let scope = Scope::new();
    let p = create_project(&env, &scope, "proj-natsperm").await?;

    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink_got = got.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let got = sink_got.clone();
            async move {
                let ty = headers.get("ce-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                got.lock().unwrap().push(ty);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir()?;
    let sinks = dir.path().join("sinks.json");
    std::fs::write(
        &sinks,
        format!(r#"[{{"name":"perm","url":"http://127.0.0.1:{port}/events","subjects":["ambient.status.{p}.>"]}}]"#),
    )?;

    let kubeconfig = Component::Projector.kubeconfig(&env).await?;
    let (url, password, lease, run) =
        (nats.url.clone(), nats.passwords["projector"].clone(), scope.lease.clone(), scope.run.clone());
    let sinks_arg = sinks.display().to_string();
    let mut projector = ServiceProcess::start(Component::Projector, move |health| {
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--nats-url={url}"),
            "--nats-user=projector".into(),
            format!("--nats-password={password}"),
            format!("--health-addr={health}"),
            format!("--lease-name={lease}"),
            "--lease-seconds=3".into(),
            format!("--project-selector={RUN_LABEL}={run}"),
            format!("--sinks-file={sinks_arg}"),
        ]
    })
    .await?;
    wait_ready(&projector).await?;

    create_session(&env, &p, "s", "v").await?;
    set_phase(&env, &p, "s", Phase::Running).await?;
    // project changed, session changed+phase, changed+phase: all through the sink.
    wait_for("the sink got every event", Duration::from_secs(60), || async { Ok(got.lock().unwrap().len() >= 5) })
        .await
        .with_context(|| format!("projector log:\n{}\nnats log:\n{}", projector.log(), nats.log()))?;
    let types = got.lock().unwrap().clone();
    assert_eq!(
        types,
        [
            "ambient.project.changed.v1",
            "ambient.session.changed.v1",
            "ambient.session.phase.v1",
            "ambient.session.changed.v1",
            "ambient.session.phase.v1"
        ]
    );

    // The read model was written (and is readable back by the projector's user).
    let client =
        async_nats::ConnectOptions::with_user_and_password("projector".into(), nats.passwords["projector"].clone())
            .connect(nats.url.as_str())
            .await?;
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(events::streams::SESSIONS_BUCKET).await?;
    let v = kv.get(format!("{p}.s")).await?.context("session in the read model")?;
    let v: serde_json::Value = serde_json::from_slice(&v)?;
    assert_eq!(v["view"]["phase"], "Running");
    // A restart loads the (now non-empty) read model under the same permissions and goes on.
    projector.kill9().await;
    projector.restart().await?;
    wait_ready(&projector).await?;
    set_phase(&env, &p, "s", Phase::Completed).await?;
    wait_for("the sink got the events after the restart", Duration::from_secs(60), || async {
        Ok(got.lock().unwrap().len() >= 7)
    })
    .await
    .with_context(|| projector.log())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(got.lock().unwrap().len(), 7, "nothing re-sent after the restart: {:?}", got.lock().unwrap());
    let log = projector.log();
    assert!(log.contains("\"read model loaded\",\"objects\":2"), "the restart loaded the read model: {log}");

    // The project goes (unlabelled): its history is purged, under these permissions too; the
    // tombstone stays and reaches the sink.
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(env.admin())
        .patch(
            &p,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"ambient-code.io/managed": null}}})),
        )
        .await?;
    wait_for("the sink got the deletion", Duration::from_secs(60), || async {
        Ok(got.lock().unwrap().iter().any(|t| t == "ambient.project.deleted.v1"))
    })
    .await
    .with_context(|| projector.log())?;
    let status = js.get_stream(events::streams::STATUS_STREAM).await?;
    let tombstone_only = [(format!("ambient.status.{p}.project.{p}"), 1)];
    wait_for("only the tombstone stays", Duration::from_secs(30), || async {
        let left = status.info_builder().subjects(format!("ambient.status.{p}.>")).fetch().await?;
        let left: Vec<(String, usize)> = futures::TryStreamExt::try_collect(left).await?;
        Ok(left == tombstone_only)
    })
    .await
    .with_context(|| projector.log())?;
    let log = projector.log();
    assert!(log.contains("status history of a gone project purged"), "{log}");
    assert!(!log.contains("Permissions Violation") && !log.contains("bus operation failed"), "{log}");
    assert!(!nats.log().contains("Permissions Violation"), "{}", nats.log());
    Ok(())
}
