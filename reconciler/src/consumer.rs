//! Durable command consumption.
//!
//! One pull loop per command partition, on the durable consumer `reconciler-p<p>` with priority
//! group `reconciler` (pinned client: one replica consumes a partition at a time, another takes
//! over when it goes away). The consumer's window is wide (`BusConfig::max_ack_pending`), so a
//! partition's whole backlog is read ahead and waits here, not in the stream: [`crate::fair`]
//! hands it out round-robin across projects (a bounded share each) and one command at a time per
//! object in stream order, so a project with thousands of pending commands does not delay the
//! next command of another project by more than about one apply. One ticker extends every held
//! message (`Progress`) so the server neither redelivers it nor lets a later command of the same
//! object overtake it. Read-ahead stops while the held commands exceed a byte budget.
//!
//! After a crash, commands delivered before come back out of order; [`crate::order`] finds them
//! once and holds back a command while an earlier one of the same object is still pending.
//!
//! Exactly once: before applying, the result subject is looked up in AMBIENT_RESULTS; after the
//! cluster write, the result is published (and stored) before the command is acknowledged. The
//! window between the two is covered by idempotent applies (see [`crate::apply`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use events::commands::CommandBody;
use events::results::{CommandResult, Outcome};
use events::signing::CommandVerifier;
use events::streams::{BusConfig, COMMANDS_STREAM, RECONCILER_GROUP};
use events::wire::DecodeError;
use events::{Command, FailureReason};

use crate::apply::{Applier, Delivery};
use crate::error::ApplyError;
use crate::fair::{Fair, Taken};
use crate::ledger::Ledger;
use crate::order::{Check, ObjectId, Orphans};

/// How often held messages are extended (well inside the consumer's ack wait).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for an earlier command of the same object to be redelivered (covers the
/// pinned-client takeover and the redelivery backoff).
const ORDER_WAIT: Duration = Duration::from_secs(120);
/// How long shutdown waits for applies under way (the process gets 10 s in all).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(8);
/// Bytes counted per held message beyond its payload (subject, reply, bookkeeping).
const HELD_OVERHEAD: u64 = 512;

/// How the consumer reads and applies: partitions, parallelism, read-ahead and retries.
pub struct Tuning {
    /// The bus layout.
    pub bus: BusConfig,
    /// Commands applied in parallel.
    pub concurrency: usize,
    /// Commands of one project applied in parallel (its fair share).
    pub per_project: usize,
    /// Read-ahead stops while the commands held by this replica exceed this many bytes.
    pub max_held_bytes: u64,
    /// Cap of the transient-retry backoff.
    pub retry_max_backoff: Duration,
    /// Give up (failed result `Unavailable`) after retrying this long.
    pub retry_for: Duration,
}

/// A decoded command waiting for its turn.
struct Work {
    msg: jetstream::Message,
    cmd: Command,
    delivered: i64,
    partition: u32,
}

/// The command consumer of one replica.
pub struct Consumer {
    js: jetstream::Context,
    ledger: Ledger,
    applier: Applier,
    verifier: CommandVerifier,
    settings: Tuning,
    permits: Semaphore,
    fair: Mutex<Fair<Work>>,
    /// Something may be ready in `fair`.
    wake: Notify,
    /// Held bytes went down.
    room: Notify,
    /// Every message received and not yet acknowledged, by stream sequence: extended by the
    /// ticker; a redelivery of one of them is dropped.
    held: Mutex<HashMap<u64, jetstream::Message>>,
    held_bytes: AtomicU64,
    /// Handed-out commands not finished yet (shutdown waits for them).
    active: std::sync::atomic::AtomicUsize,
    /// Per partition: commands that may come back out of order.
    orphans: Vec<tokio::sync::Mutex<Orphans>>,
    /// Per partition: whether this replica received from it, i.e. may hold its pin.
    served: Vec<AtomicBool>,
    stop: CancellationToken,
}

/// Whether a command may be applied now.
enum Turn {
    Go,
    /// An earlier command of the same object is waiting here: it goes first.
    GiveBack,
    /// Shutting down: give it back unapplied (`Nak`) for the next owner (applying it now could
    /// put it before an earlier command that has not come back yet).
    Leave,
}

