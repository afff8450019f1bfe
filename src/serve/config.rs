//! `server.toml`: one worker of `strait serve`. Strict like a pipeline file: unknown keys are
//! errors that name the key and the line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    parse_toml, read_config, with_line_of_key, ConfigError, MongoEndpoint, TlsConfig,
};

/// A worker of `strait serve`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This worker's name, shown in `/workers` and in each pipeline's status. Default: host
    /// name and process id. Two live workers must not share a name.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Most pipelines this worker runs at once.
    #[serde(default = "default_max_pipelines")]
    pub max_pipelines: usize,
    /// How long a pipeline's lease lasts without renewal. A dead worker's pipelines move to
    /// another worker within about this time; the holder stops applying before it can expire.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The MongoDB database that holds the pipelines' configs, the workers and the leases.
    /// Every worker of one group names the same one.
    pub control: ControlConfig,
    /// The REST API and status page.
    #[serde(default)]
    pub api: ServerApiConfig,
}

fn default_max_pipelines() -> usize {
    20
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(15)
}

/// The `[control]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Connection string of the control deployment, e.g.
    /// `mongodb://control-1:27017/?replicaSet=rs0`.
    pub uri: String,
    /// Database of the control collections (`pipelines`, `workers`, `status`, `leases`,
    /// `lease_log`).
    #[serde(default = "default_control_db")]
    pub database: String,
    /// TLS settings beyond what the URI says.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long to wait for a reachable server before failing, e.g. `"10s"`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_control_db() -> String {
    "strait_control".into()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The `[api]` table of a worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerApiConfig {
    /// Address to listen on; loopback by default. Port 0 picks a free port (logged).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token required by every call that changes something (create, replace, delete,
    /// pause, resume, restart, rate). Required when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM certificate chain: serve HTTPS instead of HTTP (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8787))
}

impl Default for ServerApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl ServerConfig {
    /// Reads and validates a server file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_config(path)?, path)
    }

    /// Parses and validates server TOML; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: ServerConfig = parse_toml(text, path)?;
        cfg.validate(path).map_err(|e| with_line_of_key(e, text))?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: 1,
            key: key.to_string(),
            message: message.to_string(),
        };
        if !(self.control.uri.starts_with("mongodb://")
            || self.control.uri.starts_with("mongodb+srv://"))
        {
            return Err(invalid(
                "control.uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        if self.control.database.is_empty() {
            return Err(invalid("control.database", "must not be empty"));
        }
        if self.max_pipelines == 0 {
            return Err(invalid("max_pipelines", "must be at least 1"));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(invalid("lease_ttl", "must be at least 2s"));
        }
        if self.worker_id.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("worker_id", "must not be empty"));
        }
        let api = &self.api;
        if !api.listen.ip().is_loopback() && api.token.is_none() {
            return Err(invalid(
                "api.token",
                "a non-loopback api.listen needs a token (bearer auth for the calls that change pipelines)",
            ));
        }
        if api.tls_cert_file.is_some() != api.tls_key_file.is_some() {
            return Err(invalid(
                "api.tls_key_file",
                "api.tls_cert_file and api.tls_key_file go together",
            ));
        }
        Ok(())
    }

    /// The control deployment as an endpoint to connect to.
    pub(crate) fn control_endpoint(&self) -> MongoEndpoint {
        MongoEndpoint {
            kind: Default::default(),
            uri: self.control.uri.clone(),
            tls: self.control.tls.clone(),
            connect_timeout: self.control.connect_timeout,
            ops: None,
        }
    }

    /// This worker's name.
    pub(crate) fn worker_name(&self) -> String {
        self.worker_id
            .clone()
            .unwrap_or_else(crate::engine::supervisor::holder_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_takes_defaults() {
        let c = ServerConfig::parse("[control]\nuri = \"mongodb://h:1\"\n", Path::new("s.toml"))
            .unwrap();
        assert_eq!(c.control.database, "strait_control");
        assert_eq!(c.max_pipelines, 20);
        assert_eq!(c.lease_ttl, Duration::from_secs(15));
        assert!(c.api.listen.ip().is_loopback());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let e = ServerConfig::parse(
            "max_pipelines = 3\n[control]\nuri = \"mongodb://h:1\"\ndatabse = \"x\"\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("s.toml:4:"), "{e}");
        assert!(e.contains("databse"), "{e}");
    }

    #[test]
    fn remote_listener_needs_a_token() {
        let e = ServerConfig::parse(
            "[control]\nuri = \"mongodb://h:1\"\n[api]\nlisten = \"0.0.0.0:8787\"\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("s.toml:3: api.token:"), "{e}");
    }

    #[test]
    fn tls_files_go_together() {
        let e = ServerConfig::parse(
            "[control]\nuri = \"mongodb://h:1\"\n[api]\ntls_cert_file = \"c.pem\"\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("api.tls_key_file"), "{e}");
    }
}
