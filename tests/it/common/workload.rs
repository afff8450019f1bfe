//! A mixed writer: every kind of change a replicator must reproduce.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document};
use mongodb::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Inserts `varied_doc(0..n)` into `coll`, a thousand per round trip.
pub async fn insert_varied(coll: &mongodb::Collection<Document>, n: i64) {
    for start in (0..n).step_by(1000) {
        coll.insert_many((start..(start + 1000).min(n)).map(varied_doc))
            .await
            .unwrap();
    }
}

/// A document with many BSON types, nested documents and arrays.
pub fn varied_doc(i: i64) -> Document {
    doc! {
        "_id": i,
        "name": format!("doc-{i}"),
        "i32": i as i32,
        "i64": i * 1_000_000_007,
        "dbl": i as f64 * 1.5,
        // A decimal as applications write it (from its text). Arbitrary bit patterns include
        // non-canonical encodings no driver produces, whose text form (Extended JSON, hence
        // Kafka) cannot keep their bytes.
        "dec": format!("{i}.{:02}E-3", i % 100).parse::<Decimal128>().unwrap(),
        "oid": ObjectId::new(),
        "when": DateTime::from_millis(1_700_000_000_000 + i),
        "bin": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![i as u8; 16] },
        "flag": i % 2 == 0,
        "nothing": Bson::Null,
        "nested": { "a": { "b": i, "c": [1, 2, { "d": "x" }] }, "z": "last" },
        "arr": [1, 2, 3, 4, 5],
        "tags": ["red", "green"],
        "long": "x".repeat(((i % 7) * 300) as usize),
        "counter": 0_i32,
    }
}

/// Applies `n` random operations to `db.coll` (ids in `0..keys`) and, for transactions, also
/// to `db.coll_tx`. Returns the number done.
/// With `multi_operator` false, every update uses a single operator (see
/// `stream.update_mode` on why field order of several operators differs between servers).
#[allow(clippy::too_many_arguments)]
pub async fn run_mixed(
    client: &Client,
    db: &str,
    coll: &str,
    keys: i64,
    n: u64,
    seed: u64,
    stop: Option<Arc<AtomicBool>>,
    done: Option<Arc<AtomicU64>>,
) -> u64 {
    run_mixed_ops(client, db, coll, keys, n, seed, stop, done, true).await
}

/// [`run_mixed`], choosing whether updates combine several operators.
#[allow(clippy::too_many_arguments)]
pub async fn run_mixed_ops(
    client: &Client,
    db: &str,
    coll: &str,
    keys: i64,
    n: u64,
    seed: u64,
    stop: Option<Arc<AtomicBool>>,
    done: Option<Arc<AtomicU64>>,
    multi_operator: bool,
) -> u64 {
    run_mixed_as(
        client,
        db,
        coll,
        keys,
        n,
        seed,
        stop,
        done,
        multi_operator,
        None,
    )
    .await
}

/// `update` with `$set: {field: name}` added (`origin` = `(field, name)`), as applications
/// of a two-way pair in `origin_field` mode write.
fn with_origin(mut update: Document, origin: Option<(&str, &str)>) -> Document {
    if let Some((field, name)) = origin {
        match update.get_document_mut("$set") {
            Ok(set) => {
                set.insert(field, name);
            }
            Err(_) => {
                update.insert("$set", doc! { field: name });
            }
        }
    }
    update
}

/// A whole document with `field: name` appended.
fn doc_with_origin(mut d: Document, origin: Option<(&str, &str)>) -> Document {
    if let Some((field, name)) = origin {
        d.insert(field, name);
    }
    d
}

