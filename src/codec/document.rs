//! `document`: the document alone as Extended JSON, keyed by its document key. Deletes are
//! tombstones (a null value) when asked; DDL is not published. On the way back, a document is
//! upserted by `_id` (or the configured key fields) or inserted, and a tombstone deletes the
//! document of its key. This is also the MongoDB sink connector's plain case: a topic of
//! JSON documents written into one collection.

use bson::oid::ObjectId;
use bson::{RawBsonRef, RawDocumentBuf};
use serde_json::Value;

use super::{
    bad, document_key_record_key, json_bytes_to_doc, json_to_doc, parse_json, record_token,
    DecodeError, Decoded, DocumentOptions, Record, RecordMeta,
};
use crate::config::JsonFlavour;
use crate::core::event::{ChangeEvent, Namespace, OpType};

/// The event as a record: the full document, a tombstone for a delete (when asked), nothing
/// for DDL or for an update whose document is gone (its delete follows).
pub fn encode(ev: &ChangeEvent, flavour: JsonFlavour, tombstones: bool) -> Option<Record> {
    let key = || document_key_record_key(ev, flavour);
    match ev.op {
        OpType::Insert | OpType::Replace | OpType::Update => {
            let d = ev.full_document()?;
            Some(Record {
                key: key(),
                value: Some({
                    let mut out = Vec::with_capacity(d.as_bytes().len() * 2);
                    super::ext_json::write_document(&mut out, d, flavour);
                    out
                }),
            })
        }
        OpType::Delete if tombstones => Some(Record {
            key: key(),
            value: None,
        }),
        _ => None,
    }
}

/// The namespace of a record: the configured one, else from the topic name
/// `[<prefix>.]<db>.<coll>`.
fn namespace(meta: RecordMeta<'_>, opts: &DocumentOptions) -> Result<Namespace, DecodeError> {
    if let Some(ns) = &opts.namespace {
        return Ok(ns.clone());
    }
    let mut t = meta.topic;
    if let Some(p) = opts.topic_prefix.as_deref().filter(|p| !p.is_empty()) {
        t = t
            .strip_prefix(p)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| {
                bad(format!(
                    "topic {:?} does not start with the prefix {p:?}",
                    meta.topic
                ))
            })?;
    }
    let ns = Namespace::parse(t);
    if ns.coll.as_deref().is_none_or(str::is_empty) || ns.db.is_empty() {
        return Err(bad(format!(
            "topic {:?} does not name a collection (<db>.<coll>); set source.namespace",
            meta.topic
        )));
    }
    Ok(ns)
}

/// An `_id` for a document that has none, derived from where the record is, so applying the
/// record again writes the same document instead of a second one.
pub fn derived_object_id(meta: RecordMeta<'_>) -> ObjectId {
    let secs = meta
        .timestamp_ms
        .unwrap_or(0)
        .div_euclid(1000)
        .clamp(0, u32::MAX as i64) as u32;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in meta
        .topic
        .as_bytes()
        .iter()
        .chain(&meta.partition.to_be_bytes())
        .chain(&meta.offset.to_be_bytes())
    {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    bytes[4..].copy_from_slice(&h.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// A record value through `serde_json` and `bson` (what the one-pass reader leaves), with the
/// reason when it is not an object.
fn general_document(value: &[u8]) -> Result<RawDocumentBuf, DecodeError> {
    let json = parse_json(value, "record value")?;
    if !json.is_object() {
        return Err(bad(format!(
            "record value is a JSON {}, not an object",
            match json {
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                _ => "null",
            }
        )));
    }
    json_to_doc(json, "record value")
}

/// A document record (or tombstone) back as a change.
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    meta: RecordMeta<'_>,
    opts: &DocumentOptions,
) -> Result<Decoded, DecodeError> {
    let ns = namespace(meta, opts)?;
    let mut raw = RawDocumentBuf::new();
    raw.append(bson::raw::cstr!("_id"), record_token(meta));
    let mut nsd = RawDocumentBuf::new();
    nsd.append(bson::raw::cstr!("db"), ns.db.as_str());
    nsd.append(bson::raw::cstr!("coll"), ns.coll_name());
    let Some(value) = value else {
        let key = key.ok_or_else(|| bad("tombstone without a key"))?;
        let dk = json_bytes_to_doc(key, "record key")?;
        if dk.is_empty() {
            return Err(bad("tombstone key is an empty document"));
        }
        raw.append(bson::raw::cstr!("operationType"), "delete");
        raw.append(bson::raw::cstr!("ns"), nsd);
        raw.append(bson::raw::cstr!("documentKey"), dk);
        let ev = ChangeEvent::from_raw(raw).map_err(|e| bad(e.to_string()))?;
        return Ok(Decoded::Event(Box::new(ev)));
    };
    let mut doc = match super::ext_json_read::to_raw_document(value) {
        Some(d) => d,
        None => general_document(value)?,
    };
    let has_id = doc.get("_id").ok().flatten().is_some();
    if !has_id && (opts.insert || opts.key_fields.is_empty()) {
        let mut with = RawDocumentBuf::new();
        with.append(bson::raw::cstr!("_id"), derived_object_id(meta));
        for (k, v) in doc.iter().flatten() {
            with.append(k, bson::RawBson::from(v));
        }
        doc = with;
    }
    if opts.insert {
        return Ok(Decoded::InsertIfAbsent(ns, doc));
    }
    let mut dk = RawDocumentBuf::new();
    let fields: Vec<&str> = if opts.key_fields.is_empty() {
        vec!["_id"]
    } else {
        opts.key_fields.iter().map(String::as_str).collect()
    };
    for f in fields {
        match lookup(&doc, f) {
            Some(v) => dk.append(
                <&bson::raw::CStr>::try_from(f)
                    .map_err(|e| bad(format!("key field {f:?}: {e}")))?,
                bson::RawBson::from(v),
            ),
            None => return Err(bad(format!("document has no key field {f:?}"))),
        }
    }
    raw.append(bson::raw::cstr!("operationType"), "replace");
    raw.append(bson::raw::cstr!("ns"), nsd);
    raw.append(bson::raw::cstr!("documentKey"), dk);
    raw.append(bson::raw::cstr!("fullDocument"), doc);
    let ev = ChangeEvent::from_raw(raw).map_err(|e| bad(e.to_string()))?;
    Ok(Decoded::Event(Box::new(ev)))
}

/// A field by dotted path.
fn lookup<'a>(doc: &'a bson::RawDocument, path: &str) -> Option<RawBsonRef<'a>> {
    let mut cur = doc;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let v = cur.get(p).ok().flatten()?;
        if parts.peek().is_none() {
            return Some(v);
        }
        cur = v.as_document()?;
    }
    None
}
