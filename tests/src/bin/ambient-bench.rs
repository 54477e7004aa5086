//! The benchmark: brings up the control plane on the dev cluster, loads it, and prints a
//! markdown table (and writes JSON) where every figure stands beside a baseline measured in the
//! same run.
//!
//!   cargo run --release -p ambient-tests --bin ambient-bench -- [--quick] [--json PATH]
//!
//! `--quick` (seconds; CI's smoke test) uses small counts; the full mode is for people.
//! `--only accept,applied,throughput,sse,scale,fairness,writes,replicas` runs some parts (the footprint is always shown).
//! `--rates 100,200` and `--rate-seconds 30` change the open loop's rates and their length.
//! Attaches to the cluster named by `AMBIENT_STATE_DIR`, or starts one (see `TestEnv`).

use std::time::{Duration, Instant};

use ambient_tests::bench::{CpuSnapshot, Figure, Row, Samples, markdown};
use ambient_tests::components::Component;
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, unique_name};
use anyhow::{Context as _, bail};
use events::crd::{AgenticSession, AgenticSessionSpec};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::ResourceExt as _;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use serde_json::json;

struct Mode {
    quick: bool,
    samples: usize,
    rates: Vec<u32>,
    rate_seconds: u64,
    rate_projects: usize,
    scale_projects: usize,
    scale_sessions_per_project: usize,
    big_project_sessions: usize,
    /// Commands in the one-project backlog of the fairness part.
    backlog: usize,
    /// Sessions run to completion to count API-server writes.
    write_sessions: usize,
    /// SSE streams open beside the measured one.
    sse_streams: usize,
}

impl Mode {
    fn new(quick: bool) -> Self {
        if quick {
            Mode {
                quick,
                samples: 20,
                rates: vec![10, 20],
                rate_seconds: 5,
                rate_projects: 5,
                scale_projects: 30,
                scale_sessions_per_project: 2,
                big_project_sessions: 50,
                backlog: 200,
                write_sessions: 20,
                sse_streams: 100,
            }
        } else {
            Mode {
                quick,
                samples: 300,
                rates: vec![25, 50, 100, 200, 300],
                rate_seconds: 60,
                rate_projects: 100,
                // The scale: GET /api/projects with 10 000 projects.
                scale_projects: 10_000,
                scale_sessions_per_project: 1,
                big_project_sessions: 1000,
                backlog: 2000,
                write_sessions: 100,
                sse_streams: 1000,
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| ambient_tests::repo_dir().join("target/bench/report.json").display().to_string());
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect());
    let runs = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    let mut mode = Mode::new(quick);
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    if let Some(v) = value_of("--rates") {
        mode.rates = v
            .split(',')
            .map(|r| r.trim().parse())
            .collect::<Result<_, _>>()
            .context("--rates: comma-separated integers")?;
    }
    if let Some(v) = value_of("--rate-seconds") {
        mode.rate_seconds = v.parse().context("--rate-seconds: an integer")?;
    }
    let env = TestEnv::shared().await.context("dev cluster")?;
    eprintln!("==> starting the stack (api, reconciler, projector under their ServiceAccounts)");
    // The benchmark measures the bus path, not the per-principal abuse limiter (20 req/s by
    // default), so it lifts the limit.
    let opts = StackOptions {
        // The fairness part builds one project's backlog of 2 000 session creates.
        api_args: vec![
            "--rate-limit-rps=1000000".into(),
            "--rate-limit-burst=1000000".into(),
            "--max-pending-commands-per-project=5000".into(),
            "--max-pending-bytes-per-project=4294967296".into(),
            // The SSE part opens a thousand streams as alice.
            "--sse-max-streams-per-caller=100000".into(),
            "--read-rate-limit-rps=1000000".into(),
            "--read-rate-limit-burst=1000000".into(),
        ],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(&env, opts).await?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let mut processes = cluster_processes(&env);
    for (c, p) in [
        (Component::Api, &stack.api),
        (Component::Reconciler, &stack.reconciler),
        (Component::Projector, &stack.projector),
    ] {
        processes.extend(p.pid().map(|pid| (c.binary().to_string(), pid)));
    }
    let b = Bench {
        env: env.clone(),
        http,
        api: stack.api_url.clone(),
        alice: env.token(DemoUser::Alice)?.to_string(),
        admin: env.token(DemoUser::Admin)?.to_string(),
        processes,
        alice_kube: kube::Client::try_from(env.info().kube_config(env.token(DemoUser::Alice)?).await?)?,
    };

    let mut rows = Vec::new();
    if runs("accept") {
        eprintln!("==> accept latency");
        rows.push(b.accept_latency(&mode).await?);
    }
    if runs("applied") {
        eprintln!("==> command → applied");
        rows.push(b.applied_latency(&mode).await?);
    }
    if runs("sse") {
        eprintln!("==> status → SSE");
        rows.extend(b.status_propagation(&mode).await?);
    }
    if runs("writes") {
        eprintln!("==> API-server writes per session");
        rows.push(b.writes(&mode).await?);
    }
    if runs("fairness") {
        eprintln!("==> fairness and recovery under one project's backlog");
        rows.extend(b.fairness(&mode, &mut stack).await?);
    }
    if runs("replicas") {
        eprintln!("==> throughput with 1 and 2 reconciler replicas");
        rows.extend(b.replicas(&mode, &mut stack).await?);
    }
    if runs("scale") {
        eprintln!("==> scale");
        rows.extend(b.scale(&mode, &mut stack).await?);
        // The footprint target is set at the scale run; the open loop adds many more sessions.
        rows.extend(footprint(&stack, "at the end of the scale run", true));
    }
    if runs("throughput") {
        eprintln!("==> sustained throughput (open loop)");
        rows.extend(b.throughput(&mode).await?);
    }
    eprintln!("==> footprint");
    let sessions = Api::<AgenticSession>::all(env.admin())
        .list_metadata(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    rows.extend(footprint(&stack, &format!("at the end ({sessions} sessions in the cluster)"), !runs("scale")));

    let title = if mode.quick { "quick (smoke) mode: small counts, figures are indicative only" } else { "full mode" };
    println!("\n## Ambient control plane benchmark — {title}\n\n{}", markdown(&rows));
    if let Some(dir) = std::path::Path::new(&json_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_vec_pretty(&rows)?)?;
    eprintln!("JSON written to {json_path}");
    Ok(())
}

/// Which way an open-loop create goes.
#[derive(Clone, Copy)]
enum Path {
    /// Straight to the API server (the baseline).
    Direct,
    /// Through the api and the bus.
    Api,
}

/// What one open-loop run saw.
struct OpenLoop {
    latency: Samples,
    failed: usize,
    lost: usize,
    /// Sessions created.
    names: Vec<String>,
}

/// How long the benchmark waits for an open loop's sessions to finish before the next run.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

struct Bench {
    env: TestEnv,
    http: reqwest::Client,
    api: String,
    alice: String,
    admin: String,
    /// Every process of the stack and the cluster, for CPU accounting.
    processes: Vec<(String, u32)>,
    /// alice's own client to the API server: the direct baselines are her creates, so they
    /// pass the same authorization and API priority and fairness as the reconciler's (the
    /// admin's requests skip the API server's queues).
    alice_kube: kube::Client,
}

/// The cluster's own processes (etcd, kube-apiserver, …, nats-server), from the PID files of
/// the state directory.
fn cluster_processes(env: &TestEnv) -> Vec<(String, u32)> {
    let Some(dir) = &env.info().state_dir else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir.join("pids")) else { return Vec::new() };
    let mut out: Vec<(String, u32)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            Some((name, pid))
        })
        .collect();
    out.sort();
    out
}

