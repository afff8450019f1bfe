//! Kafka throughput harness (not part of the test run): `BENCH_ONLY=kafka benches/run.sh`.
//!
//! Starts two local SecantusDB servers (source, target) and a Tansu broker (in-memory), and
//! reports, as ratios against the raw rate of the same client library measured in the same run
//! on the same servers:
//! - MongoDB -> Kafka, snapshot: `BENCH_KAFKA_DOCS` user-like documents copied by a capture
//!   pipeline (`mode = "full+incremental"`) into `cdc.bench.docs`, timed from process start
//!   until a reader of the topic (no group, from the beginning) has counted every record (high
//!   watermarks cannot be used: Tansu's run short of the last batch), and again from its first
//!   record in the topic (without the process's start). Raw references: the same
//!   records (read back from the topic) produced again with an rdkafka `FutureProducer`
//!   configured like strait's (idempotent, `acks=all`, same compression and linger) to a fresh
//!   topic with the same partition count; and a raw `find` of the source collection pipelined
//!   with that produce (the read and the produce strait has to do, without the encoding);
//! - MongoDB -> Kafka, streaming: with the capture caught up, `BENCH_KAFKA_OPS` single-document
//!   writes (alternately an insert of a new ~1 KB document and a `$set` on it) by
//!   `BENCH_KAFKA_WRITERS` concurrent writers into `bench.stream`; the rate at which all their
//!   events are in `cdc.bench.stream` vs the writers' own rate, and the catch-up time after
//!   the writers stop;
//! - Kafka -> MongoDB: an apply pipeline (consumer group) from `cdc.bench.docs` into the empty
//!   target, timed from process start until strait's `GET /status` counts every event applied
//!   (then the target's document count is checked). Raw references: an rdkafka consumer
//!   subscribing with a fresh group and strait's consumer settings, reading the same topic
//!   (events/s, timed from client creation, so it includes the group join like strait);
//!   `insert_many` of the same documents into an empty database of the target (docs/s; strait
//!   writes snapshot records as unordered inserts-if-absent); and, for scale, the write strait
//!   sends for a change event that is not a snapshot insert (an ordered `update` command of
//!   replacement upserts by `_id`, `w: "majority"`, `BENCH_KAFKA_APPLY_BATCH` per command);
//! - CPU of each process per phase (% of one core, from /proc/<pid>/stat) and the peak RSS
//!   (VmHWM) of each strait process.
//!
//! Prints a markdown table at the end.
//!
//! Sizes (0 skips the part): BENCH_KAFKA_DOCS (100000), BENCH_KAFKA_OPS (20000).
//! Other knobs:
//! - BENCH_KAFKA_WRITERS (4): concurrent streaming writers;
//! - BENCH_KAFKA_PARTITIONS (4): `topic_partitions` of the capture, and of the raw topics;
//! - BENCH_KAFKA_FORMAT (change-event): `format` of both pipelines;
//! - BENCH_KAFKA_COMPRESSION (zstd), BENCH_KAFKA_LINGER_MS (5): the capture's producer settings,
//!   used by the raw producer too;
//! - BENCH_KAFKA_APPLY_BATCH (500, strait's `apply.batch_docs` default): upserts per command
//!   of the raw upsert reference, and when set also the apply pipeline's `apply.batch_docs`;
//! - BENCH_KAFKA_APPLY_LANES: the apply pipeline's `apply.lanes` (unset = strait's default);
//! - BENCH_KAFKA_APPLY_QUEUE, BENCH_KAFKA_APPLY_INFLIGHT_MIB: its `apply.queue_depth` and
//!   `apply.max_inflight_mib` (unset = strait's defaults);
//! - BENCH_KAFKA_APPLY_SOURCE: extra lines for the apply's `[source]` table (e.g. `options`);
//! - BENCH_CACHE (6G): `--cache-size` of each SecantusDB server;
//! - BENCH_KAFKA_DOC (user): the snapshot's documents, `user` (benches/support/harness.rs
//!   `doc_user`, ~960 B, as the sync bench) or `1k` (a ~1 KB document, mostly one repeated
//!   character, which zstd shrinks ~20 times);
//! - BENCH_LOAD_BATCH (1000): documents per `insert_many` when loading and in the raw insert;
//! - BENCH_CHUNK_DOCS (100000000), BENCH_PARALLELISM, BENCH_COPY_BATCH: the capture's
//!   `[full_sync]` chunk_docs, parallelism and batch_docs (unset = strait's default; one chunk
//!   per collection by default, see benches/sync.rs on SecantusDB range scans);
//! - BENCH_LOG_DIR: keep the servers' logs there (default: discarded);
//! - STRAIT_BIN: the strait binary (default: the one cargo built for this bench);
//! - STRAIT_SECANTUSD (set by benches/run.sh), STRAIT_TANSU (default
//!   ~/.cache/strait/tansu/bin/tansu).

