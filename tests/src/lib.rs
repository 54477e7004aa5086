//! Shared test environment: a real dev cluster (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok) and a real NATS JetStream server, started by `deploy/dev/up.sh`.
//!
//! Every integration test of the workspace starts with
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let env = ambient_tests::TestEnv::shared().await?;
//! let ns = env.namespace("sessions").await?;       // fresh namespace, isolated from other tests
//! let alice = env.client_as(ambient_tests::DemoUser::Alice).await?;
//! let js = env.jetstream();
//! # Ok(()) }
//! ```
//!
//! # Which cluster
//!
//! The cluster is process-wide and found once per process, in this order:
//!
//! 1. `AMBIENT_STATE_DIR` names a state directory of `up.sh` (its `env` file) whose cluster
//!    runs: attach to it (`scripts/test.sh` exports it; so does `source .run/dev/env`).
//! 2. `AMBIENT_APISERVER_URL`, `AMBIENT_CA_FILE`, `AMBIENT_NATS_URL` and the
//!    `AMBIENT_TOKEN_<USER>` variables describe a running cluster: attach to it.
//! 3. Otherwise run `deploy/dev/up.sh --state <repo>/target/test-cluster` under a file lock
//!    (`<repo>/target/test-cluster.lock`), so parallel test binaries share one cluster. It is
//!    left running for the next binary; `deploy/dev/down.sh --state <repo>/target/test-cluster`
//!    (or `scripts/test.sh`, which always tears down) stops it. The first start may build the
//!    Go binaries, which takes long once (see README).
//!
//! # Runtimes
//!
//! `#[tokio::test]` gives every test its own Tokio runtime, and both `kube::Client` and
//! `async_nats::Client` run background tasks on the runtime that created them. So the *cluster*
//! is shared, but each call of [`TestEnv::shared`] returns a handle with clients bound to the
//! calling runtime: call it in every test, don't keep a `TestEnv` in a static.
//!
//! Tests run in parallel against the same cluster and NATS server: isolate by namespace
//! ([`TestEnv::namespace`]) and by unique stream, bucket and subject names.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};

pub mod bench;
pub mod chaos;
pub mod components;
pub mod ha;
pub mod http;
pub mod routes;
pub mod sse;
pub mod stack;

/// The demo users of the dev cluster's static token file (`<state>/auth/tokens.csv`).
/// Every authenticated user also belongs to `system:authenticated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DemoUser {
    /// `admin`, group `system:masters` (cluster-admin; bypasses RBAC).
    Admin,
    /// `alice`, group `team-a`.
    Alice,
    /// `bob`, group `team-b`.
    Bob,
    /// `carol`, no group.
    Carol,
}

impl DemoUser {
    /// All demo users.
    pub const ALL: [DemoUser; 4] = [DemoUser::Admin, DemoUser::Alice, DemoUser::Bob, DemoUser::Carol];

    /// The Kubernetes user name (`admin`, `alice`, `bob`, `carol`).
    pub fn name(self) -> &'static str {
        match self {
            DemoUser::Admin => "admin",
            DemoUser::Alice => "alice",
            DemoUser::Bob => "bob",
            DemoUser::Carol => "carol",
        }
    }

    /// The groups of the token file (without the implicit `system:authenticated`).
    pub fn groups(self) -> &'static [&'static str] {
        match self {
            DemoUser::Admin => &["system:masters"],
            DemoUser::Alice => &["team-a"],
            DemoUser::Bob => &["team-b"],
            DemoUser::Carol => &[],
        }
    }

    /// The environment variable holding the user's bearer token (`AMBIENT_TOKEN_ALICE`, ...).
    pub fn token_var(self) -> String {
        format!("AMBIENT_TOKEN_{}", self.name().to_uppercase())
    }
}

/// The `user.extra` key under which OpenShift's TokenReview carries a token's scopes.
pub const SCOPES_EXTRA: &str = "scopes.authorization.openshift.io";

/// Tokens of the dev cluster's test authenticator (`deploy/dev/authwebhook.py`, a token
/// webhook): a demo user as a token scoped the way OpenShift scopes tokens ([`SCOPES_EXTRA`]
/// in the TokenReview's `user.extra`), which a static token cannot carry. The same webhook,
/// before RBAC, denies what the scopes do not cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScopedToken {
    /// alice (`team-a`) scoped to `user:info`: her own user info, nothing in any project.
    AliceInfo,
    /// alice (`team-a`) scoped to `user:full`: whatever RBAC lets alice do.
    AliceFull,
}

