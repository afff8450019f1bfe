//! Kafka record formats: change events to record keys and values, and back.
//!
//! Three value formats, chosen per sink or source (see [`KafkaFormat`]):
//! - [`change_event`]: the change event as Extended JSON, as the MongoDB Kafka source connector
//!   publishes it;
//! - [`debezium`]: the Debezium MongoDB envelope;
//! - [`document`]: the document alone, deletes as tombstones.
//!
//! Canonical Extended JSON keeps every BSON type, and objects keep their field order both ways,
//! so a capture followed by an apply writes byte-identical documents.

pub mod change_event;
pub mod debezium;
pub mod document;
pub(crate) mod ext_json;
pub(crate) mod ext_json_read;

use bson::{Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};
use serde_json::Value;

use crate::config::{JsonFlavour, KafkaFormat};
use crate::core::event::{ChangeEvent, Namespace};

/// One Kafka record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Record key: the document key, so one document's events share a partition.
    pub key: Vec<u8>,
    /// Record value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Where a consumed record came from (names the synthetic position of decoded events).
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// A record that cannot be turned into a change event. The message is what the dead-letter
/// topic's reason header says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

/// What a consumed record asks for.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// Apply this change.
    Event(Box<ChangeEvent>),
    /// Insert this document unless its `_id` exists (format `document`, `write = "insert"`).
    InsertIfAbsent(Namespace, RawDocumentBuf),
    /// Nothing to do (e.g. the tombstone that follows a Debezium delete).
    Skip,
}

/// Options of decoding `document` records.
#[derive(Debug, Clone, Default)]
pub struct DocumentOptions {
    /// Fixed target namespace.
    pub namespace: Option<Namespace>,
    /// Prefix stripped from topic names to find the namespace.
    pub topic_prefix: Option<String>,
    /// Insert instead of upsert.
    pub insert: bool,
    /// Fields identifying a document for upserts (empty: `_id`).
    pub key_fields: Vec<String>,
}

/// Encodes an event as zero, one or two records (a delete followed by its tombstone).
pub fn encode(
    ev: &ChangeEvent,
    format: KafkaFormat,
    flavour: JsonFlavour,
    tombstones: bool,
) -> Vec<Record> {
    match format {
        KafkaFormat::ChangeEvent => change_event::encode(ev, flavour).into_iter().collect(),
        KafkaFormat::Debezium => debezium::encode(ev, flavour, tombstones),
        KafkaFormat::Document => document::encode(ev, flavour, tombstones)
            .into_iter()
            .collect(),
    }
}

/// Decodes a consumed record.
pub fn decode(
    format: KafkaFormat,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    meta: RecordMeta<'_>,
    doc: &DocumentOptions,
) -> Result<Decoded, DecodeError> {
    match format {
        KafkaFormat::ChangeEvent => change_event::decode(value, meta),
        KafkaFormat::Debezium => debezium::decode(key, value, meta),
        KafkaFormat::Document => document::decode(key, value, meta, doc),
    }
}

/// A raw document as Extended JSON.
pub fn to_json(d: &RawDocument, flavour: JsonFlavour) -> Value {
    match Document::try_from(d) {
        Ok(d) => bson_to_json(Bson::Document(d), flavour),
        Err(e) => serde_json::json!({ "$invalidBson": e.to_string() }),
    }
}

/// A BSON value as Extended JSON (or plain JSON).
pub fn bson_to_json(b: Bson, flavour: JsonFlavour) -> Value {
    match flavour {
        JsonFlavour::Canonical => b.into_canonical_extjson(),
        JsonFlavour::Relaxed => b.into_relaxed_extjson(),
        JsonFlavour::Plain => plain_json(b),
    }
}

