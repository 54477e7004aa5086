//! The `events` contract against real servers: the generated CRDs on the dev API server, the
//! stream bootstrap and the commands stream on a real nats-server.

use std::time::Duration;

use ambient_tests::components::PrivateNats;
use ambient_tests::{TestEnv, unique_name};
use async_nats::jetstream;
use events::commands::{CommandBody, RunnerSecretPut, SessionCreate, SessionRef};
use events::crd::{AgenticSession, ProjectSettings};
use events::sealing::SealingSecretKey;
use events::signing::CommandSigner;
use events::streams::{BusConfig, bootstrap_consumers, bootstrap_streams};
use events::wire::{self, DecodeError};
use events::{Command, Principal, ProjectName, SessionName};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, Resource};
use serde_json::json;

fn dynamic<K: Resource<DynamicType = ()>>(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, ns, &ApiResource::erase::<K>(&()))
}

fn object(kind: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "vteam.ambient-code/v1alpha1", "kind": kind,
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

async fn refused(api: &Api<DynamicObject>, obj: DynamicObject, why: &str) {
    match api.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{why}: {s:?}"),
        other => panic!("{why}: expected the API server to refuse it, got {other:?}"),
    }
}

#[tokio::test]
async fn generated_crds_apply_and_the_api_server_enforces_them() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let crds = Api::<CustomResourceDefinition>::all(env.admin());
    for crd in [AgenticSession::crd(), ProjectSettings::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("ambient-tests").force(), &Patch::Apply(&crd)).await?;
        ambient_tests::eventually(&format!("CRD {name} established"), Duration::from_secs(30), || async {
            let c = crds.get(&name).await?;
            let est = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(est.then_some(()))
        })
        .await?;
    }

    let ns = env.namespace("crd").await?;
    let sessions = dynamic::<AgenticSession>(env.admin(), &ns);
    let ok = sessions
        .create(
            &PostParams::default(),
            &object("AgenticSession", "ok", json!({"prompt": "hello", "llmSettings": {"temperature": 1.5}})),
        )
        .await?;
    assert_eq!(ok.data["spec"]["timeout"], 3600, "the schema default applies");

    refused(
        &sessions,
        object("AgenticSession", "hot", json!({"prompt": "x", "llmSettings": {"temperature": 3}})),
        "temperature 3",
    )
    .await;
    refused(&sessions, object("AgenticSession", "noprompt", json!({"displayName": "x"})), "missing prompt").await;
    refused(&sessions, object("AgenticSession", "short", json!({"prompt": "x", "timeout": 10})), "timeout below 30")
        .await;
    refused(
        &sessions,
        object("AgenticSession", "long", json!({"prompt": "x", "displayName": "d".repeat(101)})),
        "displayName over 100",
    )
    .await;

    let bad_phase = sessions
        .patch_status("ok", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Exploded"}})))
        .await;
    assert!(matches!(bad_phase, Err(kube::Error::Api(ref s)) if s.code == 422), "bad phase: {bad_phase:?}");
    sessions
        .patch_status("ok", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running", "is_error": false, "num_turns": 2, "usage": {"input_tokens": 5}}})))
        .await?;
    let back = sessions.get("ok").await?;
    assert_eq!(back.data["status"]["num_turns"], 2, "runner fields survive schema pruning");
    assert_eq!(back.data["status"]["usage"]["input_tokens"], 5, "free-form usage is preserved");

    let settings = dynamic::<ProjectSettings>(env.admin(), &ns);
    settings
        .create(
            &PostParams::default(),
            &object(
                "ProjectSettings",
                "projectsettings",
                json!({"groupAccess": [{"groupName": "team-a", "role": "edit"}]}),
            ),
        )
        .await?;
    refused(
        &settings,
        object("ProjectSettings", "other", json!({"groupAccess": []})),
        "ProjectSettings with another name",
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn bootstrap_is_idempotent_and_applies_changes() -> anyhow::Result<()> {
    let nats = PrivateNats::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let cfg = BusConfig::default();

    let first = bootstrap_streams(&js, &cfg).await?;
    assert_eq!(first.created.len(), 4 + 3, "4 streams and 3 buckets: {first:?}");
    let consumers = bootstrap_consumers(&js, &cfg).await?;
    assert_eq!(consumers.created.len(), cfg.partitions as usize);

    let second = bootstrap_streams(&js, &cfg).await?;
    assert!(second.created.is_empty() && second.updated.is_empty(), "second run changes nothing: {second:?}");
    let consumers = bootstrap_consumers(&js, &cfg).await?;
    assert!(consumers.created.is_empty() && consumers.updated.is_empty(), "{consumers:?}");

    let changed =
        BusConfig { max_age: Duration::from_secs(3600), ack_wait: Duration::from_secs(45), ..BusConfig::default() };
    let third = bootstrap_streams(&js, &changed).await?;
    assert!(third.updated.contains(&"AMBIENT_COMMANDS".to_string()), "{third:?}");
    assert_eq!(js.get_stream("AMBIENT_STATUS").await?.info().await?.config.max_age, Duration::from_secs(3600));
    let consumers = bootstrap_consumers(&js, &changed).await?;
    assert_eq!(consumers.updated.len(), changed.partitions as usize, "{consumers:?}");
    Ok(())
}

fn principal() -> Principal {
    Principal {
        user: "alice".into(),
        uid: "u1".into(),
        groups: vec!["system:authenticated".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn commands_survive_storage_signed_and_sealed() -> anyhow::Result<()> {
    let nats = PrivateNats::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let cfg = BusConfig::default();
    bootstrap_streams(&js, &cfg).await?;
    // Interest retention: without the reconciler's consumers a command would not be kept.
    bootstrap_consumers(&js, &cfg).await?;
    let signer = CommandSigner::generate();
    let project = ProjectName::new(unique_name("p"))?;

    // A runner secret goes in sealed to the reconciler's key; the plaintext is nowhere on disk.
    let reconciler_key = SealingSecretKey::generate();
    let plaintext = format!("sk-ant-{}", uuid::Uuid::new_v4().simple());
    let sealed = reconciler_key.public_key().seal(json!({"ANTHROPIC_API_KEY": plaintext}).to_string().as_bytes())?;
    let secret_cmd = Command::new(
        project.clone(),
        principal(),
        CommandBody::RunnerSecretPut(RunnerSecretPut { data: sealed, secret: Default::default() }),
    );
    let create = Command::new(
        project.clone(),
        principal(),
        CommandBody::SessionCreate(SessionCreate::new(
            SessionName::new("s1")?,
            serde_json::from_value(json!({"prompt": "p"}))?,
        )),
    );
    let forged = Command::new(
        project.clone(),
        principal(),
        CommandBody::SessionDelete(SessionRef { name: SessionName::new("s1")? }),
    );
    let mut seqs = Vec::new();
    for (cmd, key) in [(&secret_cmd, &signer), (&create, &signer), (&forged, &CommandSigner::generate())] {
        let out = wire::encode_command(cmd, key);
        let ack = js.publish_with_headers(out.subject, out.headers, out.payload).await?.await?;
        assert!(!ack.duplicate);
        seqs.push(ack.sequence);
    }
    // Re-publishing the same command inside the window is dropped by the server.
    let again = wire::encode_command(&create, &signer);
    let ack = js.publish_with_headers(again.subject, again.headers, again.payload).await?.await?;
    assert!(ack.duplicate, "same command id is de-duplicated");

    let stream = js.get_stream("AMBIENT_COMMANDS").await?;
    let verifier = signer.verifier();
    let mut decoded = Vec::new();
    for seq in &seqs {
        let raw = stream.get_raw_message(*seq).await?;
        assert!(raw.subject.starts_with("ambient.cmd."), "{}", raw.subject);
        assert_eq!(raw.subject.split('.').count(), 6, "stored in its partition: {}", raw.subject);
        assert!(!String::from_utf8_lossy(&raw.payload).contains(&plaintext), "plaintext in a stored message");
        decoded.push(wire::decode_command(&raw.subject, Some(&raw.headers), &raw.payload, &verifier));
    }
    let secret_back = decoded.remove(0).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let CommandBody::RunnerSecretPut(put) = secret_back.body else { panic!("wrong body") };
    assert!(String::from_utf8(reconciler_key.open(&put.data)?)?.contains(&plaintext), "the receiver can open it");
    assert_eq!(decoded.remove(0).map_err(|e| anyhow::anyhow!("{e:?}"))?, create);
    let forged_err = decoded.remove(0).expect_err("forged command must not verify");
    assert!(matches!(forged_err.0, DecodeError::NotGenuine(_)), "{forged_err:?}");

    // Scan the server's files too.
    let mut found = false;
    for entry in walk(&nats.store_dir()) {
        let bytes = std::fs::read(&entry)?;
        found |= bytes.windows(plaintext.len()).any(|w| w == plaintext.as_bytes());
    }
    assert!(!found, "the runner secret's plaintext is in the JetStream store");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}