impl ScopedToken {
    /// All scoped tokens.
    pub const ALL: [ScopedToken; 2] = [ScopedToken::AliceInfo, ScopedToken::AliceFull];

    /// Whose token it is.
    pub fn user(self) -> DemoUser {
        DemoUser::Alice
    }

    /// Its scopes (the value of [`SCOPES_EXTRA`]).
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            ScopedToken::AliceInfo => &["user:info"],
            ScopedToken::AliceFull => &["user:full"],
        }
    }

    /// The environment variable holding the token.
    pub fn token_var(self) -> &'static str {
        match self {
            ScopedToken::AliceInfo => "AMBIENT_TOKEN_ALICE_SCOPED",
            ScopedToken::AliceFull => "AMBIENT_TOKEN_ALICE_FULL",
        }
    }
}

/// Where the cluster and NATS are: read from a state directory's `env` file or from the
/// process environment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    /// The `up.sh` state directory, if the cluster was started by it.
    pub state_dir: Option<PathBuf>,
    /// `https://127.0.0.1:<port>`.
    pub apiserver_url: String,
    /// PEM file of the CA that signed the API server's serving certificate.
    pub ca_file: PathBuf,
    /// Directory with `<user>.yaml` kubeconfigs, if known.
    pub kubeconfig_dir: Option<PathBuf>,
    /// Directory with `kubectl` and the other Go binaries, if known.
    pub bin_dir: Option<PathBuf>,
    /// `nats://127.0.0.1:<port>`.
    pub nats_url: String,
    /// NATS monitoring endpoint (`http://127.0.0.1:<port>`), if known.
    pub nats_monitor_url: Option<String>,
    tokens: BTreeMap<DemoUser, String>,
    scoped_tokens: BTreeMap<ScopedToken, String>,
}

impl ClusterInfo {
    /// Reads `<dir>/env` (the `export VAR=value` lines written by `up.sh`).
    pub fn from_state_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("env");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let vars: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('\'').trim_matches('"').to_string()))
            .collect();
        let mut info = Self::from_vars(|k| vars.get(k).cloned())
            .with_context(|| format!("incomplete env file {}", path.display()))?;
        info.state_dir = Some(dir.to_path_buf());
        Ok(info)
    }

    /// Reads the `AMBIENT_*` variables of the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let need = |k: &str| get(k).ok_or_else(|| anyhow!("{k} is not set"));
        let mut tokens = BTreeMap::new();
        for u in DemoUser::ALL {
            if let Some(t) = get(&u.token_var()) {
                tokens.insert(u, t);
            }
        }
        let scoped_tokens = ScopedToken::ALL.into_iter().filter_map(|t| get(t.token_var()).map(|v| (t, v))).collect();
        if !tokens.contains_key(&DemoUser::Admin) {
            bail!("{} is not set", DemoUser::Admin.token_var());
        }
        Ok(ClusterInfo {
            state_dir: get("AMBIENT_STATE_DIR").map(PathBuf::from),
            apiserver_url: need("AMBIENT_APISERVER_URL")?,
            ca_file: PathBuf::from(need("AMBIENT_CA_FILE")?),
            kubeconfig_dir: get("AMBIENT_KUBECONFIG_DIR").map(PathBuf::from),
            bin_dir: get("AMBIENT_BIN_DIR").map(PathBuf::from),
            nats_url: need("AMBIENT_NATS_URL")?,
            nats_monitor_url: get("AMBIENT_NATS_MONITOR_URL"),
            tokens,
            scoped_tokens,
        })
    }

    /// A token of the test authenticator; missing on a cluster started before it existed.
    pub fn scoped_token(&self, token: ScopedToken) -> anyhow::Result<&str> {
        self.scoped_tokens.get(&token).map(String::as_str).ok_or_else(|| {
            anyhow!(
                "{} is not set: the cluster predates the scoped test tokens; restart it \
                 (deploy/dev/down.sh --state <its state dir>)",
                token.token_var()
            )
        })
    }

    /// The bearer token of a demo user.
    pub fn token(&self, user: DemoUser) -> anyhow::Result<&str> {
        self.tokens
            .get(&user)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no token for {} ({} not set)", user.name(), user.token_var()))
    }

    /// A `kube::Config` for the API server authenticating with `token`, verifying the CA.
    pub async fn kube_config(&self, token: &str) -> anyhow::Result<kube::Config> {
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ambient-dev", "cluster": {
                "server": self.apiserver_url,
                "certificate-authority": self.ca_file,
            }}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "ambient-dev", "user": "user", "namespace": "default"}}],
            "current-context": "ctx",
        }))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("building kube::Config")?;
        Ok(config)
    }

    /// True if the API server answers `/readyz`.
    pub async fn apiserver_ready(&self) -> bool {
        async fn probe(info: &ClusterInfo) -> anyhow::Result<bool> {
            let ca = reqwest::Certificate::from_pem(&std::fs::read(&info.ca_file)?)?;
            let http = reqwest::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(5)).build()?;
            Ok(http.get(format!("{}/readyz", info.apiserver_url)).send().await?.status().is_success())
        }
        probe(self).await.unwrap_or(false)
    }

    /// True if any process recorded in `<state>/pids/` is alive (a cluster exists there, even if
    /// a test stopped one of its components on purpose).
    fn any_component_alive(&self) -> bool {
        let Some(dir) = &self.state_dir else {
            return false;
        };
        let Ok(entries) = std::fs::read_dir(dir.join("pids")) else {
            return false;
        };
        entries.flatten().any(|e| {
            std::fs::read_to_string(e.path())
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
                .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        })
    }

    /// Whether to use this cluster: its API server is ready, or (state dir known) some of its
    /// processes still run — a concurrent test may have stopped the API server deliberately.
    async fn usable(&self) -> bool {
        self.apiserver_ready().await || self.any_component_alive()
    }
}

