//! Pipeline configuration: one strict TOML file per pipeline.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key and the line
//! instead of a silently ignored setting. `docs/config.md` is the reference for users; keep it in
//! step with the doc comments here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::pattern::{NamespacePattern, PatternError};

pub use crate::connectors::archive::config::{ArchiveSinkConfig, Compression, ExtraSinkType};
pub use crate::connectors::dynamodb::config::{DynamoSinkConfig, DynamoSourceConfig};
pub use crate::connectors::kafka::config::{KafkaFormat, KafkaSinkConfig, KafkaSourceConfig};
pub use crate::connectors::kinesis::config::{KinesisSinkConfig, KinesisSourceConfig};
use crate::connectors::mongo::config::redact_uri;
pub use crate::connectors::mongo::config::{EndpointType, MongoEndpoint, TlsConfig};
use crate::connectors::InvalidSetting;

/// A configuration that could not be loaded. The message always names the file, and the line
/// and key when the problem is in the file's content.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, from the parser.
        message: String,
    },
    /// The file parses, but a value is not acceptable.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (or of its table when the key is absent; 1 when neither is
        /// in the file).
        line: usize,
        /// Dotted key of the offending setting.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A whole pipeline: where changes come from, where they go, and how.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name of the pipeline. Checkpoints are stored under this id, so two pipelines sharing a
    /// checkpoint store must have different ids.
    #[serde(default = "default_id")]
    pub id: String,
    /// What to do: `full` (copy existing data, then stop), `incremental` (follow changes only),
    /// or `full+incremental` (copy, then follow changes made since the copy started).
    #[serde(default)]
    pub mode: SyncMode,
    /// Where changes come from: a MongoDB deployment (`type = "mongodb"`, the default) or Kafka
    /// topics (`type = "kafka"`).
    pub source: SourceEndpoint,
    /// Where changes go: a MongoDB deployment (`type = "mongodb"`, the default; its `ops`
    /// chooses which operation types it receives) or Kafka topics (`type = "kafka"`).
    pub sink: SinkEndpoint,
    /// More sinks, by name: `[sinks.deletes]` with `type = "archive"` keeps the events routed to
    /// it (by default the deletes) as JSON lines in S3 or a directory; `type = "kafka"` also
    /// publishes them to Kafka.
    #[serde(default)]
    pub sinks: BTreeMap<String, ExtraSinkConfig>,
    /// Which namespaces are replicated.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// Namespace renames applied on the way: `"db.coll" = "db2.coll2"` or `"db" = "db2"`.
    /// A collection rule wins over a database rule.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Options of the initial copy.
    #[serde(default)]
    pub full_sync: FullSyncConfig,
    /// Options of change-stream following.
    #[serde(default)]
    pub stream: StreamConfig,
    /// How changes are written to the sink.
    #[serde(default)]
    pub apply: ApplyConfig,
    /// Where the position is saved.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// The HTTP API (status, progress, metrics, pause/resume/rate). Off unless this table is
    /// present.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Two-way (active-active) sync between the `[source]` and `[sink]` MongoDB clusters. Off
    /// unless this table is present.
    #[serde(default)]
    pub two_way: Option<crate::two_way::config::TwoWayConfig>,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on; loopback by default. Port 0 picks a free port (logged).
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// Bearer token required by `POST /pause`, `POST /resume` and `PUT /rate`.
    #[serde(default)]
    pub token: Option<String>,
    /// Allow a non-loopback `listen` without a token.
    #[serde(default)]
    pub allow_remote_without_token: bool,
    /// Rate limit at start, operations (or copied documents) per second; 0 = none. Changed at
    /// runtime with `PUT /rate` or `strait rate`.
    #[serde(default)]
    pub rate_limit: u64,
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7878))
}

fn default_id() -> String {
    "default".to_string()
}

/// Which phases a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum SyncMode {
    /// Copy what exists, then stop.
    #[serde(rename = "full")]
    Full,
    /// Follow changes from the saved or configured position.
    #[serde(rename = "incremental")]
    Incremental,
    /// Copy what exists, then follow every change made since the copy began.
    #[default]
    #[serde(rename = "full+incremental")]
    FullAndIncremental,
}

impl SyncMode {
    /// Whether this mode copies existing data.
    pub fn copies(self) -> bool {
        matches!(self, SyncMode::Full | SyncMode::FullAndIncremental)
    }
    /// Whether this mode follows the change stream.
    pub fn streams(self) -> bool {
        matches!(self, SyncMode::Incremental | SyncMode::FullAndIncremental)
    }
}

/// Where changes come from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SourceEndpoint {
    /// A MongoDB-family deployment's change stream.
    Mongodb(MongoEndpoint),
    /// Kafka topics.
    Kafka(Box<KafkaSourceConfig>),
    /// A DynamoDB table's stream (and the table, for the full sync).
    Dynamodb(Box<DynamoSourceConfig>),
    /// A Kinesis data stream of DynamoDB changes.
    Kinesis(Box<KinesisSourceConfig>),
}

/// Where changes go.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SinkEndpoint {
    /// A MongoDB-family deployment.
    Mongodb(MongoEndpoint),
    /// Kafka topics.
    Kafka(Box<KafkaSinkConfig>),
    /// A DynamoDB table.
    Dynamodb(Box<DynamoSinkConfig>),
    /// A Kinesis data stream (DynamoDB changes).
    Kinesis(Box<KinesisSinkConfig>),
}

/// A sink of `[sinks.<name>]`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ExtraSinkConfig {
    /// JSON lines in a bucket or directory.
    Archive(ArchiveSinkConfig),
    /// Kafka topics.
    Kafka(KafkaSinkConfig),
}

