//! Reconciler replicas share the command partitions (reconciler/src/members.rs): two replicas
//! take half each and both apply commands, and each runs the sessions of its own projects only;
//! when one stops, the other takes everything and commands keep being applied and sessions run. Its own binary: every reconciler on the shared bus counts as a
//! replica, so no other test's reconciler may run beside it.

use std::time::Duration;

use ambient_tests::components::{ServiceProcess, wait_for};
use ambient_tests::http::Client;
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, unique_name};
use serde_json::json;

/// The sum of a metric's samples (all label sets) in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn owned(p: &ServiceProcess) -> anyhow::Result<f64> {
    Ok(metric(&p.metrics().await?, "reconciler_partitions_owned"))
}

async fn applied(p: &ServiceProcess) -> anyhow::Result<f64> {
    Ok(metric(&p.metrics().await?, "reconciler_commands_applied_total"))
}

async fn create_sessions(client: &Client, token: &str, projects: &[String], tag: &str) {
    for p in projects {
        let r = client
            .post(
                &format!("/api/projects/{p}/agentic-sessions"),
                token,
                json!({"name": tag, "prompt": "replicas", "timeout": 600}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201, "{p}: {:?}", r.body);
    }
}

/// Waits until session `name` of every project is Completed.
async fn completed(client: &Client, token: &str, projects: &[String], name: &str) {
    for p in projects {
        wait_for(&format!("{p}/{name} Completed"), Duration::from_secs(120), || async {
            let r = client.get(&format!("/api/projects/{p}/agentic-sessions/{name}"), token).await;
            Ok(r.body["status"]["phase"] == "Completed")
        })
        .await
        .unwrap();
    }
}

/// The projects whose sessions a reconciler's log shows it moving from phase to phase.
fn phase_projects(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("\"message\":\"session phase\""))
        .filter_map(|l| l.split("\"span\":{\"project\":\"").nth(1)?.split('"').next().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_partitions_and_one_takes_over() {
    let env = TestEnv::shared().await.unwrap();
    let stack = Stack::start(&env, StackOptions::default()).await.expect("stack starts");
    let second = stack.reconciler_replica(&env, &[]).await.expect("a second reconciler starts");
    let first = &stack.reconciler;
    // Entries of an earlier binary's reconcilers expire within 4 s.
    wait_for("each replica owns half of the 8 partitions", Duration::from_secs(60), || async {
        Ok(owned(first).await? == 4.0 && owned(&second).await? == 4.0)
    })
    .await
    .unwrap();

    let client = Client::with_timeout(&stack.api_url, Duration::from_secs(60));
    let token = env.token(DemoUser::Alice).unwrap().to_string();
    // 16 projects: the chance that all land in one replica's partitions is 2 × 2⁻¹⁶.
    let mut projects = Vec::new();
    for _ in 0..16 {
        let name = unique_name("repl");
        let r = client.post("/api/projects", &token, json!({"name": name})).await;
        assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
        projects.push(name);
    }
    create_sessions(&client, &token, &projects, "s1").await;
    wait_for("both replicas apply commands", Duration::from_secs(10), || async {
        Ok(applied(first).await? > 0.0 && applied(&second).await? > 0.0)
    })
    .await
    .unwrap();
    completed(&client, &token, &projects, "s1").await;
    // Each replica's session controller ran the sessions of its own projects, and only those.
    let (mine, theirs) = (phase_projects(&first.log()), phase_projects(&second.log()));
    assert!(
        mine.is_disjoint(&theirs),
        "both replicas moved sessions of {:?}",
        mine.intersection(&theirs).collect::<Vec<_>>()
    );
    for p in &projects {
        assert!(mine.contains(p) || theirs.contains(p), "no replica moved {p}'s session");
    }
    assert!(!mine.is_empty() && !theirs.is_empty(), "one replica ran every session: {mine:?} {theirs:?}");

    // A rolling update's stop: the survivor takes every partition and keeps applying. Commands
    // sent while the other replica stops are answered synchronously (201): none waits for a
    // pin or an ack wait to time out (10 s, the api's result wait).
    drop(second);
    create_sessions(&client, &token, &projects, "s-rolling").await;
    wait_for("the remaining replica owns all 8 partitions", Duration::from_secs(30), || async {
        Ok(owned(first).await? == 8.0)
    })
    .await
    .unwrap();
    let before = applied(first).await.unwrap();
    create_sessions(&client, &token, &projects, "s2").await;
    // The counter moves just after the result is published, i.e. after the api answered.
    wait_for("the survivor counted every new command as applied", Duration::from_secs(10), || async {
        Ok(applied(first).await? - before >= 16.0)
    })
    .await
    .unwrap();
    // It runs the sessions of the projects it took over too.
    completed(&client, &token, &projects, "s2").await;

    // The projects count against alice's quota for the tests that follow: give them back.
    for p in &projects {
        let r = client.delete(&format!("/api/projects/{p}"), &token).await;
        assert!(r.status.is_success(), "deleting {p}: {} {:?}", r.status, r.body);
    }
    let admin = env.admin();
    wait_for("the projects are gone", Duration::from_secs(120), || async {
        let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone());
        let mut left = 0;
        for p in &projects {
            left += usize::from(namespaces.get_opt(p).await?.is_some());
        }
        Ok(left == 0)
    })
    .await
    .unwrap();
}