/// The repository root (this crate lives in `<repo>/tests`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The state directory the tests start a cluster in when none is given.
pub fn default_test_state_dir() -> PathBuf {
    repo_dir().join("target").join("test-cluster")
}

// The outcome of the first lookup, failure included: when the cluster cannot start, every
// test fails fast with the same message instead of running up.sh again.
static CLUSTER: tokio::sync::OnceCell<Result<Arc<ClusterInfo>, String>> = tokio::sync::OnceCell::const_new();

async fn find_or_start_cluster() -> anyhow::Result<Arc<ClusterInfo>> {
    if let Some(dir) = std::env::var_os("AMBIENT_STATE_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if let Ok(info) = ClusterInfo::from_state_dir(&dir)
            && info.usable().await
        {
            return Ok(Arc::new(info));
        }
        eprintln!(
            "ambient-tests: AMBIENT_STATE_DIR={} holds no running cluster; using {}",
            dir.display(),
            default_test_state_dir().display()
        );
    } else if let Ok(info) = ClusterInfo::from_env() {
        if info.apiserver_ready().await {
            return Ok(Arc::new(info));
        }
        eprintln!("ambient-tests: AMBIENT_APISERVER_URL={} is not ready; starting a test cluster", info.apiserver_url);
    }

    let state = default_test_state_dir();
    let lock_path = state.with_extension("lock");
    std::fs::create_dir_all(state.parent().expect("state dir has a parent"))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // Blocks while another test binary starts the cluster.
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)).await??;

    if let Ok(info) = ClusterInfo::from_state_dir(&state)
        && info.usable().await
    {
        drop(lock);
        return Ok(Arc::new(info));
    }
    let up = repo_dir().join("deploy/dev/up.sh");
    eprintln!("ambient-tests: starting a dev cluster: {} --state {}", up.display(), state.display());
    let status = tokio::task::spawn_blocking({
        let state = state.clone();
        move || {
            // up.sh's output goes straight to the terminal: a cold start builds for a while.
            std::process::Command::new(&up).arg("--state").arg(&state).stdout(std::process::Stdio::inherit()).status()
        }
    })
    .await?
    .context("running deploy/dev/up.sh")?;
    if !status.success() {
        bail!("deploy/dev/up.sh --state {} failed ({status}); see {}/logs", state.display(), state.display());
    }
    let info = ClusterInfo::from_state_dir(&state)?;
    drop(lock);
    Ok(Arc::new(info))
}

