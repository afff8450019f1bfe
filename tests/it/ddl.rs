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
