//! Authorization: a SubjectAccessReview for the reviewed identity (user, uid, groups) on the
//! resource and verb a route touches, cached for a short time (so a revoked role takes effect
//! within that time plus the SAR's own latency).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use events::Principal;
use events::access::ResourceCheck;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};

const MAX_CACHE: usize = 200_000;

/// The API server could not decide.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthzError(String);

#[derive(Hash, PartialEq, Eq, Clone)]
struct Key {
    user: String,
    uid: String,
    groups: Vec<String>,
    namespace: String,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    name: Option<String>,
}

impl Key {
    fn new(who: &Principal, check: &ResourceCheck) -> Self {
        Key {
            user: who.user.clone(),
            uid: who.uid.clone(),
            groups: who.groups.clone(),
            namespace: check.namespace.clone(),
            verb: check.verb,
            group: check.group,
            resource: check.resource,
            subresource: check.subresource,
            name: check.name.clone(),
        }
    }
}

/// SubjectAccessReviews with a short cache.
pub struct Authorizer {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<Key, (Instant, bool)>>,
}

impl Authorizer {
    /// A new authorizer using the api's client (which needs `create subjectaccessreviews`).
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self { client, ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether `who` may do `check`.
    pub async fn allowed(&self, who: &Principal, check: &ResourceCheck) -> Result<bool, AuthzError> {
        let key = Key::new(who, check);
        if let Ok(c) = self.cache.lock()
            && let Some((at, v)) = c.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(*v);
        }
        let allowed = self.review(who, check).await?;
        self.remember(key, allowed);
        Ok(allowed)
    }

    /// Waits up to `within` for the API server to allow `check`, asking it each time rather than
    /// the cache; whether it did. Used right after our own write granted the access: the API
    /// server's authorizer follows RoleBindings through its own watch, so it may refuse for a
    /// moment after they exist, and the caller must not see that moment.
    pub async fn wait_allowed(&self, who: &Principal, check: &ResourceCheck, within: Duration) -> Result<bool, AuthzError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let allowed = self.review(who, check).await?;
            if allowed || tokio::time::Instant::now() >= deadline {
                self.remember(Key::new(who, check), allowed);
                return Ok(allowed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn review(&self, who: &Principal, check: &ResourceCheck) -> Result<bool, AuthzError> {
        let sar = check.review_for(who);
        let res = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| AuthzError(e.to_string()))?;
        let allowed = events::access::is_allowed(res.status.as_ref());
        metrics::counter!("ambient_api_access_reviews_total", "allowed" => allowed.to_string()).increment(1);
        Ok(allowed)
    }

    fn remember(&self, key: Key, allowed: bool) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHE {
                c.clear();
            }
            c.insert(key, (Instant::now(), allowed));
        }
    }

    /// Whether every check is allowed (evaluated concurrently).
    pub async fn all_allowed(&self, who: &Principal, checks: &[ResourceCheck]) -> Result<bool, AuthzError> {
        let res = futures::future::try_join_all(checks.iter().map(|c| self.allowed(who, c))).await?;
        Ok(res.into_iter().all(|a| a))
    }
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
