//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder projects (two
//! projectors would race on the read model). Writes use the Lease's resourceVersion, so two
//! candidates cannot both take it. A holder that cannot renew in time stops projecting.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Who we are (pod name or hostname, plus pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a standby tries to take the lease.
    pub retry_every: Duration,
}

/// What a look at the Lease decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take (or keep) it: write it with us as holder.
    Take {
        /// The holder changes (count a transition).
        transition: bool,
    },
    /// Someone else holds it.
    Held(String),
}

/// Whether `identity` may hold `spec` at `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else { return Decision::Take { transition: true } };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Decision::Take { transition: true };
    }
    if holder == identity {
        return Decision::Take { transition: false };
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match &spec.renew_time {
        Some(t) => t.0.as_second() + secs < now.as_second(),
        None => true,
    };
    if expired { Decision::Take { transition: true } } else { Decision::Held(holder.to_string()) }
}

/// Lease API failure.
#[derive(Debug, thiserror::Error)]
#[error("lease {name}: {source}")]
pub struct LeaseError {
    name: String,
    #[source]
    source: kube::Error,
}

/// One attempt to take or renew the lease; `Ok(true)` when we hold it afterwards.
pub async fn try_hold(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, LeaseError> {
    let err = |source| LeaseError { name: cfg.name.clone(), source };
    let now = Timestamp::now();
    let existing = api.get_opt(&cfg.name).await.map_err(err)?;
    let decision = decide(existing.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, now);
    let transition = match decision {
        Decision::Held(_) => return Ok(false),
        Decision::Take { transition } => transition,
    };
    let old = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs().max(1) as i32),
        acquire_time: if transition { Some(MicroTime(now)) } else { old.acquire_time.clone() },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(old.lease_transitions.unwrap_or(0) + i32::from(transition && existing.is_some())),
        ..Default::default()
    };
    let result = match existing {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // Carries the resourceVersion we decided on: a concurrent writer makes this a 409.
            lease.spec = Some(spec);
            api.replace(&cfg.name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Waits until we hold the lease, then keeps renewing it in the background; the returned
/// token is cancelled when leadership is lost (or `shutdown` fires).
pub async fn acquire(api: Api<Lease>, cfg: LeaseConfig, shutdown: CancellationToken) -> Option<CancellationToken> {
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "waiting for leadership");
    loop {
        match try_hold(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lease attempt failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(cfg.retry_every) => {}
        }
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "leadership acquired");
    metrics::gauge!("projector_leader").set(1.0);
    let lost = shutdown.child_token();
    let token = lost.clone();
    tokio::spawn(async move {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(cfg.renew_every) => {}
            }
            match try_hold(&api, &cfg).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %cfg.name, "leadership lost to another instance");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    // Stop before the lease can expire under us: another instance may take it.
                    if last_renewed.elapsed() + cfg.renew_every >= cfg.duration {
                        tracing::error!(lease = %cfg.name, "could not renew the lease in time");
                        break;
                    }
                }
            }
        }
        metrics::gauge!("projector_leader").set(0.0);
        lost.cancel();
    });
    Some(token)
}

/// Gives the lease up (on a graceful shutdown), so that a standby takes over at once.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else { return };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "leadership released"),
        Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "could not release the lease; it expires by itself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::now().as_second();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(now - renewed_secs_ago).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Take { transition: true });
        assert_eq!(decide(Some(&spec("a", 1)), "a", now), Decision::Take { transition: false });
        assert_eq!(decide(Some(&spec("b", 1)), "a", now), Decision::Held("b".into()));
        assert_eq!(decide(Some(&spec("b", 60)), "a", now), Decision::Take { transition: true });
        assert_eq!(decide(Some(&spec("", 1)), "a", now), Decision::Take { transition: true });
    }
}
