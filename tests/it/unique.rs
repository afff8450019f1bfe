//! Unique secondary indexes with parallel lanes: documents swap values of unique fields (one
//! field, and a compound key through replaces), and deleted documents' values are taken by
//! new ones, while strait is SIGKILLed and restarted on a backlog. Lanes apply documents out
//! of the source's order and looked-up updates carry later states, so writes collide; strait
//! repairs them from the source's current documents and the target ends byte-identical, with
//! the same indexes, and no write ever fails for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use rand::{Rng, SeedableRng};

use crate::api::{free_port, http, pipeline_counter};
use crate::common::*;

const DOCS: i64 = 300;

fn user(i: i64) -> Document {
    doc! {
        "_id": i,
        "email": format!("e{i}@example.com"),
        "team": (i % 10) as i32,
        "slot": (i / 10) as i32,
        "n": 0_i32,
        "profile": { "name": format!("user {i}"), "tags": ["a", "b"] },
    }
}

async fn unique_index(c: &Collection<Document>, keys: Document, name: &str) {
    c.create_index(
        IndexModel::builder()
            .keys(keys)
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name(name.to_string())
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
}

/// `app.users` on `s`: the documents and the two unique indexes the writer works on.
async fn seed_users(s: &mongodb::Client) -> Collection<Document> {
    let users = s.database("app").collection::<Document>("users");
    users.insert_many((0..DOCS).map(user)).await.unwrap();
    unique_index(&users, doc! { "email": 1 }, "email_1").await;
    unique_index(&users, doc! { "team": 1, "slot": 1 }, "team_slot").await;
    users
}

/// Swaps, replace-swaps and value reuse until `stop`; returns the operations done.
async fn writer(c: Collection<Document>, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut live: Vec<i64> = (0..DOCS).collect();
    let mut next_id = DOCS;
    let mut ops = 0;
    let mut k = 0_i64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let ia = rng.random_range(0..live.len());
        let mut ib = rng.random_range(0..live.len() - 1);
        if ib >= ia {
            ib += 1;
        }
        let (a, b) = (live[ia], live[ib]);
        let (Some(da), Some(db)) = (
            c.find_one(doc! { "_id": a }).await.unwrap(),
            c.find_one(doc! { "_id": b }).await.unwrap(),
        ) else {
            continue;
        };
        match k % 4 {
            // Swap emails through a temporary value, as an application must.
            0 | 1 => {
                let (ea, eb) = (da.get_str("email").unwrap(), db.get_str("email").unwrap());
                c.update_one(
                    doc! { "_id": a },
                    doc! { "$set": { "email": format!("tmp{k}") } },
                )
                .await
                .unwrap();
                c.update_one(
                    doc! { "_id": b },
                    doc! { "$set": { "email": ea }, "$inc": { "n": 1 } },
                )
                .await
                .unwrap();
                c.update_one(
                    doc! { "_id": a },
                    doc! { "$set": { "email": eb }, "$inc": { "n": 1 } },
                )
                .await
                .unwrap();
                ops += 3;
            }
            // Swap (team, slot) with whole-document replaces.
            2 => {
                let mut ra = da.clone();
                ra.insert("team", -1_i32);
                ra.insert("slot", -(k as i32));
                c.replace_one(doc! { "_id": a }, ra.clone()).await.unwrap();
                let mut rb = db.clone();
                rb.insert("team", da.get_i32("team").unwrap());
                rb.insert("slot", da.get_i32("slot").unwrap());
                rb.insert("swapped", k);
                c.replace_one(doc! { "_id": b }, rb).await.unwrap();
                ra.insert("team", db.get_i32("team").unwrap());
                ra.insert("slot", db.get_i32("slot").unwrap());
                c.replace_one(doc! { "_id": a }, ra).await.unwrap();
                ops += 3;
            }
            // A new document takes the values of one just deleted.
            _ => {
                c.delete_one(doc! { "_id": a }).await.unwrap();
                let mut n = da.clone();
                n.insert("_id", next_id);
                n.insert("n", 0_i32);
                c.insert_one(n).await.unwrap();
                live[ia] = next_id;
                next_id += 1;
                ops += 2;
            }
        }
    }
    ops
}

