//! Session messages end to end: the api, reconciler and projector as real processes; the runner
//! is played by a token bound to the session's real runner pod (a TokenRequest for the
//! project's `ambient-runner` ServiceAccount, as the kubelet would mount it).

mod common;

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, project, stack, token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MAX_COUNT: usize = 30;
const MAX_BYTES: usize = 300_000;
const MAX_MESSAGE: usize = 100_000;

/// One stack for the whole binary (see rest.rs).
#[tokio::test]
async fn session_messages_end_to_end() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(
        &env,
        &[
            &format!("--messages-max-per-session={MAX_COUNT}"),
            &format!("--messages-max-bytes-per-session={MAX_BYTES}"),
            &format!("--messages-max-message-bytes={MAX_MESSAGE}"),
        ],
    )
    .await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let bob = token(&env, DemoUser::Bob);
    let carol = token(&env, DemoUser::Carol);
    let p = project(&c, &alice, "api-msg").await;
    let r = c
        .post(
            &format!("/api/projects/{p}/permissions"),
            &alice,
            json!({"subjectType": "user", "subjectName": "bob", "role": "view"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for (name, interactive) in [("chat", true), ("batch", false), ("full", true), ("bytes", true)] {
        let body = json!({"name": name, "prompt": "talk", "interactive": interactive, "environmentVariables": {"KWOK_RUN_DURATION": "1h"}});
        let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), &alice, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {:?}", r.body);
    }
    let runner = runner_token(&env, &p, "chat").await;
    let other_runner = runner_token(&env, &p, "batch").await;
    let msgs = format!("/api/projects/{p}/agentic-sessions/chat/messages");

    // A viewer watches the session's stream while the runner talks.
    let mut sse = c
        .http
        .get(format!("{}/api/projects/{p}/agentic-sessions/chat/events", s.api_url))
        .bearer_auth(&bob)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The runner posts a conversation, partials included.
    let script = [
        ("system.message", json!({"text": "starting"})),
        ("message.partial", json!({"text": "Hel"})),
        ("message.partial", json!({"text": "Hello, wor"})),
        ("message.partial", json!({"text": "Hello, world"})),
        ("agent.message", json!({"text": "Hello, world!"})),
        ("message.partial", json!({"text": "Do"})),
        ("message.partial", json!({"text": "Done"})),
        ("result.message", json!({"text": "Done.", "num_turns": 1})),
    ];
    let mut seqs = Vec::new();
    for (ty, payload) in &script {
        let r = c.post(&msgs, &runner, json!({"type": ty, "payload": payload})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{ty}: {:?}", r.body);
        assert_eq!(r.body["type"], *ty);
        assert_eq!(r.body["payload"], *payload);
        assert!(
            r.body["timestamp"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
            "{:?}",
            r.body
        );
        seqs.push(r.body["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences grow: {seqs:?}");

    // The viewer reads them in order, partials folded into the latest of each run.
    let r = c.get(&msgs, &bob).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sessionId"], "chat");
    let folded: Vec<(String, Value)> = items(&r.body)
        .into_iter()
        .map(|m| (m["type"].as_str().unwrap().to_string(), m["payload"]["text"].clone()))
        .collect();
    let want: Vec<(String, Value)> = [
        ("system.message", "starting"),
        ("message.partial", "Hello, world"),
        ("agent.message", "Hello, world!"),
        ("message.partial", "Done"),
        ("result.message", "Done."),
    ]
    .iter()
    .map(|(t, x)| (t.to_string(), json!(x)))
    .collect();
    assert_eq!(folded, want);
    assert_eq!(r.body["lastSeq"], json!(seqs[7]));
    assert_eq!(r.body["hasMore"], false);
    // Asked for, every partial; the UI's alias path answers the same.
    let all = c.get(&format!("{msgs}?include_partial_messages=true"), &bob).await;
    let all_seqs: Vec<u64> = items(&all.body).iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(all_seqs, seqs);
    let alias = c.get(&format!("/api/projects/{p}/sessions/chat/messages?include_partial_messages=yes"), &bob).await;
    assert_eq!(alias.status, StatusCode::OK);
    assert_eq!(alias.body["messages"], all.body["messages"]);

    // Paging with after.
    let page1 = c.get(&format!("{msgs}?include_partial_messages=1&limit=3"), &bob).await;
    assert_eq!(items(&page1.body).iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), seqs[..3].to_vec());
    assert_eq!(page1.body["hasMore"], true);
    assert_eq!(page1.body["lastSeq"], json!(seqs[2]));
    let page2 = c.get(&format!("{msgs}?include_partial_messages=1&after={}", seqs[2]), &bob).await;
    assert_eq!(items(&page2.body).iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), seqs[3..].to_vec());
    let empty = c.get(&format!("{msgs}?after={}", seqs[7]), &bob).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(items(&empty.body).len(), 0);
    let typed = c.get(&format!("{msgs}?types=agent.message,result.message"), &bob).await;
    assert_eq!(
        items(&typed.body).iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![seqs[4], seqs[7]]
    );

    // The SSE stream delivered them live, in order, with ids distinct from each other.
    let got = read_sse(&mut sse, |e| e.event == "message", script.len(), Duration::from_secs(20)).await;
    let live: Vec<u64> = got.iter().filter(|e| e.event == "message").map(|e| e.data["seq"].as_u64().unwrap()).collect();
    assert_eq!(live, seqs, "every message live, in order");
    let last_id = got.iter().rev().find(|e| e.event == "message").unwrap().id.clone();
    assert!(last_id.ends_with(&format!(":{}", seqs[7])), "the id is the <status>:<message> cursor: {last_id}");
    drop(sse);
    // Resuming with Last-Event-ID yields exactly what was missed.
    let r = c.post(&msgs, &runner, json!({"type": "agent.waiting", "payload": {}})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let missed = r.body["seq"].as_u64().unwrap();
    let mut sse = c
        .http
        .get(format!("{}/api/projects/{p}/agentic-sessions/chat/events", s.api_url))
        .bearer_auth(&bob)
        .header("last-event-id", &last_id)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let got = read_sse(&mut sse, |e| e.event == "message", 1, Duration::from_secs(20)).await;
    let resumed: Vec<u64> =
        got.iter().filter(|e| e.event == "message").map(|e| e.data["seq"].as_u64().unwrap()).collect();
    assert_eq!(resumed, vec![missed]);
    drop(sse);

    // Chat round trip: the runner waits on its inbox; the editor's message ends the wait.
    let inbox = format!("{msgs}?types=user.message&after={missed}&wait=20");
    let waiter = {
        let (c, runner, inbox) = (Client::new(&s.api_url), runner.clone(), inbox.clone());
        tokio::spawn(async move { c.get(&inbox, &runner).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = c.post(&msgs, &alice, json!({"type": "user.message", "payload": {"content": "hi agent"}})).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    let got = waiter.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    let inbox_items = items(&got.body);
    assert_eq!(inbox_items.len(), 1, "{:?}", got.body);
    assert_eq!(inbox_items[0]["payload"]["content"], "hi agent");
    assert_eq!(inbox_items[0]["seq"], sent.body["seq"]);
    // Nothing newer: a short wait answers empty, with the cursor where it was.
    let r = c.get(&format!("{msgs}?types=user.message&after={}&wait=1", sent.body["seq"]), &runner).await;
    assert_eq!((r.status, items(&r.body).len()), (StatusCode::OK, 0));
    assert_eq!(r.body["lastSeq"], sent.body["seq"]);
    // The runner's own messages advance its cursor without matching.
    let r = c.post(&msgs, &runner, json!({"type": "agent.message", "payload": {"text": "got it"}})).await;
    let own = r.body["seq"].as_u64().unwrap();
    let r = c.get(&format!("{msgs}?types=user.message&after={}", sent.body["seq"]), &runner).await;
    assert_eq!((items(&r.body).len(), r.body["lastSeq"].as_u64()), (0, Some(own)));

    // Refusals.
    let agent = json!({"type": "agent.message", "payload": {"text": "x"}});
    let user = json!({"type": "user.message", "payload": {"content": "x"}});
    let r = c.post(&msgs, &other_runner, agent.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another session's runner: {:?}", r.body);
    let r = c.get(&msgs, &other_runner).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another session's runner reads nothing");
    let r = c.post(&msgs, &bob, user.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a viewer posting: {:?}", r.body);
    assert!(r.body["error"].is_string());
    let r = c.post(&msgs, &bob, agent.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c.post(&msgs, &alice, agent.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only the runner speaks for the agent: {:?}", r.body);
    let r = c.post(&msgs, &runner, user.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "the runner does not speak for the user: {:?}", r.body);
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions/batch/messages"), &alice, user.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "user message to a non-interactive session: {:?}", r.body);
    assert_eq!(r.body["reason"], "NotInteractive");
    let missing = ambient_tests::unique_name("nope");
    for (m, suffix, body) in [
        (Method::GET, "agentic-sessions/chat/messages", None),
        (Method::POST, "agentic-sessions/chat/messages", Some(user.clone())),
        (Method::GET, "sessions/chat/messages", None),
        (Method::POST, "sessions/chat/messages", Some(user.clone())),
    ] {
        let foreign = c.call(m.clone(), &format!("/api/projects/{p}/{suffix}"), Some(&carol), body.clone(), &[]).await;
        let absent = c.call(m.clone(), &format!("/api/projects/{missing}/{suffix}"), Some(&carol), body, &[]).await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{m} {suffix}");
        assert_eq!(
            (foreign.status, &foreign.body),
            (absent.status, &absent.body),
            "{m} {suffix} tells foreign from missing"
        );
    }
    let r = c
        .post(&msgs, &runner, json!({"type": "agent.message", "payload": {"text": "a".repeat(MAX_MESSAGE + 1)}}))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("bytes"));
    let r = c.post(&msgs, &alice, json!({"type": "user.message", "payload": {}, "seq": 5})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("seq")));
    let r = c.post(&msgs, &alice, json!({"type": "user.message", "colour": "red"})).await;
    assert_eq!((r.status, r.body["field"].clone()), (StatusCode::BAD_REQUEST, json!("colour")));
    let r = c.post(&msgs, &alice, json!({"type": "shout"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    for q in ["after=x", "limit=0", "limit=1001", "wait=100000", "types=shout", "include_partial_messages=maybe"] {
        let r = c.get(&format!("{msgs}?{q}"), &bob).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {:?}", r.body);
        assert!(r.body["error"].is_string());
    }
    let r = c.get(&format!("/api/projects/{p}/agentic-sessions/ghost/messages"), &bob).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Nothing of the refused appends was stored.
    let r = c.get(&format!("{msgs}?include_partial_messages=1"), &bob).await;
    assert_eq!(items(&r.body).len(), script.len() + 3);

    // Per-session limits: count, then bytes; a full log refuses clearly, other sessions go on.
    let full = format!("/api/projects/{p}/agentic-sessions/full/messages");
    for i in 0..MAX_COUNT {
        let r = c.post(&full, &alice, json!({"type": "user.message", "payload": {"n": i}})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{i}: {:?}", r.body);
    }
    let r = c.post(&full, &alice, user.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(r.body["reason"], "MessageLogFull");
    let bytes = format!("/api/projects/{p}/agentic-sessions/bytes/messages");
    let chunk = json!({"type": "user.message", "payload": {"content": "b".repeat(90_000)}});
    for _ in 0..3 {
        assert_eq!(c.post(&bytes, &alice, chunk.clone()).await.status, StatusCode::CREATED);
    }
    let r = c.post(&bytes, &alice, chunk).await;
    assert_eq!((r.status, r.body["reason"].clone()), (StatusCode::CONFLICT, json!("MessageLogFull")), "{:?}", r.body);
    assert_eq!(c.post(&msgs, &alice, user.clone()).await.status, StatusCode::CREATED);

    // Deleting the session purges its messages from the bus.
    let subject = format!("ambient.msg.{p}.chat");
    assert!(stored(&env, &subject).await > 0);
    let r = c.delete(&format!("/api/projects/{p}/agentic-sessions/chat"), &alice).await;
    assert!(r.status == StatusCode::NO_CONTENT || r.status == StatusCode::ACCEPTED, "{:?}", r.body);
    eventually("the deleted session's messages are purged", Duration::from_secs(60), || {
        let env = &env;
        let subject = subject.clone();
        async move { Ok((stored(env, &subject).await == 0).then_some(())) }
    })
    .await
    .unwrap();
    let r = c.get(&msgs, &bob).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Messages of a session that vanished while no api watched are purged when one starts.
    let ghost = format!("ambient.msg.{p}.ghost");
    env.jetstream()
        .publish(ghost.clone(), r#"{"type":"agent.message","payload":{},"timestamp":"2026-01-01T00:00:00Z"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut s = s;
    s.api.restart().await.unwrap();
    eventually("a missing session's messages are purged on start", Duration::from_secs(60), || {
        let env = &env;
        let ghost = ghost.clone();
        async move { Ok((stored(env, &ghost).await == 0).then_some(())) }
    })
    .await
    .unwrap();
    // The purge touched only that: the others' messages are intact.
    assert_eq!(stored(&env, &format!("ambient.msg.{p}.full")).await, MAX_COUNT as u64);
    // Message bodies never reach the log.
    let log = s.api.log();
    assert!(!log.contains("hi agent") && !log.contains("Hello, world"), "a message body was logged");
}

fn items(body: &Value) -> Vec<Value> {
    body["messages"].as_array().cloned().unwrap_or_else(|| panic!("no messages in {body:?}"))
}

/// Messages stored on `subject`.
async fn stored(env: &TestEnv, subject: &str) -> u64 {
    let stream = env.jetstream().get_stream(events::streams::MESSAGES_STREAM).await.unwrap();
    let mut info = stream.info_with_subjects(subject).await.unwrap();
    let mut n = 0;
    while let Some(Ok((_, count))) = futures::StreamExt::next(&mut info).await {
        n += count as u64;
    }
    n
}

/// The token the session's runner pod has (bound to it), once the Job controller made the pod.
async fn runner_token(env: &TestEnv, project: &str, session: &str) -> String {
    ambient_tests::runner_token(&env.admin(), project, session).await.unwrap()
}

struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// Reads SSE events (ids kept as text: the session stream's ids are `<status>:<message>`
/// cursors) until `n` of them satisfy `counts` or `timeout` passes.
async fn read_sse(
    resp: &mut reqwest::Response,
    counts: impl Fn(&Sse) -> bool,
    n: usize,
    timeout: Duration,
) -> Vec<Sse> {
    let (mut out, mut buf) = (Vec::new(), String::new());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut ev = Sse { id: String::new(), event: String::new(), data: Value::Null };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    ev.id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    ev.data = serde_json::from_str(v.trim()).unwrap_or_default();
                }
            }
            if !ev.event.is_empty() {
                out.push(ev);
            }
        }
        if out.iter().filter(|e| counts(e)).count() >= n {
            return out;
        }
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            _ => return out,
        }
    }
}
