//! DynamoDB -> Kinesis -> DynamoDB, the hop between two regions: moto for the tables,
//! kinesis-local for a Kinesis stream that really splits and merges its shards. One item's
//! changes stay in order across the split and the merge (the target's last-writer-wins check
//! finds no stale change, and boto3 reading the stream in lineage order sees no item go back in
//! time), the tables end equal, and SIGKILLs of both pipelines lose nothing.

use std::time::Duration;

use aws_sdk_dynamodb::types::StreamViewType;

use crate::common::aws::{create_table, n, rich_item, wait_equal, Item, KinesisLocal, Moto};
use crate::common::{write_config, Strait};

fn to_kinesis(moto: &Moto, kl: &KinesisLocal, dir: &std::path::Path, port: u16) -> String {
    format!(
        "id = \"to-kinesis\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[source]\ntype = \"dynamodb\"\ntable = \"orders\"\n{}poll_interval = \"100ms\"\n\n[sink]\ntype = \"kinesis\"\nstream = \"hop\"\n{}\n[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        moto.keys(),
        kl.keys(),
        dir.join("a.ckpt").display()
    )
}

fn from_kinesis(moto: &Moto, kl: &KinesisLocal, dir: &std::path::Path, port: u16) -> String {
    format!(
        "id = \"from-kinesis\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[source]\ntype = \"kinesis\"\nstream = \"hop\"\n{}poll_interval = \"100ms\"\nshard_refresh = \"1s\"\n\n[sink]\ntype = \"dynamodb\"\ntable = \"orders_copy\"\n{}timestamp_attribute = \"v\"\n\n[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        kl.keys(),
        moto.keys(),
        dir.join("b.ckpt").display()
    )
}

/// Item `i` at version `v` (every change of an item has a greater `v`).
fn versioned(i: usize, v: usize) -> Item {
    let mut item = rich_item(i, v);
    item.insert("v".into(), n(v));
    item
}

/// One round of the writer: most items get a new version, some are deleted (and come back in a
/// later round).
async fn round(c: &aws_sdk_dynamodb::Client, items: usize, r: usize) {
    for i in 0..items {
        if (i + r).is_multiple_of(9) {
            let item = versioned(i, r);
            c.delete_item()
                .table_name("orders")
                .key("pk", item["pk"].clone())
                .key("sk", item["sk"].clone())
                .send()
                .await
                .unwrap();
        } else if (i + r) % 3 != 1 {
            c.put_item()
                .table_name("orders")
                .set_item(Some(versioned(i, r)))
                .send()
                .await
                .unwrap();
        }
    }
}

async fn counter(port: u16, name: &str, pipeline: &str) -> u64 {
    let (_, m) = crate::api::http(port, "GET", "/metrics", "").await;
    crate::api::pipeline_counter(&m, name, pipeline).unwrap_or(0)
}