/// Names of sessions that reached a terminal phase, from one watch on all sessions: tells when
/// the runs an open loop started have all finished.
#[derive(Clone, Default)]
struct Finished(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Finished {
    fn watch(client: kube::Client) -> Self {
        let finished = Finished::default();
        let seen = finished.clone();
        tokio::spawn(async move {
            let mut stream = kube::runtime::watcher(Api::<AgenticSession>::all(client), Default::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = stream.next().await {
                let (Ok(kube::runtime::watcher::Event::Apply(s)) | Ok(kube::runtime::watcher::Event::InitApply(s))) =
                    ev
                else {
                    continue;
                };
                if s.status.as_ref().and_then(|st| st.phase).is_some_and(|p| p.is_terminal())
                    && let Ok(mut set) = seen.0.lock()
                {
                    set.insert(s.metadata.name.unwrap_or_default());
                }
            }
        });
        finished
    }

    fn count(&self, names: &[String]) -> usize {
        self.0.lock().map(|set| names.iter().filter(|n| set.contains(*n)).count()).unwrap_or(0)
    }

    /// Waits (at most `limit`) until every one of `names` finished; how long that took.
    async fn wait_all(&self, names: &[String], limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.count(names) == names.len() {
                return Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }
}

fn lat(s: &Samples) -> Figure {
    s.summary().map(Figure::Latency).unwrap_or(Figure::Missing { missing: "no samples".into() })
}

fn p99_under(s: &Samples, ms: f64) -> Option<bool> {
    s.summary().map(|l| l.p99_ms <= ms)
}

impl Bench {
    /// A managed project where alice is editor, made directly in the cluster (setup, not measured).
    async fn project_for_alice(&self, prefix: &str) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        let admin = self.env.admin();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("ambient-code.io/managed".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await?;
        grant(&admin, &name, "alice", "ambient-project-admin").await?;
        // Ready when the api shows it to alice (its watch caches and RBAC have caught up).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.http.get(format!("{}/api/projects/{name}", self.api)).bearer_auth(&self.alice).send().await?;
            if r.status().is_success() {
                return Ok(name);
            }
            if Instant::now() > deadline {
                bail!("project {name} not visible to alice through the api after 30 s ({})", r.status());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn session_body(name: &str) -> serde_json::Value {
        json!({"name": name, "prompt": "benchmark", "timeout": 600, "environmentVariables": {"KWOK_RUN_DURATION": "1h"}})
    }

    /// A session whose runner finishes at once (kwok's default 1.5 s): backlogs whose runs must
    /// be over before the next measurement (a project's quota admits 100 pods; long runs left
    /// the rest of a backlog's Jobs retrying pod creation against the API server).
    fn short_session_body(name: &str) -> serde_json::Value {
        json!({"name": name, "prompt": "benchmark", "timeout": 600})
    }

    async fn post_session(
        &self,
        project: &str,
        name: &str,
        asynchronous: bool,
    ) -> anyhow::Result<(reqwest::StatusCode, Duration)> {
        self.post_body(project, &Self::session_body(name), asynchronous).await
    }

    async fn post_body(
        &self,
        project: &str,
        body: &serde_json::Value,
        asynchronous: bool,
    ) -> anyhow::Result<(reqwest::StatusCode, Duration)> {
        let mut req = self
            .http
            .post(format!("{}/api/projects/{project}/agentic-sessions", self.api))
            .bearer_auth(&self.alice)
            .json(body);
        if asynchronous {
            req = req.header("Prefer", "respond-async");
        }
        let t = Instant::now();
        let r = req.send().await?;
        Ok((r.status(), t.elapsed()))
    }

    async fn accept_latency(&self, m: &Mode) -> anyhow::Result<Row> {
        // Baseline: a bare JetStream publish-with-ack from Rust (file storage, same server).
        let js = self.env.jetstream();
        let stream = unique_name("bench").to_uppercase().replace('-', "_");
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("bench.{stream}")],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        let mut base = Samples::default();
        let payload = serde_json::to_vec(&Self::session_body("x"))?;
        let project = self.project_for_alice("bench-accept").await?;
        let mut s = Samples::default();
        // Alternating samples: both see the same machine noise.
        for i in 0..m.samples {
            let t = Instant::now();
            js.publish(format!("bench.{stream}"), payload.clone().into()).await?.await?;
            base.push(t.elapsed());
            let (code, d) = self.post_session(&project, &format!("a-{i}"), true).await?;
            if code != reqwest::StatusCode::ACCEPTED {
                bail!("async create answered {code}");
            }
            s.push(d);
        }
        js.delete_stream(&stream).await?;
        Ok(Row {
            what: "accept: async POST session → 202".into(),
            met: p99_under(&s, 10.0),
            value: lat(&s),
            baseline: Some(("JetStream publish-with-ack".into(), lat(&base))),
            target: "p99 ≤ 10 ms".into(),
        })
    }

    async fn applied_latency(&self, m: &Mode) -> anyhow::Result<Row> {
        // Baseline (the floor): the same AgenticSession created directly on the API server.
        // Samples alternate with the measured ones, so both see the same machine noise.
        let floor_ns = self.project_for_alice("bench-floor").await?;
        let direct = Api::<AgenticSession>::namespaced(self.alice_kube.clone(), &floor_ns);
        let spec: AgenticSessionSpec = serde_json::from_value(json!({"prompt": "benchmark", "timeout": 600}))?;
        let project = self.project_for_alice("bench-sync").await?;
        let mut base = Samples::default();
        let mut s = Samples::default();
        for i in 0..m.samples {
            let obj = AgenticSession::new(&format!("d-{i}"), spec.clone());
            let t = Instant::now();
            direct.create(&PostParams::default(), &obj).await?;
            base.push(t.elapsed());
            let (code, d) = self.post_session(&project, &format!("s-{i}"), false).await?;
            if code != reqwest::StatusCode::CREATED {
                bail!("sync create answered {code}");
            }
            s.push(d);
        }
        let met = match (s.summary(), base.summary()) {
            (Some(a), Some(b)) => Some(a.p50_ms <= 2.0 * b.p50_ms),
            _ => None,
        };
        Ok(Row {
            what: "command → applied: sync POST session → 201".into(),
            value: lat(&s),
            baseline: Some(("direct create on kube-apiserver".into(), lat(&base))),
            target: "p50 ≤ 2× direct".into(),
            met,
        })
    }

    /// Open loop: requests are sent on a fixed schedule whatever the answers do, and latency
    /// counts from the scheduled time (no coordinated omission). At each rate the same creates
    /// are first written straight to the API server (the baseline: can the cluster itself,
    /// session controller and Jobs included, hold this rate?), then sent through the api.
    async fn throughput(&self, m: &Mode) -> anyhow::Result<Vec<Row>> {
        let mut projects = Vec::new();
        for _ in 0..m.rate_projects {
            projects.push(self.project_for_alice("bench-rate").await?);
        }
        let finished = Finished::watch(self.env.admin());
        let mut rows = Vec::new();
        let mut best: Option<u32> = None;
        let mut best_direct: Option<u32> = None;
        for &rate in &m.rates {
            let cpu0 = CpuSnapshot::take(&self.processes);
            let direct = self.open_loop(rate, m.rate_seconds, &projects, Path::Direct).await?;
            let cpu1 = CpuSnapshot::take(&self.processes);
            // Each run starts on a quiet cluster: the previous run's sessions (their Jobs and
            // pods) have finished, so neither path pays for the other's backlog.
            let direct_drain = finished.wait_all(&direct.names, DRAIN_LIMIT).await;
            let cpu2 = CpuSnapshot::take(&self.processes);
            let bus = self.open_loop(rate, m.rate_seconds, &projects, Path::Api).await?;
            let cpu3 = CpuSnapshot::take(&self.processes);
            let bus_drain = finished.wait_all(&bus.names, DRAIN_LIMIT).await;
            let drained = |d: Option<Duration>, names: &[String]| match d {
                Some(d) => format!("all finished {:.1} s after the last create", d.as_secs_f64()),
                None => format!(
                    "{} of {} finished {} s after the last create",
                    finished.count(names),
                    names.len(),
                    DRAIN_LIMIT.as_secs()
                ),
            };
            let (bus_cores, bus_split) = cpu3.cores_since(&cpu2);
            let (direct_cores, direct_split) = cpu1.cores_since(&cpu0);
            rows.push(Row {
                what: format!(
                    "CPU during the open loop at {rate}/s (through the api: {bus_split}; direct: {direct_split}); sessions through the api {}, direct {}",
                    drained(bus_drain, &bus.names),
                    drained(direct_drain, &direct.names),
                ),
                value: Figure::Scalar { value: bus_cores, unit: "cores".into() },
                baseline: Some(("direct creates at the same rate".into(), Figure::Scalar { value: direct_cores, unit: "cores".into() })),
                target: format!("{} cores on this machine", std::thread::available_parallelism().map_or(0, |n| n.get())),
                met: None,
            });
            let ok = bus.failed == 0 && bus.lost == 0 && p99_under(&bus.latency, 1000.0) == Some(true);
            if ok {
                best = Some(rate);
            }
            let direct_ok = direct.failed == 0 && direct.lost == 0 && p99_under(&direct.latency, 1000.0) == Some(true);
            if direct_ok {
                best_direct = Some(rate);
            }
            rows.push(Row {
                what: format!(
                    "open loop {rate} creates/s for {} s ({} projects): failed {}, lost {} (direct: failed {}, lost {})",
                    m.rate_seconds, m.rate_projects, bus.failed, bus.lost, direct.failed, direct.lost
                ),
                value: lat(&bus.latency),
                baseline: Some(("direct creates at the same rate".into(), lat(&direct.latency))),
                target: "p99 < 1 s, nothing lost".into(),
                met: Some(ok),
            });
            if rate == 50 {
                rows.push(Row {
                    what: "command → applied at 50 commands/s: sync POST session → 201 in the open loop".into(),
                    met: p99_under(&bus.latency, 100.0),
                    value: lat(&bus.latency),
                    baseline: Some(("direct creates at the same rate".into(), lat(&direct.latency))),
                    target: "p99 ≤ 100 ms".into(),
                });
            }
            // Higher rates only pile up more backlog once both paths fail.
            if !ok && !direct_ok {
                break;
            }
        }
        let rate_figure = |r: Option<u32>| match r {
            Some(r) => Figure::Scalar { value: r as f64, unit: "commands/s".into() },
            None => Figure::Missing { missing: "no tested rate met the bar".into() },
        };
        rows.push(Row {
            what: format!("sustained: highest tested rate (of {:?}/s) with p99 < 1 s and nothing lost", m.rates),
            value: rate_figure(best),
            baseline: Some(("the same creates written straight to the API server".into(), rate_figure(best_direct))),
            target: "≥ 0.9× what the API server sustains".into(),
            met: match (best, best_direct) {
                (Some(b), Some(d)) => Some(f64::from(b) >= 0.9 * f64::from(d)),
                (None, Some(_)) => Some(false),
                _ => None,
            },
        });
        Ok(rows)
    }

    /// Sends `rate` session creates per second for `secs` seconds across `projects` on a fixed
    /// schedule, then checks that every accepted create exists in the cluster.
    async fn open_loop(&self, rate: u32, secs: u64, projects: &[String], path: Path) -> anyhow::Result<OpenLoop> {
        let total = rate as u64 * secs;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let prefix = match path {
            Path::Direct => format!("d{rate}"),
            Path::Api => format!("r{rate}"),
        };
        // Short runs: the fake runners finish, so load does not pile up as pods.
        let spec: AgenticSessionSpec = serde_json::from_value(json!({"prompt": "benchmark", "timeout": 600}))?;
        let mut tasks = Vec::new();
        for i in 0..total {
            let at = start + interval * i as u32;
            let project = projects[i as usize % projects.len()].clone();
            let name = format!("{prefix}-{i}");
            let http = self.http.clone();
            let url = format!("{}/api/projects/{project}/agentic-sessions", self.api);
            let token = self.alice.clone();
            let direct = Api::<AgenticSession>::namespaced(self.alice_kube.clone(), &project);
            let spec = spec.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let ok = match path {
                    Path::Api => {
                        let body = json!({"name": name, "prompt": "benchmark", "timeout": 600});
                        let r = http.post(url).bearer_auth(token).json(&body).send().await;
                        r.is_ok_and(|r| {
                            r.status() == reqwest::StatusCode::CREATED || r.status() == reqwest::StatusCode::ACCEPTED
                        })
                    }
                    Path::Direct => {
                        direct.create(&PostParams::default(), &AgenticSession::new(&name, spec)).await.is_ok()
                    }
                };
                (ok, at.elapsed(), project, name)
            }));
        }
        let mut out = OpenLoop { latency: Samples::default(), failed: 0, lost: 0, names: Vec::new() };
        let mut created = Vec::new();
        for t in tasks {
            let (ok, d, project, name) = t.await?;
            if ok {
                out.latency.push(d);
                out.names.push(name.clone());
                created.push((project, name));
            } else {
                out.failed += 1;
            }
        }
        // Nothing lost: every accepted create exists in the cluster.
        for (p, n) in &created {
            let api = Api::<AgenticSession>::namespaced(self.env.admin(), p);
            let mut found = false;
            for _ in 0..50 {
                if api.get_opt(n).await?.is_some() {
                    found = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            out.lost += usize::from(!found);
        }
        Ok(out)
    }

    /// An SSE stream of `path` as alice, each event with the time it arrived.
    async fn sse_events(&self, path: &str) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.alice)
            .header("Accept", "text/event-stream")
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("SSE answered {}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find("\n\n") {
                    let ev: String = buf.drain(..i + 2).collect();
                    if tx.send((Instant::now(), ev)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// `n` status changes written to the cluster, each timed until `rx` shows it.
    async fn markers(
        sessions: &Api<AgenticSession>,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
        n: usize,
    ) -> anyhow::Result<Samples> {
        let mut s = Samples::default();
        for i in 0..n {
            let marker = format!("bench-marker-{i}-{}", uuid::Uuid::new_v4().simple());
            let t = Instant::now();
            sessions
                .patch_status("watched", &PatchParams::default(), &Patch::Merge(json!({"status": {"message": marker}})))
                .await?;
            let deadline = t + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx.recv()).await {
                    Ok(Some((at, ev))) if ev.contains(&marker) => {
                        s.push(at.duration_since(t));
                        break;
                    }
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
        Ok(s)
    }

    /// Status change in the cluster → an SSE client, alone and then with `m.sse_streams` other
    /// streams open on the same session (every change then goes out to all of them).
    async fn status_propagation(&self, m: &Mode) -> anyhow::Result<Vec<Row>> {
        let project = self.project_for_alice("bench-sse").await?;
        let (code, _) = self.post_session(&project, "watched", false).await?;
        if code != reqwest::StatusCode::CREATED {
            bail!("create answered {code}");
        }
        let path = format!("/api/projects/{project}/agentic-sessions/watched/events");
        let mut rx = self.sse_events(&path).await?;
        let sessions = Api::<AgenticSession>::namespaced(self.env.admin(), &project);
        let n = m.samples.min(50);
        // Let the stream catch up with the creation events first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while rx.try_recv().is_ok() {}
        let alone = Self::markers(&sessions, &mut rx, n).await?;

        let others: Vec<_> = futures::stream::iter(0..m.sse_streams)
            .map(|_| self.sse_events(&path))
            .buffer_unordered(50)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        // Every other stream is read (and dropped) as a client would.
        let readers: Vec<_> =
            others.into_iter().map(|mut o| tokio::spawn(async move { while o.recv().await.is_some() {} })).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        while rx.try_recv().is_ok() {}
        let crowded = Self::markers(&sessions, &mut rx, n).await?;
        for r in readers {
            r.abort();
        }
        let arrived = |s: &Samples| if s.len() == n { p99_under(s, 250.0) } else { Some(false) };
        Ok(vec![
            Row {
                what: format!("status change in cluster → SSE client ({} of {n} arrived)", alone.len()),
                met: arrived(&alone),
                value: lat(&alone),
                baseline: None,
                target: "p99 ≤ 250 ms".into(),
            },
            Row {
                what: format!(
                    "the same with {} other streams open on that session, one api ({} of {n} arrived)",
                    m.sse_streams,
                    crowded.len()
                ),
                met: arrived(&crowded),
                value: lat(&crowded),
                baseline: Some(("the same stream alone".into(), lat(&alone))),
                target: "p99 ≤ 250 ms".into(),
            },
        ])
    }

    /// Writes the API server has served so far, per resource (`resource` or
    /// `resource/subresource`), from its own `apiserver_request_total`.
    async fn apiserver_writes(&self) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.env.admin().request_text(req).await?;
        let mut writes = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
            let Some((labels, value)) = line.rsplit_once(' ') else { continue };
            let label =
                |k: &str| labels.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
            if !["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&label("verb")) {
                continue;
            }
            // Reviews and token requests are answered, not stored.
            let resource = label("resource");
            if resource.ends_with("reviews") || label("subresource") == "token" {
                continue;
            }
            let key = match label("subresource") {
                "" => label("resource").to_string(),
                sub => format!("{}/{sub}", label("resource")),
            };
            *writes.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        Ok(writes)
    }

    /// API-server writes per session from create to Completed (ours, and the Job controller's,
    /// scheduler's and kwok's for its runner), beside a bare Job running a pod to completion on
    /// the same cluster. Background writes (leases, node heartbeats) are measured while idle
    /// and subtracted.
    async fn writes(&self, m: &Mode) -> anyhow::Result<Row> {
        let n = m.write_sessions;
        let delta = |a: &std::collections::BTreeMap<String, f64>, b: &std::collections::BTreeMap<String, f64>| {
            b.iter()
                .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let idle_window = Duration::from_secs(10);
        let w0 = self.apiserver_writes().await?;
        tokio::time::sleep(idle_window).await;
        let idle = delta(&w0, &self.apiserver_writes().await?);
        let idle_per_sec: f64 = idle.values().sum::<f64>() / idle_window.as_secs_f64();

        let project = self.project_for_alice("bench-writes").await?;
        let finished = Finished::watch(self.env.admin());
        let names: Vec<String> = (0..n).map(|i| format!("w-{i}")).collect();
        let t = Instant::now();
        let w0 = self.apiserver_writes().await?;
        for name in &names {
            let r = self
                .http
                .post(format!("{}/api/projects/{project}/agentic-sessions", self.api))
                .bearer_auth(&self.alice)
                .header("Prefer", "respond-async")
                .json(&json!({"name": name, "prompt": "writes", "timeout": 600}))
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::ACCEPTED {
                bail!("create answered {}", r.status());
            }
        }
        finished.wait_all(&names, DRAIN_LIMIT).await.context("sessions did not finish")?;
        // The last status events settle (Completed is written before the Job's last updates).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ours = delta(&w0, &self.apiserver_writes().await?);
        let ours_secs = t.elapsed().as_secs_f64();

        // Baseline: bare Jobs running the same (kwok) pod to completion.
        let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(self.env.admin(), &project);
        let t = Instant::now();
        let w0 = self.apiserver_writes().await?;
        for i in 0..n {
            let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
                "metadata": {"name": format!("bare-{i}")},
                "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "runner"}]}}}
            }))?;
            jobs.create(&PostParams::default(), &job).await?;
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let done = jobs
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
                .count();
            if done >= n || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let bare = delta(&w0, &self.apiserver_writes().await?);
        let bare_secs = t.elapsed().as_secs_f64();

        let per = |w: &std::collections::BTreeMap<String, f64>, secs: f64| {
            (w.values().sum::<f64>() - idle_per_sec * secs).max(0.0) / n as f64
        };
        let breakdown = |w: &std::collections::BTreeMap<String, f64>| {
            w.iter()
                .filter(|(_, v)| **v / n as f64 >= 0.5)
                .map(|(k, v)| format!("{k} {:.1}", v / n as f64))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let value = per(&ours, ours_secs);
        let floor = per(&bare, bare_secs);
        eprintln!(
            "    writes per session: {value:.1} ({}); bare Job: {:.1} ({}); idle {idle_per_sec:.1}/s",
            breakdown(&ours),
            floor,
            breakdown(&bare)
        );
        // The target counts every write; where Kubernetes' own Job path alone costs more, the
        // row says so and what the control plane adds to it.
        let bound = if floor > 10.0 {
            format!("; a bare Job alone costs {floor:.1} here, the control plane adds {:.1}", value - floor)
        } else {
            String::new()
        };
        Ok(Row {
            what: format!(
                "API-server writes per session, create → Completed ({n} sessions; per session: {}{bound})",
                breakdown(&ours)
            ),
            value: Figure::Scalar { value, unit: "writes".into() },
            baseline: Some((
                format!("a bare Job run to completion ({})", breakdown(&bare)),
                Figure::Scalar { value: floor, unit: "writes".into() },
            )),
            target: "≤ 10".into(),
            met: Some(value <= 10.0),
        })
    }

    /// Sessions in a project (created by applied commands).
    async fn count_sessions(&self, project: &str) -> anyhow::Result<usize> {
        let api = Api::<AgenticSession>::namespaced(self.env.admin(), project);
        Ok(api.list_metadata(&Default::default()).await?.items.len())
    }

    /// `n` asynchronous session creates in `project`, 32 at a time (while the reconciler is
    /// frozen they all wait in the bus).
    async fn submit_backlog(&self, project: &str, prefix: &str, n: usize) -> anyhow::Result<()> {
        let answers: Vec<anyhow::Result<(reqwest::StatusCode, Duration)>> =
            futures::stream::iter(0..n)
                .map(|i| async move {
                    self.post_body(project, &Self::short_session_body(&format!("{prefix}-{i}")), true).await
                })
                .buffer_unordered(32)
                .collect()
                .await;
        for a in answers {
            let (code, _) = a?;
            if code != reqwest::StatusCode::ACCEPTED {
                bail!("a backlog create answered {code}");
            }
        }
        Ok(())
    }

    /// Waits until every session of `project` has finished its run, so that what is measured
    /// next does not share the API server with this backlog's Jobs and pods. Not an error when
    /// some have not after [`DRAIN_LIMIT`] (it says which): with hundreds of Jobs created at once
    /// in one namespace, ResourceQuota admission conflicts make the Job controller back off
    /// creating a few Jobs' pods for minutes (its per-Job exponential backoff), which is the
    /// cluster's behaviour, not a figure of ours; the next part then starts on a busier cluster.
    async fn wait_finished(&self, project: &str) -> anyhow::Result<()> {
        let api = Api::<AgenticSession>::namespaced(self.env.admin(), project);
        let t = Instant::now();
        loop {
            let all = api.list(&Default::default()).await?.items;
            let running: Vec<String> = all
                .iter()
                .filter(|s| !s.status.as_ref().and_then(|st| st.phase).is_some_and(|p| p.is_terminal()))
                .map(|s| format!("{} ({:?})", s.name_any(), s.status.as_ref().and_then(|st| st.phase)))
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            if t.elapsed() > DRAIN_LIMIT {
                eprintln!(
                    "WARNING: {project}: {} sessions still running after {DRAIN_LIMIT:?}, going on: {}",
                    running.len(),
                    running.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until `project` has `n` sessions; how long that took.
    async fn wait_sessions(&self, project: &str, n: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        while self.count_sessions(project).await? < n {
            if t.elapsed() > DRAIN_LIMIT {
                bail!("{project}: fewer than {n} sessions after {DRAIN_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(t.elapsed())
    }

    /// One project's backlog of `m.backlog` creates (built while the reconciler is frozen):
    /// how fast it drains, how fast it drains after the reconciler is killed with SIGKILL
    /// mid-drain, and what a quiet project's command sees meanwhile.
    async fn fairness(&self, m: &Mode, stack: &mut Stack) -> anyhow::Result<Vec<Row>> {
        let n = m.backlog;
        let quiet = self.project_for_alice("bench-quiet").await?;
        let mut idle = Samples::default();
        for i in 0..m.samples {
            let (code, d) = self.post_body(&quiet, &Self::short_session_body(&format!("i-{i}")), false).await?;
            if code != reqwest::StatusCode::CREATED {
                bail!("quiet create answered {code}");
            }
            idle.push(d);
        }

        // Steady drain, the quiet project measured meanwhile.
        let steady = self.project_for_alice("bench-steady").await?;
        stack.reconciler.freeze(true)?;
        let built = self.submit_backlog(&steady, "b", n).await;
        stack.reconciler.freeze(false)?;
        built?;
        let cpu0 = CpuSnapshot::take(&self.processes);
        let t = Instant::now();
        let mut busy = Samples::default();
        let mut i = 0;
        while self.count_sessions(&steady).await? < n && t.elapsed() < DRAIN_LIMIT {
            let (code, d) = self.post_body(&quiet, &Self::short_session_body(&format!("b-{i}")), false).await?;
            if code != reqwest::StatusCode::CREATED && code != reqwest::StatusCode::ACCEPTED {
                bail!("quiet create during the drain answered {code}");
            }
            busy.push(d);
            i += 1;
        }
        let steady_secs = (t.elapsed() + self.wait_sessions(&steady, n).await?).as_secs_f64();
        // What bounds the quiet project's latency: where the machine's cores went meanwhile.
        let (cores, per_process) = CpuSnapshot::take(&self.processes).cores_since(&cpu0);
        self.wait_finished(&steady).await?;

        // The same backlog, the reconciler killed once a tenth of it is applied (mid-drain at
        // any speed: a fixed delay let a fast build apply nearly all of it first).
        let crashed = self.project_for_alice("bench-crash").await?;
        stack.reconciler.freeze(true)?;
        let built = self.submit_backlog(&crashed, "c", n).await;
        stack.reconciler.freeze(false)?;
        built?;
        let t = Instant::now();
        while self.count_sessions(&crashed).await? < n / 10 && t.elapsed() < DRAIN_LIMIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stack.reconciler.kill9().await;
        let t = Instant::now();
        stack.reconciler.restart().await?;
        // Until the first command after the restart: the dead replica's pin and its held
        // commands' ack wait must run out (both `ack_wait`).
        let before = self.count_sessions(&crashed).await?;
        while self.count_sessions(&crashed).await? == before && t.elapsed() < DRAIN_LIMIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let takeover = t.elapsed();
        let resumed_at = self.count_sessions(&crashed).await?;
        let drain = self.wait_sessions(&crashed, n).await?;
        // The next part starts on a quiet cluster.
        self.wait_finished(&crashed).await?;
        self.wait_finished(&quiet).await?;
        let crash_secs = drain.as_secs_f64().max(0.001);
        let steady_rate = n as f64 / steady_secs;
        let crash_rate = (n - resumed_at) as f64 / crash_secs;
        let quiet_met = match (busy.summary(), idle.summary()) {
            (Some(b), Some(i)) => Some(b.p99_ms <= 2.0 * i.p99_ms),
            _ => None,
        };
        Ok(vec![
            Row {
                what: format!(
                    "quiet project: sync POST session → 201 while another project drains {n} pending creates (cores in use {cores:.2}: {per_process})"
                ),
                value: lat(&busy),
                baseline: Some(("the same, nothing else pending".into(), lat(&idle))),
                target: "p99 ≤ 2× idle p99".into(),
                met: quiet_met,
            },
            Row {
                what: format!(
                    "drain after kill -9: {} of {n} pending creates, from the first applied after the restart ({:.1} s after it) to the last ({:.2}× steady)",
                    n - resumed_at,
                    takeover.as_secs_f64(),
                    crash_rate / steady_rate
                ),
                value: Figure::Scalar { value: crash_rate, unit: "commands/s".into() },
                baseline: Some((
                    "steady drain of the same backlog".into(),
                    Figure::Scalar { value: steady_rate, unit: "commands/s".into() },
                )),
                target: "≥ 0.8× steady".into(),
                met: Some(crash_rate >= 0.8 * steady_rate),
            },
        ])
    }

    /// Drain rate of `n` pending creates spread over `projects` (built while every replica in
    /// `reconcilers` is frozen), and the cores each process used meanwhile.
    async fn drain_across(
        &self,
        projects: &[String],
        n: usize,
        reconcilers: &[&ambient_tests::components::ServiceProcess],
        prefix: &str,
    ) -> anyhow::Result<(f64, String)> {
        let per = n / projects.len();
        for r in reconcilers {
            r.freeze(true)?;
        }
        let built: Vec<anyhow::Result<()>> =
            futures::future::join_all(projects.iter().map(|p| self.submit_backlog(p, prefix, per))).await;
        for r in reconcilers {
            r.freeze(false)?;
        }
        built.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let mut processes = self.processes.clone();
        processes.retain(|(name, _)| name != Component::Reconciler.binary());
        for (i, r) in reconcilers.iter().enumerate() {
            let name = match reconcilers.len() {
                1 => Component::Reconciler.binary().to_string(),
                _ => format!("{}-{}", Component::Reconciler.binary(), i + 1),
            };
            processes.extend(r.pid().map(|pid| (name, pid)));
        }
        let cpu0 = CpuSnapshot::take(&processes);
        let t = Instant::now();
        for p in projects {
            self.wait_sessions(p, per).await?;
        }
        let secs = t.elapsed().as_secs_f64().max(0.001);
        let (_, per_process) = CpuSnapshot::take(&processes).cores_since(&cpu0);
        for p in projects {
            self.wait_finished(p).await?;
        }
        Ok(((per * projects.len()) as f64 / secs, per_process))
    }

    /// Throughput with one reconciler replica, then two: the same backlog spread over 16
    /// projects (so over every command partition) drained by each.
    async fn replicas(&self, m: &Mode, stack: &mut Stack) -> anyhow::Result<Vec<Row>> {
        let n = m.backlog;
        let mut projects = Vec::new();
        for i in 0..32 {
            projects.push(self.project_for_alice(&format!("bench-replicas-{i}")).await?);
        }
        let (one, two) = projects.split_at(16);
        let (rate1, cpu1) = self.drain_across(one, n, &[&stack.reconciler], "r1").await?;
        let second = stack.reconciler_replica(&self.env, &[]).await?;
        // Membership: each replica heartbeats every second and deals itself half the partitions.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (rate2, cpu2) = self.drain_across(two, n, &[&stack.reconciler, &second], "r2").await?;
        drop(second);
        eprintln!("    1 replica: {rate1:.0}/s ({cpu1}); 2 replicas: {rate2:.0}/s ({cpu2})");
        Ok(vec![Row {
            what: format!(
                "drain of {n} pending creates over 16 projects with 2 reconciler replicas (cores: {cpu2}; with 1: {cpu1})"
            ),
            value: Figure::Scalar { value: rate2, unit: "commands/s".into() },
            baseline: Some((
                "the same with 1 replica".into(),
                Figure::Scalar { value: rate1, unit: "commands/s".into() },
            )),
            target: "≥ 1 replica (more only where the API server has cores to spare)".into(),
            met: Some(rate2 >= 0.9 * rate1),
        }])
    }

    async fn scale(&self, m: &Mode, stack: &mut Stack) -> anyhow::Result<Vec<Row>> {
        let admin = self.env.admin();
        eprintln!(
            "    creating {} projects × {} sessions (direct cluster writes; setup)",
            m.scale_projects, m.scale_sessions_per_project
        );
        let prefix = unique_name("scale");
        let names: Vec<String> = (0..m.scale_projects).map(|i| format!("{prefix}-{i}")).collect();
        // The reconciler would start a Job for every session; stop it while the load is made,
        // then measure how long it takes to come back at this scale.
        stack.reconciler.kill9().await;
        let spec: AgenticSessionSpec = serde_json::from_value(json!({"prompt": "scale", "timeout": 600}))?;
        futures::stream::iter(names.iter().enumerate())
            .map(|(i, n)| {
                let admin = admin.clone();
                let spec = spec.clone();
                async move {
                    let ns = Namespace {
                        metadata: ObjectMeta {
                            name: Some(n.clone()),
                            labels: Some([("ambient-code.io/managed".to_string(), "true".to_string())].into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await?;
                    if i < 10 {
                        grant(&admin, n, "alice", "ambient-project-view").await?;
                    }
                    let sessions = Api::<AgenticSession>::namespaced(admin.clone(), n);
                    for j in 0..m.scale_sessions_per_project {
                        completed_session(&sessions, &format!("s-{j}"), &spec).await?;
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;
        let big = names[0].clone();
        let sessions = Api::<AgenticSession>::namespaced(admin.clone(), &big);
        futures::stream::iter(m.scale_sessions_per_project..m.big_project_sessions)
            .map(|j| {
                let sessions = sessions.clone();
                let spec = spec.clone();
                async move { completed_session(&sessions, &format!("s-{j}"), &spec).await }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;

        // Reconciler recovery: restart it and time until a new command is applied.
        let probe = self.project_for_alice("bench-recovery").await?;
        let t = Instant::now();
        stack.reconciler.restart().await?;
        let (code, _) = self.post_session(&probe, "after-restart", false).await?;
        let recovery = t.elapsed();
        let mut rows = vec![Row {
            what: format!(
                "reconciler restart → first command applied ({} sessions in the cluster; answered {code})",
                m.scale_projects * m.scale_sessions_per_project + m.big_project_sessions
            ),
            value: Figure::Scalar { value: recovery.as_secs_f64(), unit: "s".into() },
            baseline: None,
            target: "≤ 30 s".into(),
            met: Some(recovery <= Duration::from_secs(30) && code == reqwest::StatusCode::CREATED),
        }];

        // Reads at scale, in the steady state: the restarted reconciler first gives every new
        // project its quota, LimitRange and runner ServiceAccount (three writes each, which
        // saturate the API server for minutes at 10 000 projects), and the api's read model
        // catches up.
        let quotas = Api::<k8s_openapi::api::core::v1::ResourceQuota>::all(admin.clone());
        let lp = kube::api::ListParams::default().labels("app=ambient-project-limits");
        let settle = Instant::now();
        while quotas.list_metadata(&lp).await.map(|l| l.items.len()).unwrap_or(0) < m.scale_projects
            && settle.elapsed() < Duration::from_secs(900)
        {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // The namespace and ProjectSettings controllers make their passes too: settled once the
        // whole stack (API server included) is quiet for 5 s.
        while settle.elapsed() < Duration::from_secs(900) {
            let before = CpuSnapshot::take(&self.processes);
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (busy, _) = CpuSnapshot::take(&self.processes).cores_since(&before);
            if busy < 0.3 {
                break;
            }
        }
        eprintln!("    the reconciler settled {:.0} s after its restart", settle.elapsed().as_secs_f64());
        let cpu0 = CpuSnapshot::take(&self.processes);
        let mut alice = Samples::default();
        let mut admin_s = Samples::default();
        let mut list = Samples::default();
        let n = m.samples.min(100);
        for _ in 0..n {
            alice.push(self.timed_get("/api/projects", &self.alice).await?);
            admin_s.push(self.timed_get("/api/projects", &self.admin).await?);
            list.push(self.timed_get(&format!("/api/projects/{big}/agentic-sessions"), &self.admin).await?);
        }
        let (_, cores) = CpuSnapshot::take(&self.processes).cores_since(&cpu0);
        let base = self.kube_list_baseline(&big, n).await?;
        rows.push(Row {
            what: format!("GET /api/projects, user who sees 10 of {} (cores meanwhile: {cores})", m.scale_projects),
            met: p99_under(&alice, 50.0),
            value: lat(&alice),
            baseline: None,
            target: "p99 ≤ 50 ms".into(),
        });
        rows.push(Row {
            what: format!("GET /api/projects, admin (sees all {})", m.scale_projects),
            met: p99_under(&admin_s, 50.0),
            value: lat(&admin_s),
            baseline: None,
            target: "p99 ≤ 50 ms".into(),
        });
        rows.push(Row {
            what: format!("GET …/agentic-sessions, project with {} sessions", m.big_project_sessions),
            met: None,
            value: lat(&list),
            baseline: Some(("kube-apiserver list of the same sessions".into(), lat(&base))),
            target: "(no target; compare)".into(),
        });
        Ok(rows)
    }

    async fn timed_get(&self, path: &str, token: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let r = self.http.get(format!("{}{path}", self.api)).bearer_auth(token).send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {path} answered {status}");
        }
        Ok(t.elapsed())
    }

    async fn kube_list_baseline(&self, ns: &str, n: usize) -> anyhow::Result<Samples> {
        let api = Api::<AgenticSession>::namespaced(self.env.admin(), ns);
        let mut s = Samples::default();
        for _ in 0..n {
            let t = Instant::now();
            api.list(&Default::default()).await?;
            s.push(t.elapsed());
        }
        Ok(s)
    }
}

/// A session that has already finished, so the reconciler has nothing to run for it.
async fn completed_session(
    sessions: &Api<AgenticSession>,
    name: &str,
    spec: &AgenticSessionSpec,
) -> anyhow::Result<()> {
    sessions.create(&PostParams::default(), &AgenticSession::new(name, spec.clone())).await?;
    let done = Patch::Merge(json!({"status": {"phase": "Completed"}}));
    sessions.patch_status(name, &PatchParams::default(), &done).await?;
    Ok(())
}

async fn grant(admin: &kube::Client, ns: &str, user: &str, role: &str) -> anyhow::Result<()> {
    let rb = RoleBinding {
        metadata: ObjectMeta { name: Some(format!("bench-{user}")), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), ns).create(&PostParams::default(), &rb).await?;
    Ok(())
}

/// RSS and CPU time of each service, from /proc.
fn footprint(stack: &Stack, when: &str, against_target: bool) -> Vec<Row> {
    [(Component::Api, &stack.api), (Component::Reconciler, &stack.reconciler), (Component::Projector, &stack.projector)]
        .into_iter()
        .map(|(c, p)| {
            let figure = p.pid().and_then(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let rss_kb: f64 =
                    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
                let cpu = ambient_tests::bench::cpu_seconds(pid)?;
                Some((rss_kb / 1024.0, cpu))
            });
            match figure {
                Some((rss, cpu)) => Row {
                    what: format!("{} RSS {when} (CPU time used so far: {cpu:.1} s)", c.binary()),
                    value: Figure::Scalar { value: rss, unit: "MiB".into() },
                    baseline: None,
                    target: if against_target {
                        "≤ 256 MiB".into()
                    } else {
                        "(the target is set at the scale run)".into()
                    },
                    met: against_target.then_some(rss <= 256.0),
                },
                None => Row {
                    what: format!("{} footprint", c.binary()),
                    value: Figure::Missing { missing: "process not running".into() },
                    baseline: None,
                    target: "≤ 256 MiB".into(),
                    met: None,
                },
            }
        })
        .collect()
}
