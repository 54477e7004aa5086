//! Live status over SSE: resume with Last-Event-ID after a disconnect, and a revoked caller's
//! stream is closed. Status events are published here as the projector would (a fixture), so
//! the sequence of events is known exactly; the api and reconciler are the real processes.

mod common;

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv};
use chrono::Utc;
use common::{Client, project, read_events, stack, token};
use events::status::{PhaseTransition, StatusBody, StatusEvent};
use events::{Phase, ProjectName};
use reqwest::StatusCode;
use serde_json::json;

async fn publish(
    js: &async_nats::jetstream::Context,
    project: &ProjectName,
    project_uid: &str,
    session: &str,
    phase: Phase,
    n: u32,
) {
    let ev = StatusEvent {
        id: format!("fixture-{}-{n}", uuid::Uuid::now_v7()),
        project: project.clone(),
        name: session.to_string(),
        time: Utc::now(),
        // Stamped as the projector stamps: streams serve only the current namespace's events.
        project_uid: Some(project_uid.to_string()),
        body: StatusBody::SessionPhase(PhaseTransition {
            name: session.to_string(),
            previous_phase: None,
            phase,
            at: Utc::now(),
            previous_phase_seconds: None,
            reason: None,
            message: Some(format!("fixture {n}")),
            start_time: None,
            completion_time: None,
        }),
    };
    let out = events::wire::encode_status(&ev).unwrap();
    js.publish_with_headers(out.subject, out.headers, out.payload).await.unwrap().await.unwrap();
}

#[tokio::test]
async fn sse_resumes_after_disconnect_and_closes_on_revocation() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env, &[&format!("--sse-max-streams-per-caller={STREAM_CAP}")]).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let bob = token(&env, DemoUser::Bob);
    let p = project(&c, &alice, "api-sse").await;
    let pn = ProjectName::new(p.clone()).unwrap();
    let session = "fixture-session";
    let url = format!("{}/api/projects/{p}/agentic-sessions/{session}/events", s.api_url);
    let js = env.jetstream();
    let ns_uid = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(env.admin())
        .get(&p)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();

    // Connect, receive two events.
    let mut resp = c.http.get(&url).bearer_auth(&alice).timeout(Duration::from_secs(60)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(js, &pn, &ns_uid, session, Phase::Creating, 1).await;
    publish(js, &pn, &ns_uid, session, Phase::Running, 2).await;
    let (evs, _) = read_events(&mut resp, 2, Duration::from_secs(15)).await;
    assert_eq!(evs.len(), 2, "both events delivered live");
    assert_eq!(evs[0].event, "ambient.session.phase.v1");
    assert_eq!(evs[0].data["data"]["message"], "fixture 1");
    assert_eq!(evs[1].data["data"]["message"], "fixture 2");
    assert!(evs[1].id > evs[0].id);
    let last = evs[1].id;
    drop(resp);

    // While disconnected, more happens; resuming yields exactly what was missed, in order.
    publish(js, &pn, &ns_uid, session, Phase::Completed, 3).await;
    publish(js, &pn, &ns_uid, session, Phase::Completed, 4).await;
    let mut resp = c
        .http
        .get(&url)
        .bearer_auth(&alice)
        .header("last-event-id", last.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let (evs, _) = read_events(&mut resp, 2, Duration::from_secs(15)).await;
    let msgs: Vec<_> = evs.iter().map(|e| e.data["data"]["message"].clone()).collect();
    assert_eq!(msgs, vec![json!("fixture 3"), json!("fixture 4")]);
    assert!(evs[0].id > last);
    drop(resp);

    // Bob may not see the project: 404 like a missing one.
    let r = c.get(&format!("/api/projects/{p}/events"), &bob).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bob gets view, connects, is revoked: his stream closes within 5 s.
    let r = c
        .post(
            &format!("/api/projects/{p}/permissions"),
            &alice,
            json!({"subjectType": "user", "subjectName": "bob", "role": "view"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut resp = c
        .http
        .get(format!("{}/api/projects/{p}/events", s.api_url))
        .bearer_auth(&bob)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let r = c.delete(&format!("/api/projects/{p}/permissions/user/bob"), &alice).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let start = tokio::time::Instant::now();
    let (evs, ended) = read_events(&mut resp, 100, Duration::from_secs(8)).await;
    assert!(ended, "the revoked caller's stream must be closed");
    assert!(start.elapsed() < Duration::from_secs(6), "closed after {:?}", start.elapsed());
    assert!(evs.iter().any(|e| e.event == "revoked"));

    streams_per_caller_are_capped(&c, &s.api_url, &alice, &bob, &p).await;
}

/// Streams one caller may hold open in this test.
const STREAM_CAP: usize = 3;

/// One caller's open streams are capped (the next gets 429 with Retry-After), another caller is
/// not affected, and a closed stream frees its slot.
async fn streams_per_caller_are_capped(c: &Client, base: &str, alice: &str, bob: &str, p: &str) {
    let open = |who: &str, path: String| {
        let (http, who) = (c.http.clone(), who.to_string());
        async move {
            http.get(format!("{base}{path}")).bearer_auth(who).timeout(Duration::from_secs(60)).send().await.unwrap()
        }
    };
    let mut held = Vec::new();
    for i in 0..STREAM_CAP {
        // Project and session streams count alike.
        let path = if i % 2 == 0 {
            format!("/api/projects/{p}/events")
        } else {
            format!("/api/projects/{p}/agentic-sessions/s{i}/events")
        };
        let r = open(alice, path).await;
        assert_eq!(r.status(), StatusCode::OK, "stream {i}");
        held.push(r);
    }
    let r = open(alice, format!("/api/projects/{p}/events")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "stream {} of one caller", STREAM_CAP + 1);
    let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "{body:?}");
    // Another caller still can.
    let bobs = project(c, bob, "api-sse-bob").await;
    let r = open(bob, format!("/api/projects/{bobs}/events")).await;
    assert_eq!(r.status(), StatusCode::OK, "another caller is not affected");
    // A closed stream frees its slot (once the server notices the disconnect).
    drop(held.pop());
    let reopened = ambient_tests::eventually("a slot is free again", Duration::from_secs(15), || {
        let f = open(alice, format!("/api/projects/{p}/events"));
        async move {
            let r = f.await;
            Ok((r.status() == StatusCode::OK).then_some(r))
        }
    })
    .await
    .unwrap();
    held.push(reopened);
    assert_eq!(open(alice, format!("/api/projects/{p}/events")).await.status(), StatusCode::TOO_MANY_REQUESTS);
}
