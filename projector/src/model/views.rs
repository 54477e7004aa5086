//! The read model's values: the public view of each object, what it should be now
//! ([`Desired`]) and what was last projected ([`Projected`]).

use chrono::{DateTime, Utc};
use events::Phase;
use events::status::{KeyView, PermissionView, ProjectView, RunnerView, SessionView, SettingsView};
use serde::{Deserialize, Serialize};

/// A public view of any kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum View {
    /// Session (first: its required fields make the untagged match unambiguous).
    Session(Box<SessionView>),
    /// Key.
    Key(KeyView),
    /// Permission.
    Permission(PermissionView),
    /// Project.
    Project(ProjectView),
    /// Project settings (after Project: its required `exists` tells it apart).
    Settings(SettingsView),
    /// Session runner (last: only `name` is required, so anything above matches first).
    Runner(RunnerView),
}

impl View {
    /// Equal as far as a consumer can tell: the session's resourceVersion is bookkeeping.
    pub fn same_public(&self, other: &View) -> bool {
        match (self, other) {
            (View::Session(a), View::Session(b)) => {
                let mut b = b.as_ref().clone();
                b.resource_version.clone_from(&a.resource_version);
                **a == b
            }
            _ => self == other,
        }
    }

    /// The "gone" state of a sub-view: a runner without a Job, settings without their object.
    pub fn is_gone(&self) -> bool {
        match self {
            View::Runner(v) => v.job.is_none(),
            View::Settings(v) => !v.exists,
            _ => false,
        }
    }

    pub(crate) fn phase(&self) -> Option<Phase> {
        match self {
            View::Session(s) => Some(s.phase),
            _ => None,
        }
    }
}

/// What the read model should hold for one object now.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// uid of the object the view is about (the permission's strongest binding).
    pub uid: String,
    /// Version the view was taken at: the resourceVersion, or `rv+rv` for a view built from
    /// two objects (a key's ServiceAccount and RoleBinding, a runner's Job and pod). Empty for
    /// a sub-view's gone state, whose version [`diff`] derives from the last projected one.
    pub version: String,
    /// The view.
    pub view: View,
}

/// The last projected state of one object: the value in its read-model bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Projected {
    /// uid of the object.
    pub uid: String,
    /// Version the view was taken at (see [`Desired::version`]).
    pub version: String,
    /// When this view was projected.
    pub projected_at: DateTime<Utc>,
    /// Sessions: since when the session is in its current phase (as observed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<DateTime<Utc>>,
    /// The public view.
    pub view: View,
}
