//! Proves the test environment is real: RBAC decisions of a real API server, ServiceAccount
//! tokens that die with their ServiceAccount, Jobs completed through kwok and collected with
//! their namespace, and JetStream de-duplication and KV on a real nats-server.
//!
//! All waits are polls with generous upper bounds; nothing asserts on wall-clock speed.
//!
//! One test restarts NATS and the API server; it takes [`DISRUPTION`] for writing while every
//! other test of this binary holds it for reading.

use std::time::Duration;

use ambient_tests::{DemoUser, TestEnv, api_status, eventually};
use anyhow::{Context as _, Result, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::{
    SelfSubjectReview, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use tokio::sync::RwLock;

/// Serialises the test that stops components against the tests that need them running.
static DISRUPTION: RwLock<()> = RwLock::const_new(());

/// Lists pods in `ns` as `client`: `Ok(true)` if allowed, `Ok(false)` on 403, error otherwise.
async fn may_list_pods(client: &kube::Client, ns: &str) -> Result<bool> {
    match Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if api_status(&e) == Some(403) => Ok(false),
        Err(e) => Err(e).context("listing pods"),
    }
}

/// What a SelfSubjectAccessReview says about `list pods` in `ns` for `client`'s user.
async fn review_list_pods(client: &kube::Client, ns: &str) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_string()),
                verb: Some("list".into()),
                resource: Some("pods".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("creating SelfSubjectAccessReview")?;
    Ok(answer.status.context("SelfSubjectAccessReview without status")?.allowed)
}

fn view_binding(name: &str, kind: &str, subject: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "view".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: subject.into(),
            namespace: None,
        }]),
    }
}

#[tokio::test]
async fn rbac_refuses_until_a_role_is_bound_and_access_review_agrees() -> Result<()> {
    let _running = DISRUPTION.read().await;
    let env = TestEnv::shared().await?;
    let ns = env.namespace("foundation-rbac").await?;
    let alice = env.client_as(DemoUser::Alice).await?;
    let bob = env.client_as(DemoUser::Bob).await?;
    let carol = env.client_as(DemoUser::Carol).await?;

    for (who, c) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        ensure!(!may_list_pods(c, &ns).await?, "{who} may list pods in a fresh namespace");
        ensure!(!review_list_pods(c, &ns).await?, "SelfSubjectAccessReview allows {who} before any binding");
    }

    // carol by user name, alice through her group team-a; bob (team-b) gets nothing.
    let rbs = Api::<RoleBinding>::namespaced(env.admin(), &ns);
    rbs.create(&PostParams::default(), &view_binding("carol-view", "User", "carol")).await?;
    rbs.create(&PostParams::default(), &view_binding("team-a-view", "Group", "team-a")).await?;

    for (who, c) in [("carol", &carol), ("alice", &alice)] {
        eventually(&format!("{who} may list pods after the RoleBinding"), Duration::from_secs(30), || async {
            Ok(may_list_pods(c, &ns).await?.then_some(()))
        })
        .await?;
        ensure!(review_list_pods(c, &ns).await?, "SelfSubjectAccessReview refuses {who} after the binding");
    }
    ensure!(!may_list_pods(&bob, &ns).await?, "bob may list pods through team-a's binding");
    ensure!(!review_list_pods(&bob, &ns).await?, "SelfSubjectAccessReview allows bob");
    Ok(())
}

