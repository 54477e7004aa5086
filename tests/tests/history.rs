//! No history crosses owners (issue 15, item 4), and a stream never tells a reader more than
//! the REST reads would (item 8, key events): the api, reconciler and projector as real
//! processes on the dev cluster and NATS, driven through REST and SSE as a hostile tenant would.
//!
//! - alice fills a project with distinctive data (a session with a repo URL and env names, a
//!   grant, a key, a chat message), deletes it; bob creates a project of the same name and
//!   reads its stream from the start, with alice's old `Last-Event-ID`, and a session of
//!   alice's session's name: none of alice's data. The status history really is purged (checked
//!   in JetStream), and events and messages of the old owner injected after the purge (as a purge
//!   missed while the projector was down would leave them) are still not served.
//! - a viewer's project stream carries no access-key events (`GET /keys` refuses viewers) while
//!   the admin's does.

use std::collections::BTreeMap;
use std::time::Duration;

use ambient_tests::http::{Client, SseEvent};
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, eventually, unique_name};
use chrono::Utc;
use events::ProjectName;
use events::status::{StatusBody, StatusEvent, Tombstone};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use reqwest::StatusCode;
use serde_json::json;

const LONG: Duration = Duration::from_secs(90);

async fn stack(env: &TestEnv) -> Stack {
    let api_args =
        vec!["--rate-limit-rps=1000".into(), "--rate-limit-burst=10000".into(), "--result-timeout=60s".into()];
    Stack::start(env, StackOptions { api_args, ..Default::default() }).await.expect("stack starts")
}

fn token(env: &TestEnv, u: DemoUser) -> String {
    env.token(u).expect("demo token").to_string()
}

/// Subjects of `filter` in `stream` with their message counts.
async fn subjects(env: &TestEnv, stream: &str, filter: &str) -> BTreeMap<String, u64> {
    let s = env.jetstream().get_stream(stream).await.expect("stream");
    let mut info = s.info_builder().subjects(filter.to_string()).fetch().await.expect("stream info");
    let mut out = BTreeMap::new();
    while let Some(entry) = info.next().await {
        let (subject, n) = entry.expect("subject entry");
        out.insert(subject, n as u64);
    }
    out
}