#[path = "support/harness.rs"]
mod harness;
#[path = "support/secantus.rs"]
mod secantus;

use harness::*;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::Client;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

const LOAD_RETRIES: u32 = 10;
const TOPIC: &str = "cdc.bench.docs";
const STREAM_TOPIC: &str = "cdc.bench.stream";

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

/// InternalError (SecantusDB under memory pressure), write conflicts, dropped connections.
fn retryable(e: &mongodb::error::Error) -> bool {
    matches!(error_code(e), Some(1 | 112))
        || matches!(
            e.kind.as_ref(),
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
        )
}

/// Inserts one batch; on a retryable error again, unordered, ignoring duplicate keys (what the
/// failed attempt did insert). Returns the number of retries.
async fn insert_batch(c: &mongodb::Collection<Document>, docs: Vec<Document>) -> u32 {
    let mut retries = 0;
    let mut backoff = Duration::from_millis(200);
    let mut r = c.insert_many(&docs).await;
    loop {
        match r {
            Ok(_) => return retries,
            Err(e) if retries > 0 && error_code(&e) == Some(11000) => return retries,
            Err(e) if retryable(&e) && retries < LOAD_RETRIES => {
                retries += 1;
                eprintln!("  load into {}: {e}; retry {retries}", c.namespace());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                r = c.insert_many(&docs).ordered(false).await;
            }
            Err(e) => panic!("loading {}: {e}", c.namespace()),
        }
    }
}

/// Document `i` of the snapshot: user-like by default (`doc_user`: nested documents, arrays,
/// Decimal128, dates; one in 1,000 ~100 KB), which compress like real data; `BENCH_KAFKA_DOC=1k`
/// gives the older ~1 KB document that is mostly one repeated character.
fn bench_doc(i: i64) -> Document {
    if one_k_docs() {
        doc_1k(i)
    } else {
        doc_user(i)
    }
}

/// Whether the snapshot's documents are the older ~1 KB ones (`BENCH_KAFKA_DOC=1k`).
fn one_k_docs() -> bool {
    static ONE_K: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONE_K.get_or_init(|| env_str("BENCH_KAFKA_DOC", "user") == "1k")
}

/// Loads `n` documents into `db.coll` with sequential `insert_many`s; returns (elapsed, retries).
async fn load(client: &Client, db: &str, coll: &str, n: i64) -> (Duration, u32) {
    let batch = env_u64("BENCH_LOAD_BATCH", 1000).max(1) as i64;
    let c = client.database(db).collection::<Document>(coll);
    let t = Instant::now();
    let mut retries = 0;
    for start in (0..n).step_by(batch as usize) {
        retries += insert_batch(&c, (start..(start + batch).min(n)).map(bench_doc).collect()).await;
    }
    (t.elapsed(), retries)
}

/// The write strait's MongoDB sink sends for snapshot insert events: ordered `update`
/// commands of replacement upserts by `_id`, `w: "majority"`.
async fn upsert_load(client: &Client, db: &str, n: i64) -> Duration {
    let batch = env_u64("BENCH_KAFKA_APPLY_BATCH", 500).max(1) as i64;
    let database = client.database(db);
    let t = Instant::now();
    for start in (0..n).step_by(batch as usize) {
        let updates: Vec<Document> = (start..(start + batch).min(n))
            .map(|i| doc! { "q": { "_id": i }, "u": bench_doc(i), "upsert": true })
            .collect();
        let reply = database
            .run_command(doc! {
                "update": "docs",
                "updates": updates,
                "ordered": true,
                "writeConcern": { "w": "majority" },
            })
            .await
            .unwrap_or_else(|e| panic!("raw upsert into {db}: {e}"));
        assert!(
            !reply.contains_key("writeErrors"),
            "raw upsert into {db}: {reply}"
        );
    }
    t.elapsed()
}

