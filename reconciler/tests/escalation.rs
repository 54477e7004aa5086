//! Apply-time re-authorization of handing out roles: a command the api would refuse (or one
//! published by anything holding the api's signing key) is refused by the reconciler too when
//! its principal may not `bind` the role it hands out. Carol holds Kubernetes' own `edit` in the
//! project (which includes `create serviceaccounts`), Bob its `admin`.

mod common;

use std::time::Duration;

use ambient_tests::DemoUser::{Alice, Bob, Carol};
use common::{Harness, code};
use events::commands::{CommandBody, KeyCreate, PermissionGrant};
use events::sealing::SealingSecretKey;
use events::{KeyName, Role, SubjectName, SubjectType};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;

fn key(name: &str, role: Role) -> CommandBody {
    CommandBody::KeyCreate(KeyCreate {
        name: KeyName::new(name).unwrap(),
        description: None,
        role,
        expiration_seconds: None,
        reply_key: SealingSecretKey::generate().public_key(),
    })
}

#[tokio::test]
async fn handing_out_a_role_is_reauthorized_at_apply_time() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let env = h.env.clone();
    let p = h.project("esc-apply", Alice).await?;
    ambient_tests::bind_cluster_role(&env.admin(), p.as_str(), "carol", "edit").await.unwrap();
    ambient_tests::bind_cluster_role(&env.admin(), p.as_str(), "bob", "admin").await.unwrap();
    // Wait for RBAC to show both bindings (a session create is within either role).
    tokio::time::sleep(Duration::from_secs(2)).await;

    for role in Role::ALL {
        let r = h.run(&p, Carol, key(&format!("carol-{}", role.as_str()), role)).await?;
        assert_eq!(code(&r), 403, "{role:?}: {r:?}");
    }
    let grant = |who: &str, role| {
        CommandBody::PermissionGrant(PermissionGrant {
            subject_type: SubjectType::User,
            subject_name: SubjectName::new(who).unwrap(),
            role,
        })
    };
    assert_eq!(code(&h.run(&p, Carol, grant("carol", Role::Admin)).await?), 403);
    let sas = Api::<ServiceAccount>::namespaced(env.admin(), p.as_str());
    for role in Role::ALL {
        assert!(
            sas.get_opt(&format!("ambient-key-carol-{}", role.as_str())).await?.is_none(),
            "no key for carol ({role:?})"
        );
    }

    // Kubernetes' admin (aggregated `bind` on the project roles) and the project admin may.
    h.ok(&p, Bob, key("bob-admin", Role::Admin)).await?;
    h.ok(&p, Alice, grant("dave", Role::Admin)).await?;
    Ok(())
}
