//! Access keys and permissions are projected as public views, and no status event, read-model
//! value or projector log line contains a planted secret: a Secret's value, a session's
//! environment value (also in its runner pod's environment), an access key's token, the name of
//! the project's runner Secret.

mod common;

use std::time::Duration;

use ambient_tests::{TestEnv, eventually};
use common::*;
use events::{Role, StatusBody, SubjectType};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[tokio::test]
async fn keys_and_permissions_are_public_views_and_no_secret_leaks() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let scope = Scope::new();
    let projector = start_projector(&env, &scope, None).await?;
    let p = create_project(&env, &scope, "proj-secret").await?;
    let planted_secret = format!("runner-secret-{}", uuid::Uuid::new_v4().simple());
    let planted_env = format!("env-secret-{}", uuid::Uuid::new_v4().simple());

    let secrets = Api::<Secret>::namespaced(env.admin(), &p);
    secrets
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "metadata": {"name": "ambient-runner-secrets", "labels": {"app": "ambient-runner-secrets"}},
                "stringData": {"ANTHROPIC_API_KEY": planted_secret},
            })),
        )
        .await?;
    let session = create_session(&env, &p, "s", &planted_env).await?;
    // The project's runner Secret is named in ProjectSettings (only *whether* one is may be
    // published), and the runner pod carries the env value and references the Secret.
    let planted_secret_name = format!("runner-secret-name-{}", uuid::Uuid::new_v4().simple());
    put_settings(&env, &p, serde_json::json!({"groupAccess": [{"groupName": "team-a", "role": "view"}], "runnerSecretsName": planted_secret_name}))
        .await?;
    create_runner_job(&env, &p, &session, 1, "2s", &planted_env, Some(&planted_secret_name)).await?;

    // An access key as the reconciler makes it: a ServiceAccount and its RoleBinding.
    let key_id = "ambient-key-ci-1700000000";
    let sas = Api::<ServiceAccount>::namespaced(env.admin(), &p);
    sas.create(
        &PostParams::default(),
        &obj(serde_json::json!({"metadata": {
            "name": key_id,
            "labels": {"app": "ambient-access-key"},
            "annotations": {
                "ambient-code.io/key-name": "ci",
                "ambient-code.io/description": "CI pipeline",
                "ambient-code.io/created-at": "2026-11-28T10:00:00Z",
                "ambient-code.io/role": "edit",
            },
        }})),
    )
    .await?;
    let rbs = Api::<RoleBinding>::namespaced(env.admin(), &p);
    rbs.create(
        &PostParams::default(),
        &obj(serde_json::json!({
            "metadata": {"name": format!("{key_id}-edit"), "labels": {"app": "ambient-access-key"},
                "annotations": {"ambient-code.io/sa-name": key_id}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ambient-project-edit"},
            "subjects": [{"kind": "ServiceAccount", "name": key_id, "namespace": p}],
        })),
    )
    .await?;
    let token = sas
        .create_token_request(
            key_id,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
                ..Default::default()
            },
        )
        .await?
        .status
        .map(|s| s.token)
        .unwrap_or_default();
    assert!(token.len() > 20);
    // A legacy token Secret of the key, filled in by the token controller.
    secrets
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "metadata": {"name": format!("{key_id}-token"), "annotations": {"kubernetes.io/service-account.name": key_id}},
                "type": "kubernetes.io/service-account-token",
            })),
        )
        .await?;
    let legacy_token = eventually("legacy token filled in", Duration::from_secs(60), || async {
        let s = secrets.get(&format!("{key_id}-token")).await?;
        Ok(s.data.and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).to_string())))
    })
    .await?;

    // Permissions: a group view grant and a user admin grant.
    for (name, kind, subject, role) in
        [("perm-team-a", "Group", "team-a", "view"), ("perm-bob", "User", "bob", "admin")]
    {
        rbs.create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": "ambient-permission"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("ambient-project-{role}")},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
            })),
        )
        .await?;
    }

    let evs = wait_events(&env, &p, "key, permissions, settings and runner", |e| {
        e.iter().filter(|s| matches!(&s.event.body, StatusBody::PermissionChanged(_))).count() >= 2
            && e.iter().any(|s| matches!(&s.event.body, StatusBody::KeyChanged(k) if k.role == Some(Role::Edit)))
            && !settings_views(e, &p).is_empty()
            && runner_views(e, "s").last().is_some_and(|(_, v)| {
                v.pod.as_ref().is_some_and(|p| p.phase == "Succeeded")
                    && v.job.as_ref().is_some_and(|j| j.conditions.iter().any(|c| c.type_ == "Complete"))
            })
    })
    .await?;
    let settings = settings_views(&evs, &p);
    assert!(settings.last().is_some_and(|(_, v)| v.runner_secret_configured && v.exists), "{}", summary(&evs));
    let key = evs
        .iter()
        .rev()
        .find_map(|s| match &s.event.body {
            StatusBody::KeyChanged(k) => Some(k.clone()),
            _ => None,
        })
        .expect("key event");
    assert_eq!(key.id, key_id);
    assert_eq!(key.name, "ci");
    assert_eq!(key.description.as_deref(), Some("CI pipeline"));
    assert_eq!(
        of(&evs, "key", key_id).last().map(|s| s.subject.clone()),
        Some(format!("ambient.status.{p}.key.{key_id}"))
    );
    let perms: Vec<(SubjectType, String, Role, String)> = evs
        .iter()
        .filter_map(|s| match &s.event.body {
            StatusBody::PermissionChanged(v) => {
                Some((v.subject_type, v.subject_name.clone(), v.role, s.event.name.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(
        perms.iter().any(|(t, n, r, tok)| *t == SubjectType::Group
            && n == "team-a"
            && *r == Role::View
            && tok.starts_with("group-team-a-")),
        "{perms:?}"
    );
    assert!(perms.iter().any(|(t, n, r, _)| *t == SubjectType::User && n == "bob" && *r == Role::Admin), "{perms:?}");

    // Revocations: one deleted event each.
    rbs.delete("perm-bob", &DeleteParams::default()).await?;
    rbs.delete(&format!("{key_id}-edit"), &DeleteParams::default()).await?;
    sas.delete(key_id, &DeleteParams::default()).await?;
    let evs = wait_events(&env, &p, "revocations", |e| {
        e.iter().any(|s| matches!(&s.event.body, StatusBody::PermissionDeleted(_)))
            && e.iter().any(|s| matches!(&s.event.body, StatusBody::KeyDeleted(_)))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs_final = status_events(&env, &p).await?;
    assert_eq!(evs_final.len(), evs.len(), "{}", summary(&evs_final));
    assert_eq!(evs.iter().filter(|s| matches!(&s.event.body, StatusBody::PermissionDeleted(_))).count(), 1);
    assert_eq!(evs.iter().filter(|s| matches!(&s.event.body, StatusBody::KeyDeleted(_))).count(), 1);
    assert_unique_ids(&evs);
    let kv = kv_entries(&env, &p).await?;
    assert!(kv.iter().any(|(_, k, _)| k.starts_with(&format!("{p}.permission.group-team-a-"))), "{kv:?}");
    assert!(!kv.iter().any(|(_, k, _)| k.contains(".key.")), "{kv:?}");

    // Scan everything for the planted values.
    assert!(
        evs_final.iter().any(|s| matches!(&s.event.body, StatusBody::SessionRunner(_))),
        "runner events are scanned"
    );
    assert!(
        kv.iter().any(|(_, k, _)| k == &format!("{p}.s.runner")) && kv.iter().any(|(_, k, _)| k.contains(".settings.")),
        "{kv:?}"
    );
    let planted = [
        planted_secret.as_str(),
        planted_env.as_str(),
        token.as_str(),
        legacy_token.as_str(),
        planted_secret_name.as_str(),
    ];
    let log = projector.log();
    assert!(log.contains("status event published"), "the log is scanned, so it must be the real one");
    for v in planted {
        for s in &evs_final {
            assert!(!s.raw.contains(v), "a status event contains a secret: {}", s.subject);
        }
        for (b, k, val) in &kv {
            assert!(!val.contains(v) && !k.contains(v), "read model {b}/{k} contains a secret");
        }
        assert!(!log.contains(v), "the projector log contains a secret");
    }
    Ok(())
}
