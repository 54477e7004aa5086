//! The production topology, run for real (issue 18): three NATS servers (every stream and bucket
//! at three replicas), two api replicas behind a round-robin front, two reconcilers and two
//! projectors sharing one Lease (`ambient_tests::ha`). Under a steady command load:
//!
//! - the NATS server that leads the command stream is killed (SIGKILL) and comes back;
//! - one reconciler is killed;
//! - the leading projector is killed;
//! - every replica of every service is restarted one after the other (a rolling update).
//!
//! After each, the chaos oracle checks that nothing acknowledged was lost, nothing applied
//! twice, per-object order kept and the status stream complete; the table printed at the end
//! gives each fault's unavailability window (the longest time clients saw no synchronous
//! success). All scenarios run in this one test: they share the stack.

use std::time::{Duration, Instant};

use ambient_tests::chaos::{self, Ledger, Plan, Report, Target};
use ambient_tests::ha::{self, HaStack};
use ambient_tests::http::Client;
use ambient_tests::stack::StackOptions;
use ambient_tests::{DemoUser, TestEnv};
use serde_json::json;

struct Run {
    target: Target,
    client: Client,
    token: String,
    projects: Vec<String>,
}

impl Run {
    /// Runs `plan`'s load while `fault` runs (it returns when it struck), settles the 202s and
    /// asks the oracle; returns its report and the unavailability window after the fault.
    async fn scenario<F>(&self, name: &str, plan: Plan, fault: F) -> (Report, Duration)
    where
        F: std::future::Future<Output = Instant>,
    {
        let mark = chaos::results_mark(&self.target).await.expect("results stream");
        let tag = ambient_tests::unique_name("ha");
        let load = chaos::run_load(&self.client, &self.token, &self.projects, &tag, plan, Duration::from_secs(120));
        let (ledger, struck): (Ledger, Instant) = tokio::join!(load, fault);
        ledger.settle(&self.client, &self.token, Duration::from_secs(120)).await;
        let window = ledger.longest_gap_after(struck);
        let deadline = Instant::now() + Duration::from_secs(45);
        let report = loop {
            let r = chaos::oracle(&self.target, name, &ledger, &self.client, &self.token, mark).await.expect("oracle");
            if r.clean() || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        println!("{}\n{report}  (unavailable at most {:.1} s)", Report::header(), window.as_secs_f64());
        for a in report.anomalies.iter().take(20) {
            println!("  ! {a}");
        }
        (report, window)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ha_topology_survives_faults_and_rollouts() {
    let env = TestEnv::shared().await.unwrap();
    let opts = StackOptions {
        api_args: vec!["--rate-limit-rps=100000".into(), "--rate-limit-burst=100000".into()],
        reconciler_args: vec!["--project-quota=1000".into()],
        ..Default::default()
    };
    let mut ha = HaStack::start(&env, opts).await.expect("the HA stack starts");
    // Every stream and bucket is replicated three times.
    for stream in [
        events::streams::COMMANDS_STREAM,
        events::streams::RESULTS_STREAM,
        events::streams::STATUS_STREAM,
        "KV_ambient-api-commands",
        "KV_ambient-api-idempotency",
        "KV_ambient-api-parked-keys",
    ] {
        let mut s = ha.js.get_stream(stream).await.unwrap_or_else(|e| panic!("{stream}: {e}"));
        let replicas = s.info().await.expect("stream info").config.num_replicas;
        assert_eq!(replicas, ha::REPLICAS, "{stream} replicas");
    }
    let client = Client::with_timeout(&ha.front.url(), Duration::from_secs(30));
    let token = env.token(DemoUser::Alice).unwrap().to_string();
    let mut projects = Vec::new();
    for _ in 0..6 {
        let name = ambient_tests::unique_name("ha");
        let r = client.post("/api/projects", &token, json!({"name": name})).await;
        assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
        projects.push(name);
    }
    let run = Run { target: Target { admin: env.admin(), js: ha.js.clone() }, client, token, projects };
    let plan = Plan { projects: 6, commands: 180, spread: Duration::from_secs(15), apiserver_outage: Duration::ZERO };
    let mut results = Vec::new();

    results.push(run.scenario("HA baseline", plan, async { Instant::now() }).await);

    let js = ha.js.clone();
    let nats = &mut ha.nats;
    results.push(
        run.scenario("NATS leader kill -9", plan, async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            // The server leading the command stream now, under load.
            let leader =
                ha::stream_leader(&js, events::streams::COMMANDS_STREAM).await.unwrap().expect("a stream leader");
            let i = nats.index_of(&leader).expect("the leader is one of ours");
            nats.kill9(i).await;
            let struck = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            nats.restart(i).await.expect("the NATS server restarts");
            struck
        })
        .await,
    );

    supervise(&mut ha).await;
    let reconciler = &mut ha.reconcilers[0];
    results.push(
        run.scenario("reconciler kill -9", plan, async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            reconciler.kill9().await;
            let struck = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            reconciler.restart().await.expect("the reconciler restarts");
            struck
        })
        .await,
    );

    supervise(&mut ha).await;
    ha.one_leader().await.expect("one projector leads");
    let projectors = &mut ha.projectors;
    let mut takeover = Duration::ZERO;
    results.push(
        run.scenario("projector leader kill -9", plan, async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            // The leader as it is now, not as it was before the load started.
            let leading = match ha::leaders(projectors).await.as_slice() {
                [one] => *one,
                other => panic!("expected one leading projector, found {other:?}"),
            };
            projectors[leading].kill9().await;
            let struck = Instant::now();
            // Status events wait for the standby: it takes the Lease once it has seen it
            // unrenewed for the lease duration.
            loop {
                match ha::leaders(projectors).await.as_slice() {
                    [] => {}
                    [one] if *one != leading => break,
                    other => panic!("leaders after the kill: {other:?}"),
                }
                assert!(struck.elapsed() < Duration::from_secs(90), "the standby did not take over");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            takeover = struck.elapsed();
            projectors[leading].restart().await.expect("the projector restarts");
            struck
        })
        .await,
    );
    println!("projector failover: the standby led {:.1} s after the leader was killed", takeover.as_secs_f64());
    supervise(&mut ha).await;
    ha.one_leader().await.expect("one projector leads after the failover");

    // A rolling update of everything, one replica at a time, each back and ready before the next.
    supervise(&mut ha).await;
    let long = Plan { spread: Duration::from_secs(60), commands: 360, ..plan };
    let HaStack { apis, reconcilers, projectors, .. } = &mut ha;
    results.push(
        run.scenario("rolling update", long, async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let struck = Instant::now();
            for p in apis.iter_mut().chain(reconcilers.iter_mut()).chain(projectors.iter_mut()) {
                let graceful = p.roll().await.expect("the replica restarts");
                assert!(graceful, "{} did not stop within 30 s of SIGTERM", p.log_path().display());
                ha::wait_ready(p).await.expect("the replica is ready again");
            }
            struck
        })
        .await,
    );

