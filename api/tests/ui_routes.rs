//! The routes the existing web UI calls beyond SPEC §3 (api/src/routes/ui.rs), called the way the
//! UI's Next proxy calls them: identity only in `X-Forwarded-Access-Token` and
//! `X-Forwarded-User` (never `Authorization`), and nothing at all for `cluster-info` and
//! `workflows/ootb`. Every answer is JSON with a body (a 204 or an empty body breaks the proxy),
//! the fields the UI reads are there, and a stranger learns nothing of another tenant's session.

mod common;

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, Resp, project, token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A request as the UI's Next proxy makes it: forwarded identity (if any), forced JSON type.
async fn proxied(c: &Client, m: Method, path: &str, who: Option<(&str, &str)>) -> Resp {
    let mut headers = vec![("content-type", "application/json")];
    if let Some((user, token)) = who {
        headers.push(("x-forwarded-user", user));
        headers.push(("x-forwarded-access-token", token));
    }
    let r = c.call(m.clone(), path, None, None, &headers).await;
    // What every pass-through proxy needs: never 204, always a JSON body.
    assert_ne!(r.status, StatusCode::NO_CONTENT, "{m} {path}");
    assert!(!r.body.is_null(), "{m} {path}: empty body ({})", r.status);
    let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(ct.starts_with("application/json"), "{m} {path}: content-type {ct:?}");
    r
}

fn assert_ok(r: &Resp, want: Value, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {:?}", r.body);
    assert_eq!(r.body, want, "{what}");
}

