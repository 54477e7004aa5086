//! End to end: the api as a real process under its deploy/ ServiceAccount, with the real
//! reconciler and projector, on the dev cluster and NATS.

mod common;

use std::time::Duration;

use ambient_tests::stack::Stack;
use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, project, stack, token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One stack for the whole binary: parallel stacks would share the reconciler's durable
/// consumers on the same NATS and verify each other's commands with the wrong key.
#[tokio::test]
async fn api_end_to_end() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env, &[]).await;
    error_classes_are_json_and_openapi_lists_every_route(&env, &s).await;
    projects_sessions_permissions_keys_and_secrets(&env, &s).await;
    sessions_carry_their_labels_into_every_status_event(&env, &s).await;
    foreign_and_missing_projects_answer_alike_on_every_route(&env, &s).await;
    project_list_follows_rbac_from_any_source(&env, &s).await;
    floods_get_429_with_retry_after(&env, &s).await;
}

/// A bridge finds its Jira issue from a session's label: given at create, validated like
/// Kubernetes labels, stored on the AgenticSession, in the session's status events.
async fn sessions_carry_their_labels_into_every_status_event(env: &TestEnv, s: &Stack) {
    let c = Client::new(&s.api_url);
    let alice = token(env, DemoUser::Alice);
    let p = project(&c, &alice, "labels").await;
    let sessions = format!("/api/projects/{p}/agentic-sessions");
    for (labels, field) in [
        (json!({"ambient-code.io/run": "9"}), "labels.ambient-code.io/run"),
        (json!({"Bad Key": "v"}), "labels.Bad Key"),
        (json!({"jira-issue": "has spaces"}), "labels.jira-issue"),
    ] {
        let r = c.post(&sessions, &alice, json!({"name": "refused", "prompt": "x", "labels": labels})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{labels}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{:?}", r.body);
    }
    let r = c.post(&sessions, &alice, json!({"name": "refused", "prompt": "x", "labels": ["not", "a", "map"]})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(c.get(&format!("{sessions}/refused"), &alice).await.status, StatusCode::NOT_FOUND, "nothing created");

    let mut stream = c
        .http
        .get(format!("{}/api/projects/{p}/events", s.api_url))
        .bearer_auth(&alice)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let body = json!({"name": "linked", "prompt": "x", "labels": {"jira-issue": "ABC-123"},
        "annotations": {"jira.example.com/url": "https://jira.example.com/browse/ABC-123"}});
    let r = c.post(&sessions, &alice, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let got = c.get(&format!("{sessions}/linked"), &alice).await.body;
    assert_eq!(got["metadata"]["labels"]["jira-issue"], "ABC-123", "{got}");
    assert_eq!(got["metadata"]["annotations"]["jira.example.com/url"], "https://jira.example.com/browse/ABC-123");
    let (events, _) = common::read_events(&mut stream, 50, Duration::from_secs(20)).await;
    let changed: Vec<_> =
        events.iter().filter(|e| e.event == "ambient.session.changed.v1" && e.data["name"] == "linked").collect();
    assert!(!changed.is_empty(), "no session.changed event for it: {events:?}");
    for e in changed {
        assert_eq!(e.data["data"]["labels"], json!({"jira-issue": "ABC-123"}), "{:?}", e.data);
        assert_eq!(e.data["data"]["annotations"]["jira.example.com/url"], "https://jira.example.com/browse/ABC-123");
        let keys = e.data["data"]["annotations"].as_object().unwrap();
        assert!(keys.keys().all(|k| !k.starts_with("ambient-code.io/")), "never the platform's own: {keys:?}");
    }
}

async fn error_classes_are_json_and_openapi_lists_every_route(env: &TestEnv, s: &Stack) {
    let c = Client::new(&s.api_url);
    let alice = token(env, DemoUser::Alice);

    // 401: no token, bad token.
    let r = c.call(Method::GET, "/api/projects", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["error"].is_string(), "{:?}", r.body);
    let r = c.get("/api/projects", "not-a-token").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["error"].is_string());
    // Forwarded identity headers are ignored.
    let r = c
        .call(
            Method::GET,
            "/api/me",
            None,
            None,
            &[("x-forwarded-user", "admin"), ("x-forwarded-groups", "system:masters")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // X-Forwarded-Access-Token works like Authorization.
    let r = c.call(Method::GET, "/api/me", None, None, &[("x-forwarded-access-token", &alice)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["userId"], "alice");
    assert!(r.body["groups"].as_array().unwrap().iter().any(|g| g == "team-a"));

    // 404 and 405 as JSON.
    let r = c.get("/api/nope", &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body["error"].is_string());
    let r = c.call(Method::PATCH, "/api/projects", Some(&alice), None, &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.body["error"].is_string(), "{:?}", r.body);

    // 415 and 413 as JSON.
    let r = c
        .http
        .post(format!("{}/api/projects", c.base))
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let big = json!({"name": "x", "description": "a".repeat(1024 * 1024)});
    let r = c.post("/api/projects", &alice, big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body["error"].is_string());
    // Its body was not read to the end: the connection is closed, not handed back for reuse
    // (a client reusing it failed its next request, as this test did in CI).
    assert_eq!(r.headers.get("connection").and_then(|v| v.to_str().ok()), Some("close"), "{:?}", r.headers);

    // 400 naming the field.
    let r = c.post("/api/projects", &alice, json!({"name": "Bad_Name"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "name");
    let r = c.post("/api/projects", &alice, json!({"name": "ok-name", "colour": "red"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["field"], "colour");

    // Request id header on every answer.
    assert!(r.headers.get("x-request-id").is_some());

    // Operations: health, readiness and metrics only on the operations port.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = c.call(Method::GET, path, None, None, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path} on the public port: {:?}", r.body);
        assert!(r.body["error"].is_string());
    }
    let ops = Client::new(&format!("http://{}", s.api.health_addr()));
    assert_eq!(ops.call(Method::GET, "/healthz", None, None, &[]).await.status, StatusCode::OK);
    assert_eq!(ops.call(Method::GET, "/readyz", None, None, &[]).await.status, StatusCode::OK);
    let m = s.api.metrics().await.unwrap();
    assert!(m.contains("ambient_api_requests_total"), "{m}");
    let doc = c.call(Method::GET, "/openapi.json", None, None, &[]).await.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in EVERY_ROUTE {
        let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing from /openapi.json"))[*method];
        assert!(op.is_object(), "{method} {path} missing from /openapi.json");
    }
    let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(ops, EVERY_ROUTE.len(), "the document has routes this test does not know");
}

/// Every route of SPEC §3 (method, OpenAPI path).
const EVERY_ROUTE: &[(&str, &str)] = &[
    ("get", "/api/projects"),
    ("post", "/api/projects"),
    ("get", "/api/projects/{project}"),
    ("put", "/api/projects/{project}"),
    ("delete", "/api/projects/{project}"),
    ("get", "/api/projects/{project}/access"),
    ("get", "/api/projects/{project}/agentic-sessions"),
    ("post", "/api/projects/{project}/agentic-sessions"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}"),
    ("put", "/api/projects/{project}/agentic-sessions/{session}"),
    ("delete", "/api/projects/{project}/agentic-sessions/{session}"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/start"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/stop"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/clone"),
    ("put", "/api/projects/{project}/agentic-sessions/{session}/status"),
    ("put", "/api/projects/{project}/agentic-sessions/{session}/displayname"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/events"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/messages"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/messages"),
    ("get", "/api/projects/{project}/sessions/{session}/messages"),
    ("post", "/api/projects/{project}/sessions/{session}/messages"),
    ("get", "/api/projects/{project}/permissions"),
    ("post", "/api/projects/{project}/permissions"),
    ("delete", "/api/projects/{project}/permissions/{subjectType}/{subjectName}"),
    ("get", "/api/projects/{project}/groups"),
    ("post", "/api/projects/{project}/groups"),
    ("delete", "/api/projects/{project}/groups/{group}"),
    ("get", "/api/projects/{project}/keys"),
    ("post", "/api/projects/{project}/keys"),
    ("delete", "/api/projects/{project}/keys/{keyId}"),
    ("get", "/api/projects/{project}/runner-secrets"),
    ("put", "/api/projects/{project}/runner-secrets"),
    ("get", "/api/projects/{project}/runner-secrets/config"),
    ("put", "/api/projects/{project}/runner-secrets/config"),
    ("get", "/api/projects/{project}/integration-secrets"),
    ("put", "/api/projects/{project}/integration-secrets"),
    ("get", "/api/projects/{project}/events"),
    ("get", "/api/commands/{id}"),
    ("get", "/api/me"),
    ("get", "/openapi.json"),
    ("get", "/api/schemas/events"),
    ("get", "/api/schemas/events/{type}"),
    // What the existing web UI calls beyond SPEC §3 (api/src/routes/ui.rs; tests in ui_routes.rs).
    ("get", "/api/cluster-info"),
    ("get", "/api/workflows/ootb"),
    ("get", "/api/auth/github/status"),
    ("post", "/api/auth/github/install"),
    ("post", "/api/auth/github/disconnect"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/k8s-resources"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/workflow/metadata"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/workflow"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/git/status"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/git/merge-status"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/git/list-branches"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/git/pull"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/git/push"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/git/synchronize"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/git/create-branch"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/git/configure-remote"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/workspace"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/repos"),
    ("delete", "/api/projects/{project}/agentic-sessions/{session}/repos/{repo}"),
    ("post", "/api/projects/{project}/agentic-sessions/{session}/spawn-content-pod"),
    ("get", "/api/projects/{project}/agentic-sessions/{session}/content-pod-status"),
    ("delete", "/api/projects/{project}/agentic-sessions/{session}/content-pod"),
];

async fn projects_sessions_permissions_keys_and_secrets(env: &TestEnv, s: &Stack) {
    let c = Client::new(&s.api_url);
    let alice = token(env, DemoUser::Alice);
    let bob = token(env, DemoUser::Bob);

    // Projects: create, shape, list (only visible ones), get, update, access.
    let p = project(&c, &alice, "api-e2e").await;
    let r = c.get("/api/projects", &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    let item = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == p.as_str())
        .cloned()
        .expect("own project listed");
    for k in ["name", "displayName", "description", "labels", "annotations", "creationTimestamp", "status"] {
        assert!(item.get(k).is_some(), "project field {k} missing: {item}");
    }
    let r = c.get("/api/projects", &bob).await;
    assert!(
        !r.body["items"].as_array().unwrap().iter().any(|i| i["name"] == p.as_str()),
        "bob must not see alice's project"
    );
    let r = c.put(&format!("/api/projects/{p}"), &alice, json!({"displayName": "Renamed"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["displayName"], "Renamed");
    assert_eq!(c.get(&format!("/api/projects/{p}"), &alice).await.body["displayName"], "Renamed");
    let r = c.get(&format!("/api/projects/{p}/access"), &alice).await;
    assert_eq!(r.body, json!({"project": p, "allowed": true, "reason": r.body["reason"], "userRole": "admin"}));

    // Sessions: strict bodies.
    let sp = format!("/api/projects/{p}/agentic-sessions");
    let r = c.post(&sp, &alice, json!({"name": "s1", "prompt": "hi", "userContext": {"userId": "mallory"}})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("userContext")));
    let r = c.post(&sp, &alice, json!({"name": "s1", "prompt": "hi", "llmSettings": {"modle": "x"}})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("llmSettings.modle")));
    let r = c.post(&sp, &alice, json!({"name": "S_1", "prompt": "hi"})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("name")));
    let r = c.post(&sp, &alice, json!({"name": "s1", "prompt": "hi", "timeout": 5})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("timeout")));
    let r = c.get(&sp, &alice).await;
    assert_eq!(r.body["items"], json!([]), "nothing was created by refused requests");

    // Create, and read our own write immediately.
    let r = c
        .post(&sp, &alice, json!({"name": "s1", "prompt": "hello", "timeout": 600, "llmSettings": {"model": "sonnet"}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["name"], "s1");
    assert!(r.body["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let r = c.get(&format!("{sp}/s1"), &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["apiVersion"], "vteam.ambient-code/v1alpha1");
    assert_eq!(r.body["kind"], "AgenticSession");
    assert_eq!(r.body["spec"]["prompt"], "hello");
    assert_eq!(r.body["spec"]["userContext"]["userId"], "alice", "userContext comes from the token");
    let r = c.post(&sp, &alice, json!({"name": "s1", "prompt": "again"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(r.body["reason"].is_string());
    let r = c.put(&format!("{sp}/s1"), &alice, json!({"prompt": "changed"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["spec"]["prompt"], "changed");
    let r = c.get(&format!("{sp}/nope"), &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Idempotency-Key: the retry returns the first outcome and acts once.
    let body = json!({"name": "s2", "prompt": "once"});
    let idem = ambient_tests::unique_name("idem");
    let first = c.call(Method::POST, &sp, Some(&alice), Some(body.clone()), &[("idempotency-key", &idem)]).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let again = c.call(Method::POST, &sp, Some(&alice), Some(body), &[("idempotency-key", &idem)]).await;
    assert_eq!(again.status, StatusCode::CREATED, "a retry must not report a conflict: {:?}", again.body);
    assert_eq!(again.body["uid"], first.body["uid"]);

    // Async mode: 202 + Location, then the command's state for its submitter only.
    let r = c
        .call(
            Method::POST,
            &sp,
            Some(&alice),
            Some(json!({"name": "s3", "prompt": "later"})),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let loc = r.headers["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("/api/commands/"));
    let done = eventually("command succeeded", Duration::from_secs(30), || {
        let c = &c;
        let (loc, alice) = (&loc, &alice);
        async move {
            let r = c.get(loc, alice).await;
            Ok((r.body["state"] == "succeeded").then_some(r.body))
        }
    })
    .await
    .unwrap();
    assert_eq!(done["result"]["resource"]["name"], "s3");
    assert_eq!(c.get(&loc, &bob).await.status, StatusCode::NOT_FOUND, "another user cannot read the command");

    // Permissions and groups.
    let pp = format!("/api/projects/{p}/permissions");
    let r = c.post(&pp, &alice, json!({"subjectType": "user", "subjectName": "bob", "role": "view"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c.get(&pp, &alice).await;
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .contains(&json!({"subjectType": "user", "subjectName": "bob", "role": "view"})),
        "{:?}",
        r.body
    );
    let r = c.post(&pp, &alice, json!({"subjectType": "robot", "subjectName": "x", "role": "view"})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("subjectType")));
    // Bob (view) now sees the project and may read, not write.
    // (an earlier "not visible" answer may be cached for up to 2 s)
    eventually("bob gains access", Duration::from_secs(5), || {
        let (c, bob, p) = (&c, &bob, &p);
        async move { Ok((c.get(&format!("/api/projects/{p}"), bob).await.status == StatusCode::OK).then_some(())) }
    })
    .await
    .unwrap();
    assert_eq!(c.get(&format!("/api/projects/{p}/access"), &bob).await.body["userRole"], "view");
    let r = c.post(&sp, &bob, json!({"name": "bobs", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let r = c.post(&format!("/api/projects/{p}/groups"), &alice, json!({"groupName": "team-b", "role": "edit"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c.get(&format!("/api/projects/{p}/groups"), &alice).await;
    assert!(
        r.body["items"].as_array().unwrap().contains(&json!({"groupName": "team-b", "role": "edit"})),
        "{:?}",
        r.body
    );
    assert_eq!(c.delete(&format!("/api/projects/{p}/groups/team-b"), &alice).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.delete(&format!("{pp}/user/bob"), &alice).await.status, StatusCode::NO_CONTENT);
    // Revocation takes effect within 5 s.
    eventually("bob loses access", Duration::from_secs(5), || {
        let (c, bob, p) = (&c, &bob, &p);
        async move { Ok((c.get(&format!("/api/projects/{p}"), bob).await.status == StatusCode::NOT_FOUND).then_some(())) }
    })
    .await
    .unwrap();

    // Access keys: the token once, it authenticates, it is scoped to its project.
    let kp = format!("/api/projects/{p}/keys");
    // A lifetime the reconciler would refuse is refused here, before anything is accepted
    // (three years: the api used to accept up to ten and answer 422 only after the command).
    for seconds in [599, 3 * 365 * 24 * 3600] {
        let r = c.post(&kp, &alice, json!({"name": "too-long", "expirationSeconds": seconds})).await;
        assert_eq!(
            (r.status, &r.body["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("expirationSeconds")),
            "{r:?}"
        );
        assert!(r.body.get("id").is_none(), "nothing accepted: {r:?}");
    }
    let r = c.post(&kp, &alice, json!({"name": "ci", "description": "CI bot", "role": "edit"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let key = r.body["key"].as_str().expect("token in the 201 body").to_string();
    let key_id = r.body["id"].as_str().unwrap().to_string();
    for k in ["id", "name", "key", "description", "role", "lastUsedAt"] {
        assert!(r.body.get(k).is_some(), "key field {k} missing");
    }
    assert!(!s.api.log().contains(&key), "the token must never be logged");
    let r = c.get(&kp, &alice).await;
    let listed =
        r.body["items"].as_array().unwrap().iter().find(|k| k["id"] == key_id.as_str()).cloned().expect("key listed");
    assert!(listed.get("key").is_none() && !listed.to_string().contains(&key));
    assert_eq!(listed["role"], "edit");
    let r = c.get(&sp, &key).await;
    assert_eq!(r.status, StatusCode::OK, "the key reads its project: {:?}", r.body);
    let other = project(&c, &alice, "api-e2e-b").await;
    for path in [
        format!("/api/projects/{other}"),
        format!("/api/projects/{other}/agentic-sessions"),
        format!("/api/projects/{other}/keys"),
    ] {
        assert_eq!(c.get(&path, &key).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = c.post(&format!("/api/projects/{other}/agentic-sessions"), &key, json!({"name": "x", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Lifecycle routes: clone into the other project, stop, start.
    let r = c.post(&format!("{sp}/s3/clone"), &alice, json!({"targetProject": other, "newSessionName": "copy"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["metadata"]["namespace"], other.as_str());
    assert_eq!(r.body["spec"]["prompt"], "later");
    let r =
        c.post(&format!("{sp}/s3/clone"), &alice, json!({"targetProject": other, "newSessionName": "Bad Name"})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("newSessionName")));
    let r = c.post(&format!("{sp}/s3/stop"), &alice, json!({})).await;
    assert!(r.status == StatusCode::OK || r.status == StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(c.post(&format!("{sp}/nope/start"), &alice, json!({})).await.status, StatusCode::NOT_FOUND);
    // Runner callbacks need update on agenticsessions/status: alice (admin) has none, so the
    // route answers like a missing project.
    let r = c.put(&format!("{sp}/s3/status"), &alice, json!({"phase": "Running"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    // Last use is recorded.
    eventually("lastUsedAt set", Duration::from_secs(10), || {
        let (c, alice, kp, key_id) = (&c, &alice, &kp, &key_id);
        async move {
            let r = c.get(kp, alice).await;
            Ok(r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == key_id.as_str() && k["lastUsedAt"].as_str().is_some_and(|t| !t.is_empty()))
                .then_some(()))
        }
    })
    .await
    .unwrap();
    assert_eq!(c.delete(&format!("{kp}/{key_id}"), &alice).await.status, StatusCode::NO_CONTENT);
    eventually("revoked key stops working", Duration::from_secs(15), || {
        let (c, key) = (&c, &key);
        async move { Ok((c.get("/api/me", key).await.status == StatusCode::UNAUTHORIZED).then_some(())) }
    })
    .await
    .unwrap();

    // Runner secrets: values never come back.
    let rs = format!("/api/projects/{p}/runner-secrets");
    let r = c.put(&rs, &alice, json!({"data": {"ANTHROPIC_API_KEY": "sk-very-secret"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = c.get(&rs, &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.to_string().contains("sk-very-secret"));
    let r = c.put(&rs, &alice, json!({"data": {"bad key": "x"}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    secrets_round_trip(env, &c, &alice, &bob, &p).await;
    let r = c.get(&format!("{rs}/config"), &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["secretName"].is_string());
    assert!(!s.api.log().contains("sk-very-secret"));

    // Delete.
    assert_eq!(c.delete(&format!("{sp}/s1"), &alice).await.status, StatusCode::NO_CONTENT);
    let r = c.get(&format!("{sp}/s1"), &alice).await;
    assert!(r.status == StatusCode::NOT_FOUND || r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(c.delete(&format!("/api/projects/{other}"), &alice).await.status, StatusCode::NO_CONTENT);
}

/// The stored data of a Secret, as the cluster holds it.
async fn secret_data(env: &TestEnv, p: &str, name: &str) -> std::collections::BTreeMap<String, String> {
    let s = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.admin(), p).get_opt(name).await.unwrap();
    s.and_then(|s| s.data).unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect()
}

/// A form filled from a read shows every value as the mask and sends it back unchanged: the
/// stored values survive a blind save, the mask is never stored, a key is removed only by an
/// explicit null, and keys a form does not show are left alone. Same for integration secrets.
/// Called the way the web UI's Next proxy calls (the token in `X-Forwarded-Access-Token`).
async fn secrets_round_trip(env: &TestEnv, c: &Client, alice: &str, bob: &str, p: &str) {
    let ui = |m: Method, path: String, body: Option<Value>| async move {
        c.call(m, &path, None, body, &[("X-Forwarded-Access-Token", alice), ("X-Forwarded-User", "alice")]).await
    };
    for (route, secret, message) in [
        ("runner-secrets", "ambient-runner-secrets", "runner secrets updated"),
        ("integration-secrets", "ambient-non-vertex-integrations", "integration secrets updated"),
    ] {
        let path = format!("/api/projects/{p}/{route}");
        let r = ui(
            Method::PUT,
            path.clone(),
            Some(json!({"data": {"ANTHROPIC_API_KEY": "sk-real", "GITHUB_TOKEN": "ghp-real", "OLD": "x"}})),
        )
        .await;
        assert_eq!((r.status, r.body["message"].clone()), (StatusCode::OK, json!(message)), "{route}: {:?}", r.body);
        let shown = ui(Method::GET, path.clone(), None).await;
        assert_eq!(shown.status, StatusCode::OK);
        assert_eq!(
            shown.body["data"]["ANTHROPIC_API_KEY"], "********",
            "{route}: values read as the mask: {:?}",
            shown.body
        );
        // The blind save: everything sent back as read.
        let r = ui(Method::PUT, path.clone(), Some(json!({"data": shown.body["data"].clone()}))).await;
        assert_eq!(r.status, StatusCode::OK, "{route}: {:?}", r.body);
        let want = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()
        };
        assert_eq!(
            secret_data(env, p, secret).await,
            want(&[("ANTHROPIC_API_KEY", "sk-real"), ("GITHUB_TOKEN", "ghp-real"), ("OLD", "x")]),
            "{route}: a blind save keeps every value"
        );
        // The web UI's Anthropic form sends one key: the others stay.
        let r = ui(Method::PUT, path.clone(), Some(json!({"data": {"ANTHROPIC_API_KEY": "********"}}))).await;
        assert_eq!(r.status, StatusCode::OK, "{route}: {:?}", r.body);
        // A new value, a removal by null, a kept key, in one write.
        let r = ui(
            Method::PUT,
            path.clone(),
            Some(json!({"data": {"ANTHROPIC_API_KEY": "sk-new", "OLD": null, "GITHUB_TOKEN": "********"}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{route}: {:?}", r.body);
        assert_eq!(
            secret_data(env, p, secret).await,
            want(&[("ANTHROPIC_API_KEY", "sk-new"), ("GITHUB_TOKEN", "ghp-real")]),
            "{route}"
        );
        // The mask for a key with no stored value is refused, naming it; nothing changes.
        let r = ui(
            Method::PUT,
            path.clone(),
            Some(json!({"data": {"NEW_KEY": "********", "ANTHROPIC_API_KEY": "sk-lost"}})),
        )
        .await;
        assert_eq!(
            (r.status, r.body["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("data.NEW_KEY")),
            "{route}: {:?}",
            r.body
        );
        assert_eq!(
            secret_data(env, p, secret).await["ANTHROPIC_API_KEY"],
            "sk-new",
            "{route}: a refused write changes nothing"
        );
        // A stranger neither reads the keys nor learns which exist from a refusal.
        let r = c.get(&path, bob).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{route}: {:?}", r.body);
        let stored = c.put(&path, bob, json!({"data": {"GITHUB_TOKEN": "********"}})).await;
        let absent = c.put(&path, bob, json!({"data": {"NOPE": "********"}})).await;
        assert_eq!(
            (stored.status, &stored.body),
            (StatusCode::NOT_FOUND, &absent.body),
            "{route}: the same refusal either way"
        );
    }
    // A runner pointed at a Secret of the project's own is not silently moved off it.
    let config = format!("/api/projects/{p}/runner-secrets/config");
    let r = c.put(&config, alice, json!({"secretName": "my-own-secret"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = ui(
        Method::PUT,
        format!("/api/projects/{p}/runner-secrets"),
        Some(json!({"data": {"ANTHROPIC_API_KEY": "sk-x"}})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["reason"].clone()),
        (StatusCode::CONFLICT, json!("CustomRunnerSecret")),
        "{:?}",
        r.body
    );
    assert_eq!(c.get(&config, alice).await.body["secretName"], "my-own-secret");
    let r = c.put(&config, alice, json!({"secretName": "ambient-runner-secrets"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn listed(r: &common::Resp, project: &str) -> bool {
    r.body["items"].as_array().is_some_and(|items| items.iter().any(|i| i["name"] == project))
}

/// The project list narrows candidates by RoleBinding subjects and cluster-wide grants (see
/// `api/src/visibility.rs`); grants made outside the api, with a namespaced Role or a
/// ClusterRoleBinding, still show (and stop showing) in it.
async fn project_list_follows_rbac_from_any_source(env: &TestEnv, s: &Stack) {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
    use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

    let c = Client::new(&s.api_url);
    let (alice, carol, admin) = (token(env, DemoUser::Alice), token(env, DemoUser::Carol), token(env, DemoUser::Admin));
    let p = project(&c, &alice, "api-list").await;
    assert!(!listed(&c.get("/api/projects", &carol).await, &p), "carol has no grant yet");
    let carol_subject = Subject {
        kind: "User".into(),
        name: "carol".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        ..Default::default()
    };
    let meta = |name: &str, ns: Option<&str>| ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        ..Default::default()
    };
    let within = Duration::from_secs(10);

    // A kubectl-made Role and RoleBinding (no labels of ours) granting what visibility needs.
    let role = Role {
        metadata: meta("peek", Some(&p)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![events::crd::GROUP.into()]),
            resources: Some(vec!["projectsettings".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(env.admin(), &p).create(&PostParams::default(), &role).await.unwrap();
    let rb = RoleBinding {
        metadata: meta("peek", Some(&p)),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: "peek".into() },
        subjects: Some(vec![carol_subject.clone()]),
    };
    let rbs = Api::<RoleBinding>::namespaced(env.admin(), &p);
    rbs.create(&PostParams::default(), &rb).await.unwrap();
    eventually("carol sees the project through a kubectl RoleBinding", within, || async {
        Ok(listed(&c.get("/api/projects", &carol).await, &p).then_some(()))
    })
    .await
    .unwrap();
    rbs.delete("peek", &DeleteParams::default()).await.unwrap();
    eventually("carol no longer sees it once the RoleBinding is gone", within, || async {
        Ok((!listed(&c.get("/api/projects", &carol).await, &p)).then_some(()))
    })
    .await
    .unwrap();

    // A cluster-wide grant shows every project, as it does to the cluster admin.
    let crb_name = ambient_tests::unique_name("api-list-carol");
    let crb = ClusterRoleBinding {
        metadata: meta(&crb_name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "ambient-project-view".into(),
        },
        subjects: Some(vec![carol_subject]),
    };
    let crbs = Api::<ClusterRoleBinding>::all(env.admin());
    crbs.create(&PostParams::default(), &crb).await.unwrap();
    let everything = c.get("/api/projects", &admin).await;
    assert!(listed(&everything, &p), "the cluster admin sees every project");
    let seen = eventually("carol sees every project through a ClusterRoleBinding", within, || async {
        let r = c.get("/api/projects", &carol).await;
        Ok(listed(&r, &p).then_some(r))
    })
    .await
    .unwrap();
    let names = |r: &common::Resp| -> Vec<String> {
        let mut v: Vec<String> = r.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str().map(String::from))
            .collect();
        v.sort();
        v
    };
    // Projects made by tests running meanwhile may differ; ours and alice's must be in both.
    let alices: Vec<String> = names(&c.get("/api/projects", &alice).await);
    for n in &alices {
        assert!(names(&seen).contains(n), "carol (cluster-wide view) misses {n}");
        assert!(names(&everything).contains(n), "the admin misses {n}");
    }
    crbs.delete(&crb_name, &DeleteParams::default()).await.unwrap();
    eventually("the cluster-wide grant is gone", within, || async {
        Ok((!listed(&c.get("/api/projects", &carol).await, &p)).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(c.delete(&format!("/api/projects/{p}"), &alice).await.status, StatusCode::NO_CONTENT);
}

async fn foreign_and_missing_projects_answer_alike_on_every_route(env: &TestEnv, s: &Stack) {
    let c = Client::new(&s.api_url);
    let alice = token(env, DemoUser::Alice);
    let carol = token(env, DemoUser::Carol);
    let p = project(&c, &alice, "api-tenant").await;
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), &alice, json!({"name": "s1", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let missing = ambient_tests::unique_name("api-missing");
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "".into(), None),
        (Method::PUT, "".into(), Some(json!({"displayName": "x"}))),
        (Method::DELETE, "".into(), None),
        (Method::GET, "/access".into(), None),
        (Method::GET, "/agentic-sessions".into(), None),
        (Method::POST, "/agentic-sessions".into(), Some(json!({"name": "z", "prompt": "x"}))),
        (Method::GET, "/agentic-sessions/s1".into(), None),
        (Method::PUT, "/agentic-sessions/s1".into(), Some(json!({"prompt": "x"}))),
        (Method::DELETE, "/agentic-sessions/s1".into(), None),
        (Method::POST, "/agentic-sessions/s1/start".into(), None),
        (Method::POST, "/agentic-sessions/s1/stop".into(), None),
        (Method::POST, "/agentic-sessions/s1/clone".into(), Some(json!({"targetProject": "x", "newSessionName": "y"}))),
        (Method::PUT, "/agentic-sessions/s1/status".into(), Some(json!({"phase": "Running"}))),
        (Method::PUT, "/agentic-sessions/s1/displayname".into(), Some(json!({"displayName": "x"}))),
        (Method::GET, "/agentic-sessions/s1/events".into(), None),
        (Method::GET, "/agentic-sessions/s1/messages".into(), None),
        (Method::POST, "/agentic-sessions/s1/messages".into(), Some(json!({"type": "user.message", "payload": {}}))),
        (Method::GET, "/sessions/s1/messages".into(), None),
        (Method::POST, "/sessions/s1/messages".into(), Some(json!({"type": "user.message", "payload": {}}))),
        (Method::GET, "/permissions".into(), None),
        (
            Method::POST,
            "/permissions".into(),
            Some(json!({"subjectType": "user", "subjectName": "carol", "role": "admin"})),
        ),
        (Method::DELETE, "/permissions/user/alice".into(), None),
        (Method::GET, "/groups".into(), None),
        (Method::POST, "/groups".into(), Some(json!({"groupName": "g", "role": "admin"}))),
        (Method::DELETE, "/groups/team-a".into(), None),
        (Method::GET, "/keys".into(), None),
        (Method::POST, "/keys".into(), Some(json!({"name": "k"}))),
        (Method::DELETE, "/keys/some-key".into(), None),
        (Method::GET, "/runner-secrets".into(), None),
        (Method::PUT, "/runner-secrets".into(), Some(json!({"data": {"A": "b"}}))),
        (Method::GET, "/runner-secrets/config".into(), None),
        (Method::PUT, "/runner-secrets/config".into(), Some(json!({"secretName": "s"}))),
        (Method::GET, "/events".into(), None),
    ];
    for (m, suffix, body) in routes {
        let foreign = c.call(m.clone(), &format!("/api/projects/{p}{suffix}"), Some(&carol), body.clone(), &[]).await;
        let absent = c.call(m.clone(), &format!("/api/projects/{missing}{suffix}"), Some(&carol), body, &[]).await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{m} {suffix}: {:?}", foreign.body);
        assert_eq!(
            (foreign.status, &foreign.body),
            (absent.status, &absent.body),
            "{m} {suffix} tells foreign from missing"
        );
    }
    // Nothing changed.
    let r = c.get(&format!("/api/projects/{p}/agentic-sessions/s1"), &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["spec"]["prompt"], "x");
}

async fn floods_get_429_with_retry_after(env: &TestEnv, s: &Stack) {
    // A second api process with tight limits: 5 writes and 8 reads at once per principal.
    let args: Vec<String> =
        ["--rate-limit-rps=0.01", "--rate-limit-burst=5", "--read-rate-limit-rps=0.01", "--read-rate-limit-burst=8"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let (_api, url) = s.api_replica(env, &args).await.unwrap();
    let c = Client::new(&url);
    let bob = token(env, DemoUser::Bob);
    let alice = token(env, DemoUser::Alice);
    // Bob's script floods writes (refused ones: nothing is created) until limited...
    let mut limited = None;
    for _ in 0..20 {
        let r = c.post("/api/projects", &bob, json!({"name": "Not A Valid Name"})).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a flood of writes is limited");
    assert!(r.body["error"].is_string());
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    // ...and his web UI's reads still get through: reads have their own budget.
    for _ in 0..8 {
        assert_eq!(c.get("/api/me", &bob).await.status, StatusCode::OK, "reads are not starved by writes");
    }
    assert_eq!(c.get("/api/me", &bob).await.status, StatusCode::TOO_MANY_REQUESTS, "reads are limited too");
    // Per principal: alice is not affected.
    assert_eq!(c.get("/api/me", &alice).await.status, StatusCode::OK);
    let r = c.post("/api/projects", &alice, json!({"name": "Not A Valid Name"})).await;
    assert!(r.status.is_client_error() && r.status != StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
}
