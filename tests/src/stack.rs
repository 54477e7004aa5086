//! The whole control plane as real processes: api, reconciler and projector, each under its
//! deploy/ ServiceAccount, sharing fresh bus keys, on the shared dev cluster and NATS.
//! Used by the end-to-end stories, the chaos harness and the benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::TestEnv;
use crate::components::{BusKeys, Component, ServiceProcess, free_port};

/// Options of a stack.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra arguments per component (appended).
    pub api_args: Vec<String>,
    /// Extra reconciler arguments.
    pub reconciler_args: Vec<String>,
    /// Extra projector arguments.
    pub projector_args: Vec<String>,
}

/// A running stack.
pub struct Stack {
    /// The api process.
    pub api: ServiceProcess,
    /// The reconciler process.
    pub reconciler: ServiceProcess,
    /// The projector process.
    pub projector: ServiceProcess,
    /// `http://127.0.0.1:<port>` of the api.
    pub api_url: String,
    /// The bus keys (shared by every stack on this NATS server, see [`BusKeys::shared`]).
    pub keys: BusKeys,
}

impl Stack {
    /// Starts the three services and waits until each is healthy.
    pub async fn start(env: &TestEnv, opts: StackOptions) -> anyhow::Result<Stack> {
        let keys = BusKeys::shared(env)?;
        let api_port = free_port()?;
        let api_url = format!("http://127.0.0.1:{api_port}");
        let bus = Bus::of(env);
        let common = |kubeconfig: PathBuf, health: SocketAddr| bus.args(&kubeconfig, health);

        let kc = Component::Projector.kubeconfig(env).await?;
        let projector = ServiceProcess::start(Component::Projector, |h| {
            let mut a = common(kc, h);
            // Tests run stacks side by side on one bus, and a test's processes die with it: on a
            // shared Lease the surviving projectors would wait for it to expire, and changes
            // made meanwhile reach the status stream only as their end state. So each stack's
            // projector leads alone; they publish the same deterministic event ids, which
            // JetStream de-duplicates.
            if !opts.projector_args.iter().any(|x| x.starts_with("--lease-name")) {
                a.push(format!("--lease-name=ambient-projector-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
            }
            a.extend(opts.projector_args.clone());
            a
        })
        .await
        .context("starting the projector")?;

        let reconciler = start_reconciler(env, &bus, &keys, &api_url, &opts.reconciler_args).await?;

        let api = start_api(env, &bus, &keys, api_port, &opts.api_args).await?;
        Ok(Stack { api, reconciler, projector, api_url, keys })
    }

    /// Starts one more api replica of this stack (same keys, bus and cluster): its process and
    /// URL.
    pub async fn api_replica(&self, env: &TestEnv, api_args: &[String]) -> anyhow::Result<(ServiceProcess, String)> {
        let port = free_port()?;
        let api = start_api(env, &Bus::of(env), &self.keys, port, api_args).await?;
        Ok((api, format!("http://127.0.0.1:{port}")))
    }
}

impl Stack {
    /// Starts one more reconciler replica of this stack (same keys, bus and cluster).
    pub async fn reconciler_replica(&self, env: &TestEnv, args: &[String]) -> anyhow::Result<ServiceProcess> {
        start_reconciler(env, &Bus::of(env), &self.keys, &self.api_url, args).await
    }
}

/// Starts a reconciler on `bus`.
pub async fn start_reconciler(
    env: &TestEnv,
    bus: &Bus,
    keys: &BusKeys,
    api_url: &str,
    args: &[String],
) -> anyhow::Result<ServiceProcess> {
    let kc = Component::Reconciler.kubeconfig(env).await?;
    let k = keys.clone();
    ServiceProcess::start(Component::Reconciler, |h| {
        let mut a = bus.args(&kc, h);
        a.push(format!("--command-verify-keys-file={}", k.verify_keys_file.display()));
        a.push(format!("--sealing-key-file={}", k.sealing_key_file.display()));
        a.push(format!("--backend-api-url={api_url}/api"));
        a.extend(args.iter().cloned());
        a
    })
    .await
    .context("starting the reconciler")
}

/// The bus a stack's services connect to.
#[derive(Debug, Clone)]
pub struct Bus {
    /// `--nats-url` (comma-separated for a cluster).
    pub nats_url: String,
    /// `--stream-replicas`.
    pub replicas: usize,
}

impl Bus {
    /// The shared dev cluster's NATS (one server).
    pub fn of(env: &TestEnv) -> Bus {
        Bus { nats_url: env.nats_url().to_string(), replicas: 1 }
    }

    /// The arguments every service of a stack takes.
    pub fn args(&self, kubeconfig: &std::path::Path, health: SocketAddr) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--nats-url={}", self.nats_url),
            format!("--stream-replicas={}", self.replicas),
            format!("--health-addr={health}"),
            "--log-format=json".to_string(),
        ]
    }
}

/// Starts an api replica on `bus`, listening on `api_port`.
pub async fn start_api(
    env: &TestEnv,
    bus: &Bus,
    keys: &BusKeys,
    api_port: u16,
    api_args: &[String],
) -> anyhow::Result<ServiceProcess> {
    let common = |kubeconfig: PathBuf, health: SocketAddr| bus.args(&kubeconfig, health);
    let kc = Component::Api.kubeconfig(env).await?;
    let k = keys.clone();
    ServiceProcess::start(Component::Api, |h| {
        let mut a = common(kc, h);
        a.push(format!("--listen=127.0.0.1:{api_port}"));
        a.push(format!("--signing-key-file={}", k.signing_key_file.display()));
        a.push(format!("--reconciler-sealing-public-key={}", k.sealing_public_key));
        // Every test and the benchmark talk to the api from 127.0.0.1, far faster than one
        // client should: the per-address limit stays out of their way unless they set it.
        if !api_args.iter().any(|x| x.starts_with("--pre-auth-rate-limit")) {
            a.push("--pre-auth-rate-limit-rps=1000000".into());
            a.push("--pre-auth-rate-limit-burst=1000000".into());
        }
        a.extend(api_args.iter().cloned());
        a
    })
    .await
    .context("starting the api")
}
