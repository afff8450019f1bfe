//! DynamoDB -> DynamoDB throughput (not part of the test run): `BENCH_ONLY=dynamodb
//! benches/run.sh`, on moto's server (the only DynamoDB this machine can run).
//!
//! In one run, on one server:
//! 1. raw: `BENCH_DDB_ITEMS` order items (`strait load`'s items, ~700 B, nested) written with
//!    `BatchWriteItem` (25 per call, 8 calls at once) into an empty table: the raw limit;
//! 2. full sync: the same items in a source table (its stream turned on after loading, so the
//!    stream holds nothing older), copied by strait into an empty table: items/s and its ratio
//!    to raw;
//! 3. backlog: `BENCH_DDB_OPS` operations of `strait load` (puts, updates, deletes) written
//!    while the pipeline is paused, then applied after `POST /resume`: operations/s and the
//!    ratio to raw;
//! 4. live: the loader writing flat out while strait runs; the time from its last write until
//!    both tables hold the same items (the lag after the writer stops).
//!
//! 5. through Kinesis (kinesis-local, 2 shards): the source table (as it is after 3 and 4) copied
//!    again into a new table through two pipelines, DynamoDB -> Kinesis and Kinesis ->
//!    DynamoDB: items/s of the copy, ratio to raw, and the lag after a loader stops.
//!
//! Both tables must hold the same items at the end (checked). strait's peak RSS is its
//! `VmHWM`. Knobs: BENCH_DDB_ITEMS (5000), BENCH_DDB_OPS (3000), STRAIT_MOTO, STRAIT_BIN.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/secantus.rs"]
mod secantus;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, StreamSpecification, StreamViewType, WriteRequest,
};
use futures::StreamExt;
use harness::{env_opt, env_u64, free_port, peak_rss_kb, strait_bin, CpuPhase};

type Item = HashMap<String, AttributeValue>;

