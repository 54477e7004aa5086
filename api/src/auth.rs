//! Authentication: the bearer token (`Authorization: Bearer`, or `X-Forwarded-Access-Token` set
//! by an OAuth proxy) is reviewed by the API server (TokenReview). The identity comes only from
//! that review: forwarded user or group headers are ignored. Reviews are cached by the token's
//! SHA-256 for a few seconds, in a bounded cache (see `cache`); the token itself is never logged
//! or cached, only held by the task that reviews it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use events::Principal;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::cache::TtlCache;
use crate::errors::ApiError;
use crate::state::AppState;

const MAX_CACHE: usize = 10_000;

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

/// TokenReview with a short, bounded cache (refreshed ahead while in use, see `cache`).
pub struct Authenticator {
    client: kube::Client,
    cache: Arc<TtlCache<[u8; 32], Review>>,
}

impl Authenticator {
    /// A new authenticator using the api's own client (which needs `create tokenreviews`).
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self { client, cache: Arc::new(TtlCache::new(ttl, MAX_CACHE)) }
    }

    /// Reviews `token`; `Ok(None)` when the API server does not authenticate it.
    pub async fn review(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.cache.get(&hash, || {
            // A refresh holds the token only until its review returns.
            let (client, token) = (self.client.clone(), token.to_string());
            async move { token_review(&client, &token).await }
        });
        let review = match cached {
            Some(r) => r,
            None => {
                let asked = Instant::now();
                let r = token_review(&self.client, token).await?;
                self.cache.insert(hash, r.clone(), asked);
                r
            }
        };
        Ok(match review {
            Review::Authenticated(p) => Some(p),
            Review::Rejected => None,
        })
    }
}

async fn token_review(client: &kube::Client, token: &str) -> Result<Review, ApiError> {
    let tr = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
        ..Default::default()
    };
    let res = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &tr)
        .await
        .map_err(|e| ApiError::Unavailable(format!("token review failed: {}", redact_kube_error(&e))))?;
    let status = res.status.unwrap_or_default();
    Ok(match (status.authenticated, status.user) {
        (Some(true), Some(u)) if u.username.as_deref().is_some_and(|n| !n.is_empty()) => Review::Authenticated(Principal {
            user: u.username.unwrap_or_default(),
            uid: u.uid.unwrap_or_default(),
            groups: u.groups.unwrap_or_default(),
            // Token scopes and other authenticator attributes: every review must carry them.
            extra: u.extra.unwrap_or_default(),
        }),
        _ => Review::Rejected,
    })
}


/// A kube error without any request detail (the TokenReview body holds the token).
fn redact_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        _ => "API server unreachable".into(),
    }
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

/// Per-principal token buckets.
pub struct RateLimiter {
    rps: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rps` sustained, `burst` at most.
    pub fn new(rps: f64, burst: f64) -> Self {
        Self { rps: rps.max(0.001), burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `who`; `Err(seconds to wait)` when the bucket is empty.
    pub fn take(&self, who: &str) -> Result<(), u64> {
        let Ok(mut b) = self.buckets.lock() else { return Ok(()) };
        if b.len() > 100_000 {
            b.clear();
        }
        let now = Instant::now();
        let (tokens, last) = b.entry(who.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rps).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rps).ceil() as u64)
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let token = bearer_token(parts).ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        let token_hash = hex(&Sha256::digest(token.as_bytes()));
        let principal = state
            .auth
            .review(&token)
            .await?
            .ok_or(ApiError::Unauthenticated("the token is invalid or expired"))?;
        state
            .limiter
            .take(&principal.user)
            .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
        state.reads.note_key_use(&principal).await;
        let caller = Caller { principal, token_hash };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
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

    #[test]
    fn bucket_limits_and_refills() {
        let l = RateLimiter::new(1000.0, 3.0);
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_err());
        assert!(l.take("b").is_ok());
        std::thread::sleep(Duration::from_millis(5));
        assert!(l.take("a").is_ok());
        let slow = RateLimiter::new(0.5, 1.0);
        assert!(slow.take("x").is_ok());
        assert_eq!(slow.take("x"), Err(2));
    }
}
