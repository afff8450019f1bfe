//! Delete interception: an append-only DR copy whose deletes are kept in an archive (real
//! s3s-fs and SecantusDB servers), restore from the archive, crash safety and S3 failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, RawDocumentBuf};
use rand::{Rng, SeedableRng};

use crate::common::s3::{records_in, S3Server};
use crate::common::*;

const BUCKET: &str = "archive";

/// The pipeline of the walkthrough: `bar.foo` to DR without deletes, deletes archived.
fn append_only(
    src: &Server,
    dst: &Server,
    s3: &S3Server,
    archive_extra: &str,
    extra: &str,
) -> String {
    format!(
        "{}{}ops = [\"insert\", \"update\", \"replace\"]\n",
        pipeline(
            src,
            dst,
            &format!(
                "[scope]\ninclude = [\"bar.foo\"]\n[checkpoint]\ninterval = \"200ms\"\n{extra}\n{}",
                s3.sink_toml("deletes", BUCKET, archive_extra)
            )
        ),
        ""
    )
}

async fn wait_streaming(st: &Strait) {
    wait_for(Duration::from_secs(30), "streaming", st, || async {
        st.log_text().contains("Full sync finished")
    })
    .await;
}

async fn create_with_pre_images(db: &mongodb::Database, coll: &str) {
    db.run_command(doc! { "create": coll, "changeStreamPreAndPostImages": { "enabled": true } })
        .await
        .unwrap();
}

