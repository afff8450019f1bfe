//! One engine for every source: what used to work only with a MongoDB source works with a
//! Kafka source too (target delay, archive sinks), and a Kafka `[sink]`'s events are counted
//! like a MongoDB sink's (report, `/status`, `/metrics`).

use std::time::{Duration, Instant};

use bson::{doc, Document};

use crate::api::{free_port, http};
use crate::common::kafka::Broker;
use crate::common::s3::S3Server;
use crate::common::*;

/// A Kafka source with `stream.target_delay` holds each record back until it is that old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_honours_target_delay() {
    let (dst, broker) = (Server::start(), Broker::start());
    let d = dst.client().await;
    broker.create_topic("delayed.shop.items", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "a.toml",
        &format!(
            "id = \"delayed\"\n[source]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"delayed.shop.items\"]\nformat = \"document\"\ntopic_prefix = \"delayed\"\n[sink]\nuri = \"{}\"\n[stream]\ntarget_delay = \"6s\"\n[checkpoint]\ninterval = \"200ms\"\n",
            broker.bootstrap(),
            dst.uri()
        ),
    );
    let app = Strait::spawn(&cfg, &dir.path().join("a.log"));
    let items = d.database("shop").collection::<Document>("items");
    // Let the consumer join before the clock starts.
    wait_for(
        Duration::from_secs(60),
        "partitions assigned",
        &app,
        || async { app.log_text().contains("Partitions assigned") },
    )
    .await;
    let sent = Instant::now();
    broker.produce(
        "delayed.shop.items",
        Some(b"1"),
        Some(br#"{"_id": 1, "x": "late"}"#),
        &[],
    );
    // Seconds granularity: the record may be up to a second older than `sent` says.
    while sent.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            items.count_documents(doc! {}).await.unwrap(),
            0,
            "applied {:?} after produce, before the 6 s delay",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(
        Duration::from_secs(30),
        "the delayed record applied",
        &app,
        || async { items.count_documents(doc! {}).await.unwrap() == 1 },
    )
    .await;
    let took = sent.elapsed();
    assert!(took >= Duration::from_secs(4), "applied after {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "applied only after {took:?}"
    );
}

