//! Standby failover: two processes, one lease; the standby takes over when the active one is
//! SIGKILLed under load, the target converges, and the lease log shows no overlap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::workload::{run_mixed, varied_doc};
use crate::common::*;
use bson::{doc, DateTime, Document};
use futures::TryStreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_without_overlap() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    s.database("f")
        .collection::<Document>("items")
        .insert_many((0..200).map(varied_doc))
        .await
        .unwrap();
    s.database("f")
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
            "[checkpoint]\nlease = true\nlease_ttl = \"3s\"\n",
        ),
    );
    let mut a = Strait::spawn(&cfg, &dir.path().join("a.log"));
    wait_identical(
        &s,
        ("f", "items"),
        &d,
        ("f", "items"),
        Duration::from_secs(30),
        Some(&a),
    )
    .await;
    let b = Strait::spawn(&cfg, &dir.path().join("b.log"));
    let bref = &b;
    wait_for(
        Duration::from_secs(20),
        "b to stand by",
        bref,
        || async move { bref.log_text().contains("standing by") },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            run_mixed(&s, "f", "items", 250, u64::MAX, 5, Some(stop), None).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.sigkill();
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "the standby to take over",
        bref,
        || async move { bref.log_text().contains("Lease acquired") },
    )
    .await;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    wait_identical(
        &s,
        ("f", "items"),
        &d,
        ("f", "items"),
        Duration::from_secs(60),
        Some(&b),
    )
    .await;
    wait_identical(
        &s,
        ("f", "items_tx"),
        &d,
        ("f", "items_tx"),
        Duration::from_secs(30),
        Some(&b),
    )
    .await;
    // Takeover within lease expiry plus a few seconds.
    assert!(
        takeover < Duration::from_secs(3 + 4),
        "takeover took {takeover:?}"
    );

    // The lease log: every validity window of the first holder ends before the second holder's
    // first acquisition.
    let log: Vec<Document> = d
        .database("strait")
        .collection::<Document>("lease_log")
        .find(doc! {})
        .sort(doc! { "at": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let holders: Vec<String> = log
        .iter()
        .map(|e| e.get_str("holder").unwrap().to_string())
        .collect();
    let first = holders[0].clone();
    let second = holders
        .iter()
        .find(|h| **h != first)
        .expect("a second holder")
        .clone();
    let taken: DateTime = *log
        .iter()
        .find(|e| e.get_str("holder").unwrap() == second)
        .unwrap()
        .get_datetime("at")
        .unwrap();
    for e in log.iter().filter(|e| e.get_str("holder").unwrap() == first) {
        if let Ok(exp) = e.get_datetime("expires") {
            assert!(
                *exp <= taken,
                "holder {first} valid until {exp} but {second} took over at {taken}: {log:?}"
            );
        }
    }
    assert!(log
        .iter()
        .filter(|e| e.get_str("holder").unwrap() == second)
        .all(|e| *e.get_datetime("at").unwrap() >= taken));
}