/// A handle on the shared dev cluster and NATS server, with clients bound to the calling Tokio
/// runtime. Cheap to clone within one test.
#[derive(Clone)]
pub struct TestEnv {
    info: Arc<ClusterInfo>,
    admin: kube::Client,
    nats: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("apiserver_url", &self.info.apiserver_url)
            .field("nats_url", &self.info.nats_url)
            .field("state_dir", &self.info.state_dir)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Finds the process-wide cluster (attaching to a running one or starting one, see the
    /// crate docs) and connects an admin `kube::Client` and a NATS client for this runtime.
    pub async fn shared() -> anyhow::Result<TestEnv> {
        let info = CLUSTER
            .get_or_init(|| async { find_or_start_cluster().await.map_err(|e| format!("{e:#}")) })
            .await
            .clone()
            .map_err(|e| anyhow!("no dev cluster: {e}"))?;
        let admin = kube::Client::try_from(info.kube_config(info.token(DemoUser::Admin)?).await?)?;
        let nats = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .name("ambient-tests")
            .connect(info.nats_url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", info.nats_url))?;
        let jetstream = async_nats::jetstream::new(nats.clone());
        Ok(TestEnv { info, admin, nats, jetstream })
    }

    /// Where the cluster is.
    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    /// `kube::Client` of the `admin` user (`system:masters`).
    pub fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    /// A new `kube::Client` authenticating as a demo user (by its static token).
    pub async fn client_as(&self, user: DemoUser) -> anyhow::Result<kube::Client> {
        self.client_with_token(self.info.token(user)?).await
    }

    /// A new `kube::Client` authenticating with any bearer token (e.g. a ServiceAccount token).
    pub async fn client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.info.kube_config(token).await?)?)
    }

    /// The bearer token of a demo user.
    pub fn token(&self, user: DemoUser) -> anyhow::Result<&str> {
        self.info.token(user)
    }

    /// A token of the dev cluster's test authenticator, scoped as OpenShift scopes tokens.
    pub fn scoped_token(&self, token: ScopedToken) -> anyhow::Result<&str> {
        self.info.scoped_token(token)
    }

    /// The kubeconfig file of a demo user, if the cluster was started by `up.sh`.
    pub fn kubeconfig(&self, user: DemoUser) -> Option<PathBuf> {
        self.info.kubeconfig_dir.as_ref().map(|d| d.join(format!("{}.yaml", user.name())))
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn apiserver_url(&self) -> &str {
        &self.info.apiserver_url
    }

    /// The CA file that verifies the API server.
    pub fn ca_file(&self) -> &Path {
        &self.info.ca_file
    }

    /// The `kubectl` built with the cluster, if known.
    pub fn kubectl(&self) -> Option<PathBuf> {
        self.info.bin_dir.as_ref().map(|d| d.join("kubectl"))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn nats_url(&self) -> &str {
        &self.info.nats_url
    }

    /// The NATS client of this handle.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// A JetStream context on [`TestEnv::nats`].
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.jetstream
    }

    /// Creates a fresh namespace `<prefix>-<random>` (labelled
    /// `app.kubernetes.io/managed-by=ambient-tests`) and waits until its `default`
    /// ServiceAccount exists, so pods can be created in it. Returns its name. Namespaces are
    /// not deleted automatically; the test cluster is thrown away after the run.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("app.kubernetes.io/managed-by".to_string(), "ambient-tests".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.admin())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas = Api::<ServiceAccount>::namespaced(self.admin(), &name);
        eventually(&format!("ServiceAccount default in namespace {name}"), Duration::from_secs(60), || async {
            Ok(sas.get_opt("default").await?.map(|_| ()))
        })
        .await?;
        Ok(name)
    }

    /// Runs `deploy/dev/ctl.sh <action> <component>` on the cluster's state directory:
    /// `action` is `stop` (SIGTERM), `kill` (SIGKILL, a crash), `start` or `restart`;
    /// `component` is `nats`, `apiserver` or another component name. `start` returns once the
    /// component is healthy again, on the same port and with the same data. This disrupts every
    /// test sharing the cluster: use it only in test binaries that run such tests alone (e.g.
    /// one test per binary, or a dedicated cluster via `AMBIENT_STATE_DIR`).
    pub async fn ctl(&self, action: &str, component: &str) -> anyhow::Result<()> {
        let state = self.info.state_dir.as_ref().ok_or_else(|| {
            anyhow!("the cluster was not started by up.sh (no state dir); cannot {action} {component}")
        })?;
        let out = tokio::process::Command::new(repo_dir().join("deploy/dev/ctl.sh"))
            .args([action, component, "--state"])
            .arg(state)
            .output()
            .await
            .context("running deploy/dev/ctl.sh")?;
        if !out.status.success() {
            bail!("ctl.sh {action} {component} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stops the NATS server (see [`TestEnv::ctl`]).
    pub async fn stop_nats(&self) -> anyhow::Result<()> {
        self.ctl("stop", "nats").await
    }

    /// Starts the NATS server again with the same port and store (see [`TestEnv::ctl`]).
    pub async fn start_nats(&self) -> anyhow::Result<()> {
        self.ctl("start", "nats").await
    }

    /// Stops the kube-apiserver (see [`TestEnv::ctl`]).
    pub async fn stop_apiserver(&self) -> anyhow::Result<()> {
        self.ctl("stop", "apiserver").await
    }

    /// Starts the kube-apiserver again with the same port and etcd (see [`TestEnv::ctl`]).
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        self.ctl("start", "apiserver").await
    }
}

/// Binds `user` in namespace `ns` to the ClusterRole `cluster_role` directly (a RoleBinding
/// `stock-<role>-<user>` made by the cluster admin), as a platform's own tooling would: e.g. to
/// Kubernetes' built-in `edit` or `admin`, which the api never grants.
pub async fn bind_cluster_role(admin: &kube::Client, ns: &str, user: &str, cluster_role: &str) -> anyhow::Result<()> {
    let rb: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("stock-{cluster_role}-{user}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &rb)
        .await?;
    Ok(())
}

/// The token the kubelet would mount in a runner pod: a TokenRequest for the project's runner
/// ServiceAccount bound to `pod` (its name and uid), valid only while that pod exists.
pub async fn pod_bound_token(
    admin: &kube::Client,
    project: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    let sa =
        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).context("the pod names no ServiceAccount")?;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let tr = Api::<ServiceAccount>::namespaced(admin.clone(), project)
        .create_token_request(&sa, &PostParams::default(), &req)
        .await?;
    Ok(tr.status.context("no token issued")?.token)
}

/// The runner pod of `session` (waiting up to a minute for the Job controller to make it).
pub async fn runner_pod(
    admin: &kube::Client,
    project: &str,
    session: &str,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), project);
    let lp = kube::api::ListParams::default().labels(&format!("{}={session}", events::crd::runner::SESSION_LABEL));
    eventually(&format!("the runner pod of {project}/{session}"), Duration::from_secs(60), || {
        let (pods, lp) = (pods.clone(), lp.clone());
        async move { Ok(pods.list(&lp).await?.items.into_iter().find(|p| p.metadata.deletion_timestamp.is_none())) }
    })
    .await
}