/// Every event `who` reads on `path` from `last_event_id` until `stop` matches one (or the
/// timeout), plus a short tail so that anything right behind it shows too.
async fn read_stream(
    c: &Client,
    path: &str,
    who: &str,
    last_event_id: Option<u64>,
    stop: impl Fn(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    let mut sse =
        ambient_tests::sse::open(c, path, who, last_event_id).await.unwrap_or_else(|r| panic!("open {path}: {r:?}"));
    let mut evs = sse.read_until(LONG, &stop).await;
    assert!(
        evs.iter().any(&stop),
        "{path}: the awaited event never came: {:?}",
        evs.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    evs.extend(sse.read_until(Duration::from_secs(2), |_| false).await);
    evs
}

fn leaks<'a>(evs: &'a [SseEvent], secrets: &[String]) -> Vec<&'a SseEvent> {
    evs.iter().filter(|e| secrets.iter().any(|s| e.data.to_string().contains(s.as_str()))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_project_shows_nothing_of_its_previous_owner() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let (alice, bob) = (token(&env, DemoUser::Alice), token(&env, DemoUser::Bob));
    let x = unique_name("reborn");
    let tag = x.rsplit('-').next().unwrap_or("x").to_string();
    let repo = format!("https://git.example.com/alice/secret-repo-{tag}");
    let env_name = format!("ALICE_ONLY_{}", tag.to_uppercase());
    let friend = format!("alice-friend-{tag}");
    let key_desc = format!("alice's deploy key {tag}");
    let chat = format!("alice's private note {tag}");
    let secrets = vec![repo.clone(), env_name.clone(), friend.clone(), key_desc.clone(), chat.clone()];

    // alice's project, full of distinctive data.
    let r = c.post("/api/projects", &alice, json!({"name": x, "description": format!("alice's plans {tag}")})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let body = json!({"name": "work", "prompt": "p", "interactive": true, "repos": [{"input": {"url": repo, "branch": "main"}}],
        "environmentVariables": {env_name.clone(): "v", "KWOK_RUN_DURATION": "1h"}});
    let r = c.post(&format!("/api/projects/{x}/agentic-sessions"), &alice, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c
        .post(
            &format!("/api/projects/{x}/permissions"),
            &alice,
            json!({"subjectType": "user", "subjectName": friend, "role": "view"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c
        .post(
            &format!("/api/projects/{x}/keys"),
            &alice,
            json!({"name": "deploy", "role": "view", "description": key_desc}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c
        .post(
            &format!("/api/projects/{x}/agentic-sessions/work/messages"),
            &alice,
            json!({"type": "user.message", "payload": {"text": chat}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let old_session_uid = env_session_uid(&env, &x, "work").await;
    let old_ns_uid = Api::<Namespace>::all(env.admin()).get(&x).await.unwrap().metadata.uid.unwrap();

    // alice's own stream shows it all (so the data was on the bus); remember a sequence.
    let mine =
        read_stream(&c, &format!("/api/projects/{x}/events"), &alice, Some(0), |e| e.event == "ambient.key.changed.v1")
            .await;
    assert!(!leaks(&mine, &secrets[..4]).is_empty(), "alice sees her own history");
    let old_seq = mine.first().map(|e| e.id.saturating_sub(1)).unwrap_or(0);

    // alice deletes the project; it is gone from the cluster, its history from the bus.
    let r = c.delete(&format!("/api/projects/{x}"), &alice).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    eventually("the namespace is gone", LONG, || async {
        Ok(Api::<Namespace>::all(env.admin()).get_opt(&x).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let tombstone = format!("ambient.status.{x}.project.{x}");
    let purged = eventually("the status history is purged but the tombstone", LONG, || async {
        let left = subjects(&env, events::streams::STATUS_STREAM, &format!("ambient.status.{x}.>")).await;
        Ok((left.len() == 1 && left.get(&tombstone) == Some(&1)).then_some(()))
    })
    .await;
    let left = subjects(&env, events::streams::STATUS_STREAM, &format!("ambient.status.{x}.>")).await;
    assert!(purged.is_ok(), "left in the status stream: {left:?}");
    eventually("the messages are purged", LONG, || async {
        Ok(subjects(&env, events::streams::MESSAGES_STREAM, &format!("ambient.msg.{x}.>"))
            .await
            .is_empty()
            .then_some(()))
    })
    .await
    .unwrap();

    // bob takes the name.
    let r = c.post("/api/projects", &bob, json!({"name": x})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let new_ns_uid = Api::<Namespace>::all(env.admin()).get(&x).await.unwrap().metadata.uid.unwrap();
    assert_ne!(new_ns_uid, old_ns_uid);

    // A purge the projector missed (it was down, its read model lost) leaves the old owner's
    // events behind: inject some, stamped with the old namespace's uid and unstamped and old,
    // as they would be; and an old-owner message on the subject of a session name bob will use.
    let pn = ProjectName::new(x.clone()).unwrap();
    let leftover = |n: u32, uid: Option<String>, ago: i64| StatusEvent {
        id: format!("leftover-{n}-{}", uuid::Uuid::now_v7()),
        project: pn.clone(),
        name: "work".into(),
        time: Utc::now() - chrono::Duration::seconds(ago),
        project_uid: uid,
        body: StatusBody::SessionDeleted(Tombstone { name: format!("work-{}", secrets[0]), uid: None, at: Utc::now() }),
    };
    for ev in [leftover(1, Some(old_ns_uid.clone()), 0), leftover(2, None, 600)] {
        let out = events::wire::encode_status(&ev).unwrap();
        env.jetstream().publish_with_headers(out.subject, out.headers, out.payload).await.unwrap().await.unwrap();
    }

    // bob's stream from the start, and from alice's old Last-Event-ID: his project only.
    let stop = |e: &SseEvent| e.event == "ambient.project.changed.v1";
    for from in [0, old_seq] {
        let seen = read_stream(&c, &format!("/api/projects/{x}/events"), &bob, Some(from), stop).await;
        assert!(leaks(&seen, &secrets).is_empty(), "from {from}, bob reads alice's data: {:?}", leaks(&seen, &secrets));
        assert!(
            !seen
                .iter()
                .any(|e| e.data["name"] == "work" || e.data["id"].as_str().is_some_and(|i| i.starts_with("leftover-"))),
            "from {from}, bob reads the old owner's events: {:?}",
            seen.iter().map(|e| (&e.event, &e.data["name"])).collect::<Vec<_>>()
        );
        assert!(
            !seen.iter().any(|e| e.event == "ambient.project.deleted.v1"),
            "from {from}: the tombstone is the old namespace's"
        );
    }

    // A session of alice's session's name: bob's messages and session stream are his only.
    let msg_subject = format!("ambient.msg.{x}.work");
    let mut h = async_nats::HeaderMap::new();
    h.insert("Ambient-Session-Uid", old_session_uid.as_str());
    let stale = json!({"type": "user.message", "payload": {"text": chat}, "timestamp": Utc::now().to_rfc3339()});
    env.jetstream()
        .publish_with_headers(msg_subject.clone(), h, stale.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let legacy = json!({"type": "user.message", "payload": {"text": chat}, "timestamp": (Utc::now() - chrono::Duration::seconds(600)).to_rfc3339()});
    env.jetstream().publish(msg_subject.clone(), legacy.to_string().into()).await.unwrap().await.unwrap();
    let r = c.post(&format!("/api/projects/{x}/agentic-sessions"), &bob, json!({"name": "work", "prompt": "mine", "interactive": true, "environmentVariables": {"KWOK_RUN_DURATION": "1h"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c.get(&format!("/api/projects/{x}/agentic-sessions/work/messages"), &bob).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["messages"], json!([]), "bob reads the old session's messages");
    // The session stream from the start of both its streams (`0:0`).
    let mut resp = c
        .http
        .get(format!("{}/api/projects/{x}/agentic-sessions/work/events", s.api_url))
        .bearer_auth(&bob)
        .header("last-event-id", "0:0")
        .timeout(LONG)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (seen, _) = ambient_tests::http::read_events(&mut resp, 1000, Duration::from_secs(8)).await;
    assert!(
        seen.iter().any(|e| e.event == "ambient.session.changed.v1"),
        "bob sees his session: {:?}",
        seen.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    assert!(
        leaks(&seen, &secrets).is_empty(),
        "bob's session stream carries alice's data: {:?}",
        leaks(&seen, &secrets)
    );
    assert!(
        !seen.iter().any(|e| e.event == "message"),
        "bob's session has no messages yet: {:?}",
        seen.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    drop(resp);
    // bob's first message purges what the old session left; his count starts at one.
    let r = c
        .post(
            &format!("/api/projects/{x}/agentic-sessions/work/messages"),
            &bob,
            json!({"type": "user.message", "payload": {"text": "hello"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(subjects(&env, events::streams::MESSAGES_STREAM, &msg_subject).await.get(&msg_subject), Some(&1));
    let r = c.get(&format!("/api/projects/{x}/agentic-sessions/work/messages"), &bob).await;
    assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(1), "{:?}", r.body);

    let _ = c.delete(&format!("/api/projects/{x}"), &bob).await;
}

async fn env_session_uid(env: &TestEnv, ns: &str, name: &str) -> String {
    Api::<events::crd::AgenticSession>::namespaced(env.admin(), ns).get(name).await.unwrap().metadata.uid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_stream_carries_no_key_events() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env).await;
    let c = Client::new(&s.api_url);
    let (alice, carol) = (token(&env, DemoUser::Alice), token(&env, DemoUser::Carol));
    let p = unique_name("keyview");
    let r = c.post("/api/projects", &alice, json!({"name": p})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c
        .post(
            &format!("/api/projects/{p}/permissions"),
            &alice,
            json!({"subjectType": "user", "subjectName": "carol", "role": "view"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c
        .post(
            &format!("/api/projects/{p}/keys"),
            &alice,
            json!({"name": "ci", "role": "edit", "description": "the CI key"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // Something after the key, to know a stream has passed it.
    let r = c
        .post(&format!("/api/projects/{p}/agentic-sessions"), &alice, json!({"name": "after-key", "prompt": "p"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // The REST reads: carol lists grants, not keys.
    assert_eq!(c.get(&format!("/api/projects/{p}/permissions"), &carol).await.status, StatusCode::OK);
    assert_eq!(c.get(&format!("/api/projects/{p}/keys"), &carol).await.status, StatusCode::FORBIDDEN);

    let after = |e: &SseEvent| e.event == "ambient.session.changed.v1" && e.data["name"] == "after-key";
    let admin = read_stream(&c, &format!("/api/projects/{p}/events"), &alice, Some(0), after).await;
    assert!(admin.iter().any(|e| e.event == "ambient.key.changed.v1"), "the admin sees key events");
    let viewer = read_stream(&c, &format!("/api/projects/{p}/events"), &carol, Some(0), after).await;
    let keys: Vec<_> = viewer.iter().filter(|e| e.event.starts_with("ambient.key.")).collect();
    assert!(keys.is_empty(), "a viewer reads key events: {keys:?}");
    assert!(
        viewer.iter().any(|e| e.event == "ambient.permission.changed.v1"),
        "grants, which GET /permissions shows her, she sees"
    );
    let _ = c.delete(&format!("/api/projects/{p}"), &alice).await;
}
