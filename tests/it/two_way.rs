//! Two-way sync between two SecantusDB servers: both sides write the same documents while
//! strait is killed again and again; at the end both clusters are byte-identical, nothing
//! ping-pongs, and every change that lost is in the conflict log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::api::{free_port, http, pipeline_counter};
use crate::common::kafka::{Broker, Record};
use crate::common::workload::{insert_varied, run_mixed_as, varied_doc};
use crate::common::*;
use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use rand::{Rng, SeedableRng};

fn two_way_config(a: &Server, b: &Server, port: u16, extra: &str) -> String {
    two_way_config_with(a, b, port, extra, "")
}

/// [`two_way_config`] with more keys in `[two_way]`.
fn two_way_config_with(a: &Server, b: &Server, port: u16, extra: &str, two_way: &str) -> String {
    format!(
        "id = \"tw\"\nmode = \"full+incremental\"\n{extra}\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[two_way]\nnames = [\"east\", \"west\"]\ncopy_from = \"east\"\n{two_way}\n[checkpoint]\ninterval = \"200ms\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
        a.uri(),
        b.uri()
    )
}

/// The two directions' counters from `/metrics`: (changes applied, echoes dropped) each,
/// east -> west first.
async fn counters(port: u16) -> Option<[(u64, u64); 2]> {
    let (code, body) =
        tokio::time::timeout(Duration::from_secs(5), http(port, "GET", "/metrics", ""))
            .await
            .ok()?;
    if code != 200 {
        return None;
    }
    let sample = |name: &str, direction: &str| pipeline_counter(&body, name, direction);
    let one = |d: &str| -> Option<(u64, u64)> {
        Some((
            sample("strait_two_way_applied_total", d)?,
            sample("strait_two_way_echoes_total", d)?,
        ))
    };
    Some([one("tw.east-west")?, one("tw.west-east")?])
}

