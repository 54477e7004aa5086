//! What every service does at start-up, in one place (feature `service`), so the three
//! components log alike and find the cluster alike: one JSON log shape for log pipelines,
//! `--kubeconfig` or in-cluster discovery, and shutdown on SIGTERM or Ctrl-C.

use std::path::Path;

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