/// One streaming writer: alternately inserts a new ~1 KB document of its own key range and
/// `$set`s a field of it, each a separate write (one change event each).
async fn writer(coll: mongodb::Collection<Document>, w: i64, ops: u64, done: Arc<AtomicU64>) {
    let base = (w + 1) * 100_000_000;
    for i in 0..ops {
        let key = base + (i / 2) as i64;
        let r = if i % 2 == 0 {
            coll.insert_one(doc_1k(key)).await.map(|_| ())
        } else {
            coll.update_one(
                doc! { "_id": key },
                doc! { "$set": { "n": i as i64, "s2": "set" } },
            )
            .await
            .map(|_| ())
        };
        if let Err(e) = r {
            panic!("writer {w}, op {i}: {e}");
        }
        done.fetch_add(1, Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka.

/// One record as read back: key, value, headers.
#[derive(Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn base_config(bs: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bs).set("log_level", "3");
    c
}

/// Counts the records of a topic as they arrive: a consumer without group membership
/// (`assign`, every partition from the beginning) on its own thread. High watermarks cannot
/// be used: Tansu answers ListOffsets(latest) with the base offset of a partition's last
/// batch, not the offset after its last record.
struct Counter {
    count: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    fn start(bs: &str, topic: &str) -> Counter {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (bs, topic, n, st) = (
            bs.to_string(),
            topic.to_string(),
            count.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let c: BaseConsumer = base_config(&bs)
                .set("group.id", "bench-counter")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "100")
                .create()
                .unwrap();
            // Wait for the topic (created by strait), then read every partition.
            let parts = loop {
                if st.load(Relaxed) {
                    return;
                }
                if let Ok(md) = c.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                    if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                        if t.error().is_none() && !t.partitions().is_empty() {
                            break t.partitions().len() as i32;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..parts {
                tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            while !st.load(Relaxed) {
                match c.poll(Duration::from_millis(50)) {
                    Some(Ok(_)) => {
                        n.fetch_add(1, Relaxed);
                    }
                    Some(Err(e)) => eprintln!("  counter on {topic}: {e}"),
                    None => {}
                }
            }
        });
        Counter {
            count,
            stop,
            thread: Some(thread),
        }
    }

    fn get(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn create_topic(bs: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = base_config(bs).create().unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    for r in res {
        if let Err((t, e)) = r {
            panic!("create topic {t}: {e:?}");
        }
    }
}

/// Reads `n` records of `topic` as a group member with strait's consumer settings, timed from
/// client creation. Returns (records, time to the first record, time to the last).
fn group_consume(bs: &str, topic: &str, group: &str, n: usize) -> (Vec<Rec>, Duration, Duration) {
    let t = Instant::now();
    let c: BaseConsumer = base_config(bs)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "600")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.message.max.bytes", (17 * 1024 * 1024).to_string())
        .set("partition.assignment.strategy", "range,roundrobin")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut first = None;
    while out.len() < n {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "raw consumer read {} of {n} records of {topic}",
            out.len()
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(|| t.elapsed());
                out.push(Rec {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            Some(Err(e)) => eprintln!("  raw consumer on {topic}: {e}"),
            None => {}
        }
    }
    let all = t.elapsed();
    (out, first.unwrap_or(all), all)
}

/// A producer configured like strait's Kafka sink.
fn producer(bs: &str) -> FutureProducer {
    base_config(bs)
        .set(
            "compression.type",
            env_str("BENCH_KAFKA_COMPRESSION", "zstd"),
        )
        .set("linger.ms", env_u64("BENCH_KAFKA_LINGER_MS", 5).to_string())
        .set("message.timeout.ms", "0")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap()
}

/// Hands one record to the producer, waiting while its queue is full.
async fn enqueue(p: &FutureProducer, topic: &str, r: &Rec) -> DeliveryFuture {
    let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(k) = &r.key {
        fr = fr.key(k.as_slice());
    }
    if let Some(v) = &r.value {
        fr = fr.payload(v.as_slice());
    }
    if !r.headers.is_empty() {
        let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            h = h.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            });
        }
        fr = fr.headers(h);
    }
    loop {
        match p.send_result(fr) {
            Ok(f) => return f,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                fr = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => panic!("produce to {topic}: {e}"),
        }
    }
}

/// Waits for deliveries, in order; panics on a failed one.
async fn delivered(futs: Vec<DeliveryFuture>, topic: &str) {
    for f in futs {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("delivery to {topic}: {e}"),
            Err(_) => panic!("delivery to {topic} canceled"),
        }
    }
}

/// Produces `recs` to `topic` (idempotent, acks=all, like strait); timed from producer creation
/// until every record is acknowledged.
async fn raw_produce(bs: &str, topic: &str, recs: &[Rec]) -> Duration {
    let t = Instant::now();
    let p = producer(bs);
    let mut futs = Vec::with_capacity(recs.len());
    for r in recs {
        futs.push(enqueue(&p, topic, r).await);
    }
    delivered(futs, topic).await;
    t.elapsed()
}

/// A `find` of the whole source collection, each document read answered by producing the next
/// of `recs` (the same bytes strait produced, so no encoding); timed from the first request.
async fn raw_find_produce(src: &Client, bs: &str, topic: &str, recs: &[Rec]) -> (Duration, u64) {
    let t = Instant::now();
    let p = producer(bs);
    let coll = src
        .database("bench")
        .collection::<bson::RawDocumentBuf>("docs");
    let mut cur = coll.find(doc! {}).await.unwrap();
    let mut futs = Vec::with_capacity(recs.len());
    let mut n = 0u64;
    while let Some(_d) = cur.try_next().await.unwrap() {
        futs.push(enqueue(&p, topic, &recs[n as usize % recs.len()]).await);
        n += 1;
    }
    delivered(futs, topic).await;
    (t.elapsed(), n)
}

// ---------------------------------------------------------------------------------------------

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

struct Row {
    what: String,
    n: u64,
    secs: f64,
    rate: f64,
    reference: String,
    ref_rate: f64,
    rss_mb: Option<u64>,
}

#[tokio::main]
async fn main() {
    let docs = env_u64("BENCH_KAFKA_DOCS", 100_000);
    let ops = env_u64("BENCH_KAFKA_OPS", 20_000);
    let writers = env_u64("BENCH_KAFKA_WRITERS", 4).max(1);
    let parts = env_u64("BENCH_KAFKA_PARTITIONS", 4) as i32;
    let format = env_str("BENCH_KAFKA_FORMAT", "change-event");
    let compression = env_str("BENCH_KAFKA_COMPRESSION", "zstd");
    let linger = env_u64("BENCH_KAFKA_LINGER_MS", 5);
    let dir = tempfile::tempdir().unwrap();
    let bench_start = Instant::now();
    let mut full_sync = format!(
        "[full_sync]\nchunk_docs = {}\n",
        env_u64("BENCH_CHUNK_DOCS", 100_000_000)
    );
    if let Some(p) = env_opt("BENCH_PARALLELISM") {
        full_sync += &format!("parallelism = {p}\n");
    }
    if let Some(b) = env_opt("BENCH_COPY_BATCH") {
        full_sync += &format!("batch_docs = {b}\n");
    }
    println!(
        "strait: {}; docs {docs}, ops {ops}, writers {writers}, partitions {parts}, format {format}, compression {compression}, linger {linger} ms; {}",
        strait_bin(),
        full_sync.replace('\n', " ")
    );

    let (src, dst, broker) = (start_mongo("source"), start_mongo("target"), start_tansu());
    let bs = format!("127.0.0.1:{}", broker.port);
    let (s, d) = (
        Client::with_uri_str(harness_uri(src.port)).await.unwrap(),
        Client::with_uri_str(harness_uri(dst.port)).await.unwrap(),
    );
    let me = std::process::id();
    // The raw references' topics, created now: a producer's first records to a topic created
    // a moment before wait about a second for its metadata.
    create_topic(&bs, "raw.produce", parts).await;
    create_topic(&bs, "raw.find-produce", parts).await;
    let (src_pid, dst_pid, broker_pid) = (src.child.id(), dst.child.id(), broker.child.id());
    let mut rows: Vec<Row> = vec![];
    let mut notes: Vec<String> = vec![];

    // 0. Load the source; a raw find of it, for context.
    let (load_t, retries) = load(&s, "bench", "docs", docs as i64).await;
    s.database("bench")
        .collection::<Document>("stream")
        .insert_one(doc! { "_id": -1_i64 })
        .await
        .unwrap();
    println!(
        "loaded {docs} docs into the source in {:.1} s ({:.0} docs/s, {retries} retried batches)",
        load_t.as_secs_f64(),
        rate(docs, load_t)
    );
    let t = Instant::now();
    let mut cur = s
        .database("bench")
        .collection::<bson::RawDocumentBuf>("docs")
        .find(doc! {})
        .await
        .unwrap();
    let mut found = 0u64;
    while cur.try_next().await.unwrap().is_some() {
        found += 1;
    }
    let find_t = t.elapsed();
    println!(
        "raw find of the source: {found} docs in {:.1} s = {:.0} docs/s",
        find_t.as_secs_f64(),
        rate(found, find_t)
    );

    // 1. MongoDB -> Kafka: snapshot, then streaming, by one capture process.
    let capture_api = free_port();
    let cap_cfg = dir.path().join("capture.toml");
    std::fs::write(
        &cap_cfg,
        format!(
            "id = \"capture\"\n[source]\nuri = \"{}\"\n[sink]\ntype = \"kafka\"\nbrokers = \"{bs}\"\ntopic_prefix = \"cdc\"\ntopic_partitions = {parts}\nformat = \"{format}\"\ncompression = \"{compression}\"\nlinger = \"{linger}ms\"\n[scope]\ninclude = [\"bench.*\"]\n{full_sync}[checkpoint]\ninterval = \"1s\"\n[api]\nlisten = \"127.0.0.1:{capture_api}\"\n",
            uri(src.port)
        ),
    )
    .unwrap();
    let docs_counter = Counter::start(&bs, TOPIC);
    let stream_counter = Counter::start(&bs, STREAM_TOPIC);
    let cap_t = Instant::now();
    let mut capture = strait(&cap_cfg, "capture");
    let cap_pid = capture.id();
    let cpu = CpuPhase::start(&[
        ("strait", cap_pid),
        ("source", src_pid),
        ("tansu", broker_pid),
        ("bench", me),
    ]);
    let mut first_rec = None;
    let mut last = Instant::now();
    let snap_t = loop {
        let n = docs_counter.get();
        if n > 0 {
            first_rec.get_or_insert_with(|| cap_t.elapsed());
        }
        if n >= docs {
            break cap_t.elapsed();
        }
        if let Some(s) = capture.try_wait().unwrap() {
            panic!("capture exited with {s}");
        }
        assert!(
            cap_t.elapsed() < Duration::from_secs(900),
            "capture: {n} of {docs} records after 900 s"
        );
        if last.elapsed() > Duration::from_secs(15) {
            last = Instant::now();
            eprintln!(
                "  capture: {n} of {docs} in {TOPIC} at {:.0} s",
                cap_t.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let snap_cpu = cpu.report();
    println!(
        "capture snapshot: {docs} records in {TOPIC} {:.1} s after process start ({:.0} events/s; first record at {:.2} s); cpu {snap_cpu}",
        snap_t.as_secs_f64(),
        rate(docs, snap_t),
        first_rec.unwrap_or_default().as_secs_f64()
    );
    notes.push(format!("capture snapshot CPU (% of one core): {snap_cpu}; first record in the topic {:.2} s after process start", first_rec.unwrap_or_default().as_secs_f64()));

    let mut stream_row = None;
    if ops > 0 {
        // Caught up: the stream topic has its one snapshot record and the API says streaming.
        let t = Instant::now();
        loop {
            let streaming = status(capture_api)
                .await
                .is_some_and(|v| v["state"] == "streaming");
            if streaming && stream_counter.get() >= 1 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "capture not streaming"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let coll = s.database("bench").collection::<Document>("stream");
        let done = Arc::new(AtomicU64::new(0));
        let cpu = CpuPhase::start(&[
            ("strait", cap_pid),
            ("source", src_pid),
            ("tansu", broker_pid),
            ("bench", me),
        ]);
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let n = ops / writers + u64::from(w < ops % writers);
            tasks.spawn(writer(coll.clone(), w as i64, n, done.clone()));
        }
        let mut max_lag: f64 = 0.0;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                r = tasks.join_next() => match r {
                    Some(r) => r.unwrap(),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some(v) = status(capture_api).await {
                        max_lag = max_lag.max(v["lag_seconds"].as_f64().unwrap_or(0.0));
                    }
                    if last.elapsed() > Duration::from_secs(15) {
                        last = Instant::now();
                        eprintln!("  {} ops written in {:.0} s; {} in the topic; lag {max_lag:.0} s",
                            done.load(Relaxed), t.elapsed().as_secs_f64(), stream_counter.get().saturating_sub(1));
                    }
                }
            }
        }
        let write_t = t.elapsed();
        let all_t = loop {
            if stream_counter.get() > ops {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < write_t + Duration::from_secs(600),
                "streamed events not all in {STREAM_TOPIC} 600 s after the writers stopped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stream_cpu = cpu.report();
        println!(
            "capture streaming: {ops} writes by {writers} writers in {:.1} s ({:.0} ops/s); all in {STREAM_TOPIC} at {:.1} s ({:.0} events/s, ratio {:.2}); catch-up after writer stop {:.2} s; largest lag_seconds {max_lag:.0}; cpu {stream_cpu}",
            write_t.as_secs_f64(),
            rate(ops, write_t),
            all_t.as_secs_f64(),
            rate(ops, all_t),
            write_t.as_secs_f64() / all_t.as_secs_f64(),
            (all_t - write_t).as_secs_f64()
        );
        notes.push(format!(
            "capture streaming CPU: {stream_cpu}; catch-up after the writers stopped {:.2} s; largest lag_seconds seen {max_lag:.0}",
            (all_t - write_t).as_secs_f64()
        ));
        stream_row = Some((write_t, all_t));
    }
    let cap_rss = peak_rss_kb(cap_pid) / 1024;
    if let Some(v) = status(capture_api).await {
        notes.push(format!(
            "capture /status at the end: produced {}, read {}, errors {}",
            v["sinks"]["kafka"]["produced"], v["read"], v["errors"]["total"]
        ));
    }
    sigterm(&mut capture);
    std::thread::sleep(Duration::from_secs(1));
    let (in_docs, in_stream) = (docs_counter.get(), stream_counter.get());
    drop((docs_counter, stream_counter));
    notes.push(format!(
        "records in the topics after the capture stopped: {TOPIC} {in_docs} (expected {docs}), {STREAM_TOPIC} {in_stream} (expected {})",
        if ops > 0 { ops + 1 } else { 1 }
    ));

    // Raw references for the capture: consume the topic back (also the raw consume reference
    // of the apply), produce the same records again, and find + produce.
    let (recs, raw_first, raw_consume_t) = {
        let (bs, n) = (bs.clone(), docs as usize);
        tokio::task::spawn_blocking(move || group_consume(&bs, TOPIC, "bench-raw", n))
            .await
            .unwrap()
    };
    let bytes: usize = recs
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .sum();
    println!(
        "raw consume (group subscribe): {} records ({:.0} bytes/value on average) in {:.1} s = {:.0} events/s (first record at {:.2} s)",
        recs.len(),
        bytes as f64 / recs.len().max(1) as f64,
        raw_consume_t.as_secs_f64(),
        rate(docs, raw_consume_t),
        raw_first.as_secs_f64()
    );
    let cpu = CpuPhase::start(&[("tansu", broker_pid), ("bench", me)]);
    let raw_prod_t = raw_produce(&bs, "raw.produce", &recs).await;
    let raw_prod_cpu = cpu.report();
    println!(
        "raw produce: {docs} records in {:.1} s = {:.0} events/s; cpu {raw_prod_cpu}",
        raw_prod_t.as_secs_f64(),
        rate(docs, raw_prod_t)
    );
    notes.push(format!("raw produce CPU: {raw_prod_cpu}"));
    let cpu = CpuPhase::start(&[("source", src_pid), ("tansu", broker_pid), ("bench", me)]);
    let (fp_t, fp_n) = raw_find_produce(&s, &bs, "raw.find-produce", &recs).await;
    let fp_cpu = cpu.report();
    println!(
        "raw find + produce: {fp_n} in {:.1} s = {:.0} events/s; cpu {fp_cpu}",
        fp_t.as_secs_f64(),
        rate(fp_n, fp_t)
    );
    notes.push(format!("raw find + produce CPU: {fp_cpu}"));
    rows.push(Row {
        what: "MongoDB -> Kafka, snapshot (capture)".into(),
        n: docs,
        secs: snap_t.as_secs_f64(),
        rate: rate(docs, snap_t),
        reference: "rdkafka produce of the same records".into(),
        ref_rate: rate(docs, raw_prod_t),
        rss_mb: Some(cap_rss),
    });
    rows.push(Row {
        what: "MongoDB -> Kafka, snapshot (capture)".into(),
        n: docs,
        secs: snap_t.as_secs_f64(),
        rate: rate(docs, snap_t),
        reference: "driver find + rdkafka produce, pipelined".into(),
        ref_rate: rate(fp_n, fp_t),
        rss_mb: None,
    });
    // From process start the capture pays its start (connecting, planning, creating the
    // topic) on a copy of a second or two; this row times it from its first record, as the
    // apply's row below does after the group join.
    if let Some(first) = first_rec {
        let after = snap_t.saturating_sub(first);
        rows.push(Row {
            what: "MongoDB -> Kafka, snapshot (capture), from its first record".into(),
            n: docs,
            secs: after.as_secs_f64(),
            rate: rate(docs, after),
            reference: "driver find + rdkafka produce, pipelined".into(),
            ref_rate: rate(fp_n, fp_t),
            rss_mb: None,
        });
    }
    rows.push(Row {
        what: "(context) source read".into(),
        n: found,
        secs: find_t.as_secs_f64(),
        rate: rate(found, find_t),
        reference: "-".into(),
        ref_rate: f64::NAN,
        rss_mb: None,
    });
    if let Some((write_t, all_t)) = stream_row {
        rows.push(Row {
            what: format!("MongoDB -> Kafka, streaming ({writers} writers, insert/$set)"),
            n: ops,
            secs: all_t.as_secs_f64(),
            rate: rate(ops, all_t),
            reference: "the writers' own rate".into(),
            ref_rate: rate(ops, write_t),
            rss_mb: Some(cap_rss),
        });
    }

    // 2. Kafka -> MongoDB. Raw writes first, each into an empty database dropped afterwards.
    let cpu = CpuPhase::start(&[("target", dst_pid), ("bench", me)]);
    let (raw_ins_t, r) = load(&d, "raw", "docs", docs as i64).await;
    let raw_ins_cpu = cpu.report();
    drop_db(&d, "raw").await;
    println!(
        "raw insert_many into the target: {docs} docs in {:.1} s = {:.0} docs/s ({r} retried batches); cpu {raw_ins_cpu}",
        raw_ins_t.as_secs_f64(),
        rate(docs, raw_ins_t)
    );
    let cpu = CpuPhase::start(&[("target", dst_pid), ("bench", me)]);
    let raw_up_t = upsert_load(&d, "rawup", docs as i64).await;
    let raw_up_cpu = cpu.report();
    drop_db(&d, "rawup").await;
    println!(
        "raw upsert (update command, replacements by _id, w: majority) into the target: {docs} docs in {:.1} s = {:.0} docs/s; cpu {raw_up_cpu}",
        raw_up_t.as_secs_f64(),
        rate(docs, raw_up_t)
    );
    notes.push(format!(
        "raw insert_many CPU: {raw_ins_cpu}; raw upsert CPU: {raw_up_cpu}"
    ));

    let apply_api = free_port();
    let mut apply_table = String::new();
    if let Some(l) = env_opt("BENCH_KAFKA_APPLY_LANES") {
        apply_table += &format!("lanes = {l}\n");
    }
    if let Some(b) = env_opt("BENCH_KAFKA_APPLY_BATCH") {
        apply_table += &format!("batch_docs = {b}\n");
    }
    if let Some(q) = env_opt("BENCH_KAFKA_APPLY_QUEUE") {
        apply_table += &format!("queue_depth = {q}\n");
    }
    if let Some(m) = env_opt("BENCH_KAFKA_APPLY_INFLIGHT_MIB") {
        apply_table += &format!("max_inflight_mib = {m}\n");
    }
    if !apply_table.is_empty() {
        apply_table = format!("[apply]\n{apply_table}");
        println!("apply pipeline: {}", apply_table.replace('\n', " "));
    }
    // Extra lines of the apply's [source] table, e.g. librdkafka `options = { ... }`.
    let source_extra = env_opt("BENCH_KAFKA_APPLY_SOURCE")
        .map(|l| format!("{l}\n"))
        .unwrap_or_default();
    let apply_cfg = dir.path().join("apply.toml");
    std::fs::write(
        &apply_cfg,
        format!(
            "id = \"apply\"\n[source]\ntype = \"kafka\"\nbrokers = \"{bs}\"\ntopics = [\"{TOPIC}\"]\ngroup = \"bench-apply\"\nsession_timeout = \"6s\"\nformat = \"{format}\"\n{source_extra}[sink]\nuri = \"{}\"\n{apply_table}[checkpoint]\ninterval = \"1s\"\n[api]\nlisten = \"127.0.0.1:{apply_api}\"\n",
            uri(dst.port)
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut apply = strait(&apply_cfg, "apply");
    let apply_pid = apply.id();
    let cpu = CpuPhase::start(&[
        ("strait", apply_pid),
        ("target", dst_pid),
        ("tansu", broker_pid),
        ("bench", me),
    ]);
    let mut first_consumed = None;
    let mut last = Instant::now();
    let apply_t = loop {
        if let Some(v) = status(apply_api).await {
            let a = &v["applied"];
            let applied: u64 = ["insert", "update", "replace", "delete"]
                .iter()
                .map(|k| a[k].as_u64().unwrap_or(0))
                .sum();
            if v["sinks"]["kafka"]["consumed"].as_u64().unwrap_or(0) > 0 {
                first_consumed.get_or_insert_with(|| t.elapsed());
            }
            if applied >= docs {
                break t.elapsed();
            }
            if last.elapsed() > Duration::from_secs(15) {
                last = Instant::now();
                eprintln!(
                    "  apply: {applied} of {docs} applied at {:.0} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        if let Some(s) = apply.try_wait().unwrap() {
            panic!("apply exited with {s}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "apply not done after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let apply_cpu = cpu.report();
    let apply_rss = peak_rss_kb(apply_pid) / 1024;
    sigterm(&mut apply);
    let on_target = d
        .database("bench")
        .collection::<Document>("docs")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(on_target, docs, "documents on the target after the apply");
    println!(
        "apply: {docs} events applied {:.1} s after process start ({:.0} events/s; first record consumed at {:.2} s); target holds {on_target}; cpu {apply_cpu}",
        apply_t.as_secs_f64(),
        rate(docs, apply_t),
        first_consumed.unwrap_or_default().as_secs_f64()
    );
    notes.push(format!(
        "apply CPU: {apply_cpu}; first record consumed {:.2} s after process start (raw group consumer: {:.2} s after client creation)",
        first_consumed.unwrap_or_default().as_secs_f64(),
        raw_first.as_secs_f64()
    ));
    for (reference, r) in [
        (
            "rdkafka group consumer, same topic",
            rate(docs, raw_consume_t),
        ),
        ("driver insert_many, empty database", rate(docs, raw_ins_t)),
        (
            "driver update command of upserts (strait's write for change events; snapshot records are inserts)",
            rate(docs, raw_up_t),
        ),
    ] {
        rows.push(Row {
            what: "Kafka -> MongoDB (apply)".into(),
            n: docs,
            secs: apply_t.as_secs_f64(),
            rate: rate(docs, apply_t),
            reference: reference.into(),
            ref_rate: r,
            rss_mb: Some(apply_rss),
        });
    }
    // The group join is the broker's: a new group waits out its initial rebalance delay
    // (Kafka's `group.initial.rebalance.delay.ms`, 3 s by default; Tansu's about the same) and
    // the raw consumer above waits as long. This row times the apply from its first record.
    if let Some(first) = first_consumed {
        let after = apply_t.saturating_sub(first);
        rows.push(Row {
            what: "Kafka -> MongoDB (apply), from its first record (after the group join)".into(),
            n: docs,
            secs: after.as_secs_f64(),
            rate: rate(docs, after),
            reference: "driver insert_many, empty database".into(),
            ref_rate: rate(docs, raw_ins_t),
            rss_mb: Some(apply_rss),
        });
    }
    rows.push(Row {
        what: "(context) source load, insert_many".into(),
        n: docs,
        secs: load_t.as_secs_f64(),
        rate: rate(docs, load_t),
        reference: "-".into(),
        ref_rate: f64::NAN,
        rss_mb: None,
    });

    // 3. The table.
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let doc_kind = if one_k_docs() {
        "~1 KB, mostly one character"
    } else {
        "user-like, ~1.6 KB, one in 1,000 ~100 KB"
    };
    println!();
    println!(
        "### strait Kafka throughput, {date} ({cpus} CPUs; SecantusDB x2 + Tansu memory://; {docs} docs ({doc_kind}), {ops} streaming ops; format {format}, {compression}, linger {linger} ms, {parts} partitions; whole run {:.0} s)",
        bench_start.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| measurement | events | s | strait /s | raw reference | raw /s | ratio | peak RSS |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|");
    for r in &rows {
        let (ref_rate, ratio) = if r.ref_rate.is_nan() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}", r.ref_rate),
                format!("{:.2}", r.rate / r.ref_rate),
            )
        };
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {ref_rate} | {ratio} | {} |",
            r.what,
            r.n,
            r.secs,
            r.rate,
            r.reference,
            r.rss_mb.map_or("-".into(), |m| format!("{m} MB"))
        );
    }
    println!();
    for n in notes {
        println!("- {n}");
    }
}