/// A Kafka source with an archive `[sinks.deletes]`: the deletes it reads are archived (with
/// their pre-images), the other events applied, and the DR copy keeps the deleted documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_archives_the_deletes_it_reads() {
    const BUCKET: &str = "kafka-deletes";
    let (src, dst, broker, s3) = (
        Server::start(),
        Server::start(),
        Broker::start(),
        S3Server::start(BUCKET),
    );
    let (s, d) = (src.client().await, dst.client().await);
    let items = s.database("arc").collection::<Document>("items");
    items
        .insert_many((0..20).map(|i| doc! { "_id": i, "v": i * 10 }))
        .await
        .unwrap();
    s.database("arc")
        .run_command(
            doc! { "collMod": "items", "changeStreamPreAndPostImages": { "enabled": true } },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let capture = write_config(
        dir.path(),
        "c.toml",
        &format!(
            "id = \"cap\"\n[source]\nuri = \"{}\"\n[sink]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic_prefix = \"arc\"\ntopic_partitions = 2\n[stream]\npre_images = \"when_available\"\n[checkpoint]\ninterval = \"200ms\"\n",
            src.uri(),
            broker.bootstrap()
        ),
    );
    let apply = write_config(
        dir.path(),
        "a.toml",
        &format!(
            "id = \"app\"\n[source]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"^arc\\\\..*\"]\ngroup = \"arc\"\n[sink]\nuri = \"{}\"\nops = [\"insert\", \"update\", \"replace\"]\n{}[checkpoint]\ninterval = \"200ms\"\n",
            broker.bootstrap(),
            dst.uri(),
            s3.sink_toml("deletes", BUCKET, "batch_interval = \"300ms\"")
        ),
    );
    let cap = Strait::spawn(&capture, &dir.path().join("c.log"));
    let app = Strait::spawn(&apply, &dir.path().join("a.log"));
    let target = d.database("arc").collection::<Document>("items");
    wait_for(
        Duration::from_secs(90),
        "the copy applied",
        &app,
        || async { target.count_documents(doc! {}).await.unwrap() == 20 },
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "capture streaming",
        &cap,
        || async { cap.log_text().contains("Full sync finished") },
    )
    .await;
    items
        .update_one(doc! { "_id": 3 }, doc! { "$set": { "v": 33 } })
        .await
        .unwrap();
    for i in [3, 5, 7, 11, 13] {
        items.delete_one(doc! { "_id": i }).await.unwrap();
    }
    items
        .insert_one(doc! { "_id": 100, "v": 1000 })
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        "five deletes archived",
        &app,
        || async { s3.records(BUCKET).len() == 5 },
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the insert applied",
        &app,
        || async { target.count_documents(doc! { "_id": 100 }).await.unwrap() == 1 },
    )
    .await;
    // Append-only: the DR copy keeps every deleted document, with its last update.
    assert_eq!(target.count_documents(doc! {}).await.unwrap(), 21);
    let three = target.find_one(doc! { "_id": 3 }).await.unwrap().unwrap();
    assert_eq!(three.get_i32("v").unwrap(), 33);
    let mut ids: Vec<i64> = s3
        .records(BUCKET)
        .iter()
        .map(|r| {
            assert_eq!(r["operation"], "delete", "{r}");
            let id = &r["documentKey"]["_id"];
            id.as_i64()
                .or_else(|| id["$numberInt"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| panic!("documentKey of {r}"))
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec![3, 5, 7, 11, 13]);
    let with_pre = s3
        .records(BUCKET)
        .iter()
        .filter(|r| r["preImage"].is_object())
        .count();
    assert_eq!(with_pre, 5, "every archived delete carries its pre-image");
}

/// With a Kafka `[sink]`, the events it publishes show in the report line, in `/status`
/// (`applied` and `per_sink`) and in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_publishes_are_counted_in_report_status_and_metrics() {
    let (src, broker) = (Server::start(), Broker::start());
    let s = src.client().await;
    let items = s.database("cnt").collection::<Document>("items");
    items.insert_one(doc! { "_id": 0 }).await.unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "c.toml",
        &format!(
            "id = \"counted\"\n[source]\nuri = \"{}\"\n[sink]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic_prefix = \"cnt\"\ntopic_partitions = 2\n[checkpoint]\ninterval = \"200ms\"\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"sesame\"\n",
            src.uri(),
            broker.bootstrap()
        ),
    );
    let mut cap = Strait::spawn(&cfg, &dir.path().join("c.log"));
    wait_for(Duration::from_secs(60), "streaming", &cap, || async {
        cap.log_text().contains("Full sync finished")
    })
    .await;
    for i in 1..=30 {
        items.insert_one(doc! { "_id": i }).await.unwrap();
    }
    for i in 1..=10 {
        items
            .update_one(doc! { "_id": i }, doc! { "$set": { "u": true } })
            .await
            .unwrap();
    }
    for i in 21..=25 {
        items.delete_one(doc! { "_id": i }).await.unwrap();
    }
    wait_for(
        Duration::from_secs(60),
        "45 events published",
        &cap,
        || async {
            let st: serde_json::Value =
                serde_json::from_str(&http(port, "GET", "/status", "").await.1).unwrap();
            st["applied"]["insert"] == 30
                && st["applied"]["update"] == 10
                && st["applied"]["delete"] == 5
        },
    )
    .await;
    let st: serde_json::Value =
        serde_json::from_str(&http(port, "GET", "/status", "").await.1).unwrap();
    let sink = &st["per_sink"]["sink"];
    assert_eq!(sink["kind"], "kafka", "{st}");
    assert_eq!(sink["written"]["insert"], 30, "{st}");
    assert_eq!(sink["written"]["update"], 10, "{st}");
    assert_eq!(sink["written"]["delete"], 5, "{st}");
    let (code, metrics) = http(port, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    for (op, n) in [("insert", 30), ("update", 10), ("delete", 5)] {
        let line = format!(
            "strait_sink_events_total{{pipeline=\"counted\",sink=\"sink\",kind=\"kafka\",op=\"{op}\"}} {n}"
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
        let applied = format!(
            "strait_events_applied_total{{pipeline=\"counted\",op=\"{op}\",sink=\"kafka\"}} {n}"
        );
        assert!(metrics.contains(&applied), "no {applied:?} in\n{metrics}");
    }
    assert_eq!(cap.sigterm().code(), Some(0));
    // The last report line, written on the way out, has the totals.
    let log = cap.log_text();
    assert!(
        log.contains("insert 30 update 10 replace 0 delete 5"),
        "report line without the published counts:\n{log}"
    );
}
