//! The reconciler crashed (`kill -9`) mid-stream and restarted: every command applied exactly
//! once and in order per object; running sessions keep being tracked. A role revoked between
//! publish and apply wins.

mod common;

use std::time::Duration;

use ambient_tests::DemoUser::{Alice, Bob};
use ambient_tests::eventually;
use common::{Harness, code};
use events::commands::*;
use events::crd::AgenticSession;
use events::results::Outcome;
use events::{Phase, Role, SessionName, SubjectName, SubjectType};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams};

fn create(name: &str, run_for: &str) -> CommandBody {
    CommandBody::SessionCreate(SessionCreate::new(
        SessionName::new(name).unwrap(),
        serde_json::from_value(serde_json::json!({
            "prompt": "p", "timeout": 600, "environmentVariables": {"KWOK_RUN_DURATION": run_for},
        }))
        .unwrap(),
    ))
}

#[tokio::test]
async fn crash_mid_stream_and_revocation_before_apply() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let env = h.env.clone();
    let p = h.project("crash", Alice).await?;
    let sessions = Api::<AgenticSession>::namespaced(env.admin(), p.as_str());

    // --- a role revoked while the command waits: 403, nothing changed ---
    h.ok(
        &p,
        Alice,
        CommandBody::PermissionGrant(PermissionGrant {
            subject_type: SubjectType::User,
            subject_name: SubjectName::new("bob")?,
            role: Role::Edit,
        }),
    )
    .await?;
    h.reconciler.kill9().await;
    let by_bob = h.command(&p, Bob, create("by-bob", "1s"));
    h.publish(&by_bob).await?;
    let rbs = Api::<RoleBinding>::namespaced(env.admin(), p.as_str());
    for rb in rbs.list(&ListParams::default().labels("app=ambient-permission")).await?.items {
        if rb.subjects.as_ref().is_some_and(|s| s.iter().any(|s| s.name == "bob")) {
            rbs.delete(rb.metadata.name.as_deref().unwrap_or_default(), &DeleteParams::default()).await?;
        }
    }
    h.reconciler.restart().await?;
    let r = h.result(&by_bob).await?;
    assert_eq!(code(&r), 403, "{r:?}");
    assert!(sessions.get_opt("by-bob").await?.is_none(), "a refused command changed nothing");

    // --- kill -9 in the middle of a stream ---
    let names = ["s0", "s1", "s2"];
    for s in names {
        h.ok(&p, Alice, create(s, "1s")).await?;
    }
    h.ok(&p, Alice, create("tracked", "15s")).await?;
    let mut cmds = Vec::new();
    for i in 0..10 {
        for s in names {
            let body = CommandBody::SessionUpdate(SessionUpdate {
                name: SessionName::new(s)?,
                patch: SessionPatch { prompt: Some(format!("{s}-{i}")), ..Default::default() },
            });
            let cmd = h.command(&p, Alice, body);
            h.publish(&cmd).await?;
            cmds.push(cmd);
        }
    }
    // Crash once part of the burst is applied.
    eventually("some updates applied", Duration::from_secs(60), || {
        let sessions = sessions.clone();
        async move {
            let s = sessions.get("s0").await?;
            Ok((s.metadata.generation.unwrap_or(0) >= 3).then_some(()))
        }
    })
    .await?;
    h.reconciler.kill9().await;
    h.reconciler.restart().await?;
    for cmd in &cmds {
        let r = h.result(cmd).await?;
        assert!(matches!(r.outcome, Outcome::Succeeded { .. }), "{r:?}");
    }
    for s in names {
        let obj = sessions.get(s).await?;
        assert_eq!(obj.spec.prompt, format!("{s}-9"), "last update wins");
        // 1 for the create + exactly one spec change per update: nothing re-applied out of order.
        assert_eq!(obj.metadata.generation, Some(11), "{s} generation");
    }
    // The session that ran across the crash is still tracked to its end.
    eventually("tracked Completed", Duration::from_secs(120), || {
        let sessions = sessions.clone();
        async move {
            let s = sessions.get("tracked").await?;
            Ok((s.status.and_then(|st| st.phase) == Some(Phase::Completed)).then_some(()))
        }
    })
    .await?;
    Ok(())
}
