//! Each project's share of the shared messages stream, played by a hostile tenant (issue 15,
//! item 5): many sessions of one project, appended to in parallel, hold at most the project's
//! budget (409 `ProjectMessagesFull` past it) while another project appends as before; deleting
//! a session gives its bytes back; refused and failed appends cost nothing.

mod common;

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, project, stack, token};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROJECT_BUDGET: u64 = 60_000;
const SESSION_BYTES: u64 = 1_000_000;
const TEXT: usize = 9_000;

/// Bytes the stream holds for `project`'s session subjects (its stored envelopes and headers).
async fn stored_messages(env: &TestEnv, project: &str) -> u64 {
    let stream = env.jetstream().get_stream(events::streams::MESSAGES_STREAM).await.unwrap();
    let mut info = stream.info_with_subjects(format!("ambient.msg.{project}.>")).await.unwrap();
    let mut n = 0u64;
    while let Some(Ok((_, c))) = info.next().await {
        n += c as u64;
    }
    n
}

fn user_message(n: usize) -> Value {
    json!({"type": "user.message", "payload": {"content": format!("{n:04}{}", "x".repeat(TEXT))}})
}

async fn interactive(c: &Client, who: &str, p: &str, name: &str) {
    let body = json!({"name": name, "prompt": "talk", "interactive": true, "environmentVariables": {"KWOK_RUN_DURATION": "1h"}});
    let r = c.post(&format!("/api/projects/{p}/agentic-sessions"), who, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{name}: {:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_project_cannot_fill_the_messages_stream() {
    let env = TestEnv::shared().await.unwrap();
    let s = stack(
        &env,
        &[
            &format!("--messages-max-bytes-per-project={PROJECT_BUDGET}"),
            &format!("--messages-max-bytes-per-session={SESSION_BYTES}"),
            "--messages-max-message-bytes=20000",
        ],
    )
    .await;
    let c = Client::new(&s.api_url);
    let alice = token(&env, DemoUser::Alice);
    let flood = project(&c, &alice, "msg-flood").await;
    let quiet = project(&c, &alice, "msg-quiet").await;
    let sessions = ["s1", "s2", "s3", "s4"];
    for name in sessions {
        interactive(&c, &alice, &flood, name).await;
    }
    interactive(&c, &alice, &quiet, "q1").await;

    // A refused append (too large for one message) reserves nothing.
    let huge = json!({"type": "user.message", "payload": {"content": "y".repeat(30_000)}});
    let r = c.post(&format!("/api/projects/{flood}/agentic-sessions/s1/messages"), &alice, huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", r.body);

    // 24 appends of ~9 KB race across four sessions, far below each session's cap: together
    // they may hold only the project's 60 000 bytes.
    let attempts = 24;
    let results = futures::future::join_all((0..attempts).map(|i| {
        let (c, alice, path) = (
            Client::new(&s.api_url),
            alice.clone(),
            format!("/api/projects/{flood}/agentic-sessions/{}/messages", sessions[i % 4]),
        );
        async move { c.post(&path, &alice, user_message(i)).await }
    }))
    .await;
    let accepted = results.iter().filter(|r| r.status == StatusCode::CREATED).count();
    for r in results.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(
            (r.status, r.body["reason"].clone()),
            (StatusCode::CONFLICT, json!("ProjectMessagesFull")),
            "{:?}",
            r.body
        );
        assert!(
            r.body["error"].as_str().is_some_and(|m| m.contains("60000")),
            "the refusal names the budget: {:?}",
            r.body
        );
    }
    // Each envelope is ~9 100 bytes (content plus type, timestamp and JSON): six fit, a seventh
    // would not; never more, whatever the interleaving.
    assert_eq!(accepted, 6, "accepted appends under a 60 000-byte budget of ~9 100-byte messages");
    let held = stored_messages(&env, &flood).await;
    assert_eq!(held, 6, "the stream holds exactly the accepted messages");

    // The other project of the same owner is not affected.
    let r = c.post(&format!("/api/projects/{quiet}/agentic-sessions/q1/messages"), &alice, user_message(0)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Deleting a session gives its bytes back: appends in the project succeed again.
    let before_delete: Vec<u64> = {
        let mut v = Vec::new();
        for name in sessions {
            let r = c.get(&format!("/api/projects/{flood}/agentic-sessions/{name}/messages"), &alice).await;
            v.push(r.body["messages"].as_array().map(|a| a.len() as u64).unwrap_or(0));
        }
        v
    };
    let (victim, freed) = sessions.iter().zip(&before_delete).max_by_key(|(_, n)| **n).map(|(s, n)| (*s, *n)).unwrap();
    assert!(freed > 0, "some session holds messages: {before_delete:?}");
    let r = c.delete(&format!("/api/projects/{flood}/agentic-sessions/{victim}"), &alice).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let survivor = sessions.iter().copied().find(|s| *s != victim).unwrap();
    let path = format!("/api/projects/{flood}/agentic-sessions/{survivor}/messages");
    eventually("the deleted session's bytes return to the project's budget", Duration::from_secs(60), || {
        let (c, alice, path) = (&c, &alice, &path);
        async move {
            let r = c.post(path, alice, user_message(99)).await;
            match r.status {
                StatusCode::CREATED => Ok(Some(())),
                StatusCode::CONFLICT => Ok(None),
                _ => Err(anyhow::anyhow!("unexpected {} {}", r.status, r.body)),
            }
        }
    })
    .await
    .unwrap();
    // Only what was freed can be used again.
    let mut again = 1;
    while c.post(&path, &alice, user_message(100 + again)).await.status == StatusCode::CREATED {
        again += 1;
        assert!(again <= 7, "far more appended than the budget allows");
    }
    assert_eq!(again as u64, freed, "exactly the deleted session's share was freed");

    // A counter that drifted high (a release lost with the process that owed it) is corrected
    // from the stream itself by the sweep that runs when an api starts.
    let kv = env.jetstream().get_key_value(api::messages::budget::BUCKET).await.unwrap();
    kv.put(&quiet, PROJECT_BUDGET.to_string().into()).await.unwrap();
    let quiet_path = format!("/api/projects/{quiet}/agentic-sessions/q1/messages");
    let r = c.post(&quiet_path, &alice, user_message(1)).await;
    assert_eq!(
        (r.status, r.body["reason"].clone()),
        (StatusCode::CONFLICT, json!("ProjectMessagesFull")),
        "{:?}",
        r.body
    );
    let mut s = s;
    s.api.restart().await.unwrap();
    let c = Client::new(&s.api_url);
    eventually("the drifted counter is recounted from the stream", Duration::from_secs(60), || {
        let (c, alice, path) = (&c, &alice, &quiet_path);
        async move { Ok((c.post(path, alice, user_message(2)).await.status == StatusCode::CREATED).then_some(())) }
    })
    .await
    .unwrap();
    let counted: u64 = String::from_utf8(kv.get(&quiet).await.unwrap().unwrap().to_vec()).unwrap().parse().unwrap();
    assert!(counted < 3 * 9_200, "the counter holds what the project's two messages take: {counted}");
}