async fn repairs(port: u16) -> Option<u64> {
    let (code, body) = http(port, "GET", "/metrics", "").await;
    if code != 200 {
        return None;
    }
    pipeline_counter(&body, "strait_unique_key_repairs_total", "test")
}

async fn swap_unique_values(update_mode: &str, seed: u64) {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let users = seed_users(&s).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[stream]\nupdate_mode = \"{update_mode}\"\n[apply]\nlanes = 8\nbatch_docs = 50\n[checkpoint]\ninterval = \"200ms\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, &extra));
    let log = dir.path().join("log");
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(users.clone(), seed, stop.clone()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Killed while it applies, and down while the writer builds a backlog.
    for _ in 0..3 {
        let mut st = Strait::spawn(&cfg, &log);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
        st.sigkill_running();
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
    }
    let st = Strait::spawn(&cfg, &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let ops = w.await.unwrap();
    wait_identical(
        &s,
        ("app", "users"),
        &d,
        ("app", "users"),
        Duration::from_secs(120),
        Some(&st),
    )
    .await;
    // The copy under writes may hold duplicates of a unique value: that build is deferred
    // until the stream removed them, and comes within its backoff.
    wait_same_indexes(&s, &d, ("app", "users"), Duration::from_secs(60), &st).await;
    let repaired = repairs(port).await.expect("metrics");
    let text = st.log_text();
    assert!(
        repaired > 0,
        "no write collided: the test did not test anything ({ops} writer operations)"
    );
    assert!(!text.contains("kept failing"), "{text}");
    eprintln!("unique swaps ({update_mode}): {ops} writer operations, {repaired} collisions repaired in the last run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_unique_values_converge_through_kills() {
    swap_unique_values("full_document", 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_unique_values_converge_in_delta_mode() {
    swap_unique_values("delta", 22).await;
}

/// A repair that broke a cycle set a document aside (deleted its target copy, noted in
/// `strait.repairs`) and was killed before writing it back: the next start writes it back
/// before applying anything, although the document never changes again on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_set_aside_by_an_interrupted_repair_comes_back() {
    set_aside_comes_back(None).await;
}

/// The same into a renamed collection: the note says where the document lives on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_set_aside_in_a_renamed_collection_comes_back() {
    set_aside_comes_back(Some(("app2", "people"))).await;
}

async fn set_aside_comes_back(rename: Option<(&str, &str)>) {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let users = s.database("app").collection::<Document>("users");
    users.insert_many((0..20).map(user)).await.unwrap();
    unique_index(&users, doc! { "email": 1 }, "email_1").await;
    let dir = tempfile::tempdir().unwrap();
    let (tdb, tcoll) = rename.unwrap_or(("app", "users"));
    let extra = match rename {
        Some((db, coll)) => format!("[rename]\n\"app.users\" = \"{db}.{coll}\"\n"),
        None => String::new(),
    };
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, &extra));
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_identical(
        &s,
        ("app", "users"),
        &d,
        (tdb, tcoll),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());

    // What the interrupted repair left: document 7 gone from the target, and the note.
    let target = d.database(tdb).collection::<Document>(tcoll);
    target.delete_one(doc! { "_id": 7_i64 }).await.unwrap();
    d.database("strait")
        .collection::<Document>("repairs")
        .insert_one(doc! {
            "_id": { "ns": format!("{tdb}.{tcoll}"), "id": 7_i64 },
            "source_ns": "app.users",
            "at": bson::DateTime::now(),
        })
        .await
        .unwrap();
    let mut st = Strait::spawn(&cfg, &log);
    wait_identical(
        &s,
        ("app", "users"),
        &d,
        (tdb, tcoll),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    let left = d
        .database("strait")
        .collection::<Document>("repairs")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(left, 0, "the note stays after the document came back");
    assert!(st
        .log_text()
        .contains("set aside by an interrupted repair is back"));
    assert!(st.sigterm().success());
}

/// The same swaps through Kafka, with the writer running from before the copy: the apply
/// process has no source to repair from, so a write that collides parks its document until
/// its values are free. Both processes are SIGKILLed; the target ends byte-identical with
/// nothing left parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_unique_values_converge_through_kafka() {
    swap_through_kafka("", 4, 23).await;
}

/// The same with the apply replaying update descriptions: a parked document's updates are
/// applied to its parked copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_unique_values_converge_through_kafka_in_delta_mode() {
    swap_through_kafka("[stream]\nupdate_mode = \"delta\"\n", 1, 24).await;
}

