//! One archived event as a JSON line, and the names of the objects that hold them.
//!
//! A record keeps the fields a person auditing deletes looks for first (`_id`, `operation`,
//! `timestamp`, `timestampReadable`, `db`, `coll`, `eventId`), then the raw parts of the event
//! (`documentKey`, `preImage`, `fullDocument`, `updateDescription`) as Extended JSON in their
//! original field order.

use bson::{Bson, Document, RawBsonRef, RawDocument};
use serde_json::{json, Map, Value};

use crate::config::JsonFlavour;
use crate::core::event::ChangeEvent;

/// Seconds since the epoch as ISO-8601 UTC, e.g. `2026-11-22T15:29:03Z`.
pub fn iso8601(secs: u32) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
    )
    .to_string()
}

/// The `YYYY/MM/DD` day of a time, as path segments.
pub fn day_of(secs: u32) -> [String; 3] {
    let s = iso8601(secs);
    [
        s[0..4].to_string(),
        s[5..7].to_string(),
        s[8..10].to_string(),
    ]
}

/// The event id: the resume token's `_data` string, or the whole token as canonical Extended
/// JSON when it has none.
pub fn event_id(ev: &ChangeEvent) -> String {
    match ev.resume_token.get_str("_data") {
        Ok(s) => s.to_string(),
        Err(_) => ext(&ev.resume_token, JsonFlavour::Canonical).to_string(),
    }
}

/// When the change happened: the cluster time, else the wall time of the event, else now.
pub fn event_time(ev: &ChangeEvent) -> (u32, u32) {
    if let Some(t) = ev.cluster_time {
        return (t.time, t.increment);
    }
    if let Ok(w) = ev.raw.get_datetime("wallTime") {
        return ((w.timestamp_millis() / 1000).max(0) as u32, 0);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() as u32, 0)
}

fn ext(d: &RawDocument, flavour: JsonFlavour) -> Value {
    match Document::try_from(d) {
        Ok(d) => ext_bson(Bson::Document(d), flavour),
        Err(e) => json!({ "$invalidBson": e.to_string() }),
    }
}

fn ext_bson(b: Bson, flavour: JsonFlavour) -> Value {
    crate::codec::bson_to_json(b, flavour)
}

/// The JSON record of one event.
pub fn record(ev: &ChangeEvent, flavour: JsonFlavour) -> Value {
    let mut m = Map::new();
    let id = ev
        .document_key()
        .and_then(|k| k.get("_id").ok().flatten())
        .and_then(|v| Bson::try_from(v).ok());
    m.insert(
        "_id".into(),
        id.map(|b| ext_bson(b, flavour)).unwrap_or(Value::Null),
    );
    m.insert("operation".into(), json!(ev.op.as_str()));
    let (t, i) = event_time(ev);
    m.insert("timestamp".into(), json!(t));
    m.insert("timestampReadable".into(), json!(iso8601(t)));
    m.insert("clusterTime".into(), json!({ "t": t, "i": i }));
    m.insert("db".into(), json!(ev.source_ns.db));
    if let Some(c) = &ev.source_ns.coll {
        m.insert("coll".into(), json!(c));
    }
    m.insert("eventId".into(), json!(event_id(ev)));
    if let Some(k) = ev.document_key() {
        m.insert("documentKey".into(), ext(k, flavour));
    }
    if let Ok(Some(RawBsonRef::Document(d))) = ev.raw.get("fullDocumentBeforeChange") {
        m.insert("preImage".into(), ext(d, flavour));
    }
    if let Some(d) = ev.full_document() {
        m.insert("fullDocument".into(), ext(d, flavour));
    }
    if let Some(d) = ev.update_description() {
        m.insert("updateDescription".into(), ext(d, flavour));
    }
    if let Some(to) = &ev.rename_to {
        m.insert("to".into(), json!({ "db": to.db, "coll": to.coll }));
    }
    if let Ok(n) = ev.raw.get_i64("txnNumber") {
        m.insert("txnNumber".into(), json!(n));
    }
    Value::Object(m)
}

/// FNV-1a, 64 bits: a hash that stays the same across builds and platforms, for object names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The label of an event in object names: `<seconds>.<increment>.<hash of the event id>`,
/// zero-padded so names sort by time.
pub fn label(time: (u32, u32), event_id: &str) -> String {
    format!(
        "{:010}.{:010}.{:016x}",
        time.0,
        time.1,
        fnv1a(event_id.as_bytes())
    )
}

/// The first and last event times of an object name made by [`object_name`].
pub fn parse_object_name(name: &str) -> Option<((u32, u32), (u32, u32))> {
    let stem = name.split(".jsonl").next()?;
    let (first, last) = stem.split_once('-')?;
    let time = |l: &str| -> Option<(u32, u32)> {
        let mut it = l.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    Some((time(first)?, time(last)?))
}

/// `<first-event>-<last-event>.jsonl[.zst|.gz]`.
pub fn object_name(first: &str, last: &str, ext: &str) -> String {
    format!("{first}-{last}.jsonl{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, Timestamp};

    fn delete_event() -> ChangeEvent {
        ChangeEvent::from_raw(rawdoc! {
            "_id": { "_data": "82ABC" },
            "operationType": "delete",
            "clusterTime": Timestamp { time: 1_795_361_343, increment: 13 },
            "ns": { "db": "bar", "coll": "foo" },
            "documentKey": { "_id": 7_i64 },
            "fullDocumentBeforeChange": { "_id": 7_i64, "z": 1, "a": { "y": 2.5, "b": 1_i32 } },
        })
        .unwrap()
    }

    #[test]
    fn delete_record_has_the_audit_fields_in_order() {
        let r = record(&delete_event(), JsonFlavour::Canonical);
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "_id",
                "operation",
                "timestamp",
                "timestampReadable",
                "clusterTime",
                "db",
                "coll",
                "eventId",
                "documentKey",
                "preImage"
            ]
        );
        assert_eq!(r["_id"], json!({ "$numberLong": "7" }));
        assert_eq!(r["timestampReadable"], json!("2026-11-22T15:29:03Z"));
        assert_eq!(r["eventId"], json!("82ABC"));
        // The pre-image round-trips to the same BSON bytes (types and field order).
        let back = Bson::try_from(r["preImage"].clone()).unwrap();
        let back = bson::serialize_to_vec(back.as_document().unwrap()).unwrap();
        let orig = delete_event();
        let orig = orig.raw.get_document("fullDocumentBeforeChange").unwrap();
        assert_eq!(back, orig.as_bytes());
    }

    #[test]
    fn object_names_sort_by_time_and_parse_back() {
        let a = label((1_795_361_343, 9), "x");
        let b = label((1_795_361_343, 13), "y");
        assert!(a < b);
        let name = object_name(&a, &b, ".zst");
        assert_eq!(
            parse_object_name(&name),
            Some(((1_795_361_343, 9), (1_795_361_343, 13)))
        );
        assert_eq!(day_of(1_795_361_343), ["2026", "11", "22"]);
    }
}
