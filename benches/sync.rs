//! End-to-end throughput harness (not part of the test run): `benches/run.sh`.
//!
//! Starts two local SecantusDB servers and reports, as ratios against raw limits measured in
//! the same run on the same servers:
//! - full sync of user-like documents with 7 secondary indexes (one unique) vs a raw
//!   `insert_many` of the same documents into the same target followed by the server building
//!   the same indexes (ratio to insert + build, and to insert alone), repeated
//!   `BENCH_FULL_RUNS` times, each run with its own raw measurement;
//! - incremental apply rate vs the writers' own rate, and the time from writer stop until the
//!   target holds everything written (catch-up time), plus the time until strait's own
//!   `lag_seconds` (HTTP API) is below 1 s;
//! - backlog catch-up: a one-client mixed backlog of `BENCH_BACKLOG_OPS` (20000) operations
//!   (with transactions) on user-like documents with 7 indexes, at each size of
//!   `BENCH_BACKLOG_SIZES` ("50000,200000"), against the raw apply of the same writes
//!   (`benches/support/backlog.rs`);
//!   and again with the `email` index not unique (`BENCH_BACKLOG_UNIQUE=only` skips that), for
//!   the cost of a unique index; then the lag of live writes, and a byte-for-byte comparison;
//! - peak RSS of strait while copying `BENCH_RSS_DOCS` documents.
//!
//! Sizes (0 skips a part): BENCH_DOCS (200000), BENCH_OPS (100000), BENCH_RSS_DOCS (1000000).
//! Other knobs:
//! - BENCH_FULL_RUNS (1): full-sync repetitions;
//! - BENCH_FULL_COLLECTIONS (4): collections the full sync's documents are spread over;
//! - BENCH_WRITERS (8): concurrent incremental writers, each on its own key range;
//! - BENCH_CACHE (6G): `--cache-size` of each server (2G made SecantusDB fail with InternalError
//!   while loading 1,000,000 documents);
//! - BENCH_LOAD_BATCH (1000): documents per `insert_many` when loading;
//! - BENCH_CHUNK_DOCS (100000000), BENCH_PARALLELISM, BENCH_COPY_BATCH: the pipeline's
//!   `[full_sync]` chunk_docs, parallelism and batch_docs (unset = strait's default);
//! - BENCH_RSS_TRACE (unset): print strait's RSS every 5 s while it copies;
//! - BENCH_LOG_DIR: keep the servers' logs there (default: discarded);
//! - BENCH_APPLY (unset): lines of the backlog pipeline's `[apply]` table, e.g. `queue_depth = 250`
//!   (`\n` between lines);
//! - BENCH_STREAM (unset): lines of the backlog pipeline's `[stream]` table, e.g.
//!   `update_mode = "delta"`;
//! - STRAIT_BIN: the strait binary to run (default: the one cargo built for this bench).
//!
//! Collections are copied as one `_id` range each by default: SecantusDB answers every `_id`
//! range query with a full collection scan (even on an IXSCAN plan), so splitting a collection
//! into N ranges costs N scans there, while on mongod ranges are index scans.
//!
//! The harness retries its own loading writes when SecantusDB answers InternalError (code 1),
//! which it does under memory pressure: at most `LOAD_RETRIES` times per batch, unordered, with
//! duplicate-key errors of the retried batch (documents the failed attempt did insert) ignored.
//! Retries are counted and printed.

#[path = "support/backlog.rs"]
mod backlog;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/secantus.rs"]
mod secantus;

use harness::*;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::Client;

const LOAD_RETRIES: u32 = 10;

/// The server error code of a failed write or command, if there is one. For `insert_many`, the
/// first write error whose code is not 11000 (duplicate key), else 11000.
fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => {
            let codes: Vec<i32> = m.write_errors.iter().flatten().map(|w| w.code).collect();
            codes
                .iter()
                .copied()
                .find(|c| *c != 11000)
                .or(m.write_concern_error.as_ref().map(|w| w.code))
                .or(codes.first().copied())
        }
        _ => None,
    }
}

/// Errors the harness retries in its own writes: InternalError (code 1, SecantusDB under memory
/// pressure), write conflicts, and dropped connections.
fn retryable(e: &mongodb::error::Error) -> bool {
    matches!(error_code(e), Some(1 | 112))
        || matches!(
            e.kind.as_ref(),
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
        )
}