fn ext_doc(v: &serde_json::Value) -> Document {
    match Bson::try_from(v.clone()).unwrap() {
        Bson::Document(d) => d,
        other => panic!("not a document: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_deletes_are_archived_not_applied_and_restore_undoes_them() {
    let (src, dst, s3) = (Server::start(), Server::start(), S3Server::start(BUCKET));
    let (s, d) = (src.client().await, dst.client().await);
    let bar = s.database("bar");
    create_with_pre_images(&bar, "foo").await;
    bar.create_collection("exa").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &append_only(&src, &dst, &s3, "batch_interval = \"500ms\"", ""),
    );
    let cfg_s = cfg.to_str().unwrap();
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_streaming(&st).await;

    let foo = bar.collection::<Document>("foo");
    foo.insert_one(doc! { "_id": 1, "x": 1 }).await.unwrap();
    foo.update_one(doc! { "_id": 1 }, doc! { "$set": { "x": 2 } })
        .await
        .unwrap();
    bar.collection::<Document>("exa")
        .insert_one(doc! { "_id": 1, "e": true })
        .await
        .unwrap();
    foo.delete_one(doc! { "x": 2 }).await.unwrap();

    wait_for(
        Duration::from_secs(20),
        "the delete in the archive",
        &st,
        || async { !s3.records(BUCKET).is_empty() },
    )
    .await;
    // The DR copy still holds {x: 2}; bar.exa was never replicated.
    let dr = raw_docs(&d, "bar", "foo").await;
    assert_eq!(dr.len(), 1);
    assert_eq!(
        Document::try_from(dr[0].clone()).unwrap(),
        doc! { "_id": 1, "x": 2 }
    );
    let colls = d.database("bar").list_collection_names().await.unwrap();
    assert!(!colls.contains(&"exa".to_string()), "{colls:?}");

    // Exactly one record, with the audit fields and the pre-image.
    let objects = s3.objects(BUCKET);
    assert_eq!(objects.len(), 1, "{objects:?}");
    let rel = objects[0]
        .strip_prefix(s3.root.path().join(BUCKET))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let re = regex::Regex::new(r"^dr/bar/foo/\d{4}/\d{2}/\d{2}/\d{10}\.\d{10}\.[0-9a-f]{16}-\d{10}\.\d{10}\.[0-9a-f]{16}\.jsonl$").unwrap();
    assert!(re.is_match(&rel), "object key {rel}");
    let recs = s3.records(BUCKET);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r["operation"], "delete");
    assert_eq!(r["db"], "bar");
    assert_eq!(r["coll"], "foo");
    assert_eq!(r["_id"], serde_json::json!({ "$numberInt": "1" }));
    let ts = r["timestamp"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts <= now && ts + 120 > now, "timestamp {ts}");
    let readable = r["timestampReadable"].as_str().unwrap();
    assert_eq!(
        humantime::parse_rfc3339(readable)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        ts
    );
    assert!(
        rel.contains(&readable[..10].replace('-', "/")),
        "{rel} vs {readable}"
    );
    assert!(r["eventId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(ext_doc(&r["preImage"]), doc! { "_id": 1, "x": 2 });

    // verify: the DR copy holds everything the source has (its extra document is expected).
    let (code, out, err) = strait_cmd(&["verify", "-c", cfg_s], Duration::from_secs(30));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kept: deletes are not applied"), "{out}");
    assert!(st.sigterm().success());

    // ls, cat, restore.
    let (code, out, err) = strait_cmd(
        &["archive", "ls", "-c", cfg_s, "--ns", "bar.foo"],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, out, err) = strait_cmd(
        &["archive", "cat", "-c", cfg_s, "--ns", "bar.*", "--id", "1"],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out, _) = strait_cmd(
        &["archive", "cat", "-c", cfg_s, "--to", "1000000000"],
        Duration::from_secs(20),
    );
    assert_eq!(out.lines().count(), 0, "time filter: {out}");
    let (code, out, err) = strait_cmd(
        &[
            "archive",
            "restore",
            "-c",
            cfg_s,
            "--ns",
            "bar.foo",
            "--dry-run",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would restore bar.foo _id 1"), "{out}");
    assert!(raw_docs(&s, "bar", "foo").await.is_empty(), "dry run wrote");
    let (code, out, err) = strait_cmd(
        &["archive", "restore", "-c", cfg_s, "--ns", "bar.foo"],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 1 documents"), "{out}");
    let back = raw_docs(&s, "bar", "foo").await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].as_bytes(),
        dr[0].as_bytes(),
        "restored byte for byte"
    );
    // Restoring again leaves the document alone.
    let (_, out, _) = strait_cmd(
        &["archive", "restore", "-c", cfg_s, "--ns", "bar.foo"],
        Duration::from_secs(20),
    );
    assert!(
        out.contains("restored 0 documents; 1 already present"),
        "{out}"
    );
}

/// Cluster time of the saved checkpoint, read from the sink.
async fn checkpoint_time(d: &mongodb::Client) -> Option<bson::Timestamp> {
    d.database("strait")
        .collection::<Document>("checkpoints")
        .find_one(doc! { "_id": "test" })
        .await
        .unwrap()
        .and_then(|c| c.get_timestamp("cluster_time").ok())
}

/// Delete records by event id; panics on an event archived twice.
fn deletes_by_event(recs: &[serde_json::Value]) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for r in recs {
        let id = r["eventId"].as_str().unwrap().to_string();
        assert!(
            out.insert(id.clone(), r.clone()).is_none(),
            "event {id} archived twice: {r}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_delete_exactly_once_across_sigkills() {
    let (src, dst, s3) = (Server::start(), Server::start(), S3Server::start(BUCKET));
    let (s, d) = (src.client().await, dst.client().await);
    let bar = s.database("bar");
    create_with_pre_images(&bar, "foo").await;
    let foo = bar.collection::<Document>("foo");
    foo.insert_many((0..300).map(|i| doc! { "_id": i as i64, "n": i, "s": "x".repeat(200) }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &append_only(
            &src,
            &dst,
            &s3,
            "batch_events = 15\nbatch_interval = \"300ms\"\ncompression = \"zstd\"",
            "",
        ),
    );
    let log = dir.path().join("log");

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut st = Strait::spawn(&cfg, &log);
    // Deletes before strait has taken its start position are, rightly, in neither the copy nor
    // the stream: the writer starts once the position is taken.
    wait_for(
        Duration::from_secs(30),
        "the start position",
        &st,
        || async { st.log_text().contains("Full sync planned") },
    )
    .await;
    // Writer: inserts, single-operator updates and deletes of live documents.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (foo, stop) = (foo.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut live: Vec<i64> = (0..300).collect();
            let mut deleted = Vec::new();
            let mut next = 300_i64;
            while !stop.load(Ordering::Relaxed) {
                match rng.random_range(0..4) {
                    0 | 1 => {
                        foo.insert_one(doc! { "_id": next, "n": next, "s": "y".repeat(100) })
                            .await
                            .unwrap();
                        live.push(next);
                        next += 1;
                    }
                    2 if !live.is_empty() => {
                        let id = live[rng.random_range(0..live.len())];
                        foo.update_one(doc! { "_id": id }, doc! { "$inc": { "n": 1 } })
                            .await
                            .unwrap();
                    }
                    _ if live.len() > 10 => {
                        let id = live.swap_remove(rng.random_range(0..live.len()));
                        foo.delete_one(doc! { "_id": id }).await.unwrap();
                        deleted.push(id);
                    }
                    _ => {}
                }
            }
            deleted
        })
    };

    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..2500))).await;
        st.sigkill_running();
        st = Strait::spawn(&cfg, &log);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let deleted = writer.await.unwrap();
    assert!(deleted.len() > 20, "only {} deletes", deleted.len());

    wait_for(
        Duration::from_secs(60),
        "every delete archived",
        &st,
        || async { s3.records(BUCKET).len() >= deleted.len() },
    )
    .await;
    let live_n = raw_docs(&s, "bar", "foo").await.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_docs(&d, "bar", "foo").await.len() != live_n + deleted.len() {
        if Instant::now() > deadline {
            let on_dr: std::collections::HashSet<i64> = raw_docs(&d, "bar", "foo")
                .await
                .iter()
                .map(|r| r.get_i64("_id").unwrap())
                .collect();
            let on_src: std::collections::HashSet<i64> = raw_docs(&s, "bar", "foo")
                .await
                .iter()
                .map(|r| r.get_i64("_id").unwrap())
                .collect();
            let missing_live: Vec<_> = on_src.difference(&on_dr).collect();
            let missing_deleted: Vec<_> = deleted.iter().filter(|i| !on_dr.contains(i)).collect();
            panic!(
                "DR copy incomplete: live missing {missing_live:?}, deleted missing {missing_deleted:?}\n{}",
                st.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let replays = st
        .log_text()
        .matches("Found events archived by an earlier run")
        .count();
    eprintln!(
        "{} deletes; {replays} restarts found events archived before the kill",
        deleted.len()
    );
    // Give a duplicate, if any, the chance to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(st.sigterm().success());
    let recs = s3.records(BUCKET);
    let by_event = deletes_by_event(&recs);
    assert_eq!(by_event.len(), deleted.len(), "one record per delete");
    let mut by_id: HashMap<String, serde_json::Value> = HashMap::new();
    for r in by_event.values() {
        assert_eq!(r["operation"], "delete");
        let id = r["_id"].to_string();
        assert!(
            by_id.insert(id.clone(), r.clone()).is_none(),
            "_id {id} twice"
        );
    }
    for id in &deleted {
        let key = serde_json::json!({ "$numberLong": id.to_string() }).to_string();
        assert!(by_id.contains_key(&key), "delete of {id} not archived");
    }

    // The DR copy is the primary minus nothing: every live document identical, and every
    // deleted one still there, equal to the archived pre-image byte for byte.
    let dr: HashMap<i64, RawDocumentBuf> = raw_docs(&d, "bar", "foo")
        .await
        .into_iter()
        .map(|r| (r.get_i64("_id").unwrap(), r))
        .collect();
    let live = raw_docs(&s, "bar", "foo").await;
    assert_eq!(dr.len(), live.len() + deleted.len());
    for doc in &live {
        let id = doc.get_i64("_id").unwrap();
        assert_eq!(dr[&id].as_bytes(), doc.as_bytes(), "document {id}");
    }
    for r in by_id.values() {
        let pre = ext_doc(&r["preImage"]);
        let id = pre.get_i64("_id").unwrap();
        assert_eq!(
            dr[&id].as_bytes(),
            bson::serialize_to_vec(&pre).unwrap(),
            "deleted document {id} on DR vs its pre-image"
        );
    }
    let objects = s3.objects(BUCKET);
    assert!(objects.len() > 3, "batches: {}", objects.len());
    assert!(objects
        .iter()
        .all(|o| o.to_string_lossy().ends_with(".jsonl.zst")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_holds_the_checkpoint_and_loses_nothing() {
    let (src, dst) = (Server::start(), Server::start());
    let mut s3 = S3Server::start(BUCKET);
    let (s, d) = (src.client().await, dst.client().await);
    let bar = s.database("bar");
    create_with_pre_images(&bar, "foo").await;
    let foo = bar.collection::<Document>("foo");
    foo.insert_many((0..20).map(|i| doc! { "_id": i, "v": i }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &append_only(
            &src,
            &dst,
            &s3,
            "batch_interval = \"200ms\"\ncompression = \"gzip\"",
            "",
        ),
    );
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    wait_streaming(&st).await;

    let mut events = foo.watch().await.unwrap();
    s3.stop();
    let down = Instant::now();
    foo.delete_many(doc! { "_id": { "$lt": 10 } })
        .await
        .unwrap();
    foo.insert_one(doc! { "_id": "after" }).await.unwrap();
    let mut first_delete = None;
    while let Some(ev) = futures::TryStreamExt::try_next(&mut events).await.unwrap() {
        if ev.operation_type == mongodb::change_stream::event::OperationType::Delete
            && first_delete.is_none()
        {
            first_delete = ev.cluster_time;
        }
        if ev.operation_type == mongodb::change_stream::event::OperationType::Insert {
            break;
        }
    }
    let first_delete = first_delete.unwrap();
    // The insert after the deletes reaches the DR copy; the deletes are held.
    wait_for(Duration::from_secs(20), "the insert on DR", &st, || async {
        raw_docs(&d, "bar", "foo").await.len() == 21
    })
    .await;
    // 30 s of outage: strait keeps retrying and the checkpoint stays before the deletes.
    while down.elapsed() < Duration::from_secs(30) {
        let c = checkpoint_time(&d).await;
        assert!(
            c.is_none_or(|c| c < first_delete),
            "checkpoint {c:?} passed an unarchived delete at {first_delete:?}"
        );
        assert!(
            st.child.try_wait().unwrap().is_none(),
            "strait gave up:\n{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(st.log_text().contains("retrying"), "{}", st.log_text());
    s3.restart();
    wait_for(
        Duration::from_secs(60),
        "the deletes archived",
        &st,
        || async { s3.records(BUCKET).len() >= 10 },
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "the checkpoint past the deletes",
        &st,
        || async { checkpoint_time(&d).await.is_some_and(|c| c > first_delete) },
    )
    .await;
    assert!(st.sigterm().success());
    let recs = s3.records(BUCKET);
    assert_eq!(deletes_by_event(&recs).len(), 10);
    assert_eq!(recs.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_and_wrong_credentials_fail_fast_with_clear_errors() {
    let (src, dst, s3) = (Server::start(), Server::start(), S3Server::start(BUCKET));
    let s = src.client().await;
    s.database("bar")
        .collection::<Document>("foo")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, cfg_text, expect) in [
        (
            "bucket",
            append_only(&src, &dst, &s3, "", "").replace(
                &format!("bucket = \"{BUCKET}\""),
                "bucket = \"no-such-bucket\"",
            ),
            "not found",
        ),
        (
            "secret",
            append_only(&src, &dst, &s3, "", "").replace("test-sk", "wrong-secret"),
            "permission denied",
        ),
    ] {
        let cfg = write_config(dir.path(), &format!("{name}.toml"), &cfg_text);
        let started = Instant::now();
        let (code, out, err) = strait_cmd(
            &["run", "-c", cfg.to_str().unwrap()],
            Duration::from_secs(60),
        );
        // 2: the user's to fix (no retrying a missing bucket or a refused key).
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name}: took {:?}",
            started.elapsed()
        );
        // The error is the last line: nothing (a driver task's panic on exit, as once seen in
        // CI) follows it.
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: archive sink deletes") && last.contains(expect),
            "{name}: {err}"
        );
        // Nothing was written to the DR side.
        let d = dst.client().await;
        assert!(
            !d.list_database_names()
                .await
                .unwrap()
                .contains(&"bar".to_string()),
            "{name}: wrote to the sink"
        );
    }
    let _ = s3.objects(BUCKET);
    let _ = records_in(&[]);
}
