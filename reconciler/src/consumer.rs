//! Durable command consumption.
//!
//! One pull loop per command partition, on the durable consumer `reconciler-p<p>` with priority
//! group `reconciler` (pinned client: one replica consumes a partition at a time, another takes
//! over when it goes away). Decoded commands go to a worker per `(project, object key)`, so the
//! same object's commands apply strictly in stream order while different objects and projects
//! proceed in parallel (bounded by a semaphore). While a message waits or is applied, a ticker
//! sends `Progress` so the server neither redelivers it nor lets a later command of the same
//! object overtake it.
//!
//! Exactly once: before applying, the result subject is looked up in AMBIENT_RESULTS; after the
//! cluster write, the result is published (and stored) before the command is acknowledged. The
//! window between the two is covered by idempotent applies (see [`crate::apply`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
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
use crate::ledger::Ledger;

/// How often a held message is extended (well inside the consumer's ack wait).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for an earlier command of the same object to be redelivered (covers the
/// pinned-client takeover and the redelivery backoff).
const ORDER_WAIT: Duration = Duration::from_secs(120);
/// A per-object worker with nothing to do for this long goes away.
const WORKER_IDLE: Duration = Duration::from_secs(5);

/// Consumer settings.
pub struct Settings {
    /// The bus layout.
    pub bus: BusConfig,
    /// Commands applied in parallel.
    pub concurrency: usize,
    /// Cap of the transient-retry backoff.
    pub retry_max_backoff: Duration,
    /// Give up (failed result `Unavailable`) after retrying this long.
    pub retry_for: Duration,
}

struct Work {
    msg: jetstream::Message,
    cmd: Command,
    delivered: i64,
    seq: u64,
    progress: tokio::task::JoinHandle<()>,
}

/// Orders waiting work by stream sequence.
struct Queued(Work);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.0.seq == other.0.seq
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.seq.cmp(&other.0.seq)
    }
}

type WorkerKey = (String, String);

/// The command consumer of one replica.
pub struct Consumer {
    js: jetstream::Context,
    ledger: Ledger,
    applier: Applier,
    verifier: CommandVerifier,
    settings: Settings,
    permits: Semaphore,
    workers: Mutex<HashMap<WorkerKey, mpsc::UnboundedSender<Work>>>,
    in_flight: Mutex<HashSet<u64>>,
    /// Per partition: the highest stream sequence that may have been delivered to a replica
    /// that is gone, or to an earlier pull of ours (0: none). Only commands at or below it can
    /// be redelivered out of order; everything above arrives in stream order, so the costly
    /// pending check runs only while such orphans remain.
    orphan_ceiling: Vec<AtomicU64>,
    /// Per partition: whether this replica received from it, i.e. may hold its pin.
    served: Vec<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
}

impl Consumer {
    /// A consumer; call [`Consumer::run`].
    pub fn new(js: jetstream::Context, applier: Applier, verifier: CommandVerifier, settings: Settings, stop: CancellationToken) -> Arc<Self> {
        let orphan_ceiling = (0..settings.bus.partitions).map(|_| AtomicU64::new(0)).collect();
        let served = (0..settings.bus.partitions).map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        Arc::new(Self {
            orphan_ceiling,
            served,
            ledger: Ledger::new(js.clone()),
            js,
            applier,
            verifier,
            permits: Semaphore::new(settings.concurrency.max(1)),
            settings,
            workers: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            stop,
        })
    }