/// A test server process (moto or kinesis-local) and its port, killed on drop.
struct Moto(Child, u16);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let bin = env_opt("STRAIT_MOTO").unwrap_or_else(|| {
        format!(
            "{}/.cache/strait/venv-moto/bin/moto_server",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (dev/install-servers.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Moto(child, port)
}

async fn client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

async fn create(c: &aws_sdk_dynamodb::Client, name: &str) {
    let key = |n: &str, t| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap()
    };
    let def = |n: &str, t| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(t)
            .build()
            .unwrap()
    };
    c.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(def("pk", ScalarAttributeType::S))
        .attribute_definitions(def("sk", ScalarAttributeType::N))
        .send()
        .await
        .unwrap();
}

async fn batch_write(c: &aws_sdk_dynamodb::Client, table: &str, items: Vec<Item>) -> Duration {
    let started = Instant::now();
    let chunks: Vec<Vec<Item>> = items.chunks(25).map(|c| c.to_vec()).collect();
    futures::stream::iter(chunks)
        .map(|chunk| async move {
            let mut reqs: Vec<WriteRequest> = chunk
                .into_iter()
                .map(|i| {
                    WriteRequest::builder()
                        .put_request(PutRequest::builder().set_item(Some(i)).build().unwrap())
                        .build()
                })
                .collect();
            while !reqs.is_empty() {
                let out = c
                    .batch_write_item()
                    .request_items(table, reqs.clone())
                    .send()
                    .await
                    .unwrap();
                reqs = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

async fn all_items(c: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let r = c
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        out.extend(r.items.unwrap_or_default());
        match r.last_evaluated_key {
            Some(k) => start = Some(k),
            None => break,
        }
    }
    out.sort_by_key(|i| format!("{:?}/{:?}", i.get("pk"), i.get("sk")));
    out
}

/// Changes strait has applied (`/status` `applied`), read from its API: polling the tables
/// themselves would load moto (which serves one request at a time) more than strait does.
fn applied(port: u16) -> u64 {
    let Some(s) = harness::api_status(port) else {
        return 0;
    };
    ["insert", "update", "replace", "delete"]
        .iter()
        .map(|k| s["applied"][k].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until strait has applied at least `at_least` changes and then nothing more for 4 s;
/// returns the time from `since` to its last applied change.
async fn settled(port: u16, at_least: u64, since: Instant) -> Duration {
    let (mut last, mut last_at) = (applied(port), since.elapsed());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = applied(port);
        if now != last {
            (last, last_at) = (now, since.elapsed());
        } else if now >= at_least && since.elapsed() - last_at > Duration::from_secs(4) {
            return last_at;
        }
        assert!(
            since.elapsed() < Duration::from_secs(900),
            "strait never settled"
        );
    }
}

/// Waits until both tables hold the same items; the time it took.
async fn until_equal(c: &aws_sdk_dynamodb::Client, a: &str, b: &str) -> Duration {
    let started = Instant::now();
    loop {
        let before = started.elapsed();
        if all_items(c, a).await == all_items(c, b).await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "tables never matched"
        );
        let took = started.elapsed() - before;
        tokio::time::sleep(took.max(Duration::from_millis(100))).await;
    }
}

fn api(port: u16, method: &str, path: &str) {
    let _ = harness::api_request(port, method, path);
}

fn load(endpoint: &str, table: &str, ops: u64, rate: u64) -> serde_json::Value {
    let out = Command::new(strait_bin())
        .args(["load", "dynamodb", "--table", table, "--endpoint", endpoint])
        .args(["--region", "us-east-1", "--ops", &ops.to_string()])
        .args([
            "--rate",
            &rate.to_string(),
            "--keys",
            "4000",
            "--writers",
            "4",
        ])
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::main]
async fn main() {
    let items = env_u64("BENCH_DDB_ITEMS", 5000);
    let ops = env_u64("BENCH_DDB_OPS", 3000);
    let moto = start_moto();
    let endpoint = format!("http://127.0.0.1:{}", moto.1);
    let c = client(&endpoint).await;
    println!(
        "strait: {}; moto on {endpoint}; {items} items, {ops} ops",
        strait_bin()
    );
    let rows: Vec<Item> = (0..items)
        .map(|k| strait::load::order_item(k, 0, "us-east-1", 10))
        .collect();

    // 1. Raw BatchWriteItem.
    create(&c, "raw").await;
    let raw = batch_write(&c, "raw", rows.clone()).await;
    let raw_rate = items as f64 / raw.as_secs_f64();
    println!(
        "raw BatchWriteItem: {items} items in {:.2} s = {raw_rate:.0} items/s",
        raw.as_secs_f64()
    );

    // The read side's limit: the same parallel Scan the full sync does (4 segments, pages of
    // 1,000), without writing anything.
    let started = Instant::now();
    let segs = futures::future::join_all((0..4).map(|seg| {
        let c = c.clone();
        async move {
            let (mut n, mut start) = (0usize, None);
            loop {
                let r = c
                    .scan()
                    .table_name("raw")
                    .segment(seg)
                    .total_segments(4)
                    .consistent_read(true)
                    .limit(1000)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .unwrap();
                n += r.items.map_or(0, |i| i.len());
                match r.last_evaluated_key {
                    Some(k) => start = Some(k),
                    None => return n,
                }
            }
        }
    }))
    .await;
    let scan = started.elapsed();
    let scan_rate = segs.iter().sum::<usize>() as f64 / scan.as_secs_f64();
    println!(
        "raw parallel Scan: {} items in {:.2} s = {scan_rate:.0} items/s",
        segs.iter().sum::<usize>(),
        scan.as_secs_f64()
    );
    let limit = 1.0 / (1.0 / raw_rate + 1.0 / scan_rate);

    // 2. Full sync.
    create(&c, "src").await;
    create(&c, "dst").await;
    batch_write(&c, "src", rows).await;
    c.update_table()
        .table_name("src")
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let keys = format!("region = \"us-east-1\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"bench\"\nsecret_access_key = \"bench\"\n");
    let cfg = format!(
        "id = \"bench\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[full_sync]\nparallelism = 4\n[source]\ntype = \"dynamodb\"\ntable = \"src\"\n{keys}poll_interval = \"100ms\"\n[sink]\ntype = \"dynamodb\"\ntable = \"dst\"\n{keys}[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        dir.path().join("ckpt.json").display()
    );
    let path = dir.path().join("p.toml");
    std::fs::write(&path, cfg).unwrap();
    let started = Instant::now();
    let mut st = harness::strait(&path, "dynamodb");
    let pid = st.id();
    let cpu = CpuPhase::start(&[("strait", pid), ("moto", moto.0.id())]);
    let full = settled(port, items, started).await;
    let full_rate = items as f64 / full.as_secs_f64();
    println!(
        "full sync: {items} items in {:.2} s = {full_rate:.0} items/s = {:.2} x raw write, {:.2} x raw scan + write one after the other ({limit:.0} items/s) (goal >= 1.0; includes start-up) [{}]",
        full.as_secs_f64(),
        full_rate / raw_rate,
        full_rate / limit,
        cpu.report()
    );

    // 3. Backlog written while paused, applied after resume.
    api(port, "POST", "/pause");
    let report = load(&endpoint, "src", ops, 0);
    let _written = report["puts"].as_u64().unwrap()
        + report["updates"].as_u64().unwrap()
        + report["deletes"].as_u64().unwrap();
    println!("backlog written: {report}");
    let cpu = CpuPhase::start(&[("strait", pid), ("moto", moto.0.id())]);
    let before = applied(port);
    let started = Instant::now();
    api(port, "POST", "/resume");
    let took = settled(port, before + 1, started).await;
    let changes = applied(port) - before;
    let backlog_rate = changes as f64 / took.as_secs_f64();
    println!(
        "backlog: {changes} stream records applied in {:.2} s = {backlog_rate:.0} /s = {:.2} x raw [{}]",
        took.as_secs_f64(),
        backlog_rate / raw_rate,
        cpu.report()
    );

    // 4. Live: lag after the writer stops.
    let report = load(&endpoint, "src", ops, 0);
    let stopped = Instant::now();
    // The time of strait's last applied change, watched through its API while the tables are
    // compared (a quiet spell alone is not the end: moto can hold a read for seconds).
    let last_change = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let watcher = {
        let last_change = last_change.clone();
        tokio::spawn(async move {
            let mut last = applied(port);
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = applied(port);
                if now != last {
                    last = now;
                    *last_change.lock().unwrap() = stopped.elapsed();
                }
            }
        })
    };
    until_equal(&c, "src", "dst").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watcher.abort();
    let lag = *last_change.lock().unwrap();
    println!(
        "live: loader {:.0} ops/s; strait's last change applied {:.2} s after the loader's last write",
        report["ops_per_second"].as_f64().unwrap(),
        lag.as_secs_f64()
    );
    println!("strait peak RSS (VmHWM): {} MB", peak_rss_kb(pid) / 1024);
    assert!(all_items(&c, "src").await == all_items(&c, "dst").await);
    harness::sigterm(&mut st);
    println!("tables equal: yes");

    // 5. Through Kinesis.
    let kl = start_kinesis_local();
    let kendpoint = format!("http://127.0.0.1:{}", kl.1);
    let k = kinesis_client(&kendpoint).await;
    k.create_stream()
        .stream_name("hop")
        .shard_count(2)
        .send()
        .await
        .unwrap();
    loop {
        let d = k
            .describe_stream_summary()
            .stream_name("hop")
            .send()
            .await
            .unwrap();
        if d.stream_description_summary.unwrap().stream_status
            == aws_sdk_kinesis::types::StreamStatus::Active
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create(&c, "dst2").await;
    let n = all_items(&c, "src").await.len() as u64;
    let kkeys = format!("region = \"us-east-1\"\nendpoint = \"{kendpoint}\"\naccess_key_id = \"bench\"\nsecret_access_key = \"bench\"\n");
    let (pa, pb) = (free_port(), free_port());
    let a = format!(
        "id = \"to-kinesis\"\n[api]\nlisten = \"127.0.0.1:{pa}\"\n[full_sync]\nparallelism = 4\n[source]\ntype = \"dynamodb\"\ntable = \"src\"\n{keys}poll_interval = \"100ms\"\n[sink]\ntype = \"kinesis\"\nstream = \"hop\"\n{kkeys}[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        dir.path().join("a.json").display()
    );
    let b = format!(
        "id = \"from-kinesis\"\n[api]\nlisten = \"127.0.0.1:{pb}\"\n[source]\ntype = \"kinesis\"\nstream = \"hop\"\n{kkeys}poll_interval = \"100ms\"\n[sink]\ntype = \"dynamodb\"\ntable = \"dst2\"\n{keys}[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        dir.path().join("b.json").display()
    );
    let (path_a, path_b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&path_a, a).unwrap();
    std::fs::write(&path_b, b).unwrap();
    let started = Instant::now();
    let mut sa = harness::strait(&path_a, "dynamodb-to-kinesis");
    let mut sb = harness::strait(&path_b, "kinesis-to-dynamodb");
    let cpu = CpuPhase::start(&[
        ("strait->kinesis", sa.id()),
        ("kinesis->strait", sb.id()),
        ("moto", moto.0.id()),
        ("kinesis-local", kl.0.id()),
    ]);
    let full = settled(pb, n, started).await;
    let rate = n as f64 / full.as_secs_f64();
    println!(
        "through Kinesis, full sync: {n} items in {:.2} s = {rate:.0} items/s = {:.2} x raw write, {:.2} x direct full sync (includes start-up) [{}]",
        full.as_secs_f64(),
        rate / raw_rate,
        rate / full_rate,
        cpu.report()
    );
    let report = load(&endpoint, "src", ops, 0);
    let stopped = Instant::now();
    let before = applied(pb);
    let lag = settled(pb, before + 1, stopped).await;
    println!(
        "through Kinesis, live: loader {:.0} ops/s; the last change applied {:.2} s after the loader's last write",
        report["ops_per_second"].as_f64().unwrap(),
        lag.as_secs_f64()
    );
    until_equal(&c, "src", "dst2").await;
    println!(
        "strait peak RSS (VmHWM): DynamoDB -> Kinesis {} MB, Kinesis -> DynamoDB {} MB",
        peak_rss_kb(sa.id()) / 1024,
        peak_rss_kb(sb.id()) / 1024
    );
    harness::sigterm(&mut sa);
    harness::sigterm(&mut sb);
    println!("tables equal through Kinesis: yes");
}

fn start_kinesis_local() -> Moto {
    let main = env_opt("STRAIT_KINESIS_LOCAL").unwrap_or_else(|| {
        format!(
            "{}/.cache/strait/kinesis-local/node_modules/kinesis-local/main.js",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let (port, tls) = (free_port(), free_port());
    let child = Command::new("node")
        .arg(&main)
        .current_dir(std::path::Path::new(&main).parent().unwrap())
        .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
        .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
        .env("CREATE_STREAM_DURATION", "0ms")
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kinesis-local (dev/install-servers.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kinesis-local did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Moto(child, port)
}

async fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    aws_sdk_kinesis::Client::new(&sdk)
}
