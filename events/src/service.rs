//! The runtime every service starts with (feature `service`), so the three components log,
//! connect, retry, report health and stop alike: one JSON log shape for log pipelines, one
//! Prometheus recorder, `--kubeconfig` or in-cluster discovery, one NATS connection policy, one
//! operations server (`/healthz`, `/readyz`, `/metrics`) and shutdown on SIGTERM or Ctrl-C.
//!
//! ```no_run
//! # async fn f(bus: events::bus::BusArgs) -> Result<(), Box<dyn std::error::Error>> {
//! use events::service::{LogFormat, Runtime};
//! let rt = Runtime::start("ambient-example", LogFormat::Json);
//! let ops = rt.serve_ops("127.0.0.1:8081".parse()?, None).await?;
//! let client = rt.kube_client(None).await?;
//! let nats = rt.connect_nats(&bus).await?;
//! rt.ready.set(true);
//! rt.shutdown.cancelled().await;
//! # let _ = (ops, client, nats); Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{MethodRouter, get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::bus::BusArgs;

/// A service's shared parts: the shutdown token, readiness and the metrics recorder.
#[derive(Clone)]
pub struct Runtime {
    name: &'static str,
    /// Cancelled on SIGTERM or Ctrl-C (or by the service itself): every task stops on it.
    pub shutdown: CancellationToken,
    /// What the default `/readyz` answers.
    pub ready: Readiness,
    metrics: Option<PrometheusHandle>,
}

/// Every histogram of the services with buckets chosen for what it measures, so that replicas
/// aggregate (`histogram_quantile(…, sum by (le) (rate(…_bucket[5m])))`); a summary cannot.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    // A request: most answer from caches in milliseconds; a command waits up to its apply.
    ("ambient_api_request_seconds", &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
    // A command's apply: a few API server writes, more under a backlog or conflicts.
    ("reconciler_command_apply_seconds", &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
    // From a cluster change to its status event: watch delay and the projector's queue.
    ("projector_event_lag_seconds", &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
    // A full resync of every project after a restart or a lost watch.
    ("projector_full_sync_seconds", &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
    // One webhook delivery, retries excluded.
    ("projector_sink_delivery_seconds", &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
];

/// The Prometheus recorder with [`HISTOGRAM_BUCKETS`].
pub fn recorder() -> PrometheusBuilder {
    HISTOGRAM_BUCKETS.iter().fold(PrometheusBuilder::new(), |b, (name, buckets)| {
        // Only an empty bucket list is refused, and none is.
        match b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full((*name).to_string()), buckets) {
            Ok(b) => b,
            Err(e) => panic!("buckets of {name}: {e}"),
        }
    })
}

impl Runtime {
    /// Installs logging in `format` and the Prometheus recorder, and cancels
    /// [`Runtime::shutdown`] on SIGTERM or Ctrl-C. Needs a Tokio runtime.
    pub fn start(name: &'static str, format: LogFormat) -> Self {
        init_logging(format);
        // Several services in one test process share the process's recorder: the first wins
        // and the others serve no metrics.
        let metrics = match recorder().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics stays empty");
                None
            }
        };
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        Runtime { name, shutdown, ready: Readiness::default(), metrics }
    }

    /// The service's name (its NATS client name, its log field).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The metrics recorder's handle, when this runtime installed it.
    pub fn metrics(&self) -> Option<PrometheusHandle> {
        self.metrics.clone()
    }

    /// A kube client (see [`kube_client`]).
    pub async fn kube_client(&self, kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
        kube_client(kubeconfig).await
    }

    /// Connects to NATS with the one policy of every service: the first connection is retried
    /// until it succeeds (in a cluster the bus may start after the service; readiness says
    /// whether it is there), the client reconnects by itself after that, and every connection
    /// event is logged.
    pub async fn connect_nats(&self, bus: &BusArgs) -> Result<async_nats::Client, ConnectError> {
        Ok(bus
            .connect_options(self.name)?
            .retry_on_initial_connect()
            .event_callback(|ev| async move { tracing::info!(event = %ev, "nats connection event") })
            .connect(bus.servers())
            .await?)
    }

    /// Runs `op` until it succeeds, waiting 200 ms doubling to 10 s between tries and logging
    /// each failure as `what`; `None` once the service shuts down. For start-up steps that
    /// need the bus or the cluster (creating streams), which may come up after the service.
    pub async fn retry<T, E, F>(&self, what: &str, mut op: impl FnMut() -> F) -> Option<T>
    where
        E: std::fmt::Display,
        F: Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Binds `addr` and serves the operations port until shutdown: `/healthz` (the process
    /// runs), `/readyz` (`readyz` if given, else [`Runtime::ready`]) and `/metrics`
    /// (Prometheus text). Never on the public listener: it is for the kubelet and Prometheus.
    pub async fn serve_ops(
        &self,
        addr: SocketAddr,
        readyz: Option<MethodRouter>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let ready = self.ready.clone();
        let metrics = self.metrics.clone();
        let readyz =
            readyz.unwrap_or_else(|| {
                get(move || {
                    let ready = ready.get();
                    async move {
                        if ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
                    }
                })
            });
        let app = axum::Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", readyz).route(
            "/metrics",
            get(move || {
                let text = metrics.as_ref().map(|h| h.render()).unwrap_or_default();
                async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let shutdown = self.shutdown.clone();
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
                tracing::error!(error = %e, "operations server failed");
            }
        }))
    }
}

/// Whether the service is ready for work (the default `/readyz`).
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks ready, or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The flag itself, for code that takes an `Arc<AtomicBool>`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: the event's fields at the top level, plus the current span
    /// and the span list (project, session and command ids).
    Json,
    /// Human-readable text.
    Text,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; `info` by default). A second
/// call (several services in one test process) keeps the first subscriber.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// The bus could not be connected to with the given configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A file the settings name cannot be read.
    #[error(transparent)]
    Settings(#[from] crate::bus::BusArgsError),
    /// The client refused the options.
    #[error(transparent)]
    Nats(#[from] async_nats::ConnectError),
}

/// The cluster could not be reached with the given configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file is unreadable or invalid.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        source: kube::config::KubeconfigError,
    },
    /// Neither in-cluster configuration nor `KUBECONFIG`/`~/.kube/config` worked.
    #[error("no cluster configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("kube client: {0}")]
    Client(#[from] kube::Error),
}

/// A kube client from `kubeconfig`, or in-cluster configuration / the usual discovery.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| ClientError::Kubeconfig { path: path.display().to_string(), source };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(err)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Cancels `token` on SIGTERM or Ctrl-C (logging that the service shuts down).
pub fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_exported_with_buckets() {
        let recorder = recorder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("ambient_api_request_seconds", "route" => "/api/me").record(0.02);
        });
        let text = handle.render();
        assert!(text.contains("ambient_api_request_seconds_bucket{route=\"/api/me\",le=\"0.025\"} 1"), "{text}");
        assert!(!text.contains("quantile="), "not a summary: {text}");
    }
}
