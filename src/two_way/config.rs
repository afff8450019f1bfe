//! The `[two_way]` table: two MongoDB clusters kept in sync in both directions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::JsonFlavour;
use crate::connectors::kafka::config::KafkaSecurity;
use crate::connectors::InvalidSetting;
use crate::core::pattern::NamespacePattern;

/// Active-active sync between the `[source]` cluster and the `[sink]` cluster: each one's
/// changes are applied to the other, strait's own writes are never shipped back, and when both
/// change a document concurrently the last writer wins on both.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwoWayConfig {
    /// Names of the two clusters, `[source]`'s first. They label directions, metrics, conflict
    /// records and origins; on a tie (the same millisecond) the first cluster's change wins.
    #[serde(default = "default_names")]
    pub names: [String; 2],
    /// The cluster copied to the other when the pipeline first starts (mode
    /// `full+incremental`), one of `names`; `"none"` copies nothing (both sides already hold
    /// the same data).
    #[serde(default = "default_copy_from")]
    pub copy_from: String,
    /// Namespace patterns (`db.coll`, `db.*`) replicated only from the first cluster to the
    /// second. Everything else in scope flows both ways.
    #[serde(default)]
    pub only_forward: Vec<String>,
    /// Namespace patterns replicated only from the second cluster to the first.
    #[serde(default)]
    pub only_backward: Vec<String>,
    /// How long a deleted document's version is kept, so that a late change to it does not
    /// bring it back.
    #[serde(default = "default_tombstone_ttl", with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// The largest difference between the two clusters' clocks: when strait must find out
    /// what a document's last local change was, it searches the change log from this long
    /// before the incoming change.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// How strait recognises its own writes in a change stream, so they are not shipped
    /// back: `"sessions"` (the session ids of its transactions; needs change events that
    /// carry `lsid`, as MongoDB's do) or `"origin_field"` (a field it stamps on every
    /// document it writes, for Amazon DocumentDB and Cosmos DB for MongoDB).
    #[serde(default)]
    pub loop_prevention: LoopPrevention,
    /// The field `loop_prevention = "origin_field"` stamps with the name of the cluster a
    /// change came from. Applications write their own cluster's name there (or nothing),
    /// never the other's.
    #[serde(default = "default_origin_field")]
    pub origin_field: String,
    /// A top-level document field that holds each document's version (a date, or
    /// milliseconds since the epoch as a number), such as `last_update_timestamp`, written by
    /// the applications. When set, a changed document's version is this field's value
    /// instead of the change's `wallTime` (deletes, and documents without the field, still
    /// use `wallTime`). Unset: `wallTime`.
    #[serde(default)]
    pub version_field: Option<String>,
    /// A Kafka topic that also receives every conflict record (`[two_way.conflict_topic]`),
    /// for alerting or audit outside the clusters. `strait.conflicts` stays the record.
    #[serde(default)]
    pub conflict_topic: Option<ConflictTopicConfig>,
}

/// `[two_way.conflict_topic]`: the conflict records of both clusters, published to one
/// Kafka topic at least once (a record's `_id` tells a repeat after a crash apart), keyed by
/// namespace and document key so one document's conflicts stay in order.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictTopicConfig {
    /// Bootstrap brokers, `"host:port,host:port"`.
    pub brokers: String,
    /// The topic. Default `"<pipeline id>.conflicts"`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Extended JSON of the record values: `"canonical"` (default, every BSON type kept) or
    /// `"relaxed"` (plain numbers and dates).
    #[serde(default)]
    pub json: JsonFlavour,
    /// Authentication and TLS, as for a Kafka sink.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Any other librdkafka producer property. `enable.idempotence` and `acks` cannot be
    /// weakened here.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl ConflictTopicConfig {
    /// The topic of pipeline `pipeline`.
    pub fn topic(&self, pipeline: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{pipeline}.conflicts"))
    }
}

/// How strait recognises its own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopPrevention {
    /// By the `lsid` of the transactions strait writes with.
    #[default]
    Sessions,
    /// By a field stamped on each document strait writes.
    OriginField,
}

fn default_origin_field() -> String {
    "last_updater_region".to_string()
}

fn default_names() -> [String; 2] {
    ["a".to_string(), "b".to_string()]
}
fn default_copy_from() -> String {
    "none".to_string()
}
fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_clock_skew() -> Duration {
    Duration::from_secs(2)
}

