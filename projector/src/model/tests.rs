use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::status::{KeyView, PermissionView, ProjectView, RunnerView, SessionView, SettingsView};
use events::{Phase, ProjectName, Role, StatusBody, StatusEvent, SubjectType};

use events::crd::{PROJECT_SETTINGS_NAME, ProjectSettings};
use events::streams::{ACCESS_BUCKET, SESSIONS_BUCKET};
use k8s_openapi::api::rbac::v1::RoleBinding;

use super::desired::is_token;
use super::runner::{JobRec, PodRec};
use super::*;

fn meta(ns: &str, name: &str, uid: &str, rv: &str) -> Meta {
    Meta { namespace: ns.into(), name: name.into(), uid: uid.into(), resource_version: rv.into() }
}

fn ns_rec(name: &str, managed: bool) -> Rec {
    Rec::Namespace(NamespaceRec {
        meta: meta(name, name, "ns-uid", "1"),
        managed,
        in_scope: true,
        view: ProjectView {
            name: name.into(),
            display_name: None,
            description: None,
            requester: None,
            creation_timestamp: None,
            status: "Active".into(),
        },
    })
}

fn session(ns: &str, name: &str, rv: &str, phase: Phase) -> Rec {
    Rec::Session(Box::new(SessionRec {
        meta: meta(ns, name, "s-uid", rv),
        view: SessionView {
            name: name.into(),
            uid: "s-uid".into(),
            resource_version: rv.into(),
            generation: 1,
            creation_timestamp: None,
            display_name: None,
            created_by: None,
            interactive: false,
            timeout: 3600,
            llm_settings: None,
            repos: vec![],
            environment_variable_names: vec!["API_KEY".into()],
            phase,
            message: None,
            reason: None,
            start_time: None,
            completion_time: None,
            result: None,
            total_cost_usd: None,
            num_turns: None,
            labels: Default::default(),
            annotations: Default::default(),
        },
    }))
}

#[test]
fn a_change_reaches_the_session_it_belongs_to() {
    assert_eq!(Rec::Job(job("p", "s1", "o", "j", "1", 0, 0)).scope(), Scope::Session("s1".into()));
    assert_eq!(Rec::Pod(pod("p", "s1-job-abc", "j", "1", "Running")).scope(), Scope::Session("s1".into()));
    let mut unlabelled = pod("p", "x", "j", "1", "Running");
    unlabelled.session = None;
    assert_eq!(Rec::Pod(unlabelled).scope(), Scope::Project);
    let mut foreign = job("p", "s1", "o", "j", "1", 0, 0);
    foreign.meta.name = "-job".into();
    assert_eq!(Rec::Job(foreign).scope(), Scope::Project);
    assert_eq!(Rec::Settings(settings("p", "1", false)).scope(), Scope::Project);
}

/// The projection of one session's change sees what the whole project's does, for that
/// session's keys (every test that projects goes through here).
fn assert_session_scope_agrees(state: &ClusterState, ns: &str, desired: &BTreeMap<ObjKey, Desired>) {
    let sessions: Vec<String> =
        state.in_ns(Res::Sessions, ns).map(|r| r.meta().name.clone()).chain(["absent".to_string()]).collect();
    for s in sessions {
        let keys = Scope::Session(s.clone()).keys(ns).unwrap();
        let whole: BTreeMap<ObjKey, Desired> =
            desired.iter().filter(|(k, _)| keys.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(desired_for_session(state, ns, &s), whole, "session {s} of {ns}");
    }
}

fn apply_all(state: &ClusterState, store: &mut BTreeMap<ObjKey, Projected>, ns: &str) -> Vec<StatusEvent> {
    let p = ProjectName::new(ns).unwrap();
    let desired = desired_for_project(state, ns);
    assert_session_scope_agrees(state, ns, &desired);
    let keys: std::collections::BTreeSet<ObjKey> =
        desired.keys().cloned().chain(store.keys().filter(|k| k.project() == ns).cloned()).collect();
    let mut out = vec![];
    for k in keys {
        if let Some(step) = diff(&p, Some("ns-uid"), &k, desired.get(&k), store.get(&k), Utc::now()) {
            out.extend(step.events);
            match step.store {
                Some(v) => store.insert(k, v),
                None => store.remove(&k),
            };
        }
    }
    out
}

fn types(evs: &[StatusEvent]) -> Vec<&'static str> {
    evs.iter().map(|e| e.body.type_str()).collect()
}

