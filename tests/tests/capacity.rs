//! Shared capacity, played by a hostile tenant against a real stack (issue 15, items 5 and 8):
//!
//! - oversized fields and bodies are refused at the edge (422 naming the field, 413) and publish
//!   nothing;
//! - one project's flood from its access key fills only that project's backlog (429 with
//!   `Retry-After`), never more than its limit, while another project's command is accepted;
//! - a command the reconciler refuses (409) leaves nothing in the commands stream;
//! - 20 parallel project creates by a user with quota Q create exactly Q projects.
//!
//! One stack for the binary: the reconciler's project quota is a flag of the process, and on
//! the shared bus any reconciler of the binary may apply any command.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ambient_tests::http::{Client, Resp};
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, eventually, unique_name};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Pending commands one project may have in this test's api.
const PENDING_LIMIT: u64 = 20;
/// Carol's quota headroom for the race.
const QUOTA: usize = 3;
/// Projects carol creates before the race.
const SETUP_PROJECTS: usize = 2;

/// Carol's live (not terminating) projects.
async fn projects_of(env: &TestEnv, user: &str) -> BTreeSet<String> {
    let list = Api::<Namespace>::all(env.admin())
        .list_metadata(&ListParams::default().labels("ambient-code.io/managed=true"))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|ns| {
            ns.metadata.annotations.as_ref().and_then(|a| a.get("openshift.io/requester")).map(String::as_str)
                == Some(user)
        })
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter_map(|ns| ns.metadata.name.clone())
        .collect()
}

async fn terminating_of(env: &TestEnv, user: &str) -> usize {
    let list = Api::<Namespace>::all(env.admin())
        .list_metadata(&ListParams::default().labels("ambient-code.io/managed=true"))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|ns| {
            ns.metadata.annotations.as_ref().and_then(|a| a.get("openshift.io/requester")).map(String::as_str)
                == Some(user)
        })
        .filter(|ns| ns.metadata.deletion_timestamp.is_some())
        .count()
}

/// Messages of the project in the commands stream (pending commands), and the stream's last
/// sequence (grows with every command stored, whatever its project).
async fn commands_stream(env: &TestEnv, project: &str) -> (u64, u64) {
    let stream = env.jetstream().get_stream(events::streams::COMMANDS_STREAM).await.unwrap();
    let mut info = stream.info_with_subjects(format!("ambient.cmd.*.{project}.>")).await.unwrap();
    let last = info.info.state.last_sequence;
    let mut n = 0u64;
    while let Some(Ok((_, c))) = info.next().await {
        n += c as u64;
    }
    (n, last)
}