/// Reads a table and its `type` key, so the table can be read again as the struct of that
/// type (each struct denies unknown keys itself).
fn typed_table<'de, D: serde::Deserializer<'de>>(
    d: D,
    default: Option<&str>,
    known: &str,
) -> Result<(String, toml::Value), D::Error> {
    use serde::de::Error;
    let table = toml::Table::deserialize(d)?;
    let ty = match table.get("type") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(D::Error::custom(format!(
                "type: expected a string ({known}), found {}",
                other.type_str()
            )))
        }
        None => match default {
            Some(d) => d.to_string(),
            None => return Err(D::Error::custom(format!("missing field `type` ({known})"))),
        },
    };
    Ok((ty, toml::Value::Table(table)))
}

fn as_typed<'de, T: Deserialize<'de>, E: serde::de::Error>(v: toml::Value) -> Result<T, E> {
    T::deserialize(v).map_err(|e| E::custom(e.message().trim()))
}

impl<'de> Deserialize<'de> for SourceEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let known = "\"mongodb\", \"kafka\", \"dynamodb\" or \"kinesis\"";
        let (ty, v) = typed_table(d, Some("mongodb"), known)?;
        match ty.as_str() {
            "mongodb" => as_typed(v).map(SourceEndpoint::Mongodb),
            "kafka" => as_typed(v).map(|k| SourceEndpoint::Kafka(Box::new(k))),
            "dynamodb" => as_typed(v).map(|k| SourceEndpoint::Dynamodb(Box::new(k))),
            "kinesis" => as_typed(v).map(|k| SourceEndpoint::Kinesis(Box::new(k))),
            other => Err(serde::de::Error::custom(format!(
                "type: unknown source type \"{other}\", expected {known}"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for SinkEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let known = "\"mongodb\", \"kafka\", \"dynamodb\" or \"kinesis\"";
        let (ty, v) = typed_table(d, Some("mongodb"), known)?;
        match ty.as_str() {
            "mongodb" => as_typed(v).map(SinkEndpoint::Mongodb),
            "kafka" => as_typed(v).map(|k| SinkEndpoint::Kafka(Box::new(k))),
            "dynamodb" => as_typed(v).map(|k| SinkEndpoint::Dynamodb(Box::new(k))),
            "kinesis" => as_typed(v).map(|k| SinkEndpoint::Kinesis(Box::new(k))),
            other => Err(serde::de::Error::custom(format!(
                "type: unknown sink type \"{other}\", expected {known}"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for ExtraSinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (ty, v) = typed_table(d, None, "\"archive\" or \"kafka\"")?;
        match ty.as_str() {
            "archive" => as_typed(v).map(ExtraSinkConfig::Archive),
            "kafka" => as_typed(v).map(ExtraSinkConfig::Kafka),
            other => Err(serde::de::Error::custom(format!(
                "type: unknown sink type \"{other}\", expected \"archive\" or \"kafka\""
            ))),
        }
    }
}

/// An operation type, as the server names it, for routing events to sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteOp {
    /// Document inserts.
    Insert,
    /// Document updates.
    Update,
    /// Document replaces.
    Replace,
    /// Document deletes.
    Delete,
    /// Collection creation.
    Create,
    /// Collection drops.
    Drop,
    /// Collection renames.
    Rename,
    /// Database drops.
    DropDatabase,
    /// Index creation.
    CreateIndexes,
    /// Index drops.
    DropIndexes,
    /// Collection option changes (`collMod`).
    Modify,
}

impl RouteOp {
    /// Whether an event of this operation type matches.
    pub fn matches(self, op: &crate::core::event::OpType) -> bool {
        use crate::core::event::OpType as O;
        matches!(
            (self, op),
            (RouteOp::Insert, O::Insert)
                | (RouteOp::Update, O::Update)
                | (RouteOp::Replace, O::Replace)
                | (RouteOp::Delete, O::Delete)
                | (RouteOp::Create, O::Create)
                | (RouteOp::Drop, O::Drop)
                | (RouteOp::Rename, O::Rename)
                | (RouteOp::DropDatabase, O::DropDatabase)
                | (RouteOp::CreateIndexes, O::CreateIndexes)
                | (RouteOp::DropIndexes, O::DropIndexes)
                | (RouteOp::Modify, O::Modify)
        )
    }
}

/// Extended JSON flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonFlavour {
    /// Type-exact (`{"$numberLong": "5"}`).
    #[default]
    Canonical,
    /// Human-friendly (`5`); int32 and int64 become indistinguishable.
    Relaxed,
    /// Plain JSON for typed consumers (Flink, Spark, ksqlDB): numbers as JSON numbers, an
    /// ObjectId as its hex string, a date as milliseconds since the epoch (Debezium's
    /// `io.debezium.time.Timestamp`), a Decimal128 as its decimal string, binary data as
    /// base64, a BSON timestamp as its seconds. Not reversible: a strait apply reads these
    /// values as plain strings and numbers. Kafka sinks only.
    Plain,
}

/// Pre-images (the document as it was before an update, replace or delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreImages {
    /// Ask for them when an archive sink exists.
    #[default]
    Auto,
    /// Never ask.
    Off,
    /// Ask; events of collections without pre-images enabled come without one.
    WhenAvailable,
    /// Ask; an event without a pre-image is an error.
    Required,
}

pub(crate) fn yes() -> bool {
    true
}

/// Namespace selection. A namespace is replicated when it matches an `include` pattern (or
/// `include` is empty) and matches no `exclude` pattern. Patterns: `db.coll` (exact),
/// `db.*` (a whole database), `/regex/` (matched against `db.coll`). The `admin`, `local`,
/// `config` databases, strait's own metadata database and `system.*` collections are never
/// replicated unless an include pattern names them exactly (`admin.x` or `admin.*`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// Patterns of namespaces to replicate; empty means every user namespace.
    #[serde(default)]
    pub include: Vec<String>,
    /// Patterns of namespaces never to replicate.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Start even when an exact `include` names a collection that does not exist on the source.
    #[serde(default)]
    pub allow_missing: bool,
}

/// Options of the initial copy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FullSyncConfig {
    /// Chunks copied at the same time, across and within collections.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// A collection with more documents than this is split into `_id` ranges of about this size,
    /// copied in parallel and checkpointed one by one (a restart redoes only unfinished ranges).
    #[serde(default = "default_chunk_docs")]
    pub chunk_docs: u64,
    /// Documents per insert batch.
    #[serde(default = "default_copy_batch")]
    pub batch_docs: usize,
    /// Drop each target collection before copying into it (only on a fresh start, never on resume).
    #[serde(default)]
    pub drop_target: bool,
    /// Copy the source's indexes to the target (built after the collection's data is copied).
    #[serde(default = "yes")]
    pub indexes: bool,
}

fn default_parallelism() -> usize {
    4
}
fn default_chunk_docs() -> u64 {
    50_000
}
fn default_copy_batch() -> usize {
    1000
}

impl Default for FullSyncConfig {
    fn default() -> Self {
        Self {
            parallelism: default_parallelism(),
            chunk_docs: default_chunk_docs(),
            batch_docs: default_copy_batch(),
            drop_target: false,
            indexes: true,
        }
    }
}

/// Options of change-stream following.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Where to start when there is no checkpoint and no full sync: `"now"` or a cluster time in
    /// seconds since the epoch (e.g. `1767225600`).
    #[serde(default)]
    pub start_at: StartAt,
    /// How updates are applied. `"full_document"` (default) has the source look the document up
    /// (`fullDocument: updateLookup`) and writes it whole: the target ends byte-identical to
    /// the source, field order included, whatever server it is. `"delta"` replays the update
    /// description (updatedFields, removedFields, truncatedArrays) with `$set`/`$unset`/`$push`:
    /// fewer bytes and no lookups, but new fields added by one update land in the order the
    /// target server gives them (mongod sorts them by name, as the source did; some
    /// MongoDB-compatible servers do not).
    #[serde(default)]
    pub update_mode: UpdateMode,
    /// Operation types applied: any of `insert`, `update`, `replace`, `delete`. Leave out
    /// `delete` to keep an append-only copy.
    #[serde(default = "default_ops")]
    pub ops: Vec<DataOp>,
    /// Apply DDL (create, drop, rename, dropDatabase, create/drop index, collMod).
    #[serde(default = "yes")]
    pub ddl: bool,
    /// What to do when the saved position is older than the source's change log:
    /// `"fail"` stops with an error; `"resync"` copies the selected collections again, then follows.
    #[serde(default)]
    pub on_history_lost: HistoryLostPolicy,
    /// Keep the target this far behind the source (a delayed replica that guards against
    /// mistakes): an event is applied no earlier than its cluster time plus this delay.
    #[serde(default, with = "humantime_serde")]
    pub target_delay: Duration,
    /// Ask the source for pre-images (`fullDocumentBeforeChange`), which archive records keep
    /// as `preImage`: `"auto"` (default: when an archive sink exists), `"off"`,
    /// `"when_available"` or `"required"`. The source must have them enabled per collection
    /// (MongoDB 6+ `changeStreamPreAndPostImages`; see `enable_pre_images`).
    #[serde(default)]
    pub pre_images: PreImages,
    /// At start, enable `changeStreamPreAndPostImages` on every source collection in scope
    /// (a `collMod` on the source; needs the privilege to run it).
    #[serde(default)]
    pub enable_pre_images: bool,
    /// Change events per getMore.
    #[serde(default = "default_stream_batch")]
    pub batch_size: u32,
    /// How long the server waits for new events before answering an empty batch; also how
    /// often an idle stream's position advances.
    #[serde(default = "default_max_await", with = "humantime_serde")]
    pub max_await: Duration,
}

