//! Kafka settings: the Kafka sink (capture into topics) and the Kafka source (apply topics into
//! MongoDB).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{JsonFlavour, RouteOp};
use crate::connectors::InvalidSetting;

/// Endpoint kind `"kafka"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaType {
    /// Apache Kafka or any Kafka-protocol broker (MSK, Confluent Cloud, Redpanda, Tansu).
    Kafka,
}

/// How events are encoded in Kafka record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaFormat {
    /// The MongoDB change event as Extended JSON, field for field as the MongoDB Kafka source
    /// connector publishes it. Carries DDL events too.
    #[default]
    ChangeEvent,
    /// The Debezium MongoDB envelope (`before`, `after`, `updateDescription`, `op` c/u/d/r,
    /// `source`, `ts_ms`), readable by Flink's `debezium-json` format. DDL is not published.
    Debezium,
    /// The document alone (for upserting consumers); deletes become tombstones when
    /// `tombstones = true`. DDL is not published.
    Document,
}

impl KafkaFormat {
    /// The name used in config files and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaFormat::ChangeEvent => "change-event",
            KafkaFormat::Debezium => "debezium",
            KafkaFormat::Document => "document",
        }
    }
}

/// Compression of produced record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    #[default]
    Zstd,
}

impl KafkaCompression {
    /// librdkafka's `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

/// Authentication and encryption, passed to the client as the librdkafka properties of the
/// same names (`security.protocol`, `sasl.mechanism`, ...). MSK with IAM-less SCRAM and
/// Confluent Cloud (SASL/PLAIN over TLS) need these.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `"plaintext"` (default), `"ssl"`, `"sasl_plaintext"` or `"sasl_ssl"`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `"PLAIN"`, `"SCRAM-SHA-256"` or `"SCRAM-SHA-512"`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name (the API key on Confluent Cloud).
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password (the API secret on Confluent Cloud).
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// PEM file of the certificate authorities to trust; default the system's.
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// PEM client certificate, for mutual TLS.
    #[serde(default)]
    pub ssl_certificate_location: Option<String>,
    /// PEM client key, for mutual TLS.
    #[serde(default)]
    pub ssl_key_location: Option<String>,
    /// Password of the client key.
    #[serde(default)]
    pub ssl_key_password: Option<String>,
}

impl KafkaSecurity {
    /// The librdkafka properties these settings stand for.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        [
            ("security.protocol", &self.protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
            ("ssl.key.password", &self.ssl_key_password),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    /// A copy with secrets replaced by `***`, for printing.
    pub fn redacted(&self) -> Self {
        let mut s = self.clone();
        for v in [&mut s.sasl_password, &mut s.ssl_key_password] {
            if v.is_some() {
                *v = Some("***".into());
            }
        }
        s
    }
}

/// A Kafka sink: change events produced to topics (`[sink]` or `[sinks.<name>]` with
/// `type = "kafka"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Sink kind: `"kafka"`.
    #[serde(rename = "type")]
    pub kind: KafkaType,
    /// Bootstrap brokers, `"host:port,host:port"`.
    pub brokers: String,
    /// Topic name template: `{db}` and `{coll}` are replaced by the event's namespace (after
    /// renames). Default `"{prefix}.{db}.{coll}"` (`"{db}.{coll}"` without a prefix), like the
    /// MongoDB Kafka source connector; a name without placeholders is one fixed topic.
    /// Database-level events (`dropDatabase`) use the template with the `.{coll}` part removed.
    #[serde(default)]
    pub topic: Option<String>,
    /// Prefix of the default topic names.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Record value format: `"change-event"` (default), `"debezium"` or `"document"`.
    #[serde(default)]
    pub format: KafkaFormat,
    /// JSON flavour of documents: `"canonical"` (the default of `change-event` and `document`;
    /// keeps every BSON type, so a strait apply on the other side is byte-exact), `"relaxed"`
    /// (plain numbers; int32 and int64 are no longer told apart) or `"plain"` (the default of
    /// `debezium`: what typed columns read, e.g. Flink's `debezium-json`; ObjectIds as hex
    /// strings, dates as epoch milliseconds). `debezium` refuses `"canonical"`.
    #[serde(default)]
    pub json: Option<JsonFlavour>,
    /// Formats `document` and `debezium`: a delete also produces a tombstone (the document key
    /// with a null value), so compacted topics forget the document. With `document`, deletes
    /// are not published at all when this is false.
    #[serde(default)]
    pub tombstones: bool,
    /// Operation types published (default all that the stream passes).
    #[serde(default)]
    pub ops: Option<Vec<RouteOp>>,
    /// Record headers `strait.op`, `strait.ns` and `strait.clusterTime` on every record.
    #[serde(default = "crate::config::yes")]
    pub headers: bool,
    /// Batch compression: `"zstd"` (default), `"lz4"`, `"gzip"`, `"snappy"` or `"none"`.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// When set, strait creates missing topics with this many partitions before producing
    /// (otherwise the broker's auto-creation, if any, decides).
    #[serde(default)]
    pub topic_partitions: Option<i32>,
    /// Replication factor of topics strait creates (default 1).
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Authentication and TLS.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Any other librdkafka producer property, e.g. `"message.max.bytes" = "20000000"`.
    /// `enable.idempotence` and `acks` cannot be weakened here.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_linger() -> Duration {
    Duration::from_millis(5)
}

