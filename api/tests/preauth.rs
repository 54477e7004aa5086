//! What an unauthenticated client can make the api do, played against real api processes (under
//! the api's deploy/ ServiceAccount, on the dev cluster and NATS):
//!
//! - metrics carry only labels from a fixed set, whatever methods and paths a client sends;
//! - a flood from one address is answered 429 before authentication: no TokenReview per request,
//!   and `X-Forwarded-For` is believed only from a trusted proxy;
//! - bogus tokens are remembered apart from valid ones: a flood of them costs one TokenReview
//!   each and never evicts a valid token's cached review.
//!
//! TokenReviews are counted by the api's `ambient_api_token_reviews_total`, read on its
//! operations port. Each part runs its own api process (no reconciler or projector needed).

mod common;

use std::time::Duration;

use ambient_tests::components::{BusKeys, Component, ServiceProcess, free_port};
use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, token};
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_authentication_limits() {
    let env = TestEnv::shared().await.unwrap();
    tokio::join!(
        metric_labels_come_from_a_fixed_set(&env),
        a_flood_from_one_address_is_refused_before_any_token_review(&env),
        forwarded_for_counts_only_from_a_trusted_proxy(&env),
        bogus_tokens_never_evict_valid_ones(&env),
    );
}

/// An api process with `args`, and a client of its public port.
async fn api(env: &TestEnv, args: &[&str]) -> (ServiceProcess, Client) {
    let keys = BusKeys::shared(env).unwrap();
    let kc = Component::Api.kubeconfig(env).await.unwrap();
    let port = free_port().unwrap();
    let extra: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let p = ServiceProcess::start(Component::Api, |h| {
        let mut a = vec![
            format!("--kubeconfig={}", kc.display()),
            format!("--nats-url={}", env.nats_url()),
            format!("--health-addr={h}"),
            format!("--listen=127.0.0.1:{port}"),
            format!("--signing-key-file={}", keys.signing_key_file.display()),
            format!("--reconciler-sealing-public-key={}", keys.sealing_public_key),
            "--log-format=json".into(),
        ];
        a.extend(extra);
        a
    })
    .await
    .expect("api starts");
    (p, Client::new(&format!("http://127.0.0.1:{port}")))
}

/// The sum of a counter's series whose labels contain every one of `labels` (e.g. `result="rejected"`).
fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn reviews(p: &ServiceProcess, result: &str) -> u64 {
    let m = p.metrics().await.unwrap();
    counter(&m, "ambient_api_token_reviews_total", &[&format!("result=\"{result}\"")])
}