/// Inserts one batch; on a retryable error inserts it again, unordered, ignoring duplicate-key
/// errors (the documents the failed attempt did insert). Returns the number of retries.
async fn insert_batch(
    c: &mongodb::Collection<Document>,
    docs: Vec<Document>,
    unordered: bool,
) -> u32 {
    let mut retries = 0;
    let mut backoff = Duration::from_millis(200);
    let mut r = c.insert_many(&docs).ordered(!unordered).await;
    loop {
        match r {
            Ok(_) => return retries,
            Err(e) if retries > 0 && error_code(&e) == Some(11000) => return retries,
            Err(e) if retryable(&e) && retries < LOAD_RETRIES => {
                retries += 1;
                eprintln!(
                    "  load into {}: {} (code {:?}); retry {retries}/{LOAD_RETRIES} in {backoff:?}",
                    c.namespace(),
                    short(&e),
                    error_code(&e)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                r = c.insert_many(&docs).ordered(false).await;
            }
            Err(e) => panic!("loading {}: {e}", c.namespace()),
        }
    }
}

fn short(e: &mongodb::error::Error) -> String {
    let s = e.to_string();
    s.chars().take(200).collect()
}

/// Loads `n` documents into `db.docs` in batches; returns (elapsed, retries). `like_strait`:
/// with the write options of strait's copy (unordered, `w: "majority"`) instead of the
/// driver's defaults (ordered, the server's default write concern).
async fn load(
    client: &Client,
    db: &str,
    n: i64,
    like_strait: bool,
    make: fn(i64) -> Document,
) -> (Duration, u32) {
    load_into(client, db, "docs", 0..n, like_strait, make).await
}

/// Loads the documents `ids` into `db.coll`, as [`load`] does.
async fn load_into(
    client: &Client,
    db: &str,
    coll: &str,
    ids: std::ops::Range<i64>,
    like_strait: bool,
    make: fn(i64) -> Document,
) -> (Duration, u32) {
    let n = ids.end;
    let batch = env_u64("BENCH_LOAD_BATCH", 1000) as i64;
    let mut opts = mongodb::options::CollectionOptions::default();
    if like_strait {
        opts.write_concern = Some(mongodb::options::WriteConcern::majority());
    }
    let c = client
        .database(db)
        .collection_with_options::<Document>(coll, opts);
    let t = Instant::now();
    let mut retries = 0;
    let mut next_report = ids.start + 200_000;
    for start in ids.step_by(batch as usize) {
        retries += insert_batch(
            &c,
            (start..(start + batch).min(n)).map(make).collect(),
            like_strait,
        )
        .await;
        if start + batch >= next_report {
            eprintln!(
                "  loaded {} of {n} into {db} in {:.0} s",
                (start + batch).min(n),
                t.elapsed().as_secs_f64()
            );
            next_report += 200_000;
        }
    }
    (t.elapsed(), retries)
}

/// The `[full_sync]` table of the bench's pipelines.
fn full_sync_table() -> String {
    let mut t = format!(
        "[full_sync]\nchunk_docs = {}\n",
        env_u64("BENCH_CHUNK_DOCS", 100_000_000)
    );
    if let Some(p) = env_opt("BENCH_PARALLELISM") {
        t += &format!("parallelism = {p}\n");
    }
    if let Some(b) = env_opt("BENCH_COPY_BATCH") {
        t += &format!("batch_docs = {b}\n");
    }
    t
}

fn config(
    dir: &std::path::Path,
    src: u16,
    dst: u16,
    mode: &str,
    db: &str,
    run: u64,
    api: Option<u16>,
) -> std::path::PathBuf {
    // A fresh pipeline id per run: the checkpoint (on the sink) of an earlier run would resume.
    let p = dir.join(format!("{mode}-{db}-{run}.toml"));
    let mut text = format!(
        "id = \"bench-{db}-{run}\"\nmode = \"{mode}\"\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[scope]\ninclude = [\"{db}.*\"]\n{}",
        uri(src),
        uri(dst),
        full_sync_table()
    );
    if let Some(port) = api {
        text += &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n");
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs a full-sync pipeline to completion; returns (elapsed, peak RSS in KB).
fn run_full(cfg: &std::path::Path) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = strait(cfg, "sync");
    let pid = child.id();
    let mut peak = 0;
    let trace = env_opt("BENCH_RSS_TRACE").is_some();
    let mut traced = Instant::now();
    loop {
        let rss = peak_rss_kb(pid);
        peak = peak.max(rss);
        if trace && traced.elapsed() >= Duration::from_secs(5) {
            traced = Instant::now();
            println!(
                "  {:.0} s: strait RSS {} MB",
                t.elapsed().as_secs_f64(),
                rss / 1024
            );
        }
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success());
            return (t.elapsed(), peak);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::main]
async fn main() {
    let docs = env_u64("BENCH_DOCS", 200_000) as i64;
    let full_runs = env_u64("BENCH_FULL_RUNS", 1).max(1);
    let ops = env_u64("BENCH_OPS", 100_000);
    let writers = env_u64("BENCH_WRITERS", 8).max(1);
    let rss_docs = env_u64("BENCH_RSS_DOCS", 1_000_000) as i64;
    let dir = tempfile::tempdir().unwrap();
    println!(
        "strait: {}; pipeline {}",
        strait_bin(),
        full_sync_table().replace('\n', " ")
    );
    // Free ports: a leftover server on a fixed port would be reused with stale data.
    let (src, dst) = (start_mongo("source"), start_mongo("target"));
    let (s, d) = (
        Client::with_uri_str(harness_uri(src.port)).await.unwrap(),
        Client::with_uri_str(harness_uri(dst.port)).await.unwrap(),
    );

    // 1. Full sync vs raw insert_many of the same documents into the same target, then the
    // same indexes built by the server: user-like documents with 7 secondary indexes.
    if docs > 0 {
        let indexes = user_indexes();
        // Users' databases have several collections: the documents are spread over
        // `BENCH_FULL_COLLECTIONS` of them, each with the 7 indexes.
        let colls = env_u64("BENCH_FULL_COLLECTIONS", 4).max(1) as i64;
        let names: Vec<String> = (0..colls).map(|k| format!("docs{k}")).collect();
        let part = |k: i64| (k * docs / colls)..((k + 1) * docs / colls);
        // Raw: each collection loaded, then its indexes built, one after the other (a
        // single client, as a restore would); returns (insert time, build time, retries).
        let raw_load = |c: Client, db: &'static str, like_strait: bool| {
            let names = names.clone();
            let indexes = indexes.clone();
            async move {
                let (mut ins, mut idx, mut retries) = (Duration::ZERO, Duration::ZERO, 0);
                for (k, name) in names.iter().enumerate() {
                    let (t, r) =
                        load_into(&c, db, name, part(k as i64), like_strait, doc_user).await;
                    ins += t;
                    retries += r;
                    idx += build_indexes(&c, db, name, &indexes).await;
                }
                (ins, idx, retries)
            }
        };
        let (_, _, r) = raw_load(s.clone(), "full", false).await;
        if r > 0 {
            println!("  source load: {r} retried batches");
        }
        for run in 1..=full_runs {
            // The same target state for both measurements: neither database present.
            drop_db(&d, "full").await;
            let (raw, raw_idx, raw_retries) = raw_load(d.clone(), "raw", false).await;
            drop_db(&d, "raw").await;
            let (raw2, raw2_idx, raw2_retries) = raw_load(d.clone(), "raw", true).await;
            drop_db(&d, "raw").await;
            let (copy, peak) = run_full(&config(
                dir.path(),
                src.port,
                dst.port,
                "full",
                "full",
                run,
                None,
            ));
            for (k, name) in names.iter().enumerate() {
                let copied = d
                    .database("full")
                    .collection::<Document>(name)
                    .count_documents(doc! {})
                    .await
                    .unwrap();
                let want = part(k as i64);
                assert_eq!(
                    copied,
                    (want.end - want.start) as u64,
                    "documents in full.{name} on the target after the copy"
                );
                let built = d
                    .database("full")
                    .run_command(doc! { "listIndexes": name.as_str() })
                    .await
                    .unwrap()
                    .get_document("cursor")
                    .and_then(|c| c.get_array("firstBatch"))
                    .map(|b| b.len())
                    .unwrap_or(0);
                assert_eq!(
                    built,
                    indexes.len() + 1,
                    "indexes on full.{name} on the target after the copy"
                );
            }
            let rate = |t: Duration| docs as f64 / t.as_secs_f64();
            let c = copy.as_secs_f64();
            println!("full sync run {run}/{full_runs}: {docs} user-like docs (~960 B, 1 in 1,000 ~100 KB) in {colls} collections, each with 7 secondary indexes (one unique), in {c:.1} s = {:.0} docs/s, indexes included, peak RSS {} MB",
                rate(copy), peak / 1024);
            println!("  raw insert_many (ordered, default write concern) {:.1} s = {:.0} docs/s ({raw_retries} retried batches), + index builds {:.1} s: ratio to insert + build {:.2} (goal >= 1.0), to insert alone {:.2}",
                raw.as_secs_f64(), rate(raw), raw_idx.as_secs_f64(), (raw + raw_idx).as_secs_f64() / c, raw.as_secs_f64() / c);
            println!("  raw insert_many with strait's write options (unordered, w: majority) {:.1} s = {:.0} docs/s ({raw2_retries} retried), + index builds {:.1} s: ratio to insert + build {:.2}, to insert alone {:.2}",
                raw2.as_secs_f64(), rate(raw2), raw2_idx.as_secs_f64(), (raw2 + raw2_idx).as_secs_f64() / c, raw2.as_secs_f64() / c);
        }
        drop_db(&d, "full").await;
        drop_db(&s, "full").await;
    }

    // 2. Incremental: `writers` concurrent writers, as fast as they can, applied while they run.
    if ops > 0 {
        let coll = s.database("inc").collection::<Document>("docs");
        coll.insert_one(doc_1k(-1_000_000)).await.unwrap();
        for w in 0..writers as i64 {
            coll.insert_one(doc! { "_id": -(w + 1), "n": 0i64 })
                .await
                .unwrap();
        }
        let api = free_port();
        let cfg = config(
            dir.path(),
            src.port,
            dst.port,
            "full+incremental",
            "inc",
            1,
            Some(api),
        );
        let mut child = strait(&cfg, "sync");
        let pid = child.id();
        let target = d.database("inc").collection::<Document>("docs");
        while target.count_documents(doc! {}).await.unwrap() < 1 + writers {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the copy finish and the stream start (the API reports `streaming`).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let per = ops / writers;
        for w in 0..writers {
            let n = per + u64::from(w < ops % writers);
            let w = w as i64;
            tasks.spawn(mixed_writer(
                coll.clone(),
                format!("writer {w}"),
                (w + 1) * 100_000_000,
                -(w + 1),
                None,
                n,
                done.clone(),
            ));
        }
        // Progress and the largest lag seen, every 5 s.
        let mut max_lag: f64 = 0.0;
        let mut last = Instant::now();
        let mut incs = vec![];
        loop {
            tokio::select! {
                r = tasks.join_next() => match r {
                    Some(r) => incs.push(r.unwrap()),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some(l) = tokio::task::spawn_blocking(move || api_status(api).and_then(|v| v.get("lag_seconds")?.as_f64())).await.unwrap() {
                        max_lag = max_lag.max(l);
                    }
                    if last.elapsed() > Duration::from_secs(30) {
                        last = Instant::now();
                        eprintln!("  {} ops written in {:.0} s; strait lag {:.0} s", done.load(Relaxed), t.elapsed().as_secs_f64(), max_lag);
                    }
                }
            }
        }
        let write = t.elapsed();
        let stop = Instant::now();
        coll.insert_one(doc! { "_id": "sentinel" }).await.unwrap();
        // Caught up: the sentinel, every writer's counter and the document count match the source.
        let expected_count = coll.count_documents(doc! {}).await.unwrap();
        let counters: i64 = incs.iter().sum();
        let mut lag_below_1s: Option<Duration> = None;
        let caught_up = loop {
            if lag_below_1s.is_none() {
                if let Some(l) = tokio::task::spawn_blocking(move || {
                    api_status(api).and_then(|v| v.get("lag_seconds")?.as_f64())
                })
                .await
                .unwrap()
                {
                    if l < 1.0 {
                        lag_below_1s = Some(stop.elapsed());
                    }
                }
            }
            let sentinel = target
                .find_one(doc! { "_id": "sentinel" })
                .await
                .unwrap()
                .is_some();
            if sentinel {
                let mut sum = 0;
                let mut cur = target
                    .find(doc! { "_id": { "$lt": 0, "$gt": -1000 } })
                    .await
                    .unwrap();
                while cur.advance().await.unwrap() {
                    sum += cur.deserialize_current().unwrap().get_i64("n").unwrap_or(0);
                }
                if sum == counters
                    && target.count_documents(doc! {}).await.unwrap() == expected_count
                {
                    break stop.elapsed();
                }
            }
            if stop.elapsed() > Duration::from_secs(600) {
                panic!("target not caught up 600 s after the writers stopped");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let total = t.elapsed();
        // lag_seconds counts whole seconds of cluster time: it may reach < 1 s a little later.
        while lag_below_1s.is_none() && stop.elapsed() < caught_up + Duration::from_secs(10) {
            if let Some(l) = tokio::task::spawn_blocking(move || {
                api_status(api).and_then(|v| v.get("lag_seconds")?.as_f64())
            })
            .await
            .unwrap()
            {
                if l < 1.0 {
                    lag_below_1s = Some(stop.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let peak = peak_rss_kb(pid);
        sigterm(&mut child);
        println!("incremental: {ops} mixed single-document ops (insert, $set, $inc, $push, replace, delete) by {writers} concurrent writers in {:.1} s ({:.0} ops/s, the writers' limit); all applied within {:.1} s of the start ({:.0} ops/s, ratio {:.2}); catch-up after writer stop {:.2} s (goal < 2 s); strait lag_seconds < 1 s at {}; largest lag_seconds seen while writing {:.0} s; strait peak RSS {} MB",
            write.as_secs_f64(), ops as f64 / write.as_secs_f64(), total.as_secs_f64(), ops as f64 / total.as_secs_f64(),
            write.as_secs_f64() / total.as_secs_f64(), caught_up.as_secs_f64(),
            lag_below_1s.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "never seen".into()),
            max_lag, peak / 1024);
        drop_db(&s, "inc").await;
        drop_db(&d, "inc").await;
    }

    // 3. Backlog catch-up against the raw apply of the same writes, at each collection size.
    let backlog_ops = env_u64("BENCH_BACKLOG_OPS", 20_000);
    if backlog_ops > 0 {
        let sizes = env_opt("BENCH_BACKLOG_SIZES").unwrap_or_else(|| "50000,200000".into());
        for size in sizes
            .split(',')
            .filter_map(|v| v.trim().parse::<i64>().ok())
        {
            let run = |unique| {
                backlog::run(
                    &s,
                    &d,
                    src.port,
                    dst.port,
                    dir.path(),
                    size,
                    backlog_ops,
                    unique,
                )
            };
            let with = run(true).await;
            if env_str("BENCH_BACKLOG_UNIQUE", "compare") == "compare" {
                let without = run(false).await;
                println!(
                    "backlog at {size} docs: catch-up with the unique email index {with:.0} writes/s, without {without:.0}: ratio {:.2} (goal >= 0.8)",
                    with / without
                );
            }
        }
    }

    // 4. Peak RSS while copying many documents.
    if rss_docs > 0 {
        let (load_t, retries) = load(&s, "rss", rss_docs, false, doc_1k).await;
        println!(
            "  loaded {rss_docs} docs into the source in {:.0} s ({retries} retried batches)",
            load_t.as_secs_f64()
        );
        let (copy, peak) = run_full(&config(
            dir.path(),
            src.port,
            dst.port,
            "full",
            "rss",
            1,
            None,
        ));
        let copied = d
            .database("rss")
            .collection::<Document>("docs")
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(
            copied, rss_docs as u64,
            "documents on the target after the copy"
        );
        println!("memory: copying {rss_docs} docs took {:.1} s ({:.0} docs/s); strait peak RSS {} MB (goal < 64 MB)",
            copy.as_secs_f64(), rss_docs as f64 / copy.as_secs_f64(), peak / 1024);
    }
}
