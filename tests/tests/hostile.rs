//! Hostile input at every boundary of a real stack:
//!
//! - poison commands published straight to JetStream (undecodable, unknown type, forged,
//!   tampered, oversized): refused (a failed result where the command can be addressed),
//!   counted in the reconciler's `/metrics`, and never blocking the good command published
//!   behind each of them in the same partition;
//! - HTTP abuse (malformed JSON, huge bodies, deep nesting, invalid UTF-8, header abuse,
//!   slowloris): each a 4xx or a closed connection, never a 5xx, and the api keeps serving a
//!   normal client meanwhile.
//!
//! One stack for the binary: the HTTP abuse and the bus poison run one after the other.

use std::time::{Duration, Instant};

use ambient_tests::components::BusKeys;
use ambient_tests::http::Client;
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, eventually};
use events::commands::{CommandBody, SessionCreate};
use events::results::Outcome;
use events::signing::CommandSigner;
use events::{Command, Principal, ProjectName, SessionName};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input() {
    let env = TestEnv::shared().await.unwrap();
    let opts = StackOptions {
        api_args: vec![format!("--body-read-timeout={}s", BODY_TIMEOUT.as_secs())],
        ..Default::default()
    };
    let stack = Stack::start(&env, opts).await.expect("stack starts");
    let client = Client::new(&stack.api_url);
    let alice = env.token(DemoUser::Alice).unwrap().to_string();
    let project = ambient_tests::unique_name("hostile");
    let r = client.post("/api/projects", &alice, json!({"name": project})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    poison_commands_are_refused_counted_and_never_block(&env, &stack, &client, &alice, &project).await;
    http_abuse_gets_4xx_or_a_closed_connection(&stack, &client, &alice).await;
}

/// The api's body read timeout in this test (short, so that waiting for it is cheap).
const BODY_TIMEOUT: Duration = Duration::from_secs(3);

fn principal() -> Principal {
    Principal {
        user: "alice".into(),
        groups: vec!["team-a".into(), "system:authenticated".into()],
        ..Default::default()
    }
}

fn create(project: &ProjectName, name: &str) -> Command {
    let body = CommandBody::SessionCreate(SessionCreate::new(
        SessionName::new(name).unwrap(),
        serde_json::from_value(json!({"prompt": "poison neighbour"})).unwrap(),
    ));
    Command::new(project.clone(), principal(), body)
}

async fn refused_total(stack: &Stack) -> u64 {
    let m = stack.reconciler.metrics().await.unwrap();
    m.lines()
        .filter(|l| l.starts_with("reconciler_commands_refused_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn poison_commands_are_refused_counted_and_never_block(
    env: &TestEnv,
    stack: &Stack,
    c: &Client,
    alice: &str,
    project: &str,
) {
    let js = env.jetstream();
    let p = ProjectName::new(project).unwrap();
    let keys = BusKeys::shared(env).unwrap();
    let signer = CommandSigner::from_pem(&std::fs::read_to_string(&keys.signing_key_file).unwrap()).unwrap();
    let forger = CommandSigner::generate();
    let before = refused_total(stack).await;
    let mut stored = 0u64;
    // Each poison: (what, subject, headers, payload, id of a failed result we expect, if any).
    let subject = events::subjects::command(&p, events::CommandType::SessionCreate);
    let mut poisons: Vec<(&str, String, async_nats::HeaderMap, bytes::Bytes, Option<Command>)> = Vec::new();
    poisons.push((
        "undecodable",
        subject.clone(),
        async_nats::HeaderMap::new(),
        bytes::Bytes::from_static(b"\xff\xfe{{not json"),
        None,
    ));
    let unknown = create(&p, "unknown-type");
    let mut out = events::wire::encode_command(&unknown, &signer);
    out.headers.insert("ce-type", "ambient.session.explode.v1");
    poisons.push(("unknown type", out.subject, out.headers, out.payload, Some(unknown)));
    let forged = create(&p, "forged");
    let out = events::wire::encode_command(&forged, &forger);
    poisons.push(("forged", out.subject, out.headers, out.payload, Some(forged)));
    let tampered = create(&p, "tampered");
    let out = events::wire::encode_command(&tampered, &signer);
    let body = String::from_utf8(out.payload.to_vec()).unwrap().replace("poison neighbour", "tampered prompt!");
    poisons.push(("tampered", out.subject, out.headers, body.into(), Some(tampered)));
    let big = create(&p, "oversized");
    let out = events::wire::encode_command(&big, &signer);
    let mut payload = out.payload.to_vec();
    payload.extend(std::iter::repeat_n(b' ', events::wire::MAX_COMMAND_BYTES));
    poisons.push(("oversized", out.subject, out.headers, payload.into(), None));

    for (i, (what, subject, headers, payload, addressable)) in poisons.into_iter().enumerate() {
        // Either JetStream refuses it outright (e.g. beyond max_payload), or it is stored and
        // the reconciler must refuse it.
        let published = match js.publish_with_headers(subject, headers, payload).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if published {
            stored += 1;
        }
        println!("poison {what}: stored in the stream: {published}");
        if let (true, Some(cmd)) = (published, addressable) {
            let result_subject = events::subjects::result(&p, cmd.id);
            let result = eventually(&format!("failed result of the {what} command"), Duration::from_secs(60), || {
                let (js, s) = (js.clone(), result_subject.clone());
                async move {
                    let stream = js.get_stream(events::streams::RESULTS_STREAM).await?;
                    Ok(stream
                        .direct_get_last_for_subject(s)
                        .await
                        .ok()
                        .and_then(|m| events::wire::decode_result(Some(&m.headers), &m.payload).ok()))
                }
            })
            .await
            .unwrap();
            assert!(matches!(result.outcome, Outcome::Failed { .. }), "{what}: {result:?}");
        }
        // The good command behind it, same project (same partition), is applied.
        let good = format!("good-{i}");
        let r = c
            .post(&format!("/api/projects/{project}/agentic-sessions"), alice, json!({"name": good, "prompt": "fine"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{what} blocked the next command: {:?}", r.body);
    }
    // None of the poison created anything.
    let r = c.get(&format!("/api/projects/{project}/agentic-sessions"), alice).await;
    let names: Vec<String> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().or(i["name"].as_str()).map(String::from))
        .collect();
    for bad in ["unknown-type", "forged", "tampered", "oversized"] {
        assert!(!names.iter().any(|n| n == bad), "poison {bad} was applied: {names:?}");
    }
    assert!(stored >= 4, "the stream stored only {stored} poison commands");
    let counted = eventually("every stored poison counted", Duration::from_secs(30), || async {
        let n = refused_total(stack).await - before;
        Ok((n >= stored).then_some(n))
    })
    .await
    .unwrap();
    println!("reconciler_commands_refused_total grew by {counted} for {stored} stored poison commands");
}

/// A raw HTTP/1.1 exchange: sends `head` then `body`, returns the status code, or `None` when
/// the server closed the connection without an answer.
async fn raw(addr: &str, head: &[u8], body: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    // Writing may fail once the server has answered and closed: that is fine.
    let _ = s.write_all(head).await;
    let _ = s.write_all(body).await;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn assert_refused(what: &str, status: Option<u16>) {
    println!("{what}: {}", status.map(|s| s.to_string()).unwrap_or_else(|| "connection closed".into()));
    if let Some(s) = status {
        assert!((400..500).contains(&s), "{what}: answered {s}, expected a 4xx or a closed connection");
    }
}

async fn http_abuse_gets_4xx_or_a_closed_connection(stack: &Stack, c: &Client, alice: &str) {
    let addr = stack.api_url.trim_start_matches("http://").to_string();
    let auth = format!("Authorization: Bearer {alice}\r\n");
    let post = |len: usize, ct: &str| {
        format!("POST /api/projects HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {ct}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").into_bytes()
    };

    // A normal client keeps being served during the whole abuse.
    let stop = stop_flag();
    let normal = {
        let (c, alice, stop) = (c.clone(), alice.to_string(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.try_call(Method::GET, "/api/me", Some(&alice), None, &[]).await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) => failed.push(format!("{} {:?}", r.status, r.body)),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (ok, failed)
        })
    };

    // Slow clients first, held open in the background through everything else.
    let slow = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let started = Instant::now();
            let request = b"GET /api/me HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            for b in request.iter().chain(std::iter::repeat(&b'a')) {
                if s.write_all(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                // Any answer or EOF ends it too.
                let mut buf = [0u8; 256];
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    break;
                }
            }
            started.elapsed()
        })
    };

    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("malformed JSON", post(9, "application/json"), b"{\"name\": ".to_vec()),
        ("invalid UTF-8 body", post(18, "application/json"), b"{\"name\": \"\xff\xfe\xfd\"}   ".to_vec()),
        (
            "deep nesting (arrays)",
            post(200_000, "application/json"),
            ["[".repeat(100_000), "]".repeat(100_000)].concat().into_bytes(),
        ),
        (
            "deep nesting (objects)",
            post(500_000, "application/json"),
            ["{\"a\":".repeat(100_000), "1".into(), "}".repeat(100_000)].concat().into_bytes(),
        ),
        ("huge body (20 MiB)", post(20 << 20, "application/json"), vec![b' '; 20 << 20]),
        // A body announced but never sent is a slow client too: closed, never a 5xx.
        ("huge declared body", post(usize::MAX >> 1, "application/json"), b"{}".to_vec()),
        ("wrong content type", post(2, "text/html"), b"{}".to_vec()),
        (
            "huge header (1 MiB)",
            format!(
                "GET /api/me HTTP/1.1\r\nHost: x\r\n{auth}X-Big: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            vec![],
        ),
        (
            "5 000 headers",
            format!(
                "GET /api/me HTTP/1.1\r\nHost: x\r\n{auth}{}Connection: close\r\n\r\n",
                (0..5000).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            vec![],
        ),
        (
            "invalid UTF-8 token",
            [b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
                .as_slice()]
            .concat(),
            vec![],
        ),
        (
            "invalid UTF-8 path",
            b"GET /api/projects/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            vec![],
        ),
        ("garbage request line", b"\x00\x01\x02 HELLO\r\n\r\n".to_vec(), vec![]),
    ];
    for (what, head, body) in cases {
        assert_refused(what, raw(&addr, &head, &body).await);
    }
    // A body that stops half-way is answered 408 once the body timeout passes (not held open).
    let stalled = Instant::now();
    let status = raw(&addr, &post(100, "application/json"), b"{\"name\": \"stal").await;
    println!("stalled body: {status:?} after {:?}", stalled.elapsed());
    assert_eq!(status, Some(408), "a stalled body is answered 408");
    assert!(stalled.elapsed() >= BODY_TIMEOUT, "not before the body timeout: {:?}", stalled.elapsed());
    for scheme in [
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer",
        "Bearer ",
        "Negotiate abc",
        "bearer",
        "Bearer a b c",
        &format!("Bearer {}", "x".repeat(16 * 1024)),
    ] {
        let head = format!("GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme}\r\nConnection: close\r\n\r\n");
        let status = raw(&addr, head.as_bytes(), b"").await;
        assert_refused(&format!("Authorization: {:.30}", scheme), status);
        assert!(status.is_none() || status == Some(401) || status == Some(431), "{scheme:.30}: {status:?}");
    }
    // Through a regular client too: each answer is a JSON 4xx.
    let r = c
        .http
        .post(format!("{}/api/projects", c.base))
        .bearer_auth(alice)
        .header("content-type", "application/json")
        .body("[".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());

    // The slow client is cut off by the server (header read timeout), not served forever.
    let held = slow.await.unwrap();
    println!("slowloris connection closed by the server after {held:?}");
    assert!(held < Duration::from_secs(90), "a client sending one byte per second is never cut off");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = normal.await.unwrap();
    println!("normal client during the abuse: {ok} answered 200, {} not", failed.len());
    assert!(ok > 0 && failed.is_empty(), "the api stopped serving others: {failed:?}");
    // And the process is still the one we started (no crash).
    assert_eq!(c.get("/api/me", alice).await.status, StatusCode::OK);
    assert!(!stack.api.log().contains("panicked"), "the api panicked");
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}