async fn metric_labels_come_from_a_fixed_set(env: &TestEnv) {
    let (p, c) = api(env, &["--pre-auth-rate-limit-rps=100000", "--pre-auth-rate-limit-burst=100000"]).await;
    let alice = token(env, DemoUser::Alice);
    // Made-up methods (one of 30 KB) and paths, matched and unmatched, with and without a token.
    let huge = Method::from_bytes(format!("ZQMETHOD{}", "A".repeat(30 * 1024)).as_bytes()).unwrap();
    let made_up = Method::from_bytes(b"ZQPROPFIND").unwrap();
    for (m, path) in [
        (huge.clone(), "/api/projects".to_string()),
        (huge, "/zqpath-unknown/1".to_string()),
        (made_up.clone(), "/api/projects/zqproject-1".to_string()),
        (made_up, "/zqpath-unknown/2".to_string()),
        (Method::GET, "/api/projects/zqproject-2/agentic-sessions/zqsession".to_string()),
        (Method::GET, format!("/zqpath-{}", "x".repeat(4000))),
        (Method::DELETE, "/api/zqpath-3".to_string()),
    ] {
        for t in [None, Some(alice.as_str())] {
            let r = c.try_call(m.clone(), &path, t, None, &[]).await;
            // A 30 KB method may be refused at the connection; either way it is never counted by name.
            if let Ok(r) = r {
                assert!(r.status.is_client_error(), "{m} {path}: {:?}", r.status);
            }
        }
    }
    let metrics = p.metrics().await.unwrap();
    let lower = metrics.to_lowercase();
    assert!(!lower.contains("zq"), "a caller-chosen string reached the metrics:\n{metrics}");
    let requests: Vec<&str> = metrics.lines().filter(|l| l.starts_with("ambient_api_requests_total{")).collect();
    assert!(requests.iter().any(|l| l.contains("method=\"other\"")), "{metrics}");
    assert!(requests.iter().any(|l| l.contains("route=\"unmatched\"")), "{metrics}");
    assert!(requests.iter().any(|l| l.contains("route=\"/api/projects/{project}\"")), "{metrics}");
    assert!(
        requests.iter().any(|l| l.contains("route=\"/api/projects/{project}/agentic-sessions/{session}\"")),
        "{metrics}"
    );
    // Every label value is from the fixed sets: the methods, the route templates, status codes.
    let doc = c.call(Method::GET, "/openapi.json", None, None, &[]).await.body;
    let templates: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for l in &requests {
        let labels = &l[l.find('{').unwrap() + 1..l.rfind('}').unwrap()];
        for kv in labels.split("\",") {
            let (k, v) = kv.split_once("=\"").unwrap();
            let v = v.trim_end_matches('"');
            let ok = match k {
                "method" => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other"]
                    .contains(&v),
                "route" => v == "unmatched" || templates.iter().any(|t| t.as_str() == v),
                "status" => v.len() == 3 && v.bytes().all(|b| b.is_ascii_digit()),
                _ => false,
            };
            assert!(ok, "label {k}={v:?} is not from a fixed set: {l}");
        }
    }
}

