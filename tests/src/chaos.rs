//! The chaos harness: a load generator that records every request it sends and every answer it
//! gets in a [`Ledger`], and an [`oracle`] that afterwards compares the ledger with the cluster,
//! the results stream (AMBIENT_RESULTS) and the status stream (AMBIENT_STATUS).
//!
//! The command mix makes "exactly once, in order" observable. Per project and scenario two
//! sessions are created, then updated with `displayName = v1, v2, …` (each update a new value),
//! interleaved with stops, starts and grants/revokes of a role for `bob`:
//!
//! - every applied update bumps the session's `metadata.generation` by exactly one (a duplicate
//!   applied later, or a reordered one, bumps it again), so `generation - 1` counts the updates
//!   applied;
//! - the final `displayName` must be the last accepted update;
//! - the session's status events must show the versions in send order and no event twice;
//! - every command id has at most one result, and every 202 gets one.
//!
//! The client behaves like a careful real client: every mutation carries an `Idempotency-Key`
//! and is retried with the same key after a 5xx or a transport error (bounded).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use events::crd::AgenticSession;
use events::status::StatusBody;
use futures::StreamExt as _;
use kube::api::Api;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::TestEnv;
use crate::http::Client;

/// How much load a scenario sends.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Projects the load is spread over.
    pub projects: usize,
    /// Commands per scenario (across all projects).
    pub commands: usize,
    /// Over how long the commands are paced.
    pub spread: Duration,
    /// How long the kube-apiserver stays down in its scenario.
    pub apiserver_outage: Duration,
}

impl Plan {
    /// CI: 300 commands over 10 projects; `AMBIENT_CHAOS_SOAK=1`: 2 000 over 50, with a 60 s
    /// API server outage.
    pub fn from_env() -> Plan {
        if std::env::var("AMBIENT_CHAOS_SOAK").is_ok_and(|v| !v.is_empty() && v != "0") {
            Plan {
                projects: 50,
                commands: 2000,
                spread: Duration::from_secs(60),
                apiserver_outage: Duration::from_secs(60),
            }
        } else {
            Plan {
                projects: 10,
                commands: 300,
                spread: Duration::from_secs(12),
                apiserver_outage: Duration::from_secs(20),
            }
        }
    }
}

/// A small deterministic random source (xorshift), seeded from `AMBIENT_CHAOS_SEED` or the clock,
/// so a failing run can be replayed with the seed it printed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `AMBIENT_CHAOS_SEED` if set, else from the clock.
    pub fn from_env() -> Rng {
        let seed = std::env::var("AMBIENT_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
        });
        Rng(seed.max(1))
    }

    /// The seed state.
    pub fn seed(&self) -> u64 {
        self.0
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration uniformly in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis().max(1) as u64;
        lo + Duration::from_millis(self.next_u64() % span)
    }
}

/// One logical operation of the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a session.
    CreateSession { session: String },
    /// Set a session's `displayName` to `v<version>`.
    Update { session: String, version: u32 },
    /// Start a session (again).
    Start { session: String },
    /// Stop a session.
    Stop { session: String },
    /// Grant `bob` a role.
    Grant { role: &'static str },
    /// Revoke `bob`'s access.
    Revoke,
}

impl Op {
    fn request(&self, project: &str) -> (Method, String, Option<Value>) {
        let sp = format!("/api/projects/{project}/agentic-sessions");
        match self {
            Op::CreateSession { session } => (
                Method::POST,
                sp,
                Some(json!({"name": session, "prompt": "chaos", "displayName": "v0", "timeout": 600})),
            ),
            Op::Update { session, version } => {
                (Method::PUT, format!("{sp}/{session}"), Some(json!({"displayName": format!("v{version}")})))
            }
            Op::Start { session } => (Method::POST, format!("{sp}/{session}/start"), Some(json!({}))),
            Op::Stop { session } => (Method::POST, format!("{sp}/{session}/stop"), Some(json!({}))),
            Op::Grant { role } => (
                Method::POST,
                format!("/api/projects/{project}/permissions"),
                Some(json!({"subjectType": "user", "subjectName": "bob", "role": role})),
            ),
            Op::Revoke => (Method::DELETE, format!("/api/projects/{project}/permissions/user/bob"), None),
        }
    }
}

