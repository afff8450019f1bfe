//! The archive sink's settings (`[sinks.<name>]` with `type = "archive"`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{JsonFlavour, RouteOp};
use crate::connectors::InvalidSetting;

/// Kind of an extra sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraSinkType {
    /// JSON lines in an S3-compatible bucket or a local directory.
    Archive,
}

/// An archive sink: events as JSON lines, one object per batch, laid out
/// `<prefix>/<db>/<coll>/YYYY/MM/DD/<first-event>-<last-event>.jsonl[.zst|.gz]`.
/// Either `bucket` (S3) or `path` (local directory) is required.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSinkConfig {
    /// Sink kind: `"archive"`.
    #[serde(rename = "type")]
    pub kind: ExtraSinkType,
    /// Operation types archived (default `["delete"]`; `drop` and `dropDatabase` are common
    /// additions).
    #[serde(default = "default_archive_ops")]
    pub ops: Vec<RouteOp>,
    /// A local directory to write to, instead of a bucket.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// S3 bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Key prefix inside the bucket or directory (e.g. `"prod/deletes"`).
    #[serde(default)]
    pub prefix: String,
    /// S3 endpoint for S3-compatible servers (e.g. `"http://127.0.0.1:8014"`); default AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// AWS region; default `AWS_REGION`/`AWS_DEFAULT_REGION`, the profile's region, else
    /// `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Access key; default `AWS_ACCESS_KEY_ID`, then the profile (`~/.aws/credentials`),
    /// then instance/container credentials.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret key, with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Profile in `~/.aws/credentials` and `~/.aws/config` (default `AWS_PROFILE`, else
    /// `default`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which local S3 servers need. Default: true
    /// when `endpoint` is set.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Extended JSON flavour of documents in records: `"canonical"` (default; keeps every BSON
    /// type, so `strait archive restore` is exact) or `"relaxed"` (plainer numbers and dates).
    #[serde(default)]
    pub json: JsonFlavour,
    /// Object compression: `"none"` (default), `"zstd"` or `"gzip"`.
    #[serde(default)]
    pub compression: Compression,
    /// Most events in one object.
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
    /// Most MiB (uncompressed) in one object.
    #[serde(default = "default_batch_mib")]
    pub batch_mib: u32,
    /// An object is written at the latest this long after its first event arrived. The
    /// checkpoint waits for archived events, so this also bounds how far it lags.
    #[serde(default = "default_batch_interval", with = "humantime_serde")]
    pub batch_interval: Duration,
}

fn default_archive_ops() -> Vec<RouteOp> {
    vec![RouteOp::Delete]
}
fn default_batch_events() -> usize {
    10_000
}
fn default_batch_mib() -> u32 {
    16
}
fn default_batch_interval() -> Duration {
    Duration::from_secs(10)
}

/// Compression of archive objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain `.jsonl`.
    #[default]
    None,
    /// `.jsonl.zst`.
    Zstd,
    /// `.jsonl.gz`.
    Gzip,
}

impl ArchiveSinkConfig {
    /// Checks the settings that depend on nothing outside this table.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        match (&self.bucket, &self.path) {
            (Some(_), Some(_)) => {
                return Err(InvalidSetting::new(
                    "path",
                    "give either bucket or path, not both",
                ))
            }
            (None, None) => {
                return Err(InvalidSetting::new(
                    "bucket",
                    "an archive needs a bucket (S3) or a path (local directory)",
                ))
            }
            _ => {}
        }
        if self.json == JsonFlavour::Plain {
            return Err(InvalidSetting::new(
                "json",
                "\"plain\" loses BSON types, so a restore could not rebuild the documents: use \"canonical\" or \"relaxed\"",
            ));
        }
        if self.ops.is_empty() {
            return Err(InvalidSetting::new(
                "ops",
                "must name at least one operation type",
            ));
        }
        if self.batch_events == 0 || self.batch_mib == 0 || self.batch_interval.is_zero() {
            return Err(InvalidSetting::new(
                "batch_events",
                "batch_events, batch_mib and batch_interval must be above zero",
            ));
        }
        Ok(())
    }

    /// Replaces secrets by `***`, for printing.
    pub(crate) fn redact(&mut self) {
        for secret in [&mut self.secret_access_key, &mut self.session_token] {
            if secret.is_some() {
                *secret = Some("***".to_string());
            }
        }
    }
}
