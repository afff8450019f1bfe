//! Golden files of every format (`tests/golden/kafka/<format>/<case>.json`; regenerate with
//! `STRAIT_UPDATE_GOLDEN=1 cargo test codec::`), round trips, and a property test that
//! canonical Extended JSON keeps documents byte-identical.

use bson::{rawdoc, Binary, DateTime, Decimal128, RawDocumentBuf, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::core::event::OpType;

const FORMATS: [KafkaFormat; 3] = [
    KafkaFormat::ChangeEvent,
    KafkaFormat::Debezium,
    KafkaFormat::Document,
];

fn oid() -> bson::oid::ObjectId {
    bson::oid::ObjectId::parse_str("65f1a2b3c4d5e6f708192a3b").unwrap()
}

fn ev(raw: RawDocumentBuf) -> ChangeEvent {
    ChangeEvent::from_raw(raw).unwrap()
}

fn base(op: &str, inc: u32) -> RawDocumentBuf {
    rawdoc! {
        "_id": { "_data": format!("82655F{inc:04}") },
        "operationType": op,
        "clusterTime": Timestamp { time: 1_763_800_000, increment: inc },
        "wallTime": DateTime::from_millis(1_763_800_000_123),
        "ns": { "db": "shop", "coll": "orders" },
    }
}

fn with(mut d: RawDocumentBuf, more: RawDocumentBuf) -> RawDocumentBuf {
    for (k, v) in more.iter().flatten() {
        d.append(k, bson::RawBson::from(v));
    }
    d
}

fn full_doc() -> RawDocumentBuf {
    rawdoc! {
        "_id": oid(), "n": 1_i32, "big": 5_i64, "price": "12.50".parse::<Decimal128>().unwrap(),
        "at": DateTime::from_millis(1_700_000_000_000), "bin": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
        "nested": { "z": 1.5, "a": [1_i32, "two", { "x": null }] },
    }
}

/// The cases every format is checked on.
fn cases() -> Vec<(&'static str, ChangeEvent)> {
    vec![
        (
            "insert",
            ev(with(
                base("insert", 1),
                rawdoc! { "documentKey": { "_id": oid() }, "fullDocument": full_doc() },
            )),
        ),
        (
            "update",
            ev(with(
                base("update", 2),
                rawdoc! {
                    "documentKey": { "_id": oid() },
                    "updateDescription": {
                        "updatedFields": { "n": 2_i32, "nested.z": 2.5 },
                        "removedFields": ["big"],
                        "truncatedArrays": [{ "field": "nested.a", "newSize": 2_i32 }],
                    },
                },
            )),
        ),
        (
            "update_with_lookup",
            ev(with(
                base("update", 3),
                rawdoc! {
                    "documentKey": { "_id": oid() },
                    "updateDescription": { "updatedFields": { "n": 3_i32 }, "removedFields": [], "truncatedArrays": [] },
                    "fullDocument": { "_id": oid(), "n": 3_i32 },
                },
            )),
        ),
        (
            "replace",
            ev(with(
                base("replace", 4),
                rawdoc! { "documentKey": { "_id": oid() }, "fullDocument": { "_id": oid(), "only": "this" } },
            )),
        ),
        (
            "delete",
            ev(with(
                base("delete", 5),
                rawdoc! { "documentKey": { "_id": oid() }, "fullDocumentBeforeChange": { "_id": oid(), "only": "this" } },
            )),
        ),
        ("drop", ev(base("drop", 6))),
        (
            "snapshot",
            ChangeEvent::snapshot_at(
                &crate::core::event::Namespace::parse("shop.orders"),
                full_doc(),
                DateTime::from_millis(1_763_800_000_456),
            )
            .unwrap(),
        ),
    ]
}

fn render(records: &[Record]) -> String {
    let v: Vec<Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "key": serde_json::from_slice::<Value>(&r.key).unwrap(),
                "value": r.value.as_ref().map(|v| serde_json::from_slice::<Value>(v).unwrap()),
            })
        })
        .collect();
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

