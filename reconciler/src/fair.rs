//! Fair share of the command applier across projects.
//!
//! Commands wait here between delivery and apply. [`Fair::take`] hands them out round-robin
//! across projects with something to do, at most `per_project` at a time for each project and
//! at most one at a time for each object (in stream order), so a project with thousands of
//! pending commands delays another project's next command by about one apply, not by its
//! backlog. Pure bookkeeping: the consumer does the I/O around it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// One project's waiting commands.
struct Project<T> {
    /// Commands of this project being applied.
    in_flight: usize,
    /// Waiting commands per object, by stream sequence.
    objects: HashMap<String, Object<T>>,
    /// The lowest waiting sequence of every object that is not busy: the project's next
    /// command is the first of these.
    heads: BTreeSet<(u64, String)>,
}

struct Object<T> {
    busy: bool,
    waiting: BTreeMap<u64, T>,
}

impl<T> Project<T> {
    fn new() -> Self {
        Self { in_flight: 0, objects: HashMap::new(), heads: BTreeSet::new() }
    }

    fn is_empty(&self) -> bool {
        self.in_flight == 0 && self.objects.is_empty()
    }
}

/// A command handed out by [`Fair::take`]; give it back with [`Fair::done`].
#[derive(Debug, PartialEq, Eq)]
pub struct Taken<T> {
    /// Its project.
    pub project: String,
    /// Its object key.
    pub object: String,
    /// Its stream sequence.
    pub seq: u64,
    /// The command.
    pub item: T,
}

/// The waiting commands of one replica.
pub struct Fair<T> {
    per_project: usize,
    projects: HashMap<String, Project<T>>,
    /// Projects that may have something to hand out, in turn order, and the same as a set.
    turn: VecDeque<String>,
    in_turn: HashSet<String>,
    waiting: usize,
}

impl<T> Fair<T> {
    /// At most `per_project` commands of one project are handed out at a time (at least 1).
    pub fn new(per_project: usize) -> Self {
        Self {
            per_project: per_project.max(1),
            projects: HashMap::new(),
            turn: VecDeque::new(),
            in_turn: HashSet::new(),
            waiting: 0,
        }
    }

    /// Commands waiting (not handed out).
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Adds a command of `object` in `project` at stream sequence `seq`. A sequence already
    /// waiting is replaced (a redelivery of the same command).
    pub fn push(&mut self, project: &str, object: &str, seq: u64, item: T) {
        let p = self.projects.entry(project.to_string()).or_insert_with(Project::new);
        let o = p.objects.entry(object.to_string()).or_insert_with(|| Object { busy: false, waiting: BTreeMap::new() });
        let old_head = o.waiting.keys().next().copied();
        if o.waiting.insert(seq, item).is_none() {
            self.waiting += 1;
        }
        if !o.busy {
            if let Some(h) = old_head {
                p.heads.remove(&(h, object.to_string()));
            }
            if let Some(&h) = o.waiting.keys().next() {
                p.heads.insert((h, object.to_string()));
            }
        }
        self.enqueue_turn(project);
    }

    fn enqueue_turn(&mut self, project: &str) {
        if self.in_turn.insert(project.to_string()) {
            self.turn.push_back(project.to_string());
        }
    }

    /// The next command to apply: the lowest waiting sequence of the next project in turn
    /// whose objects are not all busy and that has fewer than `per_project` in flight.
    pub fn take(&mut self) -> Option<Taken<T>> {
        for _ in 0..self.turn.len() {
            let name = self.turn.pop_front()?;
            self.in_turn.remove(&name);
            let Some(p) = self.projects.get_mut(&name) else { continue };
            if p.in_flight >= self.per_project {
                // Dropped from the turn; `done` puts it back.
                continue;
            }
            let Some((seq, object)) = p.heads.pop_first() else { continue };
            let Some(o) = p.objects.get_mut(&object) else { continue };
            let Some(item) = o.waiting.remove(&seq) else { continue };
            o.busy = true;
            p.in_flight += 1;
            self.waiting -= 1;
            if !p.heads.is_empty() && p.in_flight < self.per_project {
                self.in_turn.insert(name.clone());
                self.turn.push_back(name.clone());
            }
            return Some(Taken { project: name, object, seq, item });
        }
        None
    }

