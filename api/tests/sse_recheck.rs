//! An open SSE stream ends when its periodic access re-check cannot be decided (fail closed):
//! the API server is stopped while a stream is open, and the stream must end within a few
//! re-check periods instead of staying open on an access nobody can confirm. Stops the cluster's
//! API server, so it runs alone in its own test binary.

mod common;

use std::time::{Duration, Instant};

use ambient_tests::DemoUser;
use ambient_tests::TestEnv;
use common::{Client, project, read_events, stack, token};
use reqwest::StatusCode;

#[tokio::test]
async fn a_stream_ends_when_its_access_cannot_be_rechecked() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env, &[]).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let p = project(&c, &alice, "api-sse-recheck").await;
    let mut resp = c
        .http
        .get(format!("{}/api/projects/{p}/events", s.api_url))
        .bearer_auth(&alice)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Open and re-checked at least once while the API server answers. (The project's own
    // creation events, its settings and its creator's grant, may arrive after the stream
    // opened; none says the stream is unavailable.)
    let (evs, ended) = read_events(&mut resp, 100, Duration::from_secs(5)).await;
    assert!(
        !ended
            && evs
                .iter()
                .all(|e| e.event.starts_with("ambient.project.") || e.event.starts_with("ambient.permission.")),
        "the stream stays open while access is confirmed: {evs:?}"
    );

    env.stop_apiserver().await.unwrap();
    let start = Instant::now();
    let (evs, ended) = read_events(&mut resp, 100, Duration::from_secs(30)).await;
    let took = start.elapsed();
    env.start_apiserver().await.unwrap();

    assert!(ended, "the stream stayed open for {took:?} with its access undecidable: {evs:?}");
    // The authorization cache (2 s) runs out, then the next re-check (every 2 s) fails.
    assert!(took < Duration::from_secs(15), "closed only after {took:?}");
    assert!(evs.iter().any(|e| e.event == "unavailable"), "{evs:?}");
}