/// The script of one project in one scenario: `n` operations on sessions `<tag>-a`, `<tag>-b`.
pub fn script(tag: &str, n: usize) -> Vec<Op> {
    script_of(tag, n, true)
}

/// [`script`], with or without grants and revokes (lanes sharing a project must not race on
/// the same grant).
pub fn script_of(tag: &str, n: usize, permissions: bool) -> Vec<Op> {
    let sessions = [format!("{tag}-a"), format!("{tag}-b")];
    let mut versions = [0u32; 2];
    let roles = ["view", "edit", "admin"];
    let mut ops: Vec<Op> = sessions.iter().map(|s| Op::CreateSession { session: s.clone() }).collect();
    for i in ops.len()..n {
        let k = i % 2;
        let session = sessions[k].clone();
        ops.push(match i % 12 {
            3 if permissions => Op::Grant { role: roles[(i / 12) % roles.len()] },
            7 => Op::Stop { session },
            9 => Op::Start { session },
            11 if permissions && (i / 12) % 2 == 1 => Op::Revoke,
            _ => {
                versions[k] += 1;
                Op::Update { session, version: versions[k] }
            }
        });
    }
    ops
}

/// One answer (or the lack of one).
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP answer; `command_id` from a 202's body or a 503's `commandId`.
    Status { code: u16, command_id: Option<Uuid>, body: Value },
    /// No answer: connection refused or reset, timeout.
    Transport(String),
}

/// One attempt of an operation.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it was sent.
    pub sent: Instant,
    /// When the answer (or the error) came.
    pub done: Instant,
    /// What came back.
    pub answer: Answer,
}

/// How an operation ended for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200/201/204, or 202 whose command later succeeded.
    Accepted,
    /// A definite refusal: 4xx, or 202 whose command later failed.
    Refused(u16),
    /// 202 whose command never got a result (lost).
    NeverCompleted(Uuid),
    /// Only 5xx or transport errors, even after retries.
    Unresolved,
}

/// One operation and all its attempts.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its project.
    pub project: String,
    /// What it did.
    pub op: Op,
    /// The `Idempotency-Key` of every attempt.
    pub idempotency_key: String,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// For a 202: the command's final state, resolved by [`Ledger::settle`].
    pub settled: Option<Outcome>,
}

impl Entry {
    /// The last answer.
    pub fn last(&self) -> Option<&Answer> {
        self.attempts.last().map(|a| &a.answer)
    }

    /// How it ended for the client.
    pub fn outcome(&self) -> Outcome {
        if let Some(o) = &self.settled {
            return o.clone();
        }
        match self.last() {
            Some(Answer::Status { code, .. }) if (200..300).contains(code) => Outcome::Accepted,
            Some(Answer::Status { code, .. }) if (400..500).contains(code) => Outcome::Refused(*code),
            _ => Outcome::Unresolved,
        }
    }

    /// Whether the client was told the command was accepted (2xx, 202 included).
    pub fn acknowledged(&self) -> bool {
        matches!(self.last(), Some(Answer::Status { code, .. }) if (200..300).contains(code))
    }
}

