//! One change of a DynamoDB item in the shape of a DynamoDB Streams record: built from a
//! DynamoDB Streams record (the source), turned into strait's event, and written to and read
//! from Kinesis as the JSON that "Kinesis Data Streams for DynamoDB" writes, so any consumer of
//! that format (a Lambda, `boto3`'s `TypeDeserializer`) reads strait's records too.
//!
//! ```json
//! {"awsRegion": "cn-north-1", "eventID": "...", "eventName": "MODIFY", "userIdentity": null,
//!  "recordFormat": "application/json", "tableName": "orders", "eventSource": "aws:dynamodb",
//!  "dynamodb": {"ApproximateCreationDateTime": 1733300000123, "Keys": {...},
//!               "NewImage": {...}, "OldImage": {...}, "SizeBytes": 310,
//!               "ApproximateCreationDateTimePrecision": "MILLISECOND"}}
//! ```

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::Blob;
use base64::Engine as _;
use bson::raw::cstr;
use bson::{RawDocumentBuf, Timestamp};
use serde_json::{json, Map, Value};

use super::item::{from_stream_item, item_from_bson, item_to_bson, Item};
use super::mapping::{document_id, item_to_document};
use crate::core::{ChangeEvent, OpType};
use crate::error::Result;

/// What happened to the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventName {
    /// Put of a new item.
    Insert,
    /// Put or update of an existing item.
    Modify,
    /// Delete.
    Remove,
}

impl EventName {
    fn as_str(self) -> &'static str {
        match self {
            EventName::Insert => "INSERT",
            EventName::Modify => "MODIFY",
            EventName::Remove => "REMOVE",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "INSERT" => Some(EventName::Insert),
            "MODIFY" => Some(EventName::Modify),
            "REMOVE" => Some(EventName::Remove),
            _ => None,
        }
    }

    fn op(self) -> &'static str {
        match self {
            EventName::Insert => "insert",
            EventName::Modify => "update",
            EventName::Remove => "delete",
        }
    }
}

/// How items are written into strait's events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape<'a> {
    /// DynamoDB JSON in BSON (exact; for DynamoDB and Kinesis sinks).
    DynamoJson,
    /// MongoDB documents ([`mapping`](super::mapping)) keyed by `_id` from these key names
    /// (hash key first); inserts and modifies are whole-document replaces.
    Documents(&'a [String]),
}

/// One change of an item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamChange {
    /// What happened.
    pub(crate) event_name: EventName,
    /// The item's key attributes.
    pub(crate) keys: Item,
    /// The item after the change (none for a delete).
    pub(crate) new_image: Option<Item>,
    /// The item before the change (none for an insert).
    pub(crate) old_image: Option<Item>,
    /// When the change was made, milliseconds since the epoch.
    pub(crate) created_ms: i64,
    /// The stream's id of the change.
    pub(crate) event_id: Option<String>,
    /// The region of the table changed.
    pub(crate) region: Option<String>,
    /// The table changed.
    pub(crate) table: Option<String>,
    /// DynamoDB Streams' sequence number of the change (not carried through Kinesis, which
    /// numbers its own records).
    pub(crate) sequence_number: Option<String>,
    /// The record's size as DynamoDB counted it.
    pub(crate) size_bytes: Option<i64>,
    /// Who made it (`type`, `principalId`): DynamoDB's TTL service for expired items.
    pub(crate) user_identity: Option<(String, String)>,
}

impl StreamChange {
    /// A DynamoDB Streams record.
    pub(crate) fn from_streams(
        rec: aws_sdk_dynamodbstreams::types::Record,
        table: &str,
    ) -> std::result::Result<Self, String> {
        use aws_sdk_dynamodbstreams::types::OperationType;
        let event_name = match &rec.event_name {
            Some(OperationType::Insert) => EventName::Insert,
            Some(OperationType::Modify) => EventName::Modify,
            Some(OperationType::Remove) => EventName::Remove,
            other => return Err(format!("event name {other:?}")),
        };
        let sr = rec.dynamodb.ok_or("a stream record without its change")?;
        Ok(Self {
            event_name,
            keys: from_stream_item(sr.keys.unwrap_or_default()),
            new_image: sr.new_image.map(from_stream_item),
            old_image: sr.old_image.map(from_stream_item),
            created_ms: sr
                .approximate_creation_date_time
                .and_then(|t| t.to_millis().ok())
                .unwrap_or(0),
            event_id: rec.event_id,
            region: rec.aws_region,
            table: Some(table.to_string()),
            sequence_number: sr.sequence_number,
            size_bytes: sr.size_bytes,
            user_identity: rec.user_identity.map(|u| {
                (
                    u.r#type.unwrap_or_default(),
                    u.principal_id.unwrap_or_default(),
                )
            }),
        })
    }

