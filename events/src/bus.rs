//! How every component connects to the bus, with one set of flags (feature `cli`), so the
//! settings that must agree between components (partitions, replicas) have one spelling.

use std::path::PathBuf;
use std::time::Duration;

use crate::streams::BusConfig;

/// The bus settings each component takes on its command line (flattened into its config).
#[derive(Clone, clap::Args)]
pub struct BusArgs {
    /// NATS server URL(s), comma-separated (the servers of a cluster).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user (with `--nats-password`); none: connect without credentials.
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password of `--nats-user` (prefer the environment variable: a flag shows in `ps`).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, requires = "nats_user")]
    pub nats_password: Option<String>,
    /// NATS credentials file (a user JWT and its nkey seed, for servers with decentralized
    /// auth); instead of `--nats-user`.
    #[arg(long, env = "NATS_CREDS_FILE", conflicts_with = "nats_user")]
    pub nats_creds_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the NATS servers' certificates. Set: TLS is required
    /// (`nats://` URLs upgrade to it; a server without TLS is refused).
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (with `--nats-tls-key`).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--nats-tls-cert`.
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Command partitions of the bus; every component of an installation must agree.
    #[arg(long, env = "AMBIENT_COMMAND_PARTITIONS", default_value_t = BusConfig::default().partitions)]
    pub command_partitions: u32,
    /// Replicas of every stream and bucket (3 on a clustered NATS).
    #[arg(long, env = "AMBIENT_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=5))]
    pub stream_replicas: usize,
}

impl std::fmt::Debug for BusArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusArgs")
            .field("nats_url", &self.nats_url_redacted())
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "<redacted>"))
            .field("nats_creds_file", &self.nats_creds_file)
            .field("nats_ca_file", &self.nats_ca_file)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .field("command_partitions", &self.command_partitions)
            .field("stream_replicas", &self.stream_replicas)
            .finish()
    }
}

impl BusArgs {
    /// `--nats-url` without any password in it (`nats://user:***@host`), for logs and errors.
    pub fn nats_url_redacted(&self) -> String {
        self.servers()
            .iter()
            .map(|u| match u.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?))) {
                Some((scheme, (userinfo, host))) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***@{host}")
                }
                None => u.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The servers of `--nats-url`, one per comma-separated URL (a cluster's servers: the
    /// client connects to any and fails over to the others).
    pub fn servers(&self) -> Vec<String> {
        self.nats_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
    }

    /// The streams' configuration these settings describe.
    pub fn bus_config(&self) -> BusConfig {
        BusConfig { partitions: self.command_partitions, replicas: self.stream_replicas, ..BusConfig::default() }
    }

    /// Connection options with the credentials, TLS, a client name and a connect timeout.
    pub fn connect_options(&self, client_name: &str) -> Result<async_nats::ConnectOptions, BusArgsError> {
        let mut options = match (&self.nats_user, &self.nats_password, &self.nats_creds_file) {
            (Some(user), Some(password), _) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            (_, _, Some(path)) => {
                let creds = std::fs::read_to_string(path).map_err(|e| BusArgsError::read(path, e))?;
                async_nats::ConnectOptions::with_credentials(&creds).map_err(|e| BusArgsError::read(path, e))?
            }
            _ => async_nats::ConnectOptions::new(),
        };
        // Files are checked here, at start, rather than at the first (retried) connection.
        for path in [&self.nats_ca_file, &self.nats_tls_cert, &self.nats_tls_key].into_iter().flatten() {
            std::fs::metadata(path).map_err(|e| BusArgsError::read(path, e))?;
        }
        // Any TLS setting makes TLS required: a server that does not offer it (or a man in the
        // middle) must not get the credentials in clear text.
        if self.nats_ca_file.is_some() || self.nats_tls_cert.is_some() {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.nats_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options.name(client_name).connection_timeout(Duration::from_secs(10)))
    }
}

/// A bus setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct BusArgsError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl BusArgsError {
    fn read(path: &std::path::Path, source: std::io::Error) -> Self {
        BusArgsError { path: path.display().to_string(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bus: BusArgs,
    }

    #[test]
    fn a_cluster_is_given_as_comma_separated_urls() {
        let cli = Cli::parse_from(["x", "--nats-url", "nats://a:4222, nats://b:4222,,nats://c:4222"]);
        assert_eq!(cli.bus.servers(), ["nats://a:4222", "nats://b:4222", "nats://c:4222"]);
        // Each is a server address the client accepts.
        for s in cli.bus.servers() {
            assert!(s.parse::<async_nats::ServerAddr>().is_ok(), "{s}");
        }
        assert_eq!(Cli::parse_from(["x"]).bus.servers(), ["nats://127.0.0.1:4222"]);
    }

    #[test]
    fn passwords_in_urls_stay_out_of_logs() {
        let cli = Cli::parse_from([
            "x",
            "--nats-url",
            "nats://api:s3cret@a:4222,nats://b:4222",
            "--nats-user",
            "api",
            "--nats-password",
            "pw",
        ]);
        let shown = format!("{:?}", cli.bus);
        assert!(!shown.contains("s3cret") && !shown.contains("\"pw\""), "{shown}");
        assert_eq!(cli.bus.nats_url_redacted(), "nats://api:***@a:4222,nats://b:4222");
    }

    #[test]
    fn stream_replicas_are_one_to_five() {
        assert!(Cli::try_parse_from(["x", "--stream-replicas", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--stream-replicas", "6"]).is_err());
        assert_eq!(Cli::parse_from(["x", "--stream-replicas", "3"]).bus.stream_replicas, 3);
    }
}