/// Where a consumer group without committed offsets starts. A group that has committed
/// offsets always resumes from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStart {
    /// The committed offsets; the oldest record when there are none.
    #[default]
    Committed,
    /// The oldest record still in the topic, when there are no committed offsets.
    Earliest,
    /// Only records produced after the group first joins, when there are no committed offsets.
    Latest,
}

/// How `document` records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentWrite {
    /// Replace the document with the same key (`key_fields`, default `_id`), inserting it if
    /// absent.
    #[default]
    Upsert,
    /// Insert; a document whose `_id` already exists is left as it is.
    Insert,
}

/// A Kafka source: records of topics applied to the MongoDB `[sink]` (`[source]` with
/// `type = "kafka"`). Offsets are committed to the consumer group only once the writes
/// before them are durable, so the group is the checkpoint: more processes with the same
/// `group` share the partitions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Source kind: `"kafka"`.
    #[serde(rename = "type")]
    pub kind: KafkaType,
    /// Bootstrap brokers, `"host:port,host:port"`.
    pub brokers: String,
    /// Topics to read; an entry starting with `^` is a regular expression (e.g. `"^cdc\\..*"`).
    pub topics: Vec<String>,
    /// Consumer group; default `"strait-<id>"`. Processes in one group split the partitions.
    #[serde(default)]
    pub group: Option<String>,
    /// Where to start: `"committed"` (default: the group's committed offsets, else the
    /// oldest record), `"earliest"` or `"latest"` (where a group without committed offsets
    /// starts). Committed offsets always win.
    #[serde(default)]
    pub start_at: KafkaStart,
    /// Record value format: `"change-event"` (default), `"debezium"` or `"document"` (plain
    /// JSON documents, also Extended JSON; a null value deletes the document of the key).
    #[serde(default)]
    pub format: KafkaFormat,
    /// Format `document`: the target `"db.coll"`. Default: from the topic name
    /// `<topic_prefix>.<db>.<coll>`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Format `document` without `namespace`: the prefix to strip from topic names.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Format `document`: `"upsert"` (default) or `"insert"`. A document without `_id` gets an
    /// ObjectId derived from its topic, partition and offset, so a replay writes the same one.
    #[serde(default)]
    pub write: DocumentWrite,
    /// Format `document` with `write = "upsert"`: the fields identifying a document (default
    /// `["_id"]`).
    #[serde(default)]
    pub key_fields: Vec<String>,
    /// Topic receiving records that cannot be parsed or applied, with headers naming the
    /// reason, source topic, partition and offset (the names Kafka Connect uses). Default
    /// `"<group>.dlq"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Records with a larger value go to the dead-letter topic.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Consumer session timeout: how soon the group notices a dead process and hands its
    /// partitions to the others.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// This process's stable name in the group (static membership, KIP-345): with one, a
    /// restarted process rejoins as the same member and gets its partitions back at once,
    /// without a rebalance and without waiting out `session_timeout`. Each process of the group
    /// needs its own name (a second process with the same one is fenced). Default none
    /// (dynamic membership).
    #[serde(default)]
    pub member: Option<String>,
    /// Authentication and TLS.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Any other librdkafka consumer property, e.g. `"fetch.max.bytes" = "104857600"`.
    /// `enable.auto.commit` cannot be turned on here.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_max_record_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

impl KafkaSinkConfig {
    /// The JSON flavour in effect: the configured one, else the format's default.
    pub(crate) fn json(&self) -> JsonFlavour {
        self.json.unwrap_or(match self.format {
            KafkaFormat::Debezium => JsonFlavour::Plain,
            KafkaFormat::ChangeEvent | KafkaFormat::Document => JsonFlavour::Canonical,
        })
    }