/// A handed-out command's place: its held message, its bytes and its object's turn in
/// [`Fair`]. Dropped (also on a panic), it lets them go, so nothing stays held or busy forever;
/// a command not acknowledged by then is redelivered after the ack wait.
struct Slot {
    consumer: Arc<Consumer>,
    id: ObjectId,
    seq: u64,
    bytes: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.consumer.held.lock() {
            held.remove(&self.seq);
        }
        self.consumer.held_bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        if let Ok(mut fair) = self.consumer.fair.lock() {
            fair.done(&self.id.0, &self.id.1);
            metrics::gauge!("reconciler_commands_waiting").set(fair.waiting() as f64);
        }
        self.consumer.active.fetch_sub(1, Ordering::SeqCst);
        self.consumer.room.notify_waiters();
        self.consumer.wake.notify_one();
    }
}

impl Consumer {
    /// A consumer; call [`Consumer::run`].
    pub fn new(
        js: jetstream::Context,
        applier: Applier,
        verifier: CommandVerifier,
        settings: Tuning,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let orphans = (0..settings.bus.partitions).map(|_| tokio::sync::Mutex::new(Orphans::default())).collect();
        let served = (0..settings.bus.partitions).map(|_| AtomicBool::new(false)).collect();
        Arc::new(Self {
            orphans,
            served,
            ledger: Ledger::new(js.clone()),
            js,
            applier,
            verifier,
            permits: Semaphore::new(settings.concurrency.max(1)),
            fair: Mutex::new(Fair::new(settings.per_project)),
            wake: Notify::new(),
            room: Notify::new(),
            held: Mutex::new(HashMap::new()),
            held_bytes: AtomicU64::new(0),
            active: std::sync::atomic::AtomicUsize::new(0),
            settings,
            stop,
        })
    }

    /// Consumes the partitions this replica `owned` (see [`crate::members`]) until stopped.
    pub async fn run(self: Arc<Self>, owned: watch::Receiver<BTreeSet<u32>>) {
        let bus = &self.settings.bus;
        let dispatch = tokio::spawn(self.clone().dispatch());
        let ticker = tokio::spawn(self.clone().extend_held());
        let loops: Vec<_> =
            (0..bus.partitions).map(|p| tokio::spawn(self.clone().partition(p, owned.clone()))).collect();
        futures::future::join_all(loops).await;
        let _ = dispatch.await;
        // Applies under way finish (their messages still extended) before the partitions are
        // handed over; what has not started is given back below.
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ticker.abort();
        // What waits here goes back at once, for the next owner (not after its ack wait).
        for p in 0..bus.partitions {
            self.return_waiting(p).await;
        }
        self.unpin_served().await;
    }

    /// On shutdown, hand the partitions this replica served to the others at once instead of
    /// after the pin times out (a rolling update would otherwise stall them for the ack wait).
    /// Commands still in flight here stay ours until acknowledged; the next holder sees them
    /// as orphans and keeps per-object order (see `note_orphans`).
    async fn unpin_served(&self) {
        let Ok(stream) = self.js.get_stream(COMMANDS_STREAM).await else { return };
        for (p, served) in self.served.iter().enumerate() {
            if !served.load(Ordering::SeqCst) {
                continue;
            }
            let name = BusConfig::partition_consumer_name(p as u32);
            if let Err(e) = stream.unpin_consumer(&name, RECONCILER_GROUP).await {
                tracing::warn!(partition = p, error = %e, "cannot release the partition");
            }
        }
    }

    async fn consumer(&self, p: u32) -> Result<PullConsumer, async_nats::Error> {
        let stream = self.js.get_stream(COMMANDS_STREAM).await?;
        stream.get_consumer(&BusConfig::partition_consumer_name(p)).await
    }

