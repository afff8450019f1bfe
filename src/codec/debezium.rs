//! `debezium`: the Debezium MongoDB envelope, readable by Flink's `debezium-json` format.
//!
//! ```json
//! {"before": {...}|null, "after": {...}|null,
//!  "updateDescription": {"updatedFields": {...}, "removedFields": [...], "truncatedArrays": [...]}|null,
//!  "source": {"version": "...", "connector": "mongodb", "name": "strait", "ts_ms": 0,
//!             "snapshot": "false", "db": "...", "collection": "...", "ord": 1,
//!             "lsid": null, "txnNumber": null, "wallTime": null},
//!  "op": "c"|"u"|"d"|"r", "ts_ms": 0, "transaction": null}
//! ```
//! `op` is `r` for documents of the initial copy, `c` for inserts, `u` for updates and
//! replaces (a replace has `after` and no `updateDescription`), `d` for deletes. Documents are
//! JSON objects (not strings, as Debezium 2 writes them), so Flink can map their fields to
//! columns.
//!
//! What Flink's `debezium-json` needs, and how strait gives it (see `docs/config.md`):
//! - `before` is never null for `u` and `d` (Flink fails the job on it): the pre-image when
//!   the source provides one, else the document key (`{"_id": ...}`). A key-only `before` is
//!   enough for a Flink table with a primary key and `table.exec.source.cdc-events-duplicate`,
//!   which keeps the last row per key itself (as Flink CDC does), so retractions use the
//!   row Flink holds, and replays after a crash are absorbed too.
//! - `after` is never null for `u`: an update whose looked-up document was gone is not
//!   published (the delete that removed it follows in the stream).
//! - `ts_ms` is the event's time (so records are reproducible), or for documents of the initial
//!   copy the time they were read.
//!
//! The key is `{"id": "<_id as JSON>"}`, as Debezium writes it. DDL is not published.

use bson::{RawBsonRef, RawDocumentBuf, Timestamp};
use serde_json::{json, Map, Value};

use super::{
    bad, json_bytes, json_to_bson, json_to_doc, parse_json, raw_to_json, record_token, to_json,
    DecodeError, Decoded, Record, RecordMeta,
};
use crate::config::JsonFlavour;
use crate::core::event::{ChangeEvent, OpType};