#[test]
fn session_lifecycle_emits_changed_and_phase_once() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("p1", true));
    st.apply(Res::Sessions, session("p1", "s1", "10", Phase::Pending));
    let evs = apply_all(&st, &mut store, "p1");
    assert_eq!(types(&evs), ["ambient.project.changed.v1", "ambient.session.changed.v1", "ambient.session.phase.v1"]);
    // A relist or a heartbeat (new resourceVersion, same view) emits nothing.
    st.apply(Res::Sessions, session("p1", "s1", "11", Phase::Pending));
    assert!(apply_all(&st, &mut store, "p1").is_empty());
    st.apply(Res::Sessions, session("p1", "s1", "12", Phase::Running));
    let evs = apply_all(&st, &mut store, "p1");
    assert_eq!(types(&evs), ["ambient.session.changed.v1", "ambient.session.phase.v1"]);
    match &evs[1].body {
        StatusBody::SessionPhase(t) => {
            assert_eq!(t.previous_phase, Some(Phase::Pending));
            assert_eq!(t.phase, Phase::Running);
            assert!(t.previous_phase_seconds.is_some());
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(evs[1].id, "s-uid/12/ambient.session.phase.v1");
    st.remove(Res::Sessions, "p1", "s1");
    let evs = apply_all(&st, &mut store, "p1");
    assert_eq!(types(&evs), ["ambient.session.deleted.v1"]);
    // The deletion id uses the last projected version: the same live or after downtime.
    assert_eq!(evs[0].id, "s-uid/12/ambient.session.deleted.v1");
    assert!(apply_all(&st, &mut store, "p1").is_empty());
}

#[test]
fn unmanaged_namespace_projects_nothing_and_unlabelling_deletes() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("p2", false));
    st.apply(Res::Sessions, session("p2", "s", "1", Phase::Pending));
    assert!(apply_all(&st, &mut store, "p2").is_empty());
    st.apply(Res::Namespaces, ns_rec("p2", true));
    assert_eq!(apply_all(&st, &mut store, "p2").len(), 3);
    st.remove(Res::Namespaces, "p2", "p2");
    let evs = apply_all(&st, &mut store, "p2");
    let mut t = types(&evs);
    t.sort();
    assert_eq!(t, ["ambient.project.deleted.v1", "ambient.session.deleted.v1"]);
}

#[test]
fn a_projects_incarnation_is_over_when_its_namespace_goes_or_is_another() {
    let mut st = ClusterState::default();
    assert_eq!(incarnation(&st, "p9", None), Incarnation::Current(None), "nothing projected, nothing there");
    st.apply(Res::Namespaces, ns_rec("p9", true));
    assert_eq!(incarnation(&st, "p9", None), Incarnation::Current(Some("ns-uid".into())), "a new project");
    assert_eq!(incarnation(&st, "p9", Some("ns-uid")), Incarnation::Current(Some("ns-uid".into())));
    let over = |now: Option<&str>| Incarnation::Over { old: "old-uid".into(), now: now.map(String::from) };
    assert_eq!(
        incarnation(&st, "p9", Some("old-uid")),
        over(Some("ns-uid")),
        "the name was taken by another namespace"
    );
    assert_eq!(stamp_for(&over(Some("ns-uid"))), Some("old-uid"), "the old one's events are stamped as the old one's");
    st.apply(Res::Namespaces, ns_rec("p9", false));
    assert_eq!(
        incarnation(&st, "p9", Some("ns-uid")),
        Incarnation::Over { old: "ns-uid".into(), now: None },
        "no longer managed"
    );
    st.remove(Res::Namespaces, "p9", "p9");
    assert_eq!(incarnation(&st, "p9", Some("ns-uid")), Incarnation::Over { old: "ns-uid".into(), now: None }, "gone");
}

#[test]
fn events_carry_the_project_namespace_uid() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("p8", true));
    st.apply(Res::Sessions, session("p8", "s", "1", Phase::Pending));
    let evs = apply_all(&st, &mut store, "p8");
    assert!(!evs.is_empty());
    assert!(evs.iter().all(|e| e.project_uid.as_deref() == Some("ns-uid")), "{evs:?}");
}