    /// Pulls partition `p` while this replica owns it; hands it over when it no longer does.
    async fn partition(self: Arc<Self>, p: u32, mut owned: watch::Receiver<BTreeSet<u32>>) {
        while !self.stop.is_cancelled() {
            if !owned.borrow_and_update().contains(&p) {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    r = owned.changed() => if r.is_err() { return },
                }
                continue;
            }
            let (mut handle, messages) = match self.consumer(p).await {
                Ok(c) => {
                    let pull = c
                        .stream()
                        .group(RECONCILER_GROUP)
                        .max_messages_per_batch(100)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await;
                    (c, pull)
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "command consumer unavailable");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot pull commands");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            // The first pull request pins this replica, message or not: it must unpin on the way
            // out, or the next owner waits for the pin to time out (a quiet partition's first
            // command waited 10 s after a rolling restart).
            if let Some(s) = self.served.get(p as usize) {
                s.store(true, Ordering::SeqCst);
            }
            let mut first = true;
            loop {
                // Read ahead only while the held commands fit the budget.
                while self.held_bytes.load(Ordering::SeqCst) >= self.settings.max_held_bytes
                    && owned.borrow().contains(&p)
                {
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = self.room.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                let next = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    r = owned.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if !owned.borrow_and_update().contains(&p) {
                            // Dealt to another replica: stop pulling and let it in at once.
                            // What this replica holds of it is still applied here; the new
                            // owner keeps per-object order around it (crate::order).
                            drop(messages);
                            self.return_waiting(p).await;
                            self.release(p).await;
                            break;
                        }
                        continue;
                    }
                    n = messages.next() => n,
                };
                match next {
                    Some(Ok(msg)) => {
                        if std::mem::take(&mut first) {
                            self.note_orphans(p, &mut handle).await;
                        }
                        self.receive(p, msg).await
                    }
                    Some(Err(e)) => tracing::debug!(partition = p, error = %e, "pull"),
                    None => break,
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Gives back (`Nak`) the commands of partition `p` that wait here and have not started, so
    /// that its new owner gets them at once instead of after their ack wait.
    async fn return_waiting(&self, p: u32) {
        let waiting = match self.fair.lock() {
            Ok(mut f) => f.remove_where(|w| w.partition == p),
            Err(_) => return,
        };
        for w in waiting {
            if let Ok(info) = w.msg.info() {
                let seq = info.stream_sequence;
                if let Ok(mut held) = self.held.lock() {
                    held.remove(&seq);
                }
                self.held_bytes.fetch_sub(w.msg.payload.len() as u64 + HELD_OVERHEAD, Ordering::SeqCst);
            }
            let _ = w.msg.ack_with(AckKind::Nak(None)).await;
        }
        self.room.notify_waiters();
    }

    /// Unpins partition `p` if this replica received from it, so that its new owner's pull is
    /// pinned at once instead of after the pin times out.
    async fn release(&self, p: u32) {
        let Some(served) = self.served.get(p as usize) else { return };
        if !served.swap(false, Ordering::SeqCst) {
            return;
        }
        tracing::info!(partition = p, "handing the partition over");
        match self.js.get_stream(COMMANDS_STREAM).await {
            Ok(stream) => {
                if let Err(e) = stream.unpin_consumer(&BusConfig::partition_consumer_name(p), RECONCILER_GROUP).await {
                    tracing::warn!(partition = p, error = %e, "cannot release the partition");
                }
            }
            Err(e) => tracing::warn!(partition = p, error = %e, "cannot release the partition"),
        }
    }

    /// On the first message of a pull: if more messages are pending acknowledgement than this
    /// one, some were delivered before (to a replica that died, or to our previous pull) and may
    /// come back out of order; remember up to which sequence.
    async fn note_orphans(&self, p: u32, consumer: &mut PullConsumer) {
        let Some(orphans) = self.orphans.get(p as usize) else { return };
        match consumer.info().await {
            Ok(info) if info.num_ack_pending > 1 => orphans.lock().await.raise_ceiling(info.delivered.stream_sequence),
            Ok(_) => {}
            // Unknown: assume the worst up to everything in the stream.
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot read the consumer's state");
                orphans.lock().await.raise_ceiling(u64::MAX);
            }
        }
    }

    async fn receive(&self, partition: u32, msg: jetstream::Message) {
        let (delivered, seq) = match msg.info() {
            Ok(i) => (i.delivered, i.stream_sequence),
            Err(e) => {
                tracing::warn!(error = %e, "message without JetStream metadata");
                return;
            }
        };
        metrics::counter!("reconciler_commands_received_total").increment(1);
        let cmd = match events::wire::decode_command(&msg.subject, msg.headers.as_ref(), &msg.payload, &self.verifier) {
            Ok(cmd) => cmd,
            Err((e, address)) => return self.refuse(msg, e, address).await,
        };
        let bytes = msg.payload.len() as u64 + HELD_OVERHEAD;
        {
            let Ok(mut held) = self.held.lock() else { return };
            if held.contains_key(&seq) {
                // The original delivery is still waiting or being applied here.
                return;
            }
            held.insert(seq, msg.clone());
        }
        self.held_bytes.fetch_add(bytes, Ordering::SeqCst);
        let project = cmd.project.to_string();
        let object = cmd.body.object_key();
        if let Ok(mut fair) = self.fair.lock() {
            fair.push(&project, &object, seq, Work { msg, cmd, delivered, partition });
            metrics::gauge!("reconciler_commands_waiting").set(fair.waiting() as f64);
        }
        self.wake.notify_one();
    }

    /// Extends every held message well inside the ack wait.
    async fn extend_held(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let held: Vec<jetstream::Message> = match self.held.lock() {
                Ok(h) => h.values().cloned().collect(),
                Err(_) => return,
            };
            metrics::gauge!("reconciler_commands_held").set(held.len() as f64);
            metrics::gauge!("reconciler_commands_held_bytes").set(self.held_bytes.load(Ordering::SeqCst) as f64);
            for m in held {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    }

    /// Hands out waiting commands as the fair share allows.
    async fn dispatch(self: Arc<Self>) {
        while !self.stop.is_cancelled() {
            loop {
                let taken = match self.fair.lock() {
                    Ok(mut f) => f.take(),
                    Err(_) => return,
                };
                let Some(taken) = taken else { break };
                self.active.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(self.clone().run_one(taken));
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Applies one handed-out command once no earlier command of its object is pending, then
    /// gives its slot back.
    async fn run_one(self: Arc<Self>, taken: Taken<Work>) {
        let Taken { project, object, seq, item: work } = taken;
        let id: ObjectId = (project, object);
        match self.await_turn(&work.cmd.project, &id, seq, work.partition).await {
            Turn::GiveBack => {
                if let Ok(mut fair) = self.fair.lock() {
                    fair.push(&id.0, &id.1, seq, work);
                    fair.done(&id.0, &id.1);
                }
                self.active.fetch_sub(1, Ordering::SeqCst);
                self.wake.notify_one();
            }
            turn => {
                let bytes = work.msg.payload.len() as u64 + HELD_OVERHEAD;
                let partition = work.partition;
                let slot = Slot { consumer: self.clone(), id, seq, bytes };
                if matches!(turn, Turn::Leave) {
                    // Redelivered to the next owner at once; it keeps per-object order.
                    let _ = work.msg.ack_with(AckKind::Nak(None)).await;
                } else if self.process(work, seq).await
                    && let Some(orphans) = self.orphans.get(partition as usize)
                {
                    orphans.lock().await.resolve(&slot.id, seq);
                }
                drop(slot);
            }
        }
    }

    /// Redelivery after a crash does not come in stream order (each message's redelivery timer
    /// runs from its last progress): a command waits while an earlier command of the same
    /// object is still pending in the stream (unacknowledged and without a result), and steps
    /// aside when that one has arrived here.
    async fn await_turn(&self, project: &events::ProjectName, id: &ObjectId, seq: u64, partition: u32) -> Turn {
        let since = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return Turn::Leave;
            }
            if self.fair.lock().map(|f| f.has_earlier(&id.0, &id.1, seq)).unwrap_or(false) {
                return Turn::GiveBack;
            }
            match self.earlier_pending(project, id, seq, partition).await {
                Ok(false) => return Turn::Go,
                Ok(true) if since.elapsed() >= ORDER_WAIT => {
                    tracing::warn!(project = %id.0, object = %id.1, "an earlier command of this object never came back; applying the next one");
                    return Turn::Go;
                }
                Ok(true) => {}
                // Unknown: wait as if it were pending (the ORDER_WAIT bound still applies).
                Err(e) if since.elapsed() >= ORDER_WAIT => {
                    tracing::warn!(error = %e, "cannot check for earlier commands; applying");
                    return Turn::Go;
                }
                Err(e) => tracing::warn!(error = %e, "cannot check for earlier commands yet"),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Turn::Leave,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    /// True when a command of the same object with a lower stream sequence is still pending:
    /// above the consumer's ack floor and without a result in the ledger.
    async fn earlier_pending(
        &self,
        project: &events::ProjectName,
        id: &ObjectId,
        seq: u64,
        partition: u32,
    ) -> Result<bool, async_nats::Error> {
        let Some(orphans) = self.orphans.get(partition as usize) else { return Ok(false) };
        if !orphans.lock().await.any() {
            return Ok(false);
        }
        let mut consumer = self.consumer(partition).await?;
        let info = consumer.info().await?.clone();
        let mut index = orphans.lock().await;
        if index.acknowledged_through(info.ack_floor.stream_sequence, info.delivered.stream_sequence) {
            return Ok(false);
        }
        loop {
            match index.check(id, seq) {
                Check::Clear => return Ok(false),
                Check::Scan { from, to } => self.scan(partition, &mut index, from, to).await?,
                Check::Earlier(earlier) => {
                    for (s, cmd_id) in earlier {
                        if !self.ledger.has_result(project, cmd_id).await? {
                            return Ok(true);
                        }
                        index.resolve(id, s);
                    }
                }
            }
        }
    }

    /// Records the objects of the partition's live messages in `from..=to` (once per crash:
    /// acknowledged commands have left the stream, so this reads only what is pending).
    async fn scan(&self, partition: u32, index: &mut Orphans, from: u64, to: u64) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(COMMANDS_STREAM).await?;
        let filter = BusConfig::partition_filter(partition);
        let started = Instant::now();
        let mut next = from;
        let mut read = 0u64;
        while next <= to {
            let m = match stream.direct_get_next_for_subject(filter.clone(), Some(next)).await {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
                Err(e) => return Err(e.into()),
            };
            if m.sequence > to {
                break;
            }
            next = m.sequence + 1;
            read += 1;
            if let Ok(cmd) = events::wire::decode_command(&m.subject, Some(&m.headers), &m.payload, &self.verifier) {
                index.record((cmd.project.to_string(), cmd.body.object_key()), m.sequence, cmd.id);
            }
        }
        index.scanned_to(to);
        tracing::info!(
            partition,
            from,
            to,
            read,
            took_ms = started.elapsed().as_millis() as u64,
            "indexed commands that may come back out of order"
        );
        Ok(())
    }

    /// Applies `work` (retrying transient failures) and acknowledges it; false when it was left
    /// for redelivery (shutting down).
    async fn process(&self, work: Work, seq: u64) -> bool {
        let Work { msg, cmd, delivered, .. } = work;
        let session = match &cmd.body {
            CommandBody::SessionCreate(c) => Some(c.name.to_string()),
            CommandBody::SessionClone(c) => Some(c.new_session_name.to_string()),
            b => b.object_key().strip_prefix("session/").map(str::to_string),
        };
        let span = tracing::info_span!(
            "command",
            command_id = %cmd.id,
            command_type = cmd.body.command_type().type_str(),
            project = %cmd.project,
            session = session.as_deref().unwrap_or(""),
            principal = %cmd.principal.user,
        );
        async {
            let Ok(_permit) = self.permits.acquire().await else { return false };
            if self.stop.is_cancelled() {
                tracing::info!(seq, "shutting down; command left for redelivery");
                return false;
            }
            let started = Instant::now();
            let mut backoff = Duration::from_millis(200);
            let ack = loop {
                match self.handle(&cmd, delivered).await {
                    Ok(ack) => break Some(ack),
                    Err(e) if started.elapsed() >= self.settings.retry_for => {
                        tracing::error!(error = %e, "giving up after retrying");
                        let outcome =
                            Outcome::failed(FailureReason::Unavailable, "the command could not be applied in time");
                        if self.ledger.publish(&result(&cmd, outcome), cmd.traceparent.as_deref()).await.is_ok() {
                            break Some(AckKind::Term);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "transient failure; retrying"),
                }
                tokio::select! {
                    _ = self.stop.cancelled() => break None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.settings.retry_max_backoff);
            };
            match ack {
                Some(kind) => {
                    if let Err(e) = msg.double_ack_with(kind).await {
                        // The result is stored: a redelivery finds it and is only acknowledged.
                        tracing::warn!(error = %e, "acknowledgement not confirmed");
                    }
                    metrics::histogram!("reconciler_command_apply_seconds").record(started.elapsed().as_secs_f64());
                    true
                }
                // Shutting down: left unacknowledged for redelivery.
                None => {
                    tracing::info!(seq, "shutting down; command left for redelivery");
                    false
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Applies one command exactly once; returns how to acknowledge it. `Err` is transient.
    async fn handle(&self, cmd: &Command, delivered: i64) -> Result<AckKind, ApplyError> {
        if self.ledger.has_result(&cmd.project, cmd.id).await? {
            tracing::info!("already applied; acknowledging");
            metrics::counter!("reconciler_commands_duplicate_total").increment(1);
            return Ok(AckKind::Ack);
        }
        if delivered >= self.settings.bus.max_deliver {
            let outcome = Outcome::failed(FailureReason::Unavailable, "delivery limit reached");
            self.ledger.publish(&result(cmd, outcome), cmd.traceparent.as_deref()).await?;
            return Ok(AckKind::Term);
        }
        let delivery = if delivered > 1 { Delivery::Redelivered } else { Delivery::First };
        // Time since the api accepted it (its clock), and the apply itself: where latency goes.
        let queued_ms = (chrono::Utc::now() - cmd.time).num_milliseconds();
        let started = Instant::now();
        let outcome = match self.applier.apply(cmd, delivery).await {
            Ok(applied) => {
                let apply_ms = started.elapsed().as_millis() as u64;
                tracing::info!(kind = %applied.resource.kind, name = %applied.resource.name, queued_ms, apply_ms, "applied");
                Outcome::Succeeded { resource: applied.resource, sealed_token: applied.sealed_token }
            }
            Err(ApplyError::Permanent { reason, message }) => {
                tracing::info!(?reason, %message, "refused");
                Outcome::failed(reason, message)
            }
            Err(e) => return Err(e),
        };
        self.ledger.publish(&result(cmd, outcome), cmd.traceparent.as_deref()).await?;
        metrics::counter!("reconciler_commands_applied_total", "type" => cmd.body.command_type().type_str())
            .increment(1);
        Ok(AckKind::Ack)
    }

    /// An undecodable or forged command: a failed result when it can be addressed, then `Term`.
    async fn refuse(&self, msg: jetstream::Message, e: DecodeError, address: Option<events::wire::CommandAddress>) {
        tracing::warn!(error = %e, subject = %msg.subject, "refusing command");
        metrics::counter!("reconciler_commands_refused_total").increment(1);
        if let Some(a) = address {
            let reason = match e {
                DecodeError::NotGenuine(_) => FailureReason::NotGenuine,
                DecodeError::Invalid(_) => FailureReason::Invalid,
                _ => FailureReason::BadRequest,
            };
            let r = CommandResult {
                command_id: a.id,
                command_type: a.ty,
                project: a.project,
                time: chrono::Utc::now(),
                outcome: Outcome::failed(reason, e.to_string()),
            };
            if let Err(err) = self.ledger.publish(&r, None).await {
                // Not acknowledged: a redelivery tries again.
                tracing::warn!(error = %err, "cannot publish the refusal");
                return;
            }
        }
        let _ = msg.ack_with(AckKind::Term).await;
    }
}

/// This replica's id in the membership bucket: the pod (host) name, for people, and a random
/// part, so that a restarted pod is a new member.
pub fn replica_id() -> String {
    let host = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_default();
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    if host.is_empty() { random } else { format!("{host}-{}", &random[..12]) }
}

fn result(cmd: &Command, outcome: Outcome) -> CommandResult {
    CommandResult {
        command_id: cmd.id,
        command_type: cmd.body.command_type().type_str().into(),
        project: cmd.project.clone(),
        time: chrono::Utc::now(),
        outcome,
    }
}