/// The event as records: none for DDL, the envelope, and a tombstone after a delete when asked.
pub fn encode(ev: &ChangeEvent, flavour: JsonFlavour, tombstones: bool) -> Vec<Record> {
    let op = match ev.op {
        OpType::Insert if ev.is_snapshot() => "r",
        OpType::Insert => "c",
        OpType::Update | OpType::Replace => "u",
        OpType::Delete => "d",
        _ => return Vec::new(),
    };
    let id = ev
        .document_key()
        .and_then(|k| k.get("_id").ok().flatten())
        .map(|v| raw_to_json(v, flavour))
        .unwrap_or(Value::Null);
    let key = json_bytes(&json!({ "id": serde_json::to_string(&id).expect("json") }));
    let doc = |field: &str| match ev.raw.get(field) {
        Ok(Some(RawBsonRef::Document(d))) => to_json(d, flavour),
        _ => Value::Null,
    };
    let after = if ev.op == OpType::Delete {
        Value::Null
    } else {
        doc("fullDocument")
    };
    if ev.op == OpType::Update && after.is_null() {
        // Updated, then deleted before the lookup: the delete follows; an `after: null`
        // update would stop a Flink job.
        return Vec::new();
    }
    let before = match (doc("fullDocumentBeforeChange"), ev.document_key()) {
        (Value::Null, Some(k))
            if matches!(ev.op, OpType::Update | OpType::Replace | OpType::Delete) =>
        {
            to_json(k, flavour)
        }
        (b, _) => b,
    };
    let update = match (&ev.op, ev.update_description()) {
        (OpType::Update, Some(ud)) => {
            let part = |f: &str| match ud.get(f) {
                Ok(Some(v)) => raw_to_json(v, flavour),
                _ => Value::Null,
            };
            json!({
                "updatedFields": part("updatedFields"),
                "removedFields": part("removedFields"),
                "truncatedArrays": part("truncatedArrays"),
            })
        }
        _ => Value::Null,
    };
    let (secs, inc) = ev
        .cluster_time
        .map(|t| (t.time as i64, t.increment as i64))
        .unwrap_or((0, 0));
    let wall = ev
        .raw
        .get_datetime("wallTime")
        .ok()
        .map(|d| d.timestamp_millis());
    // A document of the initial copy has no cluster time; its wallTime is when it was read.
    let source_ms = match wall {
        Some(w) if ev.is_snapshot() => w,
        _ => secs * 1000,
    };
    let ts_ms = wall.unwrap_or(source_ms);
    let txn = ev.raw.get_i64("txnNumber").ok();
    let lsid = match ev.raw.get("lsid") {
        Ok(Some(v)) => raw_to_json(v, flavour),
        _ => Value::Null,
    };
    let mut source = Map::new();
    source.insert(
        "version".into(),
        json!(concat!("strait-", env!("CARGO_PKG_VERSION"))),
    );
    source.insert("connector".into(), json!("mongodb"));
    source.insert("name".into(), json!("strait"));
    source.insert("ts_ms".into(), json!(source_ms));
    source.insert(
        "snapshot".into(),
        json!(if ev.is_snapshot() { "true" } else { "false" }),
    );
    source.insert("db".into(), json!(ev.ns.db));
    source.insert("collection".into(), json!(ev.ns.coll_name()));
    source.insert("ord".into(), json!(inc));
    source.insert("lsid".into(), lsid);
    source.insert("txnNumber".into(), json!(txn));
    source.insert("wallTime".into(), json!(wall));
    let mut m = Map::new();
    m.insert("before".into(), before);
    m.insert("after".into(), after);
    m.insert("updateDescription".into(), update);
    m.insert("source".into(), Value::Object(source));
    m.insert("op".into(), json!(op));
    m.insert("ts_ms".into(), json!(ts_ms));
    m.insert("transaction".into(), Value::Null);
    let mut out = vec![Record {
        key: key.clone(),
        value: Some(json_bytes(&Value::Object(m))),
    }];
    if tombstones && ev.op == OpType::Delete {
        out.push(Record { key, value: None });
    }
    out
}