#[test]
fn selector_scopes_projects() {
    let sel = ProjectSelector::parse("team=a, tier!=prod,owner").unwrap();
    let l =
        |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    assert!(sel.matches(&l(&[("team", "a"), ("owner", "x")])));
    assert!(!sel.matches(&l(&[("team", "a"), ("owner", "x"), ("tier", "prod")])));
    assert!(!sel.matches(&l(&[("team", "a")])));
    assert!(ProjectSelector::default().matches(&BTreeMap::new()));
    let mut st = ClusterState::default();
    let Rec::Namespace(mut n) = ns_rec("other", true) else { unreachable!() };
    n.in_scope = false;
    st.apply(Res::Namespaces, Rec::Namespace(n));
    st.apply(Res::Sessions, session("other", "s", "1", Phase::Pending));
    assert!(st.out_of_scope("other"));
    assert!(desired_for_project(&st, "other").is_empty());
    assert!(st.projects().is_empty());
}

#[test]
fn permissions_keep_the_strongest_role_per_subject() {
    let mut st = ClusterState::default();
    st.apply(Res::Namespaces, ns_rec("p3", true));
    let g = |role| Grant { subject_type: SubjectType::User, subject_name: "alice@example.com".into(), role };
    st.apply(
        Res::PermissionBindings,
        Rec::PermissionBinding(PermissionRbRec { meta: meta("p3", "a", "u1", "5"), grants: vec![g(Role::View)] }),
    );
    st.apply(
        Res::PermissionBindings,
        Rec::PermissionBinding(PermissionRbRec { meta: meta("p3", "b", "u2", "6"), grants: vec![g(Role::Admin)] }),
    );
    let d = desired_for_project(&st, "p3");
    let (k, v) = d.iter().find(|(k, _)| matches!(k, ObjKey::Permission(..))).unwrap();
    assert!(k.name().starts_with("user-alice-example-com-"), "{k:?}");
    assert!(is_token(k.name()));
    assert_eq!(v.uid, "u2");
    assert_eq!(
        v.view,
        View::Permission(PermissionView {
            subject_type: SubjectType::User,
            subject_name: "alice@example.com".into(),
            role: Role::Admin
        })
    );
}

#[test]
fn permission_bindings_grant_only_project_cluster_roles() {
    let rb = |kind: &str, name: &str| -> RoleBinding {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "namespace": "p", "uid": "u", "resourceVersion": "1",
                "annotations": {"ambient-code.io/role": "admin"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [
                {"kind": "Group", "name": "team-a", "apiGroup": "rbac.authorization.k8s.io"},
                {"kind": "ServiceAccount", "name": "sa", "namespace": "p"},
            ],
        }))
        .unwrap()
    };
    let r = permission_rec(&rb("ClusterRole", "ambient-project-edit"));
    assert_eq!(
        r.grants,
        vec![Grant { subject_type: SubjectType::Group, subject_name: "team-a".into(), role: Role::Edit }]
    );
    // A namespaced Role of the same name, or another ClusterRole, grants no project role
    // (whatever an annotation claims).
    assert!(permission_rec(&rb("Role", "ambient-project-edit")).grants.is_empty());
    assert!(permission_rec(&rb("ClusterRole", "cluster-admin")).grants.is_empty());
}

