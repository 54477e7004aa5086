//! Chaos: the real api, reconciler and projector under a bounded stream of commands while one
//! component at a time is crashed or cut off; the oracle (`ambient_tests::chaos`) then checks
//! that every acknowledged command was applied exactly once and in order, that every 202 got a
//! result, and that the status stream shows every change once.
//!
//! The faults disrupt the whole cluster (NATS, the API server), so every scenario runs
//! sequentially inside the one test of this binary. CI size: 300 commands over 10 projects per
//! scenario; `AMBIENT_CHAOS_SOAK=1` for 2 000 over 50 with a 60 s API server outage;
//! `AMBIENT_CHAOS_SEED` replays the fault timing of an earlier run.

use std::time::{Duration, Instant};

use ambient_tests::chaos::{self, Ledger, Plan, Report, Rng};
use ambient_tests::components::ServiceProcess;
use ambient_tests::http::Client;
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv};
use serde_json::json;

struct Run<'a> {
    env: &'a TestEnv,
    client: Client,
    token: String,
    projects: Vec<String>,
    plan: Plan,
    rng: Rng,
}

impl Run<'_> {
    /// Runs the load for scenario `name` while `fault` runs; `fault` returns the moments the
    /// cluster was whole again. Then settles the 202s and asks the oracle (letting the status
    /// stream catch up for a while).
    async fn scenario<F>(&mut self, name: &str, fault: F) -> Report
    where
        F: std::future::Future<Output = Vec<Instant>>,
    {
        let mark = chaos::results_mark(&chaos::Target::of(self.env)).await.expect("results stream");
        let retry_for = self.plan.apiserver_outage + Duration::from_secs(60);
        let tag = ambient_tests::unique_name(name);
        let load = chaos::run_load(&self.client, &self.token, &self.projects, &tag, self.plan, retry_for);
        let (ledger, heals): (Ledger, Vec<Instant>) = tokio::join!(load, fault);
        ledger.settle(&self.client, &self.token, Duration::from_secs(120)).await;
        let recovery = heals.iter().filter_map(|h| ledger.recovery_after(*h)).max();
        self.judge(name, &ledger, mark, recovery).await
    }

    /// Asks the oracle about `ledger` (letting the status stream catch up for a while) and
    /// prints its report.
    async fn judge(&self, name: &str, ledger: &Ledger, mark: u64, recovery: Option<Duration>) -> Report {
        // The projector publishes status asynchronously: give it time to catch up.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut report = loop {
            let r = chaos::oracle(&chaos::Target::of(self.env), name, ledger, &self.client, &self.token, mark)
                .await
                .expect("oracle");
            if r.clean() || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        report.recovery = recovery;
        println!("{}\n{report}", Report::header());
        for a in report.anomalies.iter().take(20) {
            println!("  ! {a}");
        }
        report
    }
}

/// Lanes and operations per lane of the backlog scenario: 1 000 commands in one project.
const FLOOD_LANES: usize = 50;
const FLOOD_PER_LANE: usize = 20;

/// One project's backlog of 1 000 commands (built while the reconciler is frozen) drains while
/// the other projects keep working, and the reconciler is killed with SIGKILL mid-drain. The
/// oracle checks both loads; the drain rate and the other projects' answer times are printed
/// (the benchmark measures them against a baseline).
async fn backlog(run: &mut Run<'_>, reconciler: &mut ServiceProcess) -> Report {
    let name = "backlog 1000 + kill -9";
    let mark = chaos::results_mark(&chaos::Target::of(run.env)).await.expect("results stream");
    let retry_for = Duration::from_secs(180);
    let flood_project = ambient_tests::unique_name("flood");
    let r = run.client.post("/api/projects", &run.token, json!({"name": flood_project})).await;
    assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);

    reconciler.freeze(true).expect("freeze the reconciler");
    let tag = ambient_tests::unique_name("fl");
    let flood =
        chaos::run_flood(&run.client, &run.token, &flood_project, &tag, FLOOD_LANES, FLOOD_PER_LANE, retry_for).await;
    let pending = flood.deferred();
    println!("backlog: {pending} commands pending in {flood_project}");
    reconciler.freeze(false).expect("thaw the reconciler");

    let drain_started = Instant::now();
    let trickle_plan = Plan { commands: 6 * run.projects.len(), spread: Duration::from_secs(20), ..run.plan };
    let trickle_tag = ambient_tests::unique_name("tr");
    let trickle = chaos::run_load(&run.client, &run.token, &run.projects, &trickle_tag, trickle_plan, retry_for);
    let mut rng = run.rng.clone();
    let fault = async {
        tokio::time::sleep(rng.between(Duration::from_secs(2), Duration::from_secs(5))).await;
        reconciler.kill9().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        reconciler.restart().await.expect("reconciler restarts");
        Instant::now()
    };
    let (trickle, healed) = tokio::join!(trickle, fault);
    flood.settle(&run.client, &run.token, Duration::from_secs(600)).await;
    let drained = drain_started.elapsed();
    trickle.settle(&run.client, &run.token, Duration::from_secs(120)).await;

    let times = trickle.answer_times();
    let pick = |q: f64| {
        times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    println!(
        "backlog: {pending} pending drained in {:.1} s ({:.1} commands/s, reconciler killed once); other projects: {} answered, p50 {:?}, p99 {:?}, {} answered 202 (not applied within the api's wait)",
        drained.as_secs_f64(),
        pending as f64 / drained.as_secs_f64(),
        times.len(),
        pick(0.5),
        pick(0.99),
        trickle.deferred(),
    );

    let all = Ledger::default();
    all.extend(&flood);
    all.extend(&trickle);
    let report = run.judge(name, &all, mark, all.recovery_after(healed)).await;
    assert!(pending >= FLOOD_LANES * FLOOD_PER_LANE * 9 / 10, "the backlog was not built: {pending} pending");
    report
}

