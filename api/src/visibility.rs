//! Which projects a caller may see, cheaply at thousands of projects.
//!
//! Asking RBAC about every namespace costs one SubjectAccessReview per project on every
//! `GET /api/projects`. Like OpenShift's project cache, the api narrows the question first:
//! - one cluster-scoped review: a ClusterRoleBinding grant shows every project at once;
//! - otherwise RBAC can grant access to a project only through a RoleBinding in it, so only
//!   namespaces with a RoleBinding naming the caller (as user, group or ServiceAccount) are
//!   candidates, and each candidate is still decided by a SubjectAccessReview.
//!
//! The index watches every RoleBinding (kubectl-made ones too, not only ours) and keeps just
//! their subjects. It only ever removes namespaces the API server would refuse anyway; grants
//! from a non-RBAC authorizer (a webhook) scoped to single namespaces are not seen by it, which
//! is why `--project-list-prefilter=false` turns it off.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use events::Principal;
use futures::StreamExt as _;
use k8s_openapi::api::rbac::v1::{RoleBinding, Subject};
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

/// Whom a RoleBinding binds, reduced to what matching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bound {
    User(String),
    Group(String),
    /// A ServiceAccount, by its full user name `system:serviceaccount:<ns>:<name>`.
    ServiceAccount(String),
}

impl Bound {
    /// The RBAC authorizer's reading of a subject (a ServiceAccount without a namespace is in
    /// the binding's namespace).
    fn of(s: &Subject, binding_ns: &str) -> Option<Self> {
        match s.kind.as_str() {
            "User" => Some(Bound::User(s.name.clone())),
            "Group" => Some(Bound::Group(s.name.clone())),
            "ServiceAccount" => {
                let ns = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                Some(Bound::ServiceAccount(format!("system:serviceaccount:{ns}:{}", s.name)))
            }
            _ => None,
        }
    }

    fn names(&self, who: &Principal) -> bool {
        match self {
            Bound::User(u) | Bound::ServiceAccount(u) => *u == who.user,
            Bound::Group(g) => who.groups.iter().any(|x| x == g),
        }
    }
}

/// Subjects by namespace, then by RoleBinding name.
#[derive(Default)]
struct Bindings(HashMap<String, HashMap<String, Vec<Bound>>>);

impl Bindings {
    fn apply(&mut self, rb: &RoleBinding) {
        let ns = rb.namespace().unwrap_or_default();
        let subjects = rb.subjects.iter().flatten().filter_map(|s| Bound::of(s, &ns)).collect();
        self.0.entry(ns).or_default().insert(rb.name_any(), subjects);
    }

    fn delete(&mut self, rb: &RoleBinding) {
        let ns = rb.namespace().unwrap_or_default();
        if let Some(in_ns) = self.0.get_mut(&ns) {
            in_ns.remove(&rb.name_any());
            if in_ns.is_empty() {
                self.0.remove(&ns);
            }
        }
    }

    fn names(&self, namespace: &str, who: &Principal) -> bool {
        self.0.get(namespace).is_some_and(|in_ns| in_ns.values().flatten().any(|s| s.names(who)))
    }
}

/// The RoleBinding subject index.
pub struct Visibility {
    bindings: RwLock<Bindings>,
    ready: AtomicBool,
    enabled: bool,
    /// Bumped on every change, like the read caches, so `Reads::wait_until` wakes on it too.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Visibility {
    /// Starts watching RoleBindings (when `enabled`); stops on `shutdown`.
    pub fn start(
        client: kube::Client,
        enabled: bool,
        changed: Arc<tokio::sync::watch::Sender<u64>>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let this = Arc::new(Self::empty(enabled, false, changed));
        if enabled {
            tokio::spawn(this.clone().watch(Api::all(client), shutdown));
        }
        this
    }

    async fn watch(self: Arc<Self>, api: Api<RoleBinding>, shutdown: CancellationToken) {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream.take_until(shutdown.cancelled_owned()));
        // A relist is built aside and swapped in whole, so readers never see half a list.
        let mut relist: Option<Bindings> = None;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => relist = Some(Bindings::default()),
                Ok(watcher::Event::InitApply(rb)) => {
                    if let Some(r) = relist.as_mut() {
                        r.apply(&rb);
                    }
                    // Readers see nothing of a relist before it is swapped in.
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if let (Some(r), Ok(mut b)) = (relist.take(), self.bindings.write()) {
                        *b = r;
                    }
                    self.ready.store(true, Ordering::Release);
                }
                Ok(watcher::Event::Apply(rb)) => {
                    if let Ok(mut b) = self.bindings.write() {
                        b.apply(&rb);
                    }
                }
                Ok(watcher::Event::Delete(rb)) => {
                    if let Ok(mut b) = self.bindings.write() {
                        b.delete(&rb);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rolebinding watch error; retrying");
                    continue;
                }
            }
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn empty(enabled: bool, ready: bool, changed: Arc<tokio::sync::watch::Sender<u64>>) -> Self {
        Self { bindings: RwLock::new(Bindings::default()), ready: AtomicBool::new(ready), enabled, changed }
    }

