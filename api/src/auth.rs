//! Authentication: the bearer token (`Authorization: Bearer`, or `X-Forwarded-Access-Token` set
//! by an OAuth proxy) is reviewed by the API server (TokenReview). The identity comes only from
//! that review: forwarded user or group headers are ignored. Reviews are cached by the token's
//! SHA-256 for a few seconds, in bounded caches (see `cache`); the token itself is never logged
//! or cached, only held by the task that reviews it.
//!
//! Rejected tokens are remembered in a cache of their own (shorter-lived, see `Authenticator`),
//! so a flood of bogus tokens costs one TokenReview per distinct token and never evicts the
//! reviews of valid ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use events::Principal;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::cache::TtlCache;
use crate::errors::ApiError;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who the API server says the token belongs to.
    pub principal: Principal,
    /// SHA-256 of the token (hex), to key per-token state without keeping the token.
    pub token_hash: String,
}

/// The cached outcome of a TokenReview.
#[derive(Clone)]
enum Review {
    Authenticated(Principal),
    Rejected,
}

/// Sizes and lifetimes of the authentication caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// How long a valid token's review is served.
    pub ttl: Duration,
    /// Most valid tokens remembered.
    pub max: usize,
    /// How long a rejected token is remembered.
    pub rejected_ttl: Duration,
    /// Most rejected tokens remembered.
    pub rejected_max: usize,
}

/// TokenReview with short, bounded caches: one for tokens the API server authenticated
/// (refreshed ahead while in use, see `cache`) and one, not refreshed, for tokens it rejected.
/// Only reviews that authenticated enter the first (a refresh of one may find it rejected), so
/// no number of bogus tokens evicts a valid token's review.
pub struct Authenticator {
    client: kube::Client,
    valid: Arc<TtlCache<[u8; 32], Review>>,
    rejected: TtlCache<[u8; 32], ()>,
}

impl Authenticator {
    /// A new authenticator using the api's own client (which needs `create tokenreviews`).
    pub fn new(client: kube::Client, limits: CacheLimits) -> Self {
        Self {
            client,
            valid: Arc::new(TtlCache::new(limits.ttl, limits.max)),
            rejected: TtlCache::new(limits.rejected_ttl, limits.rejected_max),
        }
    }

    /// Whether `token` has a live, authenticated review in the cache: its request will make no
    /// TokenReview (nothing is reviewed or refreshed here).
    pub fn known_valid(&self, token: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        matches!(self.valid.peek(&hash), Some(Review::Authenticated(_)))
    }

    /// Reviews `token`; `Ok(None)` when the API server does not authenticate it.
    pub async fn review(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.valid.get(&hash, || {
            // A refresh holds the token only until its review returns.
            let (client, token) = (self.client.clone(), token.to_string());
            async move { counted_review(&client, &token).await }
        });
        let review = match cached {
            Some(r) => r,
            None if self.rejected.peek(&hash).is_some() => Review::Rejected,
            None => {
                let asked = Instant::now();
                let r = counted_review(&self.client, token).await?;
                match &r {
                    Review::Authenticated(_) => self.valid.insert(hash, r.clone(), asked),
                    Review::Rejected => self.rejected.insert(hash, (), asked),
                }
                r
            }
        };
        Ok(match review {
            Review::Authenticated(p) => Some(p),
            Review::Rejected => None,
        })
    }
}

/// A TokenReview, counted in `ambient_api_token_reviews_total{result}`.
async fn counted_review(client: &kube::Client, token: &str) -> Result<Review, ApiError> {
    let r = token_review(client, token).await;
    let result = match &r {
        Ok(Review::Authenticated(_)) => "authenticated",
        Ok(Review::Rejected) => "rejected",
        Err(_) => "error",
    };
    metrics::counter!("ambient_api_token_reviews_total", "result" => result).increment(1);
    r
}

async fn token_review(client: &kube::Client, token: &str) -> Result<Review, ApiError> {
    let tr = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
        ..Default::default()
    };
    let res = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &tr)
        .await
        .map_err(|e| ApiError::kube("token review", &e))?;
    let status = res.status.unwrap_or_default();
    Ok(match (status.authenticated, status.user) {
        (Some(true), Some(u)) if u.username.as_deref().is_some_and(|n| !n.is_empty()) => {
            Review::Authenticated(Principal {
                user: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                // Token scopes and other authenticator attributes: every review must carry them.
                extra: u.extra.unwrap_or_default(),
            })
        }
        _ => Review::Rejected,
    })
}

/// The bearer token of a request: `Authorization: Bearer …` first, else
/// `X-Forwarded-Access-Token`.
pub fn bearer_token(parts: &Parts) -> Option<String> {
    let auth = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(v) = auth {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            let t = v[7..].trim();
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    parts
        .headers
        .get("x-forwarded-access-token")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        let req = axum::http::Request::builder()
            .header("authorization", "Bearer abc")
            .header("x-forwarded-access-token", "def")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(bearer_token(&parts).as_deref(), Some("abc"));
        let req = axum::http::Request::builder().header("x-forwarded-access-token", "def").body(()).unwrap();
        assert_eq!(bearer_token(&req.into_parts().0).as_deref(), Some("def"));
        let req = axum::http::Request::builder().header("authorization", "Basic xyz").body(()).unwrap();
        assert_eq!(bearer_token(&req.into_parts().0), None);
    }
}
