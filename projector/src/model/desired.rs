//! What the read model should hold, computed from the watched objects: one [`Desired`] per
//! projected object of a project or of one session.

use std::collections::BTreeMap;

use events::crd::PROJECT_SETTINGS_NAME;
use events::status::{KeyView, PermissionView, SettingsView};
use events::{SubjectName, SubjectType};

use super::keys::ObjKey;
use super::meta::Meta;
use super::records::{Grant, Rec, Res, SessionRec};
use super::runner::{self, PodRec};
use super::state::{ClusterState, owned_project};
use super::views::{Desired, View};

/// The name token of a permission of `subject`: `<subjectType>-<sanitized subject + hash>`.
pub fn permission_token(subject_type: SubjectType, subject_name: &str) -> Option<String> {
    let prefix = subject_type.as_str();
    let subject = SubjectName::new(subject_name).ok()?;
    Some(format!("{prefix}-{}", subject.object_suffix(63 - prefix.len() - 1)))
}

pub(crate) fn is_token(s: &str) -> bool {
    events::names::check_dns1123_label("name", s, 63).is_ok()
}

/// What the read model should hold for session `session` of project `ns`: its view and its
/// runner's (empty if the session or the project is gone, so that both are projected as
/// deleted). The same as [`desired_for_project`] restricted to those keys.
pub fn desired_for_session(state: &ClusterState, ns: &str, session: &str) -> BTreeMap<ObjKey, Desired> {
    let mut out = BTreeMap::new();
    let Some(nsr) = owned_project(state, ns) else { return out };
    let Some(Rec::Session(s)) = state.get(Res::Sessions, ns, session) else { return out };
    // The Job controller names a Job's pods `<job>-<suffix>`.
    let prefix = format!("{}-", runner::job_name(session));
    let newest_pod = |job_uid: &str| {
        let mut newest: Option<&PodRec> = None;
        for r in state.in_ns_prefixed(Res::Pods, ns, &prefix) {
            if let Rec::Pod(p) = r
                && p.job_uid.as_deref() == Some(job_uid)
                && newest.is_none_or(|q| p.newer_than(q))
            {
                newest = Some(p);
            }
        }
        newest
    };
    insert_session(&mut out, state, ns, s, nsr.view.status == "Terminating", newest_pod);
    out
}

/// Adds the views of session `s` and its runner; `newest_pod` finds the newest pod of a Job.
fn insert_session<'a>(
    out: &mut BTreeMap<ObjKey, Desired>,
    state: &'a ClusterState,
    ns: &str,
    s: &SessionRec,
    terminating: bool,
    newest_pod: impl Fn(&str) -> Option<&'a PodRec>,
) {
    if !is_token(&s.meta.name) {
        return;
    }
    out.insert(
        ObjKey::Session(ns.to_string(), s.meta.name.clone()),
        Desired {
            uid: s.meta.uid.clone(),
            version: s.meta.resource_version.clone(),
            view: View::Session(Box::new(s.view.clone())),
        },
    );
    // The runner's identity is its session's: every run of the session is one story.
    let job = match state.get(Res::Jobs, ns, &runner::job_name(&s.meta.name)) {
        Some(Rec::Job(j)) if j.runs(&s.meta.name, &s.meta.uid) => Some(j),
        _ => None,
    };
    let runner = match job {
        Some(j) => Some(runner::runner_view(&s.meta.name, j, newest_pod(j.meta.uid.as_str()))),
        None if terminating => None,
        None => Some((String::new(), runner::gone(&s.meta.name))),
    };
    if let Some((version, view)) = runner {
        out.insert(
            ObjKey::Runner(ns.to_string(), s.meta.name.clone()),
            Desired { uid: s.meta.uid.clone(), version, view: View::Runner(view) },
        );
    }
}