    /// Consumes every partition until stopped.
    pub async fn run(self: Arc<Self>) {
        let loops: Vec<_> = (0..self.settings.bus.partitions).map(|p| tokio::spawn(self.clone().partition(p))).collect();
        futures::future::join_all(loops).await;
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

    async fn partition(self: Arc<Self>, p: u32) {
        while !self.stop.is_cancelled() {
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
            let mut first = true;
            loop {
                let next = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    n = messages.next() => n,
                };
                match next {
                    Some(Ok(msg)) => {
                        if let Some(s) = self.served.get(p as usize) {
                            s.store(true, Ordering::SeqCst);
                        }
                        if std::mem::take(&mut first) {
                            self.note_orphans(p, &mut handle).await;
                        }
                        self.clone().receive(msg).await
                    }
                    Some(Err(e)) => tracing::debug!(partition = p, error = %e, "pull"),
                    None => break,
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// On the first message of a pull: if more messages are pending acknowledgement than this
    /// one, some were delivered before (to a replica that died, or to our previous pull) and may
    /// come back out of order; remember up to which sequence.
    async fn note_orphans(&self, p: u32, consumer: &mut PullConsumer) {
        let Some(ceiling) = self.orphan_ceiling.get(p as usize) else { return };
        match consumer.info().await {
            Ok(info) if info.num_ack_pending > 1 => {
                ceiling.fetch_max(info.delivered.stream_sequence, Ordering::SeqCst);
            }
            Ok(_) => {}
            // Unknown: assume the worst up to everything delivered so far.
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot read the consumer's state");
                ceiling.store(u64::MAX, Ordering::SeqCst);
            }
        }
    }

    async fn receive(self: Arc<Self>, msg: jetstream::Message) {
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
        if !self.in_flight.lock().map(|mut s| s.insert(seq)).unwrap_or(true) {
            // The original delivery is still queued or being applied here.
            return;
        }
        let progress = {
            let msg = msg.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PROGRESS_EVERY).await;
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            })
        };
        let key = (cmd.project.to_string(), cmd.body.object_key());
        let mut work = Work { msg, cmd, delivered, seq, progress };
        let Ok(mut workers) = self.workers.lock() else { return };
        if let Some(tx) = workers.get(&key) {
            match tx.send(work) {
                Ok(()) => return,
                Err(mpsc::error::SendError(w)) => work = w,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(work);
        workers.insert(key.clone(), tx);
        tokio::spawn(self.clone().worker(key, rx));
    }

    /// Applies one object's commands in stream order; leaves when idle (under the map lock, so
    /// that no command can be handed to a worker that is going away).
    ///
    /// Redelivery after a crash does not come in stream order (each message's redelivery timer
    /// runs from its last progress), so waiting commands are kept sorted by stream sequence and
    /// the lowest one is applied only when no earlier command of the same object is still
    /// pending in the stream (unacknowledged and without a result): that one comes first.
    async fn worker(self: Arc<Self>, key: WorkerKey, mut rx: mpsc::UnboundedReceiver<Work>) {
        let mut heap: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
        let mut waiting_since: Option<Instant> = None;
        loop {
            while let Ok(w) = rx.try_recv() {
                heap.push(Reverse(Queued(w)));
            }
            let Some(Reverse(Queued(first))) = heap.peek() else {
                match tokio::time::timeout(WORKER_IDLE, rx.recv()).await {
                    Ok(Some(work)) => heap.push(Reverse(Queued(work))),
                    Ok(None) => return,
                    Err(_) => {
                        let Ok(mut workers) = self.workers.lock() else { return };
                        if rx.is_empty() {
                            workers.remove(&key);
                            return;
                        }
                    }
                }
                continue;
            };
            let blocked = match self.earlier_pending(first).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check for earlier commands; assuming none");
                    false
                }
            };
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if blocked && since.elapsed() < ORDER_WAIT {
                tokio::select! {
                    w = rx.recv() => if let Some(w) = w { heap.push(Reverse(Queued(w))) },
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
                continue;
            }
            if blocked {
                tracing::warn!("an earlier command of this object never came back; applying the next one");
            }
            waiting_since = None;
            if let Some(Reverse(Queued(work))) = heap.pop() {
                self.process(work).await;
            }
        }
    }

    /// True when a command of the same object with a lower stream sequence is still pending:
    /// above the consumer's ack floor and without a result in the ledger.
    async fn earlier_pending(&self, work: &Work) -> Result<bool, async_nats::Error> {
        let Some(partition) = work.msg.subject.split('.').nth(2).and_then(|p| p.parse::<u32>().ok()) else {
            return Ok(false);
        };
        let Some(orphans) = self.orphan_ceiling.get(partition as usize) else { return Ok(false) };
        let ceiling = orphans.load(Ordering::SeqCst);
        if ceiling == 0 {
            return Ok(false);
        }
        let stream = self.js.get_stream(COMMANDS_STREAM).await?;
        let mut consumer: PullConsumer = stream.get_consumer(&BusConfig::partition_consumer_name(partition)).await?;
        let info = consumer.info().await?;
        let floor = info.ack_floor.stream_sequence;
        if floor >= ceiling.min(info.delivered.stream_sequence) {
            // Every possible orphan has been acknowledged since.
            let _ = orphans.compare_exchange(ceiling, 0, Ordering::SeqCst, Ordering::SeqCst);
            return Ok(false);
        }
        let upto = work.seq.min(ceiling.saturating_add(1));
        let filter = format!(
            "{}.{partition}.{}.{}.*",
            events::subjects::COMMANDS,
            work.cmd.project,
            work.cmd.body.command_type().kind().as_str()
        );
        let key = work.cmd.body.object_key();
        let mut from = floor + 1;
        while from < upto {
            let m = match stream.direct_get_next_for_subject(filter.clone(), Some(from)).await {
                Ok(m) => m,
                Err(_) => return Ok(false),
            };
            if m.sequence >= upto {
                return Ok(false);
            }
            from = m.sequence + 1;
            let Ok(earlier) = events::wire::decode_command(&m.subject, Some(&m.headers), &m.payload, &self.verifier) else {
                continue;
            };
            if earlier.body.object_key() == key && !self.ledger.has_result(&earlier.project, earlier.id).await.map_err(|e| e.to_string())? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn process(&self, work: Work) {
        let Work { msg, cmd, delivered, seq, progress } = work;
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
            let Ok(_permit) = self.permits.acquire().await else { return };
            let started = Instant::now();
            let mut backoff = Duration::from_millis(200);
            let ack = loop {
                match self.handle(&cmd, delivered).await {
                    Ok(ack) => break Some(ack),
                    Err(e) if started.elapsed() >= self.settings.retry_for => {
                        tracing::error!(error = %e, "giving up after retrying");
                        let outcome = Outcome::failed(FailureReason::Unavailable, "the command could not be applied in time");
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
            progress.abort();
            match ack {
                Some(kind) => {
                    if let Err(e) = msg.double_ack_with(kind).await {
                        // The result is stored: a redelivery finds it and is only acknowledged.
                        tracing::warn!(error = %e, "acknowledgement not confirmed");
                    }
                    metrics::histogram!("reconciler_command_apply_seconds").record(started.elapsed().as_secs_f64());
                }
                // Shutting down: left unacknowledged for redelivery.
                None => tracing::info!("shutting down; command left for redelivery"),
            }
            if let Ok(mut s) = self.in_flight.lock() {
                s.remove(&seq);
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
        metrics::counter!("reconciler_commands_applied_total", "type" => cmd.body.command_type().type_str()).increment(1);
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

fn result(cmd: &Command, outcome: Outcome) -> CommandResult {
    CommandResult {
        command_id: cmd.id,
        command_type: cmd.body.command_type().type_str().into(),
        project: cmd.project.clone(),
        time: chrono::Utc::now(),
        outcome,
    }
}
