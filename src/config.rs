//! The broker's configuration: embedded defaults, then a TOML file, then
//! `QUIVER_<SECTION>__<KEY>` environment variables (e.g. `QUIVER_STORE__FLUSH_MODE=sync`,
//! `QUIVER_BROKER__LISTEN=127.0.0.1:10911`), then command-line flags. Other `QUIVER_*`
//! variables (`QUIVER_CONFIG`, which names the file, and the CLI's `QUIVER_BROKER`,
//! `QUIVER_FINGERPRINT`, `QUIVER_CA`...) are not configuration keys and are ignored here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterConfig;
use crate::messaging::MessagingConfig;
use crate::plugin::PluginConfig;
use crate::store::StoreConfig;

/// Everything the broker can be told.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network, topics and limits.
    pub broker: BrokerConfig,
    /// Certificate and key.
    pub tls: TlsConfig,
    /// The message store.
    pub store: StoreConfig,
    /// WebAssembly plugins: default limits and failure handling.
    pub plugins: PluginConfig,
    /// Scheduled messages, retries and transactions.
    pub messaging: MessagingConfig,
    /// Cluster membership and the controller (off: a standalone broker).
    pub cluster: ClusterConfig,
    /// The admin HTTP listener (`/metrics`).
    pub admin: crate::admin_http::AdminConfig,
    /// Users and access rules (docs/SECURITY.md).
    pub auth: crate::auth::AuthConfig,
}

/// Network, topic and limit settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Name reported to clients in the handshake.
    pub name: String,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Data directory: store/, tls/, topics.json, offsets.json.
    pub data_dir: PathBuf,
    /// Create a topic on its first send (RocketMQ's autoCreateTopicEnable).
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic (RocketMQ's defaultTopicQueueNums).
    pub default_queues: u32,
    /// Most queues a topic may have.
    pub max_queues: u32,
    /// Most topics the broker creates automatically (explicit creation is not limited).
    pub max_topics: usize,
    /// Largest request frame accepted, in bytes.
    #[serde(with = "crate::units::size")]
    pub max_frame_bytes: u32,
    /// Most concurrent client connections.
    pub max_connections: u32,
    /// Most concurrent streams (requests in flight) per connection.
    pub max_streams_per_connection: u32,
    /// Longest a pull may be parked, in ms (RocketMQ parks up to 15 s; clients choose).
    #[serde(with = "crate::units::ms")]
    pub long_poll_max_ms: u32,
    /// Appends waiting for the store before producers get a retryable "busy" error.
    pub append_queue: usize,
    /// Bytes of messages waiting for the store before producers get "busy" (bounds memory).
    #[serde(with = "crate::units::size")]
    pub append_queue_bytes: usize,
    /// How long a produce request may wait for room in the append queue, in ms.
    #[serde(with = "crate::units::ms")]
    pub busy_timeout_ms: u64,
    /// How long a client has to send a whole request frame, in ms.
    #[serde(with = "crate::units::ms")]
    pub request_read_timeout_ms: u64,
    /// Request bytes one connection may hold in the broker's buffers at once (requests being
    /// received and being handled). Memory is taken as bytes arrive, never by a claimed length;
    /// beyond this a request waits up to `busy_timeout_ms`, then gets a retryable `Busy`.
    #[serde(with = "crate::units::size")]
    pub connection_request_bytes: usize,
    /// Request bytes all connections together may hold in the broker's buffers at once.
    #[serde(with = "crate::units::size")]
    pub request_bytes: usize,
    /// On shutdown, how long in-flight requests may take to finish, in ms.
    #[serde(with = "crate::units::ms")]
    pub shutdown_grace_ms: u64,
    /// A consumer-group member silent for this long is removed and its queues move, in ms.
    #[serde(with = "crate::units::ms")]
    pub group_session_timeout_ms: u64,
    /// How often consumer-group members heartbeat, in ms (told to clients).
    #[serde(with = "crate::units::ms")]
    pub group_heartbeat_interval_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            name: "quiver".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 10911)),
            data_dir: PathBuf::from("quiver-data"),
            auto_create_topics: true,
            default_queues: 4,
            max_queues: 1024,
            max_topics: 10_000,
            max_frame_bytes: (16 << 20) + (64 << 10),
            max_connections: 4096,
            max_streams_per_connection: 1024,
            long_poll_max_ms: 30_000,
            append_queue: 16_384,
            append_queue_bytes: 256 << 20,
            busy_timeout_ms: 200,
            request_read_timeout_ms: 10_000,
            connection_request_bytes: 64 << 20,
            request_bytes: 512 << 20,
            shutdown_grace_ms: 5_000,
            group_session_timeout_ms: 20_000,
            group_heartbeat_interval_ms: 3_000,
        }
    }
}