    println!("\nHA summary:\n{}  {:>12}", Report::header(), "unavailable");
    for (r, window) in &results {
        println!("{r}  {:>11.1}s", window.as_secs_f64());
    }
    println!("(status events during the projector failover waited {:.1} s for the standby)", takeover.as_secs_f64());
    let leaders_at_end = ha.leaders().await;

    // The projects go first, so that alice's project count does not weigh on later tests even
    // when an assertion below fails.
    for p in &run.projects {
        let r = run.client.delete(&format!("/api/projects/{p}"), &run.token).await;
        assert!(r.status.is_success(), "deleting {p}: {:?}", r.body);
    }
    // Their hundreds of sessions, Jobs and pods are collected before the next test starts,
    // rather than loading the API server under it.
    let admin = env.admin();
    let gone =
        ambient_tests::components::wait_for("the HA test's projects are gone", Duration::from_secs(180), || async {
            let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone());
            let mut left = 0;
            for p in &run.projects {
                left += usize::from(namespaces.get_opt(p).await?.is_some());
            }
            Ok(left == 0)
        })
        .await;
    for (r, _) in &results {
        assert!(r.accepted > 0, "{}: nothing was accepted", r.name);
        assert!(r.clean(), "{}: {:?}", r.name, r.anomalies);
        assert_eq!(r.unresolved, 0, "{}: operations left without an answer", r.name);
    }
    assert_eq!(leaders_at_end.len(), 1, "one projector leads at the end: {leaders_at_end:?}");
    gone.expect("the projects are deleted");
}

/// Restarts replicas that exited on their own (a projector that lost its Lease exits, as the
/// kubelet would see it), saying so.
async fn supervise(ha: &mut HaStack) {
    let restarted = ha.supervise().await.expect("replicas restart");
    if !restarted.is_empty() {
        println!("supervisor: restarted {restarted:?}");
    }
}