/// An envelope back as a change event.
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    meta: RecordMeta<'_>,
) -> Result<Decoded, DecodeError> {
    let Some(value) = value else {
        // The tombstone after a delete: the delete itself came just before.
        return Ok(Decoded::Skip);
    };
    let Value::Object(mut env) = parse_json(value, "record value")? else {
        return Err(bad("record value is not a JSON object"));
    };
    let op = match env.get("op") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("op is not a string")),
        None => return Err(bad("no op")),
    };
    let Some(Value::Object(source)) = env.remove("source") else {
        return Err(bad("no source object"));
    };
    let text = |k: &str| match source.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(bad(format!("source.{k} is missing or not a string"))),
    };
    let (db, coll) = (text("db")?, text("collection")?);
    let mut doc = |k: &str| match env.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => json_to_doc(parse_json(s.as_bytes(), k)?, k).map(Some),
        Some(v) => json_to_doc(v, k).map(Some),
    };
    let before = doc("before")?;
    let after = doc("after")?;
    let update = match env.remove("updateDescription") {
        None | Some(Value::Null) => None,
        Some(Value::Object(u)) => Some(update_description(u)?),
        Some(_) => return Err(bad("updateDescription is not an object")),
    };
    let id = match (&after, &before, key) {
        (Some(d), _, _) | (None, Some(d), _) if d.get("_id").ok().flatten().is_some() => d
            .get("_id")
            .ok()
            .flatten()
            .map(bson::RawBson::from)
            .expect("checked"),
        (_, _, Some(k)) => key_id(k)?,
        _ => {
            return Err(bad(
                "cannot tell the document: no _id in after/before and no key",
            ))
        }
    };
    let op_type = match (op.as_str(), &update) {
        ("c" | "r", _) => "insert",
        ("u", Some(_)) => "update",
        ("u", None) => "replace",
        ("d", _) => "delete",
        (other, _) => return Err(bad(format!("unknown operation type {other:?}"))),
    };
    let time = source
        .get("ts_ms")
        .and_then(Value::as_i64)
        .map(|ms| Timestamp {
            time: (ms / 1000).max(0) as u32,
            increment: source
                .get("ord")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(0) as u32,
        });
    let mut raw = RawDocumentBuf::new();
    if op == "r" {
        // A document of the initial copy stays one (the token shape of snapshot events).
        let mut token = RawDocumentBuf::new();
        token.append(bson::raw::cstr!("_id"), id.clone());
        token.append(bson::raw::cstr!("copyingData"), true);
        raw.append(bson::raw::cstr!("_id"), token);
    } else {
        raw.append(bson::raw::cstr!("_id"), record_token(meta));
    }
    raw.append(bson::raw::cstr!("operationType"), op_type);
    if let Some(t) = time.filter(|t| t.time > 0 && op != "r") {
        raw.append(bson::raw::cstr!("clusterTime"), t);
    }
    if let Some(ms) = source.get("wallTime").and_then(Value::as_i64) {
        raw.append(
            bson::raw::cstr!("wallTime"),
            bson::DateTime::from_millis(ms),
        );
    }
    let mut ns = RawDocumentBuf::new();
    ns.append(bson::raw::cstr!("db"), db);
    ns.append(bson::raw::cstr!("coll"), coll);
    raw.append(bson::raw::cstr!("ns"), ns);
    let mut dk = RawDocumentBuf::new();
    dk.append(bson::raw::cstr!("_id"), id);
    raw.append(bson::raw::cstr!("documentKey"), dk);
    if op_type != "delete" {
        if let Some(a) = after {
            raw.append(bson::raw::cstr!("fullDocument"), a);
        }
    }
    if let Some(u) = update {
        raw.append(bson::raw::cstr!("updateDescription"), u);
    }
    // A `before` that is only the key (what strait writes without pre-images) is no pre-image.
    if let Some(b) = before.filter(|b| b.iter().count() > 1) {
        raw.append(bson::raw::cstr!("fullDocumentBeforeChange"), b);
    }
    let ev = ChangeEvent::from_raw(raw).map_err(|e| bad(e.to_string()))?;
    super::change_event::check_event(&ev)?;
    Ok(Decoded::Event(Box::new(ev)))
}

/// `{"id": "<_id as Extended JSON>"}` (or `{"id": <value>}`) to the `_id` value.
fn key_id(key: &[u8]) -> Result<bson::RawBson, DecodeError> {
    let Value::Object(mut k) = parse_json(key, "record key")? else {
        return Err(bad("record key is not a JSON object"));
    };
    let v = match k.remove("id") {
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Some(v) => v,
        None => return Err(bad("record key has no id")),
    };
    let b = json_to_bson(v, "record key id")?;
    bson::RawBson::try_from(b).map_err(|e| bad(format!("record key id: {e}")))
}

fn update_description(u: Map<String, Value>) -> Result<RawDocumentBuf, DecodeError> {
    let mut out = Map::new();
    for (k, v) in u {
        // Debezium 2 writes updatedFields as a string of JSON.
        let v = match (k.as_str(), v) {
            ("updatedFields", Value::String(s)) => parse_json(s.as_bytes(), "updatedFields")?,
            (_, Value::Null) => continue,
            (_, v) => v,
        };
        out.insert(k, v);
    }
    out.entry("updatedFields").or_insert_with(|| json!({}));
    out.entry("removedFields").or_insert_with(|| json!([]));
    let d = json_to_doc(Value::Object(out), "updateDescription")?;
    if !matches!(d.get("updatedFields"), Ok(Some(RawBsonRef::Document(_)))) {
        return Err(bad("updateDescription.updatedFields is not an object"));
    }
    if !matches!(d.get("removedFields"), Ok(Some(RawBsonRef::Array(_)))) {
        return Err(bad("updateDescription.removedFields is not an array"));
    }
    Ok(d)
}