async fn a_flood_from_one_address_is_refused_before_any_token_review(env: &TestEnv) {
    let (p, c) = api(env, &["--pre-auth-rate-limit-rps=0.01", "--pre-auth-rate-limit-burst=5"]).await;
    let alice = token(env, DemoUser::Alice);
    // Bob signs in first (one cell of the burst): his review is cached from then on.
    let bob = token(env, DemoUser::Bob);
    assert_eq!(c.get("/api/me", &bob).await.status, StatusCode::OK);
    let before = reviews(&p, "rejected").await + reviews(&p, "authenticated").await;
    let (mut unauthenticated, mut limited) = (0, 0);
    for i in 0..40 {
        let r = c.get("/api/me", &format!("bogus-flood-token-{i}")).await;
        match r.status {
            StatusCode::UNAUTHORIZED => unauthenticated += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(r.body["error"].is_string(), "{:?}", r.body);
                let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(secs >= 1);
            }
            s => panic!("unexpected {s}: {:?}", r.body),
        }
    }
    assert_eq!((unauthenticated, limited), (4, 36), "the rest of the burst, then every request limited");
    // Once limited, no request costs a TokenReview: exactly one per 401.
    let after = reviews(&p, "rejected").await + reviews(&p, "authenticated").await;
    assert_eq!(after - before, unauthenticated, "TokenReviews beyond the ones that answered 401");
    // The limit is per address and before authentication: a valid token not yet reviewed from
    // the same address waits too, any path does, and a forged X-Forwarded-For (no trusted proxy) changes nothing.
    assert_eq!(c.get("/api/me", &alice).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(c.call(Method::GET, "/nowhere", None, None, &[]).await.status, StatusCode::TOO_MANY_REQUESTS);
    let r = c.call(Method::GET, "/api/me", Some(&alice), None, &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // A user already signed in costs no TokenReview and is not locked out by the flood from
    // the address he shares (behind a proxy, every client shares one).
    assert_eq!(c.get("/api/me", &bob).await.status, StatusCode::OK, "a signed-in user is served during the flood");
    assert_eq!(reviews(&p, "rejected").await + reviews(&p, "authenticated").await, after);
    let m = p.metrics().await.unwrap();
    assert!(counter(&m, "ambient_api_pre_auth_limited_total", &[]) >= 38, "{m}");
}

async fn forwarded_for_counts_only_from_a_trusted_proxy(env: &TestEnv) {
    let (_p, c) =
        api(env, &["--pre-auth-rate-limit-rps=0.01", "--pre-auth-rate-limit-burst=2", "--trusted-proxy=127.0.0.1,::1"])
            .await;
    let get = |xff: &'static str| {
        let c = c.clone();
        async move {
            c.call(Method::GET, "/api/me", Some("bogus-proxied-token"), None, &[("x-forwarded-for", xff)]).await.status
        }
    };
    assert_eq!(get("203.0.113.1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(get("203.0.113.1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(get("203.0.113.1").await, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own bucket...
    assert_eq!(get("203.0.113.2").await, StatusCode::UNAUTHORIZED);
    // ...and the limited one cannot escape by prepending a forged hop: the proxy's is last.
    assert_eq!(get("192.0.2.99, 203.0.113.1").await, StatusCode::TOO_MANY_REQUESTS);
}

async fn bogus_tokens_never_evict_valid_ones(env: &TestEnv) {
    // Small caches that live long enough for the test: room for 10 valid and 10 rejected tokens.
    let (p, c) = api(
        env,
        &[
            "--pre-auth-rate-limit-rps=100000",
            "--pre-auth-rate-limit-burst=100000",
            "--token-cache-ttl=120s",
            "--token-cache-max-entries=10",
            "--rejected-token-cache-ttl=120s",
            "--rejected-token-cache-max-entries=10",
        ],
    )
    .await;
    let (alice, bob) = (token(env, DemoUser::Alice), token(env, DemoUser::Bob));
    assert_eq!(c.get("/api/me", &alice).await.status, StatusCode::OK);
    assert_eq!(c.get("/api/me", &bob).await.status, StatusCode::OK);
    let valid = reviews(&p, "authenticated").await;
    assert_eq!(valid, 2, "one review per valid token");

    // The same bogus token again and again: one TokenReview.
    let rejected = reviews(&p, "rejected").await;
    for _ in 0..10 {
        assert_eq!(c.get("/api/me", "bogus-repeated-token").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(reviews(&p, "rejected").await - rejected, 1, "a rejected token is remembered");

    // A flood of 100 distinct bogus tokens (ten times both caches): one review each.
    let rejected = reviews(&p, "rejected").await;
    let flood = futures::future::join_all((0..100).map(|i| {
        let c = c.clone();
        async move { c.get("/api/me", &format!("bogus-distinct-token-{i}")).await.status }
    }))
    .await;
    assert!(flood.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{flood:?}");
    assert_eq!(reviews(&p, "rejected").await - rejected, 100);

    // The valid tokens are still answered from the cache: no new review.
    assert_eq!(c.get("/api/me", &alice).await.status, StatusCode::OK);
    assert_eq!(c.get("/api/me", &bob).await.status, StatusCode::OK);
    assert_eq!(reviews(&p, "authenticated").await, valid, "a valid token's review was evicted by bogus ones");

    // A rejected token is forgotten after its TTL (short by default): checked with the default.
    let (p, c) = api(env, &["--pre-auth-rate-limit-rps=100000", "--pre-auth-rate-limit-burst=100000"]).await;
    assert_eq!(c.get("/api/me", "bogus-forgotten-token").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.get("/api/me", "bogus-forgotten-token").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reviews(&p, "rejected").await, 1);
    eventually("the rejected token is reviewed again after its TTL", Duration::from_secs(10), || {
        let (c, p) = (&c, &p);
        async move {
            assert_eq!(c.get("/api/me", "bogus-forgotten-token").await.status, StatusCode::UNAUTHORIZED);
            Ok((reviews(p, "rejected").await == 2).then_some(()))
        }
    })
    .await
    .unwrap();
}
