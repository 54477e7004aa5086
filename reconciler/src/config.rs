//! Command-line configuration (every flag has an environment fallback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use events::crd::{Amount, RunnerBounds};
pub use events::service::LogFormat;

use crate::controllers::limits::{CpuMemory, Disk, ProjectLimits, QuotaItem};

/// The reconciler: applies commands from JetStream to the cluster exactly once and runs the
/// session, namespace and group-access controllers.
#[derive(Debug, Clone, Parser)]
#[command(name = "reconciler", version)]
pub struct Config {
    /// Kubeconfig file; default: in-cluster, then the usual discovery (`KUBECONFIG`, ~/.kube/config).
    #[arg(long, env = "RECONCILER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The bus: NATS URL and credentials, partitions, replicas.
    #[command(flatten)]
    pub bus: events::bus::BusArgs,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "HEALTH_ADDR", default_value = "127.0.0.1:9090")]
    pub health_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// PEM file with the api's command-signing public keys (several for rotation).
    #[arg(long, env = "COMMAND_VERIFY_KEYS_FILE")]
    pub command_verify_keys_file: PathBuf,
    /// File with the reconciler's sealing secret key (base64): opens sealed runner secrets.
    #[arg(long, env = "SEALING_KEY_FILE")]
    pub sealing_key_file: PathBuf,
    /// Runner image of session Jobs.
    #[arg(long, env = "RUNNER_IMAGE", default_value = "quay.io/ambient_code/vteam_claude_runner:latest")]
    pub runner_image: String,
    /// Base URL of the api, given to runners as `BACKEND_API_URL`.
    #[arg(long, env = "BACKEND_API_URL", default_value = "http://ambient-api.ambient-system.svc:8080/api")]
    pub backend_api_url: String,
    /// Group whose members may create projects.
    #[arg(long, env = "SELF_PROVISIONER_GROUP", default_value = "system:authenticated")]
    pub self_provisioner_group: String,
    /// Most projects one user may have requested.
    #[arg(long, env = "PROJECT_QUOTA", default_value_t = 50)]
    pub project_quota: usize,
    /// Default lifetime of access-key tokens, seconds (90 days).
    #[arg(long, env = "KEY_TOKEN_SECONDS", default_value_t = 90 * 24 * 3600)]
    pub key_token_seconds: i64,
    /// Commands applied in parallel (different objects) per replica. An apply mostly waits on
    /// two API-server round trips, so this bounds throughput at about concurrency / latency.
    #[arg(long, env = "CONCURRENCY", default_value_t = 128)]
    pub concurrency: usize,
    /// Commands of one project applied in parallel: a project's fair share of `concurrency`.
    /// Projects with pending work take turns, so one project's backlog delays another's next
    /// command by about one apply.
    #[arg(long, env = "PROJECT_CONCURRENCY", default_value_t = 16)]
    pub project_concurrency: usize,
    /// Commands read ahead and held in memory, MiB at most: beyond it, read-ahead pauses (and
    /// fairness falls back to stream order within a partition).
    #[arg(long, env = "MAX_HELD_MIB", default_value_t = 256)]
    pub max_held_mib: u64,
    /// Sessions reconciled in parallel by the session controller.
    #[arg(long, env = "SESSION_CONCURRENCY", default_value_t = 16)]
    pub session_concurrency: u16,
    /// Cap of the in-process retry backoff for transient failures, seconds.
    #[arg(long, env = "RETRY_MAX_BACKOFF_SECONDS", default_value_t = 30)]
    pub retry_max_backoff_seconds: u64,
    /// How long a command is retried in-process before it fails with `Unavailable`, seconds.
    #[arg(long, env = "RETRY_FOR_SECONDS", default_value_t = 3600)]
    pub retry_for_seconds: u64,
    /// Bounds on runner pods (`--runner-max-cpu` 4, `--runner-max-memory` 8Gi,
    /// `--runner-priority-classes` none): every session's `resourceOverrides` is checked against
    /// them when its command is applied and again before its Job is created. The api takes the
    /// same flags (to refuse early); these decide.
    #[command(flatten)]
    pub runner: RunnerBounds,
    /// Hard limits of every project's ResourceQuota `ambient-project-quota`, comma-separated
    /// `resource=quantity` pairs. The default admits 100 runners at the default size, or 5 at
    /// the largest (4 CPUs each), and bounds the objects a project may hold in etcd (sessions
    /// and their Jobs; keys, each a ServiceAccount and RoleBinding; grants; Secrets), so one
    /// tenant cannot fill the cluster's store.
    #[arg(
        long,
        env = "PROJECT_RESOURCE_QUOTA",
        value_delimiter = ',',
        value_parser = QuotaItem::parse,
        default_value = "requests.cpu=20,requests.memory=80Gi,limits.cpu=100,limits.memory=200Gi,pods=100,count/agenticsessions.vteam.ambient-code=5000,count/serviceaccounts=1000,count/roles.rbac.authorization.k8s.io=100,count/rolebindings.rbac.authorization.k8s.io=1000,count/secrets=500,count/jobs.batch=5000,requests.ephemeral-storage=200Gi,limits.ephemeral-storage=1000Gi"
    )]
    pub project_resource_quota: Vec<QuotaItem>,
    /// CPU request of a runner without `resourceOverrides.cpu` (every project's LimitRange
    /// `ambient-project-limits`).
    #[arg(long, env = "RUNNER_DEFAULT_CPU_REQUEST", default_value = "100m", value_parser = Amount::parse_positive)]
    pub runner_default_cpu_request: Amount,
    /// Memory request of a runner without `resourceOverrides.memory`.
    #[arg(long, env = "RUNNER_DEFAULT_MEMORY_REQUEST", default_value = "256Mi", value_parser = Amount::parse_positive)]
    pub runner_default_memory_request: Amount,
    /// CPU limit of a runner without `resourceOverrides.cpu`.
    #[arg(long, env = "RUNNER_DEFAULT_CPU", default_value = "1", value_parser = Amount::parse_positive)]
    pub runner_default_cpu: Amount,
    /// Memory limit of a runner without `resourceOverrides.memory`.
    #[arg(long, env = "RUNNER_DEFAULT_MEMORY", default_value = "2Gi", value_parser = Amount::parse_positive)]
    pub runner_default_memory: Amount,
    /// Local disk (`ephemeral-storage`) request of every runner (and any other container of a
    /// project that sets none).
    #[arg(long, env = "RUNNER_DEFAULT_EPHEMERAL_STORAGE_REQUEST", default_value = "1Gi", value_parser = Amount::parse_positive)]
    pub runner_default_ephemeral_storage_request: Amount,
    /// Local disk limit of a container that sets none.
    #[arg(long, env = "RUNNER_DEFAULT_EPHEMERAL_STORAGE", default_value = "10Gi", value_parser = Amount::parse_positive)]
    pub runner_default_ephemeral_storage: Amount,
    /// Most local disk one container of a project may have.
    #[arg(long, env = "RUNNER_MAX_EPHEMERAL_STORAGE", default_value = "20Gi", value_parser = Amount::parse_positive)]
    pub runner_max_ephemeral_storage: Amount,
    /// Periodic resync of every controller object, seconds.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
}