fn default_ops() -> Vec<DataOp> {
    vec![
        DataOp::Insert,
        DataOp::Update,
        DataOp::Replace,
        DataOp::Delete,
    ]
}
fn default_stream_batch() -> u32 {
    1000
}
fn default_max_await() -> Duration {
    Duration::from_millis(500)
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            start_at: StartAt::default(),
            update_mode: UpdateMode::default(),
            ops: default_ops(),
            ddl: true,
            on_history_lost: HistoryLostPolicy::default(),
            target_delay: Duration::ZERO,
            pre_images: PreImages::default(),
            enable_pre_images: false,
            batch_size: default_stream_batch(),
            max_await: default_max_await(),
        }
    }
}

/// A data operation type (DDL is governed by `stream.ddl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataOp {
    /// Inserts.
    Insert,
    /// Updates.
    Update,
    /// Replaces.
    Replace,
    /// Deletes.
    Delete,
}

/// Start position for incremental sync when nothing is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum StartAt {
    /// The moment strait starts.
    #[default]
    Now,
    /// A cluster time, seconds since the epoch.
    Timestamp(u32),
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Secs(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "now" => Ok(StartAt::Now),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected \"now\" or seconds since the epoch, found \"{w}\""
            ))),
            Raw::Secs(s) if (0..=u32::MAX as i64).contains(&s) => Ok(StartAt::Timestamp(s as u32)),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!(
                "timestamp {s} out of range"
            ))),
        }
    }
}

/// How update events are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMode {
    /// Replay the update description.
    Delta,
    /// Write the looked-up full document.
    #[default]
    FullDocument,
}

