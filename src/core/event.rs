//! The one event model every source produces and every sink consumes.
//!
//! Events keep the raw BSON they came from: documents and update descriptions are never decoded
//! into typed Rust values, so every BSON type, and the order of fields in every embedded
//! document, passes through untouched.

use std::fmt;

use bson::{RawBsonRef, RawDocument, RawDocumentBuf, Timestamp};

/// A database, or a collection within one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    /// Database name.
    pub db: String,
    /// Collection name; `None` for database-level events such as `dropDatabase`.
    pub coll: Option<String>,
}

impl Namespace {
    /// A namespace from its parts.
    pub fn new(db: &str, coll: Option<&str>) -> Self {
        Self {
            db: db.to_string(),
            coll: coll.map(str::to_string),
        }
    }

    /// Parses `db.coll` (the collection part may contain dots).
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((d, c)) => Self::new(d, Some(c)),
            None => Self::new(s, None),
        }
    }

    /// The collection name, or `""` for a database namespace.
    pub fn coll_name(&self) -> &str {
        self.coll.as_deref().unwrap_or("")
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.coll {
            Some(c) => write!(f, "{}.{}", self.db, c),
            None => write!(f, "{}", self.db),
        }
    }
}

/// The kind of change. Mirrors the server's `operationType`; unknown kinds are kept by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpType {
    /// A document was inserted.
    Insert,
    /// A document was updated in place.
    Update,
    /// A document was replaced whole.
    Replace,
    /// A document was deleted.
    Delete,
    /// A collection was created (expanded events).
    Create,
    /// A collection was dropped.
    Drop,
    /// A collection was renamed.
    Rename,
    /// A database was dropped.
    DropDatabase,
    /// Indexes were created (expanded events).
    CreateIndexes,
    /// Indexes were dropped (expanded events).
    DropIndexes,
    /// Collection options changed (expanded events).
    Modify,
    /// The stream can no longer continue (its collection or database went away).
    Invalidate,
    /// Anything else, by name.
    Other(String),
}

impl OpType {
    /// Parses the server's `operationType`.
    pub fn parse(s: &str) -> Self {
        match s {
            "insert" => OpType::Insert,
            "update" => OpType::Update,
            "replace" => OpType::Replace,
            "delete" => OpType::Delete,
            "create" => OpType::Create,
            "drop" => OpType::Drop,
            "rename" => OpType::Rename,
            "dropDatabase" => OpType::DropDatabase,
            "createIndexes" => OpType::CreateIndexes,
            "dropIndexes" => OpType::DropIndexes,
            "modify" => OpType::Modify,
            "invalidate" => OpType::Invalidate,
            other => OpType::Other(other.to_string()),
        }
    }

    /// The server's name of this operation type.
    pub fn as_str(&self) -> &str {
        match self {
            OpType::Insert => "insert",
            OpType::Update => "update",
            OpType::Replace => "replace",
            OpType::Delete => "delete",
            OpType::Create => "create",
            OpType::Drop => "drop",
            OpType::Rename => "rename",
            OpType::DropDatabase => "dropDatabase",
            OpType::CreateIndexes => "createIndexes",
            OpType::DropIndexes => "dropIndexes",
            OpType::Modify => "modify",
            OpType::Invalidate => "invalidate",
            OpType::Other(s) => s,
        }
    }

    /// Whether this is a change to one document (as opposed to DDL).
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            OpType::Insert | OpType::Update | OpType::Replace | OpType::Delete
        )
    }
}

/// A change event that cannot be understood.
#[derive(Debug, thiserror::Error)]
#[error("malformed change event: {0}")]
pub struct EventError(pub String);

/// One change, as read from a source.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// What happened.
    pub op: OpType,
    /// Where it happened (after renames, once transformed).
    pub ns: Namespace,
    /// Where it happened on the source (never renamed).
    pub source_ns: Namespace,
    /// For renames: the new namespace.
    pub rename_to: Option<Namespace>,
    /// `clusterTime` of the change.
    pub cluster_time: Option<Timestamp>,
    /// The resume token (`_id` of the event).
    pub resume_token: RawDocumentBuf,
    /// The whole event as the server sent it. `documentKey`, `fullDocument` and
    /// `updateDescription` are read from it in place (see the accessors), never copied out: a
    /// document in flight is held once.
    pub raw: RawDocumentBuf,
}

