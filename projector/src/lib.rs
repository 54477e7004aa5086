//! The projector: watches the cluster and turns changes into status events on JetStream, keeps
//! the read-model buckets in step, and pushes status events to HTTP sinks. See `README.md`.

pub mod bus;
pub mod config;
pub mod lease;
pub mod model;
pub mod projection;
pub mod sinks;
pub mod watch;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use events::service::Runtime;
use k8s_openapi::api::coordination::v1::Lease;

use crate::config::Config;

/// Runs the projector until SIGTERM (exit 0) or a fatal error (exit 1).
pub async fn run(cfg: Config) -> ExitCode {
    let rt = Runtime::start("ambient-projector", cfg.log_format);
    match run_inner(cfg, rt).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "projector failed");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(cfg: Config, rt: Runtime) -> anyhow::Result<()> {
    let cancel = rt.shutdown.clone();
    let selector = model::ProjectSelector::parse(cfg.project_selector.as_deref().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("--project-selector: {e}"))?;
    let sinks = match &cfg.sinks_file {
        Some(p) => sinks::load_sinks(p)?,
        None => Vec::new(),
    };

    // Ready while this instance can take its role: a standby once the bus is there, the leader
    // once its catch-up is done. Who leads is the Lease and the `projector_leader` gauge, never
    // readiness: if only the leader were Ready, a rolling update's new pod would never become
    // Ready and the PodDisruptionBudget would never let the leader's node drain.
    let ready = rt.ready.flag();
    let health = rt.serve_ops(cfg.health_addr, None).await.with_context(|| format!("binding {}", cfg.health_addr))?;

    let client = rt.kube_client(cfg.kubeconfig.as_deref()).await.context("building the Kubernetes client")?;
    let nats = rt
        .connect_nats(&cfg.bus)
        .await
        .with_context(|| format!("connecting to NATS at {}", cfg.bus.nats_url_redacted()))?;
    let js = async_nats::jetstream::new(nats);
    let bus_cfg = cfg.bus.bus_config();
    let Some(report) = rt.retry("stream bootstrap", || events::streams::bootstrap_streams(&js, &bus_cfg)).await else {
        return Ok(());
    };
    tracing::info!(created = ?report.created, updated = ?report.updated, "streams ready");
    rt.ready.set(true);

    // Only the Lease holder projects and delivers; the others wait, healthy and ready.
    let leases = kube::Api::<Lease>::namespaced(client.clone(), &cfg.lease_namespace);
    let lease_cfg = lease::LeaseConfig {
        name: cfg.lease_name.clone(),
        namespace: cfg.lease_namespace.clone(),
        identity: cfg.identity(),
        duration: Duration::from_secs(cfg.lease_seconds.max(3)),
        renew_every: lease::LeaseConfig::renew_every(Duration::from_secs(cfg.lease_seconds.max(3))),
        retry_every: Duration::from_secs(2),
    };
    let Some(leading) = lease::acquire(leases.clone(), lease_cfg.clone(), cancel.clone()).await else {
        let _ = health.await;
        return Ok(());
    };
    // Not ready until caught up; unready first, so that whoever sees the gauge at 1 and then
    // readiness knows the catch-up is done.
    rt.ready.set(false);
    metrics::gauge!("projector_leader").set(1.0);

    for sink in sinks {
        tracing::info!(sink = %sink.name, "starting sink");
        tokio::spawn(sinks::run_sink(sink, js.clone(), client.clone(), leading.clone()));
    }

    let bus = bus::Bus::open(js.clone(), leading.clone()).await?;
    let projected = bus.load().await?;
    tracing::info!(objects = projected.len(), "read model loaded");
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    watch::spawn_all(client.clone(), selector, tx, leading.clone());
    let projection = projection::Projection::new(bus, client, projected, ready.clone());
    let result = tokio::select! {
        r = projection.run(rx) => r,
        _ = leading.cancelled() => Ok(()),
    };
    let lost = !cancel.is_cancelled();
    cancel.cancel();
    if !lost {
        lease::release(&leases, &lease_cfg).await;
    }
    let _ = health.await;
    match result {
        Err(bus::BusError::Cancelled) | Ok(()) if !lost => Ok(()),
        Err(e) => Err(e.into()),
        Ok(()) => anyhow::bail!("leadership lost; exiting so that a fresh start waits for the lease"),
    }
}