/// Config files of a capture from `src` into Kafka (`partitions` per topic) and an apply
/// (`apply_extra` at its top) from Kafka into `dst`. With several partitions the unique
/// indexes' createIndexes record (keyed by namespace) can reach the apply after copy records
/// holding one value twice, and its build waits until they are gone (deferred); with one, the
/// apply's lanes still reorder documents.
fn kafka_pair(
    dir: &std::path::Path,
    src: &Server,
    dst: &Server,
    broker: &crate::common::kafka::Broker,
    apply_extra: &str,
    partitions: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let capture = write_config(
        dir,
        "capture.toml",
        &format!(
            "id = \"capture\"\n[source]\nuri = \"{}\"\n[sink]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic_prefix = \"cdc\"\ntopic_partitions = {partitions}\n[checkpoint]\ninterval = \"200ms\"\n",
            src.uri(),
            broker.bootstrap()
        ),
    );
    let apply = write_config(
        dir,
        "apply.toml",
        &format!(
            "id = \"apply\"\n{apply_extra}[source]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"^cdc\\\\..*\"]\ngroup = \"b\"\nsession_timeout = \"6s\"\n[sink]\nuri = \"{}\"\n[checkpoint]\ninterval = \"200ms\"\n",
            broker.bootstrap(),
            dst.uri()
        ),
    );
    (capture, apply)
}

async fn swap_through_kafka(apply_extra: &str, partitions: u32, seed: u64) {
    let (src, dst) = (Server::start(), Server::start());
    let broker = crate::common::kafka::Broker::start();
    let (s, d) = (src.client().await, dst.client().await);
    let users = seed_users(&s).await;

    let dir = tempfile::tempdir().unwrap();
    let (capture, apply) = kafka_pair(
        dir.path(),
        &src,
        &dst,
        &broker,
        &format!("{apply_extra}[apply]\nlanes = 8\nbatch_docs = 50\n"),
        partitions,
    );
    let (clog, alog) = (dir.path().join("capture.log"), dir.path().join("apply.log"));
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(users.clone(), seed, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cap = Strait::spawn(&capture, &clog);
    let mut app = Strait::spawn(&apply, &alog);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..5000))).await;
        if i == 1 {
            cap.sigkill_running();
            cap = Strait::spawn(&capture, &clog);
        } else {
            app.sigkill_running();
            app = Strait::spawn(&apply, &alog);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let ops = w.await.unwrap();
    let stopped = std::time::Instant::now();
    wait_identical(
        &s,
        ("app", "users"),
        &d,
        ("app", "users"),
        Duration::from_secs(120),
        Some(&app),
    )
    .await;
    let converged = stopped.elapsed();
    // A unique build deferred over duplicates (several partitions) comes within its backoff.
    wait_same_indexes(&s, &d, ("app", "users"), Duration::from_secs(60), &app).await;
    // Documents were parked at some point (the collection exists) and none is left there, or
    // (several partitions) the unique build waited until the copy's duplicates were gone.
    let lots = d
        .database("strait")
        .list_collection_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("parked.apply."))
        .collect::<Vec<_>>();
    let deferred = app.log_text().contains("Deferred unique index built.");
    if lots.is_empty() {
        assert!(
            deferred,
            "no write collided: the test did not test anything ({ops} writer operations)"
        );
    } else {
        assert_eq!(lots, ["parked.apply.sink.app.users"]);
        let left = d
            .database("strait")
            .collection::<Document>(&lots[0])
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(left, 0, "documents left parked");
    }
    let built_later = if deferred {
        ", unique index deferred"
    } else {
        ""
    };
    assert!(cap.sigterm().success());
    let text = app.log_text();
    assert!(!text.contains("kept failing"), "{text}");
    assert!(app.sigterm().success());
    eprintln!("unique swaps through Kafka ({apply_extra:?}, {partitions} partitions): {ops} writer operations, converged {:.1} s after the writer stopped{built_later}", converged.as_secs_f64());
}