impl ChangeEvent {
    /// Parses a change-stream event document.
    pub fn from_raw(raw: RawDocumentBuf) -> Result<Self, EventError> {
        let bad = |what: &str| EventError(what.to_string());
        let raw = fitted(raw);
        let resume_token = raw
            .get_document("_id")
            .map_err(|_| bad("no _id (resume token)"))?
            .to_owned();
        let op = OpType::parse(
            raw.get_str("operationType")
                .map_err(|_| bad("no operationType"))?,
        );
        let ns = match raw.get_document("ns") {
            Ok(ns) => ns_of(ns).ok_or_else(|| bad("ns without db"))?,
            Err(_) if op == OpType::Invalidate => Namespace::new("", None),
            Err(_) => return Err(bad("no ns")),
        };
        let rename_to = raw
            .get_document("to")
            .ok()
            .or_else(|| {
                raw.get_document("operationDescription")
                    .ok()
                    .and_then(|d| d.get_document("to").ok())
            })
            .and_then(ns_of);
        let cluster_time = raw.get_timestamp("clusterTime").ok();
        Ok(ChangeEvent {
            op,
            source_ns: ns.clone(),
            ns,
            rename_to,
            cluster_time,
            resume_token,
            raw,
        })
    }

    /// An insert standing for a document read by the initial copy, shaped like the events the
    /// MongoDB Kafka source connector publishes while copying existing data: its `_id` is
    /// `{ _id: <document _id>, copyingData: true }`.
    pub fn snapshot(ns: &Namespace, doc: RawDocumentBuf) -> Result<Self, EventError> {
        Self::snapshot_at(ns, doc, bson::DateTime::now())
    }

    /// [`ChangeEvent::snapshot`] of a document read at `read_at` (its `wallTime`).
    pub fn snapshot_at(
        ns: &Namespace,
        doc: RawDocumentBuf,
        read_at: bson::DateTime,
    ) -> Result<Self, EventError> {
        let id = doc
            .get("_id")
            .ok()
            .flatten()
            .map(bson::RawBson::from)
            .ok_or_else(|| EventError("document without _id".into()))?;
        let mut token = RawDocumentBuf::new();
        token.append(bson::raw::cstr!("_id"), id.clone());
        token.append(bson::raw::cstr!("copyingData"), true);
        let mut key = RawDocumentBuf::new();
        key.append(bson::raw::cstr!("_id"), id);
        let mut nsd = RawDocumentBuf::new();
        nsd.append(bson::raw::cstr!("db"), ns.db.as_str());
        nsd.append(bson::raw::cstr!("coll"), ns.coll_name());
        let mut raw = RawDocumentBuf::new();
        raw.append(bson::raw::cstr!("_id"), token);
        raw.append(bson::raw::cstr!("operationType"), "insert");
        raw.append(bson::raw::cstr!("wallTime"), read_at);
        raw.append(bson::raw::cstr!("ns"), nsd);
        raw.append(bson::raw::cstr!("documentKey"), key);
        raw.append(bson::raw::cstr!("fullDocument"), doc);
        Self::from_raw(raw)
    }

