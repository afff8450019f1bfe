//! DDL replication: rename, drop, dropDatabase, and the barrier around them; namespace lanes
//! with a unique secondary index; idle streams keep moving the checkpoint.

use std::time::{Duration, Instant};

use crate::common::*;
use bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_drop_and_drop_database_are_replicated() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    s.database("a")
        .collection::<Document>("one")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    s.database("b")
        .collection::<Document>("keep")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, ""));
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_identical(
        &s,
        ("b", "keep"),
        &d,
        ("b", "keep"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    wait_identical(
        &s,
        ("a", "one"),
        &d,
        ("a", "one"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;

    // Writes, a rename, writes to the new name: order across the barrier must hold.
    let one = s.database("a").collection::<Document>("one");
    one.insert_one(doc! { "_id": 2 }).await.unwrap();
    s.database("admin")
        .run_command(doc! { "renameCollection": "a.one", "to": "a.two" })
        .await
        .unwrap();
    let two = s.database("a").collection::<Document>("two");
    two.update_one(doc! { "_id": 2 }, doc! { "$set": { "renamed": true } })
        .await
        .unwrap();
    two.insert_one(doc! { "_id": 3 }).await.unwrap();
    wait_identical(
        &s,
        ("a", "two"),
        &d,
        ("a", "two"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    let names = || async { d.database("a").list_collection_names().await.unwrap() };
    wait_for(
        Duration::from_secs(30),
        "a.one to disappear",
        &st,
        || async { !names().await.contains(&"one".to_string()) },
    )
    .await;

    s.database("a").drop().await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "database a dropped",
        &st,
        || async {
            !d.list_database_names()
                .await
                .unwrap()
                .contains(&"a".to_string())
        },
    )
    .await;
    // Unrelated data is untouched.
    assert_eq!(
        diff(&s, ("b", "keep"), &d, ("b", "keep")).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_with_partial_scope_drops_only_replicated_collections() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    s.database("a")
        .collection::<Document>("in")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    // The target has its own collection in database a, which strait must never touch.
    d.database("a")
        .collection::<Document>("local_only")
        .insert_one(doc! { "_id": 9 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(&src, &dst, "[scope]\ninclude = [\"a.in\"]\n"),
    );
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_identical(
        &s,
        ("a", "in"),
        &d,
        ("a", "in"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    s.database("a").drop().await.unwrap();
    let names = || async { d.database("a").list_collection_names().await.unwrap() };
    wait_for(Duration::from_secs(30), "a.in dropped", &st, || async {
        !names().await.contains(&"in".to_string())
    })
    .await;
    assert!(names().await.contains(&"local_only".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_lanes_keep_unique_index_order() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let users = s.database("u").collection::<Document>("users");
    users
        .create_index(
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(&src, &dst, "[apply]\nlane_by = \"namespace\"\nlanes = 4\n"),
    );
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_for(Duration::from_secs(30), "index on target", &st, || async {
        indexes(&d, "u", "users").await.len() == 2
    })
    .await;
    // An email moves between documents again and again: only the source order is valid.
    for round in 0..30 {
        let (a, b) = (round * 2, round * 2 + 1);
        users
            .insert_one(doc! { "_id": a, "email": format!("x{round}@e") })
            .await
            .unwrap();
        users
            .update_one(
                doc! { "_id": a },
                doc! { "$set": { "email": format!("moved{round}@e") } },
            )
            .await
            .unwrap();
        users
            .insert_one(doc! { "_id": b, "email": format!("x{round}@e") })
            .await
            .unwrap();
        users.delete_one(doc! { "_id": b }).await.unwrap();
    }
    wait_identical(
        &s,
        ("u", "users"),
        &d,
        ("u", "users"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_advances_checkpoint() {
    let (src, dst) = (Server::start(), Server::start());
    let s = src.client().await;
    s.database("q")
        .collection::<Document>("c")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(&src, &dst, "[scope]\ninclude = [\"q.c\"]\n"),
    );
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    let token = || {
        let (code, out, _) = strait_cmd(
            &["checkpoint", "show", "-c", cfg.to_str().unwrap()],
            Duration::from_secs(20),
        );
        if code != 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        Some(v["resume_token"].to_string())
    };
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.is_none() || first == Some("null".to_string()) {
        assert!(Instant::now() < deadline, "{}", st.log_text());
        first = token();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing is written to q.c; only activity elsewhere (and server no-ops) happens.
    s.database("other")
        .collection::<Document>("noise")
        .insert_one(doc! { "x": 1 })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if token() != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint did not move on an idle stream\n{}",
            st.log_text()
        );
    }
}

/// A unique index whose build meets duplicate values on the target (here a document only the
/// target has; through Kafka partitions, states from different times) is built again once the
/// duplicate is gone, also after a SIGKILL; one whose collection is dropped meanwhile is
/// forgotten and does not bring the collection back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_that_meets_duplicates_is_built_once_they_are_gone() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    for coll in ["a", "b"] {
        s.database("u")
            .collection::<Document>(coll)
            .insert_many([doc! { "_id": 1, "e": "x" }, doc! { "_id": 2, "e": "y" }])
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, ""));
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    for coll in ["a", "b"] {
        wait_identical(
            &s,
            ("u", coll),
            &d,
            ("u", coll),
            Duration::from_secs(30),
            Some(&st),
        )
        .await;
        // A document only the target has, with a value a source document has.
        d.database("u")
            .collection::<Document>(coll)
            .insert_one(doc! { "_id": 99, "e": "x" })
            .await
            .unwrap();
    }
    let deferred = d
        .database("strait")
        .collection::<Document>("deferred_indexes");
    for coll in ["a", "b"] {
        s.database("u")
            .collection::<Document>(coll)
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "e": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .unwrap();
    }
    wait_for(
        Duration::from_secs(30),
        "two builds deferred",
        &st,
        || async { deferred.count_documents(doc! {}).await.unwrap() == 2 },
    )
    .await;
    assert_eq!(
        indexes(&d, "u", "a").await.len(),
        1,
        "built over a duplicate"
    );
    // Past the checkpoint save (every second): the restart does not replay the two
    // createIndexes events, so only the records bring the builds back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    st.sigkill_running();
    let mut st2 = Strait::spawn(&cfg, &log);
    // The first collection's duplicate goes: its index is built.
    d.database("u")
        .collection::<Document>("a")
        .delete_one(doc! { "_id": 99 })
        .await
        .unwrap();
    wait_same_indexes(&s, &d, ("u", "a"), Duration::from_secs(30), &st2).await;
    // The second collection is dropped on the source while its build waits: dropped on the
    // target, its build forgotten, and nothing creates it again.
    s.database("u")
        .collection::<Document>("b")
        .drop()
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "u.b dropped, its build forgotten",
        &st2,
        || async {
            !d.database("u")
                .list_collection_names()
                .await
                .unwrap()
                .contains(&"b".to_string())
                && deferred.count_documents(doc! {}).await.unwrap() == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!d
        .database("u")
        .list_collection_names()
        .await
        .unwrap()
        .contains(&"b".to_string()));
    assert!(st2.log_text().contains("Deferred unique index built."));
    st2.sigkill_running();
}