#[tokio::test]
async fn the_web_uis_routes_answer_as_it_reads_them() {
    let env = TestEnv::shared().await.unwrap();
    // A per-address limit small enough to reach below (the stack lifts it otherwise).
    let s = common::stack(&env, &["--pre-auth-rate-limit-rps=1", "--pre-auth-rate-limit-burst=60"]).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let carol = token(&env, DemoUser::Carol);
    let a = Some(("alice", alice.as_str()));

    public_routes_need_no_identity(&c, a).await;
    let p = project(&c, &alice, "ui").await;
    let r = c
        .post(
            &format!("/api/projects/{p}/agentic-sessions"),
            &alice,
            json!({"name": "s1", "prompt": "ui", "environmentVariables": {"KWOK_RUN_DURATION": "1h"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    session_routes(&c, &p, a).await;
    k8s_resources_shows_the_runner(&c, &p, a).await;
    strangers_and_missing_sessions_get_404(&c, &p, a, &carol).await;
    anonymous_floods_hit_the_per_address_limit(&c, a).await;
}

async fn public_routes_need_no_identity(c: &Client, a: Option<(&str, &str)>) {
    // The dev cluster serves no `project.openshift.io`; `--vertex-enabled` defaults to false.
    let want = json!({"isOpenShift": false, "vertexEnabled": false});
    assert_ok(&proxied(c, Method::GET, "/api/cluster-info", None).await, want.clone(), "cluster-info, anonymous");
    assert_ok(&proxied(c, Method::GET, "/api/cluster-info", a).await, want, "cluster-info, signed in");
    // The UI's proxy drops `?project=` and the identity.
    assert_ok(
        &proxied(c, Method::GET, "/api/workflows/ootb?project=x", None).await,
        json!({"workflows": []}),
        "workflows/ootb",
    );

    // The GitHub App routes need a signed-in caller, like /api/me.
    let r = proxied(c, Method::GET, "/api/auth/github/status", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_ok(
        &proxied(c, Method::GET, "/api/auth/github/status", a).await,
        json!({"installed": false}),
        "github status",
    );
    assert_ok(
        &proxied(c, Method::POST, "/api/auth/github/disconnect", a).await,
        json!({"message": "GitHub is not connected"}),
        "github disconnect",
    );
    let r = proxied(c, Method::POST, "/api/auth/github/install", a).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.body,
        json!({"error": "GitHub App integration is not available on this platform", "code": "not_available"})
    );
}

/// Session-scoped routes: (method, suffix, status, body).
fn session_answers() -> Vec<(Method, &'static str, StatusCode, Value)> {
    let git = json!({"error": "Git operations are not available on this platform", "code": "not_available"});
    vec![
        (Method::GET, "/workflow/metadata", StatusCode::OK, json!({"commands": [], "agents": []})),
        (Method::GET, "/git/status?path=artifacts", StatusCode::OK, json!({"initialized": false, "hasChanges": false})),
        (
            Method::GET,
            "/git/merge-status?path=artifacts&branch=main",
            StatusCode::OK,
            json!({"canMergeClean": true, "localChanges": 0, "remoteCommitsAhead": 0, "conflictingFiles": [], "remoteBranchExists": false}),
        ),
        (Method::GET, "/git/list-branches?path=artifacts", StatusCode::OK, json!({"branches": []})),
        (Method::GET, "/workspace?path=artifacts", StatusCode::OK, json!({"items": []})),
        (Method::GET, "/workspace", StatusCode::OK, json!({"items": []})),
        (Method::POST, "/spawn-content-pod", StatusCode::OK, json!({"status": "exists", "podName": "", "ready": true})),
        (
            Method::GET,
            "/content-pod-status",
            StatusCode::OK,
            json!({"status": "unavailable", "ready": false, "podName": ""}),
        ),
        (Method::DELETE, "/content-pod", StatusCode::OK, json!({"message": "no content pod on this platform"})),
        (
            Method::POST,
            "/workflow",
            StatusCode::NOT_FOUND,
            json!({"error": "Workflows are not available on this platform", "code": "not_available"}),
        ),
        (Method::POST, "/git/pull", StatusCode::NOT_FOUND, git.clone()),
        (Method::POST, "/git/push", StatusCode::NOT_FOUND, git.clone()),
        (Method::POST, "/git/synchronize", StatusCode::NOT_FOUND, git.clone()),
        (Method::POST, "/git/create-branch", StatusCode::NOT_FOUND, git.clone()),
        (Method::POST, "/git/configure-remote", StatusCode::NOT_FOUND, git.clone()),
        (Method::POST, "/repos", StatusCode::NOT_FOUND, git.clone()),
        (Method::DELETE, "/repos/my-repo", StatusCode::NOT_FOUND, git),
    ]
}

async fn session_routes(c: &Client, p: &str, a: Option<(&str, &str)>) {
    for (m, suffix, status, want) in session_answers() {
        let path = format!("/api/projects/{p}/agentic-sessions/s1{suffix}");
        let r = proxied(c, m.clone(), &path, a).await;
        assert_eq!((r.status, &r.body), (status, &want), "{m} {path}");
    }
}

async fn k8s_resources_shows_the_runner(c: &Client, p: &str, a: Option<(&str, &str)>) {
    let path = format!("/api/projects/{p}/agentic-sessions/s1/k8s-resources");
    // What the UI reads (pvcName, pvcSize: shown only when truthy) and the rest of the Go shape.
    let r = proxied(c, Method::GET, &path, a).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!((&r.body["pvcName"], &r.body["pvcExists"]), (&json!(""), &json!(false)));
    assert!(r.body["jobName"].is_string() && r.body["pods"].is_array(), "{}", r.body);
    assert!(r.body.get("pvcSize").is_none());
    // Once the runner runs, its Job and pod come from the projector's read model.
    let path = &path;
    let body = eventually("k8s-resources shows the running runner pod", Duration::from_secs(90), move || async move {
        let r = proxied(c, Method::GET, path, a).await;
        anyhow::ensure!(r.status == StatusCode::OK, "{:?}", r.body);
        Ok((r.body["pods"][0]["phase"] == "Running").then_some(r.body))
    })
    .await
    .unwrap();
    assert_eq!(body["jobName"], "s1-job", "{body}");
    assert_eq!(body["jobStatus"], "Active", "{body}");
    let pod = &body["pods"][0];
    assert!(pod["name"].as_str().is_some_and(|n| n.starts_with("s1-job-")), "{body}");
    for c in pod["containers"].as_array().expect("containers") {
        assert!(c["name"].is_string() && c["state"].is_string(), "{body}");
    }
    assert_eq!((&body["pvcName"], &body["pvcExists"]), (&json!(""), &json!(false)));
}

async fn strangers_and_missing_sessions_get_404(c: &Client, p: &str, a: Option<(&str, &str)>, carol: &str) {
    let stranger = Some(("carol", carol));
    let missing = ambient_tests::unique_name("ui-missing");
    let mut routes: Vec<(Method, &str)> = session_answers().into_iter().map(|(m, s, _, _)| (m, s)).collect();
    routes.push((Method::GET, "/k8s-resources"));
    for (m, suffix) in routes {
        // carol has no role in alice's project: the same answer as for a project that does not exist.
        let there = proxied(c, m.clone(), &format!("/api/projects/{p}/agentic-sessions/s1{suffix}"), stranger).await;
        let absent =
            proxied(c, m.clone(), &format!("/api/projects/{missing}/agentic-sessions/s1{suffix}"), stranger).await;
        assert_eq!(there.status, StatusCode::NOT_FOUND, "carol {m} {suffix}: {:?}", there.body);
        assert_eq!(there.body, json!({"error": "project not found"}), "carol {m} {suffix}");
        assert_eq!(there.body, absent.body, "carol {m} {suffix}");
        // alice, a session that does not exist: as for `GET` of that session.
        let r = proxied(c, m.clone(), &format!("/api/projects/{p}/agentic-sessions/nope{suffix}"), a).await;
        assert_eq!(
            (r.status, &r.body),
            (StatusCode::NOT_FOUND, &json!({"error": "session not found"})),
            "alice {m} nope{suffix}"
        );
    }
}

/// The public routes take no identity, so nothing is charged to a principal; each anonymous
/// request takes a cell of its address's bucket instead, and a flood of them is refused there
/// without locking out a signed-in user.
async fn anonymous_floods_hit_the_per_address_limit(c: &Client, a: Option<(&str, &str)>) {
    // alice's review is cached now: her requests cost no TokenReview and skip the address bucket.
    assert_eq!(proxied(c, Method::GET, "/api/auth/github/status", a).await.status, StatusCode::OK);
    let mut limited = None;
    for i in 0..200 {
        let path = if i % 2 == 0 { "/api/cluster-info" } else { "/api/workflows/ootb" };
        let r = proxied(c, Method::GET, path, None).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let r = limited.expect("an anonymous flood of public routes is limited per address");
    assert!(r.body["error"].is_string(), "{:?}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    let r = proxied(c, Method::GET, "/api/auth/github/status", a).await;
    assert_eq!(r.status, StatusCode::OK, "a signed-in user is not locked out: {:?}", r.body);
}
