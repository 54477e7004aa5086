//! Authorization: a SubjectAccessReview for the reviewed identity (user, uid, groups) on the
//! resource and verb a route touches, cached for a short time (so a revoked role takes effect
//! within that time plus the SAR's own latency) and refreshed ahead while in use (`cache`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::Principal;
use events::access::ResourceCheck;
use events::crd::runner::RunnerPod;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::cache::TtlCache;

const MAX_CACHE: usize = 200_000;

/// The API server could not decide.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthzError(String);

type Key = (Principal, ResourceCheck);

/// A runner pod: its namespace, name and uid.
type PodKey = (String, String, String);

/// SubjectAccessReviews with a short cache, and the sessions of runner pods.
pub struct Authorizer {
    client: kube::Client,
    cache: Arc<TtlCache<Key, bool>>,
    /// The session each runner pod (by uid) belongs to, `None` for a pod that is no runner's.
    pods: Arc<TtlCache<PodKey, Option<String>>>,
}

/// How long a pod's session is remembered. A pod's labels and owner are not a tenant's to change
/// (no project role may write pods), and its deletion ends its token at the API server itself.
const POD_TTL: Duration = Duration::from_secs(300);

impl Authorizer {
    /// A new authorizer using the api's client (which needs `create subjectaccessreviews` and
    /// `get pods`).
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self {
            client,
            cache: Arc::new(TtlCache::new(ttl, MAX_CACHE)),
            pods: Arc::new(TtlCache::new(POD_TTL, MAX_CACHE)),
        }
    }

    /// Whether `who` is session `session`'s runner in `project`: a token bound to a pod of the
    /// session's Job (the pod read once and remembered by uid), or anyone else allowed `update
    /// agenticsessions/status` on the session (a cluster admin; the per-session runner
    /// ServiceAccount of a session started before runners shared one).
    pub async fn runs(&self, who: &Principal, project: &str, session: &str) -> Result<bool, AuthzError> {
        let Some(pod) = RunnerPod::of(who) else {
            return self.allowed(who, &ResourceCheck::session_status(project, session)).await;
        };
        if pod.project != project || !pod.could_run(session) {
            return Ok(false);
        }
        let key = (pod.project.to_string(), pod.name.to_string(), pod.uid.to_string());
        let read = || {
            let (client, key) = (self.client.clone(), key.clone());
            async move { pod_session(&client, &key).await }
        };
        let of = match self.pods.get(&key, read) {
            Some(of) => of,
            None => {
                let asked = Instant::now();
                let of = read().await?;
                self.pods.insert(key, of.clone(), asked);
                of
            }
        };
        Ok(of.as_deref() == Some(session))
    }

    /// Whether `who` may do `check`.
    pub async fn allowed(&self, who: &Principal, check: &ResourceCheck) -> Result<bool, AuthzError> {
        let key = (who.clone(), check.clone());
        let client = &self.client;
        if let Some(allowed) = self.cache.get(&key, || {
            let (client, (who, check)) = (client.clone(), key.clone());
            async move { review(&client, &who, &check).await }
        }) {
            return Ok(allowed);
        }
        let asked = Instant::now();
        let allowed = review(client, who, check).await?;
        self.cache.insert(key, allowed, asked);
        Ok(allowed)
    }

    /// Waits up to `within` for the API server to allow `check`, asking it each time rather than
    /// the cache; whether it did. Used right after our own write granted the access: the API
    /// server's authorizer follows RoleBindings through its own watch, so it may refuse for a
    /// moment after they exist, and the caller should not see that moment. Only a yes is cached:
    /// a no at the deadline must not outlive RBAC catching up.
    pub async fn wait_allowed(
        &self,
        who: &Principal,
        check: &ResourceCheck,
        within: Duration,
    ) -> Result<bool, AuthzError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let asked = Instant::now();
            if review(&self.client, who, check).await? {
                self.cache.insert((who.clone(), check.clone()), true, asked);
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether an authorizer explicitly denies `who` the check (`events::access::is_denied`).
    /// Not cached: it guards project creation only, which is rare and rate-limited.
    pub async fn denied(&self, who: &Principal, check: &ResourceCheck) -> Result<bool, AuthzError> {
        let res = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &check.review_for(who))
            .await
            .map_err(|e| AuthzError(e.to_string()))?;
        Ok(events::access::is_denied(res.status.as_ref()))
    }

    /// Whether every check is allowed (evaluated concurrently).
    pub async fn all_allowed(&self, who: &Principal, checks: &[ResourceCheck]) -> Result<bool, AuthzError> {
        let res = futures::future::try_join_all(checks.iter().map(|c| self.allowed(who, c))).await?;
        Ok(res.into_iter().all(|a| a))
    }
}