    /// Whether the index is on and has its first full list.
    pub fn ready(&self) -> bool {
        !self.enabled || self.ready.load(Ordering::Acquire)
    }

    /// Whether `namespace` is a candidate for `who` (always, when the index cannot tell).
    pub fn is_candidate(&self, who: &Principal, namespace: &str) -> bool {
        if !self.enabled || !self.ready.load(Ordering::Acquire) {
            return true;
        }
        self.bindings.read().is_ok_and(|b| b.names(namespace, who))
    }

    /// The namespaces with a RoleBinding naming `who`; `None` when the index cannot tell (off,
    /// or not listed yet): then every project is a candidate.
    pub fn candidates(&self, who: &Principal) -> Option<HashSet<String>> {
        if !self.enabled || !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let b = self.bindings.read().ok()?;
        Some(b.0.keys().filter(|ns| b.names(ns, who)).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::RoleRef;
    use kube::api::ObjectMeta;

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
        Subject { kind: kind.into(), name: name.into(), namespace: ns.map(Into::into), ..Default::default() }
    }

    fn rb(ns: &str, name: &str, subjects: Vec<Subject>) -> RoleBinding {
        RoleBinding {
            metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "view".into(),
            },
            subjects: Some(subjects),
        }
    }

    fn index(rbs: &[RoleBinding]) -> Visibility {
        let v = Visibility::empty(true, true, Arc::default());
        if let Ok(mut b) = v.bindings.write() {
            for r in rbs {
                b.apply(r);
            }
        }
        v
    }

    fn who(user: &str, groups: &[&str]) -> Principal {
        Principal { user: user.into(), groups: groups.iter().map(|g| g.to_string()).collect(), ..Default::default() }
    }

    fn sorted(s: Option<HashSet<String>>) -> Vec<String> {
        let mut v: Vec<_> = s.expect("index ready").into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn users_groups_and_service_accounts_match_as_rbac_does() {
        let v = index(&[
            rb("p1", "a", vec![subject("User", "alice", None)]),
            rb("p2", "b", vec![subject("Group", "team-a", None)]),
            rb("p3", "c", vec![subject("ServiceAccount", "bot", Some("p3"))]),
            // A ServiceAccount subject without a namespace is in the binding's namespace.
            rb("p4", "d", vec![subject("ServiceAccount", "bot", None)]),
            rb("p5", "e", vec![subject("Group", "system:authenticated", None)]),
            rb("p6", "f", vec![subject("User", "bob", None)]),
        ]);
        assert_eq!(sorted(v.candidates(&who("alice", &["team-a", "system:authenticated"]))), ["p1", "p2", "p5"]);
        assert_eq!(sorted(v.candidates(&who("system:serviceaccount:p3:bot", &["system:authenticated"]))), ["p3", "p5"]);
        assert_eq!(sorted(v.candidates(&who("system:serviceaccount:p4:bot", &[]))), ["p4"]);
        assert_eq!(sorted(v.candidates(&who("carol", &[]))), Vec::<String>::new());
        assert!(v.is_candidate(&who("alice", &[]), "p1"));
        assert!(!v.is_candidate(&who("alice", &[]), "p6"));
    }

    #[test]
    fn a_deleted_binding_no_longer_counts() {
        let (a, b) =
            (rb("p1", "a", vec![subject("User", "alice", None)]), rb("p1", "b", vec![subject("User", "alice", None)]));
        let v = index(&[a.clone(), b.clone()]);
        if let Ok(mut w) = v.bindings.write() {
            w.delete(&a);
        }
        assert!(v.is_candidate(&who("alice", &[]), "p1"), "another binding still names her");
        if let Ok(mut w) = v.bindings.write() {
            w.delete(&b);
        }
        assert!(!v.is_candidate(&who("alice", &[]), "p1"));
        assert_eq!(sorted(v.candidates(&who("alice", &[]))), Vec::<String>::new());
    }

    #[test]
    fn a_user_named_like_a_group_is_not_the_group() {
        let v = index(&[rb("p1", "a", vec![subject("Group", "alice", None)])]);
        assert_eq!(sorted(v.candidates(&who("alice", &[]))), Vec::<String>::new());
    }

    #[test]
    fn an_index_that_cannot_tell_says_so() {
        let v = Visibility::empty(true, false, Arc::default());
        assert_eq!(v.candidates(&who("alice", &[])), None, "not listed yet");
        let off = Visibility::empty(false, true, Arc::default());
        assert_eq!(off.candidates(&who("alice", &[])), None, "turned off");
        assert!(
            v.is_candidate(&who("alice", &[]), "p1") && off.is_candidate(&who("alice", &[]), "p1"),
            "then every project is"
        );
    }
}
