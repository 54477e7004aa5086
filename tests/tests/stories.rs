//! End-to-end user stories: the api, reconciler and projector as real processes under their
//! deploy/ ServiceAccounts, on the dev cluster and NATS, driven only through REST and SSE the way
//! the UI and automation use them. The admin kube client is used only where the story itself
//! uses kubectl (GitOps) and to check the cluster's state.
//!
//! Each story is one test with its own stack; stacks on one bus are replicas of one installation.

use std::time::{Duration, Instant};

use ambient_tests::http::{Client, Resp, SseEvent};
use ambient_tests::routes::{Params, operations, sample_body};
use ambient_tests::sse::{SseStream, phase_of};
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, eventually, unique_name};
use events::crd::ProjectSettings;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// "Revoking a role must take effect within 5 seconds", with a little slack for a loaded machine.
const REVOCATION_BOUND: Duration = Duration::from_millis(6000);
/// Condition waits (not speed assertions).
const LONG: Duration = Duration::from_secs(60);

/// A stack whose per-principal rate limit does not get in the way of probing every route, and
/// whose mutations wait long enough on a loaded machine to answer synchronously.
async fn stack(env: &TestEnv) -> Stack {
    let api_args =
        vec!["--rate-limit-rps=1000".into(), "--rate-limit-burst=10000".into(), "--result-timeout=60s".into()];
    Stack::start(env, StackOptions { api_args, ..Default::default() }).await.expect("stack starts")
}

fn token(env: &TestEnv, u: DemoUser) -> String {
    env.token(u).expect("demo token").to_string()
}

async fn create_project(c: &Client, who: &str, prefix: &str) -> String {
    let name = unique_name(prefix);
    let r = c.post("/api/projects", who, json!({"name": name, "displayName": format!("Story {prefix}")})).await;
    assert_eq!(r.status, StatusCode::CREATED, "creating {name}: {:?}", r.body);
    // Read-your-writes: once created, the project is the creator's at once, with no retry.
    assert_eq!(
        c.get(&format!("/api/projects/{name}"), who).await.status,
        StatusCode::OK,
        "the creator sees {name} right away"
    );
    let listed = c.get("/api/projects", who).await;
    assert!(
        listed.body["items"].as_array().is_some_and(|i| i.iter().any(|p| p["name"] == name.as_str())),
        "the creator lists {name} right away"
    );
    name
}

