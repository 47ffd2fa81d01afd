//! Configuration: a TOML file (`--config <file>` or `UDM_SERVER_CONFIG`), then environment
//! variables `UDM_SERVER_<KEY>` (upper case) over it; an empty variable unsets its key. Unknown
//! keys are refused.

use serde::Deserialize;
use std::path::PathBuf;

/// No `Debug`: it holds the token secret.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `postgresql://udm_server@/shop?host=/var/run/postgresql` or key=value form.
    pub database_url: String,
    /// Address and port to listen on.
    pub listen: String,
    /// Connections of the pool (every tenant shares them).
    pub pool_size: usize,
    /// How long a request waits for a pooled connection before 503.
    pub pool_timeout_ms: u64,
    /// HS256 shared secret (or `jwt_secret_file`).
    pub jwt_secret: Option<String>,
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256 public key (PEM).
    pub jwt_public_key_file: Option<PathBuf>,
    /// The claim naming the tenant, and the one naming the application user.
    pub tenant_claim: String,
    pub user_claim: String,
    /// When set, tokens must carry this `aud` / `iss`.
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    /// Seconds of clock skew allowed for `exp` and `nbf`.
    pub jwt_leeway_s: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `statement_timeout` of every transaction.
    pub statement_timeout_ms: u64,
    /// Open WebSockets and HTTP requests in flight one token may hold together.
    pub max_connections_per_token: usize,
    /// Active subscriptions one WebSocket may hold.
    pub max_subscriptions_per_connection: usize,
    /// Messages waiting for one WebSocket; a consumer that falls further behind is closed.
    pub subscriber_buffer: usize,
    /// How often the process's event watcher asks how far the watched tenants' events have gone
    /// (one cheap query for all of them; with `udm.notify_changes = on` a notification also
    /// wakes it at once).
    pub poll_interval_ms: u64,
    /// The shortest time between two reads of one feed (subscriptions sharing a tenant, user and
    /// request): a read has a fixed cost in the database, so under load a feed batches the
    /// changes of this long into one read.
    pub feed_interval_ms: u64,
    /// Events read per delivery call.
    pub events_batch: i32,
    /// How long a WebSocket may wait before `connection_init`.
    pub connection_init_timeout_ms: u64,
    /// How long in-flight work may take after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// `json` or `text`.
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            listen: "127.0.0.1:8080".into(),
            pool_size: 16,
            pool_timeout_ms: 5_000,
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            tenant_claim: "tenant".into(),
            user_claim: "sub".into(),
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway_s: 5,
            max_body_bytes: 1 << 20,
            statement_timeout_ms: 10_000,
            max_connections_per_token: 64,
            max_subscriptions_per_connection: 100,
            subscriber_buffer: 1_000,
            poll_interval_ms: 20,
            feed_interval_ms: 100,
            events_batch: 100,
            connection_init_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            log_format: "json".into(),
        }
    }
}

/// Every key, for the environment (`UDM_SERVER_<KEY>`).
const KEYS: &[&str] = &[
    "database_url",
    "listen",
    "pool_size",
    "pool_timeout_ms",
    "jwt_secret",
    "jwt_secret_file",
    "jwt_public_key_file",
    "tenant_claim",
    "user_claim",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway_s",
    "max_body_bytes",
    "statement_timeout_ms",
    "max_connections_per_token",
    "max_subscriptions_per_connection",
    "subscriber_buffer",
    "poll_interval_ms",
    "feed_interval_ms",
    "events_batch",
    "connection_init_timeout_ms",
    "shutdown_grace_ms",
    "log_format",
];

impl Config {
    /// The file (if any), then the environment.
    pub fn load(file: Option<PathBuf>) -> Result<Config, String> {
        let file = file.or_else(|| std::env::var_os("UDM_SERVER_CONFIG").map(PathBuf::from));
        let mut table = match &file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                text.parse::<toml::Table>()
                    .map_err(|e| format!("{}: {e}", f.display()))?
            }
            None => toml::Table::new(),
        };
        for key in KEYS {
            if let Ok(v) = std::env::var(format!("UDM_SERVER_{}", key.to_ascii_uppercase())) {
                // an empty variable unsets the key (the default, or none)
                if v.is_empty() {
                    table.remove(*key);
                    continue;
                }
                let numeric = !matches!(
                    *key,
                    "database_url"
                        | "listen"
                        | "jwt_secret"
                        | "jwt_secret_file"
                        | "jwt_public_key_file"
                        | "tenant_claim"
                        | "user_claim"
                        | "jwt_audience"
                        | "jwt_issuer"
                        | "log_format"
                );
                let value = if numeric {
                    toml::Value::Integer(v.trim().parse().map_err(|_| {
                        format!(
                            "UDM_SERVER_{} must be a whole number",
                            key.to_ascii_uppercase()
                        )
                    })?)
                } else {
                    toml::Value::String(v)
                };
                table.insert(key.to_string(), value);
            }
        }
        let mut c: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("configuration: {}", e.message()))?;
        if let Some(f) = &c.jwt_secret_file {
            let s = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read jwt_secret_file {}: {e}", f.display()))?;
            c.jwt_secret = Some(s.trim().to_string());
        }
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if self.database_url.is_empty() {
            return Err("database_url is required (UDM_SERVER_DATABASE_URL)".into());
        }
        if self.jwt_secret.is_none() && self.jwt_public_key_file.is_none() {
            return Err(
                "no token key: set jwt_secret (HS256) or jwt_public_key_file (RS256)".into(),
            );
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 32) {
            return Err("jwt_secret must be at least 32 bytes".into());
        }
        if self.pool_size == 0 || self.max_body_bytes == 0 || self.statement_timeout_ms == 0 {
            return Err(
                "pool_size, max_body_bytes and statement_timeout_ms must be at least 1".into(),
            );
        }
        if self.subscriber_buffer == 0
            || self.poll_interval_ms == 0
            || self.max_connections_per_token == 0
        {
            return Err(
                "subscriber_buffer, poll_interval_ms and max_connections_per_token must be at least 1"
                    .into(),
            );
        }
        if !(1..=10_000).contains(&self.events_batch) {
            return Err("events_batch must be from 1 to 10000".into());
        }
        if self.tenant_claim.is_empty() || self.user_claim.is_empty() {
            return Err("tenant_claim and user_claim must not be empty".into());
        }
        if !matches!(self.log_format.as_str(), "json" | "text") {
            return Err("log_format is json or text".into());
        }
        Ok(())
    }
}
