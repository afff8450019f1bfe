//! strait's Kafka records read by consumers nobody here wrote: Apache Flink's `debezium-json`
//! (PyFlink, a Flink SQL job over the topic's records), pymongo's `bson.json_util` reading
//! `change-event` values the way a MongoDB Kafka connector consumer does, and `document`
//! records with tombstones read as an upsert stream. Each must end with the source's
//! collection (and, for Flink, the source's `SUM` and `COUNT`). The scripts are in
//! `tests/consumers/`; `dev/install-consumers.sh` installs their Python packages once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};

use crate::common::kafka::{Broker, Record};
use crate::common::*;

/// The consumers' python (installed on first use; `dev/test.sh` installs it up front).
fn consumers_python() -> PathBuf {
    if let Ok(p) = std::env::var("STRAIT_CONSUMERS_PYTHON") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("dev/install-consumers.sh"))
        .output()
        .expect("dev/install-consumers.sh runs");
    assert!(
        out.status.success(),
        "dev/install-consumers.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}

/// Runs `tests/consumers/<script>` on `input`, returning what it wrote to its output file.
pub(crate) fn run_consumer(script: &str, input: &Path, extra: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = input.with_extension("out");
    let out = Command::new(consumers_python())
        .arg(root.join("tests/consumers").join(script))
        .arg(input)
        .arg(&output)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed on {}:\n{}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&output).unwrap()
}

/// A document with the columns of the Flink table, plus typed fields only the Extended JSON
/// consumers check (Flink ignores fields it has no column for).
fn item(i: i32) -> Document {
    doc! {
        "_id": format!("k{i:03}"),
        "item": format!("item {i}"),
        "qty": i,
        "price": 0.5 + i as f64,
        "tags": ["a", format!("t{}", i % 3)],
        "dims": { "h": 1.5, "w": i as f64 },
        "big": 5_000_000_000_i64 + i as i64,
        "when": bson::DateTime::from_millis(1_700_000_000_000 + i as i64),
        "dec": format!("{i}.50").parse::<bson::Decimal128>().unwrap(),
        "ref": bson::oid::ObjectId::from_bytes([i as u8; 12]),
    }
}

/// Every kind of change on `shop.items`: inserts, `$set`/`$unset`/`$inc`/`$push`, replaces,
/// deletes, an update then a delete of one document (its looked-up image is gone), an insert
/// then a delete, and a multi-document transaction-free burst on one document.
async fn write_changes(s: &mongodb::Client) {
    let c = s.database("shop").collection::<Document>("items");
    for i in 40..50 {
        c.insert_one(item(i)).await.unwrap();
    }
    for i in (0..50).step_by(3) {
        let id = format!("k{i:03}");
        c.update_one(
            doc! { "_id": &id },
            doc! { "$set": { "qty": i * 10, "item": "set" } },
        )
        .await
        .unwrap();
        c.update_one(doc! { "_id": &id }, doc! { "$inc": { "qty": 7 } })
            .await
            .unwrap();
    }
    for i in (1..50).step_by(4) {
        let id = format!("k{i:03}");
        c.update_one(doc! { "_id": &id }, doc! { "$unset": { "price": "" } })
            .await
            .unwrap();
        c.update_one(doc! { "_id": &id }, doc! { "$push": { "tags": "pushed" } })
            .await
            .unwrap();
    }
    for i in (2..50).step_by(5) {
        let mut r = item(1000 + i);
        r.insert("_id", format!("k{i:03}"));
        r.remove("dims");
        c.replace_one(doc! { "_id": format!("k{i:03}") }, r)
            .await
            .unwrap();
    }
    for i in (0..50).step_by(7) {
        c.delete_one(doc! { "_id": format!("k{i:03}") })
            .await
            .unwrap();
    }
    // Updated, then deleted at once: the lookup of the update finds nothing.
    for i in [8, 9, 10] {
        let id = format!("k{i:03}");
        c.update_one(doc! { "_id": &id }, doc! { "$inc": { "qty": 1000 } })
            .await
            .unwrap();
        c.delete_one(doc! { "_id": &id }).await.unwrap();
    }
    c.insert_one(item(900)).await.unwrap();
    c.delete_one(doc! { "_id": "k900" }).await.unwrap();
    for n in 0..20 {
        c.update_one(doc! { "_id": "k011" }, doc! { "$inc": { "qty": n } })
            .await
            .unwrap();
    }
    // The last write: once its record is on every topic, everything before it is too.
    c.insert_one(item(999)).await.unwrap();
}

/// Reads `topic` until the record of `k999` is there.
async fn read_topic(broker: &Broker, topic: &str) -> Vec<Record> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let records = broker.consume_all(topic, 1, Duration::from_secs(5)).await;
        let done = records.iter().any(|r| {
            r.payload_str().is_some_and(|p| p.contains("k999"))
                || r.key_str().is_some_and(|k| k.contains("k999"))
        });
        if done {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{topic}: no record of k999 among {} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One line per record value (a tombstone is an empty line).
pub(crate) fn values_file(dir: &Path, name: &str, records: &[Record]) -> PathBuf {
    let p = dir.join(name);
    let text: String = records
        .iter()
        .map(|r| r.payload_str().unwrap_or_default() + "\n")
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// Canonical Extended JSON lines (what the pymongo consumers write) as raw documents.
pub(crate) fn ext_json_docs(text: &str) -> Vec<RawDocumentBuf> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match Bson::try_from(v).unwrap() {
                Bson::Document(d) => RawDocumentBuf::try_from(&d).unwrap(),
                other => panic!("not a document: {other:?}"),
            }
        })
        .collect()
}

