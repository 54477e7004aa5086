//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder projects (two
//! projectors would race on the read model). Writes use the Lease's resourceVersion, so two
//! candidates cannot both take it.
//!
//! Two leaders at once are prevented by time on each side, as client-go's election does, and
//! never by comparing clocks of two machines:
//! - a candidate counts a Lease as expired only once it has seen the same record
//!   (resourceVersion) for the whole lease duration on its own monotonic clock; the holder's
//!   renew time, stamped by another machine's clock, is never compared with ours, so no clock
//!   skew can make a live holder's Lease look expired;
//! - the holder stops leading once its last successful renewal is older than the renew
//!   deadline (two thirds of the duration), and every API call is bounded by a timeout, so a
//!   hung call cannot keep it leading past that deadline. The third left over is the margin
//!   for the two monotonic clocks' rates and the API server's latency.

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

impl LeaseConfig {
    /// How often the holder of a lease of `duration` renews it: every tenth of it, so that
    /// several bounded attempts fit before the renew deadline.
    pub fn renew_every(duration: Duration) -> Duration {
        (duration / 10).max(Duration::from_millis(200))
    }

    /// Each API call's bound (a fifth of the duration: 3 s for the default 15 s).
    pub fn call_timeout(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(300))
    }

    /// How long after its last successful renewal the holder stops leading.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
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

/// Whether `identity` may hold `spec`, having seen this very record unchanged for
/// `unchanged_for` (on the local monotonic clock).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else { return Decision::Take { transition: true } };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Decision::Take { transition: true };
    }
    if holder == identity {
        return Decision::Take { transition: false };
    }
    let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(15).max(1)).unwrap_or(15);
    // A released Lease (no renew time) is free at once.
    let expired = spec.renew_time.is_none() || unchanged_for >= Duration::from_secs(secs);
    if expired { Decision::Take { transition: true } } else { Decision::Held(holder.to_string()) }
}

/// Lease API failure.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused or could not be reached.
    #[error("lease {name}: {source}")]
    Api {
        /// Lease name.
        name: String,
        /// The call's error.
        #[source]
        source: kube::Error,
    },
    /// The call did not finish within its bound.
    #[error("lease {name}: no answer within {after:?}")]
    TimedOut {
        /// Lease name.
        name: String,
        /// The bound.
        after: Duration,
    },
}

/// The record a candidate watches for change: the Lease's resourceVersion, and since when (on
/// the monotonic clock) it has been the same.
#[derive(Debug, Default)]
pub struct Observed(Option<(String, tokio::time::Instant)>);

impl Observed {
    /// Notes the version seen now; how long it has been unchanged.
    fn note(&mut self, version: Option<&str>) -> Duration {
        let now = tokio::time::Instant::now();
        let Some(version) = version else {
            self.0 = None;
            return Duration::ZERO;
        };
        match &self.0 {
            Some((v, since)) if v == version => now - *since,
            _ => {
                self.0 = Some((version.to_string(), now));
                Duration::ZERO
            }
        }
    }
}

/// One attempt to take or renew the lease, bounded by the call timeout; `Ok(true)` when we
/// hold it afterwards.
pub async fn try_hold(api: &Api<Lease>, cfg: &LeaseConfig, seen: &mut Observed) -> Result<bool, LeaseError> {
    match tokio::time::timeout(cfg.call_timeout(), hold(api, cfg, seen)).await {
        Ok(r) => r,
        Err(_) => Err(LeaseError::TimedOut { name: cfg.name.clone(), after: cfg.call_timeout() }),
    }
}