#[test]
fn key_view_joins_account_and_binding() {
    let mut st = ClusterState::default();
    st.apply(Res::Namespaces, ns_rec("p4", true));
    st.apply(
        Res::KeyAccounts,
        Rec::KeyAccount(KeyAccountRec {
            meta: meta("p4", "ambient-key-ci-1", "sa", "7"),
            view: KeyView {
                id: "ambient-key-ci-1".into(),
                name: "ci".into(),
                description: None,
                role: Some(Role::Admin),
                created_at: None,
                last_used_at: None,
            },
        }),
    );
    st.apply(
        Res::KeyBindings,
        Rec::KeyBinding(KeyBindingRec {
            meta: meta("p4", "rb", "rbu", "8"),
            key_id: Some("ambient-key-ci-1".into()),
            role: Some(Role::Edit),
        }),
    );
    let d = desired_for_project(&st, "p4");
    let v = &d[&ObjKey::Key("p4".into(), "ambient-key-ci-1".into())];
    assert_eq!(v.version, "7+8");
    match &v.view {
        View::Key(k) => {
            assert_eq!(k.role, Some(Role::Edit));
            assert_eq!(k.name, "ci");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kv_keys_round_trip_and_views_round_trip() {
    for k in [
        ObjKey::Project("p".into()),
        ObjKey::Session("p".into(), "s".into()),
        ObjKey::Permission("p".into(), "group-x-1234abcd".into()),
        ObjKey::Key("p".into(), "k".into()),
        ObjKey::Runner("p".into(), "s".into()),
        ObjKey::Settings("p".into()),
    ] {
        assert_eq!(ObjKey::from_kv(k.bucket(), &k.kv_key()), Some(k.clone()));
    }
    assert_eq!(ObjKey::from_kv(SESSIONS_BUCKET, "p"), None);
    assert_eq!(ObjKey::from_kv(SESSIONS_BUCKET, "p.s.other"), None);
    assert_eq!(ObjKey::from_kv(ACCESS_BUCKET, "p.settings.other"), None);
    // Session keys stay two tokens: `<project>.*` still lists sessions only.
    assert_eq!(ObjKey::Runner("p".into(), "s".into()).kv_key(), "p.s.runner");
    let Rec::Session(s) = session("p", "s", "1", Phase::Running) else { unreachable!() };
    for v in [
        View::Session(Box::new(s.view.clone())),
        View::Permission(PermissionView {
            subject_type: SubjectType::Group,
            subject_name: "g".into(),
            role: Role::View,
        }),
        View::Key(KeyView {
            id: "k".into(),
            name: "k".into(),
            description: None,
            role: None,
            created_at: None,
            last_used_at: None,
        }),
        View::Project(ProjectView {
            name: "p".into(),
            display_name: None,
            description: None,
            requester: None,
            creation_timestamp: None,
            status: "Active".into(),
        }),
        View::Runner(runner::gone("s")),
        View::Runner(RunnerView {
            name: "s".into(),
            run: Some(2),
            job: Some(job("p", "s", "s-uid", "j", "1", 1, 0).view),
            pod: Some(pod("p", "p1", "j", "2", "Running").view),
        }),
        View::Settings(SettingsView { exists: false, group_access: vec![], runner_secret_configured: false }),
        View::Settings(settings("p", "1", true).view),
    ] {
        let back: View = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }
}

fn job(ns: &str, session: &str, owner: &str, uid: &str, rv: &str, active: i32, succeeded: i32) -> JobRec {
    JobRec {
        meta: meta(ns, &runner::job_name(session), uid, rv),
        session: Some(session.into()),
        owner_uid: Some(owner.into()),
        run: Some(1),
        view: events::status::RunnerJob {
            name: runner::job_name(session),
            active,
            succeeded,
            failed: 0,
            conditions: if succeeded > 0 {
                vec![events::status::RunnerCondition { type_: "Complete".into(), reason: None }]
            } else {
                vec![]
            },
            start_time: None,
            completion_time: None,
        },
    }
}

fn pod(ns: &str, name: &str, job_uid: &str, rv: &str, phase: &str) -> PodRec {
    PodRec {
        meta: meta(ns, name, &format!("{name}-uid"), rv),
        job_uid: Some(job_uid.into()),
        session: name.split_once("-job-").map(|(s, _)| s.to_string()),
        created: None,
        view: events::status::RunnerPod {
            name: name.into(),
            uid: format!("{name}-uid"),
            phase: phase.into(),
            node_name: Some("kwok-node-0".into()),
            scheduling_reason: None,
            reason: None,
            container: None,
        },
    }
}

fn settings(ns: &str, rv: &str, secret: bool) -> SettingsRec {
    SettingsRec {
        meta: meta(ns, PROJECT_SETTINGS_NAME, "ps-uid", rv),
        view: SettingsView {
            exists: true,
            group_access: vec![events::crd::GroupAccess { group_name: "team-a".into(), role: Role::Edit }],
            runner_secret_configured: secret,
        },
    }
}

fn runners(evs: &[StatusEvent]) -> Vec<(String, RunnerView)> {
    evs.iter()
        .filter_map(|e| match &e.body {
            StatusBody::SessionRunner(v) => Some((e.id.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn runner_view_follows_job_and_pod_and_is_gone_once() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("r1", true));
    st.apply(Res::Sessions, session("r1", "s1", "10", Phase::Pending));
    // No Job yet: nothing to tell about a runner.
    assert_eq!(
        types(&apply_all(&st, &mut store, "r1")),
        ["ambient.project.changed.v1", "ambient.session.changed.v1", "ambient.session.phase.v1"]
    );
    st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "20", 0, 0)));
    let r = runners(&apply_all(&st, &mut store, "r1"));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "s-uid/20/ambient.session.runner.v1");
    assert!(r[0].1.job.is_some() && r[0].1.pod.is_none());
    // A Job heartbeat (new resourceVersion, same view) emits nothing.
    st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "21", 0, 0)));
    assert!(apply_all(&st, &mut store, "r1").is_empty());
    st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "22", 1, 0)));
    st.apply(Res::Pods, Rec::Pod(pod("r1", "s1-job-abc", "j1", "23", "Running")));
    let r = runners(&apply_all(&st, &mut store, "r1"));
    assert_eq!(r.len(), 1, "one event for both changes seen at once");
    assert_eq!(r[0].0, "s-uid/22+23/ambient.session.runner.v1");
    assert_eq!(r[0].1.pod.as_ref().map(|p| p.phase.as_str()), Some("Running"));
    st.apply(Res::Pods, Rec::Pod(pod("r1", "s1-job-abc", "j1", "24", "Succeeded")));
    st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j1", "25", 0, 1)));
    let r = runners(&apply_all(&st, &mut store, "r1"));
    assert_eq!(r[0].1.job.as_ref().map(|j| j.succeeded), Some(1));
    // Stop: the Job goes (its pods linger a moment): one gone event, with an id from the
    // last projected version.
    st.remove(Res::Jobs, "r1", "s1-job");
    let evs = apply_all(&st, &mut store, "r1");
    assert_eq!(types(&evs), ["ambient.session.runner.v1"]);
    assert_eq!(runners(&evs)[0], ("s-uid/25+24+gone/ambient.session.runner.v1".into(), runner::gone("s1")));
    st.remove(Res::Pods, "r1", "s1-job-abc");
    assert!(apply_all(&st, &mut store, "r1").is_empty());
    // A new run: a new Job of the same name.
    st.apply(Res::Jobs, Rec::Job(job("r1", "s1", "s-uid", "j2", "30", 0, 0)));
    assert_eq!(runners(&apply_all(&st, &mut store, "r1")).len(), 1);
    // The session's deletion ends its story: no runner event after `deleted`.
    st.remove(Res::Sessions, "r1", "s1");
    let evs = apply_all(&st, &mut store, "r1");
    assert_eq!(types(&evs), ["ambient.session.deleted.v1"]);
    assert!(!store.contains_key(&ObjKey::Runner("r1".into(), "s1".into())));
    // Its Job is collected afterwards: nothing more.
    st.remove(Res::Jobs, "r1", "s1-job");
    assert!(apply_all(&st, &mut store, "r1").is_empty());
}