    /// Takes every waiting command that `leave` picks out (not those handed out), e.g. those
    /// of a partition dealt to another replica.
    pub fn remove_where(&mut self, leave: impl Fn(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        self.projects.retain(|_, p| {
            p.objects.retain(|name, o| {
                let head = o.waiting.keys().next().copied();
                let keep: BTreeMap<u64, T> = std::mem::take(&mut o.waiting)
                    .into_iter()
                    .filter_map(|(seq, item)| {
                        if leave(&item) {
                            out.push(item);
                            None
                        } else {
                            Some((seq, item))
                        }
                    })
                    .collect();
                o.waiting = keep;
                if !o.busy {
                    if let Some(h) = head {
                        p.heads.remove(&(h, name.clone()));
                    }
                    if let Some(&h) = o.waiting.keys().next() {
                        p.heads.insert((h, name.clone()));
                    }
                }
                o.busy || !o.waiting.is_empty()
            });
            !p.is_empty()
        });
        self.waiting -= out.len();
        out
    }

    /// Whether a command of `object` in `project` with a sequence below `seq` is waiting.
    pub fn has_earlier(&self, project: &str, object: &str, seq: u64) -> bool {
        self.projects
            .get(project)
            .and_then(|p| p.objects.get(object))
            .is_some_and(|o| o.waiting.keys().next().is_some_and(|&first| first < seq))
    }

    /// The command taken for `object` of `project` is finished (applied or given back).
    pub fn done(&mut self, project: &str, object: &str) {
        let Some(p) = self.projects.get_mut(project) else { return };
        p.in_flight = p.in_flight.saturating_sub(1);
        if let Some(o) = p.objects.get_mut(object) {
            o.busy = false;
            match o.waiting.keys().next() {
                Some(&h) => {
                    p.heads.insert((h, object.to_string()));
                }
                None => {
                    p.objects.remove(object);
                }
            }
        }
        if p.is_empty() {
            // A stale turn entry is skipped by `take`.
            self.projects.remove(project);
        } else if !p.heads.is_empty() {
            self.enqueue_turn(project);
        }
    }
}

/// Per-project slots for work queued elsewhere (the session controller's reconciles): a project
/// holding its share is told to come back later instead of taking another worker, so other
/// projects' work finds one free.
pub struct Shares {
    per_project: usize,
    in_use: Mutex<HashMap<String, usize>>,
}

/// One held slot of [`Shares`]; released on drop.
pub struct Share {
    shares: Arc<Shares>,
    project: String,
}

impl Shares {
    /// At most `per_project` slots per project (at least 1).
    pub fn new(per_project: usize) -> Arc<Self> {
        Arc::new(Self { per_project: per_project.max(1), in_use: Mutex::new(HashMap::new()) })
    }

