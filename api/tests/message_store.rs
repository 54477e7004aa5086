//! The shared messages store, nearly full (issue 15, item 5): budgets per project cannot stop
//! several tenants together from filling it, so in its last tenth only projects that hold little
//! may append. The tenant that filled it is refused (409 `ProjectMessagesFull`, saying why);
//! another tenant's project still appends. The api is told a capacity just above what the
//! shared test stream holds now, so the reserve starts after a few hundred kilobytes.

mod common;

use ambient_tests::{DemoUser, TestEnv};
use common::{Client, project, stack, token};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nearly_full_store_refuses_whoever_filled_it_first() {
    let env = TestEnv::shared().await.unwrap();
    let held_now =
        env.jetstream().get_stream(events::streams::MESSAGES_STREAM).await.unwrap().cached_info().state.bytes;
    // The reserve (the last tenth) starts 400 kB from now.
    let capacity = (held_now + 400_000) * 10 / 9;
    let heavy = capacity / 512;
    let s =
        stack(&env, &[&format!("--messages-store-capacity={capacity}"), "--messages-max-bytes-per-session=100000000"])
            .await;
    let c = Client::new(&s.api_url);
    let (alice, bob) = (token(&env, DemoUser::Alice), token(&env, DemoUser::Bob));
    let flood = project(&c, &alice, "store-flood").await;
    let quiet = project(&c, &bob, "store-quiet").await;
    for (who, p) in [(&alice, &flood), (&bob, &quiet)] {
        let body = json!({"name": "s", "prompt": "p", "interactive": true, "environmentVariables": {"KWOK_RUN_DURATION": "1h"}});
        let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), who, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    // Alice's project floods with 20 kB messages until refused.
    let chunk = json!({"type": "user.message", "payload": {"content": "x".repeat(20_000)}});
    let path = format!("/api/projects/{flood}/agentic-sessions/s/messages");
    let mut refused = None;
    for _ in 0..200 {
        let r = c.post(&path, &alice, chunk.clone()).await;
        match r.status {
            StatusCode::CREATED => {}
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let r = refused.expect("the flood is refused before it fills the store");
    assert_eq!(
        (r.status, r.body["reason"].clone()),
        (StatusCode::CONFLICT, json!("ProjectMessagesFull")),
        "{:?}",
        r.body
    );
    assert!(r.body["error"].as_str().is_some_and(|e| e.contains("nearly full")), "the refusal says why: {:?}", r.body);
    let used = env.jetstream().get_stream(events::streams::MESSAGES_STREAM).await.unwrap().cached_info().state.bytes;
    assert!(used < capacity, "the flood stopped inside the reserve: {used} of {capacity}");
    // Bob's project, holding little, still talks (a few messages, well under its share).
    let quiet_path = format!("/api/projects/{quiet}/agentic-sessions/s/messages");
    let small = json!({"type": "user.message", "payload": {"content": "hello"}});
    let mut sent = 0u64;
    while sent * 400 < heavy / 2 && sent < 20 {
        let r = c.post(&quiet_path, &bob, small.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "a light project appends in the reserve: {:?}", r.body);
        sent += 1;
    }
    assert!(sent > 0);
}