#[test]
fn runner_catch_up_is_one_event_and_replays_derive_the_same_ids() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("r2", true));
    st.apply(Res::Sessions, session("r2", "s", "10", Phase::Running));
    st.apply(Res::Jobs, Rec::Job(job("r2", "s", "s-uid", "j1", "20", 1, 0)));
    st.apply(Res::Pods, Rec::Pod(pod("r2", "s-job-x", "j1", "21", "Running")));
    apply_all(&st, &mut store, "r2");
    // While the projector is down, the run finishes through several states.
    st.apply(Res::Pods, Rec::Pod(pod("r2", "s-job-x", "j1", "22", "Succeeded")));
    st.apply(Res::Jobs, Rec::Job(job("r2", "s", "s-uid", "j1", "23", 0, 1)));
    let desired = desired_for_project(&st, "r2");
    let k = ObjKey::Runner("r2".into(), "s".into());
    let p = ProjectName::new("r2").unwrap();
    let a = diff(&p, Some("ns-uid"), &k, desired.get(&k), store.get(&k), Utc::now()).unwrap();
    let b = diff(&p, Some("ns-uid"), &k, desired.get(&k), store.get(&k), Utc::now()).unwrap();
    assert_eq!(a.events.len(), 1);
    assert_eq!(a.events[0].id, b.events[0].id, "a replay after a crash is de-duplicated");
    apply_all(&st, &mut store, "r2");
    assert!(apply_all(&st, &mut store, "r2").is_empty());
    // Gone while down: the same id as live.
    st.remove(Res::Jobs, "r2", "s-job");
    let evs = apply_all(&st, &mut store, "r2");
    assert_eq!(runners(&evs)[0].0, "s-uid/23+22+gone/ambient.session.runner.v1");
}

