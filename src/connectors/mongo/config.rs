//! The MongoDB connector's settings: the `[source]` or `[sink]` table of a MongoDB-family
//! deployment.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::RouteOp;
use crate::connectors::InvalidSetting;

/// Kind of endpoint. Only MongoDB exists so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointType {
    /// MongoDB, Amazon DocumentDB or Azure Cosmos DB for MongoDB.
    #[default]
    Mongodb,
}

/// A MongoDB-family deployment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MongoEndpoint {
    /// Endpoint kind: `"mongodb"`.
    #[serde(default, rename = "type")]
    pub kind: EndpointType,
    /// Connection string, e.g. `mongodb://user:pass@host:27017/?replicaSet=rs0`. Any URI option
    /// of the driver works here (`tls=true`, `authSource=...`, `retryWrites=false` for DocumentDB).
    pub uri: String,
    /// TLS settings beyond what the URI says (DocumentDB needs `ca_file`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long to wait for a reachable server before failing, e.g. `"10s"`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `[sink]` only: the operation types written to this sink, e.g.
    /// `["insert", "update", "replace"]` for an append-only copy whose deletes go to an archive.
    /// Default: every operation the stream passes.
    #[serde(default)]
    pub ops: Option<Vec<RouteOp>>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// TLS options for a MongoDB connection.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Turn TLS on (default true when this table is present).
    #[serde(default = "crate::config::yes")]
    pub enabled: bool,
    /// PEM file of the certificate authorities to trust (e.g. `global-bundle.pem` for DocumentDB).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate and key, for X.509 auth or mutual TLS.
    #[serde(default)]
    pub certificate_key_file: Option<PathBuf>,
    /// Accept any server certificate (also skips the host-name check, which SSH tunnels to
    /// DocumentDB need). Only for testing.
    #[serde(default)]
    pub allow_invalid_certificates: bool,
}

impl MongoEndpoint {
    /// Checks the settings that depend on nothing outside this table.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err(InvalidSetting::new(
                "uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        Ok(())
    }

    /// Replaces the password in the URI by `***`, for printing.
    pub(crate) fn redact(&mut self) {
        self.uri = redact_uri(&self.uri);
    }
}

/// Replaces the password of a connection string with `***` for logs and error messages.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &uri[..scheme_end + 3], user, &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}