/// What happens when the resume position has aged out of the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryLostPolicy {
    /// Stop with an error explaining what happened.
    #[default]
    Fail,
    /// Copy the selected namespaces again, then follow changes.
    Resync,
}

/// How changes are written to the sink.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// Parallel writers. Events of one document (or one namespace) always go to the same lane.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// What picks the lane: `"document"` (hash of the document key; most parallel; writes
    /// colliding on unique indexes are repaired from a MongoDB source, or their documents
    /// parked until their values are free when there is no source to read) or `"namespace"`
    /// (keeps order across documents of a collection).
    #[serde(default)]
    pub lane_by: LaneBy,
    /// Most writes sent in one command per lane.
    #[serde(default = "default_apply_batch")]
    pub batch_docs: usize,
    /// Events queued per lane before the reader waits (bounds memory).
    #[serde(default = "default_queue")]
    pub queue_depth: usize,
    /// MiB of events read but not yet written, across lanes, before the reader waits (bounds
    /// memory whatever the document sizes).
    #[serde(default = "default_inflight_mib")]
    pub max_inflight_mib: u32,
}

fn default_inflight_mib() -> u32 {
    64
}

fn default_lanes() -> usize {
    8
}
fn default_apply_batch() -> usize {
    500
}
/// A lane's queue holds most of what an apply keeps in memory when the target is slower than
/// the source; 2,000 took 100-176 MB on a Kafka backlog and ~100 MB on a change-stream one,
/// 250 took 92-97 MB (~5 % slower) and 58-59 MB (the same rate).
fn default_queue() -> usize {
    250
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            lanes: default_lanes(),
            lane_by: LaneBy::default(),
            batch_docs: default_apply_batch(),
            queue_depth: default_queue(),
            max_inflight_mib: default_inflight_mib(),
        }
    }
}

/// Lane selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneBy {
    /// Hash of namespace and document key.
    #[default]
    Document,
    /// Hash of the namespace.
    Namespace,
}

/// Where the position is saved.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `"mongodb"` (a collection on the sink, or on `uri`) or `"file"` (`path`).
    #[serde(default)]
    pub store: CheckpointStoreKind,
    /// MongoDB holding checkpoints; defaults to the sink.
    #[serde(default)]
    pub uri: Option<String>,
    /// Database of the checkpoint collection. It is never replicated.
    #[serde(default = "default_meta_db")]
    pub database: String,
    /// Checkpoint collection.
    #[serde(default = "default_ckpt_coll")]
    pub collection: String,
    /// File for `store = "file"`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How often the position is saved while running (it is also saved on shutdown).
    #[serde(default = "default_ckpt_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Standby failover: processes running the same pipeline id take a lease in the
    /// checkpoint database; only the holder runs, the others wait and take over when it dies.
    /// Needs `store = "mongodb"` and host clocks in sync (NTP).
    #[serde(default)]
    pub lease: bool,
    /// How long a lease lasts without renewal; a standby takes over within about this long
    /// after the active process dies.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

/// Checkpoint store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointStoreKind {
    /// A MongoDB collection.
    #[default]
    Mongodb,
    /// A local JSON file, replaced atomically.
    File,
}

fn default_meta_db() -> String {
    "strait".to_string()
}
fn default_ckpt_coll() -> String {
    "checkpoints".to_string()
}
fn default_ckpt_interval() -> Duration {
    Duration::from_secs(1)
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            store: CheckpointStoreKind::default(),
            uri: None,
            database: default_meta_db(),
            collection: default_ckpt_coll(),
            path: None,
            interval: default_ckpt_interval(),
            lease: false,
            lease_ttl: default_lease_ttl(),
        }
    }
}

impl PipelineConfig {
    /// Whether the main `[sink]` is MongoDB and receives events of this operation type.
    pub fn sink_takes(&self, op: &crate::core::event::OpType) -> bool {
        match self.mongo_sink() {
            None => false,
            Some(m) => match &m.ops {
                None => true,
                Some(ops) => ops.iter().any(|o| o.matches(op)),
            },
        }
    }

    /// The MongoDB source, unless the source is Kafka.
    pub fn mongo_source(&self) -> Option<&MongoEndpoint> {
        match &self.source {
            SourceEndpoint::Mongodb(m) => Some(m),
            SourceEndpoint::Kafka(_) | SourceEndpoint::Dynamodb(_) | SourceEndpoint::Kinesis(_) => {
                None
            }
        }
    }

    /// The MongoDB `[sink]`, unless the sink is Kafka.
    pub fn mongo_sink(&self) -> Option<&MongoEndpoint> {
        match &self.sink {
            SinkEndpoint::Mongodb(m) => Some(m),
            SinkEndpoint::Kafka(_) | SinkEndpoint::Dynamodb(_) | SinkEndpoint::Kinesis(_) => None,
        }
    }

    /// The MongoDB endpoint used for connection defaults (TLS, timeouts) of other clients:
    /// the sink when it is MongoDB, else the source.
    pub fn mongo_endpoint(&self) -> Option<&MongoEndpoint> {
        self.mongo_sink().or(self.mongo_source())
    }

    /// Every Kafka sink with its name: `[sink]` (named `sink`) and `[sinks.<name>]`.
    pub fn kafka_sinks(&self) -> Vec<(String, &KafkaSinkConfig)> {
        let mut out: Vec<(String, &KafkaSinkConfig)> = Vec::new();
        if let SinkEndpoint::Kafka(k) = &self.sink {
            out.push(("sink".to_string(), k.as_ref()));
        }
        for (name, s) in &self.sinks {
            if let ExtraSinkConfig::Kafka(k) = s {
                out.push((name.clone(), k));
            }
        }
        out
    }