#[test]
fn runner_ignores_jobs_and_pods_of_others() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("r3", true));
    st.apply(Res::Sessions, session("r3", "s", "10", Phase::Pending));
    // A Job left by an earlier session of the same name, and a pod of an earlier Job.
    st.apply(Res::Jobs, Rec::Job(job("r3", "s", "old-session-uid", "j0", "5", 1, 0)));
    assert!(runners(&apply_all(&st, &mut store, "r3")).is_empty());
    st.apply(Res::Jobs, Rec::Job(job("r3", "s", "s-uid", "j1", "20", 1, 0)));
    st.apply(Res::Pods, Rec::Pod(pod("r3", "s-job-old", "j0", "21", "Running")));
    let r = runners(&apply_all(&st, &mut store, "r3"));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1.pod, None);
    // The newest pod of the Job is shown.
    let mut older = pod("r3", "s-job-a", "j1", "22", "Failed");
    older.created = DateTime::from_timestamp(100, 0);
    let mut newer = pod("r3", "s-job-b", "j1", "23", "Running");
    newer.created = DateTime::from_timestamp(200, 0);
    st.apply(Res::Pods, Rec::Pod(newer));
    st.apply(Res::Pods, Rec::Pod(older));
    let r = runners(&apply_all(&st, &mut store, "r3"));
    assert_eq!(r[0].1.pod.as_ref().map(|p| p.name.as_str()), Some("s-job-b"));
    // A re-created session of the same name starts a new story: no gone event about the
    // old one's runner, and nothing until its own Job exists.
    let Rec::Session(mut s) = session("r3", "s", "30", Phase::Pending) else { unreachable!() };
    s.meta.uid = "s-uid-2".into();
    st.apply(Res::Sessions, Rec::Session(s));
    let evs = apply_all(&st, &mut store, "r3");
    assert!(runners(&evs).is_empty(), "{:?}", types(&evs));
    assert!(!store.contains_key(&ObjKey::Runner("r3".into(), "s".into())));
}

#[test]
fn settings_view_is_public_and_reported_on_change_only() {
    let mut st = ClusterState::default();
    let mut store = BTreeMap::new();
    st.apply(Res::Namespaces, ns_rec("p5", true));
    // A project whose settings do not exist yet: nothing about settings.
    assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.changed.v1"]);
    st.apply(Res::Settings, Rec::Settings(settings("p5", "7", true)));
    let evs = apply_all(&st, &mut store, "p5");
    assert_eq!(types(&evs), ["ambient.project.settings.v1"]);
    assert_eq!(evs[0].id, "ns-uid/7/ambient.project.settings.v1");
    assert_eq!(evs[0].name, "p5");
    // A status write (new resourceVersion) or another Secret name: nothing public changed.
    st.apply(Res::Settings, Rec::Settings(settings("p5", "8", true)));
    assert!(apply_all(&st, &mut store, "p5").is_empty());
    st.apply(Res::Settings, Rec::Settings(settings("p5", "9", false)));
    let evs = apply_all(&st, &mut store, "p5");
    assert!(
        matches!(&evs[..], [StatusEvent { body: StatusBody::ProjectSettings(v), .. }] if !v.runner_secret_configured)
    );
    // Deleted while the project remains: one gone event; re-created: one event.
    st.remove(Res::Settings, "p5", PROJECT_SETTINGS_NAME);
    let evs = apply_all(&st, &mut store, "p5");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].id, "ns-uid/9+gone/ambient.project.settings.v1");
    assert!(matches!(&evs[0].body, StatusBody::ProjectSettings(v) if !v.exists && v.group_access.is_empty()));
    st.apply(Res::Settings, Rec::Settings(settings("p5", "12", false)));
    assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.settings.v1"]);
    // The project goes: only its own deletion is reported.
    let Rec::Namespace(mut n) = ns_rec("p5", true) else { unreachable!() };
    n.view.status = "Terminating".into();
    st.apply(Res::Namespaces, Rec::Namespace(n));
    st.remove(Res::Settings, "p5", PROJECT_SETTINGS_NAME);
    assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.changed.v1"]);
    assert!(!store.contains_key(&ObjKey::Settings("p5".into())));
    st.remove(Res::Namespaces, "p5", "p5");
    assert_eq!(types(&apply_all(&st, &mut store, "p5")), ["ambient.project.deleted.v1"]);
    assert!(store.is_empty());
}

#[test]
fn settings_reduce_the_runner_secret_to_a_boolean() {
    let ps: ProjectSettings = serde_json::from_value(serde_json::json!({
        "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "ProjectSettings",
        "metadata": {"name": "projectsettings", "namespace": "p", "uid": "u", "resourceVersion": "1"},
        "spec": {"groupAccess": [{"groupName": "team-a", "role": "view"}], "runnerSecretsName": "very-private-secret-name"},
    }))
    .unwrap();
    let r = settings_rec(&ps);
    assert!(r.view.runner_secret_configured);
    assert!(!serde_json::to_string(&r.view).unwrap().contains("very-private"));
    assert_eq!(r.view.group_access.len(), 1);
}
