//! MongoDB -> MongoDB replication against real SecantusDB servers.

use std::time::Duration;

use crate::common::workload::{insert_varied, run_mixed, run_mixed_ops, varied_doc};
use crate::common::*;
use bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_copies_every_type_chunked_with_indexes() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let shop = s.database("shop");
    shop.collection::<Document>("orders")
        .insert_many((0..700).map(varied_doc))
        .await
        .unwrap();
    shop.collection::<Document>("small")
        .insert_many((0..5).map(varied_doc))
        .await
        .unwrap();
    shop.collection::<Document>("orders")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "name": 1, "i32": -1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("name_i32".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    shop.collection::<Document>("orders")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "when": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(3600 * 24 * 365 * 50))
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    shop.collection::<Document>("orders")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "dbl": 1 })
                .options(
                    IndexOptions::builder()
                        .partial_filter_expression(doc! { "flag": true })
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    s.database("other")
        .collection::<Document>("skipme")
        .insert_one(doc! { "x": 1 })
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(&src, &dst, "mode = \"full\"\n[scope]\ninclude = [\"shop.*\"]\n[full_sync]\nchunk_docs = 100\nbatch_docs = 50\nparallelism = 3\n"),
    );
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    let status = st.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", st.log_text());

    for coll in ["orders", "small"] {
        assert_eq!(
            diff(&s, ("shop", coll), &d, ("shop", coll)).await,
            Vec::<String>::new(),
            "{coll}"
        );
        assert_eq!(
            indexes(&s, "shop", coll).await,
            indexes(&d, "shop", coll).await,
            "{coll} indexes"
        );
    }
    assert_eq!(indexes(&d, "shop", "orders").await.len(), 4);
    let dbs = d.list_database_names().await.unwrap();
    assert!(
        !dbs.contains(&"other".to_string()),
        "out-of-scope database copied: {dbs:?}"
    );
    // The copy was chunked and every chunk recorded done.
    let (code, out, err) = strait_cmd(
        &["checkpoint", "show", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    let ckpt: serde_json::Value = serde_json::from_str(&out).unwrap();
    let colls = ckpt["full_sync"]["collections"].as_array().unwrap();
    let orders = colls.iter().find(|c| c["ns"] == "shop.orders").unwrap();
    assert!(orders["chunks"].as_array().unwrap().len() >= 6, "{orders}");
    assert_eq!(ckpt["full_sync"]["done"], true);
    // verify agrees, and says so with exit 0.
    let (code, out, _) = strait_cmd(
        &["verify", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}");
    // ... and exits 1 listing the _id once a target document differs.
    d.database("shop")
        .collection::<Document>("orders")
        .update_one(doc! { "_id": 42_i64 }, doc! { "$set": { "i32": 1_i64 } })
        .await
        .unwrap();
    let (code, out, _) = strait_cmd(
        &["verify", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("different _id 42"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_during_copy_and_streaming_converges() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let coll = s.database("app").collection::<Document>("items");
    coll.insert_many((0..300).map(varied_doc)).await.unwrap();
    // Make sure the transaction collection exists before the copy is planned.
    s.database("app")
        .collection::<Document>("items_tx")
        .insert_one(doc! { "_id": -1_i64 })
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(
            &src,
            &dst,
            "[full_sync]\nchunk_docs = 50\nbatch_docs = 25\n[apply]\nlanes = 4\n",
        ),
    );
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    // Writes race the copy, then continue while streaming.
    run_mixed(&s, "app", "items", 350, 600, 7, None, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_mixed(&s, "app", "items", 350, 600, 8, None, None).await;
    wait_identical(
        &s,
        ("app", "items"),
        &d,
        ("app", "items"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    wait_identical(
        &s,
        ("app", "items_tx"),
        &d,
        ("app", "items_tx"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    let status = st.sigterm();
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0: {status:?}\n{}",
        st.log_text()
    );
    // DDL while stopped is picked up on restart: a new collection and an index.
    s.database("app")
        .collection::<Document>("later")
        .insert_one(doc! { "_id": 1, "v": "x" })
        .await
        .unwrap();
    coll.create_index(IndexModel::builder().keys(doc! { "counter": 1 }).build())
        .await
        .unwrap();
    s.database("app")
        .collection::<Document>("items_tx")
        .drop()
        .await
        .unwrap();
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_identical(
        &s,
        ("app", "later"),
        &d,
        ("app", "later"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while indexes(&d, "app", "items").await != indexes(&s, "app", "items").await {
        assert!(
            std::time::Instant::now() < deadline,
            "index not replicated\n{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    while d
        .database("app")
        .list_collection_names()
        .await
        .unwrap()
        .contains(&"items_tx".to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "drop not replicated\n{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(st.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_rename_and_no_deletes() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    for c in ["foo", "exa", "tmp_bak"] {
        s.database("bar")
            .collection::<Document>(c)
            .insert_one(doc! { "_id": 0, "x": 0 })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = "[scope]\ninclude = [\"bar.*\"]\nexclude = [\"bar.exa\", \"/_bak$/\"]\n[rename]\n\"bar.foo\" = \"dr.foo_copy\"\n[stream]\nops = [\"insert\", \"update\", \"replace\"]\n";
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, extra));
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    let target = d.database("dr").collection::<Document>("foo_copy");
    // One deadline for the copy and the streamed marker below.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The copy is done once the existing document arrived; later writes are streamed.
    while target.find_one(doc! { "_id": 0 }).await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "{}", st.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let foo = s.database("bar").collection::<Document>("foo");
    foo.insert_one(doc! { "_id": 1, "x": 1 }).await.unwrap();
    foo.update_one(doc! { "_id": 1 }, doc! { "$set": { "x": 2 } })
        .await
        .unwrap();
    s.database("bar")
        .collection::<Document>("exa")
        .insert_one(doc! { "_id": 5 })
        .await
        .unwrap();
    foo.delete_one(doc! { "_id": 1 }).await.unwrap();
    foo.insert_one(doc! { "_id": 2, "x": "marker" })
        .await
        .unwrap();
    while target.find_one(doc! { "_id": 2 }).await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "{}", st.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The delete was not applied: the DR copy still holds {x: 2}.
    assert_eq!(
        target.find_one(doc! { "_id": 1 }).await.unwrap(),
        Some(doc! { "_id": 1, "x": 2 })
    );
    assert_eq!(target.count_documents(doc! {}).await.unwrap(), 3);
    let bar_colls = d.database("bar").list_collection_names().await.unwrap();
    assert!(
        bar_colls.is_empty(),
        "bar.* must only exist renamed: {bar_colls:?}"
    );
    assert!(st.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_update_mode_converges_with_file_checkpoint() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    s.database("app")
        .collection::<Document>("items")
        .insert_many((0..50).map(varied_doc))
        .await
        .unwrap();
    s.database("app")
        .collection::<Document>("items_tx")
        .insert_one(doc! { "_id": -1_i64 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.json");
    let extra = format!(
        "[stream]\nupdate_mode = \"delta\"\n[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        ckpt.display()
    );
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, &extra));
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    // Wait for the copy, so that every write below is streamed as a delta.
    let items = d.database("app").collection::<Document>("items");
    let items = &items;
    wait_for(Duration::from_secs(30), "the copy", &st, || async move {
        items.count_documents(doc! {}).await.unwrap() >= 50
    })
    .await;
    run_mixed_ops(&s, "app", "items", 60, 400, 11, None, None, false).await;
    wait_identical(
        &s,
        ("app", "items"),
        &d,
        ("app", "items"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ckpt).unwrap()).unwrap();
    assert!(saved["resume_token"]["_data"].is_string(), "{saved}");
    // No checkpoint was written to the sink with the file store.
    assert!(!d
        .list_database_names()
        .await
        .unwrap()
        .contains(&"strait".to_string()));
}

/// Regression: a finished copy whose checkpoint has no streaming position yet must stream
/// from the position taken before the copy, not from "now".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_copy_without_position_streams_from_copy_start() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let coll = s.database("r").collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.json");
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(
            &src,
            &dst,
            &format!(
                "[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
                ckpt.display()
            ),
        ),
    );
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_identical(
        &s,
        ("r", "c"),
        &d,
        ("r", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());
    // Drop the streaming position, keep the finished copy and its start position.
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ckpt).unwrap()).unwrap();
    assert_eq!(saved["full_sync"]["done"], true);
    assert!(saved["full_sync"]["start_token"].is_object());
    saved.as_object_mut().unwrap().remove("resume_token");
    std::fs::write(&ckpt, saved.to_string()).unwrap();
    coll.insert_one(doc! { "_id": 2 }).await.unwrap();
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_identical(
        &s,
        ("r", "c"),
        &d,
        ("r", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());
}

/// Documents close to the 16 MB limit, copied and streamed (inserted, updated, replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_16mb_documents_replicate() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let coll = s.database("big").collection::<Document>("c");
    let big = |tag: &str| "x".repeat(15 * 1024 * 1024) + tag;
    coll.insert_one(doc! { "_id": 1, "blob": big("a") })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, ""));
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_identical(
        &s,
        ("big", "c"),
        &d,
        ("big", "c"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    coll.insert_one(doc! { "_id": 2, "blob": big("b") })
        .await
        .unwrap();
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "small": 1 } })
        .await
        .unwrap();
    coll.replace_one(
        doc! { "_id": 2 },
        doc! { "_id": 2, "blob": big("c"), "v": 2 },
    )
    .await
    .unwrap();
    wait_identical(
        &s,
        ("big", "c"),
        &d,
        ("big", "c"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
}

/// A copy to MongoDB killed in the middle of a collection that is one range (mixed `_id`
/// types make it one) resumes after the last `_id` the target made durable, not from the
/// range's start: a document copied before the kill and then removed from the target stays
/// removed, and everything after it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_copy_to_mongodb_resumes_inside_its_range() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let c = s.database("r").collection::<Document>("one");
    // A string `_id` among the integers: the collection cannot be split into ranges.
    c.insert_one(doc! { "_id": "a-string-id", "v": 1 })
        .await
        .unwrap();
    insert_varied(&c, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(
            &src,
            &dst,
            "mode = \"full\"\n[full_sync]\nchunk_docs = 1000000\nbatch_docs = 500\n[checkpoint]\ninterval = \"200ms\"",
        ),
    );
    let log = dir.path().join("p.log");
    let mut st = Strait::spawn(&cfg, &log);
    let target = d.database("r").collection::<Document>("one");
    wait_for(
        Duration::from_secs(120),
        "8,000 documents copied",
        &st,
        || async { target.count_documents(doc! {}).await.unwrap() >= 8_000 },
    )
    .await;
    // Let the range's progress be saved (at most every 250 ms), then kill.
    tokio::time::sleep(Duration::from_millis(600)).await;
    st.sigkill();
    // Read in `_id` order, integers before strings: 0 was among the first copied.
    target.delete_one(doc! { "_id": 0_i64 }).await.unwrap();
    let mut st = Strait::spawn(&cfg, &log);
    assert!(
        st.wait(Duration::from_secs(180)).success(),
        "{}",
        st.log_text()
    );
    assert_eq!(
        target.count_documents(doc! { "_id": 0_i64 }).await.unwrap(),
        0,
        "the restart copied the range again from its start"
    );
    assert_eq!(
        target.count_documents(doc! {}).await.unwrap(),
        20_000,
        "every document after the resume point arrived"
    );
    let last = target
        .find_one(doc! { "_id": 19_999_i64 })
        .await
        .unwrap()
        .expect("the last integer _id");
    assert_eq!(
        last,
        c.find_one(doc! { "_id": 19_999_i64 })
            .await
            .unwrap()
            .unwrap()
    );
    assert!(target
        .find_one(doc! { "_id": "a-string-id" })
        .await
        .unwrap()
        .is_some());
}
