//! When JetStream cannot durably accept a command the api answers 503, never 202. Stops the
//! NATS server of the cluster: run against a dedicated cluster (AMBIENT_STATE_DIR).

mod common;

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, project, stack, token};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn no_jetstream_ack_means_503_never_202() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env, &["--result-timeout=2s"]).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let p = project(&c, &alice, "api-503").await;
    env.stop_nats().await.unwrap();
    let sp = format!("/api/projects/{p}/agentic-sessions");
    for prefer in [None, Some("respond-async")] {
        let headers: Vec<(&str, &str)> = prefer.map(|v| vec![("prefer", v)]).unwrap_or_default();
        let r = c.call(Method::POST, &sp, Some(&alice), Some(json!({"name": "s1", "prompt": "x"})), &headers).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{prefer:?}: {:?}", r.body);
        assert!(r.body["error"].is_string());
    }
    env.start_nats().await.unwrap();
    // Once NATS is back, commands are accepted again (and the refused one was never applied).
    let r = eventually("api accepts commands again", Duration::from_secs(60), || {
        let (c, alice, sp) = (&c, &alice, &sp);
        async move {
            let r = c.post(sp, alice, json!({"name": "s2", "prompt": "x"})).await;
            Ok((r.status == StatusCode::CREATED || r.status == StatusCode::ACCEPTED).then_some(r.status))
        }
    })
    .await
    .unwrap();
    assert!(r == StatusCode::CREATED || r == StatusCode::ACCEPTED);
    let r = c.get(&format!("{sp}/s1"), &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a 503 command must not be applied");
}