fn show(r: &Resp) -> String {
    format!("{} {}", r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_exhaust_shared_capacity() {
    let env = TestEnv::shared().await.unwrap();
    // Earlier runs' projects of carol must be gone (or stay): none may vanish during the race.
    eventually("carol's old projects finish terminating", Duration::from_secs(120), || async {
        Ok((terminating_of(&env, "carol").await == 0).then_some(()))
    })
    .await
    .unwrap();
    let before = projects_of(&env, "carol").await;
    let quota = before.len() + SETUP_PROJECTS + QUOTA;
    let opts = StackOptions {
        api_args: vec![
            "--rate-limit-rps=100000".into(),
            "--rate-limit-burst=100000".into(),
            "--result-timeout=60s".into(),
            format!("--max-pending-commands-per-project={PENDING_LIMIT}"),
        ],
        reconciler_args: vec![format!("--project-quota={quota}")],
        ..Default::default()
    };
    let stack = Stack::start(&env, opts).await.expect("stack starts");
    let c = Client::with_timeout(&stack.api_url, Duration::from_secs(90));
    let carol = env.token(DemoUser::Carol).unwrap().to_string();
    let (flood, other) = (unique_name("cap-flood"), unique_name("cap-other"));
    for p in [&flood, &other] {
        let r = c.post("/api/projects", &carol, json!({"name": p})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    }

    oversized_input_is_refused_and_publishes_nothing(&env, &c, &carol, &flood).await;
    a_flood_fills_only_its_own_project(&env, &c, &carol, &flood, &other).await;
    a_refused_command_leaves_nothing_stored(&env, &c, &carol, &other).await;
    parallel_creates_cannot_exceed_the_quota(&env, &c, &carol, before.len() + SETUP_PROJECTS).await;

    // Clean up carol's projects of this run (the race counts them in later runs otherwise).
    let mine: Vec<String> = projects_of(&env, "carol").await.difference(&before).cloned().collect();
    for p in mine {
        let _ = Api::<Namespace>::all(env.admin()).delete(&p, &DeleteParams::background()).await;
    }
    assert!(!stack.api.log().contains("panicked"), "the api panicked");
}

async fn oversized_input_is_refused_and_publishes_nothing(env: &TestEnv, c: &Client, carol: &str, p: &str) {
    let sessions = format!("/api/projects/{p}/agentic-sessions");
    let big = |n: usize| "x".repeat(n);
    // (what, method, path, body, status, field)
    type Case<'a> = (&'a str, Method, String, Value, StatusCode, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "env value over 32 KiB",
            Method::POST,
            sessions.clone(),
            json!({"name": "big-env", "prompt": "p", "environmentVariables": {"BIG": big(40 * 1024)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("environmentVariables.BIG"),
        ),
        (
            "env total over 64 KiB",
            Method::POST,
            sessions.clone(),
            json!({"name": "many-env", "prompt": "p", "environmentVariables": {"A": big(30_000), "B": big(30_000), "C": big(30_000)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("environmentVariables"),
        ),
        (
            "prompt over 100 000 characters",
            Method::POST,
            sessions.clone(),
            json!({"name": "long-prompt", "prompt": "é".repeat(100_001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("prompt"),
        ),
        (
            "a 700 KiB body",
            Method::POST,
            sessions.clone(),
            json!({"name": "huge", "prompt": "p", "environmentVariables": {"HUGE": big(700 * 1024)}}),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "runner secret over 128 KiB",
            Method::PUT,
            format!("/api/projects/{p}/runner-secrets"),
            json!({"data": {"A": big(100 * 1024), "B": big(100 * 1024)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data"),
        ),
        (
            "project description over 2 000 characters",
            Method::PUT,
            format!("/api/projects/{p}"),
            json!({"description": big(2001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("description"),
        ),
    ];
    for (what, method, path, body, status, field) in cases {
        let (_, seq_before) = commands_stream(env, p).await;
        let r = c.call(method, &path, Some(carol), Some(body), &[]).await;
        println!("{what}: {}", r.status);
        assert_eq!(r.status, status, "{what}: {}", show(&r));
        assert!(r.body["error"].is_string(), "{what}: {}", show(&r));
        if let Some(f) = field {
            assert_eq!(r.body["field"], f, "{what}: {}", show(&r));
        }
        let (_, seq_after) = commands_stream(env, p).await;
        assert_eq!(seq_after, seq_before, "{what}: a command was published");
    }
    // The documented bounds: the OpenAPI request body of a session create names them.
    let doc = c.call(Method::GET, "/openapi.json", None, None, &[]).await.body;
    let body = &doc["paths"]["/api/projects/{project}/agentic-sessions"]["post"]["requestBody"];
    let schema = body["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| doc.pointer(pointer))
        .unwrap_or_else(|| panic!("the body's schema is a component: {body}"));
    assert_eq!(schema["properties"]["prompt"]["maxLength"], 100_000, "{schema}");
    assert!(body["description"].as_str().unwrap_or("").contains("environmentVariables (value)"), "{body}");
}

async fn a_flood_fills_only_its_own_project(env: &TestEnv, c: &Client, carol: &str, flood: &str, other: &str) {
    let r =
        c.post(&format!("/api/projects/{flood}/agentic-sessions"), carol, json!({"name": "s1", "prompt": "p"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let r = c.post(&format!("/api/projects/{flood}/keys"), carol, json!({"name": "flooder", "role": "edit"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let key = r.body["key"].as_str().expect("the key's token").to_string();

    // The key floods its project with commands that apply one after the other (same session),
    // 16 at a time, for a few seconds, while the backlog is sampled.
    let stop_path = format!("/api/projects/{flood}/agentic-sessions/s1/stop");
    let started = Instant::now();
    let mut answers: Vec<Resp> = Vec::new();
    let mut max_backlog = 0u64;
    let mut other_answer: Option<Resp> = None;
    while started.elapsed() < Duration::from_secs(6) {
        let wave = futures::future::join_all(
            (0..16).map(|_| c.call(Method::POST, &stop_path, Some(&key), None, &[("prefer", "respond-async")])),
        )
        .await;
        let refused = wave.iter().any(|r| r.status == StatusCode::TOO_MANY_REQUESTS);
        answers.extend(wave);
        max_backlog = max_backlog.max(commands_stream(env, flood).await.0);
        // While the flooded project is refused, another project's command is accepted.
        if refused && other_answer.is_none() {
            let other_path = format!("/api/projects/{other}/agentic-sessions");
            let r = c.call(
                Method::POST,
                &other_path,
                Some(carol),
                Some(json!({"name": "meanwhile", "prompt": "p"})),
                &[("prefer", "respond-async")],
            );
            let (r, still) =
                tokio::join!(r, c.call(Method::POST, &stop_path, Some(&key), None, &[("prefer", "respond-async")]));
            println!("during the flood: other project {}, flooded project {}", r.status, still.status);
            other_answer = Some(r);
            answers.push(still);
        }
    }
    let accepted = answers.iter().filter(|r| r.status == StatusCode::ACCEPTED).count();
    let backlog_full: Vec<&Resp> = answers.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    println!(
        "flood: {} requests, {accepted} accepted, {} refused 429, largest backlog seen {max_backlog}",
        answers.len(),
        backlog_full.len()
    );
    for r in &answers {
        assert!(
            r.status == StatusCode::ACCEPTED || r.status == StatusCode::TOO_MANY_REQUESTS,
            "flood answer {}",
            show(r)
        );
    }
    assert!(!backlog_full.is_empty(), "the flood never reached the project's backlog limit");
    for r in &backlog_full {
        assert_eq!(r.body["reason"], "ProjectBacklogFull", "{}", show(r));
        let retry: u64 =
            r.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(retry >= 1, "429 without Retry-After: {:?}", r.headers);
    }
    assert!(
        max_backlog <= PENDING_LIMIT,
        "the project held {max_backlog} pending commands, over its limit of {PENDING_LIMIT}"
    );
    let other = other_answer.expect("another project was tried during the flood");
    assert!(
        other.status == StatusCode::ACCEPTED || other.status == StatusCode::CREATED,
        "another project refused during the flood: {}",
        show(&other)
    );
    // The backlog drains once the flood stops: the project is served again.
    eventually("the flooded project's backlog drains", Duration::from_secs(60), || async {
        Ok((commands_stream(env, flood).await.0 == 0).then_some(()))
    })
    .await
    .unwrap();
    let r = c.call(Method::POST, &stop_path, Some(&key), None, &[("prefer", "respond-async")]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "after draining: {}", show(&r));
}

async fn a_refused_command_leaves_nothing_stored(env: &TestEnv, c: &Client, carol: &str, p: &str) {
    eventually("the other project's backlog drains", Duration::from_secs(60), || async {
        Ok((commands_stream(env, p).await.0 == 0).then_some(()))
    })
    .await
    .unwrap();
    let path = format!("/api/projects/{p}/agentic-sessions");
    let r = c.post(&path, carol, json!({"name": "dup", "prompt": "p"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let r = c.post(&path, carol, json!({"name": "dup", "prompt": "p"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", show(&r));
    // Applied and refused commands both leave the stream once the reconciler acknowledges them.
    let left = eventually("the project's commands leave the stream", Duration::from_secs(10), || async {
        Ok((commands_stream(env, p).await.0 == 0).then_some(0))
    })
    .await;
    let (n, _) = commands_stream(env, p).await;
    assert!(left.is_ok(), "{n} applied or refused commands of {p} are still stored");
}

async fn parallel_creates_cannot_exceed_the_quota(env: &TestEnv, c: &Client, carol: &str, held: usize) {
    assert_eq!(projects_of(env, "carol").await.len(), held, "carol's projects before the race");
    let names: Vec<String> = (0..20).map(|_| unique_name("cap-race")).collect();
    let answers =
        futures::future::join_all(names.iter().map(|n| c.post("/api/projects", carol, json!({"name": n})))).await;
    let created = answers.iter().filter(|r| r.status == StatusCode::CREATED).count();
    for r in &answers {
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::TOO_MANY_REQUESTS, "{}", show(r));
    }
    let exist: Vec<&String> = {
        let now = projects_of(env, "carol").await;
        names.iter().filter(|n| now.contains(*n)).collect()
    };
    println!("quota race: {created} created, {} refused, {} exist", answers.len() - created, exist.len());
    assert_eq!(created, QUOTA, "20 parallel creates with {QUOTA} left of the quota");
    assert_eq!(exist.len(), QUOTA, "projects that exist: {exist:?}");
}
