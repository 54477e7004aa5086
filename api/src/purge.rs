//! Session messages outlive nothing: the messages of deleted sessions are purged, and each
//! project's message budget recounted, by every api replica (purging is idempotent).

use std::sync::Arc;
use std::time::Duration;

use events::crd::AgenticSession;
use kube::api::Api;
use tokio::sync::mpsc;

use crate::reads::SessionsChange;
use crate::state::AppState;

/// How often every api replica sweeps the messages of sessions that no longer exist (catches an
/// append that raced the session's deletion).
const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

/// Purges the messages of deleted sessions: on each deletion the sessions watch reports, and
/// after each (re)list of it and every [`SWEEP_EVERY`], those of every session that no longer
/// exists. Purging is idempotent, so every api replica runs this.
pub async fn run_purger(st: Arc<AppState>, mut changes: mpsc::UnboundedReceiver<SessionsChange>) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.tick().await;
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = sweep.tick() => sweep_orphans(&st).await,
            change = changes.recv() => match change {
                None => return,
                Some(SessionsChange::Relisted) => sweep_orphans(&st).await,
                Some(SessionsChange::Deleted { namespace, name }) => match st.messages.purge(&namespace, &name).await {
                    Ok(n) => tracing::info!(project = %namespace, session = %name, purged = n, "session deleted: messages purged"),
                    Err(e) => tracing::warn!(project = %namespace, session = %name, error = %e, "purging a deleted session's messages failed; the next sweep retries"),
                },
            },
        }
    }
}

/// Purges the messages of every session that exists neither in the watch cache nor, asked
/// directly, in the API server (so a cache that lags a brand-new session purges nothing), and
/// recounts each project's budget from what its sessions hold.
async fn sweep_orphans(st: &AppState) {
    let subjects = match st.messages.sessions_with_messages().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "listing session message subjects failed; sweep skipped");
            return;
        }
    };
    let mut by_project: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for (p, s) in subjects {
        by_project.entry(p).or_default().push(s);
    }
    match st.messages.budgets().projects().await {
        Ok(projects) => projects.into_iter().for_each(|p| {
            by_project.entry(p).or_default();
        }),
        Err(e) => tracing::warn!(error = %e, "listing message budgets failed"),
    }
    for (p, sessions) in by_project {
        // A busy project's counter moves while it is counted; a few quick tries usually find a
        // quiet moment (the purges are done by the first).
        for _ in 0..RECOUNT_TRIES {
            match recount_project(st, &p, &sessions).await {
                Recount::Same | Recount::Unknown => break,
                Recount::Corrected { was, now } => {
                    tracing::info!(project = %p, was, now, "message budget recounted");
                    break;
                }
                Recount::Raced => continue,
            }
        }
    }
}

/// Tries per project and sweep to recount a counter that keeps moving.
const RECOUNT_TRIES: usize = 5;

/// How a recount went.
enum Recount {
    /// The counter was right.
    Same,
    /// It was `was`, it is `now`.
    Corrected { was: u64, now: u64 },
    /// An append or purge moved it during the count: not trusted.
    Raced,
    /// A read failed (logged).
    Unknown,
}

/// Counts what `p`'s sessions hold (purging what should not be kept) and corrects its counter.
async fn recount_project(st: &AppState, p: &str, sessions: &[String]) -> Recount {
    // Taken before counting: an append or purge during the count changes it.
    let seen = match st.messages.budgets().snapshot(p).await {
        Ok(seen) => seen,
        Err(e) => {
            tracing::warn!(project = %p, error = %e, "reading a message budget failed");
            return Recount::Unknown;
        }
    };
    let mut counted = Some(0u64);
    for s in sessions {
        let held = sweep_session(st, p, s).await;
        counted = counted.zip(held).map(|(a, b)| a.saturating_add(b));
    }
    let Some(counted) = counted else { return Recount::Unknown };
    let was = seen.map_or(0, |s| s.1);
    if was == counted {
        return Recount::Same;
    }
    match st.messages.budgets().recount(p, seen, counted).await {
        Ok(true) => Recount::Corrected { was, now: counted },
        Ok(false) => Recount::Raced,
        Err(e) => {
            tracing::warn!(project = %p, error = %e, "recounting a message budget failed");
            Recount::Unknown
        }
    }
}

/// Purges what should not be kept of one session's messages; the bytes it holds after (`None`
/// when unknown).
async fn sweep_session(st: &AppState, p: &str, s: &str) -> Option<u64> {
    if let Some(inc) = st.reads.session_incarnation(p, s) {
        // The session exists: purge only what an earlier session of its name left.
        return match st.messages.purge_foreign(p, s, &inc).await {
            Ok((0, held)) => Some(held),
            Ok((n, held)) => {
                tracing::info!(project = %p, session = %s, purged = n, "messages of an earlier session of this name purged");
                Some(held)
            }
            Err(e) => {
                tracing::warn!(project = %p, session = %s, error = %e, "purging an earlier session's messages failed");
                None
            }
        };
    }
    match Api::<AgenticSession>::namespaced(st.kube.clone(), p).get_opt(s).await {
        Ok(None) => match st.messages.purge(p, s).await {
            Ok(n) => {
                tracing::info!(project = %p, session = %s, purged = n, "messages of a missing session purged");
                Some(0)
            }
            Err(e) => {
                tracing::warn!(project = %p, session = %s, error = %e, "purging messages failed");
                None
            }
        },
        // Just created (the cache lags): counted at the next sweep.
        Ok(Some(_)) => None,
        Err(e) => {
            tracing::warn!(project = %p, session = %s, error = %e, "session lookup failed; not purged");
            None
        }
    }
}
