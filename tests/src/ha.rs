//! The production topology on loopback (issue 18): a cluster of three NATS servers (routes on
//! loopback, every stream and bucket at three replicas), two api replicas behind a round-robin
//! front, two reconcilers, and two projectors sharing one Lease, on the shared dev cluster.
//!
//! Its bus is its own: nothing else of the test run publishes or consumes there, so faults of
//! its NATS servers disturb no other test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream;
use tokio::process::{Child, Command};

use crate::TestEnv;
use crate::components::{BusKeys, Component, ServiceProcess, free_port, nats_server_bin, wait_for};
use crate::stack::{Bus, StackOptions, start_api, start_reconciler};

/// One server of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    monitor: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning nats-server {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Three (or `n`) NATS servers clustered on loopback, each with its own JetStream store
/// (fsync before acknowledging, as in production). Killed on drop. JetStream reserves every
/// stream's `max_bytes` (18 GiB for the bus) against `max_file_store`, again when a restarted
/// server recovers them, so the limit is set far above it (it is not allocated): with 16 GB a
/// restarted server refused every stream ("insufficient storage resources") and never became
/// healthy.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers and waits until JetStream is healthy on each (a meta leader elected).
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nats-cluster-").tempdir_in(std::env::temp_dir())?;
        let ports: Vec<(u16, u16, u16)> =
            (0..n).map(|_| Ok((free_port()?, free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
        let routes: Vec<String> = ports.iter().map(|(_, c, _)| format!("nats-route://127.0.0.1:{c}")).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster, monitor)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n  max_file_store: 64GB\n}}\n\
                     cluster {{\n  name: ambient-ha\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ),
            )?;
            let log = dir.path().join(format!("{name}.log"));
            nodes.push(Node { name, port: *port, monitor: *monitor, conf, log, child: None });
        }
        for node in &mut nodes {
            node.spawn().await?;
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..n {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    /// Waits until server `i` reports JetStream healthy.
    pub async fn wait_healthy(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor);
        let log = self.nodes[i].log.clone();
        wait_for(&format!("nats-server {}", self.nodes[i].name), Duration::from_secs(60), || {
            let url = url.clone();
            async move { Ok(reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())) }
        })
        .await
        .with_context(|| format!("log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// Every server's URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The index of the server named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `SIGKILL` of server `i`.
    pub async fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9().await;
    }

    /// Starts server `i` again (same ports and store) and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill9().await;
        self.nodes[i].spawn().await?;
        self.wait_healthy(i).await
    }
}

/// The name of the server leading `stream`'s replicas, as the cluster reports it.
pub async fn stream_leader(js: &jetstream::Context, stream: &str) -> anyhow::Result<Option<String>> {
    let mut s = js.get_stream(stream).await.with_context(|| format!("stream {stream}"))?;
    let info = s.info().await?;
    Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
}