/// A value only the target has keeps a document parked: it stays out of the target (and in
/// the parking collection) until that value goes, then moves back (also when the value goes
/// while the apply is down and nothing changes after its restart); a drop of its collection
/// takes the parked copy along, so it does not come back into the recreated collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_document_moves_back_and_goes_with_its_collection() {
    let (src, dst) = (Server::start(), Server::start());
    let broker = crate::common::kafka::Broker::start();
    let (s, d) = (src.client().await, dst.client().await);
    let users = s.database("app").collection::<Document>("users");
    let target = d.database("app").collection::<Document>("users");
    let lot = d
        .database("strait")
        .collection::<Document>("parked.apply.sink.app.users");
    users
        .insert_one(doc! { "_id": 0, "email": "a" })
        .await
        .unwrap();
    unique_index(&users, doc! { "email": 1 }, "email_1").await;
    // The target has the index and a document the source does not.
    target
        .insert_one(doc! { "_id": "extra", "email": "b" })
        .await
        .unwrap();
    unique_index(&target, doc! { "email": 1 }, "email_1").await;

    let dir = tempfile::tempdir().unwrap();
    let (capture, apply) = kafka_pair(dir.path(), &src, &dst, &broker, "", 1);
    let cap = Strait::spawn(&capture, &dir.path().join("capture.log"));
    let mut app = Strait::spawn(&apply, &dir.path().join("apply.log"));
    let has = |c: &Collection<Document>, id: i32| {
        let c = c.clone();
        async move { c.find_one(doc! { "_id": id }).await.unwrap().is_some() }
    };
    wait_for(Duration::from_secs(60), "the copy", &app, || {
        has(&target, 0)
    })
    .await;

    // Parked behind the target's own "b", then back once it goes.
    users
        .insert_one(doc! { "_id": 1, "email": "b" })
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "doc 1 parked", &app, || {
        has(&lot, 1)
    })
    .await;
    users
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "n": 1 } })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!has(&target, 1).await, "a parked document is on the target");
    // Killed while the document is parked (its changes committed), and its value freed
    // meanwhile: the restarted apply moves it back with no further change coming.
    app.sigkill_running();
    target.delete_one(doc! { "_id": "extra" }).await.unwrap();
    let app = Strait::spawn(&apply, &dir.path().join("apply.log"));
    wait_identical(
        &s,
        ("app", "users"),
        &d,
        ("app", "users"),
        Duration::from_secs(30),
        Some(&app),
    )
    .await;
    assert_eq!(lot.count_documents(doc! {}).await.unwrap(), 0);

    // Parked again, then its collection is dropped and made again on the source.
    target
        .insert_one(doc! { "_id": "extra", "email": "c" })
        .await
        .unwrap();
    users
        .insert_one(doc! { "_id": 2, "email": "c" })
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "doc 2 parked", &app, || {
        has(&lot, 2)
    })
    .await;
    users.drop().await.unwrap();
    let names = || async { d.database("strait").list_collection_names().await.unwrap() };
    wait_for(
        Duration::from_secs(30),
        "the parking collection dropped",
        &app,
        || async {
            !names()
                .await
                .contains(&"parked.apply.sink.app.users".to_string())
        },
    )
    .await;
    users
        .insert_one(doc! { "_id": 3, "email": "c" })
        .await
        .unwrap();
    wait_identical(
        &s,
        ("app", "users"),
        &d,
        ("app", "users"),
        Duration::from_secs(30),
        Some(&app),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !has(&target, 2).await,
        "a dropped collection's parked document came back"
    );
    drop(cap);
    drop(app);
}
