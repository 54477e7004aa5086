//! The status events that bring a consumer from the last projected view of an object to the
//! one desired now.

use chrono::{DateTime, Utc};
use events::status::{PhaseTransition, Tombstone};
use events::{Phase, ProjectName, StatusBody, StatusEvent};

use super::keys::ObjKey;
use super::views::{Desired, Projected, View};

/// What to do for one object: the events to publish (in order) and the new read-model value
/// (`None`: delete the key).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Events, in publish order.
    pub events: Vec<StatusEvent>,
    /// The new value of the key.
    pub store: Option<Projected>,
}

fn changed_body(view: &View) -> StatusBody {
    match view {
        View::Project(v) => StatusBody::ProjectChanged(v.clone()),
        View::Session(v) => StatusBody::SessionChanged(v.as_ref().clone()),
        View::Permission(v) => StatusBody::PermissionChanged(v.clone()),
        View::Key(v) => StatusBody::KeyChanged(v.clone()),
        View::Runner(v) => StatusBody::SessionRunner(v.clone()),
        View::Settings(v) => StatusBody::ProjectSettings(v.clone()),
    }
}

/// The deletion event of an object; sub-views have none (their parent's deletion tells).
fn deleted_body(key: &ObjKey, t: Tombstone) -> Option<StatusBody> {
    match key {
        ObjKey::Project(_) => Some(StatusBody::ProjectDeleted(t)),
        ObjKey::Session(..) => Some(StatusBody::SessionDeleted(t)),
        ObjKey::Permission(..) => Some(StatusBody::PermissionDeleted(t)),
        ObjKey::Key(..) => Some(StatusBody::KeyDeleted(t)),
        ObjKey::Runner(..) | ObjKey::Settings(_) => None,
    }
}

/// The status events that bring a consumer from `projected` to `desired` for object `key`,
/// observed at `now`; `None` when nothing changed as far as a consumer can tell.
///
/// Ids are `StatusEvent::derive_id(uid, version, type)`: a replay after a crash (events
/// published, read model not yet written) derives the same ids, which JetStream drops as
/// duplicates. A deletion uses the last projected version, known to both the live path and
/// the catch-up after downtime. Every event is stamped with `project_uid`, the uid of the
/// project namespace the events are about (see [`stamp_for`]).
pub fn diff(
    project: &ProjectName,
    project_uid: Option<&str>,
    key: &ObjKey,
    desired: Option<&Desired>,
    projected: Option<&Projected>,
    now: DateTime<Utc>,
) -> Option<Step> {
    let event = |uid: &str, version: &str, body: StatusBody| StatusEvent {
        id: StatusEvent::derive_id(uid, version, body.type_str()),
        project: project.clone(),
        name: key.name().to_string(),
        time: now,
        project_uid: project_uid.map(String::from),
        body,
    };
    if key.is_subview() {
        return diff_subview(desired, projected, now, event);
    }
    let tombstone = |p: &Projected| -> Vec<StatusEvent> {
        let t = Tombstone { name: key.name().to_string(), uid: Some(p.uid.clone()), at: now };
        deleted_body(key, t).map(|body| event(&p.uid, &p.version, body)).into_iter().collect()
    };
    let created = |d: &Desired, events: &mut Vec<StatusEvent>| -> Projected {
        events.push(event(&d.uid, &d.version, changed_body(&d.view)));
        if let Some(phase) = d.view.phase() {
            events.push(event(
                &d.uid,
                &d.version,
                StatusBody::SessionPhase(transition(key, None, phase, &d.view, now, None)),
            ));
        }
        Projected {
            uid: d.uid.clone(),
            version: d.version.clone(),
            projected_at: now,
            phase_since: d.view.phase().map(|_| now),
            view: d.view.clone(),
        }
    };
    match (desired, projected) {
        (None, None) => None,
        (None, Some(p)) => Some(Step { events: tombstone(p), store: None }),
        (Some(d), None) => {
            let mut events = Vec::new();
            let store = created(d, &mut events);
            Some(Step { events, store: Some(store) })
        }
        // The name now belongs to another object: the old one is gone, a new one exists.
        // (A permission is its subject, whichever binding carries it.)
        (Some(d), Some(p)) if d.uid != p.uid && !matches!(key, ObjKey::Permission(..)) => {
            let mut events = tombstone(p);
            let store = created(d, &mut events);
            Some(Step { events, store: Some(store) })
        }
        (Some(d), Some(p)) => {
            if d.view.same_public(&p.view) {
                return None;
            }
            let mut events = vec![event(&d.uid, &d.version, changed_body(&d.view))];
            let mut phase_since = p.phase_since;
            if let (Some(old), Some(new)) = (p.view.phase(), d.view.phase())
                && old != new
            {
                let secs = p.phase_since.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
                events.push(event(
                    &d.uid,
                    &d.version,
                    StatusBody::SessionPhase(transition(key, Some(old), new, &d.view, now, secs)),
                ));
                phase_since = Some(now);
            }
            Some(Step {
                events,
                store: Some(Projected {
                    uid: d.uid.clone(),
                    version: d.version.clone(),
                    projected_at: now,
                    phase_since,
                    view: d.view.clone(),
                }),
            })
        }
    }
}

/// [`diff`] of a sub-view (a session's runner, a project's settings). It is published with its
/// own type whenever it differs from the projected one. Its gone state is published only after
/// a view that was not gone (nothing to tell before), with the id version `<last projected
/// version>+gone`, the same live and after downtime. It is dropped without an event when its
/// parent goes, and a projected view of an earlier parent of the same name does not count.
/// `event(uid, version, body)` makes an event of the object, as in [`diff`].
fn diff_subview(
    desired: Option<&Desired>,
    projected: Option<&Projected>,
    now: DateTime<Utc>,
    event: impl Fn(&str, &str, StatusBody) -> StatusEvent,
) -> Option<Step> {
    let drop = Step { events: Vec::new(), store: None };
    let publish = |d: &Desired, version: String| {
        let ev = event(&d.uid, &version, changed_body(&d.view));
        Step {
            events: vec![ev],
            store: Some(Projected {
                uid: d.uid.clone(),
                version,
                projected_at: now,
                phase_since: None,
                view: d.view.clone(),
            }),
        }
    };
    let Some(d) = desired else {
        return projected.map(|_| drop);
    };
    match projected.filter(|p| p.uid == d.uid) {
        Some(p) if d.view.same_public(&p.view) => None,
        Some(p) if d.view.is_gone() => Some(publish(d, format!("{}+gone", p.version))),
        Some(_) => Some(publish(d, d.version.clone())),
        None if d.view.is_gone() => projected.map(|_| drop),
        None => Some(publish(d, d.version.clone())),
    }
}

fn transition(
    key: &ObjKey,
    previous: Option<Phase>,
    phase: Phase,
    view: &View,
    at: DateTime<Utc>,
    secs: Option<f64>,
) -> PhaseTransition {
    let (reason, message, start_time, completion_time) = match view {
        View::Session(s) => (s.reason.clone(), s.message.clone(), s.start_time, s.completion_time),
        _ => (None, None, None, None),
    };
    PhaseTransition {
        name: key.name().to_string(),
        previous_phase: previous,
        phase,
        at,
        previous_phase_seconds: secs,
        reason,
        message,
        start_time,
        completion_time,
    }
}