async fn conflicts(c: &mongodb::Client) -> Vec<Document> {
    c.database("strait")
        .collection::<Document>("conflicts")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// The conflict records' document keys and incoming operations, sorted.
/// `[two_way.conflict_topic]` on `broker`.
fn conflict_topic(broker: &Broker) -> String {
    format!(
        "[two_way.conflict_topic]\nbrokers = \"{}\"\n",
        broker.bootstrap()
    )
}

/// Waits until topic `tw.conflicts` holds every conflict record of both clusters (repeats
/// allowed: it is at least once), each byte-identical to the stored one, keyed by its
/// namespace and document key, with the cluster where it lost in a header. Returns the
/// records read.
async fn assert_topic_has_every_conflict(
    broker: &Broker,
    a: &mongodb::Client,
    b: &mongodb::Client,
) -> Vec<Record> {
    let mut want: BTreeMap<Vec<u8>, (&str, RawDocumentBuf)> = BTreeMap::new();
    for (c, name) in [(a, "east"), (b, "west")] {
        for d in raw_docs(c, "strait", "conflicts").await {
            want.insert(d.get_binary("_id").unwrap().bytes.to_vec(), (name, d));
        }
    }
    let started = Instant::now();
    loop {
        let recs = broker
            .consume_all("tw.conflicts", want.len(), Duration::from_secs(10))
            .await;
        let mut got = BTreeMap::new();
        for r in &recs {
            let Bson::Document(d) = Bson::try_from(r.json()).unwrap() else {
                panic!("not a document: {r:?}");
            };
            let raw = RawDocumentBuf::try_from(&d).unwrap();
            got.insert(raw.get_binary("_id").unwrap().bytes.to_vec(), (r, raw));
        }
        let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
        if missing == 0 {
            for (id, (cluster, stored)) in &want {
                let (r, published) = &got[id];
                assert_eq!(
                    published.as_bytes(),
                    stored.as_bytes(),
                    "published {published:?} is not stored {stored:?}"
                );
                assert_eq!(
                    r.header("strait.cluster"),
                    Some(Some(cluster.as_bytes())),
                    "{r:?}"
                );
                let key: serde_json::Value =
                    serde_json::from_slice(r.key.as_deref().unwrap()).unwrap();
                assert_eq!(key["ns"], stored.get_str("ns").unwrap(), "{key}");
                let want_key = Bson::Document(
                    stored
                        .get_document("documentKey")
                        .unwrap()
                        .try_into()
                        .unwrap(),
                )
                .into_canonical_extjson();
                assert_eq!(key["documentKey"], want_key, "{key}");
            }
            return recs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{missing} of {} conflict records never reached the topic ({} records read)",
            want.len(),
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn conflict_keys(v: &[Document]) -> Vec<(i64, String)> {
    let mut k: Vec<(i64, String)> = v
        .iter()
        .map(|c| {
            (
                c.get_document("documentKey")
                    .unwrap()
                    .get_i64("_id")
                    .unwrap(),
                c.get_document("incoming")
                    .unwrap()
                    .get_str("op")
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    k.sort();
    k
}

async fn wait_both_identical(
    a: &mongodb::Client,
    b: &mongodb::Client,
    colls: &[&str],
    st: &Strait,
    timeout: Duration,
) {
    for c in colls {
        let deadline = Instant::now() + timeout;
        while !diff(a, ("tw", c), b, ("tw", c)).await.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let d = diff(a, ("tw", c), b, ("tw", c)).await;
        if !d.is_empty() {
            // What each cluster's change log and strait's records say about the first one.
            let key = d
                .iter()
                .find_map(|l| l.split("Int64(").nth(1))
                .and_then(|r| r.split(')').next())
                .and_then(|k| k.parse::<i64>().ok());
            let mut story = String::new();
            if let Some(k) = key {
                for (name, cl) in [("east", a), ("west", b)] {
                    let ops: Vec<Document> = cl.database("local").collection::<Document>("oplog.rs")
                        .find(doc! { "ns": format!("tw.{c}"), "$or": [{ "o._id": k }, { "o2._id": k }] })
                        .await.unwrap().try_collect().await.unwrap();
                    let rec: Vec<Document> = cl
                        .database("strait")
                        .collection::<Document>("versions")
                        .find(doc! { "id": k })
                        .await
                        .unwrap()
                        .try_collect()
                        .await
                        .unwrap();
                    story.push_str(&format!("\n{name} oplog for {k}:\n"));
                    for o in ops {
                        story.push_str(&format!(
                            "  {} {} wall={:?} lsid={:?} o={:?}\n",
                            o.get_str("op").unwrap_or("?"),
                            o.get_timestamp("ts")
                                .map(|t| format!("{}.{}", t.time, t.increment))
                                .unwrap_or_default(),
                            o.get("wall"),
                            o.get("lsid").is_some(),
                            o.get("o")
                        ));
                    }
                    story.push_str(&format!("{name} record: {rec:?}\n"));
                }
            }
            // The whole log, for a look afterwards.
            let kept = std::env::temp_dir().join(format!("strait-two-way-{c}-differs.log"));
            let _ = std::fs::write(&kept, st.log_text());
            panic!(
                "tw.{c} differs ({} differences; strait's log kept in {}): {:?}{story}\nlog tail:\n{}",
                d.len(),
                kept.display(),
                &d[..d.len().min(5)],
                st.log_text()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_sides_write_the_same_documents_through_kills_and_end_identical() {
    crash_loop(false).await;
}

/// The same workload with `loop_prevention = "origin_field"`: the applications stamp their
/// cluster's name on every write (as they must in that mode), strait on every write it makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_field_loop_prevention_through_kills_ends_identical() {
    crash_loop(true).await;
}

const ORIGIN: &str = "last_updater_region";

async fn crash_loop(origin_mode: bool) {
    let (sa, sb) = (Server::start(), Server::start());
    let (a, b) = (sa.client().await, sb.client().await);
    let items = a.database("tw").collection::<Document>("items");
    if origin_mode {
        for start in (0..4000).step_by(1000) {
            items
                .insert_many((start..start + 1000).map(|i| {
                    let mut d = varied_doc(i);
                    d.insert(ORIGIN, "east");
                    d
                }))
                .await
                .unwrap();
        }
    } else {
        insert_varied(&items, 4000).await;
    }
    let mut first = doc! { "_id": -1_i64 };
    if origin_mode {
        first.insert(ORIGIN, "east");
    }
    a.database("tw")
        .collection::<Document>("items_tx")
        .insert_one(first)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The sessions run also publishes its conflicts to Kafka: at least once through the kills.
    let broker = (!origin_mode).then(Broker::start);
    let cfg = write_config(
        dir.path(),
        "tw.toml",
        &two_way_config_with(
            &sa,
            &sb,
            port,
            "[full_sync]\nchunk_docs = 500\nbatch_docs = 100\n",
            &if origin_mode {
                "loop_prevention = \"origin_field\"".to_string()
            } else {
                conflict_topic(broker.as_ref().unwrap())
            },
        ),
    );
    let log = dir.path().join("log");

    // Writers on both clusters from the start (during the copy too), on the same _ids.
    let stop = Arc::new(AtomicBool::new(false));
    let done = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let mut writers = Vec::new();
    for (i, c) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, done) = (stop.clone(), done[i].clone());
        writers.push(tokio::spawn(async move {
            // Give the copy a head start on the empty side.
            tokio::time::sleep(Duration::from_millis(300 * i as u64)).await;
            let name = ["east", "west"][i];
            run_mixed_as(
                &c,
                "tw",
                "items",
                2200,
                u64::MAX,
                11 + i as u64,
                Some(stop),
                Some(done),
                true,
                origin_mode.then_some((ORIGIN, name)),
            )
            .await
        }));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut kills, mut copy_kills) = (0, 0);
    // At least six kills, two of them in the middle of the copy and two while streaming.
    while kills < 6 || copy_kills < 2 || kills - copy_kills < 2 {
        assert!(
            kills < 15,
            "could not land two kills in each phase:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let mut st = Strait::spawn(&cfg, &log);
        let wait = if copy_kills < 2 {
            // Soon after this run has started copying, well before the copy ends.
            wait_for(
                Duration::from_secs(60),
                "the copy to start",
                &st,
                || async {
                    let log = st.log_text();
                    log.matches("Two-way sync started").count() > kills
                        && log.contains("Full sync planned")
                },
            )
            .await;
            rng.random_range(150..500)
        } else {
            // Then while streaming: this run finishes the copy first.
            wait_for(
                Duration::from_secs(180),
                "the copy to finish",
                &st,
                || async { st.log_text().contains("Full sync finished") },
            )
            .await;
            rng.random_range(1500..4000)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let copying = !st.log_text().contains("Full sync finished");
        st.sigkill_running();
        kills += 1;
        copy_kills += copying as usize;
    }
    // The last run starts at once: the killed one may have left a transaction open, whose
    // locks block the writers until a strait ends it (SecantusDB never reaps it; mongod after
    // 60 s).
    let st = Strait::spawn(&cfg, &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let writes = [
        done[0].load(Ordering::Relaxed),
        done[1].load(Ordering::Relaxed),
    ];
    let started = Instant::now();
    wait_both_identical(
        &a,
        &b,
        &["items", "items_tx"],
        &st,
        Duration::from_secs(120),
    )
    .await;
    let converged = started.elapsed();

    // No ping-pong: once both sides match, nothing more is applied in either direction.
    let mut before = None;
    for _ in 0..50 {
        before = counters(port).await;
        if before.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = before.expect("status of both directions");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = counters(port).await.expect("status");
    assert_eq!(
        (before[0].0, before[1].0),
        (after[0].0, after[1].0),
        "writes kept flowing after both sides matched (ping-pong): {before:?} -> {after:?}"
    );
    // What this run applied in each direction is bounded by what the other side wrote: each
    // write is one change, a transaction two, and a replay after a kill applies at most
    // what was written. Changes shipped back and forth would soon pass it.
    assert!(
        after[0].0 <= 2 * writes[0] && after[1].0 <= 2 * writes[1],
        "applied {after:?} vs written {writes:?}"
    );
    wait_both_identical(&a, &b, &["items", "items_tx"], &st, Duration::from_secs(5)).await;

    // Every recorded conflict lost to a later (or tied, first-cluster) change of the other side.
    let (ca, cb) = (conflicts(&a).await, conflicts(&b).await);
    for (c, here) in ca
        .iter()
        .map(|c| (c, "east"))
        .chain(cb.iter().map(|c| (c, "west")))
    {
        let inc = c.get_document("incoming").unwrap();
        let cur = c.get_document("current").unwrap();
        assert_eq!(cur.get_str("origin").unwrap(), here, "{c}");
        assert_ne!(inc.get_str("origin").unwrap(), here, "{c}");
        let (ti, tc) = (
            inc.get_datetime("time").unwrap(),
            cur.get_datetime("time").unwrap(),
        );
        assert!(
            ti <= tc,
            "a conflict record whose incoming change was later: {c}"
        );
        assert!(inc.contains_key("doc") && cur.contains_key("doc"), "{c}");
    }
    let published = match &broker {
        Some(k) => assert_topic_has_every_conflict(k, &a, &b).await.len(),
        None => 0,
    };
    eprintln!(
        "two-way crash loop (origin field: {origin_mode}): {kills} kills ({copy_kills} in the copy), writes east {} west {}, converged {:.1} s after the restart, conflicts east {} west {} ({published} records on the topic), final run applied {:?}",
        writes[0], writes[1], converged.as_secs_f64(), ca.len(), cb.len(), after
    );
    drop(st);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_resolve_to_the_later_one_on_both_sides() {
    let (sa, sb) = (Server::start(), Server::start());
    let (a, b) = (sa.client().await, sb.client().await);
    let (ia, ib) = (
        a.database("tw").collection::<Document>("items"),
        b.database("tw").collection::<Document>("items"),
    );
    ia.insert_many((0..4_i64).map(|i| doc! { "_id": i, "v": 0_i32 }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start();
    let cfg = write_config(
        dir.path(),
        "tw.toml",
        &two_way_config_with(&sa, &sb, port, "", &conflict_topic(&broker)),
    );
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    assert_eq!(st.sigterm().code(), Some(0), "{}", st.log_text());

    // While strait is down: concurrent changes, the later one on the other side each time.
    ia.update_one(doc! { "_id": 0 }, doc! { "$set": { "v": 1, "by": "east" } })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ib.update_one(doc! { "_id": 0 }, doc! { "$set": { "v": 2, "by": "west" } })
        .await
        .unwrap();
    ib.update_one(doc! { "_id": 1 }, doc! { "$set": { "v": 1, "by": "west" } })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ia.replace_one(doc! { "_id": 1 }, doc! { "v": 2, "by": "east" })
        .await
        .unwrap();
    // An update racing a later delete: the delete wins and the update never brings it back.
    ia.update_one(doc! { "_id": 2 }, doc! { "$set": { "v": 1 } })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ib.delete_one(doc! { "_id": 2 }).await.unwrap();
    // A delete racing a later update: the update wins.
    ia.delete_one(doc! { "_id": 3 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ib.update_one(doc! { "_id": 3 }, doc! { "$set": { "v": 9 } })
        .await
        .unwrap();

    let st = Strait::spawn(&cfg, &log);
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    let docs = by_id(&ia).await;
    assert_eq!(
        docs,
        vec![
            doc! { "_id": 0_i64, "v": 2, "by": "west" },
            doc! { "_id": 1_i64, "v": 2, "by": "east" },
            doc! { "_id": 3_i64, "v": 9 },
        ],
        "{}",
        st.log_text()
    );
    // The losers, each on the cluster where it lost: east's changes of 0, 2 and 3 lost on
    // west, west's update of 1 lost on east.
    let (ca, cb) = (conflicts(&a).await, conflicts(&b).await);
    assert_eq!(
        conflict_keys(&ca),
        vec![(1, "update".to_string())],
        "east: {ca:?}"
    );
    assert_eq!(
        conflict_keys(&cb),
        vec![
            (0, "update".to_string()),
            (2, "update".to_string()),
            (3, "delete".to_string())
        ],
        "west: {cb:?}"
    );
    let lost = cb
        .iter()
        .find(|c| c.get_document("documentKey").unwrap().get_i64("_id").ok() == Some(0))
        .unwrap();
    assert_eq!(
        lost.get_document("incoming")
            .unwrap()
            .get_document("doc")
            .unwrap(),
        &doc! { "_id": 0_i64, "v": 1, "by": "east" }
    );
    assert_eq!(
        lost.get_document("current")
            .unwrap()
            .get_document("doc")
            .unwrap(),
        &doc! { "_id": 0_i64, "v": 2, "by": "west" }
    );

    // `strait conflicts ls` prints them, one JSON line each, with the cluster.
    let (code, out, err) = strait_cmd(
        &["conflicts", "ls", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines.iter().filter(|l| l["cluster"] == "west").count(),
        3,
        "{out}"
    );

    // The same records on the Kafka topic, read by pymongo's Extended JSON reader as they
    // are stored.
    let recs = assert_topic_has_every_conflict(&broker, &a, &b).await;
    assert_eq!(recs.len(), 4, "{recs:?}");
    let read = crate::consumers::run_consumer(
        "ext_json_records.py",
        &crate::consumers::values_file(dir.path(), "conflicts.jsonl", &recs),
        &[],
    );
    let mut stored: Vec<RawDocumentBuf> = raw_docs(&a, "strait", "conflicts").await;
    stored.extend(raw_docs(&b, "strait", "conflicts").await);
    let by_key = |v: &mut Vec<RawDocumentBuf>| {
        v.sort_by_key(|d| d.get_binary("_id").unwrap().bytes.to_vec())
    };
    let mut read = crate::consumers::ext_json_docs(&read);
    by_key(&mut stored);
    by_key(&mut read);
    crate::consumers::assert_same_docs("conflict records via pymongo", &read, &stored);
    drop(st);
}

/// `version_field`: the documents' own versions decide, not the order the writes happened in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_version_field_decides_conflicts() {
    let (sa, sb) = (Server::start(), Server::start());
    let (a, b) = (sa.client().await, sb.client().await);
    let (ia, ib) = (
        a.database("tw").collection::<Document>("items"),
        b.database("tw").collection::<Document>("items"),
    );
    ia.insert_many((0..3_i64).map(|i| doc! { "_id": i, "v": 0_i32, "ts": 0_i64 }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        "tw.toml",
        &two_way_config_with(&sa, &sb, port, "", "version_field = \"ts\""),
    );
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    assert_eq!(st.sigterm().code(), Some(0), "{}", st.log_text());

    // While strait is down, each pair written east first, west 20 ms later.
    let date = |y: i32| {
        bson::DateTime::builder()
            .year(y)
            .month(1)
            .day(1)
            .build()
            .unwrap()
    };
    // 0: east's field (a number) is later: east wins although west wrote last.
    ia.update_one(
        doc! { "_id": 0 },
        doc! { "$set": { "v": 1, "ts": 2_000_i64 } },
    )
    .await
    .unwrap();
    // 1: a date; west's is later.
    ia.update_one(
        doc! { "_id": 1 },
        doc! { "$set": { "v": 1, "ts": date(2029) } },
    )
    .await
    .unwrap();
    // 2: east replaces the document without the field: its change's wallTime is its version,
    // far later than west's field.
    ia.replace_one(doc! { "_id": 2 }, doc! { "v": 1 })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ib.update_one(
        doc! { "_id": 0 },
        doc! { "$set": { "v": 2, "ts": 1_000_i64 } },
    )
    .await
    .unwrap();
    ib.update_one(
        doc! { "_id": 1 },
        doc! { "$set": { "v": 2, "ts": date(2030) } },
    )
    .await
    .unwrap();
    ib.update_one(
        doc! { "_id": 2 },
        doc! { "$set": { "v": 2, "ts": 3_000_i64 } },
    )
    .await
    .unwrap();

    let st = Strait::spawn(&cfg, &log);
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    let docs = by_id(&ia).await;
    assert_eq!(
        docs,
        vec![
            doc! { "_id": 0_i64, "v": 1, "ts": 2_000_i64 },
            doc! { "_id": 1_i64, "v": 2, "ts": date(2030) },
            doc! { "_id": 2_i64, "v": 1 },
        ],
        "{}",
        st.log_text()
    );
    // West's changes of 0 and 2 lost on east; east's of 1 lost on west.
    let update = |id: i64| (id, "update".to_string());
    assert_eq!(
        conflict_keys(&conflicts(&a).await),
        vec![update(0), update(2)]
    );
    assert_eq!(conflict_keys(&conflicts(&b).await), vec![update(1)]);
    drop(st);
}

/// `checkpoint.lease` in a two-way pipeline: a second process stands by, takes over within
/// about the lease TTL when the first is SIGKILLed while both sides write, and both clusters
/// end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_a_two_way_pipeline() {
    let (sa, sb) = (Server::start(), Server::start());
    let (a, b) = (sa.client().await, sb.client().await);
    insert_varied(&a.database("tw").collection::<Document>("items"), 300).await;
    a.database("tw")
        .collection::<Document>("items_tx")
        .insert_one(doc! { "_id": -1_i64 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let leased = |port| {
        two_way_config(&sa, &sb, port, "").replace(
            "[checkpoint]\n",
            "[checkpoint]\nlease = true\nlease_ttl = \"3s\"\n",
        )
    };
    let cfg_a = write_config(dir.path(), "a.toml", &leased(free_port()));
    let cfg_b = write_config(dir.path(), "b.toml", &leased(free_port()));
    let mut first = Strait::spawn(&cfg_a, &dir.path().join("a.log"));
    wait_both_identical(&a, &b, &["items"], &first, Duration::from_secs(60)).await;
    let second = Strait::spawn(&cfg_b, &dir.path().join("b.log"));
    let sref = &second;
    wait_for(
        Duration::from_secs(20),
        "the second to stand by",
        sref,
        || async move { sref.log_text().contains("standing by") },
    )
    .await;
    assert!(
        !sref.log_text().contains("Two-way sync started"),
        "the standby started syncing:\n{}",
        sref.log_text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, c) in [a.clone(), b.clone()].into_iter().enumerate() {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            run_mixed_as(
                &c,
                "tw",
                "items",
                300,
                u64::MAX,
                21 + i as u64,
                Some(stop),
                None,
                true,
                None,
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.sigkill();
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "the standby to take over",
        sref,
        || async move { sref.log_text().contains("Lease acquired") },
    )
    .await;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let started = Instant::now();
    wait_both_identical(
        &a,
        &b,
        &["items", "items_tx"],
        sref,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        takeover < Duration::from_secs(3 + 4),
        "takeover took {takeover:?}"
    );
    eprintln!(
        "two-way failover: took over {:.1} s after the kill, converged {:.1} s after the writers stopped",
        takeover.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// A document strait deleted, then inserted and deleted again by the target's users, is as
/// absent as strait left it: its version must still come from those later local changes, or
/// an older insert from the other side brings it back on this side only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_insert_and_delete_after_strait_deleted_still_wins() {
    let (sa, sb) = (Server::start(), Server::start());
    let (a, b) = (sa.client().await, sb.client().await);
    let (ia, ib) = (
        a.database("tw").collection::<Document>("items"),
        b.database("tw").collection::<Document>("items"),
    );
    ia.insert_many((0..2_i64).map(|i| doc! { "_id": i, "v": 0_i32 }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "tw.toml",
        &two_way_config(&sa, &sb, free_port(), ""),
    );
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    // West deletes 0; strait deletes it on east and leaves a tombstone there.
    ib.delete_one(doc! { "_id": 0 }).await.unwrap();
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    assert_eq!(st.sigterm().code(), Some(0), "{}", st.log_text());

    // While strait is down: west inserts 0; later, east inserts and deletes it.
    ib.insert_one(doc! { "_id": 0_i64, "v": 1, "by": "west" })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ia.insert_one(doc! { "_id": 0_i64, "v": 2, "by": "east" })
        .await
        .unwrap();
    ia.delete_one(doc! { "_id": 0 }).await.unwrap();

    let st = Strait::spawn(&cfg, &log);
    wait_both_identical(&a, &b, &["items"], &st, Duration::from_secs(60)).await;
    // East's delete is the last change: gone on both sides, and west's insert lost on east.
    assert_eq!(
        by_id(&ia).await,
        vec![doc! { "_id": 1_i64, "v": 0 }],
        "{}",
        st.log_text()
    );
    assert_eq!(
        conflict_keys(&conflicts(&a).await),
        vec![(0, "insert".to_string())]
    );
}