    /// Checks the settings that depend on nothing outside this table.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.format == KafkaFormat::Debezium && self.json == Some(JsonFlavour::Canonical) {
            return Err(InvalidSetting::new(
                "json",
                "format = \"debezium\" with canonical Extended JSON gives records that Flink's debezium-json cannot read (numbers as {\"$numberInt\": ...}): use \"plain\" (the default) or \"relaxed\"",
            ));
        }
        if self.brokers.trim().is_empty() {
            return Err(InvalidSetting::new(
                "brokers",
                "must name at least one broker",
            ));
        }
        if self.ops.as_ref().is_some_and(|o| o.is_empty()) {
            return Err(InvalidSetting::new(
                "ops",
                "must name at least one operation type",
            ));
        }
        if let Some(t) = &self.topic {
            let bare = t.replace("{db}", "").replace("{coll}", "");
            if t.is_empty() || bare.contains(['{', '}', ' ', '/']) {
                return Err(InvalidSetting::new(
                    "topic",
                    format!(
                        "{t:?}: a topic name, with {{db}} and {{coll}} as the only placeholders"
                    ),
                ));
            }
        }
        if self.topic_partitions.is_some_and(|n| n < 1) {
            return Err(InvalidSetting::new(
                "topic_partitions",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Replaces secrets by `***`, for printing.
    pub(crate) fn redact(&mut self) {
        self.security = self.security.redacted();
    }
}

/// A Kafka topic that takes a DynamoDB or Kinesis source's dead letters
/// (`[source.dead_letter_kafka]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// Bootstrap brokers, `"host:port,host:port"`.
    pub brokers: String,
    /// The topic; each letter is one record keyed by the item's key (DynamoDB JSON), so one
    /// item's letters stay in order.
    pub topic: String,
    /// Authentication and TLS.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Any other librdkafka producer property.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl KafkaDeadLetterConfig {
    /// Checks the settings that depend on nothing else.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.brokers.trim().is_empty() {
            return Err(InvalidSetting::new(
                "dead_letter_kafka.brokers",
                "must not be empty",
            ));
        }
        if self.topic.trim().is_empty() {
            return Err(InvalidSetting::new(
                "dead_letter_kafka.topic",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

impl KafkaSourceConfig {
    /// Checks the settings that depend on nothing outside this table.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.brokers.trim().is_empty() {
            return Err(InvalidSetting::new(
                "brokers",
                "must name at least one broker",
            ));
        }
        if self.topics.is_empty() {
            return Err(InvalidSetting::new(
                "topics",
                "must name at least one topic",
            ));
        }
        for t in &self.topics {
            if let Some(re) = t.strip_prefix('^') {
                regex::Regex::new(re).map_err(|e| {
                    InvalidSetting::new("topics", format!("{t:?}: bad regular expression: {e}"))
                })?;
            }
        }
        if let Some(ns) = &self.namespace {
            if !ns.contains('.') || ns.starts_with('.') || ns.ends_with('.') {
                return Err(InvalidSetting::new(
                    "namespace",
                    format!("{ns:?}: must be \"db.coll\""),
                ));
            }
        }
        if self.format != KafkaFormat::Document
            && (self.namespace.is_some() || !self.key_fields.is_empty())
        {
            return Err(InvalidSetting::new(
                if self.namespace.is_some() { "namespace" } else { "key_fields" },
                "only for format = \"document\" (the other formats name their namespace and key in each record)",
            ));
        }
        if self.max_record_bytes == 0 {
            return Err(InvalidSetting::new(
                "max_record_bytes",
                "must be at least 1",
            ));
        }
        if let Some(m) = &self.member {
            if m.is_empty() || m.len() > 200 || m.contains(char::is_whitespace) {
                return Err(InvalidSetting::new(
                    "member",
                    format!("{m:?}: 1 to 200 characters, no spaces"),
                ));
            }
        }
        Ok(())
    }

    /// Replaces secrets by `***`, for printing.
    pub(crate) fn redact(&mut self) {
        self.security = self.security.redacted();
    }

    /// The consumer group of a pipeline.
    pub fn group_id(&self, pipeline: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("strait-{pipeline}"))
    }

    /// The `group.instance.id` of static membership: `<group>-<member>`.
    pub fn instance_id(&self, pipeline: &str) -> Option<String> {
        self.member
            .as_ref()
            .map(|m| format!("{}-{m}", self.group_id(pipeline)))
    }

    /// The dead-letter topic of a pipeline.
    pub fn dlq_topic(&self, pipeline: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.group_id(pipeline)))
    }
}