    /// A `createIndexes` event carrying full index specs: how the initial copy hands a
    /// collection's indexes to sinks that only see events (Kafka).
    pub fn create_indexes(ns: &Namespace, specs: &[bson::Document]) -> Result<Self, EventError> {
        let doc = bson::doc! {
            "_id": { "_id": ns.to_string(), "copyingData": true },
            "operationType": "createIndexes",
            "ns": { "db": ns.db.as_str(), "coll": ns.coll_name() },
            "operationDescription": { "indexes": specs },
        };
        let raw = RawDocumentBuf::try_from(&doc).map_err(|e| EventError(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// The same event with `operationDescription.indexes` replaced (full specs looked up on
    /// the source, where the event's own lack options).
    pub fn with_index_specs(&self, specs: &[bson::Document]) -> Result<Self, EventError> {
        let mut doc =
            bson::Document::try_from(self.raw.as_ref()).map_err(|e| EventError(e.to_string()))?;
        let mut desc = doc
            .get_document("operationDescription")
            .cloned()
            .unwrap_or_default();
        desc.insert("indexes", specs);
        doc.insert("operationDescription", desc);
        let raw = RawDocumentBuf::try_from(&doc).map_err(|e| EventError(e.to_string()))?;
        let mut ev = Self::from_raw(raw)?;
        ev.ns = self.ns.clone();
        ev.rename_to = self.rename_to.clone();
        Ok(ev)
    }

    /// Whether this event stands for a document of the initial copy.
    pub fn is_snapshot(&self) -> bool {
        self.resume_token.get_bool("copyingData").unwrap_or(false)
    }

    /// `documentKey`: `_id` plus the shard key, if any.
    pub fn document_key(&self) -> Option<&RawDocument> {
        self.field_doc("documentKey")
    }

    /// `fullDocument` of inserts, replaces and looked-up updates.
    pub fn full_document(&self) -> Option<&RawDocument> {
        self.field_doc("fullDocument")
    }

    /// `updateDescription` of updates.
    pub fn update_description(&self) -> Option<&RawDocument> {
        self.field_doc("updateDescription")
    }

    /// A top-level field of the event that is a document (`None` if absent or not one).
    pub fn field_doc(&self, key: &str) -> Option<&RawDocument> {
        match self.raw.get(key) {
            Ok(Some(RawBsonRef::Document(d))) => Some(d),
            _ => None,
        }
    }

    /// The `_id` value of the changed document, as raw BSON bytes (for hashing).
    pub fn key_bytes(&self) -> &[u8] {
        self.document_key()
            .map(RawDocument::as_bytes)
            .unwrap_or(&[])
    }
}

/// `raw` without the spare capacity a document built by appending may have (up to as much
/// again as its length): an event is held until every sink wrote it, and a backlog holds many.
fn fitted(raw: RawDocumentBuf) -> RawDocumentBuf {
    let len = raw.as_bytes().len();
    let mut bytes = raw.into_bytes();
    if bytes.capacity() - len <= len / 8 {
        return RawDocumentBuf::from_bytes(bytes).expect("the bytes of a document");
    }
    bytes.shrink_to_fit();
    RawDocumentBuf::from_bytes(bytes).expect("the bytes of a document")
}

fn ns_of(ns: &RawDocument) -> Option<Namespace> {
    let db = ns.get_str("db").ok()?;
    Some(Namespace::new(db, ns.get_str("coll").ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn parses_update_event_keeping_raw_parts() {
        let raw = rawdoc! {
            "_id": { "_data": "8263" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 10, increment: 2 },
            "ns": { "db": "shop", "coll": "orders" },
            "documentKey": { "_id": 7_i32 },
            "updateDescription": { "updatedFields": { "a.b": 1_i64 }, "removedFields": ["c"], "truncatedArrays": [] },
        };
        let ev = ChangeEvent::from_raw(raw).unwrap();
        assert_eq!(ev.op, OpType::Update);
        assert_eq!(ev.ns, Namespace::new("shop", Some("orders")));
        assert_eq!(
            ev.cluster_time,
            Some(Timestamp {
                time: 10,
                increment: 2
            })
        );
        let ud = ev.update_description().unwrap();
        assert_eq!(
            ud.get_document("updatedFields")
                .unwrap()
                .get_i64("a.b")
                .unwrap(),
            1
        );
        assert!(ev.full_document().is_none());
    }

    #[test]
    fn parses_rename_and_drop_database() {
        let raw = rawdoc! {
            "_id": { "_data": "01" }, "operationType": "rename",
            "ns": { "db": "a", "coll": "b" }, "to": { "db": "a", "coll": "c" },
        };
        let ev = ChangeEvent::from_raw(raw).unwrap();
        assert_eq!(ev.rename_to, Some(Namespace::new("a", Some("c"))));
        let raw = rawdoc! { "_id": { "_data": "02" }, "operationType": "dropDatabase", "ns": { "db": "a" } };
        let ev = ChangeEvent::from_raw(raw).unwrap();
        assert_eq!(ev.ns, Namespace::new("a", None));
    }

    #[test]
    fn an_event_holds_its_document_once_and_without_spare_capacity() {
        let mut raw = RawDocumentBuf::new();
        raw.append(bson::raw::cstr!("_id"), rawdoc! { "_data": "01" });
        raw.append(bson::raw::cstr!("operationType"), "insert");
        raw.append(bson::raw::cstr!("ns"), rawdoc! { "db": "d", "coll": "c" });
        raw.append(bson::raw::cstr!("documentKey"), rawdoc! { "_id": 1_i32 });
        raw.append(
            bson::raw::cstr!("fullDocument"),
            rawdoc! { "_id": 1_i32, "s": "x".repeat(3000) },
        );
        let mut bytes = raw.into_bytes();
        bytes.reserve(bytes.len());
        let ev = ChangeEvent::from_raw(RawDocumentBuf::from_bytes(bytes).unwrap()).unwrap();
        // The accessors point into the event's own bytes.
        let full = ev.full_document().unwrap().as_bytes().as_ptr_range();
        let all = ev.raw.as_bytes().as_ptr_range();
        assert!(all.start <= full.start && full.end <= all.end);
        assert_eq!(ev.document_key().unwrap(), &*rawdoc! { "_id": 1_i32 });
        assert!(ev.update_description().is_none());
        let len = ev.raw.as_bytes().len();
        let bytes = ev.raw.into_bytes();
        assert!(
            bytes.capacity() <= len + len / 8,
            "{} for {len}",
            bytes.capacity()
        );
    }

    #[test]
    fn rejects_event_without_token() {
        assert!(ChangeEvent::from_raw(rawdoc! { "operationType": "insert" }).is_err());
    }

    #[test]
    fn unknown_op_types_are_kept_by_name() {
        assert_eq!(
            OpType::parse("shardCollection"),
            OpType::Other("shardCollection".into())
        );
        assert_eq!(OpType::parse("shardCollection").as_str(), "shardCollection");
    }
}