/// Everything the read model should hold for project `ns` (empty if it is not a managed
/// namespace, so that all its objects are projected as deleted).
pub fn desired_for_project(state: &ClusterState, ns: &str) -> BTreeMap<ObjKey, Desired> {
    let mut out = BTreeMap::new();
    let Some(nsr) = owned_project(state, ns) else { return out };
    out.insert(
        ObjKey::Project(ns.to_string()),
        Desired {
            uid: nsr.meta.uid.clone(),
            version: nsr.meta.resource_version.clone(),
            view: View::Project(nsr.view.clone()),
        },
    );
    // While the project is being deleted, sub-views that go are dropped without a "gone"
    // event: the deletions of their parents follow and tell.
    let terminating = nsr.view.status == "Terminating";
    // The settings' identity is the project's (a re-created ProjectSettings is the same
    // settings); gone settings are reported only after present ones (see `diff`).
    let settings = match state.get(Res::Settings, ns, PROJECT_SETTINGS_NAME) {
        Some(Rec::Settings(ps)) => Some((ps.meta.resource_version.clone(), ps.view.clone())),
        _ if terminating => None,
        _ => Some((String::new(), SettingsView::absent())),
    };
    if let Some((version, view)) = settings {
        out.insert(
            ObjKey::Settings(ns.to_string()),
            Desired { uid: nsr.meta.uid.clone(), version, view: View::Settings(view) },
        );
    }
    // The newest pod of each Job, by Job uid (one pass, not one per session).
    let mut newest_pod: BTreeMap<&str, &PodRec> = BTreeMap::new();
    for r in state.in_ns(Res::Pods, ns) {
        let Rec::Pod(p) = r else { continue };
        let Some(job_uid) = p.job_uid.as_deref() else { continue };
        if newest_pod.get(job_uid).is_none_or(|q| p.newer_than(q)) {
            newest_pod.insert(job_uid, p);
        }
    }
    for r in state.in_ns(Res::Sessions, ns) {
        if let Rec::Session(s) = r {
            insert_session(&mut out, state, ns, s, terminating, |uid| newest_pod.get(uid).copied());
        }
    }
    // Permissions: one per subject; the strongest role wins while a role change briefly
    // leaves two bindings.
    let mut perms: BTreeMap<String, (Grant, &Meta, Vec<&Meta>)> = BTreeMap::new();
    for r in state.in_ns(Res::PermissionBindings, ns) {
        let Rec::PermissionBinding(rb) = r else { continue };
        for g in &rb.grants {
            let Some(token) = permission_token(g.subject_type, &g.subject_name) else { continue };
            match perms.get_mut(&token) {
                None => {
                    perms.insert(token, (g.clone(), &rb.meta, vec![&rb.meta]));
                }
                Some((best, best_meta, all)) => {
                    all.push(&rb.meta);
                    if g.role < best.role {
                        *best = g.clone();
                        *best_meta = &rb.meta;
                    }
                }
            }
        }
    }
    for (token, (g, best_meta, all)) in perms {
        let version = all.iter().map(|m| m.resource_version.as_str()).collect::<Vec<_>>().join("+");
        out.insert(
            ObjKey::Permission(ns.to_string(), token),
            Desired {
                uid: best_meta.uid.clone(),
                version,
                view: View::Permission(PermissionView {
                    subject_type: g.subject_type,
                    subject_name: g.subject_name,
                    role: g.role,
                }),
            },
        );
    }
    for r in state.in_ns(Res::KeyAccounts, ns) {
        let Rec::KeyAccount(sa) = r else { continue };
        if !is_token(&sa.meta.name) {
            continue;
        }
        let rb = state.in_ns(Res::KeyBindings, ns).find_map(|r| match r {
            Rec::KeyBinding(b) if b.key_id.as_deref() == Some(sa.meta.name.as_str()) => Some(b),
            _ => None,
        });
        let version = match rb {
            Some(b) => format!("{}+{}", sa.meta.resource_version, b.meta.resource_version),
            None => sa.meta.resource_version.clone(),
        };
        out.insert(
            ObjKey::Key(ns.to_string(), sa.meta.name.clone()),
            Desired {
                uid: sa.meta.uid.clone(),
                version,
                view: View::Key(KeyView { role: rb.and_then(|b| b.role).or(sa.view.role), ..sa.view.clone() }),
            },
        );
    }
    out
}
