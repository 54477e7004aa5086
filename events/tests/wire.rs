//! Every event type round-trips through the NATS binding; forged and tampered commands are
//! recognised.

use events::commands::*;
use events::crd::AgenticSessionSpec;
use events::results::{ResourceRef, SUCCEEDED_TYPE};
use events::sealing::SealingSecretKey;
use events::signing::CommandSigner;
use events::status::*;
use events::wire::{self, DecodeError};
use events::*;
use proptest::prelude::*;

fn principal(user: &str) -> Principal {
    Principal {
        user: user.into(),
        uid: "uid-1".into(),
        groups: vec!["system:authenticated".into(), "team ü%".into()],
        ..Default::default()
    }
}

/// A principal as an OpenShift token scoped to `scope` is reviewed.
fn scoped(user: &str, scope: &str) -> Principal {
    let mut p = principal(user);
    p.extra.insert("scopes.authorization.openshift.io".into(), vec![scope.into()]);
    p
}

/// One example payload per command type.
fn sample_bodies() -> Vec<CommandBody> {
    let s = SessionName::new("s1").unwrap();
    let spec: AgenticSessionSpec = serde_json::from_value(serde_json::json!({"prompt": "do it"})).unwrap();
    let key = SealingSecretKey::generate().public_key();
    let bodies = vec![
        CommandBody::ProjectCreate(ProjectCreate { display_name: Some("Team A".into()), description: None }),
        CommandBody::ProjectUpdate(ProjectUpdate { display_name: None, description: Some("d".into()) }),
        CommandBody::ProjectDelete(Empty {}),
        CommandBody::SessionCreate(SessionCreate::new(s.clone(), spec)),
        CommandBody::SessionUpdate(SessionUpdate {
            name: s.clone(),
            patch: SessionPatch { timeout: Some(60), ..Default::default() },
        }),
        CommandBody::SessionDelete(SessionRef { name: s.clone() }),
        CommandBody::SessionStart(SessionRef { name: s.clone() }),
        CommandBody::SessionStop(SessionRef { name: s.clone() }),
        CommandBody::SessionClone(SessionClone {
            name: s.clone(),
            target_project: ProjectName::new("other").unwrap(),
            new_session_name: SessionName::new("s2").unwrap(),
        }),
        CommandBody::SessionStatus(SessionStatusReport {
            name: s.clone(),
            status: RunnerStatus { phase: Some(Phase::Running), ..Default::default() },
        }),
        CommandBody::SessionDisplayName(SessionDisplayName { name: s.clone(), display_name: "x".into() }),
        CommandBody::PermissionGrant(PermissionGrant {
            subject_type: SubjectType::Group,
            subject_name: SubjectName::new("team-b").unwrap(),
            role: Role::Edit,
        }),
        CommandBody::PermissionRevoke(PermissionRevoke {
            subject_type: SubjectType::User,
            subject_name: SubjectName::new("bob").unwrap(),
        }),
        CommandBody::KeyCreate(KeyCreate {
            name: KeyName::new("ci").unwrap(),
            description: None,
            role: Role::Edit,
            expiration_seconds: Some(86_400),
            reply_key: key.clone(),
        }),
        CommandBody::KeyRevoke(KeyRevoke { key_id: "ambient-key-ci".into() }),
        CommandBody::RunnerSecretPut(RunnerSecretPut {
            data: key.seal(b"{\"ANTHROPIC_API_KEY\":\"sk\"}").unwrap(),
            secret: Default::default(),
        }),
        CommandBody::RunnerSecretConfig(RunnerSecretConfig { secret_name: "runner".into() }),
    ];
    assert_eq!(bodies.len(), CommandType::ALL.len(), "one sample per command type");
    bodies
}

#[test]
fn every_command_type_round_trips_and_verifies() {
    let signer = CommandSigner::generate();
    let verifier = signer.verifier();
    for body in sample_bodies() {
        let mut cmd = Command::new(ProjectName::new("team-a").unwrap(), principal("alice"), body);
        cmd.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let out = wire::encode_command(&cmd, &signer);
        assert!(out.subject.starts_with("ambient.cmd.team-a."));
        let back = wire::decode_command(&out.subject, Some(&out.headers), &out.payload, &verifier).unwrap();
        assert_eq!(back, cmd);
        // Also when read from its partition.
        let stored = out.subject.replacen("ambient.cmd.", "ambient.cmd.5.", 1);
        assert_eq!(wire::decode_command(&stored, Some(&out.headers), &out.payload, &verifier).unwrap(), cmd);
    }
}