async fn grant(c: &Client, admin: &str, p: &str, ty: &str, name: &str, role: &str) {
    let r = c
        .post(
            &format!("/api/projects/{p}/permissions"),
            admin,
            json!({"subjectType": ty, "subjectName": name, "role": role}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "grant {ty} {name} {role} in {p}: {:?}", r.body);
}

/// Waits until `GET path` as `who` answers `want`.
async fn wait_status(c: &Client, who: &str, path: &str, want: StatusCode, within: Duration) -> Resp {
    eventually(&format!("GET {path} answers {want}"), within, || async move {
        let r = c.get(path, who).await;
        Ok((r.status == want).then_some(r))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until the session's phase (read API) is `phase`; returns the session.
async fn wait_phase(c: &Client, who: &str, p: &str, s: &str, phase: &str) -> Value {
    let path = format!("/api/projects/{p}/agentic-sessions/{s}");
    eventually(&format!("{p}/{s} in phase {phase}"), LONG, || {
        let path = path.clone();
        async move {
            let r = c.get(&path, who).await;
            Ok((r.status == StatusCode::OK && r.body["status"]["phase"] == phase).then_some(r.body))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Reads the stream until `session` reports `phase`; returns the phases seen on the way.
async fn sse_until_phase(sse: &mut SseStream, session: &str, phase: &str) -> Vec<String> {
    let evs = sse.read_until(LONG, |e| phase_of(e, session).as_deref() == Some(phase)).await;
    let phases: Vec<String> = evs.iter().filter_map(|e| phase_of(e, session)).collect();
    assert_eq!(
        phases.last().map(String::as_str),
        Some(phase),
        "SSE never showed {session} {phase}; saw {phases:?} (ended: {})",
        sse.ended
    );
    phases
}

/// Every route of `project` answers as a missing project does (same status and body) to `who`.
async fn refused_everywhere(c: &Client, doc: &Value, who: &str, project: &str, session: &str, except: &[&str]) {
    let missing = unique_name("story-missing");
    let mut probed = 0;
    for route in operations(doc).iter().filter(|r| r.in_project() && !except.contains(&r.label().as_str())) {
        let body = sample_body(route, project, &unique_name("probe"));
        let there = c
            .call(route.method(), &Params::new(project, session).fill(&route.template), Some(who), body.clone(), &[])
            .await;
        let absent =
            c.call(route.method(), &Params::new(&missing, session).fill(&route.template), Some(who), body, &[]).await;
        assert_eq!(there.status, StatusCode::NOT_FOUND, "{}: {:?}", route.label(), there.body);
        assert_eq!(there.body, absent.body, "{} tells {project} from a missing project", route.label());
        probed += 1;
    }
    assert!(probed >= 25, "only {probed} project routes probed");
}

async fn openapi(c: &Client) -> Value {
    let r = c.call(reqwest::Method::GET, "/openapi.json", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    r.body
}

fn session_path(p: &str, s: &str) -> String {
    format!("/api/projects/{p}/agentic-sessions/{s}")
}

/// Alice shares a project with team-b; bob runs a session and watches it; carol sees nothing;
/// alice revokes and bob is locked out within 5 s, his open stream included.
#[tokio::test]
async fn collaboration() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let (alice, bob, carol) = (token(&env, DemoUser::Alice), token(&env, DemoUser::Bob), token(&env, DemoUser::Carol));

    let p = create_project(&c, &alice, "story-collab").await;
    assert_eq!(c.get(&format!("/api/projects/{p}"), &bob).await.status, StatusCode::NOT_FOUND, "not shared yet");
    let r = c.post(&format!("/api/projects/{p}/groups"), &alice, json!({"groupName": "team-b", "role": "edit"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c.get(&format!("/api/projects/{p}/permissions"), &alice).await;
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .contains(&json!({"subjectType": "group", "subjectName": "team-b", "role": "edit"})),
        "{:?}",
        r.body
    );

    // Bob sees the project as an editor, opens the session's live stream, then creates it.
    wait_status(&c, &bob, &format!("/api/projects/{p}"), StatusCode::OK, Duration::from_secs(10)).await;
    let listed = c.get("/api/projects", &bob).await;
    assert!(
        listed.body["items"].as_array().unwrap().iter().any(|i| i["name"] == p.as_str()),
        "bob lists the shared project"
    );
    assert_eq!(c.get(&format!("/api/projects/{p}/access"), &bob).await.body["userRole"], "edit");
    let mut sse = ambient_tests::sse::open(&c, &format!("{}/events", session_path(&p, "review")), &bob, None)
        .await
        .expect("bob may watch");
    let r = c
        .post(
            &format!("/api/projects/{p}/agentic-sessions"),
            &bob,
            json!({"name": "review", "prompt": "review the PR"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let phases = sse_until_phase(&mut sse, "review", "Completed").await;
    assert_eq!(phases.first().map(String::as_str), Some("Pending"), "the stream starts at Pending: {phases:?}");
    assert!(phases.iter().any(|p| p == "Running"), "{phases:?}");
    let got = wait_phase(&c, &bob, &p, "review", "Completed").await;
    assert_eq!(got["spec"]["userContext"]["userId"], "bob", "the session runs as its creator");
    assert!(got["status"]["completionTime"].is_string(), "{got}");

    // Carol, with no role, gets the missing-project answer on every route of the project.
    let doc = openapi(&c).await;
    refused_everywhere(&c, &doc, &carol, &p, "review", &[]).await;
    assert!(
        !c.get("/api/projects", &carol).await.body["items"].as_array().unwrap().iter().any(|i| i["name"] == p.as_str())
    );

    // Alice revokes team-b: bob is refused, and his open stream is closed, within 5 s.
    let r = c.delete(&format!("/api/projects/{p}/permissions/group/team-b"), &alice).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let revoked = Instant::now();
    let tail = sse.read_to_end(REVOCATION_BOUND).await;
    assert!(sse.ended, "bob's stream is still open {:?} after the revocation", revoked.elapsed());
    assert!(tail.iter().any(|e| e.event == "revoked"), "the stream says why it closed: {tail:?}");
    let remaining = REVOCATION_BOUND.saturating_sub(revoked.elapsed());
    wait_status(&c, &bob, &format!("/api/projects/{p}/agentic-sessions"), StatusCode::NOT_FOUND, remaining).await;
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), &bob, json!({"name": "after", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    assert!(revoked.elapsed() <= REVOCATION_BOUND, "bob refused only after {:?}", revoked.elapsed());
    let r = c.get(&format!("/api/projects/{p}/agentic-sessions"), &alice).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "bob's refused create changed nothing");
}

/// A CI system's access key: creates and stops a session, shows its last use, cannot touch
/// another project, and stops working within 5 s of its revocation.
#[tokio::test]
async fn automation() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let a = create_project(&c, &alice, "story-ci-a").await;
    let b = create_project(&c, &alice, "story-ci-b").await;
    let r =
        c.post(&format!("/api/projects/{b}/agentic-sessions"), &alice, json!({"name": "theirs", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    let r = c
        .post(
            &format!("/api/projects/{a}/keys"),
            &alice,
            json!({"name": "jira-bridge", "role": "edit", "description": "CI"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let key = r.body["key"].as_str().expect("the token is in the 201 body").to_string();
    let key_id = r.body["id"].as_str().unwrap().to_string();

    // The key creates a session that keeps running, then stops it.
    let r = c
        .post(
            &format!("/api/projects/{a}/agentic-sessions"),
            &key,
            json!({"name": "ci-run", "prompt": "fix the build", "environmentVariables": {"KWOK_RUN_DURATION": "1h"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let running = wait_phase(&c, &key, &a, "ci-run", "Running").await;
    assert!(
        running["spec"]["userContext"]["userId"].as_str().unwrap().starts_with(&format!("system:serviceaccount:{a}:")),
        "{running}"
    );
    let r = c.post(&format!("{}/stop", session_path(&a, "ci-run")), &key, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    wait_phase(&c, &key, &a, "ci-run", "Stopped").await;

    // Listed with its last use, and never with its token.
    let listed = eventually("the key's last use is shown", Duration::from_secs(15), || {
        let (c, alice, a, key_id) = (&c, &alice, &a, &key_id);
        async move {
            let r = c.get(&format!("/api/projects/{a}/keys"), alice).await;
            let item = r.body["items"].as_array().and_then(|i| i.iter().find(|k| k["id"] == key_id.as_str()).cloned());
            Ok(item.filter(|k| k["lastUsedAt"].as_str().is_some_and(|t| !t.is_empty())))
        }
    })
    .await
    .unwrap();
    assert_eq!((listed["name"].as_str(), listed["role"].as_str()), (Some("jira-bridge"), Some("edit")), "{listed}");
    assert!(!listed.to_string().contains(&key), "the token is never listed");

    // Project B: refused everything, exactly like a missing project.
    let doc = openapi(&c).await;
    refused_everywhere(&c, &doc, &key, &b, "theirs", &[]).await;
    let r = c.get("/api/projects", &key).await;
    let names: Vec<&str> = r.body["items"].as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, vec![a.as_str()], "the key sees its own project only");
    assert_eq!(c.get(&session_path(&b, "theirs"), &alice).await.body["spec"]["prompt"], "x", "nothing changed in B");

    // Revoked: refused within 5 s.
    let r = c.delete(&format!("/api/projects/{a}/keys/{key_id}"), &alice).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let revoked = Instant::now();
    let path = format!("/api/projects/{a}/agentic-sessions");
    eventually("the revoked key is refused", REVOCATION_BOUND, || {
        let (c, key, path) = (&c, &key, &path);
        async move {
            let st = c.get(path, key).await.status;
            Ok((st == StatusCode::UNAUTHORIZED || st == StatusCode::NOT_FOUND).then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let r = c.post(&path, &key, json!({"name": "after-revoke", "prompt": "x"})).await;
    assert!(matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND), "{:?}", r);
    assert!(revoked.elapsed() <= REVOCATION_BOUND, "refused only after {:?}", revoked.elapsed());
    assert!(
        !c.get(&format!("/api/projects/{a}/keys"), &alice).await.body.to_string().contains(&key_id),
        "the key is gone from the list"
    );
}

/// Stop a running session, start it again, clone it into another project where the caller is an
/// editor, delete it: each step visible through the read API and SSE.
#[tokio::test]
async fn lifecycle() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let (alice, bob) = (token(&env, DemoUser::Alice), token(&env, DemoUser::Bob));
    let p = create_project(&c, &bob, "story-life").await;
    let other = create_project(&c, &alice, "story-life-to").await;
    grant(&c, &alice, &other, "user", "bob", "edit").await;
    wait_status(&c, &bob, &format!("/api/projects/{other}"), StatusCode::OK, Duration::from_secs(10)).await;

    let mut events =
        ambient_tests::sse::open(&c, &format!("/api/projects/{p}/events"), &bob, None).await.expect("project stream");
    let mut events_other = ambient_tests::sse::open(&c, &format!("/api/projects/{other}/events"), &bob, None)
        .await
        .expect("target project stream");
    let body = json!({"name": "long", "prompt": "work for a while", "timeout": 3600, "environmentVariables": {"KWOK_RUN_DURATION": "1h"}});
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), &bob, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    sse_until_phase(&mut events, "long", "Running").await;
    wait_phase(&c, &bob, &p, "long", "Running").await;
    let job_name = "long-job";
    let jobs = Api::<Job>::namespaced(env.admin(), &p);
    assert!(jobs.get_opt(job_name).await.unwrap().is_some(), "a running session has its Job");

    // Stop.
    let r = c.post(&format!("{}/stop", session_path(&p, "long")), &bob, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    sse_until_phase(&mut events, "long", "Stopped").await;
    let stopped = wait_phase(&c, &bob, &p, "long", "Stopped").await;
    assert!(stopped["status"]["completionTime"].is_string() || stopped["status"]["message"].is_string(), "{stopped}");
    eventually("the Job is deleted on stop", LONG, || async {
        Ok(jobs.get_opt(job_name).await?.is_none().then_some(()))
    })
    .await
    .unwrap();

    // Start again.
    let r = c.post(&format!("{}/start", session_path(&p, "long")), &bob, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let again = sse_until_phase(&mut events, "long", "Running").await;
    // A late event of the stopped run (its status details, still phase Stopped) may precede the
    // start; once the new run shows, the stream never goes back to Stopped.
    let after_start: Vec<&String> = again.iter().skip_while(|ph| *ph == "Stopped").collect();
    assert!(
        !after_start.is_empty() && !after_start.iter().any(|ph| *ph == "Stopped"),
        "after start the stream moves forward: {again:?}"
    );
    wait_phase(&c, &bob, &p, "long", "Running").await;

    // Clone into the other project (bob is an editor there).
    let r = c
        .post(
            &format!("{}/clone", session_path(&p, "long")),
            &bob,
            json!({"targetProject": other, "newSessionName": "long-copy"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["metadata"]["namespace"], other.as_str());
    let copy = c.get(&session_path(&other, "long-copy"), &bob).await;
    assert_eq!(copy.status, StatusCode::OK);
    assert_eq!(copy.body["spec"]["prompt"], "work for a while");
    assert_eq!(copy.body["spec"]["userContext"]["userId"], "bob", "the copy belongs to the cloner");
    let seen = events_other.read_until(LONG, |e| e.data["name"] == "long-copy").await;
    assert!(
        seen.last().is_some_and(|e| e.data["name"] == "long-copy"),
        "the target project's stream shows the copy: {seen:?}"
    );
    // Bob is no admin of the target: cloning does not let him manage it.
    assert_eq!(c.get(&format!("/api/projects/{other}/keys"), &bob).await.status, StatusCode::FORBIDDEN);

    // Delete: gone from the read API and the stream, and its Job is collected.
    let r = c.delete(&session_path(&p, "long"), &bob).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let evs = events
        .read_until(LONG, |e: &SseEvent| e.event == "ambient.session.deleted.v1" && e.data["name"] == "long")
        .await;
    assert!(
        evs.last().is_some_and(|e| e.event == "ambient.session.deleted.v1"),
        "SSE shows the deletion: {:?}",
        evs.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    wait_status(&c, &bob, &session_path(&p, "long"), StatusCode::NOT_FOUND, LONG).await;
    let listed = c.get(&format!("/api/projects/{p}/agentic-sessions"), &bob).await;
    assert_eq!(listed.body["items"], json!([]));
    eventually("the deleted session's Job is collected", LONG, || async {
        Ok(jobs.get_opt(job_name).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(c.delete(&session_path(&other, "long-copy"), &bob).await.status, StatusCode::NO_CONTENT);
}

/// A `groupAccess` edit made with kubectl on ProjectSettings shows in the permissions API and
/// grants access; removing it removes the access.
#[tokio::test]
async fn gitops() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let (alice, bob) = (token(&env, DemoUser::Alice), token(&env, DemoUser::Bob));
    let p = create_project(&c, &alice, "story-gitops").await;
    let settings = Api::<ProjectSettings>::namespaced(env.admin(), &p);
    let set = |access: Value| {
        let settings = settings.clone();
        async move {
            let patch = json!({"spec": {"groupAccess": access}});
            settings
                .patch(events::crd::PROJECT_SETTINGS_NAME, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("kubectl edit of ProjectSettings")
        }
    };
    let team_b = json!({"subjectType": "group", "subjectName": "team-b", "role": "view"});

    set(json!([{"groupName": "team-b", "role": "view"}])).await;
    eventually("the permissions API shows the GitOps grant", LONG, || {
        let (c, alice, p, team_b) = (&c, &alice, &p, &team_b);
        async move {
            let r = c.get(&format!("/api/projects/{p}/permissions"), alice).await;
            Ok(r.body["items"].as_array().is_some_and(|i| i.contains(team_b)).then_some(()))
        }
    })
    .await
    .unwrap();
    let groups = c.get(&format!("/api/projects/{p}/groups"), &alice).await;
    assert!(
        groups.body["items"].as_array().unwrap().contains(&json!({"groupName": "team-b", "role": "view"})),
        "{:?}",
        groups.body
    );
    wait_status(&c, &bob, &format!("/api/projects/{p}/agentic-sessions"), StatusCode::OK, LONG).await;
    assert_eq!(c.get(&format!("/api/projects/{p}/access"), &bob).await.body["userRole"], "view");
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), &bob, json!({"name": "nope", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "view grants no writes: {:?}", r.body);

    set(json!([])).await;
    wait_status(&c, &bob, &format!("/api/projects/{p}"), StatusCode::NOT_FOUND, LONG).await;
    let r = c.get(&format!("/api/projects/{p}/permissions"), &alice).await;
    assert!(!r.body["items"].as_array().unwrap().contains(&team_b), "{:?}", r.body);
    assert!(
        r.body["items"].as_array().unwrap().iter().any(|g| g["subjectName"] == "alice" && g["role"] == "admin"),
        "the creator keeps admin: {:?}",
        r.body
    );
}

/// A session's runner (a token bound to its pod, as the kubelet mounts it) may report its
/// session's status and display name, and nothing else: not other sessions, not other
/// projects, no reads. Tokens of the same ServiceAccount bound to no pod, to a pod that only
/// looks like a runner's, or to a deleted pod report on nothing.
#[tokio::test]
async fn runner() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let p = create_project(&c, &alice, "story-runner").await;
    let other = create_project(&c, &alice, "story-runner-x").await;
    let long = json!({"KWOK_RUN_DURATION": "1h"});
    for (proj, name) in [(&p, "mine"), (&p, "sibling"), (&other, "mine")] {
        let r = c
            .post(
                &format!("/api/projects/{proj}/agentic-sessions"),
                &alice,
                json!({"name": name, "prompt": "x", "environmentVariables": long}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    wait_phase(&c, &alice, &p, "mine", "Running").await;

    // The token the Job's pod has mounted.
    let admin = env.admin();
    let pod = ambient_tests::runner_pod(&admin, &p, "mine").await.expect("the runner pod");
    assert_eq!(pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()), Some("ambient-runner"));
    let runner = ambient_tests::pod_bound_token(&admin, &p, &pod).await.expect("a pod-bound token");
    let sibling_runner = ambient_tests::runner_token(&admin, &p, "sibling").await.expect("the sibling's token");

    let me = c.get("/api/me", &runner).await;
    assert_eq!(me.body["userId"], format!("system:serviceaccount:{p}:ambient-runner"));

    // Hostile runners: the same ServiceAccount's token bound to no pod; bound to a pod an admin
    // made with a runner's name and account but no Job of the session; the sibling's runner.
    let status = format!("{}/status", session_path(&p, "mine"));
    let report = json!({"phase": "Running", "message": "forged"});
    let unbound = {
        let req = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() },
            ..Default::default()
        };
        let tr = Api::<ServiceAccount>::namespaced(admin.clone(), &p)
            .create_token_request("ambient-runner", &PostParams::default(), &req)
            .await
            .expect("TokenRequest");
        tr.status.expect("token issued").token
    };
    let fake: Pod = serde_json::from_value(json!({
        "metadata": {"name": "mine-job-zzzzz", "labels": {"agentic-session": "mine"}},
        "spec": {"serviceAccountName": "ambient-runner", "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let fake = Api::<Pod>::namespaced(admin.clone(), &p).create(&PostParams::default(), &fake).await.expect("fake pod");
    let impostor = ambient_tests::pod_bound_token(&admin, &p, &fake).await.expect("impostor token");
    for (who, token) in
        [("an unbound token", &unbound), ("a look-alike pod", &impostor), ("the sibling", &sibling_runner)]
    {
        let r = c.put(&status, token, report.clone()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{who} may not report on mine: {:?}", r.body);
        let r = c.put(&format!("{}/displayname", session_path(&p, "mine")), token, json!({"displayName": "x"})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{who} may not rename mine: {:?}", r.body);
        let r = c.get(&format!("{}/messages", session_path(&p, "mine")), token).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{who} may not read mine's messages: {:?}", r.body);
    }
    // The sibling's runner reports on its own session.
    let r =
        c.put(&format!("{}/status", session_path(&p, "sibling")), &sibling_runner, json!({"message": "mine"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // A stopped run's runner reports on nothing any more (its Job and pod are going).
    let r = c.post(&format!("{}/stop", session_path(&p, "sibling")), &alice, json!({})).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    eventually("the stopped run's runner is refused", LONG, || {
        let (c, token, path) = (&c, &sibling_runner, format!("{}/status", session_path(&p, "sibling")));
        async move {
            Ok((c.put(&path, token, json!({"message": "late"})).await.status == StatusCode::NOT_FOUND).then_some(()))
        }
    })
    .await
    .expect("404 for a stopped run's runner");
    // A deleted pod's token stops working (once the api's short token cache lets it go).
    Api::<Pod>::namespaced(admin.clone(), &p)
        .delete("mine-job-zzzzz", &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("delete the fake pod");
    eventually("a deleted pod's token is refused", LONG, || {
        let (c, impostor) = (&c, &impostor);
        async move { Ok((c.get("/api/me", impostor).await.status == StatusCode::UNAUTHORIZED).then_some(())) }
    })
    .await
    .expect("401 for a deleted pod's token");

    let r = c
        .put(
            &format!("{}/status", session_path(&p, "mine")),
            &runner,
            json!({"phase": "Running", "message": "turn 3 of 10", "num_turns": 3, "total_cost_usd": 0.25}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = c
        .put(&format!("{}/displayname", session_path(&p, "mine")), &runner, json!({"displayName": "Fix flaky test"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let reported = eventually("alice reads the runner's reports", LONG, || {
        let (c, alice, p) = (&c, &alice, &p);
        async move {
            let r = c.get(&session_path(p, "mine"), alice).await;
            let st = &r.body["status"];
            Ok((st["message"] == "turn 3 of 10"
                && st["num_turns"] == 3
                && r.body["spec"]["displayName"] == "Fix flaky test")
                .then_some(()))
        }
    })
    .await;
    if let Err(e) = reported {
        panic!("{e:#}: {}", c.get(&session_path(&p, "mine"), &alice).await.body);
    }

    // Nothing else: every other route of its project, its sibling, the other project.
    let doc = openapi(&c).await;
    // Its own session's conversation is the runner's channel too (the messages routes decide
    // that for themselves); everything else of its project is refused.
    let own: Vec<String> = operations(&doc)
        .iter()
        .filter(|r| {
            r.template.ends_with("/{session}/status")
                || r.template.ends_with("/{session}/displayname")
                || r.template.ends_with("/{session}/messages")
        })
        .map(|r| r.label())
        .collect();
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    refused_everywhere(&c, &doc, &runner, &p, "mine", &own).await;
    refused_everywhere(&c, &doc, &runner, &p, "sibling", &[]).await;
    refused_everywhere(&c, &doc, &runner, &other, "mine", &[]).await;
    let r = c.get("/api/projects", &runner).await;
    assert_eq!((r.status, &r.body["items"]), (StatusCode::OK, &json!([])), "the runner sees no project");
    let r = c.post("/api/projects", &runner, json!({"name": unique_name("runner-made")})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a runner creates no projects: {:?}", r);
    let sibling = c.get(&session_path(&p, "sibling"), &alice).await.body;
    assert!(
        sibling["spec"]["displayName"].is_null() && sibling["spec"]["prompt"] == "x",
        "the sibling is unchanged: {sibling}"
    );
}

/// A session's runner and a project's settings reach a UI through the api's SSE streams: the
/// session stream follows the reconciler's Job and pod to Running, a stop reports the runner
/// gone, and the project stream carries the settings the reconciler created.
#[tokio::test]
async fn runner_and_settings_views_over_sse() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let p = create_project(&c, &alice, "story-view").await;
    // From the start (`Last-Event-ID: 0`): the settings were created with the project.
    let mut project_events = ambient_tests::sse::open(&c, &format!("/api/projects/{p}/events"), &alice, Some(0))
        .await
        .expect("project stream");
    let body =
        json!({"name": "watched", "prompt": "work for a while", "environmentVariables": {"KWOK_RUN_DURATION": "1h"}});
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), &alice, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // From the start as well: kwok may run the pod before the stream is open.
    let mut session_events =
        ambient_tests::sse::open(&c, &format!("{}/events", session_path(&p, "watched")), &alice, Some(0))
            .await
            .expect("session stream");
    let runner = |e: &SseEvent| e.event == "ambient.session.runner.v1";
    let evs = session_events.read_until(LONG, |e| runner(e) && e.data["data"]["pod"]["phase"] == "Running").await;
    let last = evs.last().filter(|e| runner(e)).unwrap_or_else(|| panic!("no running runner view: {evs:?}"));
    assert_eq!(last.data["kind"], "session");
    assert_eq!(last.data["data"]["job"]["name"], "watched-job");
    assert_eq!(last.data["data"]["run"], 1);
    assert!(!last.data.to_string().contains("work for a while"), "the prompt is never in a runner view");

    let r = c.post(&format!("{}/stop", session_path(&p, "watched")), &alice, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let evs = session_events.read_until(LONG, |e| runner(e) && e.data["data"]["job"].is_null()).await;
    assert!(
        evs.last().is_some_and(|e| runner(e) && e.data["data"]["pod"].is_null()),
        "the runner is reported gone: {evs:?}"
    );

    let evs = project_events.read_until(LONG, |e| e.event == "ambient.project.settings.v1").await;
    let settings = evs
        .last()
        .filter(|e| e.event == "ambient.project.settings.v1")
        .unwrap_or_else(|| panic!("no settings view: {evs:?}"));
    assert_eq!((settings.data["kind"].as_str(), settings.data["name"].as_str()), (Some("project"), Some(p.as_str())));
    assert_eq!(settings.data["data"]["exists"], true);
}
