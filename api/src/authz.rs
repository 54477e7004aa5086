//! Authorization: a SubjectAccessReview for the reviewed identity (user, uid, groups) on the
//! resource and verb a route touches, cached for a short time (so a revoked role takes effect
//! within that time plus the SAR's own latency) and refreshed ahead while in use (`cache`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::Principal;
use events::access::ResourceCheck;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};

use crate::cache::TtlCache;

const MAX_CACHE: usize = 200_000;

/// The API server could not decide.
#[derive(Debug, thiserror::Error)]
#[error("the SubjectAccessReview failed")]
pub struct AuthzError(#[from] kube::Error);

type Key = (Principal, ResourceCheck);

/// SubjectAccessReviews with a short cache.
pub struct Authorizer {
    client: kube::Client,
    cache: Arc<TtlCache<Key, bool>>,
}

impl Authorizer {
    /// A new authorizer using the api's client (which needs `create subjectaccessreviews`).
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self { client, cache: Arc::new(TtlCache::new(ttl, MAX_CACHE)) }
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
            .await?;
        Ok(events::access::is_denied(res.status.as_ref()))
    }

    /// Whether every check is allowed (evaluated concurrently).
    pub async fn all_allowed(&self, who: &Principal, checks: &[ResourceCheck]) -> Result<bool, AuthzError> {
        let res = futures::future::try_join_all(checks.iter().map(|c| self.allowed(who, c))).await?;
        Ok(res.into_iter().all(|a| a))
    }
}

async fn review(client: &kube::Client, who: &Principal, check: &ResourceCheck) -> Result<bool, AuthzError> {
    let res =
        Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &check.review_for(who)).await?;
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