#[test]
fn forged_and_tampered_commands_are_refused() {
    let signer = CommandSigner::generate();
    let verifier = signer.verifier();
    let cmd = Command::new(ProjectName::new("team-a").unwrap(), principal("alice"), sample_bodies().remove(3));
    let out = wire::encode_command(&cmd, &signer);

    // Signed by someone else.
    let forged = wire::encode_command(&cmd, &CommandSigner::generate());
    let e = wire::decode_command(&forged.subject, Some(&forged.headers), &forged.payload, &verifier).unwrap_err();
    assert!(matches!(e.0, DecodeError::NotGenuine(_)), "{e:?}");
    assert_eq!(e.1.map(|a| a.id), Some(cmd.id), "a forged command is still addressable");

    // Principal changed in the data.
    let tampered = String::from_utf8(out.payload.to_vec()).unwrap().replace("alice", "admin");
    let e = wire::decode_command(&out.subject, Some(&out.headers), tampered.as_bytes(), &verifier).unwrap_err();
    assert!(matches!(e.0, DecodeError::NotGenuine(_)), "{e:?}");

    // The same JSON in other bytes (a duplicate key that a re-encoding would drop, spacing): the
    // signature covers the bytes sent, not what they parse to.
    let text = String::from_utf8(out.payload.to_vec()).unwrap();
    for other in [format!("{} ", text), text.replacen('{', "{\"principal\":null,", 1), text.replace(':', ": ")] {
        assert!(serde_json::from_str::<serde_json::Value>(&other).is_ok(), "{other}");
        let e = wire::decode_command(&out.subject, Some(&out.headers), other.as_bytes(), &verifier).unwrap_err();
        assert!(matches!(e.0, DecodeError::NotGenuine(_)), "{other}: {e:?}");
    }
    let verified = wire::decode_command(&out.subject, Some(&out.headers), &out.payload, &verifier).unwrap();
    assert_eq!(verified, cmd);

    // Moved to another project's subject.
    let moved = out.subject.replace("team-a", "team-b");
    let e = wire::decode_command(&moved, Some(&out.headers), &out.payload, &verifier).unwrap_err();
    assert!(matches!(e.0, DecodeError::NotGenuine(_)), "{e:?}");

    // Signature removed.
    let mut h = out.headers.clone();
    h.insert("ce-ambientsig", "");
    let e = wire::decode_command(&out.subject, Some(&h), &out.payload, &verifier).unwrap_err();
    assert!(matches!(e.0, DecodeError::NotGenuine(_)), "{e:?}");

    // Undecodable and oversized.
    assert!(wire::decode_command(&out.subject, None, b"\x00garbage", &verifier).is_err());
    let big = vec![b' '; wire::MAX_COMMAND_BYTES + 1];
    assert!(matches!(
        wire::decode_command(&out.subject, Some(&out.headers), &big, &verifier).unwrap_err().0,
        DecodeError::Oversized(_)
    ));
}

#[test]
fn commands_without_extra_are_signed_over_the_same_bytes_as_before_it_existed() {
    // The signature covers the data bytes: a principal without extra must encode exactly as
    // before (`{user, uid, groups}`), so commands already on the bus still verify and decode.
    let signer = CommandSigner::from_seed([7; 32]);
    let cmd = Command::new(ProjectName::new("team-a").unwrap(), principal("alice"), sample_bodies().remove(3));
    let out = wire::encode_command(&cmd, &signer);
    let before = serde_json::json!({
        "principal": {"user": "alice", "uid": "uid-1", "groups": ["system:authenticated", "team ü%"]},
        "request": cmd.body.request_json(),
    });
    assert_eq!(out.payload.as_ref(), serde_json::to_vec(&before).unwrap().as_slice());
    let back = wire::decode_command(&out.subject, Some(&out.headers), &out.payload, &signer.verifier()).unwrap();
    assert!(back.principal.extra.is_empty());
    assert_eq!(back, cmd);
}