#[tokio::test]
async fn service_account_token_authenticates_until_its_account_is_deleted() -> Result<()> {
    let _running = DISRUPTION.read().await;
    let env = TestEnv::shared().await?;
    let ns = env.namespace("foundation-sa").await?;
    let sas = Api::<ServiceAccount>::namespaced(env.admin(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("robot".into()), ..Default::default() },
        ..Default::default()
    };
    sas.create(&PostParams::default(), &sa).await?;
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
        ..Default::default()
    };
    let token = sas
        .create_token_request("robot", &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest without status")?
        .token;
    let expected = format!("system:serviceaccount:{ns}:robot");

    // The admin's TokenReview and the token's own SelfSubjectReview agree on who it is.
    let review = |token: String| {
        let admin = env.admin();
        async move {
            let review =
                TokenReview { spec: TokenReviewSpec { token: Some(token), audiences: None }, ..Default::default() };
            let status = Api::<TokenReview>::all(admin)
                .create(&PostParams::default(), &review)
                .await?
                .status
                .context("TokenReview without status")?;
            anyhow::Ok((status.authenticated == Some(true)).then(|| status.user.and_then(|u| u.username)).flatten())
        }
    };
    ensure!(review(token.clone()).await?.as_deref() == Some(expected.as_str()), "TokenReview does not show {expected}");
    let robot = env.client_with_token(&token).await?;
    let me = Api::<SelfSubjectReview>::all(robot.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("SelfSubjectReview with the ServiceAccount token")?;
    let name = me.status.and_then(|s| s.user_info).and_then(|u| u.username);
    ensure!(name.as_deref() == Some(expected.as_str()), "SelfSubjectReview says {name:?}, not {expected}");

    sas.delete("robot", &DeleteParams::default()).await?;
    eventually("the deleted ServiceAccount's token to be refused with 401", Duration::from_secs(30), || async {
        match Api::<SelfSubjectReview>::all(robot.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
        {
            Err(e) if api_status(&e) == Some(401) => Ok(Some(())),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(None),
        }
    })
    .await?;
    ensure!(review(token).await?.is_none(), "TokenReview still authenticates the deleted ServiceAccount's token");
    Ok(())
}

#[tokio::test]
async fn job_completes_through_kwok_and_goes_with_its_namespace() -> Result<()> {
    let _running = DISRUPTION.read().await;
    let env = TestEnv::shared().await?;
    let ns = env.namespace("foundation-job").await?;
    let jobs = Api::<Job>::namespaced(env.admin(), &ns);
    let pods = Api::<Pod>::namespaced(env.admin(), &ns);
    let job = Job {
        metadata: ObjectMeta { name: Some("hello".into()), ..Default::default() },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![Container {
                        name: "main".into(),
                        image: Some("busybox:1.36".into()),
                        command: Some(vec!["true".into()]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    jobs.create(&PostParams::default(), &job).await?;

    eventually("Job hello to be Complete", Duration::from_secs(180), || async {
        let job = jobs.get("hello").await?;
        let complete = job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        Ok(complete.then_some(()))
    })
    .await?;
    let job_pods = pods.list(&ListParams::default().labels("job-name=hello")).await?;
    ensure!(!job_pods.items.is_empty(), "the Job has no pods");
    for p in &job_pods.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        ensure!(phase == Some("Succeeded"), "pod {:?} is {phase:?}, not Succeeded", p.metadata.name);
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        ensure!(node == Some("kwok-node-0"), "pod {:?} was scheduled to {node:?}", p.metadata.name);
    }

    let namespaces = Api::<Namespace>::all(env.admin());
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    eventually(&format!("namespace {ns} to be gone"), Duration::from_secs(300), || async {
        Ok(namespaces.get_opt(&ns).await?.is_none().then_some(()))
    })
    .await?;
    ensure!(jobs.list(&ListParams::default()).await?.items.is_empty(), "Jobs survived their namespace");
    ensure!(pods.list(&ListParams::default()).await?.items.is_empty(), "pods survived their namespace");
    Ok(())
}

#[tokio::test]
async fn jetstream_deduplicates_by_message_id() -> Result<()> {
    use async_nats::jetstream::stream;
    let _running = DISRUPTION.read().await;
    let env = TestEnv::shared().await?;
    let js = env.jetstream();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let subject = format!("foundation.{id}.cmd");
    let mut s = js
        .create_stream(stream::Config {
            name: format!("FOUNDATION_{id}"),
            subjects: vec![format!("foundation.{id}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "command-1");
    let first = js.publish_with_headers(subject.clone(), headers.clone(), "one".into()).await?.await?;
    let second = js.publish_with_headers(subject.clone(), headers, "one, again".into()).await?.await?;
    ensure!(!first.duplicate, "the first publish was reported as a duplicate");
    ensure!(second.duplicate, "the second publish with the same Nats-Msg-Id was not a duplicate");
    ensure!(first.sequence == second.sequence, "the duplicate got its own sequence");
    let messages = s.info().await?.state.messages;
    ensure!(messages == 1, "the stream holds {messages} messages, not 1");
    let stored = s.get_raw_message(first.sequence).await?;
    ensure!(stored.payload.as_ref() == b"one", "the stored message is not the first one");
    js.delete_stream(format!("FOUNDATION_{id}")).await?;
    Ok(())
}

#[tokio::test]
async fn jetstream_key_value_put_get_watch() -> Result<()> {
    use async_nats::jetstream::kv;
    let _running = DISRUPTION.read().await;
    let env = TestEnv::shared().await?;
    let js = env.jetstream();
    let bucket = format!("foundation-{}", uuid::Uuid::new_v4().simple());
    let store = js.create_key_value(kv::Config { bucket: bucket.clone(), history: 5, ..Default::default() }).await?;
    let mut watch = store.watch("greeting").await?;
    let revision = store.put("greeting", "hello".into()).await?;
    ensure!(store.get("greeting").await?.as_deref() == Some(b"hello".as_slice()), "get did not return the value put");
    let entry = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .context("no watch event within 30 s")?
        .context("watch ended")??;
    ensure!(entry.key == "greeting" && entry.value.as_ref() == b"hello", "unexpected watch entry {entry:?}");
    ensure!(entry.revision == revision && entry.operation == kv::Operation::Put, "unexpected watch entry {entry:?}");
    js.delete_key_value(&bucket).await?;
    Ok(())
}

#[tokio::test]
async fn nats_fsyncs_before_acknowledging() -> Result<()> {
    // up.sh configures `jetstream { sync_interval: always }`; the server reports it as
    // `sync_always` in /varz. Without it an acknowledged publish may be lost on a crash.
    let _running = DISRUPTION.read().await;
    let env = TestEnv::shared().await?;
    let monitor = env.info().nats_monitor_url.clone().context("no NATS monitoring URL (AMBIENT_NATS_MONITOR_URL)")?;
    let varz: serde_json::Value = reqwest::get(format!("{monitor}/varz")).await?.error_for_status()?.json().await?;
    let config = &varz["jetstream"]["config"];
    ensure!(config["sync_always"] == serde_json::json!(true), "JetStream does not sync every write: {config}");
    Ok(())
}

#[tokio::test]
async fn nats_and_apiserver_restart_with_their_data() -> Result<()> {
    use async_nats::jetstream::stream;
    let _alone = DISRUPTION.write().await;
    let env = TestEnv::shared().await?;
    let Some(_) = env.info().state_dir else {
        eprintln!("skipped: the cluster was not started by up.sh, so it cannot be restarted");
        return Ok(());
    };

    // NATS: an acknowledged message is still there after a SIGKILL and a restart, and the
    // client reconnects by itself.
    let js = env.jetstream();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("FOUNDATION_RESTART_{id}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("foundation.restart.{id}")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    js.publish(format!("foundation.restart.{id}"), "kept".into()).await?.await?;
    env.ctl("kill", "nats").await?;
    env.ctl("start", "nats").await?;
    let messages = eventually("the stream after the NATS restart", Duration::from_secs(60), || async {
        Ok(Some(js.get_stream(&name).await?.info().await?.state.messages))
    })
    .await?;
    ensure!(messages == 1, "the stream holds {messages} messages after the restart, not 1");
    js.delete_stream(&name).await?;

    // API server: refused while stopped, and the namespace is still there afterwards (etcd).
    let ns = env.namespace("foundation-restart").await?;
    let namespaces = Api::<Namespace>::all(env.admin());
    env.stop_apiserver().await?;
    ensure!(namespaces.get(&ns).await.is_err(), "the API server answered while stopped");
    env.start_apiserver().await?;
    eventually(&format!("namespace {ns} after the API server restart"), Duration::from_secs(60), || async {
        Ok(namespaces.get_opt(&ns).await?.map(|_| ()))
    })
    .await?;
    Ok(())
}