/// [`run_mixed_ops`], with every write also setting `origin.0` to `origin.1`.
#[allow(clippy::too_many_arguments)]
pub async fn run_mixed_as(
    client: &Client,
    db: &str,
    coll: &str,
    keys: i64,
    n: u64,
    seed: u64,
    stop: Option<Arc<AtomicBool>>,
    done: Option<Arc<AtomicU64>>,
    multi_operator: bool,
    origin: Option<(&str, &str)>,
) -> u64 {
    let o = origin;
    let c = client.database(db).collection::<Document>(coll);
    let tx_coll = client
        .database(db)
        .collection::<Document>(&format!("{coll}_tx"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut count = 0;
    while count < n {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let id: i64 = rng.random_range(0..keys);
        let f = doc! { "_id": id };
        let r = match rng.random_range(0..13) {
            0 => c.insert_one(doc_with_origin(varied_doc(id), o)).await.map(|_| ()),
            1 => c.update_one(f, with_origin(doc! { "$set": { "nested.a.b": rng.random_range(0..1000_i64), "nested.new.deep": "v" } }, o)).await.map(|_| ()),
            2 => c.update_one(f, with_origin(doc! { "$unset": { "nested.a.c": "", "flag": "" } }, o)).await.map(|_| ()),
            3 => c.update_one(f, with_origin(doc! { "$inc": { "counter": 1_i32 } }, o)).await.map(|_| ()),
            4 => c.update_one(f, with_origin(doc! { "$push": { "arr": rng.random_range(0..100_i32) } }, o)).await.map(|_| ()),
            5 => c.update_one(f, with_origin(doc! { "$pull": { "arr": { "$lt": 3 } } }, o)).await.map(|_| ()),
            6 => c.update_one(f, with_origin(doc! { "$pop": { "arr": 1 } }, o)).await.map(|_| ()),
            7 => c
                .replace_one(f, doc_with_origin(doc! { "_id": id, "replaced": true, "v": rng.random_range(0..1000_i32), "z": { "y": 1_i64 } }, o))
                .upsert(true)
                .await
                .map(|_| ()),
            8 => c.delete_one(f).await.map(|_| ()),
            9 if multi_operator => c.update_one(f, with_origin(doc! { "$set": { "arr.1": "second", "tags": ["blue"] }, "$currentDate": { "touched": true } }, o)).await.map(|_| ()),
            10 if multi_operator => c.update_one(f, with_origin(doc! { "$rename": { "name": "title" }, "$mul": { "dbl": 2.0 } }, o)).await.map(|_| ()),
            11 if multi_operator => c.update_one(f, with_origin(doc! { "$addToSet": { "tags": "red" }, "$max": { "i32": 500_i32 } }, o)).await.map(|_| ()),
            9 => c.update_one(f, with_origin(doc! { "$set": { "arr.1": "second", "tags": ["blue"] } }, o)).await.map(|_| ()),
            10 => c.update_one(f, with_origin(doc! { "$rename": { "name": "title" } }, o)).await.map(|_| ()),
            11 => c.update_one(f, with_origin(doc! { "$addToSet": { "tags": "red" } }, o)).await.map(|_| ()),
            _ => {
                let mut s = client.start_session().await.unwrap();
                s.start_transaction().await.unwrap();
                let a = tx_coll
                    .update_one(doc! { "_id": id }, with_origin(doc! { "$inc": { "n": 1_i64 }, "$set": { "last": count as i64 } }, o))
                    .upsert(true)
                    .session(&mut s)
                    .await;
                let b = c.update_one(f, with_origin(doc! { "$set": { "tx": count as i64 } }, o)).session(&mut s).await;
                match (a, b) {
                    (Ok(_), Ok(_)) => s.commit_transaction().await,
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = s.abort_transaction().await;
                        Err(e)
                    }
                }
            }
        };
        if let Err(e) = r {
            // Rejected writes (duplicate keys, $pull on a non-array...) are part of a random
            // workload and produce no change; a network or server failure is a test bug.
            let rejected = matches!(
                *e.kind,
                mongodb::error::ErrorKind::Write(_) | mongodb::error::ErrorKind::Command(_)
            );
            assert!(rejected, "writer error: {e}");
        }
        count += 1;
        if let Some(d) = &done {
            d.fetch_add(1, Ordering::Relaxed);
        }
    }
    count
}