/// A round-robin TCP front for the api replicas, as a Kubernetes Service is: each new
/// connection goes to the next replica that accepts it.
pub struct Front {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Listens on a free loopback port and forwards to `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Front> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()?)).await?;
        let addr = listener.local_addr()?;
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (backends, next) = (backends.clone(), next.clone());
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for k in 0..backends.len() {
                        let to = backends[(first + k) % backends.len()];
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Front { addr, task })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The whole HA stack.
pub struct HaStack {
    /// The NATS servers.
    pub nats: NatsCluster,
    /// The api replicas.
    pub apis: Vec<ServiceProcess>,
    /// The reconciler replicas.
    pub reconcilers: Vec<ServiceProcess>,
    /// The projector replicas (one Lease).
    pub projectors: Vec<ServiceProcess>,
    /// The front of the api replicas.
    pub front: Front,
    /// JetStream on the stack's NATS cluster.
    pub js: jetstream::Context,
    /// The bus the services use.
    pub bus: Bus,
}

/// Stream replicas of the HA stack.
pub const REPLICAS: usize = 3;

impl HaStack {
    /// Starts the NATS cluster and two replicas of every service on it (with `opts`' extra
    /// arguments).
    pub async fn start(env: &TestEnv, opts: StackOptions) -> anyhow::Result<HaStack> {
        let nats = NatsCluster::start(REPLICAS).await?;
        let bus = Bus { nats_url: nats.urls(), replicas: REPLICAS };
        let keys = BusKeys::shared(env)?;
        let lease = format!("ambient-projector-ha-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut projectors = Vec::new();
        for _ in 0..2 {
            projectors.push(start_projector(env, &bus, &lease, &opts.projector_args).await?);
        }
        let api_ports = [free_port()?, free_port()?];
        let front_backends: Vec<SocketAddr> =
            api_ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
        let front = Front::start(front_backends).await?;
        let mut reconcilers = Vec::new();
        for _ in 0..2 {
            reconcilers.push(start_reconciler(env, &bus, &keys, &front.url(), &opts.reconciler_args).await?);
        }
        let mut apis = Vec::new();
        for port in api_ports {
            apis.push(start_api(env, &bus, &keys, port, &opts.api_args).await?);
        }
        let servers: Vec<String> = nats.urls().split(',').map(String::from).collect();
        let client = async_nats::connect(servers).await.map_err(|e| anyhow!("{e}"))?;
        let js = jetstream::new(client);
        let stack = HaStack { nats, apis, reconcilers, projectors, front, js, bus };
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Waits until every replica answers `/readyz` 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        for p in self.apis.iter().chain(&self.reconcilers).chain(&self.projectors) {
            wait_ready(p).await?;
        }
        Ok(())
    }

    /// The projectors that say they lead (their `projector_leader` gauge is 1): never more
    /// than one.
    pub async fn leaders(&self) -> Vec<usize> {
        leaders(&self.projectors).await
    }

    /// Waits until exactly one projector leads; which one. Fails if two ever do meanwhile.
    pub async fn one_leader(&self) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            match self.leaders().await.as_slice() {
                [one] => return Ok(*one),
                [] if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                [] => anyhow::bail!("no projector leads after 90 s"),
                many => anyhow::bail!("two projectors lead at once: {many:?}"),
            }
        }
    }

    /// Restarts every replica whose process has exited (as the kubelet would); which ones.
    pub async fn supervise(&mut self) -> anyhow::Result<Vec<String>> {
        let mut restarted = Vec::new();
        for p in self.apis.iter_mut().chain(self.reconcilers.iter_mut()).chain(self.projectors.iter_mut()) {
            if p.has_exited() {
                restarted.push(p.log_path().display().to_string());
                p.restart().await?;
            }
        }
        Ok(restarted)
    }
}

/// The indexes of `projectors` whose `projector_leader` gauge is 1.
pub async fn leaders(projectors: &[ServiceProcess]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, p) in projectors.iter().enumerate() {
        if p.metrics().await.is_ok_and(|m| m.lines().any(|l| l == "projector_leader 1")) {
            out.push(i);
        }
    }
    out
}

/// Waits until `p` answers `/readyz` 200.
pub async fn wait_ready(p: &ServiceProcess) -> anyhow::Result<()> {
    let url = format!("http://{}/readyz", p.health_addr());
    wait_for("a replica ready", Duration::from_secs(90), || {
        let url = url.clone();
        async move { Ok(reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())) }
    })
    .await
    .with_context(|| format!("log tail:\n{}", p.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")))
}

async fn start_projector(env: &TestEnv, bus: &Bus, lease: &str, args: &[String]) -> anyhow::Result<ServiceProcess> {
    let kc = Component::Projector.kubeconfig(env).await?;
    let (bus, lease, args) = (bus.clone(), lease.to_string(), args.to_vec());
    ServiceProcess::start(Component::Projector, move |h| {
        let mut a = bus.args(&kc, h);
        a.push(format!("--lease-name={lease}"));
        a.extend(args);
        a
    })
    .await
    .context("starting a projector")
}