#[test]
fn the_signature_covers_the_principals_extra() {
    let signer = CommandSigner::generate();
    let verifier = signer.verifier();
    let cmd =
        Command::new(ProjectName::new("team-a").unwrap(), scoped("alice", "user:info"), sample_bodies().remove(3));
    let out = wire::encode_command(&cmd, &signer);
    let back = wire::decode_command(&out.subject, Some(&out.headers), &out.payload, &verifier).unwrap();
    assert_eq!(back.principal.extra["scopes.authorization.openshift.io"], vec!["user:info".to_string()]);
    assert_eq!(back, cmd);
    let text = String::from_utf8(out.payload.to_vec()).unwrap();
    // Widening the scope, or dropping the extra altogether, breaks the signature.
    let widened = text.replace("user:info", "user:full");
    let dropped = text.replace(r#""extra":{"scopes.authorization.openshift.io":["user:info"]},"#, "");
    assert_ne!(dropped, text, "the payload spells the extra as expected: {text}");
    for tampered in [widened, dropped] {
        let e = wire::decode_command(&out.subject, Some(&out.headers), tampered.as_bytes(), &verifier).unwrap_err();
        assert!(matches!(e.0, DecodeError::NotGenuine(_)), "{e:?}");
    }
}

#[test]
fn every_review_carries_the_principals_extra() {
    let cmd =
        Command::new(ProjectName::new("team-a").unwrap(), scoped("alice", "user:info"), sample_bodies().remove(3));
    let events::access::Requirement::All(checks) = cmd.requirement() else {
        panic!("session create is a namespaced check")
    };
    for check in checks {
        let spec = check.review_for(&cmd.principal).spec;
        assert_eq!(spec.user.as_deref(), Some("alice"));
        assert_eq!(spec.extra.as_ref(), Some(&cmd.principal.extra));
    }
    // No extra: none sent (not an empty map).
    let plain = events::access::ResourceCheck::session_status("team-a", "s1").review_for(&principal("alice"));
    assert_eq!(plain.spec.extra, None);
}

#[test]
fn results_round_trip() {
    let sk = SealingSecretKey::generate();
    let ok = CommandResult {
        command_id: uuid::Uuid::now_v7(),
        command_type: "ambient.key.create.v1".into(),
        project: ProjectName::new("p").unwrap(),
        time: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
        outcome: Outcome::Succeeded {
            resource: ResourceRef {
                api_version: "v1".into(),
                kind: "ServiceAccount".into(),
                namespace: Some("p".into()),
                name: "ambient-key-ci".into(),
                uid: None,
                resource_version: Some("42".into()),
            },
            sealed_token: Some(sk.public_key().seal(b"token").unwrap()),
        },
    };
    let out = wire::encode_result(&ok, None);
    assert_eq!(out.subject, format!("ambient.result.p.{}", ok.command_id));
    let back = wire::decode_result(Some(&out.headers), &out.payload).unwrap();
    assert_eq!(back, ok);
    assert_eq!(back.type_str(), SUCCEEDED_TYPE);
    let failed = CommandResult { outcome: Outcome::failed(FailureReason::Forbidden, "no"), ..ok };
    let out = wire::encode_result(&failed, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    assert_eq!(wire::decode_result(Some(&out.headers), &out.payload).unwrap(), failed);
}

#[test]
fn status_events_round_trip() {
    let at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let bodies = vec![
        StatusBody::SessionPhase(PhaseTransition {
            name: "s1".into(),
            previous_phase: Some(Phase::Running),
            phase: Phase::Completed,
            at,
            previous_phase_seconds: Some(1.5),
            reason: None,
            message: None,
            start_time: Some(at),
            completion_time: Some(at),
        }),
        StatusBody::PermissionChanged(PermissionView {
            subject_type: SubjectType::Group,
            subject_name: "team-b".into(),
            role: Role::Edit,
        }),
        StatusBody::KeyDeleted(Tombstone { name: "ambient-key-ci".into(), uid: None, at }),
        StatusBody::SessionRunner(RunnerView { name: "s1".into(), run: None, job: None, pod: None }),
        StatusBody::ProjectSettings(SettingsView {
            exists: false,
            group_access: vec![],
            runner_secret_configured: false,
        }),
    ];
    // The runner-gone state says so explicitly: `job` and `pod` are null, not absent.
    let gone = StatusBody::SessionRunner(RunnerView { name: "s1".into(), run: None, job: None, pod: None }).data_json();
    assert_eq!(gone, serde_json::json!({"name": "s1", "job": null, "pod": null}));
    for body in bodies {
        // Stamped with the project namespace's uid, and (published before the stamp) not.
        for project_uid in [Some("ns-uid-1".to_string()), None] {
            let ev = StatusEvent {
                id: StatusEvent::derive_id("u", "1", body.type_str()),
                project: ProjectName::new("p").unwrap(),
                name: "s1".into(),
                time: at,
                project_uid: project_uid.clone(),
                body: body.clone(),
            };
            let out = wire::encode_status(&ev).unwrap();
            assert_eq!(out.headers.get("ce-ambientprojectuid").map(|v| v.as_str().to_string()), project_uid);
            assert_eq!(wire::decode_status(Some(&out.headers), &out.payload).unwrap(), ev);
        }
    }
}

proptest! {
    // Odd header values (unicode, '%', spaces, quotes, empty) survive the binding.
    #[test]
    fn odd_values_survive(user in "\\PC{0,40}", group in "[ %\"a-zü✓]{0,20}", display in proptest::option::of("\\PC{0,60}")) {
        let signer = CommandSigner::generate();
        let p = Principal { user, groups: vec![group], ..Default::default() };
        let body = CommandBody::ProjectCreate(ProjectCreate { display_name: display, description: None });
        let mut cmd = Command::new(ProjectName::new("p").unwrap(), p, body);
        cmd.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let out = wire::encode_command(&cmd, &signer);
        let back = wire::decode_command(&out.subject, Some(&out.headers), &out.payload, &signer.verifier()).unwrap();
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn header_values_round_trip(v in "\\PC{0,80}") {
        let enc = events::binding::encode_header_value(&v);
        prop_assert_eq!(events::binding::decode_header_value("x", &enc).unwrap(), v);
    }
}