    /// strait's event for this change, at `token` (its position) in namespace `db.coll`.
    pub(crate) fn to_event(
        &self,
        token: RawDocumentBuf,
        db: &str,
        coll: &str,
        shape: Shape<'_>,
    ) -> Result<ChangeEvent> {
        let when = bson::DateTime::from_millis(self.created_ms);
        let mut dynamo = RawDocumentBuf::new();
        if let Some(id) = &self.event_id {
            dynamo.append(cstr!("eventID"), id.as_str());
        }
        dynamo.append(cstr!("eventName"), self.event_name.as_str());
        if let Some(r) = &self.region {
            dynamo.append(cstr!("awsRegion"), r.as_str());
        }
        if let Some(t) = &self.table {
            dynamo.append(cstr!("tableName"), t.as_str());
        }
        dynamo.append(cstr!("ApproximateCreationDateTime"), when);
        if let Some(s) = &self.sequence_number {
            dynamo.append(cstr!("SequenceNumber"), s.as_str());
        }
        if let Some(n) = self.size_bytes {
            dynamo.append(cstr!("SizeBytes"), n);
        }
        if let Some((t, p)) = &self.user_identity {
            let mut ui = RawDocumentBuf::new();
            ui.append(cstr!("type"), t.as_str());
            ui.append(cstr!("principalId"), p.as_str());
            dynamo.append(cstr!("userIdentity"), ui);
        }
        let mut ns = RawDocumentBuf::new();
        ns.append(cstr!("db"), db);
        ns.append(cstr!("coll"), coll);
        let mut raw = RawDocumentBuf::new();
        let op = match (shape, self.event_name) {
            // A whole image replaces the document (a scanned item too: the target may hold an
            // older state of it).
            (Shape::Documents(_), EventName::Insert | EventName::Modify) => "replace",
            _ => self.event_name.op(),
        };
        raw.append(cstr!("_id"), token);
        raw.append(cstr!("operationType"), op);
        raw.append(
            cstr!("clusterTime"),
            Timestamp {
                time: (self.created_ms / 1000).max(0) as u32,
                increment: 0,
            },
        );
        raw.append(cstr!("wallTime"), when);
        raw.append(cstr!("ns"), ns);
        let image = |item: &Item| match shape {
            Shape::DynamoJson => item_to_bson(item),
            Shape::Documents(keys) => item_to_document(item, keys),
        };
        let key = match shape {
            Shape::DynamoJson => item_to_bson(&self.keys),
            Shape::Documents(keys) => {
                let mut k = RawDocumentBuf::new();
                k.append(cstr!("_id"), document_id(&self.keys, keys));
                k
            }
        };
        raw.append(cstr!("documentKey"), key);
        if let Some(new) = &self.new_image {
            raw.append(cstr!("fullDocument"), image(new));
        }
        if let Some(old) = &self.old_image {
            raw.append(cstr!("fullDocumentBeforeChange"), image(old));
        }
        raw.append(cstr!("dynamodb"), dynamo);
        Ok(ChangeEvent::from_raw(raw)?)
    }

