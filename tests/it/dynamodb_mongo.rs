//! DynamoDB <-> MongoDB with the documented mapping: moto's tables, SecantusDB's collections.
//! A table into a collection (every attribute type to its BSON type, byte for byte, a replace
//! removing the attributes an update dropped, a SIGKILL mid-stream), and a collection into a
//! table (full sync and every kind of change).

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamViewType,
};
use aws_smithy_types::Blob;
use bson::spec::BinarySubtype;
use bson::{doc, rawdoc, Binary, Decimal128, RawDocumentBuf};

use crate::common::aws::{all_items, create_table, n, rich_item, s, Item, Moto};
use crate::common::{raw_docs, wait_for, write_config, Server, Strait};

/// An item with every attribute type (sets of one element: DynamoDB keeps no set order).
fn every_type(note: &str, with_flag: bool) -> Item {
    let mut m = Item::new();
    m.insert("pk".into(), s("x"));
    m.insert("sk".into(), n(1));
    m.insert("s".into(), s(note));
    m.insert("n_int".into(), n(42));
    m.insert("n_big".into(), n(5_000_000_000_i64));
    m.insert("n_dec".into(), n("19.99"));
    m.insert("n_38".into(), n("12345678901234567890123456789012345678"));
    m.insert("b".into(), AttributeValue::B(Blob::new(vec![1, 2])));
    if with_flag {
        m.insert("t".into(), AttributeValue::Bool(true));
    }
    m.insert("nul".into(), AttributeValue::Null(true));
    m.insert(
        "m".into(),
        AttributeValue::M([("z".to_string(), s("1")), ("a".to_string(), n(2))].into()),
    );
    m.insert("l".into(), AttributeValue::L(vec![s("a"), n(1)]));
    m.insert("ss".into(), AttributeValue::Ss(vec!["only".into()]));
    m.insert("ns".into(), AttributeValue::Ns(vec!["7".into()]));
    m.insert("bs".into(), AttributeValue::Bs(vec![Blob::new(vec![9])]));
    m
}

/// What the mapping makes of it: `_id` from the key, then attributes in name order.
fn every_type_doc(note: &str, with_flag: bool) -> RawDocumentBuf {
    let bin = |b: Vec<u8>| Binary {
        subtype: BinarySubtype::Generic,
        bytes: b,
    };
    let mut d = rawdoc! {
        "_id": { "pk": "x", "sk": 1_i32 },
        "b": bin(vec![1, 2]),
        "bs": [bin(vec![9])],
        "l": ["a", 1_i32],
        "m": { "a": 2_i32, "z": "1" },
        "n_38": "12345678901234567890123456789012345678",
        "n_big": 5_000_000_000_i64,
        "n_dec": "19.99".parse::<Decimal128>().unwrap(),
        "n_int": 42_i32,
        "ns": [7_i32],
        "nul": null,
        "pk": "x",
        "s": note,
        "sk": 1_i32,
        "ss": ["only"],
    };
    if with_flag {
        d.append(bson::raw::cstr!("t"), true);
    }
    d
}