    /// Every archive sink with its name.
    pub fn archive_sinks(&self) -> Vec<(String, &ArchiveSinkConfig)> {
        self.sinks
            .iter()
            .filter_map(|(n, s)| match s {
                ExtraSinkConfig::Archive(a) => Some((n.clone(), a)),
                ExtraSinkConfig::Kafka(_) => None,
            })
            .collect()
    }

    /// Whether the source should be asked for pre-images.
    pub fn wants_pre_images(&self) -> bool {
        match self.stream.pre_images {
            PreImages::Auto => !self.archive_sinks().is_empty(),
            PreImages::Off => false,
            PreImages::WhenAvailable | PreImages::Required => true,
        }
    }

    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_config(path)?, path)
    }

    /// Parses and validates pipeline TOML; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: PipelineConfig = parse_toml(text, path)?;
        cfg.validate(path).map_err(|e| with_line_of_key(e, text))?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: 1,
            key: key.to_string(),
            message,
        };
        if self.id.is_empty() || self.id.len() > 100 {
            return Err(invalid("id", "must be 1 to 100 characters".into()));
        }
        for (key, pats) in [
            ("scope.include", &self.scope.include),
            ("scope.exclude", &self.scope.exclude),
        ] {
            for p in pats {
                NamespacePattern::parse(p)
                    .map_err(|e: PatternError| invalid(key, format!("{p:?}: {e}")))?;
            }
        }
        for (from, to) in &self.rename {
            let ok = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.ends_with('.');
            if !ok(from) || !ok(to) || from.contains('.') != to.contains('.') {
                return Err(invalid(
                    "rename",
                    format!("{from:?} -> {to:?}: rename a collection to a collection (\"a.b\" = \"c.d\") or a database to a database (\"a\" = \"c\")"),
                ));
            }
        }
        if self.apply.lanes == 0 || self.apply.lanes > 256 {
            return Err(invalid("apply.lanes", "must be between 1 and 256".into()));
        }
        if self.apply.batch_docs == 0 {
            return Err(invalid("apply.batch_docs", "must be at least 1".into()));
        }
        if self.apply.max_inflight_mib < 32 {
            return Err(invalid(
                "apply.max_inflight_mib",
                "must be at least 32 (one 16 MB document must fit)".into(),
            ));
        }
        if self.apply.queue_depth == 0 {
            return Err(invalid("apply.queue_depth", "must be at least 1".into()));
        }
        if self.full_sync.parallelism == 0 {
            return Err(invalid(
                "full_sync.parallelism",
                "must be at least 1".into(),
            ));
        }
        if self.full_sync.batch_docs == 0 || self.full_sync.chunk_docs == 0 {
            return Err(invalid(
                "full_sync.batch_docs",
                "batch_docs and chunk_docs must be at least 1".into(),
            ));
        }
        if self.checkpoint.lease && self.checkpoint.store != CheckpointStoreKind::Mongodb {
            return Err(invalid(
                "checkpoint.lease",
                "needs checkpoint.store = \"mongodb\" (a file cannot be shared between hosts)"
                    .into(),
            ));
        }
        if self.checkpoint.lease && self.checkpoint.lease_ttl < Duration::from_secs(2) {
            return Err(invalid(
                "checkpoint.lease_ttl",
                "must be at least 2s".into(),
            ));
        }
        if self.checkpoint.store == CheckpointStoreKind::File && self.checkpoint.path.is_none() {
            return Err(invalid(
                "checkpoint.path",
                "required when checkpoint.store = \"file\"".into(),
            ));
        }
        if self.mongo_source().is_some_and(|m| m.ops.is_some()) {
            return Err(invalid(
                "source.ops",
                "only sinks take ops (set it under [sink] or [sinks.<name>])".into(),
            ));
        }
        // Each connector checks its own table; the table's key prefix is added here.
        let connector = |table: &str, r: Result<(), InvalidSetting>| {
            r.map_err(|e| invalid(&format!("{table}.{}", e.key), e.message))
        };
        if let Some(t) = &self.two_way {
            connector("two_way", t.validate())?;
            self.validate_two_way(&invalid)?;
        }
        match &self.source {
            SourceEndpoint::Mongodb(m) => connector("source", m.validate())?,
            SourceEndpoint::Kafka(k) => {
                self.validate_kafka_source(&invalid)?;
                connector("source", k.validate())?;
            }
            SourceEndpoint::Dynamodb(d) => {
                connector("source", d.validate())?;
                self.validate_dynamodb_source(&invalid)?;
            }
            SourceEndpoint::Kinesis(k) => {
                connector("source", k.validate())?;
                self.validate_dynamodb_source(&invalid)?;
            }
        }
        match &self.sink {
            SinkEndpoint::Mongodb(m) => connector("sink", m.validate())?,
            SinkEndpoint::Dynamodb(d) => {
                connector("sink", d.validate())?;
                if matches!(self.source, SourceEndpoint::Kafka(_)) {
                    return Err(invalid(
                        "sink.type",
                        "a DynamoDB sink takes items from a DynamoDB or Kinesis source, or documents from a MongoDB source; Kafka records into DynamoDB are not supported".into(),
                    ));
                }
                if matches!(self.source, SourceEndpoint::Mongodb(_)) && d.stamp_origin.is_some() {
                    return Err(invalid(
                        "sink.stamp_origin",
                        "two-way sync between MongoDB and DynamoDB is not supported".into(),
                    ));
                }
            }
            SinkEndpoint::Kinesis(k) => {
                connector("sink", k.validate())?;
                if !matches!(self.source, SourceEndpoint::Dynamodb(_)) {
                    return Err(invalid(
                        "sink.type",
                        "a Kinesis sink takes items from a DynamoDB source ([source] type = \"dynamodb\")".into(),
                    ));
                }
            }
            SinkEndpoint::Kafka(k) => {
                connector("sink", k.validate())?;
                self.validate_debezium(k, "sink", &invalid)?;
                if let Some(ops) = &k.ops {
                    self.validate_route_ops(ops, "sink.ops", &invalid)?;
                }
            }
        }
        for (name, extra) in &self.sinks {
            let table = format!("sinks.{name}");
            match extra {
                ExtraSinkConfig::Kafka(k) => {
                    connector(&table, k.validate())?;
                    self.validate_debezium(k, &table, &invalid)?;
                    if let Some(ops) = &k.ops {
                        self.validate_route_ops(ops, &format!("{table}.ops"), &invalid)?;
                    }
                }
                ExtraSinkConfig::Archive(a) => {
                    connector(&table, a.validate())?;
                    self.validate_route_ops(&a.ops, &format!("{table}.ops"), &invalid)?;
                }
            }
        }
        Ok(())
    }

    /// Checks that every routed operation type can arrive, given `stream.ops` and `stream.ddl`.
    fn validate_route_ops(
        &self,
        ops: &[RouteOp],
        key: &str,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        for op in ops {
            {
                let data = match op {
                    RouteOp::Insert => Some(DataOp::Insert),
                    RouteOp::Update => Some(DataOp::Update),
                    RouteOp::Replace => Some(DataOp::Replace),
                    RouteOp::Delete => Some(DataOp::Delete),
                    _ => None,
                };
                match data {
                    Some(d) if !self.stream.ops.contains(&d) => {
                        return Err(invalid(
                            key,
                            format!("{op:?} is routed here but stream.ops leaves it out, so no such event would ever arrive; add it to stream.ops and leave it out of [sink] ops instead").to_lowercase(),
                        ))
                    }
                    None if !self.stream.ddl => {
                        return Err(invalid(
                            key,
                            format!("{op:?} is DDL, which stream.ddl = false turns off"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// `debezium` records need `after` on every update (Flink's `debezium-json` stops on a
    /// null one), which only looked-up documents give.
    fn validate_debezium(
        &self,
        k: &KafkaSinkConfig,
        table: &str,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if k.format == KafkaFormat::Debezium && self.stream.update_mode == UpdateMode::Delta {
            return Err(invalid(
                &format!("{table}.format"),
                "\"debezium\" needs the updated document in every update record, which stream.update_mode = \"delta\" turns off: use update_mode = \"full_document\" (the default)".into(),
            ));
        }
        Ok(())
    }

    /// What two-way sync needs of the rest of the pipeline.
    fn validate_two_way(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.mongo_source().is_none() || self.mongo_sink().is_none() {
            return Err(invalid(
                "two_way",
                "needs [source] and [sink] both type = \"mongodb\" (the two clusters)".into(),
            ));
        }
        if !self.rename.is_empty() {
            return Err(invalid(
                "rename",
                "renames cannot be undone on the way back: two-way sync keeps namespaces as they are".into(),
            ));
        }
        if !self.sinks.is_empty() {
            return Err(invalid(
                "sinks",
                "two-way sync writes only to the two clusters; run a separate pipeline for [sinks.*]".into(),
            ));
        }
        if !self.mode.streams() {
            return Err(invalid(
                "mode",
                "two-way sync follows both clusters: use \"full+incremental\" or \"incremental\""
                    .into(),
            ));
        }
        if self.full_sync.drop_target {
            return Err(invalid(
                "full_sync.drop_target",
                "would drop what the other cluster's users are writing: two-way copies only the documents it lacks".into(),
            ));
        }
        if self.stream.update_mode == UpdateMode::Delta {
            return Err(invalid(
                "stream.update_mode",
                "two-way sync compares and writes whole documents: use \"full_document\" (the default)".into(),
            ));
        }
        if self.stream.target_delay > Duration::ZERO {
            return Err(invalid(
                "stream.target_delay",
                "a delayed copy cannot take writes of its own: not with two_way".into(),
            ));
        }
        if self.checkpoint.store == CheckpointStoreKind::Mongodb && self.checkpoint.uri.is_some() {
            return Err(invalid(
                "checkpoint.uri",
                "two-way keeps each direction's checkpoint on the cluster it writes to".into(),
            ));
        }
        Ok(())
    }

    /// What a DynamoDB or Kinesis source needs of the rest of the pipeline.
    fn validate_dynamodb_source(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let fits = match &self.source {
            SourceEndpoint::Kinesis(_) => matches!(self.sink, SinkEndpoint::Dynamodb(_)),
            _ => !matches!(self.sink, SinkEndpoint::Kafka(_)),
        };
        if !fits {
            return Err(invalid(
                "sink.type",
                "a DynamoDB source writes to a DynamoDB, Kinesis or MongoDB sink, a Kinesis source to a DynamoDB sink; Kafka sinks of DynamoDB items are not supported yet".into(),
            ));
        }
        if !self.sinks.is_empty() {
            return Err(invalid(
                "sinks",
                "a DynamoDB or Kinesis source has one sink, [sink]".into(),
            ));
        }
        if self.checkpoint.store == CheckpointStoreKind::Mongodb
            && self.checkpoint.uri.is_none()
            && self.mongo_sink().is_none()
        {
            return Err(invalid(
                "checkpoint.store",
                "a DynamoDB pipeline keeps its checkpoint in a file (store = \"file\" with path), in MongoDB at checkpoint.uri, or in its MongoDB sink".into(),
            ));
        }
        Ok(())
    }

    /// What a Kafka source needs of the rest of the pipeline.
    fn validate_kafka_source(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.mongo_sink().is_none() {
            return Err(invalid(
                "sink.type",
                "a Kafka source applies its topics to MongoDB: [sink] must be type = \"mongodb\""
                    .into(),
            ));
        }
        if self.checkpoint.lease {
            return Err(invalid(
                "checkpoint.lease",
                "a Kafka source needs no lease: processes sharing a consumer group split the partitions".into(),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML with secrets replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        match &mut c.source {
            SourceEndpoint::Mongodb(m) => m.redact(),
            SourceEndpoint::Kafka(k) => k.redact(),
            SourceEndpoint::Dynamodb(d) => d.redact(),
            SourceEndpoint::Kinesis(k) => k.redact(),
        }
        match &mut c.sink {
            SinkEndpoint::Mongodb(m) => m.redact(),
            SinkEndpoint::Kafka(k) => k.redact(),
            SinkEndpoint::Dynamodb(d) => d.redact(),
            SinkEndpoint::Kinesis(k) => k.redact(),
        }
        c.checkpoint.uri = c.checkpoint.uri.as_deref().map(redact_uri);
        for s in c.sinks.values_mut() {
            match s {
                ExtraSinkConfig::Archive(a) => a.redact(),
                ExtraSinkConfig::Kafka(k) => k.redact(),
            }
        }
        if let Some(t) = &mut c.two_way {
            t.redact();
        }
        if let Some(api) = &mut c.api {
            api.token = api.token.as_ref().map(|_| "***".to_string());
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

/// The text of a config file.
pub(crate) fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Deserializes strict TOML; a malformed value or an unknown key becomes a
/// [`ConfigError::Parse`] with the line and column of the offending key. `path` only labels
/// errors.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (mut line, mut column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        // Errors of tables read by their `type` (source, sink, sinks.*) point at the
        // table; find the offending key inside it.
        if let Some(key) = e
            .message()
            .split_once("unknown field `")
            .and_then(|(_, r)| r.split_once('`'))
            .map(|(k, _)| k)
        {
            if let Some(l) = text.lines().enumerate().skip(line - 1).find_map(|(i, l)| {
                let l = l.trim_start();
                (l.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('=')))
                .then_some(i + 1)
            }) {
                (line, column) = (l, 1);
            }
        }
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().replace('\n', " "),
        }
    })
}

/// An [`ConfigError::Invalid`] raised without a line gets the line of its key in `text`.
pub(crate) fn with_line_of_key(e: ConfigError, text: &str) -> ConfigError {
    match e {
        ConfigError::Invalid {
            path, key, message, ..
        } => ConfigError::Invalid {
            line: line_of_key(text, &key),
            path,
            key,
            message,
        },
        other => other,
    }
}

/// The line of a dotted key (`sinks.a.bucket`, `apply.lanes`, `id`): the line setting it inside
/// its table, else the table's header, else 1.
fn line_of_key(text: &str, key: &str) -> usize {
    let (table, leaf) = match key.rsplit_once('.') {
        Some((t, l)) => (t, l),
        None => ("", key),
    };
    let norm = |s: &str| s.replace(['"', ' '], "");
    let mut in_table = table.is_empty();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[') {
            let name = norm(h.trim_start_matches('[').split(']').next().unwrap_or(""));
            in_table = name == norm(table);
            if in_table {
                header = Some(i + 1);
            }
            continue;
        }
        if in_table {
            let k = l.split('=').next().unwrap_or("").trim().trim_matches('"');
            if l.contains('=') && k == leaf {
                return i + 1;
            }
        }
    }
    // The key may name a table itself (`rename`, `two_way`): point at its header.
    header
        .or_else(|| {
            text.lines()
                .position(|l| norm(l.trim()) == format!("[{}]", norm(key)))
                .map(|i| i + 1)
        })
        .unwrap_or(1)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[source]\nuri = \"mongodb://a\"\n[sink]\nuri = \"mongodb://b\"\n";

    const KAFKA_SINK: &str =
        "[source]\nuri = \"mongodb://a\"\n[sink]\ntype = \"kafka\"\nbrokers = \"k:9092\"\n";
    const KAFKA_SOURCE: &str = "[source]\ntype = \"kafka\"\nbrokers = \"k:9092\"\ntopics = [\"t\"]\n[sink]\nuri = \"mongodb://b\"\n";

    #[test]
    fn kafka_endpoints_parse_with_defaults() {
        let c = PipelineConfig::parse(KAFKA_SINK, Path::new("p.toml")).unwrap();
        assert!(c.mongo_sink().is_none());
        let ks = c.kafka_sinks();
        assert_eq!(ks.len(), 1);
        assert_eq!(ks[0].0, "sink");
        assert_eq!(ks[0].1.format, KafkaFormat::ChangeEvent);
        assert!(!c.sink_takes(&crate::core::event::OpType::Insert));
        let c = PipelineConfig::parse(KAFKA_SOURCE, Path::new("p.toml")).unwrap();
        let SourceEndpoint::Kafka(k) = &c.source else {
            panic!()
        };
        assert_eq!(k.group_id(&c.id), "strait-default");
        assert_eq!(k.dlq_topic(&c.id), "strait-default.dlq");
        let both = format!(
            "{MIN}[sinks.feed]\ntype = \"kafka\"\nbrokers = \"k:9092\"\nformat = \"debezium\"\n"
        );
        let c = PipelineConfig::parse(&both, Path::new("p.toml")).unwrap();
        assert!(c.mongo_sink().is_some());
        assert_eq!(c.kafka_sinks()[0].1.format, KafkaFormat::Debezium);
    }

    #[test]
    fn kafka_tables_name_the_unknown_key_and_its_line() {
        let text = format!("{KAFKA_SINK}brokerz = 1\n");
        let e = PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:6:") && e.contains("brokerz"), "{e}");
        let text = "[source]\ntype = \"kafka\"\nbrokers = \"k\"\ntopics = [\"t\"]\ngroupp = \"x\"\n[sink]\nuri = \"mongodb://b\"\n";
        let e = PipelineConfig::parse(text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:5:") && e.contains("groupp"), "{e}");
        let e = PipelineConfig::parse(
            "[source]\ntype = \"kafak\"\n[sink]\nuri = \"mongodb://b\"\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown source type \"kafak\""), "{e}");
    }

    #[test]
    fn kafka_source_rules() {
        let to_kafka = KAFKA_SOURCE.replace(
            "[sink]\nuri = \"mongodb://b\"",
            "[sink]\ntype = \"kafka\"\nbrokers = \"k\"",
        );
        let e = PipelineConfig::parse(&to_kafka, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sink.type") && e.contains("MongoDB"), "{e}");
        let bad_re = KAFKA_SOURCE.replace("topics = [\"t\"]", "topics = [\"^a(\"]");
        let e = PipelineConfig::parse(&bad_re, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml:4: source.topics") && e.contains("regular expression"),
            "{e}"
        );
        let ns_wrong_format =
            KAFKA_SOURCE.replace("topics = [\"t\"]", "topics = [\"t\"]\nnamespace = \"a.b\"");
        let e = PipelineConfig::parse(&ns_wrong_format, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("source.namespace") && e.contains("document"),
            "{e}"
        );
    }

    /// Combinations that would give records Flink's `debezium-json` rejects, and a lossy
    /// archive, are refused with the key and its line.
    #[test]
    fn record_formats_consumers_cannot_read_are_refused() {
        let dbz = format!("{KAFKA_SINK}format = \"debezium\"\n");
        let c = PipelineConfig::parse(&dbz, Path::new("p.toml")).unwrap();
        assert_eq!(c.kafka_sinks()[0].1.json(), JsonFlavour::Plain);
        let e = PipelineConfig::parse(&format!("{dbz}json = \"canonical\"\n"), Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml:7: sink.json") && e.contains("debezium-json"),
            "{e}"
        );
        let delta = format!("{dbz}[stream]\nupdate_mode = \"delta\"\n");
        let e = PipelineConfig::parse(&delta, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sink.format") && e.contains("full_document"),
            "{e}"
        );
        let c = PipelineConfig::parse(KAFKA_SINK, Path::new("p.toml")).unwrap();
        assert_eq!(c.kafka_sinks()[0].1.json(), JsonFlavour::Canonical);
        let archive =
            format!("{MIN}[sinks.a]\ntype = \"archive\"\npath = \"/tmp/x\"\njson = \"plain\"\n");
        let e = PipelineConfig::parse(&archive, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinks.a.json") && e.contains("restore"), "{e}");
    }

    #[test]
    fn kafka_secrets_are_redacted() {
        let text = format!("{KAFKA_SINK}[sink.security]\nsasl_password = \"hunter2\"\n");
        let c = PipelineConfig::parse(&text, Path::new("p.toml")).unwrap();
        assert!(!c.redacted().contains("hunter2"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = PipelineConfig::parse(MIN, Path::new("p.toml")).unwrap();
        assert_eq!(c.mode, SyncMode::FullAndIncremental);
        assert_eq!(c.apply.lanes, 8);
        assert!(c.stream.ddl);
        assert_eq!(c.stream.ops.len(), 4);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = format!("{MIN}[apply]\nlanes = 4\nlane = 3\n");
        let e = PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:7:"), "{e}");
        assert!(e.contains("unknown field `lane`"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = format!("{MIN}[apply]\nlanes = \"four\"\n");
        let e = PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:6:"), "{e}");
    }

    #[test]
    fn bad_rename_is_rejected() {
        let text = format!("{MIN}[rename]\n\"a.b\" = \"c\"\n");
        let e = PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rename"), "{e}");
    }

    #[test]
    fn invalid_value_names_key_and_line() {
        let text = format!("{MIN}[apply]\nbatch_docs = 10\nlanes = 0\n");
        let e = PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:7: apply.lanes:"), "{e}");
        let text = format!("{MIN}[sinks.del]\ntype = \"archive\"\n");
        let e = PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:5: sinks.del.bucket:"), "{e}");
    }

    #[test]
    fn start_at_accepts_now_and_seconds() {
        let c = PipelineConfig::parse(
            &format!("{MIN}[stream]\nstart_at = 1700000000\n"),
            Path::new("p"),
        )
        .unwrap();
        assert_eq!(c.stream.start_at, StartAt::Timestamp(1_700_000_000));
        let e = PipelineConfig::parse(
            &format!("{MIN}[stream]\nstart_at = \"later\"\n"),
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("later"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_uri("mongodb://u:secret@h:1/db?x=1"),
            "mongodb://u:***@h:1/db?x=1"
        );
        assert_eq!(redact_uri("mongodb://h:1"), "mongodb://h:1");
    }

    #[test]
    fn a_stream_source_keeps_its_dead_letters_in_one_place() {
        let text = "[source]\ntype = \"dynamodb\"\ntable = \"t\"\ndead_letter_file = \"d.jsonl\"\ndead_letter_queue = \"q\"\n[sink]\ntype = \"dynamodb\"\ntable = \"u\"\n[checkpoint]\nstore = \"file\"\npath = \"c.json\"\n";
        let e = PipelineConfig::parse(text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dead_letter_queue") && e.contains("not both"),
            "{e}"
        );
        let one = text.replace("dead_letter_file = \"d.jsonl\"\n", "");
        PipelineConfig::parse(&one, Path::new("p.toml")).unwrap();
    }
}
