//! The watched objects ([`ClusterState`]) and which incarnation of a project they show.

use std::collections::BTreeMap;

use events::ProjectName;

use super::records::{NamespaceRec, Rec, Res};

/// The watched objects, by resource and `(namespace, name)`.
#[derive(Debug, Default)]
pub struct ClusterState {
    maps: BTreeMap<Res, BTreeMap<(String, String), Rec>>,
}

impl ClusterState {
    /// Replaces everything of `res` (after a (re)list).
    pub fn replace(&mut self, res: Res, items: BTreeMap<(String, String), Rec>) {
        self.maps.insert(res, items);
    }

    /// Adds or replaces one object.
    pub fn apply(&mut self, res: Res, rec: Rec) {
        let m = rec.meta();
        let k = (m.namespace.clone(), m.name.clone());
        self.maps.entry(res).or_default().insert(k, rec);
    }

    /// One object.
    pub fn get(&self, res: Res, namespace: &str, name: &str) -> Option<&Rec> {
        self.maps.get(&res)?.get(&(namespace.to_string(), name.to_string()))
    }

    /// Removes one object.
    pub fn remove(&mut self, res: Res, namespace: &str, name: &str) {
        if let Some(m) = self.maps.get_mut(&res) {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    pub(crate) fn in_ns(&self, res: Res, ns: &str) -> impl Iterator<Item = &Rec> {
        self.maps
            .get(&res)
            .into_iter()
            .flat_map(move |m| m.range((ns.to_string(), String::new())..).take_while(move |((n, _), _)| n == ns))
            .map(|(_, r)| r)
    }

    /// A project that exists but belongs to another projector (`--project-selector`): this
    /// one neither projects nor deletes anything of it.
    pub fn out_of_scope(&self, ns: &str) -> bool {
        matches!(self.in_ns(Res::Namespaces, ns).next(), Some(Rec::Namespace(n)) if !n.in_scope)
    }

    /// Names of the managed namespaces this projector owns.
    pub fn projects(&self) -> Vec<String> {
        self.in_all(Res::Namespaces)
            .filter_map(|r| match r {
                Rec::Namespace(n) if n.managed && n.in_scope => Some(n.meta.name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Objects of `res` in `ns` whose names start with `prefix`.
    pub(crate) fn in_ns_prefixed<'a>(
        &'a self,
        res: Res,
        ns: &'a str,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Rec> {
        self.maps
            .get(&res)
            .into_iter()
            .flat_map(move |m| {
                m.range((ns.to_string(), prefix.to_string())..)
                    .take_while(move |((n, name), _)| n == ns && name.starts_with(prefix))
            })
            .map(|(_, r)| r)
    }

    pub(crate) fn in_all(&self, res: Res) -> impl Iterator<Item = &Rec> {
        self.maps.get(&res).into_iter().flat_map(|m| m.values())
    }
}

/// The namespace of project `ns`, if it is a managed project this projector owns.
pub(crate) fn owned_project<'a>(state: &'a ClusterState, ns: &str) -> Option<&'a NamespaceRec> {
    match state.in_ns(Res::Namespaces, ns).next() {
        Some(Rec::Namespace(nsr)) if nsr.managed && nsr.in_scope && ProjectName::new(ns).is_ok() => Some(nsr),
        _ => None,
    }
}

/// The incarnation of project `ns` the read model holds (`projected_uid`, the uid of its
/// projected project view) and the one the cluster has now: [`Incarnation::Current`] while
/// they are the same namespace, [`Incarnation::Over`] once that namespace is gone, is no
/// longer a managed project of ours, or the name belongs to another namespace.
pub fn incarnation(state: &ClusterState, ns: &str, projected_uid: Option<&str>) -> Incarnation {
    let now = project_uid(state, ns).map(String::from);
    match projected_uid {
        Some(old) if now.as_deref() != Some(old) => Incarnation::Over { old: old.to_string(), now },
        _ => Incarnation::Current(now),
    }
}

/// See [`incarnation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incarnation {
    /// The read model is of the namespace that exists now (its uid; `None` if there is none
    /// and nothing of it is projected).
    Current(Option<String>),
    /// The read model is of namespace `old`, which is over: everything of it is projected as
    /// deleted and its history purged before anything of `now` (if any) is projected.
    Over {
        /// The projected namespace's uid.
        old: String,
        /// The current namespace's uid, if the name is a project again.
        now: Option<String>,
    },
}

/// The uid of project `ns`'s namespace, if it is a managed project this projector owns.
pub fn project_uid<'a>(state: &'a ClusterState, ns: &str) -> Option<&'a str> {
    owned_project(state, ns).map(|n| n.meta.uid.as_str())
}

/// The uid to stamp events of project `ns` with while its incarnation is `inc`.
pub fn stamp_for(inc: &Incarnation) -> Option<&str> {
    match inc {
        Incarnation::Current(uid) => uid.as_deref(),
        Incarnation::Over { old, .. } => Some(old),
    }
}
