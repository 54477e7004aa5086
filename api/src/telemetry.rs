//! Logging and metrics set-up.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber (JSON by default; `RUST_LOG` filters).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// Installs the Prometheus recorder; `None` when one is already installed (tests).
pub fn init_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}
