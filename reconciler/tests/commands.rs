//! Every command against the real API server and NATS: success and each failure code, replays,
//! forged commands. One reconciler per test binary (the partition consumers are pinned to one
//! client at a time), so the scenarios run in sequence inside one test.

mod common;

use std::time::Duration;

use ambient_tests::DemoUser::{Alice, Bob, Carol};
use ambient_tests::{TestEnv, eventually};
use common::{Harness, code};
use events::commands::*;
use events::crd::{AgenticSession, ProjectSettings};
use events::results::Outcome;
use events::sealing::SealingSecretKey;
use events::{KeyName, ProjectName, Role, SessionName, SubjectName, SubjectType};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams};

fn spec(prompt: &str) -> events::crd::AgenticSessionSpec {
    serde_json::from_value(serde_json::json!({"prompt": prompt, "timeout": 600})).unwrap()
}

fn sname(s: &str) -> SessionName {
    SessionName::new(s).unwrap()
}

async fn permission_bindings(env: &TestEnv, p: &ProjectName) -> Vec<RoleBinding> {
    Api::<RoleBinding>::namespaced(env.admin(), p.as_str())
        .list(&ListParams::default().labels("app=ambient-permission"))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn every_command_and_its_failures() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let env = h.env.clone();

    // --- projects ---
    let p = h.project("cmds", Alice).await?;
    let ns = Api::<Namespace>::all(env.admin()).get(p.as_str()).await?;
    assert_eq!(ns.metadata.labels.as_ref().unwrap()["ambient-code.io/managed"], "true");
    assert_eq!(ns.metadata.annotations.as_ref().unwrap()["openshift.io/requester"], "alice");
    assert_eq!(ns.metadata.annotations.as_ref().unwrap()["openshift.io/display-name"], "Test");
    let creator = permission_bindings(&env, &p).await;
    assert_eq!(creator.len(), 1, "creator binding");
    assert_eq!(creator[0].role_ref.name, "ambient-project-admin");
    assert_eq!(creator[0].subjects.as_ref().unwrap()[0].name, "alice");
    Api::<ProjectSettings>::namespaced(env.admin(), p.as_str()).get("projectsettings").await?;

    let dup =
        h.run(&p, Bob, CommandBody::ProjectCreate(ProjectCreate { display_name: None, description: None })).await?;
    assert_eq!(code(&dup), 409, "{dup:?}");
    let upd = ProjectUpdate { display_name: Some("Renamed".into()), description: Some("d".into()) };
    assert_eq!(code(&h.run(&p, Bob, CommandBody::ProjectUpdate(upd.clone())).await?), 403);
    let r = h.ok(&p, Alice, CommandBody::ProjectUpdate(upd)).await?;
    let Outcome::Succeeded { resource, .. } = &r.outcome else { unreachable!() };
    assert!(resource.resource_version.is_some());
    let ns = Api::<Namespace>::all(env.admin()).get(p.as_str()).await?;
    assert_eq!(ns.metadata.annotations.as_ref().unwrap()["openshift.io/display-name"], "Renamed");
    let missing = ProjectName::new(ambient_tests::unique_name("missing"))?;
    // Unknown project: alice has no role there, so authorization refuses first (no tenant leak).
    assert_eq!(
        code(
            &h.run(
                &missing,
                Alice,
                CommandBody::ProjectUpdate(ProjectUpdate { display_name: None, description: None })
            )
            .await?
        ),
        403
    );

    // --- sessions ---
    let sessions = Api::<AgenticSession>::namespaced(env.admin(), p.as_str());
    let create = |name: &str| CommandBody::SessionCreate(SessionCreate::new(sname(name), spec("hello")));
    h.ok(&p, Alice, create("s1")).await?;
    let s1 = sessions.get("s1").await?;
    let uc = s1.spec.user_context.unwrap();
    assert_eq!(uc.user_id, "alice");
    assert!(uc.groups.contains(&"team-a".to_string()));
    assert_eq!(code(&h.run(&p, Alice, create("s1")).await?), 409);
    assert_eq!(code(&h.run(&p, Carol, create("s2")).await?), 403);
    let bad = CommandBody::SessionCreate(SessionCreate::new(
        sname("bad"),
        serde_json::from_value(serde_json::json!({"prompt": "x", "timeout": 5}))?,
    ));
    assert_eq!(code(&h.run(&p, Alice, bad).await?), 422);
    assert!(sessions.get_opt("bad").await?.is_none());
    let upd = |name: &str, prompt: &str| {
        CommandBody::SessionUpdate(SessionUpdate {
            name: sname(name),
            patch: SessionPatch { prompt: Some(prompt.into()), ..Default::default() },
        })
    };
    assert_eq!(code(&h.run(&p, Alice, upd("nope", "x")).await?), 404);
    h.ok(&p, Alice, upd("s1", "changed")).await?;
    assert_eq!(sessions.get("s1").await?.spec.prompt, "changed");
    let dn =
        |n: &str| CommandBody::SessionDisplayName(SessionDisplayName { name: sname("s1"), display_name: n.into() });
    // Runner callbacks need agenticsessions/status update: project roles don't have it.
    assert_eq!(code(&h.run(&p, Alice, dn("Nice")).await?), 403);
    assert_eq!(code(&h.run(&p, Alice, CommandBody::SessionDelete(SessionRef { name: sname("nope") })).await?), 404);

    // --- permissions ---
    let bob = SubjectName::new("bob")?;
    let grant = |role| {
        CommandBody::PermissionGrant(PermissionGrant {
            subject_type: SubjectType::User,
            subject_name: bob.clone(),
            role,
        })
    };
    assert_eq!(code(&h.run(&p, Bob, grant(Role::Admin)).await?), 403);
    h.ok(&p, Alice, grant(Role::Edit)).await?;
    h.ok(&p, Bob, create("by-bob")).await?;
    h.ok(&p, Alice, grant(Role::View)).await?;
    let bobs: Vec<_> = permission_bindings(&env, &p)
        .await
        .into_iter()
        .filter(|rb| rb.subjects.as_ref().unwrap()[0].name == "bob")
        .collect();
    assert_eq!(bobs.len(), 1, "a grant replaces the subject's role");
    assert_eq!(bobs[0].role_ref.name, "ambient-project-view");
    assert_eq!(code(&h.run(&p, Bob, create("by-bob-2")).await?), 403, "view may not create");
    let revoke = |ty, name: &str| {
        CommandBody::PermissionRevoke(PermissionRevoke {
            subject_type: ty,
            subject_name: SubjectName::new(name).unwrap(),
        })
    };
    h.ok(&p, Alice, revoke(SubjectType::User, "bob")).await?;
    assert!(permission_bindings(&env, &p).await.iter().all(|rb| rb.subjects.as_ref().unwrap()[0].name != "bob"));
    assert_eq!(code(&h.run(&p, Alice, revoke(SubjectType::User, "bob")).await?), 404);

    // Group grants live in ProjectSettings.groupAccess and produce bindings.
    let team_b = SubjectName::new("team-b")?;
    h.ok(
        &p,
        Alice,
        CommandBody::PermissionGrant(PermissionGrant {
            subject_type: SubjectType::Group,
            subject_name: team_b.clone(),
            role: Role::Edit,
        }),
    )
    .await?;
    let ps = Api::<ProjectSettings>::namespaced(env.admin(), p.as_str()).get("projectsettings").await?;
    assert_eq!(ps.spec.group_access.len(), 1);
    assert!(
        permission_bindings(&env, &p)
            .await
            .iter()
            .any(|rb| rb.subjects.as_ref().unwrap()[0].name == "team-b" && rb.role_ref.name == "ambient-project-edit")
    );
    h.ok(&p, Bob, create("by-team-b")).await?;
    h.ok(&p, Alice, revoke(SubjectType::Group, "team-b")).await?;
    let ps = Api::<ProjectSettings>::namespaced(env.admin(), p.as_str()).get("projectsettings").await?;
    assert!(ps.spec.group_access.is_empty());
    assert!(permission_bindings(&env, &p).await.iter().all(|rb| rb.subjects.as_ref().unwrap()[0].name != "team-b"));

    // --- clone ---
    let p2 = h.project("cmds-target", Alice).await?;
    let clone = |target: &ProjectName, new: &str| {
        CommandBody::SessionClone(SessionClone {
            name: sname("s1"),
            target_project: target.clone(),
            new_session_name: sname(new),
        })
    };
    let bobs_project = h.project("cmds-bob", Bob).await?;
    assert_eq!(code(&h.run(&p, Alice, clone(&bobs_project, "copy")).await?), 403);
    h.ok(&p, Alice, clone(&p2, "copy")).await?;
    let copy = Api::<AgenticSession>::namespaced(env.admin(), p2.as_str()).get("copy").await?;
    assert_eq!(copy.spec.prompt, "changed");
    assert_eq!(code(&h.run(&p, Alice, clone(&p2, "copy")).await?), 409);

    // --- access keys ---
    let reply = SealingSecretKey::generate();
    let key = |name: &str, seconds| {
        CommandBody::KeyCreate(KeyCreate {
            name: KeyName::new(name).unwrap(),
            description: Some("ci".into()),
            role: Role::Edit,
            expiration_seconds: seconds,
            reply_key: reply.public_key(),
        })
    };
    assert_eq!(code(&h.run(&p, Bob, key("ci", None)).await?), 403);
    assert_eq!(code(&h.run(&p, Alice, key("short", Some(10))).await?), 422);
    let r = h.ok(&p, Alice, key("ci", None)).await?;
    let Outcome::Succeeded { sealed_token: Some(sealed), resource } = &r.outcome else { panic!("no token: {r:?}") };
    assert_eq!(resource.name, "ambient-key-ci");
    let token = String::from_utf8(reply.open(sealed)?)?;
    assert!(!h.reconciler.log().contains(&token), "token in the log");
    let as_key = env.client_with_token(&token).await?;
    Api::<AgenticSession>::namespaced(as_key.clone(), p.as_str()).list(&ListParams::default()).await?;
    assert_eq!(code(&h.run(&p, Alice, key("ci", None)).await?), 409);
    let revoke_key = |id: &str| CommandBody::KeyRevoke(KeyRevoke { key_id: id.into() });
    assert_eq!(code(&h.run(&p, Alice, revoke_key("default")).await?), 404, "only access keys are revocable");
    h.ok(&p, Alice, revoke_key("ambient-key-ci")).await?;
    assert!(Api::<ServiceAccount>::namespaced(env.admin(), p.as_str()).get_opt("ambient-key-ci").await?.is_none());
    eventually("revoked token refused", Duration::from_secs(30), || {
        let c = as_key.clone();
        let ns = p.to_string();
        async move {
            let r = Api::<AgenticSession>::namespaced(c, &ns).list(&ListParams::default()).await;
            Ok(r.is_err().then_some(()))
        }
    })
    .await?;
    assert_eq!(code(&h.run(&p, Alice, revoke_key("ambient-key-ci")).await?), 404);

    // --- runner secrets ---
    let reconciler_key = events::sealing::SealingPublicKey::from_base64(&h.keys.sealing_public_key)?;
    let put = |plain: &[u8], to: &events::sealing::SealingPublicKey| {
        CommandBody::RunnerSecretPut(RunnerSecretPut { data: to.seal(plain).unwrap(), secret: Default::default() })
    };
    h.ok(&p, Alice, put(br#"{"ANTHROPIC_API_KEY":"sk-very-secret"}"#, &reconciler_key)).await?;
    let secret = Api::<Secret>::namespaced(env.admin(), p.as_str()).get("ambient-runner-secrets").await?;
    assert_eq!(secret.data.unwrap()["ANTHROPIC_API_KEY"].0, b"sk-very-secret");
    assert!(!h.reconciler.log().contains("sk-very-secret"));
    let ps = Api::<ProjectSettings>::namespaced(env.admin(), p.as_str()).get("projectsettings").await?;
    assert_eq!(ps.spec.runner_secrets_name.as_deref(), Some("ambient-runner-secrets"));
    // A write is a change: keys not sent stay, null removes one, the mask is never stored.
    h.ok(&p, Alice, put(br#"{"OTHER":"o"}"#, &reconciler_key)).await?;
    h.ok(&p, Alice, put(br#"{"ANTHROPIC_API_KEY":null}"#, &reconciler_key)).await?;
    let data = Api::<Secret>::namespaced(env.admin(), p.as_str())
        .get("ambient-runner-secrets")
        .await?
        .data
        .unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["OTHER"], "OTHER kept, ANTHROPIC_API_KEY removed");
    assert_eq!(code(&h.run(&p, Alice, put(br#"{"OTHER":"********"}"#, &reconciler_key)).await?), 422);
    let integration = CommandBody::RunnerSecretPut(RunnerSecretPut {
        data: reconciler_key.seal(br#"{"GITHUB_TOKEN":"ghp"}"#).unwrap(),
        secret: events::secrets::ProjectSecret::Integration,
    });
    h.ok(&p, Alice, integration).await?;
    let data = Api::<Secret>::namespaced(env.admin(), p.as_str())
        .get("ambient-non-vertex-integrations")
        .await?
        .data
        .unwrap_or_default();
    assert_eq!(data["GITHUB_TOKEN"].0, b"ghp");
    assert_eq!(code(&h.run(&p, Alice, put(br#"{"A":"b"}"#, &SealingSecretKey::generate().public_key())).await?), 422);
    assert_eq!(code(&h.run(&p, Alice, put(br#"["not an object"]"#, &reconciler_key)).await?), 422);
    assert_eq!(code(&h.run(&p, Bob, put(br#"{"A":"b"}"#, &reconciler_key)).await?), 403);
    let cfg = |n: &str| CommandBody::RunnerSecretConfig(RunnerSecretConfig { secret_name: n.into() });
    assert_eq!(code(&h.run(&p, Alice, cfg("Not_Valid")).await?), 422);
    h.ok(&p, Alice, cfg("my-secret")).await?;

    // --- exactly once: a replay after the de-duplication window (new Nats-Msg-Id) ---
    let first = h.command(
        &p,
        Alice,
        CommandBody::ProjectUpdate(ProjectUpdate { display_name: Some("First".into()), description: None }),
    );
    h.publish(&first).await?;
    h.publish(&first).await?; // same msg id: JetStream drops it
    h.result(&first).await?;
    h.ok(
        &p,
        Alice,
        CommandBody::ProjectUpdate(ProjectUpdate { display_name: Some("Second".into()), description: None }),
    )
    .await?;
    h.republish_new_msg_id(&first).await?;
    // A marker command on the same object, published after the replay, is applied after it.
    h.ok(
        &p,
        Alice,
        CommandBody::ProjectUpdate(ProjectUpdate { display_name: None, description: Some("marker".into()) }),
    )
    .await?;
    let ns = Api::<Namespace>::all(env.admin()).get(p.as_str()).await?;
    assert_eq!(
        ns.metadata.annotations.as_ref().unwrap()["openshift.io/display-name"],
        "Second",
        "the replay had no effect"
    );

    // --- forged commands ---
    let forger = events::signing::CommandSigner::generate();
    let forged = h.command(&p, Alice, create("forged"));
    let out = events::wire::encode_command(&forged, &forger);
    env.jetstream().publish_with_headers(out.subject, out.headers, out.payload).await?.await?;
    let r = h.result(&forged).await?;
    assert!(matches!(r.outcome, Outcome::Failed { code: 403, reason: events::FailureReason::NotGenuine, .. }), "{r:?}");
    assert!(sessions.get_opt("forged").await?.is_none());

    // --- delete ---
    assert_eq!(code(&h.run(&p, Bob, CommandBody::ProjectDelete(Empty {})).await?), 403);
    h.ok(&p, Alice, CommandBody::SessionDelete(SessionRef { name: sname("by-bob") })).await?;
    h.ok(&p, Alice, CommandBody::ProjectDelete(Empty {})).await?;
    let ns = Api::<Namespace>::all(env.admin()).get_opt(p.as_str()).await?;
    assert!(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()));
    Ok(())
}
