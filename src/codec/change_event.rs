//! `change-event`: the change event as Extended JSON, field for field, as the MongoDB Kafka
//! source connector publishes it (`_id` resume token, `operationType`, `clusterTime`,
//! `wallTime`, `ns`, `documentKey`, `fullDocument`, `updateDescription`, ...). Namespaces are
//! those after strait's renames.

use bson::{RawBsonRef, RawDocumentBuf};
use serde_json::{Map, Value};

use super::{
    bad, document_key_record_key, ext_json, json_bytes, json_bytes_to_doc, raw_to_json,
    DecodeError, Decoded, Record, RecordMeta,
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
    let value = match flavour {
        JsonFlavour::Plain => None,
        _ => encode_direct(ev, flavour),
    }
    .unwrap_or_else(|| json_bytes(&encode_tree(ev, flavour)));
    Some(Record {
        key: document_key_record_key(ev, flavour),
        value: Some(value),
    })
}

/// Which top-level fields the record has, and how each is written.
enum Field<'a> {
    /// The operation type (strait's name for it).
    Op,
    /// A namespace after renames.
    Ns(&'a Namespace),
    /// The field as it is in the event.
    Raw(RawBsonRef<'a>),
}

/// The record's fields in the event's order: `ns` and `to` after renames, the operation
/// description of a rename that left the scope (now a drop) left out.
fn fields(ev: &ChangeEvent) -> Vec<(&str, Field<'_>)> {
    let mut out = Vec::with_capacity(12);
    let mut to_done = false;
    for item in ev.raw.iter() {
        let Ok((k, v)) = item else { continue };
        let k = k.as_str();
        match k {
            "operationType" => out.push((k, Field::Op)),
            "ns" => out.push((k, Field::Ns(&ev.ns))),
            // A rename out of scope became a drop: it has no target any more.
            "to" => {
                if let Some(to) = &ev.rename_to {
                    out.push((k, Field::Ns(to)));
                }
                to_done = true;
            }
            "operationDescription" if ev.rename_to.is_none() && ev.op == OpType::Drop => {}
            _ => out.push((k, Field::Raw(v))),
        }
    }
    if !to_done {
        if let Some(to) = &ev.rename_to {
            out.push(("to", Field::Ns(to)));
        }
    }
    out
}

/// The record written straight from the raw event; `None` when a field name repeats (the JSON
/// object keeps one of them: the tree path decides which).
fn encode_direct(ev: &ChangeEvent, flavour: JsonFlavour) -> Option<Vec<u8>> {
    let fields = fields(ev);
    for (i, (k, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(other, _)| other == k) {
            return None;
        }
    }
    let mut out = Vec::with_capacity(ev.raw.as_bytes().len() * 2 + 64);
    out.push(b'{');
    for (i, (k, f)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        ext_json::write_str(&mut out, k);
        out.push(b':');
        match f {
            Field::Op => ext_json::write_str(&mut out, ev.op.as_str()),
            Field::Ns(ns) => write_ns(&mut out, ns),
            Field::Raw(v) => ext_json::write_value(&mut out, *v, flavour),
        }
    }
    out.push(b'}');
    Some(out)
}

fn write_ns(out: &mut Vec<u8>, ns: &Namespace) {
    out.extend_from_slice(b"{\"db\":");
    ext_json::write_str(out, &ns.db);
    if let Some(c) = &ns.coll {
        out.extend_from_slice(b",\"coll\":");
        ext_json::write_str(out, c);
    }
    out.push(b'}');
}

/// The record as a JSON tree (plain JSON, and events with a repeated field name).
fn encode_tree(ev: &ChangeEvent, flavour: JsonFlavour) -> Value {
    let mut m = Map::new();
    for (k, f) in fields(ev) {
        let v = match f {
            Field::Op => Value::String(ev.op.as_str().into()),
            Field::Ns(ns) => ns_json(ns),
            Field::Raw(v) => raw_to_json(v, flavour),
        };
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// A change-event record back as the event.
pub fn decode(value: Option<&[u8]>, meta: RecordMeta<'_>) -> Result<Decoded, DecodeError> {
    let Some(value) = value else {
        return Ok(Decoded::Skip);
    };
    let mut raw = json_bytes_to_doc(value, "record value")?;
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
            OpType::Update if ev.full_document().is_none() => Some("updateDescription"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_field_takes_the_tree_path() {
        let mut raw = RawDocumentBuf::new();
        let mut token = RawDocumentBuf::new();
        token.append(bson::raw::cstr!("_data"), "t");
        raw.append(bson::raw::cstr!("_id"), token);
        raw.append(bson::raw::cstr!("operationType"), "insert");
        let mut ns = RawDocumentBuf::new();
        ns.append(bson::raw::cstr!("db"), "d");
        ns.append(bson::raw::cstr!("coll"), "c");
        raw.append(bson::raw::cstr!("ns"), ns);
        raw.append(bson::raw::cstr!("x"), bson::RawBson::Int32(1));
        raw.append(bson::raw::cstr!("x"), bson::RawBson::Int32(2));
        let ev = ChangeEvent::from_raw(raw).unwrap();
        assert!(encode_direct(&ev, JsonFlavour::Canonical).is_none());
        let r = encode(&ev, JsonFlavour::Canonical).unwrap();
        assert_eq!(
            r.value.unwrap(),
            json_bytes(&encode_tree(&ev, JsonFlavour::Canonical))
        );
    }
}