/// Where the certificate and key come from.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; when unset, a self-signed certificate is generated once and kept
    /// in `<data_dir>/tls/`.
    pub cert: Option<PathBuf>,
    /// PEM private key (required with `cert`).
    pub key: Option<PathBuf>,
    /// Extra names for the generated certificate (besides localhost, 127.0.0.1 and ::1).
    pub names: Vec<String>,
}

/// The environment variables that are configuration keys: `QUIVER_<SECTION>__<KEY>` only.
/// Every section is a table, so a key without `__` can never name a setting: such variables
/// belong to the CLI (or name the config file) and are left alone.
fn config_env() -> Env {
    Env::prefixed("QUIVER_")
        .filter(|k| k.as_str().contains("__"))
        .split("__")
}

impl Config {
    /// Defaults, overridden by `file` (if given), then by `QUIVER_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        let mut cfg: Config = fig.merge(config_env()).extract().map_err(Box::new)?;
        cfg.store.dir = cfg.broker.data_dir.join("store");
        Ok(cfg)
    }

    /// The effective configuration as TOML (for `quiver serve --print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }

    /// Checks values that would make the broker misbehave.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.broker;
        if b.default_queues == 0 || b.default_queues > b.max_queues {
            return Err(format!(
                "broker.default_queues must be 1..={}, got {}",
                b.max_queues, b.default_queues
            ));
        }
        if (b.max_frame_bytes as usize)
            < self.store.max_message_size + self.store.max_properties_size + 64 * 1024
        {
            return Err("broker.max_frame_bytes must exceed store.max_message_size + store.max_properties_size by 64 KiB (one stored message must fit a response)".into());
        }
        self.plugins.validate()?;
        self.messaging.validate()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("tls.cert and tls.key must be given together".into());
        }
        self.cluster.validate(self.tls.cert.is_some())?;
        if self.cluster.broker_set.is_some()
            && self.cluster.advertise.is_none()
            && self.broker.listen.ip().is_unspecified()
        {
            return Err(format!(
                "broker.listen is {}, which others cannot dial: set cluster.advertise to the \
                 address clients and the other nodes reach this broker on",
                self.broker.listen
            ));
        }
        if b.group_heartbeat_interval_ms == 0
            || b.group_session_timeout_ms < 2 * b.group_heartbeat_interval_ms
        {
            return Err("broker.group_session_timeout_ms must be at least twice broker.group_heartbeat_interval_ms".into());
        }
        if b.append_queue_bytes < b.max_frame_bytes as usize {
            return Err("broker.append_queue_bytes must be at least broker.max_frame_bytes".into());
        }
        if b.connection_request_bytes < b.max_frame_bytes as usize
            || b.request_bytes < b.connection_request_bytes
        {
            return Err("broker.connection_request_bytes must be at least broker.max_frame_bytes, and broker.request_bytes at least broker.connection_request_bytes".into());
        }
        if b.request_bytes > u32::MAX as usize {
            return Err("broker.request_bytes must be below 4 GiB".into());
        }
        if b.append_queue == 0 || b.max_connections == 0 || b.max_streams_per_connection == 0 {
            return Err("broker.append_queue, max_connections and max_streams_per_connection must be positive".into());
        }
        self.store.validate().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quiver.toml");
        std::fs::write(
            &file,
            "[broker]\ndefault_queues = 8\ndata_dir = \"/tmp/x\"\n[store]\nflush_mode = \"sync\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUIVER_BROKER__DEFAULT_QUEUES", "6");
            let cfg = Config::load(Some(&file)).expect("loads");
            assert_eq!(cfg.broker.default_queues, 6, "env beats file");
            assert_eq!(cfg.store.flush_mode, crate::store::FlushMode::Sync);
            assert_eq!(cfg.store.dir, PathBuf::from("/tmp/x/store"));
            assert_eq!(cfg.broker.listen.port(), 10911, "untouched defaults stay");
            assert!(cfg.to_toml().contains("flush_mode = \"sync\""));
            Ok(())
        });
        std::fs::write(&file, "[broker]\nno_such_key = 1\n").unwrap();
        figment::Jail::expect_with(|jail| {
            // The CLI's own variables and QUIVER_CONFIG are not config keys: serve ignores them.
            for (k, v) in [
                ("QUIVER_FINGERPRINT", "ab:cd"),
                ("QUIVER_CA", "/tmp/ca.pem"),
                ("QUIVER_BROKER", "127.0.0.1:1"),
                ("QUIVER_CONFIG", "/tmp/quiver.toml"),
                ("QUIVER_", "x"),
            ] {
                jail.set_env(k, v);
            }
            jail.set_env("QUIVER_STORE__FLUSH_MODE", "sync");
            let cfg = Config::load(None).expect("client variables do not stop serve");
            assert_eq!(cfg.store.flush_mode, crate::store::FlushMode::Sync);
            // A misspelled config key still fails loudly.
            jail.set_env("QUIVER_BROKER__NO_SUCH_KEY", "1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("no_such_key"), "{err}");
            Ok(())
        });
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("no_such_key"), "{err}");
    }

    /// The same settings in human units and in the old integers load to the same values.
    #[test]
    #[allow(clippy::result_large_err)]
    fn human_units_and_old_integers_load_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let human = dir.path().join("human.toml");
        let ints = dir.path().join("ints.toml");
        std::fs::write(
            &human,
            r#"
[broker]
max_frame_bytes = "32MiB"
append_queue_bytes = "512MiB"
connection_request_bytes = "64 MiB"
request_bytes = "1GiB"
busy_timeout_ms = "250ms"
long_poll_max_ms = "15s"
request_read_timeout_ms = "2m"
shutdown_grace_ms = "10s"
group_session_timeout_ms = "30s"
group_heartbeat_interval_ms = "5s"
[store]
segment_size = "256MiB"
max_message_size = "8MiB"
max_properties_size = "64KiB"
disk_headroom_bytes = "100MB"
flush_interval_ms = "1s"
checkpoint_interval_ms = "2s"
group_commit_wait_us = "1ms"
retention_hours = "2d"
[plugins]
default_memory_limit_bytes = "32MiB"
max_memory_limit_bytes = "2GiB"
max_batch_bytes = "512KiB"
default_time_limit_ms = "1s"
max_time_limit_ms = "1m"
epoch_tick_ms = "10ms"
[messaging]
max_delay_ms = "7d"
timer_slot_ms = "50ms"
tx_check_timeout_ms = "6s"
tx_check_interval_ms = "1m"
"#,
        )
        .unwrap();
        std::fs::write(
            &ints,
            r#"
[broker]
max_frame_bytes = 33554432
append_queue_bytes = 536870912
connection_request_bytes = 67108864
request_bytes = 1073741824
busy_timeout_ms = 250
long_poll_max_ms = 15000
request_read_timeout_ms = 120000
shutdown_grace_ms = 10000
group_session_timeout_ms = 30000
group_heartbeat_interval_ms = 5000
[store]
segment_size = 268435456
max_message_size = 8388608
max_properties_size = 65536
disk_headroom_bytes = 100000000
flush_interval_ms = 1000
checkpoint_interval_ms = 2000
group_commit_wait_us = 1000
retention_hours = 48
[plugins]
default_memory_limit_bytes = 33554432
max_memory_limit_bytes = 2147483648
max_batch_bytes = 524288
default_time_limit_ms = 1000
max_time_limit_ms = 60000
epoch_tick_ms = 10
[messaging]
max_delay_ms = 604800000
timer_slot_ms = 50
tx_check_timeout_ms = 6000
tx_check_interval_ms = 60000
"#,
        )
        .unwrap();
        figment::Jail::expect_with(|_| {
            let a = Config::load(Some(&human)).expect("human units load");
            let b = Config::load(Some(&ints)).expect("integers load");
            assert_eq!(a.to_toml(), b.to_toml());
            assert_ne!(
                a.to_toml(),
                Config::default().to_toml(),
                "the files changed something"
            );
            assert_eq!(a.store.segment_size, 256 << 20);
            assert_eq!(a.store.disk_headroom_bytes, 100_000_000);
            assert_eq!(a.store.retention_hours, 48);
            assert_eq!(a.broker.request_read_timeout_ms, 120_000);
            assert_eq!(a.plugins.max_memory_limit_bytes, 2 << 30);
            assert_eq!(a.messaging.max_delay_ms, 7 * 24 * 3600 * 1000);
            a.validate().expect("valid");
            Ok(())
        });
    }

    /// Environment variables take human units and integers alike; a bad unit names the key.
    #[test]
    #[allow(clippy::result_large_err)]
    fn env_takes_human_units() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUIVER_STORE__SEGMENT_SIZE", "512MiB");
            jail.set_env("QUIVER_BROKER__BUSY_TIMEOUT_MS", "1s");
            jail.set_env("QUIVER_BROKER__LONG_POLL_MAX_MS", "20000");
            jail.set_env("QUIVER_PLUGINS__MAX_BATCH_BYTES", "65536");
            let cfg = Config::load(None).expect("loads");
            assert_eq!(cfg.store.segment_size, 512 << 20);
            assert_eq!(cfg.broker.busy_timeout_ms, 1000);
            assert_eq!(cfg.broker.long_poll_max_ms, 20_000);
            assert_eq!(cfg.plugins.max_batch_bytes, 65_536);
            jail.set_env("QUIVER_STORE__SEGMENT_SIZE", "1GB!");
            let err = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(
                err.contains("segment_size") && err.contains("unit"),
                "{err}"
            );
            jail.set_env("QUIVER_STORE__SEGMENT_SIZE", "1GiB");
            jail.set_env("QUIVER_BROKER__BUSY_TIMEOUT_MS", "1500us");
            let err = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("busy_timeout_ms"), "{err}");
            jail.set_env("QUIVER_BROKER__BUSY_TIMEOUT_MS", "-5");
            assert!(
                Config::load(None).is_err(),
                "negative durations are refused"
            );
            jail.set_env("QUIVER_BROKER__BUSY_TIMEOUT_MS", "5");
            jail.set_env("QUIVER_BROKER__MAX_FRAME_BYTES", "8GiB");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("too large"), "{err}");
            Ok(())
        });
    }

    /// `--print-config` prints sizes and durations in human units, and what it prints loads
    /// back to the same configuration.
    #[test]
    #[allow(clippy::result_large_err)]
    fn print_config_is_human_and_round_trips() {
        let mut cfg = Config::default();
        cfg.broker.data_dir = PathBuf::from("/tmp/quiver-rt");
        cfg.broker.busy_timeout_ms = 1_500;
        cfg.broker.append_queue_bytes = (300 << 20) + 7;
        cfg.store.segment_size = 128 << 20;
        cfg.store.group_commit_wait_us = 150;
        cfg.messaging.tx_check_interval_ms = 90_000;
        let printed = cfg.to_toml();
        for line in [
            "segment_size = \"128MiB\"",
            "max_frame_bytes = \"16448KiB\"",
            "append_queue_bytes = \"314572807B\"",
            "busy_timeout_ms = \"1500ms\"",
            "long_poll_max_ms = \"30s\"",
            "group_commit_wait_us = \"150us\"",
            "retention_hours = \"3d\"",
            "tx_check_interval_ms = \"90s\"",
            "max_delay_ms = \"30d\"",
            "default_memory_limit_bytes = \"16MiB\"",
        ] {
            assert!(
                printed.lines().any(|l| l == line),
                "{line} not in:\n{printed}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &printed).unwrap();
        figment::Jail::expect_with(|_| {
            let back = Config::load(Some(&file)).expect("printed config loads");
            assert_eq!(back.to_toml(), printed);
            assert_eq!(back.broker.append_queue_bytes, (300 << 20) + 7);
            assert_eq!(back.store.group_commit_wait_us, 150);
            Ok(())
        });
    }
}