/// The session whose runner pod `key` is, read from the pod itself.
async fn pod_session(client: &kube::Client, (ns, name, uid): &PodKey) -> Result<Option<String>, AuthzError> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get_opt(name).await.map_err(|e| AuthzError(e.to_string()))?;
    Ok(pod.and_then(|p| session_of_pod(&p, uid).map(String::from)))
}

/// The session `pod` runs, when it is the pod of uid `uid` that the Job controller made for a
/// session's Job under the runner ServiceAccount: its session label, its controlling Job and its
/// name must all agree.
fn session_of_pod<'a>(pod: &'a Pod, uid: &str) -> Option<&'a str> {
    use events::crd::runner::{SERVICE_ACCOUNT, SESSION_LABEL, could_be_pod_of, job_name};
    let session = pod.metadata.labels.as_ref()?.get(SESSION_LABEL)?.as_str();
    let controller = pod.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    let runs = pod.metadata.uid.as_deref() == Some(uid)
        && pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()) == Some(SERVICE_ACCOUNT)
        && controller.api_version == "batch/v1"
        && controller.kind == "Job"
        && controller.name == job_name(session)
        && could_be_pod_of(pod.metadata.name.as_deref()?, session);
    runs.then_some(session)
}

async fn review(client: &kube::Client, who: &Principal, check: &ResourceCheck) -> Result<bool, AuthzError> {
    let res = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &check.review_for(who))
        .await
        .map_err(|e| AuthzError(e.to_string()))?;
    let allowed = events::access::is_allowed(res.status.as_ref());
    metrics::counter!("ambient_api_access_reviews_total", "allowed" => allowed.to_string()).increment(1);
    Ok(allowed)
}

/// A check in `namespace` on one of our resources.
pub fn check(
    namespace: &str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    name: Option<&str>,
) -> ResourceCheck {
    ResourceCheck { namespace: namespace.into(), verb, group, resource, subresource: None, name: name.map(Into::into) }
}

/// The check that makes a project visible: `get projectsettings/projectsettings`.
pub fn project_visible(namespace: &str) -> ResourceCheck {
    check(namespace, "get", events::crd::GROUP, "projectsettings", Some(events::crd::PROJECT_SETTINGS_NAME))
}

/// Rolebindings group.
pub const RBAC: &str = "rbac.authorization.k8s.io";

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn pod(name: &str, session: &str, sa: &str, owner: (&str, &str, bool)) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some("u-1".into()),
                labels: Some([("agentic-session".to_string(), session.to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: owner.0.into(),
                    name: owner.1.into(),
                    uid: "j-1".into(),
                    controller: Some(owner.2),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec { service_account_name: Some(sa.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_runner_pod_is_a_pod_of_its_sessions_job() {
        let sa = "ambient-runner";
        let job = ("Job", "demo-job", true);
        assert_eq!(session_of_pod(&pod("demo-job-x7k2p", "demo", sa, job), "u-1"), Some("demo"));
        let refused = [
            // Another pod with the same name (recreated): another uid.
            (pod("demo-job-x7k2p", "demo", sa, job), "u-2"),
            // Another ServiceAccount.
            (pod("demo-job-x7k2p", "demo", "default", job), "u-1"),
            // Not owned by the session's Job, or not controlled by it.
            (pod("demo-job-x7k2p", "demo", sa, ("Job", "other-job", true)), "u-1"),
            (pod("demo-job-x7k2p", "demo", sa, ("ReplicaSet", "demo-job", true)), "u-1"),
            (pod("demo-job-x7k2p", "demo", sa, ("Job", "demo-job", false)), "u-1"),
            // A label naming another session than its Job and name do.
            (pod("demo-job-x7k2p", "other", sa, job), "u-1"),
            // A name the Job controller would not give.
            (pod("demo-runner", "demo", sa, job), "u-1"),
        ];
        for (p, uid) in &refused {
            assert_eq!(session_of_pod(p, uid), None, "{:?}", p.metadata);
        }
    }
}