/// The token `session`'s runner has: bound to its runner pod (see [`pod_bound_token`]).
pub async fn runner_token(admin: &kube::Client, project: &str, session: &str) -> anyhow::Result<String> {
    pod_bound_token(admin, project, &runner_pod(admin, project, session).await?).await
}

/// `<prefix>-<8 random hex>`, a valid DNS-1123 label (the prefix is lower-cased, other
/// characters become `-`, and it is cut to 50 characters).
pub fn unique_name(prefix: &str) -> String {
    let mut p: String =
        prefix.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(50).collect();
    p = p.trim_matches('-').to_string();
    if p.is_empty() || !p.starts_with(|c: char| c.is_ascii_lowercase()) {
        p.insert_str(0, "t-");
    }
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", p.trim_end_matches('-'), &rand[..8])
}

/// Polls `check` until it returns `Ok(Some(value))` or `timeout` passes. `Ok(None)` and errors
/// mean "not yet"; the last error is reported on timeout. Use generous timeouts: this is a
/// condition wait, not a speed assertion.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The HTTP status of a Kubernetes API error (`403`, `404`, ...), `None` for other errors.
pub fn api_status(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        for p in ["sessions", "Foo_Bar", "", "9lives", &"x".repeat(80)] {
            let n = unique_name(p);
            assert!(n.len() <= 63, "{n}");
            assert!(n.starts_with(|c: char| c.is_ascii_lowercase()), "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
            assert!(!n.ends_with('-'), "{n}");
        }
        assert_ne!(unique_name("a"), unique_name("a"));
    }

    #[test]
    fn env_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("env"),
            "# comment\nexport KUBECONFIG=/s/kubeconfig/admin.yaml\nexport AMBIENT_APISERVER_URL=https://127.0.0.1:1\n\
             export AMBIENT_CA_FILE=/s/pki/ca.crt\nexport AMBIENT_NATS_URL=nats://127.0.0.1:2\n\
             export AMBIENT_TOKEN_ADMIN=aaa\nexport AMBIENT_TOKEN_CAROL='ccc'\nexport AMBIENT_TOKEN_ALICE_SCOPED=sss\n",
        )
        .unwrap();
        let info = ClusterInfo::from_state_dir(dir.path()).unwrap();
        assert_eq!(info.apiserver_url, "https://127.0.0.1:1");
        assert_eq!(info.token(DemoUser::Admin).unwrap(), "aaa");
        assert_eq!(info.token(DemoUser::Carol).unwrap(), "ccc");
        assert!(info.token(DemoUser::Bob).is_err());
        assert_eq!(info.scoped_token(ScopedToken::AliceInfo).unwrap(), "sss");
        assert!(info.scoped_token(ScopedToken::AliceFull).is_err());
        assert_eq!(info.state_dir.as_deref(), Some(dir.path()));
    }
}
