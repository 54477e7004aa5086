//! Per-object order after a crash.
//!
//! Commands delivered before a crash (to a replica that died, or to an earlier pull of ours)
//! come back when their ack wait runs out, each on its own timer, so not in stream order. Such
//! orphans are found once, when a partition's pull starts with commands already pending: the
//! consumer scans the partition's live messages up to the highest delivered sequence (the
//! ceiling) and records each one's object here. A command may then be applied only when no
//! recorded command of the same object with a lower sequence is still pending. Each check
//! looks at that object's entries only, so recovering a backlog of N commands costs O(N),
//! not a scan of the project's backlog per command.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

/// `(project, object key)`.
pub type ObjectId = (String, String);

/// The orphans of one partition.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Everything at or below this sequence may be an orphan (0: none).
    ceiling: u64,
    /// The scan has recorded every live message up to here.
    scanned: u64,
    by_object: HashMap<ObjectId, BTreeMap<u64, Uuid>>,
}

/// What a pending check needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// No orphan can precede it: apply.
    Clear,
    /// Scan the partition's live messages in `from..=to` and [`Orphans::record`] them first.
    Scan {
        /// First sequence to read.
        from: u64,
        /// Last sequence to read.
        to: u64,
    },
    /// These earlier commands of the same object are recorded; apply only when each has a
    /// result (then [`Orphans::resolve`] it).
    Earlier(Vec<(u64, Uuid)>),
}

impl Orphans {
    /// Commands up to `delivered` may be orphans.
    pub fn raise_ceiling(&mut self, delivered: u64) {
        self.ceiling = self.ceiling.max(delivered);
    }

    /// Whether there are possible orphans at all (the costly checks run only then).
    pub fn any(&self) -> bool {
        self.ceiling > 0
    }

    /// The consumer's ack floor is `floor` (everything at or below it is acknowledged) and it
    /// has delivered up to `delivered` (nothing above can be an orphan). Returns true when no
    /// orphan can remain (the index is then empty).
    pub fn acknowledged_through(&mut self, floor: u64, delivered: u64) -> bool {
        self.ceiling = self.ceiling.min(delivered);
        if floor >= self.ceiling {
            *self = Self::default();
            return true;
        }
        self.by_object.retain(|_, seqs| {
            seqs.retain(|&s, _| s > floor);
            !seqs.is_empty()
        });
        self.scanned = self.scanned.max(floor);
        false
    }

    /// What is needed to decide whether the command at `seq` of `object` may be applied.
    pub fn check(&self, object: &ObjectId, seq: u64) -> Check {
        if self.ceiling == 0 {
            return Check::Clear;
        }
        let upto = seq.saturating_sub(1).min(self.ceiling);
        if self.scanned < upto {
            return Check::Scan { from: self.scanned + 1, to: upto };
        }
        match self.by_object.get(object) {
            Some(seqs) => {
                let earlier: Vec<_> = seqs.range(..seq).map(|(&s, &id)| (s, id)).collect();
                if earlier.is_empty() { Check::Clear } else { Check::Earlier(earlier) }
            }
            None => Check::Clear,
        }
    }

    /// A live message found by the scan.
    pub fn record(&mut self, object: ObjectId, seq: u64, id: Uuid) {
        if seq <= self.ceiling {
            self.by_object.entry(object).or_default().insert(seq, id);
        }
    }

    /// The scan read everything up to `to`.
    pub fn scanned_to(&mut self, to: u64) {
        self.scanned = self.scanned.max(to.min(self.ceiling));
    }

    /// The command at `seq` of `object` is finished (it has a result).
    pub fn resolve(&mut self, object: &ObjectId, seq: u64) {
        if let Some(seqs) = self.by_object.get_mut(object) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_object.remove(object);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectId {
        ("p".into(), format!("session/{name}"))
    }

    #[test]
    fn nothing_to_check_without_orphans() {
        let o = Orphans::default();
        assert!(!o.any());
        assert_eq!(o.check(&obj("a"), 10), Check::Clear);
    }

    #[test]
    fn the_scan_runs_once_up_to_the_ceiling() {
        let mut o = Orphans::default();
        o.raise_ceiling(100);
        assert_eq!(o.check(&obj("a"), 50), Check::Scan { from: 1, to: 49 });
        o.acknowledged_through(40, 100);
        // Only what is above the floor needs reading.
        assert_eq!(o.check(&obj("a"), 50), Check::Scan { from: 41, to: 49 });
        o.scanned_to(100);
        assert_eq!(o.check(&obj("a"), 500), Check::Clear, "above the ceiling everything arrives in order");
        o.raise_ceiling(200);
        assert_eq!(o.check(&obj("a"), 500), Check::Scan { from: 101, to: 200 }, "a later crash extends the scan");
    }

    #[test]
    fn only_the_same_objects_earlier_commands_block() {
        let id = |n: u128| Uuid::from_u128(n);
        let mut o = Orphans::default();
        o.raise_ceiling(10);
        o.record(obj("a"), 3, id(3));
        o.record(obj("b"), 4, id(4));
        o.record(obj("a"), 7, id(7));
        o.scanned_to(10);
        assert_eq!(o.check(&obj("a"), 7), Check::Earlier(vec![(3, id(3))]));
        assert_eq!(o.check(&obj("a"), 3), Check::Clear);
        assert_eq!(o.check(&obj("b"), 4), Check::Clear);
        assert_eq!(o.check(&obj("b"), 9), Check::Earlier(vec![(4, id(4))]));
        assert_eq!(o.check(&obj("c"), 9), Check::Clear);
        o.resolve(&obj("a"), 3);
        assert_eq!(o.check(&obj("a"), 7), Check::Clear);
    }

    #[test]
    fn the_floor_passing_the_ceiling_forgets_everything() {
        let mut o = Orphans::default();
        o.raise_ceiling(10);
        o.record(obj("a"), 3, Uuid::nil());
        o.scanned_to(10);
        assert!(!o.acknowledged_through(5, 10));
        assert_eq!(o.check(&obj("a"), 8), Check::Clear, "acknowledged entries are dropped");
        assert!(o.acknowledged_through(10, 10));
        assert!(!o.any());
    }

    #[test]
    fn an_unknown_ceiling_is_bounded_by_what_was_delivered() {
        let mut o = Orphans::default();
        o.raise_ceiling(u64::MAX);
        assert!(!o.acknowledged_through(5, 20));
        assert_eq!(o.check(&obj("a"), 500), Check::Scan { from: 6, to: 20 });
        assert!(o.acknowledged_through(20, 20), "once the floor reaches it, the check ends");
    }

    #[test]
    fn nothing_above_the_ceiling_is_recorded() {
        let mut o = Orphans::default();
        o.raise_ceiling(5);
        o.record(obj("a"), 9, Uuid::nil());
        o.scanned_to(50);
        assert_eq!(o.check(&obj("a"), 12), Check::Clear);
    }
}
