//! Command-line configuration (every flag has an environment fallback).

use std::net::SocketAddr;
use std::path::PathBuf;

pub use events::service::LogFormat;

/// The projector: watches the cluster, publishes status events, keeps the read model and
/// pushes status events to HTTP sinks.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "projector", version)]
pub struct Config {
    /// Kubeconfig file; default: in-cluster configuration or the usual kubeconfig discovery.
    #[arg(long, env = "PROJECTOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The bus: NATS URL and credentials, partitions, replicas.
    #[command(flatten)]
    pub bus: events::bus::BusArgs,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HEALTH_ADDR", default_value = "127.0.0.1:9090")]
    pub health_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// HTTP sinks: a YAML or JSON list of `{name, url, subjects, authHeaderSecret?}`.
    #[arg(long, env = "PROJECTOR_SINKS_FILE")]
    pub sinks_file: Option<PathBuf>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PROJECTOR_LEASE_NAME", default_value = "ambient-projector")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "PROJECTOR_LEASE_NAMESPACE", default_value = "ambient-system")]
    pub lease_namespace: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "PROJECTOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Our identity in the Lease; default: `$POD_NAME` or the hostname, plus the pid.
    #[arg(long, env = "PROJECTOR_IDENTITY")]
    pub identity: Option<String>,
    /// Only project namespaces that also match this label selector (`k=v,k2!=v2,k3`), to
    /// shard projects between projectors sharing one bus. Default: every managed namespace.
    #[arg(long, env = "PROJECTOR_PROJECT_SELECTOR")]
    pub project_selector: Option<String>,
}

impl Config {
    /// The Lease identity.
    pub fn identity(&self) -> String {
        if let Some(i) = &self.identity {
            return i.clone();
        }
        let host = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
            .unwrap_or_else(|| "projector".into());
        format!("{host}-{}", std::process::id())
    }
}
