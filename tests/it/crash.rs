//! Crash safety: strait is SIGKILLed at random moments, during the copy and while streaming,
//! with a writer running; after restarts the target equals the source byte for byte.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::workload::{insert_varied, run_mixed_ops};
use crate::common::*;
use bson::Document;
use rand::{Rng, SeedableRng};

async fn kill_repeatedly(update_mode: &str, seed: u64) {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    let db = s.database("crash");
    // Enough data that the first kills land inside the copy.
    insert_varied(&db.collection::<Document>("items"), 3000).await;
    db.collection::<Document>("items_tx")
        .insert_one(bson::doc! { "_id": -1_i64 })
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[stream]\nupdate_mode = \"{update_mode}\"\n[full_sync]\nchunk_docs = 250\nbatch_docs = 50\nparallelism = 2\n[checkpoint]\ninterval = \"200ms\"\n"
    );
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, &extra));
    let log = dir.path().join("log");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (s, stop, done) = (s.clone(), stop.clone(), done.clone());
        // Delta replay reproduces field order only for single-operator updates on this server
        // (see stream.update_mode); full-document mode takes every operator mix.
        let multi = update_mode == "full_document";
        tokio::spawn(async move {
            run_mixed_ops(
                &s,
                "crash",
                "items",
                3300,
                u64::MAX,
                seed,
                Some(stop),
                Some(done),
                multi,
            )
            .await
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    let mut copy_kills = 0;
    // At least five kills, at least two of them in each phase.
    while kills < 5 || copy_kills < 2 || kills - copy_kills < 2 {
        assert!(kills < 20, "could not land kills in both phases ({kills} kills, {copy_kills} in the copy); log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        let seen = std::fs::read_to_string(&log).unwrap_or_default().len();
        let mut st = Strait::spawn(&cfg, &log);
        // Kills meant for the copy land soon after this run starts copying: a resumed copy
        // only has its unfinished ranges left, and once it is done no later run copies again.
        let wait_ms = if copy_kills < 2 {
            wait_for(
                Duration::from_secs(30),
                "the copy to start",
                &st,
                || async {
                    let text = st.log_text();
                    let new = text.get(seen..).unwrap_or("");
                    new.contains("Full sync planned") || new.contains("Resuming from checkpoint")
                },
            )
            .await;
            rng.random_range(100..600)
        } else {
            // Streaming kills wait for the copy to be done: how long the remaining ranges
            // take depends on the load of the machine, not on this test.
            wait_for(
                Duration::from_secs(180),
                "the copy to finish",
                &st,
                || async { st.log_text().contains("Full sync finished") },
            )
            .await;
            rng.random_range(200..2000)
        };
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let copying = !st.log_text().contains("Full sync finished");
        st.sigkill_running();
        kills += 1;
        if copying {
            copy_kills += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ops = writer.await.unwrap();
    assert!(ops > 30, "writer did too little: {ops}");
    // Final run: catch up, compare, then a clean stop.
    let mut st = Strait::spawn(&cfg, &log);
    wait_identical(
        &s,
        ("crash", "items"),
        &d,
        ("crash", "items"),
        Duration::from_secs(120),
        Some(&st),
    )
    .await;
    wait_identical(
        &s,
        ("crash", "items_tx"),
        &d,
        ("crash", "items_tx"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        copy_kills >= 1,
        "no kill landed during the copy; log:\n{text}"
    );
    assert!(copy_kills < kills, "no kill landed while streaming");
    // Resumed copies redo unfinished chunks only: never a second plan.
    assert_eq!(
        text.matches("Full sync planned").count(),
        1,
        "copy restarted from zero"
    );
    eprintln!("{kills} kills ({copy_kills} during the copy), {ops} writer operations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_copy_and_streaming_full_document() {
    kill_repeatedly("full_document", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_copy_and_streaming_delta() {
    kill_repeatedly("delta", 2).await;
}
