//! The read model's keys: one per projected object, naming its bucket, its key there and the
//! name token of its status subject; and which of them a watch observation can change.

use events::crd::PROJECT_SETTINGS_NAME;
use events::streams::{ACCESS_BUCKET, PROJECTS_BUCKET, SESSIONS_BUCKET};

use super::records::Rec;
use super::runner;

/// One object of the read model: a bucket key and the status subject name token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjKey {
    /// `<project>` in the projects bucket.
    Project(String),
    /// `<project>.<session>` in the sessions bucket.
    Session(String, String),
    /// `<project>.<session>.runner` in the sessions bucket: the session's runner view.
    Runner(String, String),
    /// `<project>.permission.<subjectType>-<suffix>` in the access bucket.
    Permission(String, String),
    /// `<project>.key.<id>` in the access bucket.
    Key(String, String),
    /// `<project>.settings.projectsettings` in the access bucket: the project's settings view.
    Settings(String),
}

impl ObjKey {
    /// The project.
    pub fn project(&self) -> &str {
        match self {
            ObjKey::Project(p)
            | ObjKey::Settings(p)
            | ObjKey::Session(p, _)
            | ObjKey::Runner(p, _)
            | ObjKey::Permission(p, _)
            | ObjKey::Key(p, _) => p,
        }
    }

    /// The status subject's name token.
    pub fn name(&self) -> &str {
        match self {
            ObjKey::Project(p) | ObjKey::Settings(p) => p,
            ObjKey::Session(_, n) | ObjKey::Runner(_, n) | ObjKey::Permission(_, n) | ObjKey::Key(_, n) => n,
        }
    }

    /// The KV bucket.
    pub fn bucket(&self) -> &'static str {
        match self {
            ObjKey::Project(_) => PROJECTS_BUCKET,
            ObjKey::Session(..) | ObjKey::Runner(..) => SESSIONS_BUCKET,
            ObjKey::Permission(..) | ObjKey::Key(..) | ObjKey::Settings(_) => ACCESS_BUCKET,
        }
    }

    /// The key in its bucket.
    pub fn kv_key(&self) -> String {
        match self {
            ObjKey::Project(p) => p.clone(),
            ObjKey::Session(p, s) => format!("{p}.{s}"),
            ObjKey::Permission(p, n) => format!("{p}.permission.{n}"),
            ObjKey::Key(p, n) => format!("{p}.key.{n}"),
            ObjKey::Runner(p, s) => format!("{p}.{s}.runner"),
            ObjKey::Settings(p) => format!("{p}.settings.{PROJECT_SETTINGS_NAME}"),
        }
    }

    /// Parses a bucket key back (`None` for keys the projector does not own).
    pub fn from_kv(bucket: &str, key: &str) -> Option<ObjKey> {
        let valid = |s: &str| events::names::check_dns1123_label("key", s, 63).is_ok();
        let parts: Vec<&str> = key.split('.').collect();
        let k = match (bucket, parts.as_slice()) {
            (PROJECTS_BUCKET, [p]) => ObjKey::Project(p.to_string()),
            (SESSIONS_BUCKET, [p, s]) => ObjKey::Session(p.to_string(), s.to_string()),
            (ACCESS_BUCKET, [p, "permission", n]) => ObjKey::Permission(p.to_string(), n.to_string()),
            (ACCESS_BUCKET, [p, "key", n]) => ObjKey::Key(p.to_string(), n.to_string()),
            (SESSIONS_BUCKET, [p, s, "runner"]) => ObjKey::Runner(p.to_string(), s.to_string()),
            (ACCESS_BUCKET, [p, "settings", PROJECT_SETTINGS_NAME]) => ObjKey::Settings(p.to_string()),
            _ => return None,
        };
        (valid(k.project()) && valid(k.name())).then_some(k)
    }

    /// A view attached to a parent object (the session's runner, the project's settings): it
    /// lives while its parent does, has a "gone" state of its own, and no deletion event (its
    /// parent's tells).
    pub fn is_subview(&self) -> bool {
        matches!(self, ObjKey::Runner(..) | ObjKey::Settings(_))
    }
}

/// Which read-model objects a watch observation can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any object of the project: namespaces, settings, permissions and keys change rarely.
    Project,
    /// One session and its runner view: sessions, their Jobs and pods, the busy path, where
    /// re-deriving a whole project per change would cost as much as the project is large.
    Session(String),
}

impl Scope {
    /// The read-model keys of project `ns` this scope covers beyond what is desired now (so
    /// that what went is deleted); `None` for the whole project.
    pub fn keys(&self, ns: &str) -> Option<[ObjKey; 2]> {
        match self {
            Scope::Project => None,
            Scope::Session(s) => Some([ObjKey::Session(ns.into(), s.clone()), ObjKey::Runner(ns.into(), s.clone())]),
        }
    }
}

impl Rec {
    /// What a change of this object can change in the read model.
    pub fn scope(&self) -> Scope {
        match self {
            Rec::Session(s) => Scope::Session(s.meta.name.clone()),
            // A Job counts only for the session whose runner Job name it has (see `JobRec::runs`).
            Rec::Job(j) => {
                runner::session_of_job(&j.meta.name).map_or(Scope::Project, |s| Scope::Session(s.to_string()))
            }
            Rec::Pod(p) => p.session.clone().map_or(Scope::Project, Scope::Session),
            _ => Scope::Project,
        }
    }
}
