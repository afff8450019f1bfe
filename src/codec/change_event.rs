//! `change-event`: the change event as Extended JSON, field for field, as the MongoDB Kafka
//! source connector publishes it (`_id` resume token, `operationType`, `clusterTime`,
//! `wallTime`, `ns`, `documentKey`, `fullDocument`, `updateDescription`, ...). Namespaces are
//! those after strait's renames.

use bson::{RawBsonRef, RawDocumentBuf};
use serde_json::{Map, Value};

use super::{
    bad, document_key_record_key, json_bytes, json_to_doc, parse_json, raw_to_json, DecodeError,
    Decoded, Record, RecordMeta,
};
use crate::config::JsonFlavour;
use crate::core::event::{ChangeEvent, Namespace, OpType};

fn ns_json(ns: &Namespace) -> Value {
    let mut m = Map::new();
    m.insert("db".into(), Value::String(ns.db.clone()));
    if let Some(c) = &ns.coll {
        m.insert("coll".into(), Value::String(c.clone()));
    }
    Value::Object(m)
}

/// The event as one record (`None` for events that stand for nothing, e.g. invalidate).
pub fn encode(ev: &ChangeEvent, flavour: JsonFlavour) -> Option<Record> {
    if ev.op == OpType::Invalidate {
        return None;
    }
    let mut m = Map::new();
    let mut to_done = false;
    for item in ev.raw.iter() {
        let Ok((k, v)) = item else { continue };
        let k = k.as_str();
        match k {
            "operationType" => {
                m.insert(k.into(), Value::String(ev.op.as_str().into()));
            }
            "ns" => {
                m.insert(k.into(), ns_json(&ev.ns));
            }
            // A rename out of scope became a drop: it has no target any more.
            "to" => {
                if let Some(to) = &ev.rename_to {
                    m.insert(k.into(), ns_json(to));
                }
                to_done = true;
            }
            "operationDescription" if ev.rename_to.is_none() && ev.op == OpType::Drop => {}
            _ => {
                m.insert(k.into(), raw_to_json(v, flavour));
            }
        }
    }
    if !to_done {
        if let Some(to) = &ev.rename_to {
            m.insert("to".into(), ns_json(to));
        }
    }
    Some(Record {
        key: document_key_record_key(ev, flavour),
        value: Some(json_bytes(&Value::Object(m))),
    })
}

/// A change-event record back as the event.
pub fn decode(value: Option<&[u8]>, meta: RecordMeta<'_>) -> Result<Decoded, DecodeError> {
    let Some(value) = value else {
        return Ok(Decoded::Skip);
    };
    let json = parse_json(value, "record value")?;
    let mut raw = json_to_doc(json, "record value")?;
    if raw.get("_id").ok().flatten().is_none() {
        // Events from other producers may lack a token; the record's position stands in.
        let mut with = RawDocumentBuf::new();
        with.append(bson::raw::cstr!("_id"), super::record_token(meta));
        for (k, v) in raw.iter().flatten() {
            with.append(k, bson::RawBson::from(v));
        }
        raw = with;
    }
    match raw.get("operationType") {
        Ok(Some(RawBsonRef::String(_))) => {}
        Ok(Some(_)) => return Err(bad("operationType is not a string")),
        _ => return Err(bad("no operationType")),
    }
    let ev = ChangeEvent::from_raw(raw).map_err(|e| bad(e.to_string()))?;
    check_event(&ev)?;
    Ok(Decoded::Event(Box::new(ev)))
}

/// Rejects events strait cannot apply: unknown operations, and data events without the parts
/// their operation needs.
pub fn check_event(ev: &ChangeEvent) -> Result<(), DecodeError> {
    if let OpType::Other(name) = &ev.op {
        return Err(bad(format!("unknown operation type {name:?}")));
    }
    if ev.op.is_data() {
        if ev.ns.coll.is_none() {
            return Err(bad(format!("{} event without ns.coll", ev.op.as_str())));
        }
        match ev.raw.get("documentKey") {
            Ok(Some(RawBsonRef::Document(_))) => {}
            Ok(Some(_)) => return Err(bad("documentKey is not a document")),
            _ => return Err(bad(format!("{} event without documentKey", ev.op.as_str()))),
        }
        let needs = match ev.op {
            OpType::Insert | OpType::Replace => Some("fullDocument"),
            OpType::Update if ev.full_document.is_none() => Some("updateDescription"),
            _ => None,
        };
        if let Some(field) = needs {
            match ev.raw.get(field) {
                Ok(Some(RawBsonRef::Document(_))) => {}
                Ok(Some(_)) => return Err(bad(format!("{field} is not a document"))),
                _ => return Err(bad(format!("{} event without {field}", ev.op.as_str()))),
            }
        }
    }
    if ev.op == OpType::Rename && ev.rename_to.is_none() {
        return Err(bad("rename event without to"));
    }
    Ok(())
}