impl Config {
    /// Every project's quota and container defaults, checked against the runner bounds.
    pub fn project_limits(&self) -> Result<ProjectLimits, String> {
        ProjectLimits::new(
            self.project_resource_quota.clone(),
            CpuMemory { cpu: self.runner_default_cpu_request, memory: self.runner_default_memory_request },
            CpuMemory { cpu: self.runner_default_cpu, memory: self.runner_default_memory },
            Disk {
                request: self.runner_default_ephemeral_storage_request,
                limit: self.runner_default_ephemeral_storage,
                max: self.runner_max_ephemeral_storage,
            },
            &self.runner,
        )
    }

    /// Cap of the retry backoff.
    pub fn retry_max_backoff(&self) -> Duration {
        Duration::from_secs(self.retry_max_backoff_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let base = ["reconciler", "--command-verify-keys-file", "k", "--sealing-key-file", "s"];
        Config::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn runner_bounds_and_project_limits_default_and_parse() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.runner, RunnerBounds::default());
        let l = c.project_limits().unwrap();
        assert_eq!(l.quota.len(), 13);
        assert!(l.quota.iter().any(|q| q.resource == "limits.ephemeral-storage"), "local disk is bounded by default");
        assert_eq!(l.max.cpu.cpu_string(), "4");
        let c =
            parse(&["--runner-priority-classes", "a,b", "--runner-max-cpu", "8", "--project-resource-quota", "pods=3"])
                .unwrap();
        assert_eq!(c.runner.priority_classes, ["a", "b"]);
        assert_eq!(c.runner.max_cpu.cpu_string(), "8");
        assert_eq!(c.project_limits().unwrap().quota.len(), 1);
        assert!(parse(&["--runner-max-cpu", "lots"]).is_err());
        assert!(parse(&["--runner-max-memory", "0"]).is_err());
        assert!(parse(&["--project-resource-quota", "pods"]).is_err());
        // Defaults beyond the bounds are refused at start-up.
        assert!(parse(&["--runner-max-cpu", "500m"]).unwrap().project_limits().is_err());
    }
}
