//! The reconciler: the only writer of tenant state. Consumes commands from JetStream, re-
//! authorizes them, applies them exactly once, publishes results; runs the session, namespace
//! and group-access controllers. See `reconciler/README.md`.

pub mod apply;
pub mod authz;
pub mod config;
pub mod consumer;
pub mod controllers;
pub mod error;
pub mod fair;
pub mod labels;
pub mod ledger;
pub mod members;
pub mod namespaces;
pub mod order;
pub mod runs;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use events::sealing::SealingSecretKey;
use events::service::Runtime;
use events::signing::CommandVerifier;
use events::streams::{api_buckets, bootstrap_consumers, bootstrap_streams, raise_replicas};

use crate::config::Config;

/// Runs the reconciler until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = Runtime::start("ambient-reconciler", cfg.log_format);
    let project_limits = Arc::new(cfg.project_limits().map_err(|e| anyhow::anyhow!("project limits: {e}"))?);
    let runner_bounds = Arc::new(cfg.runner.clone());
    let stop = rt.shutdown.clone();
    let ops = rt.serve_ops(cfg.health_addr, None).await.with_context(|| format!("binding {}", cfg.health_addr))?;

    let verifier = CommandVerifier::from_pem(
        &std::fs::read_to_string(&cfg.command_verify_keys_file)
            .with_context(|| format!("reading {}", cfg.command_verify_keys_file.display()))?,
    )?;
    let sealing = SealingSecretKey::from_base64(
        &std::fs::read_to_string(&cfg.sealing_key_file)
            .with_context(|| format!("reading {}", cfg.sealing_key_file.display()))?,
    )?;
    let client = rt.kube_client(cfg.kubeconfig.as_deref()).await?;
    let nats = rt
        .connect_nats(&cfg.bus)
        .await
        .with_context(|| format!("connecting to NATS at {}", cfg.bus.nats_url_redacted()))?;
    let js = async_nats::jetstream::new(nats);
    let bus = cfg.bus.bus_config();
    let bootstrap = rt.retry("stream bootstrap", || async {
        bootstrap_streams(&js, &bus).await?;
        // The one NATS user that may change a stream brings every bucket to the configured
        // replicas: the read model's and the api's (which they create, but may not change).
        let buckets = bus.buckets().into_iter().map(|b| b.bucket).chain(api_buckets::ALL.map(String::from));
        let raised = raise_replicas(&js, buckets.map(|b| format!("KV_{b}")), bus.replicas).await?;
        if !raised.is_empty() {
            tracing::info!(?raised, replicas = bus.replicas, "bucket replicas raised");
        }
        bootstrap_consumers(&js, &bus).await
    });
    if bootstrap.await.is_none() {
        return Ok(());
    }

    let resync = Duration::from_secs(cfg.resync_seconds.max(5));
    let (namespace_store, project_controllers) = controllers::project::start(client.clone(), resync, stop.clone());
    let projects = namespaces::Projects::new(namespace_store, client.clone());
    let (limits, limits_controller) = controllers::limits::start(client.clone(), project_limits, stop.clone());
    // Created, or brought to the configured replica count.
    let (claims, _) =
        events::streams::ensure_bucket(&js, bus.project_claims_bucket(), events::streams::Update::Allowed)
            .await
            .context("opening the project-quota claims bucket")?;
    let applier = apply::Applier {
        client: client.clone(),
        policy: authz::SelfProvision { group: cfg.self_provisioner_group.clone() },
        quota: apply::project::ProjectQuota { quota: cfg.project_quota, claims },
        sealing,
        key_token_seconds: cfg.key_token_seconds,
        projects: projects.clone(),
        runner: runner_bounds.clone(),
    };
    let settings = consumer::Tuning {
        bus,
        concurrency: cfg.concurrency,
        per_project: cfg.project_concurrency,
        max_held_bytes: cfg.max_held_mib.saturating_mul(1024 * 1024),
        retry_max_backoff: cfg.retry_max_backoff(),
        retry_for: Duration::from_secs(cfg.retry_for_seconds),
    };
    // Membership deals the command partitions, and with them the projects whose cluster objects
    // this replica's session controller looks after.
    let (owned_tx, owned) = tokio::sync::watch::channel(std::collections::BTreeSet::new());
    let membership = members::run(
        js.clone(),
        consumer::replica_id(),
        settings.bus.replicas,
        settings.bus.partitions,
        owned_tx,
        stop.clone(),
    );
    let shards = members::Shards { owned: owned.clone(), partitions: settings.bus.partitions };
    let consumer = consumer::Consumer::new(js, applier, verifier, settings, stop.clone());
    let sessions = controllers::session::Setup {
        client: client.clone(),
        runner_image: cfg.runner_image.clone(),
        backend_api_url: cfg.backend_api_url.clone(),
        resync,
        projects,
        bounds: runner_bounds,
        limits,
        shards,
    };
    let tasks = vec![
        tokio::spawn(membership),
        tokio::spawn(consumer.run(owned)),
        tokio::spawn(controllers::session::run(sessions, cfg.session_concurrency.max(1), stop.clone())),
        tokio::spawn(project_controllers),
        tokio::spawn(limits_controller),
    ];
    rt.ready.set(true);
    tracing::info!("reconciler running");
    stop.cancelled().await;
    rt.ready.set(false);
    // In-flight commands finish or are left for redelivery; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    let _ = ops.await;
    Ok(())
}
