//! Writes that outlive their wait, as the web UI meets them (issue 16); the slow path is forced by
//! pausing the reconciler (SIGSTOP) for longer than the waits, with two api replicas.
//!
//! - Accepted means visible: a session creation answered 202 carries the `name` the UI reads,
//!   and the session reads (get and list, on either replica) as Pending, queued, until the
//!   cluster has it.
//! - The one-time access-key token is never lost: a creation that outlives its wait answers 503
//!   `KeyCreationPending` (never a 202 the UI cannot read), and the same request again, on
//!   another replica, returns the token once it exists, exactly once. A client that asks for 202
//!   gets its token once from `GET /api/commands/{id}` on any replica.

mod common;

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv, eventually};
use common::{Client, project, stack, token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_outlive_their_wait_stay_visible_and_keep_their_token() {
    let env = TestEnv::shared().await.unwrap();
    let args = ["--key-result-timeout=30s", "--result-timeout=2s"];
    let s = stack(&env, &args).await;
    let (_replica, replica_url) = s.api_replica(&env, &args.map(String::from)).await.unwrap();
    let one = Client::with_timeout(&s.api_url, Duration::from_secs(90));
    let two = Client::with_timeout(&replica_url, Duration::from_secs(90));
    let alice = token(&env, DemoUser::Alice);
    let p = project(&one, &alice, "keytok").await;
    let keys = format!("/api/projects/{p}/keys");
    // As the web UI's Next proxy sends it: forwarded token, no Authorization, no Prefer, no
    // Idempotency-Key.
    let ui = |c: &Client, body: Value| {
        let (c, keys, alice) = (c.clone(), keys.clone(), alice.clone());
        async move {
            c.call(
                Method::POST,
                &keys,
                None,
                Some(body),
                &[("X-Forwarded-Access-Token", &alice), ("X-Forwarded-User", "alice")],
            )
            .await
        }
    };

    // Two sessions in the cluster before the pause: one to stop, one to delete.
    let sessions = format!("/api/projects/{p}/agentic-sessions");
    for name in ["to-stop", "to-delete"] {
        let r = one
            .post(
                &sessions,
                &alice,
                json!({"name": name, "prompt": "p", "environmentVariables": {"KWOK_RUN_DURATION": "1h"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    eventually("to-stop runs", Duration::from_secs(60), || {
        let (one, path, alice) = (&one, format!("{sessions}/to-stop"), &alice);
        async move { Ok((one.get(&path, alice).await.body["status"]["phase"] == "Running").then_some(())) }
    })
    .await
    .unwrap();
    // Created without model parameters, the session shows those its runner gets (the UI reads
    // `spec.llmSettings.model` unguarded and crashed on their absence).
    let shown = one.get(&format!("{sessions}/to-stop"), &alice).await.body;
    assert_eq!(
        shown["spec"]["llmSettings"],
        json!({"model": "sonnet", "temperature": 0.7, "maxTokens": 4000}),
        "{shown}"
    );

    let reconciler = s.reconciler.pid().expect("the reconciler runs");
    signal(reconciler, "STOP");

    // Stop, delete, grant while paused: each shows at once, on the other replica too.
    let async_ = [("prefer", "respond-async")];
    let r = one.call(Method::POST, &format!("{sessions}/to-stop/stop"), Some(&alice), None, &async_).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let r = one.call(Method::DELETE, &format!("{sessions}/to-delete"), Some(&alice), None, &async_).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let perms = format!("/api/projects/{p}/permissions");
    let r = one
        .call(
            Method::POST,
            &perms,
            Some(&alice),
            Some(json!({"subjectType": "user", "subjectName": "bob", "role": "view"})),
            &async_,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    eventually("queued stop, deletion and grant show on the other replica", Duration::from_secs(10), || {
        let (two, sessions, perms, alice) = (&two, &sessions, &perms, &alice);
        async move {
            let stopping = two.get(&format!("{sessions}/to-stop"), alice).await.body["status"]["phase"] == "Stopping";
            let list = two.get(sessions, alice).await.body;
            let deleted = !list["items"].as_array().unwrap().iter().any(|i| i["metadata"]["name"] == "to-delete");
            let granted = two.get(perms, alice).await.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["subjectName"] == "bob" && i["pending"] == true);
            Ok((stopping && deleted && granted).then_some(()))
        }
    })
    .await
    .unwrap();

    // A session created from the UI while the reconciler is paused: 202 with the name the UI
    // reads, and the session readable at once, on the other replica too.
    let body = json!({"prompt": "hello", "interactive": true, "llmSettings": {"model": "sonnet", "temperature": 0.7, "maxTokens": 4000}, "timeout": 300});
    let r = one
        .call(
            Method::POST,
            &sessions,
            None,
            Some(body),
            &[("X-Forwarded-Access-Token", &alice), ("X-Forwarded-User", "alice")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let name = r.body["name"].as_str().expect("the 202 names the session").to_string();
    assert!(r.body["location"].as_str().is_some_and(|l| l.starts_with("/api/commands/")), "{:?}", r.body);
    // The UI reads it at once, from the replica that answered: never a 404 (it would create a
    // second session), however far behind the announcements to other replicas run.
    let at_once = one.get(&format!("{sessions}/{name}"), &alice).await;
    assert_eq!(
        (at_once.status, at_once.body["status"]["phase"].clone()),
        (StatusCode::OK, json!("Pending")),
        "{:?}",
        at_once.body
    );
    // Its messages (the detail page polls them): none yet, not "not found".
    let msgs = one.get(&format!("{sessions}/{name}/messages"), &alice).await;
    assert_eq!((msgs.status, msgs.body["messages"].clone()), (StatusCode::OK, json!([])), "{:?}", msgs.body);
    let queued = eventually("the queued session reads on the other replica", Duration::from_secs(10), || {
        let (two, path, alice) = (&two, format!("{sessions}/{name}"), &alice);
        async move {
            let r = two.get(&path, alice).await;
            Ok((r.status == StatusCode::OK).then_some(r))
        }
    })
    .await
    .unwrap();
    assert_eq!(queued.body["metadata"]["name"], name.as_str());
    assert_eq!(queued.body["status"]["phase"], "Pending");
    assert!(queued.body["status"]["message"].as_str().is_some_and(|m| m.contains("queued")), "{:?}", queued.body);
    assert!(queued.body["metadata"]["creationTimestamp"].is_string(), "the UI formats it: {:?}", queued.body);
    assert_eq!(queued.body["spec"]["llmSettings"]["model"], "sonnet");
    let listed = one.get(&sessions, &alice).await;
    assert!(
        listed.body["items"].as_array().unwrap().iter().any(|i| i["metadata"]["name"] == name.as_str()),
        "listed: {:?}",
        listed.body
    );
    // A stranger sees nothing of it.
    let carol = token(&env, DemoUser::Carol);
    assert_eq!(two.get(&format!("{sessions}/{name}"), &carol).await.status, StatusCode::NOT_FOUND);
    let first = ui(&one, json!({"name": "ci", "role": "view"})).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", first.body);
    assert_eq!(first.body["reason"], "KeyCreationPending", "{:?}", first.body);
    assert!(
        first.body["error"].as_str().is_some_and(|e| e.contains("same request again")),
        "the UI shows a sentence that says what to do: {:?}",
        first.body
    );
    let command = first.body["commandId"].as_str().expect("commandId").to_string();
    assert_eq!(
        first.headers.get("location").map(|v| v.to_str().unwrap().to_string()),
        Some(format!("/api/commands/{command}"))
    );
    assert!(first.headers.get("retry-after").is_some());
    // The UI's automatic retry, on the other replica, while the reconciler is still paused:
    // the same pending creation, not a second one.
    let retry = ui(&two, json!({"name": "ci", "role": "view"})).await;
    assert_eq!(
        (retry.status, retry.body["commandId"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(command)),
        "{:?}",
        retry.body
    );
    signal(reconciler, "CONT");
    // Once applied, the cluster shows what was queued, without the marks.
    eventually("the queued stop, deletion and grant are applied", Duration::from_secs(60), || {
        let (two, sessions, perms, alice) = (&two, &sessions, &perms, &alice);
        async move {
            let stopped = two.get(&format!("{sessions}/to-stop"), alice).await.body["status"]["phase"] == "Stopped";
            let gone = two.get(&format!("{sessions}/to-delete"), alice).await.status == StatusCode::NOT_FOUND;
            let rows = two.get(perms, alice).await.body;
            let granted = rows["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["subjectName"] == "bob" && i.get("pending").is_none());
            Ok((stopped && gone && granted).then_some(()))
        }
    })
    .await
    .unwrap();
    // Once applied, the cluster's session (with its uid) replaces the queued one.
    eventually("the applied session replaces the queued one", Duration::from_secs(60), || {
        let (two, path, alice) = (&two, format!("{sessions}/{name}"), &alice);
        async move {
            Ok(two.get(&path, alice).await.body["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty())
                .then_some(()))
        }
    })
    .await
    .unwrap();

    // The user's next click, on the other replica: the token, once.
    let created = eventually("the parked token is handed to the retry", Duration::from_secs(60), || {
        let ui = &ui;
        let two = &two;
        async move {
            let r = ui(two, json!({"name": "ci", "role": "view"})).await;
            match r.status {
                StatusCode::CREATED => Ok(Some(r)),
                StatusCode::SERVICE_UNAVAILABLE => Ok(None),
                _ => Err(anyhow::anyhow!("unexpected {} {}", r.status, r.body)),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(created.body["name"], "ci");
    let key = created.body["key"].as_str().expect("the token").to_string();
    let me = one.get("/api/me", &key).await;
    assert_eq!(me.status, StatusCode::OK, "the token works: {:?}", me.body);
    // Never again: not from another retry (the key exists now), not from the command URL.
    let again = ui(&one, json!({"name": "ci", "role": "view"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    assert!(again.body.get("key").is_none());
    for c in [&one, &two] {
        let r = c.get(&format!("/api/commands/{command}"), &alice).await;
        assert_eq!((r.status, r.body["state"].clone()), (StatusCode::OK, json!("succeeded")), "{:?}", r.body);
        assert!(r.body.get("key").is_none(), "the token was already shown: {:?}", r.body);
    }

    // Asked for 202: the token comes from the command URL, on any replica, once.
    let r = one
        .call(
            Method::POST,
            &keys,
            Some(&alice),
            Some(json!({"name": "cd", "role": "view"})),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let location = r.headers.get("location").unwrap().to_str().unwrap().to_string();
    let shown = eventually("the command succeeds", Duration::from_secs(60), || {
        let (two, location, alice) = (&two, &location, &alice);
        async move {
            let r = two.get(location, alice).await;
            Ok((r.body["state"] == "succeeded").then_some(r))
        }
    })
    .await
    .unwrap();
    let cd = shown.body["key"].as_str().expect("the token on the first read").to_string();
    assert_eq!(one.get("/api/me", &cd).await.status, StatusCode::OK);
    let r = one.get(&location, &alice).await;
    assert!(r.body.get("key").is_none(), "shown once: {:?}", r.body);
    // Nobody else's command URL shows anything.
    let bob = token(&env, DemoUser::Bob);
    assert_eq!(two.get(&location, &bob).await.status, StatusCode::NOT_FOUND);
    // The bus holds no token in the clear.
    let kv = env.jetstream().get_key_value(api::parked::BUCKET).await.unwrap();
    let mut keys_left = kv.keys().await.unwrap();
    use futures::StreamExt as _;
    while let Some(Ok(k)) = keys_left.next().await {
        if let Ok(Some(v)) = kv.get(&k).await {
            let text = String::from_utf8_lossy(&v);
            assert!(!text.contains(&key) && !text.contains(&cd), "a token in the parking bucket");
        }
    }
}
