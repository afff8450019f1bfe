//! Two-way sync throughput (not part of the test run): `BENCH_ONLY=two_way benches/run.sh`.
//!
//! Two local SecantusDB servers, "east" and "west". Reports, in one run on the same servers:
//! 1. one-way: a backlog of `BENCH_TW_OPS` mixed single-document writes on east, written while
//!    a one-way east -> west pipeline is paused (`POST /pause`), then applied after
//!    `POST /resume`: the one-way apply rate;
//! 2. two-way backlog: the same on both sides at once (`BENCH_TW_OPS` each, on disjoint keys)
//!    under one two-way pipeline: the apply rate per direction and its ratio to the one-way
//!    rate, which is the price of the transactions, version records and echo filtering;
//! 3. two-way live: both sides writing flat out while the pipeline runs; the writers' rates,
//!    and the time from the writers' stop until both clusters hold everything (the lag after
//!    the writers stop).
//!
//! At the end both clusters must hold byte-identical documents (checked), and the two-way
//! counters from `/status` are printed (applied, echoes dropped: no ping-pong).
//!
//! Knobs: BENCH_TW_OPS (30000) ops per side per phase; BENCH_WRITERS (4) writers per side;
//! BENCH_CACHE, BENCH_LOG_DIR, STRAIT_BIN as in benches/sync.rs.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/secantus.rs"]
mod secantus;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::{Client, Collection};

use harness::*;

const DB: &str = "tw";
const SIDES: [&str; 2] = ["east", "west"];

/// The writers of one side ([`mixed_writer`]s whose documents carry `side`, so each
/// direction's part is countable); east's counters are -1..=-writers, west's the next ones.
fn spawn_writers(
    tasks: &mut tokio::task::JoinSet<i64>,
    coll: &Collection<Document>,
    side_ix: usize,
    writers: u64,
    phase: i64,
    ops: u64,
    done: Arc<AtomicU64>,
) {
    let per = ops / writers;
    for w in 0..writers {
        let n = per + u64::from(w < ops % writers);
        let id = (side_ix as u64 * writers + w) as i64;
        let side = SIDES[side_ix];
        tasks.spawn(mixed_writer(
            coll.clone(),
            format!("{side} writer {id}"),
            (id + 1) * 100_000_000 + phase * 10_000_000,
            -(id + 1),
            Some(("side", side)),
            n,
            done.clone(),
        ));
    }
}

/// Creates each writer's counter document on `coll`.
async fn counters(coll: &Collection<Document>, side_ix: usize, writers: u64) {
    for w in 0..writers {
        let id = (side_ix as u64 * writers + w) as i64;
        coll.insert_one(doc! { "_id": -(id + 1), "n": 0i64, "side": SIDES[side_ix] })
            .await
            .unwrap();
    }
}

/// What of `side`'s writes a cluster holds: (documents, sum of the counters, sentinel seen).
async fn part(coll: &Collection<Document>, side: &str, sentinel: &str) -> (u64, i64, bool) {
    let n = coll.count_documents(doc! { "side": side }).await.unwrap();
    let mut sum = 0;
    let mut cur = coll
        .find(doc! { "side": side, "_id": { "$lt": 0 } })
        .await
        .unwrap();
    while cur.advance().await.unwrap() {
        sum += cur.deserialize_current().unwrap().get_i64("n").unwrap_or(0);
    }
    let s = coll
        .find_one(doc! { "_id": sentinel })
        .await
        .unwrap()
        .is_some();
    (n, sum, s)
}