    /// The change a strait event (from a DynamoDB source, or read from Kinesis) carries.
    pub(crate) fn from_event(ev: &ChangeEvent) -> std::result::Result<Self, String> {
        let item = |field: &str| -> std::result::Result<Option<Item>, String> {
            match ev.raw.get_document(field) {
                Ok(d) => item_from_bson(d).map(Some).map_err(|e| {
                    format!("{e} (a Kinesis sink takes items from a DynamoDB source)")
                }),
                Err(_) => Ok(None),
            }
        };
        let dynamo = ev.raw.get_document("dynamodb").ok();
        let text = |k: &str| dynamo.and_then(|d| d.get_str(k).ok()).map(str::to_string);
        let event_name = match ev.op {
            OpType::Insert => text("eventName")
                .and_then(|n| EventName::parse(&n))
                .unwrap_or(EventName::Insert),
            OpType::Update | OpType::Replace => EventName::Modify,
            OpType::Delete => EventName::Remove,
            ref other => return Err(format!("{} is not an item change", other.as_str())),
        };
        let created_ms = dynamo
            .and_then(|d| d.get_datetime("ApproximateCreationDateTime").ok())
            .or_else(|| ev.raw.get_datetime("wallTime").ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        Ok(Self {
            event_name,
            keys: item("documentKey")?.ok_or("the change has no key")?,
            new_image: item("fullDocument")?,
            old_image: item("fullDocumentBeforeChange")?,
            created_ms,
            event_id: text("eventID"),
            region: text("awsRegion"),
            table: text("tableName").or_else(|| Some(ev.source_ns.coll_name().to_string())),
            sequence_number: text("SequenceNumber"),
            size_bytes: dynamo.and_then(|d| d.get_i64("SizeBytes").ok()),
            user_identity: dynamo
                .and_then(|d| d.get_document("userIdentity").ok())
                .map(|u| {
                    (
                        u.get_str("type").unwrap_or_default().to_string(),
                        u.get_str("principalId").unwrap_or_default().to_string(),
                    )
                }),
        })
    }

    /// The record as Kinesis Data Streams for DynamoDB writes it.
    pub(crate) fn to_json(&self) -> Value {
        let mut d = Map::new();
        d.insert("ApproximateCreationDateTime".into(), json!(self.created_ms));
        d.insert("Keys".into(), item_to_json(&self.keys));
        if let Some(n) = &self.new_image {
            d.insert("NewImage".into(), item_to_json(n));
        }
        if let Some(o) = &self.old_image {
            d.insert("OldImage".into(), item_to_json(o));
        }
        if let Some(n) = self.size_bytes {
            d.insert("SizeBytes".into(), json!(n));
        }
        d.insert(
            "ApproximateCreationDateTimePrecision".into(),
            json!("MILLISECOND"),
        );
        json!({
            "awsRegion": self.region,
            "eventID": self.event_id,
            "eventName": self.event_name.as_str(),
            "userIdentity": self.user_identity.as_ref().map(|(t, p)| json!({"type": t, "principalId": p})),
            "recordFormat": "application/json",
            "tableName": self.table,
            "dynamodb": Value::Object(d),
            "eventSource": "aws:dynamodb",
        })
    }

    /// A record as Kinesis Data Streams for DynamoDB writes it.
    pub(crate) fn from_json(data: &[u8]) -> std::result::Result<Self, String> {
        let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        let name = v
            .get("eventName")
            .and_then(Value::as_str)
            .ok_or("no eventName")?;
        let event_name = EventName::parse(name).ok_or(format!("eventName {name:?}"))?;
        let d = v.get("dynamodb").ok_or("no dynamodb")?;
        let image = |k: &str| -> std::result::Result<Option<Item>, String> {
            match d.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(m) => item_from_json(m, k).map(Some),
            }
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let created_ms = match d.get("ApproximateCreationDateTime") {
            Some(Value::Number(n)) => {
                let n = n.as_f64().unwrap_or(0.0);
                // DynamoDB Streams' own JSON counts seconds; Kinesis for DynamoDB counts
                // milliseconds.
                if n < 1e11 {
                    (n * 1000.0) as i64
                } else {
                    n as i64
                }
            }
            _ => 0,
        };
        Ok(Self {
            event_name,
            keys: image("Keys")?.ok_or("no dynamodb.Keys")?,
            new_image: image("NewImage")?,
            old_image: image("OldImage")?,
            created_ms,
            event_id: text("eventID"),
            region: text("awsRegion"),
            table: text("tableName"),
            sequence_number: d
                .get("SequenceNumber")
                .and_then(Value::as_str)
                .map(str::to_string),
            size_bytes: d.get("SizeBytes").and_then(Value::as_i64),
            user_identity: v.get("userIdentity").and_then(|u| {
                Some((
                    u.get("type")?.as_str()?.to_string(),
                    u.get("principalId")?.as_str()?.to_string(),
                ))
            }),
        })
    }
}

fn b64(b: &Blob) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b.as_ref()))
}