#[test]
fn golden_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kafka");
    let update = std::env::var_os("STRAIT_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for format in FORMATS {
        for (name, ev) in cases() {
            let got = render(&encode(&ev, format, JsonFlavour::Canonical, true));
            let path = dir.join(format.as_str()).join(format!("{name}.json"));
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if got != want {
                failures.push(format!("{}:\n{got}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden files differ:\n{}",
        failures.join("\n")
    );
}

fn meta() -> RecordMeta<'static> {
    RecordMeta {
        topic: "shop.orders",
        partition: 0,
        offset: 7,
        timestamp_ms: Some(1_763_800_000_000),
    }
}

/// What applying an event means: operation, namespace, key and the documents it carries.
fn meaning(
    e: &ChangeEvent,
) -> (
    OpType,
    String,
    Option<RawDocumentBuf>,
    Option<RawDocumentBuf>,
) {
    (
        e.op.clone(),
        e.ns.to_string(),
        e.document_key().map(ToOwned::to_owned),
        e.full_document().map(ToOwned::to_owned),
    )
}

#[test]
fn record_to_event_to_record_is_stable_and_keeps_the_meaning() {
    for format in FORMATS {
        for (name, ev) in cases() {
            let records = encode(&ev, format, JsonFlavour::Canonical, true);
            for r in &records {
                let back = decode(
                    format,
                    Some(&r.key),
                    r.value.as_deref(),
                    meta(),
                    &Default::default(),
                )
                .unwrap_or_else(|e| panic!("{format:?} {name}: {e}"));
                let Decoded::Event(back) = back else {
                    assert!(
                        r.value.is_none() && format == KafkaFormat::Debezium,
                        "{format:?} {name}: skipped"
                    );
                    continue;
                };
                let again = encode(&back, format, JsonFlavour::Canonical, true);
                if format != KafkaFormat::Document || r.value.is_some() {
                    assert_eq!(
                        again[0].value, r.value,
                        "{format:?} {name}: re-encoding differs"
                    );
                }
                assert_eq!(again[0].key, r.key, "{format:?} {name}: key differs");
                let (op, ns, key, full) = meaning(&back);
                match format {
                    KafkaFormat::Document if ev.op == OpType::Delete => {
                        assert_eq!(op, OpType::Delete)
                    }
                    KafkaFormat::Document => assert_eq!(op, OpType::Replace),
                    _ => assert_eq!(op, ev.op, "{format:?} {name}"),
                }
                assert_eq!(ns, ev.ns.to_string());
                assert_eq!(key.as_deref(), ev.document_key(), "{format:?} {name}");
                if ev.op != OpType::Delete {
                    assert_eq!(full.as_deref(), ev.full_document(), "{format:?} {name}");
                }
                if ev.op == OpType::Update && format != KafkaFormat::Document {
                    assert_eq!(
                        back.update_description(),
                        ev.update_description(),
                        "{format:?} {name}"
                    );
                }
            }
        }
    }
}

#[test]
fn ddl_is_only_in_change_events() {
    let drop = ev(base("drop", 6));
    assert_eq!(
        encode(
            &drop,
            KafkaFormat::ChangeEvent,
            JsonFlavour::Canonical,
            false
        )
        .len(),
        1
    );
    assert!(encode(&drop, KafkaFormat::Debezium, JsonFlavour::Canonical, true).is_empty());
    assert!(encode(&drop, KafkaFormat::Document, JsonFlavour::Canonical, true).is_empty());
}

#[test]
fn bad_records_are_rejected_with_a_reason() {
    let d = DocumentOptions::default();
    let cases: Vec<(KafkaFormat, &[u8], &str)> = vec![
        (KafkaFormat::ChangeEvent, b"{not json", "not valid JSON"),
        (KafkaFormat::ChangeEvent, b"[1,2]", "not a JSON object"),
        (KafkaFormat::ChangeEvent, br#"{"operationType": 5, "ns": {"db": "a", "coll": "b"}}"#, "operationType is not a string"),
        (KafkaFormat::ChangeEvent, br#"{"operationType": "frobnicate", "ns": {"db": "a", "coll": "b"}}"#, "unknown operation type"),
        (KafkaFormat::ChangeEvent, br#"{"operationType": "insert", "ns": {"db": "a", "coll": "b"}, "documentKey": {"_id": 1}}"#, "without fullDocument"),
        (KafkaFormat::ChangeEvent, br#"{"operationType": "insert", "ns": {"db": "a", "coll": "b"}, "documentKey": 5, "fullDocument": {}}"#, "documentKey is not a document"),
        (KafkaFormat::Debezium, br#"{"op": "x", "source": {"db": "a", "collection": "b"}, "after": {"_id": 1}}"#, "unknown operation type"),
        (KafkaFormat::Debezium, br#"{"op": "c", "after": {"_id": 1}}"#, "no source"),
        (KafkaFormat::Debezium, br#"{"op": "c", "source": {"db": "a", "collection": "b"}, "after": 7}"#, "not a JSON object"),
        (KafkaFormat::Document, b"42", "not an object"),
        (KafkaFormat::Document, br#"{"_id": {"$oid": "nothex"}}"#, "bad Extended JSON"),
    ];
    for (format, value, want) in cases {
        let err = decode(format, Some(br#"{"_id": 1}"#), Some(value), meta(), &d)
            .err()
            .unwrap_or_else(|| panic!("{format:?} accepted {}", String::from_utf8_lossy(value)));
        assert!(err.0.contains(want), "{format:?}: {err} (wanted {want:?})");
    }
}

#[test]
fn plain_documents_get_a_stable_object_id_and_a_namespace_from_the_topic() {
    let opts = DocumentOptions {
        topic_prefix: Some("cdc".into()),
        insert: true,
        ..Default::default()
    };
    let m = RecordMeta {
        topic: "cdc.app.users",
        ..meta()
    };
    let a = decode(
        KafkaFormat::Document,
        None,
        Some(br#"{"name": "x"}"#),
        m,
        &opts,
    )
    .unwrap();
    let b = decode(
        KafkaFormat::Document,
        None,
        Some(br#"{"name": "x"}"#),
        m,
        &opts,
    )
    .unwrap();
    let (Decoded::InsertIfAbsent(ns, a), Decoded::InsertIfAbsent(_, b)) = (a, b) else {
        panic!("not inserts")
    };
    assert_eq!(ns.to_string(), "app.users");
    assert_eq!(a, b, "a replay derives the same _id");
    assert!(a.get_object_id("_id").is_ok());
    assert_eq!(
        a.iter().next().unwrap().unwrap().0,
        "_id",
        "_id comes first"
    );
    let other = RecordMeta { offset: 8, ..m };
    let Decoded::InsertIfAbsent(_, c) = decode(
        KafkaFormat::Document,
        None,
        Some(br#"{"name": "x"}"#),
        other,
        &opts,
    )
    .unwrap() else {
        panic!()
    };
    assert_ne!(
        a.get_object_id("_id").unwrap(),
        c.get_object_id("_id").unwrap()
    );
    let keyed = DocumentOptions {
        namespace: Some(crate::core::event::Namespace::parse("app.skus")),
        key_fields: vec!["sku".into()],
        ..Default::default()
    };
    let Decoded::Event(e) = decode(
        KafkaFormat::Document,
        None,
        Some(br#"{"sku": "A1", "q": 2}"#),
        m,
        &keyed,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(e.document_key().unwrap(), &*rawdoc! { "sku": "A1" });
    assert_eq!(e.ns.to_string(), "app.skus");
}

fn arb_value() -> impl Strategy<Value = bson::Bson> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(bson::Bson::Int32),
        any::<i64>().prop_map(bson::Bson::Int64),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(bson::Bson::Double),
        ".{0,12}".prop_map(bson::Bson::String),
        any::<bool>().prop_map(bson::Bson::Boolean),
        Just(bson::Bson::Null),
        any::<i64>().prop_map(|m| bson::Bson::DateTime(DateTime::from_millis(m))),
        any::<[u8; 12]>().prop_map(|b| bson::Bson::ObjectId(bson::oid::ObjectId::from_bytes(b))),
        // Decimals as a server stores them (from their text); arbitrary bit patterns include
        // non-canonical encodings no server writes.
        (any::<i64>(), -30i32..30).prop_map(|(m, e)| bson::Bson::Decimal128(
            format!("{m}E{e}").parse::<Decimal128>().unwrap()
        )),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(|bytes| bson::Bson::Binary(Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes
        })),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(bson::Bson::Array),
            proptest::collection::vec(("[a-z]{1,6}", inner), 0..4)
                .prop_map(|kv| { bson::Bson::Document(kv.into_iter().collect()) }),
        ]
    })
}

proptest! {
    /// The one-pass reader gives what the general reader gives, byte for byte, for canonical
    /// and relaxed Extended JSON of any document (and takes them all on its fast path).
    #[test]
    fn one_pass_reader_matches_the_general_reader(fields in proptest::collection::vec(("[a-z_]{1,8}", arb_value()), 0..8)) {
        let mut doc = bson::Document::new();
        for (k, v) in fields { doc.insert(k, v); }
        let b = bson::Bson::Document(doc);
        for text in [b.clone().into_canonical_extjson().to_string(), b.clone().into_relaxed_extjson().to_string()] {
            let fast = super::ext_json_read::to_raw_document(text.as_bytes());
            prop_assert!(fast.is_some(), "{}", text);
            let fast = fast.unwrap();
            let general = json_to_doc(parse_json(text.as_bytes(), "t").unwrap(), "t").unwrap();
            prop_assert_eq!(fast.as_bytes(), general.as_bytes(), "{}", text);
        }
    }

    /// Canonical Extended JSON keeps every value, type and field order: the document applied on
    /// the far side is byte-identical to the one captured.
    #[test]
    fn canonical_round_trip_is_byte_identical(fields in proptest::collection::vec(("[a-z]{1,8}", arb_value()), 0..8)) {
        let mut doc = bson::Document::new();
        doc.insert("_id", 1_i32);
        for (k, v) in fields { doc.insert(k, v); }
        let raw = RawDocumentBuf::try_from(&doc).unwrap();
        let e = ev(with(base("insert", 1), rawdoc! { "documentKey": { "_id": 1_i32 }, "fullDocument": raw.clone() }));
        for format in FORMATS {
            let r = &encode(&e, format, JsonFlavour::Canonical, false)[0];
            let Decoded::Event(back) = decode(format, Some(&r.key), r.value.as_deref(), meta(), &Default::default()).unwrap() else { panic!() };
            prop_assert_eq!(back.full_document().unwrap().as_bytes(), raw.as_bytes());
        }
    }
}

/// `json = "plain"`: what typed columns read, field order kept.
#[test]
fn plain_json_is_what_typed_columns_read() {
    let d = rawdoc! {
        "_id": oid(), "n": 1_i32, "big": 5_000_000_000_i64, "x": 1.5, "whole": 2.0,
        "nan": f64::NAN, "price": "12.50".parse::<Decimal128>().unwrap(),
        "at": DateTime::from_millis(1_700_000_000_000),
        "bin": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
        "ts": Timestamp { time: 7, increment: 1 }, "nested": { "a": [1_i32, "two", null] },
    };
    let v = to_json(&d, JsonFlavour::Plain);
    assert_eq!(
        v.to_string(),
        r#"{"_id":"65f1a2b3c4d5e6f708192a3b","n":1,"big":5000000000,"x":1.5,"whole":2.0,"nan":"NaN","price":"12.50","at":1700000000000,"bin":"AQID","ts":7,"nested":{"a":[1,"two",null]}}"#
    );
}

/// A Debezium update or delete without pre-images carries the key as `before`; an update
/// whose looked-up document is gone is not published.
#[test]
fn debezium_before_is_never_null_and_after_of_an_update_is_never_null() {
    for (name, e) in cases() {
        for r in encode(&e, KafkaFormat::Debezium, JsonFlavour::Plain, false) {
            let v: Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            let op = v["op"].as_str().unwrap();
            assert!(
                op == "r" || op == "c" || v["before"].is_object(),
                "{name}: {v}"
            );
            assert!(op == "d" || v["after"].is_object(), "{name}: {v}");
        }
    }
    let mut gone = base("update", 9);
    gone.append(
        bson::raw::cstr!("updateDescription"),
        rawdoc! { "updatedFields": { "n": 2 }, "removedFields": [] },
    );
    gone.append(bson::raw::cstr!("fullDocument"), bson::RawBson::Null);
    assert!(encode(&ev(gone), KafkaFormat::Debezium, JsonFlavour::Plain, false).is_empty());
}