/// A BSON value as the plain JSON typed columns read (see [`JsonFlavour::Plain`]). Types
/// with no plain form (regex, code, min/max key) keep their relaxed Extended JSON.
pub fn plain_json(b: Bson) -> Value {
    use base64::Engine as _;
    match b {
        Bson::Document(d) => {
            Value::Object(d.into_iter().map(|(k, v)| (k, plain_json(v))).collect())
        }
        Bson::Array(a) => Value::Array(a.into_iter().map(plain_json).collect()),
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        Bson::DateTime(d) => Value::from(d.timestamp_millis()),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        // JSON has no NaN or infinity: those become strings, as Debezium writes them.
        Bson::Double(f) if !f.is_finite() => Value::String(f.to_string()),
        Bson::Double(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Bson::Binary(bin) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&bin.bytes))
        }
        Bson::Timestamp(t) => Value::from(t.time),
        Bson::Symbol(s) => Value::String(s),
        Bson::Undefined => Value::Null,
        other => other.into_relaxed_extjson(),
    }
}

/// A raw BSON value as Extended JSON.
pub fn raw_to_json(v: RawBsonRef<'_>, flavour: JsonFlavour) -> Value {
    match Bson::try_from(bson::RawBson::from(v)) {
        Ok(b) => bson_to_json(b, flavour),
        Err(e) => serde_json::json!({ "$invalidBson": e.to_string() }),
    }
}

/// Extended JSON (canonical, relaxed or mixed) as a raw document, field order kept.
pub fn json_to_doc(v: Value, what: &str) -> Result<RawDocumentBuf, DecodeError> {
    if !v.is_object() {
        return Err(bad(format!("{what} is not a JSON object")));
    }
    match Bson::try_from(v) {
        Ok(Bson::Document(d)) => RawDocumentBuf::try_from(&d)
            .map_err(|e| bad(format!("{what}: not representable as BSON: {e}"))),
        Ok(_) => Err(bad(format!("{what} is not a document"))),
        Err(e) => Err(bad(format!("{what}: bad Extended JSON: {e}"))),
    }
}

/// Extended JSON as a BSON value.
pub fn json_to_bson(v: Value, what: &str) -> Result<Bson, DecodeError> {
    Bson::try_from(v).map_err(|e| bad(format!("{what}: bad Extended JSON: {e}")))
}

/// A record part of Extended JSON as a raw document: in one pass when it can be
/// ([`ext_json_read`]), else through `serde_json` and `bson`.
pub fn json_bytes_to_doc(bytes: &[u8], what: &str) -> Result<RawDocumentBuf, DecodeError> {
    match ext_json_read::to_raw_document(bytes) {
        Some(d) => Ok(d),
        None => json_to_doc(parse_json(bytes, what)?, what),
    }
}

/// Parses a record part as JSON.
pub fn parse_json(bytes: &[u8], what: &str) -> Result<Value, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("{what} is not valid JSON: {e}")))
}

/// Serializes JSON (cannot fail for `Value`).
pub fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

/// The key of an event: its document key as Extended JSON, else its namespace (DDL).
pub fn document_key_record_key(ev: &ChangeEvent, flavour: JsonFlavour) -> Vec<u8> {
    match ev.document_key() {
        Some(k) => {
            let mut out = Vec::with_capacity(k.as_bytes().len() * 2);
            ext_json::write_document(&mut out, k, flavour);
            out
        }
        None => json_bytes(&ns_key(&ev.ns)),
    }
}

fn ns_key(ns: &Namespace) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("db".into(), Value::String(ns.db.clone()));
    if let Some(c) = &ns.coll {
        m.insert("coll".into(), Value::String(c.clone()));
    }
    serde_json::json!({ "ns": Value::Object(m) })
}

/// The synthetic resume token of a decoded record: its topic, partition and offset.
pub fn record_token(meta: RecordMeta<'_>) -> RawDocumentBuf {
    let mut t = RawDocumentBuf::new();
    t.append(
        bson::raw::cstr!("_data"),
        format!("{}/{}/{}", meta.topic, meta.partition, meta.offset),
    );
    t
}

#[cfg(test)]
mod tests;
