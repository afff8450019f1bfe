//! A saved position that aged out of the change log: a clear error by default, a full resync
//! when `stream.on_history_lost = "resync"`.

use std::time::Duration;

use crate::common::*;
use bson::{doc, Document};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_position_fails_clearly_or_resyncs() {
    let src = Server::start_with(&["--oplog-max-entries", "50"]);
    let dst = Server::start();
    let (s, d) = (src.client().await, dst.client().await);
    let coll = s.database("h").collection::<Document>("c");
    coll.insert_many((0..10).map(|i| doc! { "_id": i, "v": i }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, ""));
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_identical(
        &s,
        ("h", "c"),
        &d,
        ("h", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());

    // While strait is down: many writes, a delete, then the change log is pruned.
    coll.delete_one(doc! { "_id": 0 }).await.unwrap();
    for i in 10..200 {
        coll.insert_one(doc! { "_id": i, "v": i }).await.unwrap();
    }
    s.database("admin")
        .run_command(doc! { "secantusAdmin.pruneOplog": 1 })
        .await
        .unwrap();

    let (code, _, err) = strait_cmd(
        &["run", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("no longer in the source's change log") && err.contains("on_history_lost"),
        "{err}"
    );

    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(&src, &dst, "[stream]\non_history_lost = \"resync\"\n"),
    );
    let mut st = Strait::spawn(&cfg, &log);
    // The resync copies into fresh collections, so the document deleted during the gap is gone too.
    wait_identical(
        &s,
        ("h", "c"),
        &d,
        ("h", "c"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    coll.insert_one(doc! { "_id": 1000, "after": true })
        .await
        .unwrap();
    wait_identical(
        &s,
        ("h", "c"),
        &d,
        ("h", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());
    assert!(st.log_text().contains("copying the data again"));
}