impl TwoWayConfig {
    /// Checks the table on its own (the top level checks what it needs of the rest).
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        let ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 40
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !self.names.iter().all(|n| ok(n)) || self.names[0] == self.names[1] {
            return Err(InvalidSetting::new(
                "names",
                "two different names of 1 to 40 letters, digits, '-' or '_'",
            ));
        }
        if self.copy_from != "none" && !self.names.contains(&self.copy_from) {
            return Err(InvalidSetting::new(
                "copy_from",
                format!(
                    "{:?} is not one of names ({:?}, {:?}) or \"none\"",
                    self.copy_from, self.names[0], self.names[1]
                ),
            ));
        }
        for (key, pats) in [
            ("only_forward", &self.only_forward),
            ("only_backward", &self.only_backward),
        ] {
            for p in pats {
                NamespacePattern::parse(p)
                    .map_err(|e| InvalidSetting::new(key, format!("{p:?}: {e}")))?;
            }
        }
        top_level_field("origin_field", &self.origin_field)?;
        if let Some(f) = &self.version_field {
            top_level_field("version_field", f)?;
        }
        if self.max_clock_skew > Duration::from_secs(600) {
            return Err(InvalidSetting::new("max_clock_skew", "at most 10m"));
        }
        if let Some(k) = &self.conflict_topic {
            if k.brokers.trim().is_empty() {
                return Err(InvalidSetting::new(
                    "conflict_topic.brokers",
                    "must name at least one broker",
                ));
            }
            if k.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(InvalidSetting::new(
                    "conflict_topic.topic",
                    "must not be empty",
                ));
            }
            if k.json == JsonFlavour::Plain {
                return Err(InvalidSetting::new(
                    "conflict_topic.json",
                    "\"canonical\" or \"relaxed\" (conflict records are Extended JSON)",
                ));
            }
        }
        Ok(())
    }

    /// Replaces secrets by `***`, for printing.
    pub(crate) fn redact(&mut self) {
        if let Some(k) = &mut self.conflict_topic {
            k.security = k.security.redacted();
        }
    }
}

/// Checks that `key`'s value names a top-level document field strait may read and write.
fn top_level_field(key: &'static str, f: &str) -> Result<(), InvalidSetting> {
    if f.is_empty() || f.contains('.') || f.starts_with('$') || f.contains('\0') || f == "_id" {
        return Err(InvalidSetting::new(
            key,
            format!("{f:?} is not a top-level field name (no '.', no leading '$', not _id)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> TwoWayConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_and_checks() {
        let c = cfg("");
        assert_eq!(c.names, ["a".to_string(), "b".to_string()]);
        assert_eq!(c.copy_from, "none");
        assert!(c.validate().is_ok());
        assert_eq!(
            cfg(r#"names = ["x", "x"]"#).validate().unwrap_err().key,
            "names"
        );
        assert_eq!(
            cfg(r#"copy_from = "c""#).validate().unwrap_err().key,
            "copy_from"
        );
        assert_eq!(
            cfg(r#"only_forward = ["nodot"]"#)
                .validate()
                .unwrap_err()
                .key,
            "only_forward"
        );
        assert!(toml::from_str::<TwoWayConfig>("bogus = 1").is_err());
        assert_eq!(c.loop_prevention, LoopPrevention::Sessions);
        assert_eq!(c.origin_field, "last_updater_region");
        let o = cfg(r#"loop_prevention = "origin_field""#);
        assert_eq!(o.loop_prevention, LoopPrevention::OriginField);
        assert_eq!(
            cfg(r#"origin_field = "a.b""#).validate().unwrap_err().key,
            "origin_field"
        );
        assert!(toml::from_str::<TwoWayConfig>(r#"loop_prevention = "gid""#).is_err());
        assert_eq!(c.version_field, None);
        assert_eq!(
            cfg(r#"version_field = "$v""#).validate().unwrap_err().key,
            "version_field"
        );
        assert!(cfg(r#"version_field = "last_update_timestamp""#)
            .validate()
            .is_ok());
        assert!(c.conflict_topic.is_none());
        let k = cfg("[conflict_topic]\nbrokers = \"k:9092\"");
        assert!(k.validate().is_ok());
        assert_eq!(k.conflict_topic.unwrap().topic("p"), "p.conflicts");
        assert_eq!(
            cfg("[conflict_topic]\nbrokers = \"k:9092\"\njson = \"plain\"")
                .validate()
                .unwrap_err()
                .key,
            "conflict_topic.json"
        );
        assert!(
            toml::from_str::<TwoWayConfig>("[conflict_topic]\nbrokers = \"k\"\nlinger = 1")
                .is_err()
        );
    }
}