async fn hold(api: &Api<Lease>, cfg: &LeaseConfig, seen: &mut Observed) -> Result<bool, LeaseError> {
    let err = |source| LeaseError::Api { name: cfg.name.clone(), source };
    let now = Timestamp::now();
    let existing = api.get_opt(&cfg.name).await.map_err(err)?;
    let unchanged_for = seen.note(existing.as_ref().and_then(|l| l.metadata.resource_version.as_deref()));
    let decision = decide(existing.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, unchanged_for);
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
/// token is cancelled when leadership is lost (or `shutdown` fires). The caller sets the
/// `projector_leader` gauge to 1 once it starts leading; it is 0 while waiting and once lost.
pub async fn acquire(api: Api<Lease>, cfg: LeaseConfig, shutdown: CancellationToken) -> Option<CancellationToken> {
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "waiting for leadership");
    metrics::gauge!("projector_leader").set(0.0);
    let mut seen = Observed::default();
    loop {
        match try_hold(&api, &cfg, &mut seen).await {
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
    let lost = shutdown.child_token();
    let token = lost.clone();
    tokio::spawn(async move {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(cfg.renew_every) => {}
            }
            let attempt = tokio::time::Instant::now();
            match try_hold(&api, &cfg, &mut seen).await {
                // Counted from the attempt's start: the API server may have written it then.
                Ok(true) => last_renewed = attempt,
                Ok(false) => {
                    tracing::error!(lease = %cfg.name, "leadership lost to another instance");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    // Stop before another instance may count the lease as expired: the next
                    // attempt, bounded, must end before the renew deadline.
                    if last_renewed.elapsed() + cfg.renew_every + cfg.call_timeout() >= cfg.renew_deadline() {
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
    let Ok(Ok(Some(mut lease))) = tokio::time::timeout(cfg.call_timeout(), api.get_opt(&cfg.name)).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match tokio::time::timeout(cfg.call_timeout(), api.replace(&cfg.name, &PostParams::default(), &lease)).await {
        Ok(Ok(_)) => tracing::info!(lease = %cfg.name, "leadership released"),
        Ok(Err(e)) => {
            tracing::warn!(lease = %cfg.name, error = %e, "could not release the lease; it expires by itself")
        }
        Err(_) => tracing::warn!(lease = %cfg.name, "releasing the lease timed out; it expires by itself"),
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
        let fresh = Duration::ZERO;
        let take = Decision::Take { transition: true };
        let released = LeaseSpec { renew_time: None, ..spec("b", 1) };
        let cases = [
            (None, fresh, take.clone()),
            (Some(spec("a", 1)), fresh, Decision::Take { transition: false }),
            (Some(spec("b", 1)), fresh, Decision::Held("b".into())),
            (Some(spec("", 1)), fresh, take.clone()),
            (Some(released), fresh, take.clone()),
            // Seen unchanged for the whole duration on our own clock: expired, whatever the
            // renew time says (the holder's clock may run ahead of ours)...
            (Some(spec("b", -600)), Duration::from_secs(15), take.clone()),
            (Some(spec("b", 1)), Duration::from_secs(14), Decision::Held("b".into())),
            // ...and never by the renew time alone: our clock may run ahead of the holder's.
            (Some(spec("b", 3600)), fresh, Decision::Held("b".into())),
            (Some(spec("b", 3600)), Duration::from_secs(15), take),
        ];
        for (i, (spec, unchanged_for, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(spec.as_ref(), "a", unchanged_for), want, "case {i}");
        }
    }

    #[test]
    fn the_holder_gives_up_before_a_candidate_may_take_over() {
        for secs in [3, 15, 60] {
            let cfg = LeaseConfig {
                name: "l".into(),
                namespace: "n".into(),
                identity: "a".into(),
                duration: Duration::from_secs(secs),
                renew_every: LeaseConfig::renew_every(Duration::from_secs(secs)),
                retry_every: Duration::from_secs(1),
            };
            // The latest the holder can still believe it leads: its deadline plus one bounded
            // call; a candidate needs the whole duration of an unchanged record.
            assert!(cfg.renew_deadline() + cfg.call_timeout() < cfg.duration, "{secs} s");
            // At least one renewal fits before the deadline after a failed one.
            assert!(2 * (cfg.renew_every + cfg.call_timeout()) <= cfg.renew_deadline(), "{secs} s");
        }
    }

    #[test]
    fn a_record_counts_as_unchanged_from_when_it_was_first_seen() {
        let mut seen = Observed::default();
        assert_eq!(seen.note(Some("1")), Duration::ZERO);
        assert!(seen.note(Some("1")) < Duration::from_secs(1));
        assert_eq!(seen.note(Some("2")), Duration::ZERO);
        assert_eq!(seen.note(None), Duration::ZERO);
    }
}