async fn open_shards(k: &aws_sdk_kinesis::Client) -> Vec<aws_sdk_kinesis::types::Shard> {
    let shards = k.list_shards().stream_name("hop").send().await.unwrap();
    shards
        .shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range
                .as_ref()
                .and_then(|r| r.ending_sequence_number.as_ref())
                .is_none()
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kinesis_hop_keeps_each_items_order_across_a_split_and_a_merge() {
    let moto = Moto::start();
    let kl = KinesisLocal::start();
    let c = moto.dynamodb().await;
    let k = kl.client().await;
    create_table(&c, "orders", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "orders_copy", None).await;
    kl.create_stream(&k, "hop", 2).await;
    const ITEMS: usize = 120;
    for i in 0..ITEMS {
        c.put_item()
            .table_name("orders")
            .set_item(Some(versioned(i, 0)))
            .send()
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (
        crate::common::free_port_for_tests(),
        crate::common::free_port_for_tests(),
    );
    let ca = write_config(
        dir.path(),
        "a.toml",
        &to_kinesis(&moto, &kl, dir.path(), pa),
    );
    let cb = write_config(
        dir.path(),
        "b.toml",
        &from_kinesis(&moto, &kl, dir.path(), pb),
    );
    let mut a = Strait::spawn(&ca, &dir.path().join("a.log"));
    let mut b = Strait::spawn(&cb, &dir.path().join("b.log"));
    // The full sync goes through Kinesis too. The stream's records of the last minute before
    // the scan follow it (the scan's overlap): each finds its version already there and is
    // counted stale, exactly once per item; after that, a stale change would be one applied
    // out of order.
    wait_equal(&c, "orders", &c, "orders_copy", Duration::from_secs(60), &b).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counter(pb, "strait_two_way_stale_total", "from-kinesis").await < ITEMS as u64 {
        assert!(std::time::Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in 1..=3 {
        round(&c, ITEMS, r).await;
    }
    // Split the first open shard at the middle of its hash range, while changes flow.
    let shard = open_shards(&k).await.remove(0);
    let range = shard.hash_key_range.clone().unwrap();
    let (lo, hi): (u128, u128) = (
        range.starting_hash_key.parse().unwrap(),
        range.ending_hash_key.parse().unwrap(),
    );
    k.split_shard()
        .stream_name("hop")
        .shard_to_split(&shard.shard_id)
        .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
        .send()
        .await
        .unwrap();
    kl.wait_active(&k, "hop").await;
    for r in 4..=6 {
        round(&c, ITEMS, r).await;
    }
    // Merge the two children of the split back into one shard.
    let mut children: Vec<_> = open_shards(&k)
        .await
        .into_iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(shard.shard_id.as_str()))
        .collect();
    assert_eq!(children.len(), 2, "the split made two children");
    children.sort_by_key(|s| {
        s.hash_key_range
            .as_ref()
            .unwrap()
            .starting_hash_key
            .parse::<u128>()
            .unwrap()
    });
    k.merge_shards()
        .stream_name("hop")
        .shard_to_merge(&children[0].shard_id)
        .adjacent_shard_to_merge(&children[1].shard_id)
        .send()
        .await
        .unwrap();
    kl.wait_active(&k, "hop").await;
    for r in 7..=8 {
        round(&c, ITEMS, r).await;
    }
    let took = wait_equal(&c, "orders", &c, "orders_copy", Duration::from_secs(90), &b).await;
    eprintln!("equal {took:?} after the last write, through a split and a merge");
    // Per-shard lag is reported while reading.
    let (_, status) = crate::api::http(pb, "GET", "/status", "").await;
    assert!(
        status.contains("\"shards\"") && status.contains("lag_seconds"),
        "{status}"
    );
    let (_, metrics) = crate::api::http(pb, "GET", "/metrics", "").await;
    assert!(metrics.contains("strait_shard_lag_seconds{"), "{metrics}");
    // In order: the target's last-writer-wins check never saw an older version after a newer.
    assert_eq!(
        counter(pb, "strait_two_way_stale_total", "from-kinesis").await,
        ITEMS as u64
    );
    let log_b = b.log_text();
    assert_eq!(
        log_b.matches("Shard read to its end").count(),
        3,
        "the split parent and the two merged children are read to their end:\n{log_b}"
    );
    // boto3 reads the records (its TypeDeserializer takes every image) and, in lineage order,
    // no item goes back in time; each item's last record is the table's item.
    let python = crate::common::aws::moto_python();
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/consumers/kinesis_dynamodb.py"
        ))
        .args([kl.endpoint(), "hop".into()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "boto3 read {} records of {} items",
        report["records"], report["items"]
    );
    assert_eq!(report["backwards"], 0, "{report}");
    assert_eq!(report["items"], ITEMS as u64, "{report}");
    let items = crate::common::aws::all_items(&c, "orders").await;
    for item in &items {
        let (pk, sk, v) = (
            item["pk"].as_s().unwrap(),
            item["sk"].as_n().unwrap(),
            item["v"].as_n().unwrap(),
        );
        assert_eq!(
            report["last"][format!("{pk}/{sk}")].to_string(),
            *v,
            "{pk}/{sk}"
        );
    }
    // SIGKILLs of both pipelines while the writer runs: nothing lost.
    for r in 9..=12 {
        round(&c, ITEMS / 2, r).await;
        if r % 2 == 1 {
            a.sigkill_running();
            a = Strait::spawn(&ca, &dir.path().join(format!("a{r}.log")));
        } else {
            b.sigkill_running();
            b = Strait::spawn(&cb, &dir.path().join(format!("b{r}.log")));
        }
    }
    let took = wait_equal(&c, "orders", &c, "orders_copy", Duration::from_secs(90), &b).await;
    eprintln!("equal {took:?} after the last write and 4 SIGKILLs");
    assert!(a.sigterm().success());
    assert!(b.sigterm().success());
}

/// A record in the shape Kinesis Data Streams for DynamoDB writes, as another producer would.
fn record(event: &str, keys: serde_json::Value, new: Option<serde_json::Value>) -> Vec<u8> {
    let mut d =
        serde_json::json!({ "ApproximateCreationDateTime": 1_764_000_000_000_i64, "Keys": keys });
    if let Some(n) = new {
        d["NewImage"] = n;
    }
    serde_json::to_vec(&serde_json::json!({
        "awsRegion": "us-east-1", "eventID": "x", "eventName": event, "userIdentity": null,
        "recordFormat": "application/json", "tableName": "orders", "dynamodb": d,
        "eventSource": "aws:dynamodb",
    }))
    .unwrap()
}

/// Puts two good records and three bad ones on stream "hop" (kinesis-local), runs
/// `from-kinesis` with `dead_letter` (the source's dead-letter key) into moto's table
/// `orders_copy` (created by the caller), waits for the good ones in the table, and gives the running process.
async fn run_with_bad_records(
    moto: &Moto,
    kl: &KinesisLocal,
    dir: &std::path::Path,
    port: u16,
    dead_letter: &str,
) -> Strait {
    let c = moto.dynamodb().await;
    let k = kl.client().await;
    kl.create_stream(&k, "hop", 1).await;
    let item = |pk: &str, extra: &str| serde_json::json!({ "pk": { "S": pk }, "sk": { "N": "1" }, "note": { "S": extra } });
    let key = |pk: &str| serde_json::json!({ "pk": { "S": pk }, "sk": { "N": "1" } });
    let records: Vec<(&str, Vec<u8>)> = vec![
        ("a", record("INSERT", key("a"), Some(item("a", "first")))),
        ("garbage", b"{not json".to_vec()),
        // Larger than DynamoDB's 400 KB item limit: the target refuses it for good.
        (
            "big",
            record(
                "INSERT",
                key("big"),
                Some(item("big", &"x".repeat(410_000))),
            ),
        ),
        (
            "no-sk",
            record(
                "INSERT",
                serde_json::json!({ "pk": { "S": "no-sk" } }),
                Some(serde_json::json!({ "pk": { "S": "no-sk" } })),
            ),
        ),
        (
            "c",
            record("INSERT", key("c"), Some(item("c", "after them"))),
        ),
    ];
    for (pk, data) in records {
        k.put_record()
            .stream_name("hop")
            .partition_key(pk)
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .send()
            .await
            .unwrap();
    }
    let cfg = from_kinesis(moto, kl, dir, port).replace(
        "shard_refresh = \"1s\"\n",
        &format!("shard_refresh = \"1s\"\n{dead_letter}\n"),
    );
    let cfg = write_config(dir, "b.toml", &cfg);
    let st = Strait::spawn(&cfg, &dir.join("b.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let items = crate::common::aws::all_items(&c, "orders_copy").await;
        let pks: Vec<_> = items
            .iter()
            .map(|i| i["pk"].as_s().unwrap().clone())
            .collect();
        if pks == ["a", "c"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pks:?}\n{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    st
}

/// Checks the three dead letters of `run_with_bad_records` (in the order they were written),
/// and gives the one of the item over 400 KB.
fn check_dead_letters(lines: &[serde_json::Value]) -> serde_json::Value {
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["data"], "{not json", "{}", lines[0]);
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("not JSON"),
        "{}",
        lines[0]
    );
    for l in lines {
        assert_eq!(l["pipeline"], "from-kinesis");
        assert!(l["shard"].as_str().unwrap().starts_with("shardId-"), "{l}");
        assert!(!l["seq"].as_str().unwrap().is_empty(), "{l}");
    }
    let mut pks: Vec<_> = lines[1..]
        .iter()
        .map(|l| {
            l["record"]["dynamodb"]["Keys"]["pk"]["S"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    pks.sort();
    assert_eq!(pks, ["big", "no-sk"], "{lines:?}");
    let big = lines
        .iter()
        .find(|l| l["record"]["dynamodb"]["Keys"]["pk"]["S"] == "big")
        .unwrap();
    assert!(
        big["reason"].as_str().unwrap().contains("size"),
        "{}",
        big["reason"]
    );
    big.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_that_cannot_be_read_or_written_go_to_the_dead_letter_file() {
    let (moto, kl) = (Moto::start(), KinesisLocal::start());
    create_table(&moto.dynamodb().await, "orders_copy", None).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let port = crate::common::free_port_for_tests();
    let key = format!("dead_letter_file = \"{}\"", dead.display());
    let mut st = run_with_bad_records(&moto, &kl, dir.path(), port, &key).await;
    // Each key has its own lane: the refused ones may land after "c".
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lines: Vec<serde_json::Value> = loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let big = check_dead_letters(&lines);
    assert_eq!(
        big["record"]["dynamodb"]["NewImage"]["note"]["S"]
            .as_str()
            .unwrap()
            .len(),
        410_000
    );
    let (_, metrics) = crate::api::http(port, "GET", "/metrics", "").await;
    assert!(metrics.contains("refused"), "{metrics}");
    assert!(
        metrics.contains("strait_dead_lettered_total{pipeline=\"from-kinesis\"} 3"),
        "{metrics}"
    );
    assert!(st.sigterm().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_go_to_an_sqs_queue_with_the_sinks_access() {
    let (moto, kl) = (Moto::start(), KinesisLocal::start());
    create_table(&moto.dynamodb().await, "orders_copy", None).await;
    let sqs = moto.sqs().await;
    let url = sqs
        .create_queue()
        .queue_name("strait-dead")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A queue that does not exist stops the pipeline at start, with one line.
    let missing = from_kinesis(&moto, &kl, dir.path(), crate::common::free_port_for_tests())
        .replace(
            "shard_refresh = \"1s\"\n",
            "shard_refresh = \"1s\"\ndead_letter_queue = \"no-such-queue\"\n",
        );
    let k = kl.client().await;
    kl.create_stream(&k, "probe", 1).await;
    let missing = write_config(
        dir.path(),
        "missing.toml",
        &missing.replace("stream = \"hop\"", "stream = \"probe\""),
    );
    let (code, out, err) = crate::common::strait_cmd(
        &["run", "-c", missing.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 2, "{out}{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("dead-letter queue no-such-queue") && last.contains("NonExistentQueue"),
        "{err}"
    );

    let port = crate::common::free_port_for_tests();
    let key = "dead_letter_queue = \"strait-dead\"";
    let mut st = run_with_bad_records(&moto, &kl, dir.path(), port, key).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut letters = Vec::new();
    while letters.len() < 3 && std::time::Instant::now() < deadline {
        let got = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            letters.push(serde_json::from_str::<serde_json::Value>(m.body().unwrap()).unwrap());
        }
    }
    // SQS does not keep the order; the undecodable record has "data".
    letters.sort_by_key(|l| l.get("data").is_none());
    let big = check_dead_letters(&letters);
    // The 410 KB image does not fit in an SQS message: the keys stay, the images go.
    assert!(big["record"]["dynamodb"].get("NewImage").is_none(), "{big}");
    assert!(
        big["omitted"].as_str().unwrap().contains("message limit"),
        "{big}"
    );
    let (_, status) = crate::api::http(port, "GET", "/status", "").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["dead_lettered"], 3, "{status}");
    assert!(st.sigterm().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_stream_stops_at_start_with_one_line() {
    let moto = Moto::start();
    let kl = KinesisLocal::start();
    let c = moto.dynamodb().await;
    create_table(&c, "orders", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "orders_copy", None).await;
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "sink",
            to_kinesis(&moto, &kl, dir.path(), crate::common::free_port_for_tests()),
        ),
        (
            "source",
            from_kinesis(&moto, &kl, dir.path(), crate::common::free_port_for_tests()),
        ),
    ] {
        let cfg = write_config(dir.path(), &format!("{name}.toml"), &text);
        let (code, _, err) = crate::common::strait_cmd(
            &["run", "-c", cfg.to_str().unwrap()],
            Duration::from_secs(60),
        );
        assert_ne!(code, 0, "{name}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{name}: {err}");
        assert!(
            errors[0].contains("Kinesis stream hop does not exist")
                && errors[0].contains("aws kinesis create-stream"),
            "{name}: {}",
            errors[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_go_to_a_kafka_topic_keyed_by_item() {
    let (moto, kl) = (Moto::start(), KinesisLocal::start());
    let broker = crate::common::kafka::Broker::start();
    broker.create_topic("dead", 1).await;
    create_table(&moto.dynamodb().await, "orders_copy", None).await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port_for_tests();
    let key = format!(
        "dead_letter_kafka = {{ brokers = \"{}\", topic = \"dead\" }}",
        broker.bootstrap()
    );
    let mut st = run_with_bad_records(&moto, &kl, dir.path(), port, &key).await;
    let records = broker.consume_all("dead", 3, Duration::from_secs(30)).await;
    let letters: Vec<serde_json::Value> = records.iter().map(|r| r.json()).collect();
    let big = check_dead_letters(&letters);
    assert_eq!(
        big["record"]["dynamodb"]["NewImage"]["note"]["S"]
            .as_str()
            .unwrap()
            .len(),
        410_000
    );
    for (r, l) in records.iter().zip(&letters) {
        let reason = r
            .header("__connect.errors.exception.message")
            .unwrap()
            .unwrap();
        assert_eq!(std::str::from_utf8(reason).unwrap(), l["reason"]);
        // Keyed by the item's key, when the letter has an item.
        match l["record"]["dynamodb"].get("Keys") {
            Some(keys) => assert_eq!(r.key_str(), Some(keys.to_string())),
            None => assert_eq!(r.key_str(), None),
        }
    }
    let (_, status) = crate::api::http(port, "GET", "/status", "").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["dead_lettered"], 3, "{status}");
    assert!(st.sigterm().success());
}