/// Every request the client sent and every answer it got, per scenario.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Ledger {
    /// A copy of the entries.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn push(&self, e: Entry) {
        if let Ok(mut v) = self.entries.lock() {
            v.push(e);
        }
    }

    /// Adds another ledger's entries (one oracle over several loads).
    pub fn extend(&self, other: &Ledger) {
        for e in other.entries() {
            self.push(e);
        }
    }

    /// Commands answered 202 (still pending when answered).
    pub fn deferred(&self) -> usize {
        self.entries().iter().filter(|e| matches!(e.last(), Some(Answer::Status { code: 202, .. }))).count()
    }

    /// How long each operation answered 2xx synchronously took (its last attempt); a 202 (the
    /// api stopped waiting for the result) counts as the api's wait.
    pub fn answer_times(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .entries()
            .iter()
            .filter_map(|e| e.attempts.last())
            .filter(|a| matches!(a.answer, Answer::Status { code: 200..=299, .. }))
            .map(|a| a.done.duration_since(a.sent))
            .collect();
        v.sort();
        v
    }

    /// Resolves every 202 through `GET /api/commands/{id}` (waiting up to `timeout` for results).
    pub async fn settle(&self, client: &Client, token: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        for i in 0..n {
            let Some(id) = self.entries.lock().ok().and_then(|e| match e[i].last() {
                Some(Answer::Status { code: 202, command_id: Some(id), .. }) => Some(*id),
                _ => None,
            }) else {
                continue;
            };
            let outcome = loop {
                let r = client.try_call(Method::GET, &format!("/api/commands/{id}"), Some(token), None, &[]).await;
                if let Ok(r) = r {
                    match r.body["state"].as_str() {
                        Some("succeeded") => break Outcome::Accepted,
                        Some("failed") => break Outcome::Refused(r.body["result"]["code"].as_u64().unwrap_or(0) as u16),
                        _ => {}
                    }
                }
                if Instant::now() > deadline {
                    break Outcome::NeverCompleted(id);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if let Ok(mut e) = self.entries.lock() {
                e[i].settled = Some(outcome);
            }
        }
    }

    /// The longest time from `fault` on in which no request was applied synchronously: from
    /// the fault to the first success, between two successes, or from the last success to the
    /// last answer of any kind (what clients saw as the fault's unavailability window; a load
    /// with no success after the fault counts whole).
    pub fn longest_gap_after(&self, fault: Instant) -> Duration {
        let entries = self.entries();
        let attempts = || entries.iter().flat_map(|e| e.attempts.iter()).filter(|a| a.done >= fault);
        let end = attempts().map(|a| a.done).max().unwrap_or(fault);
        let mut done: Vec<Instant> = attempts()
            .filter(|a| matches!(a.answer, Answer::Status { code, .. } if code == 200 || code == 201 || code == 204))
            .map(|a| a.done)
            .collect();
        done.sort();
        done.push(end);
        let mut last = fault;
        let mut gap = Duration::ZERO;
        for t in done {
            gap = gap.max(t.saturating_duration_since(last));
            last = last.max(t);
        }
        gap
    }

    /// How long after `healed` the first request sent after it was applied synchronously.
    pub fn recovery_after(&self, healed: Instant) -> Option<Duration> {
        self.entries()
            .iter()
            .flat_map(|e| e.attempts.iter())
            .filter(|a| a.sent >= healed)
            .filter(|a| matches!(a.answer, Answer::Status { code, .. } if code == 200 || code == 201 || code == 204))
            .map(|a| a.done.duration_since(healed))
            .min()
    }
}

/// Runs `script(tag, plan.commands / projects)` in every project concurrently (each project's
/// operations in order), paced over `plan.spread`, recording everything in the returned ledger.
/// Mutations are retried with the same `Idempotency-Key` after 5xx/transport errors for up to
/// `retry_for`.
pub async fn run_load(
    client: &Client,
    token: &str,
    projects: &[String],
    tag: &str,
    plan: Plan,
    retry_for: Duration,
) -> Ledger {
    let ledger = Ledger::default();
    let per_project = (plan.commands / projects.len().max(1)).max(2);
    let pace = plan.spread / per_project as u32;
    let workers = projects.iter().map(|p| {
        let (client, ledger, p) = (client.clone(), ledger.clone(), p.clone());
        let token = token.to_string();
        let ops = script(tag, per_project);
        async move {
            for op in ops {
                let started = Instant::now();
                let entry = execute(&client, &token, &p, op, retry_for, false).await;
                ledger.push(entry);
                if let Some(rest) = pace.checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    ledger
}

/// Floods one project: `lanes` concurrent lanes, each running `script_of(<tag>-l<i>, per_lane,
/// false)` as fast as the api answers, asking for asynchronous answers (202 at once).
pub async fn run_flood(
    client: &Client,
    token: &str,
    project: &str,
    tag: &str,
    lanes: usize,
    per_lane: usize,
    retry_for: Duration,
) -> Ledger {
    let ledger = Ledger::default();
    let workers = (0..lanes).map(|i| {
        let (client, ledger, project) = (client.clone(), ledger.clone(), project.to_string());
        let token = token.to_string();
        let ops = script_of(&format!("{tag}-l{i}"), per_lane, false);
        async move {
            for op in ops {
                ledger.push(execute(&client, &token, &project, op, retry_for, true).await);
            }
        }
    });
    futures::future::join_all(workers).await;
    ledger
}

async fn execute(
    client: &Client,
    token: &str,
    project: &str,
    op: Op,
    retry_for: Duration,
    respond_async: bool,
) -> Entry {
    let key = Uuid::new_v4().to_string();
    let (method, path, body) = op.request(project);
    let mut entry =
        Entry { project: project.to_string(), op, idempotency_key: key.clone(), attempts: Vec::new(), settled: None };
    let first = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let sent = Instant::now();
        let mut headers = vec![("idempotency-key", key.as_str())];
        if respond_async {
            headers.push(("prefer", "respond-async"));
        }
        let r = client.try_call(method.clone(), &path, Some(token), body.clone(), &headers).await;
        let answer = match r {
            Ok(r) => {
                let id = r
                    .body
                    .get("id")
                    .or_else(|| r.body.get("commandId"))
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok());
                let command_id = if r.status.as_u16() == 202 || r.status.is_server_error() { id } else { None };
                Answer::Status { code: r.status.as_u16(), command_id, body: r.body }
            }
            Err(e) => Answer::Transport(e.to_string()),
        };
        let retry = match &answer {
            Answer::Status { code, .. } => *code >= 500 || *code == 429,
            Answer::Transport(_) => true,
        };
        entry.attempts.push(Attempt { sent, done: Instant::now(), answer });
        if !retry || first.elapsed() > retry_for {
            return entry;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// What the oracle found for one scenario.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Operations sent.
    pub sent: usize,
    /// Operations the api acknowledged (2xx, 202 included).
    pub accepted: usize,
    /// Answered 202, then the command failed (e.g. a stop of a session that had finished).
    pub failed_after_202: usize,
    /// Acknowledged operations whose effect the oracle found exactly once.
    pub applied: usize,
    /// Effects found more than once (extra generations, several results for one command id).
    pub duplicated: usize,
    /// Acknowledged operations whose effect is missing (or a 202 that never got a result).
    pub lost: usize,
    /// Effects seen out of send order (status events or final state).
    pub misordered: usize,
    /// Operations left with only 5xx/transport errors after retries.
    pub unresolved: usize,
    /// Attempts answered 5xx or not at all (retried).
    pub failed_attempts: usize,
    /// Status events seen twice (same id, or the same phase transition twice).
    pub duplicate_status: usize,
    /// Time from the fault healing to the first synchronously applied command.
    pub recovery: Option<Duration>,
    /// Everything wrong, as sentences.
    pub anomalies: Vec<String>,
}

impl Report {
    /// True when nothing was lost, duplicated, misordered or otherwise wrong.
    pub fn clean(&self) -> bool {
        self.duplicated == 0
            && self.lost == 0
            && self.misordered == 0
            && self.duplicate_status == 0
            && self.anomalies.is_empty()
    }

    /// The table header.
    pub fn header() -> String {
        format!(
            "{:<22} {:>5} {:>8} {:>9} {:>7} {:>10} {:>5} {:>10} {:>10} {:>9} {:>10} {:>10}",
            "scenario",
            "sent",
            "accepted",
            "202→fail",
            "applied",
            "duplicated",
            "lost",
            "misordered",
            "unresolved",
            "5xx/conn",
            "dup status",
            "recover"
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rec = self.recovery.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "-".into());
        write!(
            f,
            "{:<22} {:>5} {:>8} {:>9} {:>7} {:>10} {:>5} {:>10} {:>10} {:>9} {:>10} {:>10}",
            self.name,
            self.sent,
            self.accepted,
            self.failed_after_202,
            self.applied,
            self.duplicated,
            self.lost,
            self.misordered,
            self.unresolved,
            self.failed_attempts,
            self.duplicate_status,
            rec
        )
    }
}

/// Where the oracle looks: the cluster (as admin) and the bus a stack runs on (the shared NATS,
/// or a test's own cluster of NATS servers).
#[derive(Clone)]
pub struct Target {
    /// An admin client of the cluster.
    pub admin: kube::Client,
    /// JetStream of the stack's bus.
    pub js: jetstream::Context,
}

impl Target {
    /// The shared dev cluster and its NATS.
    pub fn of(env: &TestEnv) -> Target {
        Target { admin: env.admin(), js: env.jetstream().clone() }
    }
}

/// Every message of `stream` on `subject` from `since` on, in stream order.
async fn read_subject(
    env: &Target,
    stream: &str,
    subject: String,
    since: Option<u64>,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let stream = env.js.get_stream(stream).await.with_context(|| format!("stream {stream}"))?;
    let deliver_policy = match since {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        None => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut msgs = consumer.messages().await?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                let pending = m.info().map(|i| i.pending).unwrap_or(0);
                out.push(m);
                if pending == 0 {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            // No message within 2 s: the subject has nothing (more) for us.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

fn version_of(display_name: Option<&str>) -> Option<u32> {
    display_name?.strip_prefix('v')?.parse().ok()
}

/// The next sequence of AMBIENT_RESULTS: take it before a scenario, give it to [`oracle`].
pub async fn results_mark(env: &Target) -> anyhow::Result<u64> {
    let mut stream = env.js.get_stream(events::streams::RESULTS_STREAM).await?;
    Ok(stream.info().await?.state.last_sequence + 1)
}

/// Compares `ledger` with the cluster, AMBIENT_RESULTS (from sequence `since` on, see
/// [`results_mark`]) and AMBIENT_STATUS.
pub async fn oracle(
    env: &Target,
    name: &str,
    ledger: &Ledger,
    admin_client: &Client,
    admin_token: &str,
    since: u64,
) -> anyhow::Result<Report> {
    let entries = ledger.entries();
    let mut r = Report { name: name.into(), sent: entries.len(), ..Default::default() };
    r.failed_attempts = entries
        .iter()
        .flat_map(|e| e.attempts.iter())
        .filter(|a| matches!(a.answer, Answer::Transport(_) | Answer::Status { code: 500.., .. }))
        .count();
    for e in &entries {
        if e.acknowledged() {
            r.accepted += 1;
            if matches!(e.outcome(), Outcome::Refused(_)) {
                r.failed_after_202 += 1;
            }
        }
        match e.outcome() {
            Outcome::Unresolved => r.unresolved += 1,
            Outcome::NeverCompleted(id) => {
                r.lost += 1;
                r.anomalies.push(format!("{} {:?}: answered 202 ({id}) but never completed", e.project, e.op));
            }
            // A 5xx must never be given for something the server did anyway, unless the
            // retry (same Idempotency-Key) then reports it: only the final answer counts.
            _ => {}
        }
        if let Some(Answer::Status { code: 500, body, .. }) = e.last() {
            r.anomalies.push(format!("{} {:?}: 500 {body}", e.project, e.op));
        }
    }

    let mut by_project: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in &entries {
        by_project.entry(e.project.as_str()).or_default().push(e);
    }
    for (project, ops) in &by_project {
        check_sessions(env, project, ops, &mut r).await?;
        check_permission(admin_client, admin_token, project, ops, &mut r).await?;
        check_results(env, project, ops, since, &mut r).await?;
    }
    Ok(r)
}

async fn check_sessions(env: &Target, project: &str, ops: &[&Entry], r: &mut Report) -> anyhow::Result<()> {
    let api = Api::<AgenticSession>::namespaced(env.admin.clone(), project);
    let mut sessions: BTreeSet<&str> = BTreeSet::new();
    for e in ops {
        if let Op::CreateSession { session } = &e.op {
            sessions.insert(session);
        }
    }
    for s in sessions {
        let of = |e: &&&Entry| match &e.op {
            Op::CreateSession { session }
            | Op::Update { session, .. }
            | Op::Start { session }
            | Op::Stop { session } => session == s,
            _ => false,
        };
        let mine: Vec<&&Entry> = ops.iter().filter(of).collect();
        let create = mine.iter().find(|e| matches!(e.op, Op::CreateSession { .. }));
        let obj = api.get_opt(s).await?;
        let created = create.map(|c| c.outcome());
        match (&created, &obj) {
            (Some(Outcome::Accepted), Some(_)) => r.applied += 1,
            (Some(Outcome::Accepted), None) => {
                r.lost += 1;
                r.anomalies.push(format!("{project}/{s}: create accepted, session missing"));
            }
            (Some(Outcome::Refused(code)), Some(_)) => {
                r.anomalies.push(format!("{project}/{s}: create refused ({code}) yet the session exists"));
            }
            _ => {}
        }
        let Some(obj) = obj else { continue };

        // Updates: acknowledged ones must all be applied, once, in order.
        let mut accepted = Vec::new();
        let mut maybe = BTreeSet::new();
        for e in &mine {
            if let Op::Update { version, .. } = e.op {
                match e.outcome() {
                    Outcome::Accepted => accepted.push(version),
                    Outcome::Unresolved => {
                        maybe.insert(version);
                    }
                    _ => {}
                }
            }
        }
        let generation = obj.metadata.generation.unwrap_or(0);
        let applied_updates = (generation - 1).max(0) as usize;
        let (lo, hi) = (accepted.len(), accepted.len() + maybe.len());
        if applied_updates < lo {
            r.lost += lo - applied_updates;
            r.anomalies
                .push(format!("{project}/{s}: {lo} updates accepted, generation {generation} shows {applied_updates}"));
        } else if applied_updates > hi {
            r.duplicated += applied_updates - hi;
            r.anomalies.push(format!(
                "{project}/{s}: at most {hi} updates sent, generation {generation} shows {applied_updates}"
            ));
        }
        r.applied += accepted.len().min(applied_updates);
        let last_accepted = accepted.last().copied().unwrap_or(0);
        let final_version = version_of(obj.spec.display_name.as_deref());
        let final_ok = final_version == Some(last_accepted)
            || final_version.is_some_and(|v| v > last_accepted && maybe.contains(&v));
        if !final_ok {
            r.misordered += 1;
            r.anomalies.push(format!(
                "{project}/{s}: final displayName {:?}, last accepted update v{last_accepted}",
                obj.spec.display_name
            ));
        }

        // Its status events: each once, versions and generations never going back.
        let subject = format!("ambient.status.{project}.session.{s}");
        let msgs = read_subject(env, events::streams::STATUS_STREAM, subject, None).await?;
        let mut ids = HashMap::new();
        let mut transitions = BTreeSet::new();
        let (mut last_gen, mut last_ver) = (0i64, 0u32);
        let mut gen_names: HashMap<i64, Option<String>> = HashMap::new();
        for m in &msgs {
            let ev = match events::wire::decode_status(m.headers.as_ref(), &m.payload) {
                Ok(ev) => ev,
                Err(e) => {
                    r.anomalies.push(format!("{project}/{s}: undecodable status event: {e}"));
                    continue;
                }
            };
            if ids.insert(ev.id.clone(), ()).is_some() {
                r.duplicate_status += 1;
                r.anomalies.push(format!("{project}/{s}: status event {} twice", ev.id));
            }
            match &ev.body {
                StatusBody::SessionChanged(v) => {
                    if v.generation < last_gen {
                        r.misordered += 1;
                        r.anomalies.push(format!("{project}/{s}: status generation {} after {last_gen}", v.generation));
                    }
                    if let Some(prev) = gen_names.insert(v.generation, v.display_name.clone())
                        && prev != v.display_name
                    {
                        r.anomalies.push(format!(
                            "{project}/{s}: generation {} shown as {prev:?} and {:?}",
                            v.generation, v.display_name
                        ));
                    }
                    let ver = version_of(v.display_name.as_deref()).unwrap_or(0);
                    if ver < last_ver {
                        r.misordered += 1;
                        r.anomalies.push(format!("{project}/{s}: status shows v{ver} after v{last_ver}"));
                    }
                    last_gen = last_gen.max(v.generation);
                    last_ver = last_ver.max(ver);
                }
                StatusBody::SessionPhase(t) => {
                    let key = format!("{:?}->{:?}@{}", t.previous_phase, t.phase, t.at.to_rfc3339());
                    if !transitions.insert(key.clone()) {
                        r.duplicate_status += 1;
                        r.anomalies.push(format!("{project}/{s}: transition {key} twice"));
                    }
                }
                _ => {}
            }
        }
        if last_gen != generation {
            r.anomalies.push(format!(
                "{project}/{s}: status events end at generation {last_gen}, the session is at {generation}"
            ));
        }
        // Starts and stops: a definite answer each; their effect is checked by the phase events.
        for e in &mine {
            if matches!(e.op, Op::Start { .. } | Op::Stop { .. }) && e.outcome() == Outcome::Accepted {
                r.applied += 1;
            }
        }
    }
    Ok(())
}

async fn check_permission(
    client: &Client,
    token: &str,
    project: &str,
    ops: &[&Entry],
    r: &mut Report,
) -> anyhow::Result<()> {
    let perm: Vec<&&Entry> = ops.iter().filter(|e| matches!(e.op, Op::Grant { .. } | Op::Revoke)).collect();
    let Some(last_acc) = perm.iter().rposition(|e| e.outcome() == Outcome::Accepted) else { return Ok(()) };
    let role_of = |e: &Entry| match &e.op {
        Op::Grant { role } => Some(role.to_string()),
        _ => None,
    };
    // The last accepted grant/revoke wins, unless an unresolved one after it was applied.
    let mut allowed = vec![role_of(perm[last_acc])];
    allowed.extend(perm[last_acc + 1..].iter().filter(|e| e.outcome() == Outcome::Unresolved).map(|e| role_of(e)));
    let resp =
        client.try_call(Method::GET, &format!("/api/projects/{project}/permissions"), Some(token), None, &[]).await?;
    let bob = resp.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["subjectType"] == "user" && i["subjectName"] == "bob")
        .and_then(|i| i["role"].as_str().map(String::from));
    let accepted = perm.iter().filter(|e| e.outcome() == Outcome::Accepted).count();
    if allowed.contains(&bob) {
        r.applied += accepted;
    } else {
        r.lost += 1;
        r.applied += accepted - 1;
        r.anomalies
            .push(format!("{project}: bob's role is {bob:?}, the last accepted grant/revoke says {:?}", allowed[0]));
    }
    Ok(())
}

async fn check_results(env: &Target, project: &str, ops: &[&Entry], since: u64, r: &mut Report) -> anyhow::Result<()> {
    let msgs =
        read_subject(env, events::streams::RESULTS_STREAM, format!("ambient.result.{project}.>"), Some(since)).await?;
    let mut per_id: HashMap<Uuid, usize> = HashMap::new();
    for m in &msgs {
        if let Ok(res) = events::wire::decode_result(m.headers.as_ref(), &m.payload) {
            *per_id.entry(res.command_id).or_default() += 1;
        }
    }
    for (id, n) in &per_id {
        if *n > 1 {
            r.duplicated += n - 1;
            r.anomalies.push(format!("{project}: command {id} has {n} results"));
        }
    }
    for e in ops {
        for a in &e.attempts {
            if let Answer::Status { code: 202, command_id: Some(id), .. } = &a.answer
                && !per_id.contains_key(id)
            {
                r.anomalies.push(format!("{project} {:?}: 202 for {id}, no result in AMBIENT_RESULTS", e.op));
            }
        }
    }
    Ok(())
}
