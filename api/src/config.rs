//! Command-line and environment configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use events::service::LogFormat;

/// The api's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "api", about = "Ambient control plane REST api")]
pub struct Config {
    /// Kubeconfig file; in-cluster configuration or the usual discovery when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The bus: NATS URL and credentials, partitions, replicas.
    #[command(flatten)]
    pub bus: events::bus::BusArgs,
    /// Bounds on runner pods (`--runner-max-cpu`, `--runner-max-memory`,
    /// `--runner-priority-classes`): the reconciler takes the same flags and decides; these
    /// only refuse early (422 before anything is published).
    #[command(flatten)]
    pub runner: events::crd::RunnerBounds,
    /// Main HTTP listener.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Health and metrics listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "API_HEALTH_ADDR", default_value = "127.0.0.1:9090")]
    pub health_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// PKCS#8 PEM Ed25519 key the api signs commands with.
    #[arg(long, env = "API_SIGNING_KEY_FILE")]
    pub signing_key_file: PathBuf,
    /// The reconciler's sealing public key (base64): runner secrets are sealed to it.
    #[arg(long, env = "RECONCILER_SEALING_PUBLIC_KEY")]
    pub reconciler_sealing_public_key: String,
    /// How long a mutation waits for its result before answering 202.
    #[arg(long, env = "API_RESULT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub result_timeout: Duration,
    /// How long an access-key creation waits for its result (and so its one-time token) before
    /// answering 503 `KeyCreationPending`; at least 30 s. The token stays parked for 30 minutes
    /// for a retry of the same request or `GET /api/commands/{id}`.
    #[arg(long, env = "API_KEY_RESULT_TIMEOUT", value_parser = parse_key_timeout, default_value = "45s")]
    pub key_result_timeout: Duration,
    /// Group whose members may create projects.
    #[arg(long, env = "API_SELF_PROVISIONER_GROUP", default_value = "system:authenticated")]
    pub self_provisioner_group: String,
    /// Requests per second allowed from one client address, counted before authentication
    /// (sustained): a flood, bogus tokens included, gets 429 without a TokenReview. IPv6
    /// clients are counted per /64. Behind a proxy or NAT every client shares its address:
    /// raise this, or name the proxy with `--trusted-proxy`.
    #[arg(long, env = "API_PRE_AUTH_RATE_LIMIT_RPS", default_value_t = 100.0)]
    pub pre_auth_rate_limit_rps: f64,
    /// Burst of requests allowed from one client address before authentication.
    #[arg(long, env = "API_PRE_AUTH_RATE_LIMIT_BURST", default_value_t = 200.0)]
    pub pre_auth_rate_limit_burst: f64,
    /// A proxy (address or CIDR network; repeatable or comma-separated) whose
    /// `X-Forwarded-For` is believed: a request from it is counted against the nearest
    /// forwarded address that is not itself a trusted proxy. None by default: the header is
    /// ignored, since any client can send it.
    #[arg(long = "trusted-proxy", env = "API_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Writes (POST, PUT, PATCH, DELETE) per second allowed to one principal (sustained).
    #[arg(long, env = "API_RATE_LIMIT_RPS", default_value_t = 20.0)]
    pub rate_limit_rps: f64,
    /// Burst of writes allowed to one principal.
    #[arg(long, env = "API_RATE_LIMIT_BURST", default_value_t = 100.0)]
    pub rate_limit_burst: f64,
    /// Reads (GET, HEAD, OPTIONS) per second allowed to one principal (sustained), counted
    /// apart from its writes: a user's script that writes cannot starve the polling of the
    /// user's web UI, whose reads are served from caches.
    #[arg(long, env = "API_READ_RATE_LIMIT_RPS", default_value_t = 50.0)]
    pub read_rate_limit_rps: f64,
    /// Burst of reads allowed to one principal.
    #[arg(long, env = "API_READ_RATE_LIMIT_BURST", default_value_t = 300.0)]
    pub read_rate_limit_burst: f64,
    /// Allowed CORS origin (repeatable); CORS is closed when none is given.
    #[arg(long = "cors-origin", env = "API_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes (default: the largest command, 640 KiB; a body whose
    /// command would be larger than that is refused anyway).
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = events::limits::MAX_COMMAND_BYTES)]
    pub max_body_bytes: usize,
    /// Pending commands (accepted, not yet applied) one project may have; more answer 429 with
    /// `Retry-After`, for that project only.
    #[arg(long, env = "API_MAX_PENDING_COMMANDS_PER_PROJECT", default_value_t = 1_000)]
    pub max_pending_commands_per_project: u64,
    /// Bytes of pending commands one project may have in the commands stream, each charged its
    /// type's size bound (640 KiB for session creates, updates, status reports and runner
    /// secrets, 16 KiB for the rest); more answer 429 with `Retry-After`, for that project only.
    #[arg(long, env = "API_MAX_PENDING_BYTES_PER_PROJECT", default_value_t = 64 * 1024 * 1024)]
    pub max_pending_bytes_per_project: u64,
    /// How long a request body may take to arrive (a client that stops sending gets 408).
    #[arg(long, env = "API_BODY_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub body_read_timeout: Duration,
    /// How long authentication results are cached.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub token_cache_ttl: Duration,
    /// Most valid tokens whose review is cached.
    #[arg(long, env = "API_TOKEN_CACHE_MAX_ENTRIES", default_value_t = 10_000)]
    pub token_cache_max_entries: usize,
    /// How long a rejected token is remembered (answered 401 without another TokenReview).
    #[arg(long, env = "API_REJECTED_TOKEN_CACHE_TTL", value_parser = parse_duration, default_value = "2s")]
    pub rejected_token_cache_ttl: Duration,
    /// Most rejected tokens remembered (kept apart from valid ones, which they never evict).
    #[arg(long, env = "API_REJECTED_TOKEN_CACHE_MAX_ENTRIES", default_value_t = 4096)]
    pub rejected_token_cache_max_entries: usize,
    /// Event streams (SSE) one principal may hold open at once; the next gets 429.
    #[arg(long, env = "API_SSE_MAX_STREAMS_PER_CALLER", default_value_t = 20)]
    pub sse_max_streams_per_caller: usize,
    /// How long authorization decisions are cached (revocations take effect after at most this).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub authz_cache_ttl: Duration,
    /// Narrow project lists to namespaces with a RoleBinding naming the caller (plus one
    /// cluster-scoped review) before asking RBAC about each. Turn off when a non-RBAC
    /// authorizer grants access to single namespaces.
    #[arg(long, env = "API_PROJECT_LIST_PREFILTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub project_list_prefilter: bool,
    /// Messages one session may hold (the stream's own cap, 10 000, still applies).
    #[arg(long, env = "API_MESSAGES_MAX_PER_SESSION", default_value_t = 10_000)]
    pub messages_max_per_session: u64,
    /// Bytes one session's messages may hold (each message charged its stored size: body, subject and headers).
    #[arg(long, env = "API_MESSAGES_MAX_BYTES_PER_SESSION", default_value_t = 64 * 1024 * 1024)]
    pub messages_max_bytes_per_session: u64,
    /// Bytes (charged as for a session) all sessions of one project may hold together; the next append
    /// is refused (409 `ProjectMessagesFull`) until sessions are deleted. The messages stream
    /// holds 8 GiB: with the reconciler's default project quota (50 per user) one user's
    /// projects hold at most 50 × 64 MiB = 3.2 GiB of it, under half.
    #[arg(long, env = "API_MESSAGES_MAX_BYTES_PER_PROJECT", default_value_t = 64 * 1024 * 1024)]
    pub messages_max_bytes_per_project: u64,
    /// Bytes the messages stream may hold as the nearly-full rule counts them (0: the stream's
    /// own limit, 8 GiB). In the last tenth of it only projects holding under 1/512 of it (16 MiB of 8 GiB) may still
    /// append (409 `ProjectMessagesFull` for the others), so tenants that filled it are refused
    /// before anyone else. Set it lower to start that earlier.
    #[arg(long, env = "API_MESSAGES_STORE_CAPACITY", default_value_t = 0)]
    pub messages_store_capacity: u64,
    /// Largest single message (its stored envelope), bytes; larger ones are refused with 413
    /// (the stream's own limit is 256 KiB plus headers).
    #[arg(long, env = "API_MESSAGES_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    pub messages_max_message_bytes: usize,
    /// Whether runners use Vertex AI (`CLAUDE_CODE_USE_VERTEX`): reported to the web UI as
    /// `vertexEnabled` by `GET /api/cluster-info`, where it explains that a project's
    /// `ANTHROPIC_API_KEY` is ignored.
    #[arg(long, env = "API_VERTEX_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub vertex_enabled: bool,
    /// Longest `wait` a message read (the runner's inbox long-poll) may ask for.
    #[arg(long, env = "API_MESSAGES_MAX_WAIT", value_parser = parse_duration, default_value = "30s")]
    pub messages_max_wait: Duration,
}

/// A key-creation wait: a duration of at least 30 s (below that a busy reconciler would lose
/// tokens to the slow path all the time).
fn parse_key_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(30) {
        return Err(format!("{s}: at least 30s"));
    }
    Ok(d)
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown duration unit in {s}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a `--trusted-proxy` value: an address or a CIDR network.
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| match n {
            // A v4-mapped v6 network is matched as the v4 network it maps.
            IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                let v4 = v6.addr().to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map(IpNet::V4).unwrap_or(n)
            }
            n => n,
        })
        .map_err(|_| format!("not an IP address or CIDR network: {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("1d").is_err());
    }
}
