//! How every component connects to the bus, with one set of flags (feature `cli`), so the
//! settings that must agree between components (partitions, replicas) have one spelling.

use std::time::Duration;

use crate::streams::BusConfig;

/// The bus settings each component takes on its command line (flattened into its config).
#[derive(Clone, clap::Args)]
pub struct BusArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user (with `--nats-password`); none: connect without credentials.
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password of `--nats-user` (prefer the environment variable: a flag shows in `ps`).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, requires = "nats_user")]
    pub nats_password: Option<String>,
    /// Command partitions of the bus; every component of an installation must agree.
    #[arg(long, env = "AMBIENT_COMMAND_PARTITIONS", default_value_t = BusConfig::default().partitions)]
    pub command_partitions: u32,
    /// Replicas of every stream and bucket (3 on a clustered NATS).
    #[arg(long, env = "AMBIENT_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
}

impl std::fmt::Debug for BusArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusArgs")
            .field("nats_url", &self.nats_url)
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "<redacted>"))
            .field("command_partitions", &self.command_partitions)
            .field("stream_replicas", &self.stream_replicas)
            .finish()
    }
}

impl BusArgs {
    /// The streams' configuration these settings describe.
    pub fn bus_config(&self) -> BusConfig {
        BusConfig { partitions: self.command_partitions, replicas: self.stream_replicas, ..BusConfig::default() }
    }

    /// Connection options with the credentials, a client name and a connect timeout.
    pub fn connect_options(&self, client_name: &str) -> async_nats::ConnectOptions {
        let options = match (&self.nats_user, &self.nats_password) {
            (Some(user), Some(password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            _ => async_nats::ConnectOptions::new(),
        };
        options.name(client_name).connection_timeout(Duration::from_secs(10))
    }
}