/// An item as DynamoDB JSON, attributes in name order.
pub(crate) fn item_to_json(item: &Item) -> Value {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    Value::Object(
        names
            .into_iter()
            .map(|n| (n.clone(), value_to_json(&item[n])))
            .collect(),
    )
}

fn value_to_json(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(b) => json!({ "NULL": b }),
        AttributeValue::M(m) => json!({ "M": item_to_json(m) }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(value_to_json).collect::<Vec<_>>() }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        other => json!({ "?": format!("{other:?}") }),
    }
}

fn item_from_json(v: &Value, path: &str) -> std::result::Result<Item, String> {
    let m = v
        .as_object()
        .ok_or(format!("{path}: not an attribute map"))?;
    m.iter()
        .map(|(k, v)| Ok((k.clone(), value_from_json(v, &format!("{path}.{k}"))?)))
        .collect()
}

fn value_from_json(v: &Value, path: &str) -> std::result::Result<AttributeValue, String> {
    let bad = || format!("{path}: not a DynamoDB attribute value");
    let m = v.as_object().filter(|m| m.len() == 1).ok_or_else(bad)?;
    let (tag, x) = m.iter().next().ok_or_else(bad)?;
    let strings = |x: &Value| -> std::result::Result<Vec<String>, String> {
        x.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
            .collect()
    };
    let blob = |x: &Value| -> std::result::Result<Blob, String> {
        let s = x.as_str().ok_or_else(bad)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Blob::new)
            .map_err(|e| format!("{path}: {e}"))
    };
    Ok(match tag.as_str() {
        "S" => AttributeValue::S(x.as_str().ok_or_else(bad)?.to_string()),
        "N" => AttributeValue::N(x.as_str().ok_or_else(bad)?.to_string()),
        "B" => AttributeValue::B(blob(x)?),
        "BOOL" => AttributeValue::Bool(x.as_bool().ok_or_else(bad)?),
        "NULL" => AttributeValue::Null(x.as_bool().ok_or_else(bad)?),
        "M" => AttributeValue::M(item_from_json(x, path)?),
        "L" => AttributeValue::L(
            x.as_array()
                .ok_or_else(bad)?
                .iter()
                .enumerate()
                .map(|(i, e)| value_from_json(e, &format!("{path}[{i}]")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        "SS" => AttributeValue::Ss(strings(x)?),
        "NS" => AttributeValue::Ns(strings(x)?),
        "BS" => AttributeValue::Bs(
            x.as_array()
                .ok_or_else(bad)?
                .iter()
                .map(blob)
                .collect::<std::result::Result<_, _>>()?,
        ),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::dynamodb::item::tests::item_strategy;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_change_survives_kinesis_json_and_strait_events(
            keys in item_strategy(1..3),
            new in proptest::option::of(item_strategy(0..6)),
            old in proptest::option::of(item_strategy(0..6)),
            ms in 1_600_000_000_000_i64..1_900_000_000_000,
        ) {
            let change = StreamChange {
                event_name: if new.is_none() { EventName::Remove } else if old.is_none() { EventName::Insert } else { EventName::Modify },
                keys, new_image: new, old_image: old, created_ms: ms,
                event_id: Some("e1".into()), region: Some("cn-north-1".into()),
                table: Some("orders".into()), sequence_number: None, size_bytes: Some(12),
                user_identity: None,
            };
            let bytes = serde_json::to_vec(&change.to_json()).unwrap();
            let back = StreamChange::from_json(&bytes).unwrap();
            prop_assert_eq!(&back, &change);
            let ev = back.to_event(bson::rawdoc! { "shard": "s", "seq": "1" }, "dynamodb", "orders", Shape::DynamoJson).unwrap();
            prop_assert_eq!(StreamChange::from_event(&ev).unwrap(), change);
        }
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        assert!(StreamChange::from_json(b"{")
            .unwrap_err()
            .starts_with("not JSON"));
        let e = StreamChange::from_json(
            br#"{"eventName":"INSERT","dynamodb":{"Keys":{"pk":{"Q":"x"}}}}"#,
        )
        .unwrap_err();
        assert!(e.contains("Keys.pk"), "{e}");
        let e = StreamChange::from_json(br#"{"eventName":"UPSERT","dynamodb":{}}"#).unwrap_err();
        assert!(e.contains("UPSERT"), "{e}");
    }
}