    /// A slot for `project`, or `None` when it holds its share.
    pub fn try_enter(self: &Arc<Self>, project: &str) -> Option<Share> {
        let mut in_use = self.in_use.lock().ok()?;
        let n = in_use.entry(project.to_string()).or_insert(0);
        if *n >= self.per_project {
            return None;
        }
        *n += 1;
        Some(Share { shares: self.clone(), project: project.to_string() })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Ok(mut in_use) = self.shares.in_use.lock()
            && let Some(n) = in_use.get_mut(&self.project)
        {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.project);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all<T>(f: &mut Fair<T>) -> Vec<(String, u64)> {
        std::iter::from_fn(|| f.take()).map(|t| (t.project, t.seq)).collect()
    }

    #[test]
    fn a_flood_does_not_delay_a_quiet_project() {
        let mut f = Fair::new(2);
        for seq in 1..=1000 {
            f.push("flood", &format!("session/s{seq}"), seq, ());
        }
        f.push("quiet", "session/q", 1001, ());
        // The projects take turns: the quiet project's command comes second; the flood gets its
        // share (two) and no more.
        assert_eq!(take_all(&mut f), vec![("flood".into(), 1), ("quiet".into(), 1001), ("flood".into(), 2)]);
        assert_eq!(f.waiting(), 998);
        // As the flood's commands finish, the next ones come in stream order.
        f.done("flood", "session/s1");
        assert_eq!(take_all(&mut f), vec![("flood".into(), 3)]);
    }

    #[test]
    fn projects_take_turns() {
        let mut f = Fair::new(10);
        for seq in 1..=3 {
            f.push("a", &format!("o{seq}"), seq, ());
        }
        for seq in 4..=6 {
            f.push("b", &format!("o{seq}"), seq, ());
        }
        let order: Vec<_> = take_all(&mut f).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
    }

    #[test]
    fn one_object_is_applied_one_command_at_a_time_in_sequence_order() {
        let mut f = Fair::new(10);
        // Redelivered out of order.
        f.push("p", "session/s", 9, "third");
        f.push("p", "session/s", 3, "first");
        f.push("p", "session/s", 5, "second");
        let t = f.take().unwrap();
        assert_eq!((t.seq, t.item), (3, "first"));
        assert!(f.take().is_none(), "the object is busy");
        f.done("p", "session/s");
        assert_eq!(f.take().map(|t| t.item), Some("second"));
        f.done("p", "session/s");
        assert_eq!(f.take().map(|t| t.item), Some("third"));
        f.done("p", "session/s");
        assert!(f.take().is_none());
        assert!(f.projects.is_empty(), "nothing is kept for finished work");
    }

    #[test]
    fn a_redelivery_replaces_the_waiting_copy() {
        let mut f = Fair::new(1);
        f.push("p", "o", 1, "a");
        f.push("p", "o", 1, "b");
        assert_eq!(f.waiting(), 1);
        assert_eq!(f.take().map(|t| t.item), Some("b"));
    }

    #[test]
    fn an_earlier_command_arriving_while_busy_goes_next() {
        let mut f = Fair::new(4);
        f.push("p", "o", 10, ());
        assert_eq!(f.take().map(|t| t.seq), Some(10));
        f.push("p", "o", 12, ());
        f.push("p", "o", 7, ());
        assert!(f.take().is_none());
        assert!(f.has_earlier("p", "o", 10) && !f.has_earlier("p", "o", 7) && !f.has_earlier("q", "o", 10));
        f.done("p", "o");
        assert_eq!(f.take().map(|t| t.seq), Some(7));
    }

    #[test]
    fn a_project_at_its_share_returns_to_the_turn_when_one_finishes() {
        let mut f = Fair::new(1);
        f.push("a", "x", 1, ());
        f.push("a", "y", 2, ());
        assert_eq!(f.take().map(|t| t.seq), Some(1));
        assert!(f.take().is_none());
        f.done("a", "x");
        assert_eq!(f.take().map(|t| t.seq), Some(2));
    }

    #[test]
    fn removing_a_partitions_waiting_commands_keeps_the_rest_in_order() {
        let mut f = Fair::new(4);
        // (partition, label)
        f.push("a", "o", 1, (0, "a1"));
        f.push("a", "o", 2, (1, "a2"));
        f.push("a", "o", 3, (0, "a3"));
        f.push("b", "x", 4, (1, "b4"));
        let busy = f.take().unwrap();
        assert_eq!(busy.item.1, "a1");
        let mut gone: Vec<&str> = f.remove_where(|(p, _)| *p == 1).into_iter().map(|(_, l)| l).collect();
        gone.sort();
        assert_eq!(gone, ["a2", "b4"]);
        assert_eq!(f.waiting(), 1);
        assert!(f.take().is_none(), "o is still busy");
        f.done("a", "o");
        assert_eq!(f.take().map(|t| t.item.1), Some("a3"));
        f.done("a", "o");
        assert!(f.projects.is_empty());
    }

    #[test]
    fn shares_bound_each_project_and_free_on_drop() {
        let shares = Shares::new(2);
        let a1 = shares.try_enter("a").unwrap();
        let _a2 = shares.try_enter("a").unwrap();
        assert!(shares.try_enter("a").is_none(), "a holds its share");
        let _b = shares.try_enter("b").expect("another project still gets a slot");
        drop(a1);
        assert!(shares.try_enter("a").is_some());
        drop(_a2);
        drop(_b);
        assert!(shares.in_use.lock().unwrap().is_empty(), "nothing is kept for idle projects");
    }
}