/// Writes a sentinel on `from` and waits until `to` holds all of `side`'s writes; returns the
/// time from `since` until it does.
async fn until_applied(
    from: &Collection<Document>,
    to: &Collection<Document>,
    side: &str,
    phase: i64,
    since: Instant,
) -> Duration {
    let sentinel = format!("sentinel-{side}-{phase}");
    from.insert_one(doc! { "_id": &sentinel, "side": side })
        .await
        .unwrap();
    let want = part(from, side, &sentinel).await;
    loop {
        if part(to, side, &sentinel).await == want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(1200),
            "{side}'s writes not applied within 1200 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn post(port: u16, path: &str) {
    let (code, body) = api_request(port, "POST", path).expect("the API answers");
    assert_eq!(code, 200, "POST {path}: {body}");
}

/// Waits until every direction of the pipeline (or the pipeline) reports `state`.
async fn wait_state(port: u16, state: &str) {
    let t = Instant::now();
    loop {
        if let Some(s) = status(port).await {
            let dirs = s["directions"].as_array().cloned().unwrap_or_default();
            let states: Vec<&str> = if dirs.is_empty() {
                vec![s["state"].as_str().unwrap_or("")]
            } else {
                dirs.iter()
                    .map(|d| d["state"].as_str().unwrap_or(""))
                    .collect()
            };
            if states.iter().all(|s| *s == state) {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "pipeline not {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config(
    dir: &std::path::Path,
    name: &str,
    east: u16,
    west: u16,
    api: u16,
    two_way: bool,
) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let mut text = format!(
        "id = \"{name}\"\nmode = \"incremental\"\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[scope]\ninclude = [\"{DB}.*\"]\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
        uri(east),
        uri(west)
    );
    if two_way {
        text += "[two_way]\nnames = [\"east\", \"west\"]\ncopy_from = \"none\"\n";
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Every document of `coll`, as stored, by `_id`.
async fn dump(coll: &Collection<RawDocumentBuf>) -> Vec<RawDocumentBuf> {
    coll.find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-3)
}

#[tokio::main]
async fn main() {
    let ops = env_u64("BENCH_TW_OPS", 30_000);
    let writers = env_u64("BENCH_WRITERS", 4).max(1);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "strait: {}; {ops} ops per side per phase, {writers} writers per side",
        strait_bin()
    );
    let servers = [start_mongo("east"), start_mongo("west")];
    let clients = [
        Client::with_uri_str(harness_uri(servers[0].port))
            .await
            .unwrap(),
        Client::with_uri_str(harness_uri(servers[1].port))
            .await
            .unwrap(),
    ];
    let colls: Vec<Collection<Document>> = clients
        .iter()
        .map(|c| c.database(DB).collection("docs"))
        .collect();
    let (east, west) = (servers[0].port, servers[1].port);

    // 1. One-way: east's backlog applied to west.
    let one_way_rate = {
        for c in &colls {
            counters(c, 0, writers).await;
        }
        let api = free_port();
        let mut child = strait(
            &config(dir.path(), "one-way", east, west, api, false),
            "one-way",
        );
        wait_state(api, "streaming").await;
        post(api, "/pause");
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let t = Instant::now();
        spawn_writers(&mut tasks, &colls[0], 0, writers, 1, ops, done.clone());
        while tasks.join_next().await.is_some() {}
        let write = t.elapsed();
        let cpu = CpuPhase::start(&[
            ("strait", child.id()),
            ("east", servers[0].child.id()),
            ("west", servers[1].child.id()),
        ]);
        let t = Instant::now();
        post(api, "/resume");
        let applied = until_applied(&colls[0], &colls[1], "east", 1, t).await;
        println!(
            "one-way backlog: {ops} ops written on east in {:.1} s ({:.0} ops/s); applied to west in {:.1} s = {:.0} ops/s; CPU {}; strait peak RSS {} MB",
            write.as_secs_f64(),
            rate(ops, write),
            applied.as_secs_f64(),
            rate(ops, applied),
            cpu.report(),
            peak_rss_kb(child.id()) / 1024
        );
        sigterm(&mut child);
        // Start the two-way phases from the same data on both sides.
        drop_db(&clients[0], DB).await;
        drop_db(&clients[1], DB).await;
        rate(ops, applied)
    };

    // 2. Two-way backlog: both sides' writes, written while the pipeline is paused.
    let api = free_port();
    for i in 0..2 {
        for c in &colls {
            counters(c, i, writers).await;
        }
    }
    let mut child = strait(
        &config(dir.path(), "two-way", east, west, api, true),
        "two-way",
    );
    let pid = child.id();
    wait_state(api, "streaming").await;
    {
        post(api, "/pause");
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let t = Instant::now();
        spawn_writers(&mut tasks, &colls[0], 0, writers, 2, ops, done.clone());
        spawn_writers(&mut tasks, &colls[1], 1, writers, 2, ops, done.clone());
        while tasks.join_next().await.is_some() {}
        let write = t.elapsed();
        let cpu = CpuPhase::start(&[
            ("strait", pid),
            ("east", servers[0].child.id()),
            ("west", servers[1].child.id()),
        ]);
        let t = Instant::now();
        post(api, "/resume");
        let (to_west, to_east) = tokio::join!(
            until_applied(&colls[0], &colls[1], "east", 2, t),
            until_applied(&colls[1], &colls[0], "west", 2, t)
        );
        let cpu = cpu.report();
        let (rw, re) = (rate(ops, to_west), rate(ops, to_east));
        println!(
            "two-way backlog: {ops} ops on each side written in {:.1} s ({:.0} ops/s in all); east -> west applied in {:.1} s = {:.0} ops/s (ratio to one-way {:.2}); west -> east in {:.1} s = {:.0} ops/s (ratio {:.2}); both directions together {:.0} ops/s (ratio {:.2}); CPU {cpu}",
            write.as_secs_f64(),
            rate(2 * ops, write),
            to_west.as_secs_f64(),
            rw,
            rw / one_way_rate,
            to_east.as_secs_f64(),
            re,
            re / one_way_rate,
            rate(2 * ops, to_west.max(to_east)),
            rate(2 * ops, to_west.max(to_east)) / one_way_rate,
        );
    }

    // 3. Two-way live: both sides writing flat out while the pipeline applies.
    {
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let t = Instant::now();
        spawn_writers(&mut tasks, &colls[0], 0, writers, 3, ops, done.clone());
        spawn_writers(&mut tasks, &colls[1], 1, writers, 3, ops, done.clone());
        let mut max_lag: f64 = 0.0;
        loop {
            tokio::select! {
                r = tasks.join_next() => if r.is_none() { break },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some(s) = status(api).await {
                        for d in s["directions"].as_array().into_iter().flatten() {
                            max_lag = max_lag.max(d["lag_seconds"].as_f64().unwrap_or(0.0));
                        }
                    }
                }
            }
        }
        let write = t.elapsed();
        let stop = Instant::now();
        let (to_west, to_east) = tokio::join!(
            until_applied(&colls[0], &colls[1], "east", 3, stop),
            until_applied(&colls[1], &colls[0], "west", 3, stop)
        );
        println!(
            "two-way live: {ops} ops on each side in {:.1} s ({:.0} ops/s in all, the writers' limit with strait running); after the writers stopped, west held all of east's writes in {:.2} s and east all of west's in {:.2} s; largest lag_seconds seen while writing {max_lag:.0} s",
            write.as_secs_f64(),
            rate(2 * ops, write),
            to_west.as_secs_f64(),
            to_east.as_secs_f64(),
        );
    }

    let s = status(api).await.expect("status");
    for d in s["directions"].as_array().into_iter().flatten() {
        println!("  {}: two_way {}", d["pipeline"], d["two_way"]);
    }
    println!("strait peak RSS {} MB", peak_rss_kb(pid) / 1024);
    sigterm(&mut child);

    let raw: Vec<Collection<RawDocumentBuf>> = clients
        .iter()
        .map(|c| c.database(DB).collection("docs"))
        .collect();
    let (a, b) = (dump(&raw[0]).await, dump(&raw[1]).await);
    assert_eq!(a.len(), b.len(), "documents on east and west");
    let differ = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.as_bytes() != y.as_bytes())
        .count();
    assert_eq!(differ, 0, "documents that differ between east and west");
    println!("east and west byte-identical: {} documents", a.len());
}