/// The same documents, byte for byte (values, types and field order).
pub(crate) fn assert_same_docs(what: &str, got: &[RawDocumentBuf], want: &[RawDocumentBuf]) {
    let show = |v: &[RawDocumentBuf]| {
        v.iter()
            .map(|d| format!("{:?}", Document::try_from(d.as_ref()).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(got.len(), want.len(), "{what}: {:?}", show(got));
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.as_bytes(),
            w.as_bytes(),
            "{what}: {:?} is not {:?}",
            Document::try_from(g.as_ref()).unwrap(),
            Document::try_from(w.as_ref()).unwrap()
        );
    }
}

/// The source's rows as Flink's table has them (absent fields are null).
fn flink_rows(docs: &[RawDocumentBuf]) -> Vec<serde_json::Value> {
    docs.iter()
        .map(|raw| {
            let d = Document::try_from(raw.as_ref()).unwrap();
            let dims = d.get_document("dims").ok().map(|m| {
                serde_json::json!({ "h": m.get_f64("h").ok(), "w": m.get_f64("w").ok() })
            });
            serde_json::json!({
                "_id": d.get_str("_id").unwrap(),
                "item": d.get_str("item").ok(),
                "qty": d.get_i32("qty").ok(),
                "price": d.get_f64("price").ok(),
                "tags": d.get_array("tags").ok().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect::<Vec<_>>()),
                "dims": dims,
            })
        })
        .collect()
}

/// MongoDB -> Kafka (three sinks, one per format) -> three real consumers; each ends with the
/// source's collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_consumers_rebuild_the_source_from_every_format() {
    let python = consumers_python();
    assert!(python.exists(), "{}", python.display());
    let (src, broker) = (Server::start(), Broker::start());
    let s = src.client().await;
    let items = s.database("shop").collection::<Document>("items");
    items
        .insert_many((0..40).map(item).collect::<Vec<_>>())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kafka = |topic: &str, format: &str, extra: &str| {
        format!(
            "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\ntopic_partitions = 1\nformat = \"{format}\"\n{extra}\n",
            broker.bootstrap()
        )
    };
    let config = format!(
        "id = \"consumers\"\n[source]\nuri = \"{}\"\n[sink]\n{}[sinks.events]\n{}[sinks.docs]\n{}[checkpoint]\ninterval = \"200ms\"\n",
        src.uri(),
        kafka("dbz.{db}.{coll}", "debezium", "tombstones = true"),
        kafka("ce.{db}.{coll}", "change-event", ""),
        kafka("doc.{db}.{coll}", "document", "tombstones = true"),
    );
    let path = write_config(dir.path(), "c.toml", &config);
    let mut cap = Strait::spawn(&path, &dir.path().join("c.log"));
    wait_for(Duration::from_secs(60), "the copy", &cap, || async {
        cap.log_text().contains("Full sync finished")
    })
    .await;
    write_changes(&s).await;
    let want = raw_docs(&s, "shop", "items").await;
    let dbz = read_topic(&broker, "dbz.shop.items").await;
    let ce = read_topic(&broker, "ce.shop.items").await;
    let docs = read_topic(&broker, "doc.shop.items").await;
    assert!(cap.sigterm().success());

    // Debezium: no `u`/`d` without `before`, no `u` without `after` (Flink stops on them).
    for r in dbz.iter().filter(|r| r.payload.is_some()) {
        let v = r.json();
        let op = v["op"].as_str().unwrap();
        assert!(op == "r" || op == "c" || v["before"].is_object(), "{v}");
        assert!(op == "d" || v["after"].is_object(), "{v}");
        assert!(v["ts_ms"].as_i64().unwrap() > 0, "{v}");
    }
    let out = run_consumer(
        "flink_debezium.py",
        &values_file(dir.path(), "dbz.jsonl", &dbz),
        &[],
    );
    let flink: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        flink["rows"],
        serde_json::Value::Array(flink_rows(&want)),
        "Flink's table is not the source's"
    );
    let sum: i64 = want
        .iter()
        .filter_map(|d| d.get_i32("qty").ok())
        .map(i64::from)
        .sum();
    assert_eq!(flink["sum_qty"], sum, "SUM(qty)");
    assert_eq!(flink["count"], want.len(), "COUNT(*)");

    // change-event: pymongo's Extended JSON reader applying the events in order.
    let out = run_consumer(
        "change_event.py",
        &values_file(dir.path(), "ce.jsonl", &ce),
        &[],
    );
    assert_same_docs("change-event via pymongo", &ext_json_docs(&out), &want);

    // document + tombstones, read as an upsert stream by key.
    let lines: String = docs
        .iter()
        .map(|r| {
            serde_json::json!({ "key": r.key_str(), "value": r.payload_str() }).to_string() + "\n"
        })
        .collect();
    let input = dir.path().join("doc.jsonl");
    std::fs::write(&input, lines).unwrap();
    let out = run_consumer("document_upsert.py", &input, &[]);
    assert_same_docs("document upserts via pymongo", &ext_json_docs(&out), &want);
}