/// Restarts every component that exited, as the kubelet would, and says so.
async fn supervise(parts: [&mut ServiceProcess; 3]) {
    for p in parts {
        if p.has_exited() {
            println!("supervisor: restarting the process of {} (it exited)", p.log_path().display());
            p.restart().await.expect("component restarts");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_scenarios() {
    let env = TestEnv::shared().await.unwrap();
    let opts = StackOptions {
        // The load is one principal: lift its flood limit. The projects stay well under quota.
        // The backlog scenario holds 1 000 pending commands in one project, most of them session
        // creates and updates (charged 640 KiB each against the byte limit).
        api_args: vec![
            "--rate-limit-rps=100000".into(),
            "--rate-limit-burst=100000".into(),
            "--max-pending-commands-per-project=2000".into(),
            "--max-pending-bytes-per-project=4294967296".into(),
        ],
        reconciler_args: vec!["--project-quota=1000".into()],
        ..Default::default()
    };
    let mut stack = Stack::start(&env, opts).await.expect("stack starts");
    let plan = Plan::from_env();
    let rng = Rng::from_env();
    println!("chaos: plan {plan:?}, seed {}", rng.seed());
    let client = Client::with_timeout(&stack.api_url, Duration::from_secs(30));
    let token = env.token(DemoUser::Alice).unwrap().to_string();

    let mut projects = Vec::new();
    for _ in 0..plan.projects {
        let name = ambient_tests::unique_name("chaos");
        let r = client.post("/api/projects", &token, json!({"name": name})).await;
        assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
        projects.push(name);
    }
    let mut run = Run { env: &env, client, token, projects, plan, rng };
    let mut reports = Vec::new();

    reports.push(run.scenario("baseline", async { vec![] }).await);

    let mut rng = run.rng.clone();
    let reconciler = &mut stack.reconciler;
    reports.push(
        run.scenario("reconciler kill -9", async {
            let mut heals = Vec::new();
            for _ in 0..3 {
                tokio::time::sleep(rng.between(Duration::from_millis(500), Duration::from_secs(3))).await;
                reconciler.kill9().await;
                tokio::time::sleep(rng.between(Duration::from_millis(100), Duration::from_secs(2))).await;
                reconciler.restart().await.expect("reconciler restarts");
                heals.push(Instant::now());
            }
            heals
        })
        .await,
    );

    let env2 = env.clone();
    reports.push(
        run.scenario("nats kill -9", async {
            tokio::time::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(4))).await;
            env2.ctl("kill", "nats").await.expect("kill nats");
            tokio::time::sleep(Duration::from_secs(3)).await;
            env2.ctl("start", "nats").await.expect("start nats");
            vec![Instant::now()]
        })
        .await,
    );

    let outage = plan.apiserver_outage;
    let stack_parts = [&mut stack.api, &mut stack.reconciler, &mut stack.projector];
    reports.push(
        run.scenario("apiserver down", async {
            tokio::time::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(3))).await;
            env2.ctl("stop", "apiserver").await.expect("stop apiserver");
            tokio::time::sleep(outage).await;
            env2.ctl("start", "apiserver").await.expect("start apiserver");
            // A component may exit on purpose during the outage (the projector gives up its
            // lease and exits): restart it the way the kubelet would.
            supervise(stack_parts).await;
            vec![Instant::now()]
        })
        .await,
    );

    let api = &mut stack.api;
    reports.push(
        run.scenario("api kill -9", async {
            let mut heals = Vec::new();
            for _ in 0..3 {
                tokio::time::sleep(rng.between(Duration::from_millis(500), Duration::from_secs(3))).await;
                api.kill9().await;
                tokio::time::sleep(rng.between(Duration::from_millis(100), Duration::from_secs(1))).await;
                api.restart().await.expect("api restarts");
                heals.push(Instant::now());
            }
            heals
        })
        .await,
    );

    let projector = &mut stack.projector;
    reports.push(
        run.scenario("projector kill -9", async {
            let mut heals = Vec::new();
            for _ in 0..3 {
                tokio::time::sleep(rng.between(Duration::from_millis(500), Duration::from_secs(3))).await;
                projector.kill9().await;
                tokio::time::sleep(rng.between(Duration::from_millis(100), Duration::from_secs(2))).await;
                projector.restart().await.expect("projector restarts");
                heals.push(Instant::now());
            }
            heals
        })
        .await,
    );

    reports.push(backlog(&mut run, &mut stack.reconciler).await);

    println!("\nchaos summary (seed {}):\n{}", run.rng.seed(), Report::header());
    for r in &reports {
        println!("{r}");
    }
    for r in &reports {
        assert!(r.accepted > 0, "{}: nothing was accepted", r.name);
        assert!(r.clean(), "{}: {:#?}", r.name, r.anomalies);
    }
}