async fn put(c: &aws_sdk_dynamodb::Client, table: &str, item: Item) {
    c.put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dynamodb_table_into_mongodb_maps_every_type() {
    let moto = Moto::start();
    let mongo = Server::start();
    let c = moto.dynamodb().await;
    create_table(&c, "orders", Some(StreamViewType::NewAndOldImages)).await;
    put(&c, "orders", every_type("first", true)).await;
    for i in 0..40 {
        put(&c, "orders", rich_item(i, 0)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &format!(
            "id = \"ddb-to-mongo\"\n[source]\ntype = \"dynamodb\"\ntable = \"orders\"\n{}poll_interval = \"100ms\"\n\n[sink]\nuri = \"{}\"\n",
            moto.keys(),
            mongo.uri()
        ),
    );
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    let m = mongo.client().await;
    let x_doc = |docs: &[RawDocumentBuf]| {
        docs.iter()
            .find(|d| {
                d.get_document("_id")
                    .is_ok_and(|i| i.get_str("pk").ok() == Some("x"))
            })
            .cloned()
    };
    wait_for(Duration::from_secs(60), "the full sync", &st, || async {
        raw_docs(&m, "dynamodb", "orders").await.len() == 41
    })
    .await;
    let docs = raw_docs(&m, "dynamodb", "orders").await;
    assert_eq!(
        x_doc(&docs).unwrap().as_bytes(),
        every_type_doc("first", true).as_bytes(),
        "{:?}",
        x_doc(&docs)
    );
    // Changes: the item loses an attribute (the replace drops it), some items go, new ones
    // come; a SIGKILL in the middle.
    c.update_item()
        .table_name("orders")
        .key("pk", s("x"))
        .key("sk", n(1))
        .update_expression("SET #s = :s REMOVE t")
        .expression_attribute_names("#s", "s")
        .expression_attribute_values(":s", s("changed"))
        .send()
        .await
        .unwrap();
    for i in 0..10 {
        let item = rich_item(i, 0);
        c.delete_item()
            .table_name("orders")
            .key("pk", item["pk"].clone())
            .key("sk", item["sk"].clone())
            .send()
            .await
            .unwrap();
    }
    st.sigkill_running();
    let mut st = Strait::spawn(&cfg, &dir.path().join("log2"));
    for i in 40..60 {
        put(&c, "orders", rich_item(i, 1)).await;
    }
    // Lanes go by item: a delete of one item may land after a put of another, so the wait is
    // for the exact set of items, not for their count.
    let ids = |docs: &[bson::RawDocumentBuf]| {
        let mut ids: Vec<i32> = docs
            .iter()
            .filter_map(|d| d.get_document("_id").ok()?.get_i32("sk").ok())
            .collect();
        ids.sort();
        ids
    };
    let expected: Vec<i32> = (1..=1).chain(10..60).collect();
    wait_for(Duration::from_secs(60), "the changes", &st, || async {
        let docs = raw_docs(&m, "dynamodb", "orders").await;
        ids(&docs) == expected
            && x_doc(&docs)
                .is_some_and(|d| d.as_bytes() == every_type_doc("changed", false).as_bytes())
    })
    .await;
    let docs = raw_docs(&m, "dynamodb", "orders").await;
    assert_eq!(docs.len(), 51);
    assert_eq!(ids(&docs), expected);
    // Checkpoints live in the MongoDB sink when no other store is named.
    assert!(m
        .database("strait")
        .collection::<bson::Document>("checkpoints")
        .find_one(doc! {})
        .await
        .unwrap()
        .is_some());
    assert!(st.sigterm().success());
}

async fn create_id_table(c: &aws_sdk_dynamodb::Client, name: &str) {
    c.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("_id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mongodb_collection_into_dynamodb_maps_every_type() {
    let moto = Moto::start();
    let mongo = Server::start();
    let c = moto.dynamodb().await;
    create_id_table(&c, "orders").await;
    create_table(&c, "wrong_key", None).await;
    let m = mongo.client().await;
    let coll = m.database("shop").collection::<bson::Document>("orders");
    let oid = bson::oid::ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
    coll.insert_one(doc! {
        "_id": oid, "name": "first", "qty": 3_i32, "big": 5_000_000_000_i64, "ratio": 0.25,
        "price": "19.99".parse::<Decimal128>().unwrap(),
        "at": bson::DateTime::from_millis(1_700_000_000_123),
        "tags": ["a", 1_i32], "addr": { "city": "Zürich", "zip": null }, "ok": true,
        "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
    })
    .await
    .unwrap();
    for i in 0..30 {
        coll.insert_one(doc! { "_id": format!("o{i}"), "v": i })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let text = |table: &str| {
        format!(
            "id = \"mongo-to-ddb\"\n[source]\nuri = \"{}\"\n\n[sink]\ntype = \"dynamodb\"\ntable = \"{table}\"\n{}",
            mongo.uri(),
            moto.keys()
        )
    };
    // A table keyed otherwise is refused at start with one line.
    let bad = write_config(dir.path(), "bad.toml", &text("wrong_key"));
    let (code, _, err) = crate::common::strait_cmd(
        &["run", "-c", bad.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("wrong_key") && err.contains("\"_id\""),
        "{err}"
    );
    let cfg = write_config(dir.path(), "p.toml", &text("orders"));
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_for(Duration::from_secs(60), "the full sync", &st, || async {
        all_items(&c, "orders").await.len() == 31
    })
    .await;
    let first = |items: &[Item]| {
        items
            .iter()
            .find(|i| i["_id"] == s("65a1b2c3d4e5f60718293a4b"))
            .cloned()
            .unwrap()
    };
    let got = first(&all_items(&c, "orders").await);
    let expected: Item = [
        ("_id", s("65a1b2c3d4e5f60718293a4b")),
        ("name", s("first")),
        ("qty", n(3)),
        ("big", n(5_000_000_000_i64)),
        ("ratio", n("0.25")),
        ("price", n("19.99")),
        ("at", s("2023-11-14T22:13:20.123Z")),
        ("tags", AttributeValue::L(vec![s("a"), n(1)])),
        (
            "addr",
            AttributeValue::M(
                [
                    ("city".to_string(), s("Zürich")),
                    ("zip".to_string(), AttributeValue::Null(true)),
                ]
                .into(),
            ),
        ),
        ("ok", AttributeValue::Bool(true)),
        ("bin", AttributeValue::B(Blob::new(vec![1, 2]))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, expected);
    // Streaming: update operators, a replace, deletes, inserts.
    coll.update_one(
        doc! { "_id": oid },
        doc! { "$set": { "name": "second" }, "$inc": { "qty": 1 }, "$unset": { "ok": "" } },
    )
    .await
    .unwrap();
    for i in 0..10 {
        coll.delete_one(doc! { "_id": format!("o{i}") })
            .await
            .unwrap();
    }
    coll.replace_one(doc! { "_id": "o20" }, doc! { "w": "replaced" })
        .await
        .unwrap();
    for i in 30..40 {
        coll.insert_one(doc! { "_id": format!("o{i}"), "v": i })
            .await
            .unwrap();
    }
    wait_for(Duration::from_secs(60), "the changes", &st, || async {
        let items = all_items(&c, "orders").await;
        items.len() == 31
            && first(&items).get("name") == Some(&s("second"))
            && items.iter().any(|i| i.get("w") == Some(&s("replaced")))
    })
    .await;
    let items = all_items(&c, "orders").await;
    let got = first(&items);
    assert_eq!(got["qty"], n(4));
    assert!(!got.contains_key("ok"), "{got:?}");
    let o20 = items.iter().find(|i| i["_id"] == s("o20")).unwrap();
    assert!(!o20.contains_key("v"), "the replace dropped v: {o20:?}");
    assert!(!items.iter().any(|i| i["_id"] == s("o3")));
    assert!(items.iter().any(|i| i["_id"] == s("o39")));
}
