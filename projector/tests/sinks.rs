//! An HTTP sink that fails (500) for a while and then recovers receives every status event of
//! its filter once per id, in order per object, as binary-mode CloudEvents, with the auth
//! header from its Secret (a value that never appears in the projector's log), also across a
//! crash of the projector while the sink is failing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_tests::components::{SYSTEM_NAMESPACE, wait_for};
use ambient_tests::{TestEnv, unique_name};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use events::Phase;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

#[derive(Debug, Clone)]
struct Received {
    id: String,
    subject: String,
    ty: String,
    content_type: String,
    auth: String,
    body: String,
    answered: u16,
}

#[derive(Clone, Default)]
struct Sink {
    failing: Arc<std::sync::atomic::AtomicBool>,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receive(State(s): State<Sink>, headers: HeaderMap, body: String) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let code = if s.failing.load(std::sync::atomic::Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    s.got.lock().unwrap().push(Received {
        id: h("ce-id"),
        subject: h("ce-subject"),
        ty: h("ce-type"),
        content_type: h("content-type"),
        auth: h("authorization"),
        body,
        answered: code.as_u16(),
    });
    code
}

#[tokio::test]
async fn failing_sink_gets_every_event_once_in_order() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let p = create_project(&env, &scope, "proj-sink").await?;

    // The sink's auth header value, in the Secret the projector may read (one key per test).
    let sink_name = unique_name("sink");
    let auth_value = format!("Bearer sink-secret-{}", uuid::Uuid::new_v4().simple());
    let secrets = Api::<Secret>::namespaced(env.admin(), SYSTEM_NAMESPACE);
    ambient_tests::components::apply_rbac(&env).await?;
    secrets
        .patch(
            "ambient-projector-sink-auth",
            &PatchParams::apply(&sink_name),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "ambient-projector-sink-auth", "namespace": SYSTEM_NAMESPACE},
                "stringData": {sink_name.clone(): auth_value.clone()},
            })),
        )
        .await?;

    let sink = Sink::default();
    sink.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let app = axum::Router::new().route("/events", axum::routing::post(receive)).with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let sinks_file = dir.path().join("sinks.yaml");
    std::fs::write(
        &sinks_file,
        format!(
            "- name: {sink_name}\n  url: http://127.0.0.1:{port}/events\n  subjects: [\"ambient.status.{p}.>\"]\n  authHeaderSecret:\n    namespace: {SYSTEM_NAMESPACE}\n    name: ambient-projector-sink-auth\n    key: {sink_name}\n"
        ),
    )?;
    let mut projector = start_projector(&env, &scope, Some(&sinks_file)).await?;

    create_session(&env, &p, "a", "v").await?;
    create_session(&env, &p, "b", "v").await?;
    for ph in [Phase::Creating, Phase::Running, Phase::Completed] {
        set_phase(&env, &p, "a", ph).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    set_phase(&env, &p, "b", Phase::Creating).await?;
    delete_session(&env, &p, "a").await?;
    let evs = wait_events(&env, &p, "all events", |e| {
        of(e, "session", "a").last().is_some_and(|s| s.event.body.type_str().ends_with("deleted.v1"))
            && of(e, "session", "b").len() == 4
    })
    .await?;

    // Failing for a while: several attempts, all answered 500.
    wait_for("the sink to be retried", Duration::from_secs(60), || async {
        Ok(sink.got.lock().unwrap().iter().filter(|r| r.answered == 500).count() >= 3)
    })
    .await?;
    assert!(sink.got.lock().unwrap().iter().all(|r| r.answered == 500));
    // The projector crashes while the sink still fails: its durable consumer resumes after
    // the restart (the unacknowledged event is redelivered).
    projector.kill9().await;
    let attempts = sink.got.lock().unwrap().len();
    projector.restart().await?;
    wait_ready(&projector).await?;
    wait_for("retries after the restart", Duration::from_secs(60), || async {
        Ok(sink.got.lock().unwrap().len() > attempts + 1)
    })
    .await?;
    sink.failing.store(false, std::sync::atomic::Ordering::SeqCst);

    let want: Vec<String> = evs.iter().map(|s| s.event.id.clone()).collect();
    wait_for("every event accepted by the sink", Duration::from_secs(120), || async {
        Ok(sink.got.lock().unwrap().iter().filter(|r| r.answered == 204).count() >= want.len())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = sink.got.lock().unwrap().clone();
    let accepted: Vec<&Received> = got.iter().filter(|r| r.answered == 204).collect();
    // Once per id, nothing else.
    let mut ids: Vec<String> = accepted.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(ids, want_sorted, "accepted ids differ from the stream's");
    // In order per object (stream order).
    for obj in ["session/a", "session/b", &format!("project/{p}")] {
        let sent: Vec<&str> = accepted.iter().filter(|r| r.subject == obj).map(|r| r.id.as_str()).collect();
        let stream: Vec<&str> = evs
            .iter()
            .filter(|s| format!("{}/{}", s.event.body.kind().as_str(), s.event.name) == obj)
            .map(|s| s.event.id.as_str())
            .collect();
        assert_eq!(sent, stream, "order of {obj}");
    }
    // Binary-mode CloudEvents with the auth header.
    for r in &got {
        assert!(r.ty.starts_with("ambient."), "{r:?}");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.auth, auth_value);
        serde_json::from_str::<serde_json::Value>(&r.body)?;
    }
    let metrics = projector.metrics().await?;
    assert!(metrics.contains("projector_sink_failures_total"), "{metrics}");
    assert!(metrics.contains("projector_sink_deliveries_total"), "{metrics}");
    assert!(!projector.log().contains(&auth_value), "the sink auth value leaked into the log");
    Ok(())
}
