//! Handing out a role requires holding it (issue 15 §1), played by the hostile tenant: carol is
//! bound in alice's project to Kubernetes' own `edit` ClusterRole, which includes
//! `create serviceaccounts`. Before this control she created an access key with role `admin` and
//! used it to grant herself admin. Also: reserved project names and what a create reveals.

use std::time::Duration;

use ambient_tests::http::Client;
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, unique_name};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn an_editor_cannot_mint_an_admin_key_or_grant_admin() {
    let env = TestEnv::shared().await.unwrap();
    let s = Stack::start(&env, StackOptions::default()).await.unwrap();
    let c = Client::new(&s.api_url);
    let alice = env.token(DemoUser::Alice).unwrap();
    let carol = env.token(DemoUser::Carol).unwrap();
    let bob = env.token(DemoUser::Bob).unwrap();
    let p = unique_name("escalate");
    let r = c.call(Method::POST, "/api/projects", Some(alice), Some(json!({"name": p})), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    ambient_tests::bind_cluster_role(&env.admin(), &p, "carol", "edit").await.unwrap();
    ambient_tests::bind_cluster_role(&env.admin(), &p, "bob", "admin").await.unwrap();
    // The editor can work in the project (RBAC has caught up once she sees its sessions)...
    ambient_tests::eventually("carol's edit binding in force", Duration::from_secs(30), || {
        let c = c.clone();
        let path = format!("/api/projects/{p}/agentic-sessions");
        async move { Ok((c.call(Method::GET, &path, Some(carol), None, &[]).await.status == StatusCode::OK).then_some(())) }
    })
    .await
    .unwrap();

    // ...but hands out no role: not admin, and not even her own level.
    for role in ["admin", "edit", "view"] {
        let r = c
            .call(
                Method::POST,
                &format!("/api/projects/{p}/keys"),
                Some(carol),
                Some(json!({"name": format!("mine-{role}"), "role": role})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "key {role}: {r:?}");
        let msg = r.body["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("bind") && msg.contains(&format!("ambient-project-{role}")),
            "the 403 names the bind check: {msg}"
        );
    }
    let r = c
        .call(
            Method::POST,
            &format!("/api/projects/{p}/permissions"),
            Some(carol),
            Some(json!({"subjectType": "user", "subjectName": "carol", "role": "admin"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    let sas = Api::<ServiceAccount>::namespaced(env.admin(), &p)
        .list(&ListParams::default().labels("app=ambient-access-key"))
        .await
        .unwrap();
    assert!(
        sas.items.is_empty(),
        "no key ServiceAccount was created: {:?}",
        sas.items.iter().map(|s| s.metadata.name.clone()).collect::<Vec<_>>()
    );
    let rbs = Api::<RoleBinding>::namespaced(env.admin(), &p).list(&ListParams::default()).await.unwrap();
    assert!(
        !rbs.items
            .iter()
            .any(|rb| rb.role_ref.name == "ambient-project-admin"
                && rb.subjects.iter().flatten().any(|s| s.name == "carol")),
        "carol holds no admin binding"
    );

    // Kubernetes' own admin holds every permission of the project roles, so it may hand them out.
    let r = ambient_tests::eventually("bob's admin binding in force", Duration::from_secs(30), || {
        let c = c.clone();
        let path = format!("/api/projects/{p}/keys");
        async move {
            let r = c.call(Method::POST, &path, Some(bob), Some(json!({"name": "bobs", "role": "admin"})), &[]).await;
            Ok((r.status != StatusCode::NOT_FOUND && r.status != StatusCode::FORBIDDEN).then_some(r))
        }
    })
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // And the project admin (alice, the creator) still can.
    let r = c
        .call(
            Method::POST,
            &format!("/api/projects/{p}/permissions"),
            Some(alice),
            Some(json!({"subjectType": "user", "subjectName": "dave", "role": "admin"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

#[tokio::test]
async fn reserved_and_taken_project_names_reveal_nothing() {
    let env = TestEnv::shared().await.unwrap();
    let s = Stack::start(&env, StackOptions::default()).await.unwrap();
    let c = Client::new(&s.api_url);
    let alice = env.token(DemoUser::Alice).unwrap();
    let bob = env.token(DemoUser::Bob).unwrap();
    for name in ["kube-system", "kube-public", "default", "openshift-config", "kube-does-not-exist"] {
        let r = c.call(Method::POST, "/api/projects", Some(alice), Some(json!({"name": name})), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {r:?}");
        assert_eq!(r.body["field"], "name", "{name}: {r:?}");
        assert!(r.body["error"].as_str().unwrap_or_default().contains("reserved"), "{name}: {r:?}");
    }
    // A namespace that is not a project, and another tenant's project: the same answer.
    let plain = unique_name("plain-ns");
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": plain}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.admin()).create(&Default::default(), &ns).await.unwrap();
    let theirs = unique_name("theirs");
    let r = c.call(Method::POST, "/api/projects", Some(bob), Some(json!({"name": theirs})), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let a = c.call(Method::POST, "/api/projects", Some(alice), Some(json!({"name": plain})), &[]).await;
    let b = c.call(Method::POST, "/api/projects", Some(alice), Some(json!({"name": theirs})), &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
    assert_eq!(b.status, StatusCode::CONFLICT, "{b:?}");
    let strip = |v: &serde_json::Value, n: &str| v["error"].as_str().unwrap_or_default().replace(n, "<name>");
    assert_eq!(strip(&a.body, &plain), strip(&b.body, &theirs), "a taken name reads the same whoever holds it");
    assert!(!a.body.to_string().contains("exists"), "{a:?}");

    // Subject names that display as another name are refused (U+202E, U+200B, U+FEFF).
    let mine = unique_name("names");
    let r = c.call(Method::POST, "/api/projects", Some(alice), Some(json!({"name": mine})), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    for name in ["bob\u{202E}", "b\u{200B}ob", "\u{FEFF}bob"] {
        let r = c
            .call(
                Method::POST,
                &format!("/api/projects/{mine}/permissions"),
                Some(alice),
                Some(json!({"subjectType": "user", "subjectName": name, "role": "view"})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}: {r:?}");
        assert_eq!(r.body["field"], "subjectName", "{r:?}");
    }
    let list = c.call(Method::GET, &format!("/api/projects/{mine}/permissions"), Some(alice), None, &[]).await;
    assert!(list.body["items"].as_array().unwrap().iter().all(|g| g["subjectName"] == "alice"), "{list:?}");
}
