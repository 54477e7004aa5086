//! Which replica consumes which command partition.
//!
//! Every replica writes its id into the key-value bucket `ambient-reconcilers` every
//! [`BEAT`] (entries expire after [`MEMBER_TTL`]), and the partitions are dealt
//! round-robin over the sorted live ids: N replicas share them evenly and deal again when one
//! joins or leaves. A replica consumes only its own partitions and hands the others over
//! (unpins them) at once. While views differ for a moment, the partition consumers' pinned-client
//! group still lets only one replica receive from a partition, and the ordering check
//! ([`crate::order`]) keeps per-object order across the change of hands. When the bucket cannot
//! be read, a replica consumes every partition (the pinned client alone decides, as with one
//! replica).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The membership bucket.
pub const MEMBERS_BUCKET: &str = "ambient-reconcilers";

/// The partitions `me` consumes when `members` are alive: round-robin over their sorted ids
/// (`me` counts as alive even before its own entry is seen).
pub fn assignment(members: &BTreeSet<String>, me: &str, partitions: u32) -> BTreeSet<u32> {
    let mut all = members.clone();
    all.insert(me.to_string());
    let ids: Vec<&String> = all.iter().collect();
    let Some(mine) = ids.iter().position(|id| id.as_str() == me) else { return (0..partitions).collect() };
    (0..partitions).filter(|p| *p as usize % ids.len() == mine).collect()
}

/// How long an entry lives: a replica that died (kill -9, lost node) stops counting after
/// this, and its partitions are dealt to the others. Short, because those partitions wait
/// for it; a replica that misses a few beats only hands its partitions over and back.
pub const MEMBER_TTL: Duration = Duration::from_secs(4);
/// How often a replica renews its entry.
pub const BEAT: Duration = Duration::from_secs(1);

/// The bucket's configuration.
pub fn bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: MEMBERS_BUCKET.into(),
        description: "live reconciler replicas (command partitions are dealt over them)".into(),
        history: 1,
        max_age: MEMBER_TTL,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Keeps this replica's entry alive and publishes the partitions it owns, until stopped; then
/// removes the entry so that the others take its partitions at once.
pub async fn run(
    js: jetstream::Context,
    id: String,
    replicas: usize,
    partitions: u32,
    owned: watch::Sender<BTreeSet<u32>>,
    stop: CancellationToken,
) {
    let everything: BTreeSet<u32> = (0..partitions).collect();
    let mut store: Option<kv::Store> = None;
    loop {
        if store.is_none() {
            store = match js.create_or_update_key_value(bucket(replicas)).await {
                Ok(kv) => Some(kv),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the reconciler membership bucket");
                    None
                }
            };
        }
        let mine = match &store {
            Some(kv) => match members(kv, &id).await {
                Ok(alive) => assignment(&alive, &id, partitions),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the reconciler replicas; consuming every partition");
                    everything.clone()
                }
            },
            None => everything.clone(),
        };
        owned.send_if_modified(|have| {
            if *have == mine {
                return false;
            }
            tracing::info!(partitions = ?mine, "command partitions of this replica");
            metrics::gauge!("reconciler_partitions_owned").set(mine.len() as f64);
            *have = mine;
            true
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(BEAT) => {}
        }
    }
    if let Some(kv) = store {
        let _ = kv.purge(&id).await;
    }
}

/// The partition a project's cluster objects belong to, for the controllers (FNV-1a of the
/// name): each replica's session controller acts on the projects of the partitions it owns, so
/// replicas share the controller's work instead of all doing all of it.
pub fn shard_of(project: &str, partitions: u32) -> u32 {
    let hash = project.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash % partitions.max(1)
}

/// This replica's share of the projects (see [`shard_of`]), following the partitions it owns.
#[derive(Clone)]
pub struct Shards {
    /// The partitions this replica owns now.
    pub owned: watch::Receiver<BTreeSet<u32>>,
    /// How many partitions there are.
    pub partitions: u32,
}

impl Shards {
    /// Whether this replica acts on `project` now.
    pub fn owns(&self, project: &str) -> bool {
        self.owned.borrow().contains(&shard_of(project, self.partitions))
    }

    /// A stream that yields each time the owned partitions change (controllers then look at
    /// every object again: those of the partitions gained are theirs now).
    pub fn changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.owned.clone(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

/// Renews `id`'s entry and lists the live ones.
async fn members(kv: &kv::Store, id: &str) -> Result<BTreeSet<String>, async_nats::Error> {
    kv.put(id, chrono::Utc::now().to_rfc3339().into()).await?;
    let mut keys = kv.keys().await?;
    let mut alive = BTreeSet::new();
    while let Some(k) = keys.next().await {
        alive.insert(k?);
    }
    Ok(alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_spread_over_the_partitions_and_stay_put() {
        // FNV-1a as published (offset basis and prime): fixed values, so every replica and
        // every version agrees on where a project belongs.
        assert_eq!(shard_of("", 8), 0x811c_9dc5 % 8);
        assert_eq!(shard_of("a", 1_000_000_007), 0xe40c_292c % 1_000_000_007);
        assert_eq!(shard_of("team-a", 8), shard_of("team-a", 8));
        assert_eq!(shard_of("anything", 0), 0);
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("project-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partitions_are_dealt_evenly_and_each_exactly_once() {
        let alive = set(&["b", "a", "c"]);
        let parts: Vec<BTreeSet<u32>> = ["a", "b", "c"].iter().map(|me| assignment(&alive, me, 8)).collect();
        assert_eq!(parts[0], [0, 3, 6].into());
        assert_eq!(parts[1], [1, 4, 7].into());
        assert_eq!(parts[2], [2, 5].into());
        let union: BTreeSet<u32> = parts.iter().flatten().copied().collect();
        assert_eq!(union.len(), 8);
        assert_eq!(parts.iter().map(BTreeSet::len).sum::<usize>(), 8, "no partition twice");
    }

    #[test]
    fn a_lone_replica_takes_everything_and_a_newcomer_counts_itself() {
        assert_eq!(assignment(&set(&[]), "a", 4), [0, 1, 2, 3].into());
        assert_eq!(assignment(&set(&["a"]), "a", 4), [0, 1, 2, 3].into());
        // b's own entry is not visible yet: it already takes its half, as a will once it sees b.
        assert_eq!(assignment(&set(&["a"]), "b", 4), [1, 3].into());
        assert_eq!(assignment(&set(&["a", "b"]), "a", 4), [0, 2].into());
    }

    #[test]
    fn an_entry_outlives_a_few_missed_beats() {
        assert!(MEMBER_TTL >= BEAT * 3);
    }
}
