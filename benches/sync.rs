//! End-to-end throughput harness (not part of the test run): `benches/run.sh`.
//!
//! Starts two local SecantusDB servers and reports, as ratios against raw limits measured in
//! the same run on the same servers:
//! - full sync docs/s vs a raw `insert_many` of the same documents into the same target;
//! - incremental apply rate vs the writer's own rate, and the time from writer stop until a
//!   sentinel written after the last operation is on the target (catch-up time);
//! - peak RSS of strait while copying `BENCH_RSS_DOCS` documents.
//!
//! Sizes: BENCH_DOCS (200000), BENCH_OPS (100000), BENCH_RSS_DOCS (1000000; 0 skips).
//!
//! Collections are copied as one `_id` range each: SecantusDB answers every `_id` range query
//! with a full collection scan (even on an IXSCAN plan), so splitting a collection into N
//! ranges costs N scans there, while on mongod ranges are index scans.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongodb::Client;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Server(Child, u16);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16) -> Server {
    let bin = std::env::var("STRAIT_SECANTUSD").expect("run benches/run.sh");
    let child = Command::new(bin)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            ":memory:",
            "--cache-size",
            "2G",
        ])
        .args([
            "--noop-heartbeat-seconds",
            "1",
            "--oplog-max-entries",
            "50000000",
            "--oplog-retention-seconds",
            "86400",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child, port)
}

fn uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true")
}

/// A ~1 KB document.
fn doc_1k(i: i64) -> Document {
    doc! { "_id": i, "n": i, "s": "x".repeat(900), "sub": { "a": i, "b": [1, 2, 3] }, "t": bson::DateTime::now() }
}

async fn load(client: &Client, db: &str, n: i64) -> Duration {
    let c = client.database(db).collection::<Document>("docs");
    let t = Instant::now();
    for start in (0..n).step_by(1000) {
        c.insert_many((start..(start + 1000).min(n)).map(doc_1k))
            .await
            .unwrap();
    }
    t.elapsed()
}

fn strait(cfg: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["run", "-c"])
        .arg(cfg)
        .env("STRAIT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn config(dir: &std::path::Path, src: u16, dst: u16, mode: &str, db: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{mode}-{db}.toml"));
    std::fs::write(
        &p,
        format!(
            "id = \"bench-{db}\"\nmode = \"{mode}\"\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[scope]\ninclude = [\"{db}.*\"]\n[full_sync]\nchunk_docs = 100000000\n",
            uri(src),
            uri(dst)
        ),
    )
    .unwrap();
    p
}

/// Runs a full-sync pipeline to completion; returns (elapsed, peak RSS in KB).
fn run_full(cfg: &std::path::Path) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = strait(cfg);
    let pid = child.id();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kb(pid));
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
    let ops = env_u64("BENCH_OPS", 100_000);
    let rss_docs = env_u64("BENCH_RSS_DOCS", 1_000_000) as i64;
    let dir = tempfile::tempdir().unwrap();
    // Free ports: a leftover server on a fixed port would be reused with stale data.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (src, dst) = (start_server(free()), start_server(free()));
    let (s, d) = (
        Client::with_uri_str(uri(src.1)).await.unwrap(),
        Client::with_uri_str(uri(dst.1)).await.unwrap(),
    );

    // 1. Full sync vs raw insert_many of the same documents into the same target.
    load(&s, "full", docs).await;
    let raw = load(&d, "raw", docs).await;
    let (copy, peak_small) = run_full(&config(dir.path(), src.1, dst.1, "full", "full"));
    let raw_rate = docs as f64 / raw.as_secs_f64();
    let copy_rate = docs as f64 / copy.as_secs_f64();
    println!("full sync: {docs} docs of ~1 KB in {:.1} s = {:.0} docs/s; raw insert_many {:.0} docs/s; ratio {:.2} (goal >= 0.8); peak RSS {} MB",
        copy.as_secs_f64(), copy_rate, raw_rate, copy_rate / raw_rate, peak_small / 1024);
    d.database("raw").drop().await.unwrap();

    // 2. Incremental: ops written as fast as one writer can, applied while they arrive.
    let coll = s.database("inc").collection::<Document>("docs");
    coll.insert_one(doc_1k(-1)).await.unwrap();
    let cfg = config(dir.path(), src.1, dst.1, "full+incremental", "inc");
    let mut child = strait(&cfg);
    let target = d.database("inc").collection::<Document>("docs");
    while target.count_documents(doc! {}).await.unwrap() < 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let mut i = 0u64;
    while i < ops {
        // Batches of mixed single-document operations, as separate writes.
        let id = (i % 5000) as i64;
        match i % 4 {
            0 => {
                let _ = coll
                    .insert_one(doc_1k(id + 1_000_000 * (i as i64 / 5000)))
                    .await;
            }
            1 => {
                coll.update_one(doc! { "_id": id }, doc! { "$set": { "n": i as i64 } })
                    .await
                    .unwrap();
            }
            2 => {
                coll.update_one(doc! { "_id": -1 }, doc! { "$inc": { "n": 1 } })
                    .await
                    .unwrap();
            }
            _ => {
                coll.delete_one(doc! { "_id": id + 1_000_000 * (i as i64 / 5000) })
                    .await
                    .unwrap();
            }
        }
        i += 1;
    }
    let write = t.elapsed();
    coll.insert_one(doc! { "_id": "sentinel" }).await.unwrap();
    let stop = Instant::now();
    while target
        .find_one(doc! { "_id": "sentinel" })
        .await
        .unwrap()
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up = stop.elapsed();
    let total = t.elapsed();
    unsafe_sigterm(&mut child);
    println!("incremental: {ops} mixed ops written in {:.1} s ({:.0} ops/s, the writer's limit); applied within {:.1} s ({:.0} ops/s, ratio {:.2}); catch-up after writer stop {:.2} s (goal < 2 s)",
        write.as_secs_f64(), ops as f64 / write.as_secs_f64(), total.as_secs_f64(), ops as f64 / total.as_secs_f64(),
        write.as_secs_f64() / total.as_secs_f64(), catch_up.as_secs_f64());

    // 3. Peak RSS while copying many documents.
    if rss_docs > 0 {
        load(&s, "rss", rss_docs).await;
        let (copy, peak) = run_full(&config(dir.path(), src.1, dst.1, "full", "rss"));
        println!("memory: copying {rss_docs} docs took {:.1} s ({:.0} docs/s); strait peak RSS {} MB (goal < 256 MB)",
            copy.as_secs_f64(), rss_docs as f64 / copy.as_secs_f64(), peak / 1024);
    }
}

fn unsafe_sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
