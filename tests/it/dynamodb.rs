//! DynamoDB -> DynamoDB against moto's server: full sync + streaming of every attribute type,
//! SIGKILLs during the scan and the streaming, last-writer-wins conditions, and the start-up
//! errors of a table that cannot be read.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};

use crate::common::aws::{all_items, create_table, n, rich_item, s, wait_equal, Item, Moto};
use crate::common::{strait_cmd, write_config, Strait};

fn config(moto: &Moto, dir: &std::path::Path, source: &str, sink: &str, extra: &str) -> String {
    format!(
        "id = \"ddb\"\n{extra}\n[source]\ntype = \"dynamodb\"\ntable = \"{source}\"\n{keys}poll_interval = \"100ms\"\n\n[sink]\ntype = \"dynamodb\"\ntable = \"{sink}\"\n{keys}\n[checkpoint]\nstore = \"file\"\npath = \"{}\"\n",
        dir.join("ckpt.json").display(),
        keys = moto.keys(),
    )
}

async fn put(c: &aws_sdk_dynamodb::Client, table: &str, item: Item) {
    c.put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

fn key(i: usize) -> Item {
    let item = rich_item(i, 0);
    [
        ("pk".to_string(), item["pk"].clone()),
        ("sk".to_string(), item["sk"].clone()),
    ]
    .into()
}

/// One change of the mixed writer: a new version, an in-place update, a removed attribute, a
/// delete or a re-insert.
async fn change(c: &aws_sdk_dynamodb::Client, table: &str, i: usize, round: usize) {
    match round % 5 {
        0 | 3 => put(c, table, rich_item(i, round)).await,
        1 => {
            c.update_item()
                .table_name(table)
                .set_key(Some(key(i)))
                .update_expression(
                    "SET #n = :n, #c = if_not_exists(#c, :z) + :one ADD tags :t REMOVE optional",
                )
                .expression_attribute_names("#n", "name")
                .expression_attribute_names("#c", "counter")
                .expression_attribute_values(":n", s(&format!("updated {i}/{round}")))
                .expression_attribute_values(":z", n(0))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":t", AttributeValue::Ss(vec![format!("r{round}")]))
                .send()
                .await
                .unwrap();
        }
        2 => {
            c.delete_item()
                .table_name(table)
                .set_key(Some(key(i)))
                .send()
                .await
                .unwrap();
        }
        _ => put(c, table, rich_item(i, round + 100)).await,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_sync_then_streaming_copies_every_attribute_type_exactly() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "orders", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "orders_copy", None).await;
    for i in 0..300 {
        put(&c, "orders", rich_item(i, 0)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &config(&moto, dir.path(), "orders", "orders_copy", ""),
    );
    let mut st = Strait::spawn(&cfg, &dir.path().join("log"));
    let took = wait_equal(
        &c,
        "orders",
        &c,
        "orders_copy",
        Duration::from_secs(60),
        &st,
    )
    .await;
    eprintln!("full sync of 300 items equal after {took:?}");
    // Changes of every kind while streaming.
    for round in 1..=5 {
        for i in (round..300).step_by(7) {
            change(&c, "orders", i, round).await;
        }
    }
    let last = Instant::now();
    let took = wait_equal(
        &c,
        "orders",
        &c,
        "orders_copy",
        Duration::from_secs(60),
        &st,
    )
    .await;
    eprintln!(
        "streamed changes equal {took:?} after the last write ({:?} since)",
        last.elapsed()
    );
    let copy = all_items(&c, "orders_copy").await;
    let sample = copy
        .iter()
        .find(|i| i.get("sk") == Some(&n(14)))
        .expect("item 14 copied");
    assert!(matches!(sample.get("blobs"), Some(AttributeValue::Bs(_))));
    assert!(matches!(
        sample.get("nothing"),
        Some(AttributeValue::Null(true))
    ));
    assert!(matches!(sample.get("address"), Some(AttributeValue::M(_))));
    // Stopped, changed meanwhile, started again: it goes on from the checkpoint.
    assert!(st.sigterm().success());
    let (code, out, err) = strait_cmd(
        &["checkpoint", "show", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("source_state") && out.contains("shardId-"),
        "{out}"
    );
    for i in 0..40 {
        change(&c, "orders", i, 6 + i % 5).await;
    }
    let log = dir.path().join("log2");
    let st = Strait::spawn(&cfg, &log);
    wait_equal(
        &c,
        "orders",
        &c,
        "orders_copy",
        Duration::from_secs(60),
        &st,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Resuming from checkpoint"), "{text}");
    assert!(!text.contains("Scan handed over"), "scanned again:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_during_the_scan_and_the_streaming_lose_nothing() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "src", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "dst", None).await;
    let items = 1500;
    for chunk in (0..items).collect::<Vec<_>>().chunks(25) {
        let reqs = chunk
            .iter()
            .map(|&i| {
                aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(
                        aws_sdk_dynamodb::types::PutRequest::builder()
                            .set_item(Some(rich_item(i, 0)))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        c.batch_write_item()
            .request_items("src", reqs)
            .send()
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &config(
            &moto,
            dir.path(),
            "src",
            "dst",
            "[full_sync]\nbatch_docs = 40\nparallelism = 3\n",
        ),
    );
    // A writer changes items all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 1;
            let mut writes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in (round % 13..items).step_by(13) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    change(&c, "src", i, round).await;
                    writes += 1;
                }
                round += 1;
            }
            writes
        })
    };
    let log = dir.path().join("log");
    // Killed during the scan (1,500 items in pages of 40 take seconds on moto).
    let mut st = Strait::spawn(&cfg, &log);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let copied_before_kill = all_items(&c, "dst").await.len();
    st.sigkill_running();
    assert!(
        copied_before_kill < items,
        "the scan was already finished when killed ({copied_before_kill} items)"
    );
    // Killed again at random points while streaming.
    for pause in [2500, 1800, 3100] {
        st = Strait::spawn(&cfg, &log);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        st.sigkill_running();
    }
    st = Strait::spawn(&cfg, &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let took = wait_equal(&c, "src", &c, "dst", Duration::from_secs(60), &st).await;
    eprintln!(
        "{items} items + {writes} changes, 4 SIGKILLs ({copied_before_kill} copied at the first): equal {took:?} after the writer stopped"
    );
    let text = st.log_text();
    if std::env::var("STRAIT_TEST_LOG").is_ok() {
        eprintln!("{text}");
    }
    assert!(
        text.matches("Resuming from checkpoint").count() >= 4,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn last_writer_wins_keeps_the_newer_item_and_counts_the_stale_change() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "a", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "b", None).await;
    let item = |i: usize, ts: u64, who: &str| -> Item {
        [
            ("pk".to_string(), s("k")),
            ("sk".to_string(), n(i)),
            ("who".to_string(), s(who)),
            ("last_update_timestamp".to_string(), n(ts)),
        ]
        .into()
    };
    // The target already holds newer versions of items 0..5 and older ones of 5..10.
    for i in 0..10 {
        let ts = if i < 5 { 2_000 } else { 500 };
        put(&c, "b", item(i, ts, "target")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port_for_tests();
    let mut text = config(
        &moto,
        dir.path(),
        "a",
        "b",
        &format!("mode = \"incremental\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    text = text.replace(
        "[sink]\ntype = \"dynamodb\"\n",
        "[sink]\ntype = \"dynamodb\"\ntimestamp_attribute = \"last_update_timestamp\"\n",
    );
    let cfg = write_config(dir.path(), "p.toml", &text);
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    crate::common::wait_for(Duration::from_secs(30), "streaming", &st, || async {
        st.log_text().contains("Pipeline started")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..10 {
        put(&c, "a", item(i, 1_000, "source")).await;
    }
    // Item 10 is new on the target; item 0 is deleted on the source with an older version.
    put(&c, "a", item(10, 1_000, "source")).await;
    c.delete_item()
        .table_name("a")
        .set_key(Some(
            [("pk".to_string(), s("k")), ("sk".to_string(), n(0))].into(),
        ))
        .send()
        .await
        .unwrap();
    let expect = |i: usize| -> Item {
        match i {
            0..5 => item(i, 2_000, "target"),
            _ => item(i, 1_000, "source"),
        }
    };
    let want: Vec<Item> = (0..=10).map(expect).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = all_items(&c, "b").await;
        got.sort_by_key(|i| match i.get("sk") {
            Some(AttributeValue::N(v)) => v.parse::<u64>().unwrap(),
            _ => 0,
        });
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "target {got:?}\n{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 5 older puts and the delete of an item the target holds newer were dropped as stale.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = crate::api::http(port, "GET", "/metrics", "").await;
        let stale = crate::api::pipeline_counter(&metrics, "strait_events_skipped_total", "ddb");
        if stale == Some(6) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale count {stale:?}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_stream_position_resyncs_into_an_emptied_table() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "src", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "dst", None).await;
    for i in 0..40 {
        put(&c, "src", rich_item(i, 0)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = "[stream]\non_history_lost = \"resync\"\n";
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &config(&moto, dir.path(), "src", "dst", extra),
    );
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_equal(&c, "src", &c, "dst", Duration::from_secs(60), &st).await;
    assert!(st.sigterm().success());
    // While strait is down, items are deleted and changed, and the stream forgets the shard
    // strait was reading (as DynamoDB does after 24 hours): the checkpoint names a shard the
    // stream no longer lists.
    for i in 0..10 {
        change(&c, "src", i, 2).await;
    }
    for i in 10..15 {
        put(&c, "src", rich_item(i, 7)).await;
    }
    let ckpt = dir.path().join("ckpt.json");
    let text = std::fs::read_to_string(&ckpt).unwrap();
    let at = text.find("shardId-").expect("a shard in the checkpoint");
    let shard: String = text[at..].chars().take_while(|c| *c != '"').collect();
    std::fs::write(
        &ckpt,
        text.replace(&shard, "shardId-00000000000000000000-00000000"),
    )
    .unwrap();
    st = Strait::spawn(&cfg, &log);
    let took = wait_equal(&c, "src", &c, "dst", Duration::from_secs(60), &st).await;
    let text = st.log_text();
    assert!(text.contains("scanning the table again"), "{text}");
    assert!(text.contains("Emptied the target table"), "{text}");
    assert_eq!(all_items(&c, "dst").await.len(), 30);
    eprintln!("resynced, equal {took:?} after the restart");
    assert!(st.sigterm().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_that_cannot_be_read_stops_at_start_with_one_line() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "plain", None).await;
    create_table(&c, "keys_only", Some(StreamViewType::KeysOnly)).await;
    create_table(&c, "good", Some(StreamViewType::NewAndOldImages)).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, text: String| {
        let cfg = write_config(dir.path(), &format!("{name}.toml"), &text);
        let (code, _out, err) = strait_cmd(
            &["run", "-c", cfg.to_str().unwrap()],
            Duration::from_secs(60),
        );
        assert_ne!(code, 0, "{name}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{name}: {err}");
        errors[0].to_string()
    };
    let line = run("missing", config(&moto, dir.path(), "nope", "good", ""));
    assert!(
        line.contains("nope") && line.contains("does not exist"),
        "{line}"
    );
    let line = run("no_stream", config(&moto, dir.path(), "plain", "good", ""));
    assert!(
        line.contains("plain")
            && line.contains("no stream")
            && line.contains("StreamViewType=NEW_AND_OLD_IMAGES"),
        "{line}"
    );
    let line = run(
        "keys_only",
        config(&moto, dir.path(), "keys_only", "good", ""),
    );
    assert!(
        line.contains("KEYS_ONLY") && line.contains("NEW_AND_OLD_IMAGES"),
        "{line}"
    );
    let line = run("no_sink", config(&moto, dir.path(), "good", "absent", ""));
    assert!(
        line.contains("absent") && line.contains("does not exist"),
        "{line}"
    );
    // Nothing listens on the port: one line that says it cannot reach the endpoint.
    let port = crate::common::free_port_for_tests();
    let text = config(&moto, dir.path(), "good", "good", "")
        .replace(&moto.endpoint(), &format!("http://127.0.0.1:{port}"));
    let text = text.replace("[source]\n", "[source]\nconnect_timeout = \"1s\"\n");
    let line = run("unreachable", text);
    assert!(
        line.contains("cannot reach") && line.contains(&port.to_string()),
        "{line}"
    );
    // Credentials AWS does not know: one line that says so.
    let checking = Moto::start_checking_credentials();
    let line = run(
        "credentials",
        config(&checking, dir.path(), "good", "good", ""),
    );
    assert!(
        line.contains("refused the credentials") && line.contains("access_key_id"),
        "{line}"
    );
    // A bad key names the file line.
    let text =
        config(&moto, dir.path(), "good", "good", "").replace("poll_interval", "poll_intervall");
    let line = run("bad_key", text);
    assert!(
        line.contains("poll_intervall") && line.contains("bad_key.toml:10:"),
        "{line}"
    );
}

/// One direction of a two-way pair: `from`'s stream into `to`, stamping `from_side`, passing
/// over what the other direction wrote (`to_side`).
fn direction(
    moto: &Moto,
    dir: &std::path::Path,
    from: (&str, &str),
    to: (&str, &str),
    port: u16,
) -> String {
    format!(
        "id = \"{0}-to-{1}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[source]\ntype = \"dynamodb\"\ntable = \"{0}\"\n{keys}poll_interval = \"100ms\"\nignore_origin = \"{3}\"\n\n[sink]\ntype = \"dynamodb\"\ntable = \"{1}\"\n{keys}timestamp_attribute = \"last_update_timestamp\"\nstamp_origin = \"{2}\"\n\n[checkpoint]\nstore = \"file\"\npath = \"{4}\"\n",
        from.0,
        to.0,
        from.1,
        to.1,
        dir.join(format!("{}.ckpt", from.0)).display(),
        keys = moto.keys(),
    )
}

/// A write by an application on one side: it sets the timestamp (milliseconds, with the side
/// as the last digit so the two sides never tie) and its side's name, as the seed's loader does.
fn app_item(k: usize, side: &str, digit: u64, extra: &str) -> Item {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    [
        ("pk".to_string(), s("shared")),
        ("sk".to_string(), n(k)),
        ("data".to_string(), s(extra)),
        ("last_update_timestamp".to_string(), n(ms * 10 + digit)),
        ("last_updater_region".to_string(), s(side)),
    ]
    .into()
}

async fn counter(port: u16, name: &str, pipeline: &str) -> u64 {
    let (_, m) = crate::api::http(port, "GET", "/metrics", "").await;
    crate::api::pipeline_counter(&m, name, pipeline).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_way_with_writers_on_both_sides_ends_equal_without_ping_pong() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "east", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "china", Some(StreamViewType::NewAndOldImages)).await;
    // Items only the first side has before the pair starts: the full sync copies them.
    for k in 0..50 {
        put(&c, "east", app_item(k, "us-east-1", 0, "seed")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (pe, pc) = (
        crate::common::free_port_for_tests(),
        crate::common::free_port_for_tests(),
    );
    let east = ("east", "us-east-1");
    let china = ("china", "cn-north-1");
    let ce = write_config(
        dir.path(),
        "e.toml",
        &direction(&moto, dir.path(), east, china, pe),
    );
    let cc = write_config(
        dir.path(),
        "c.toml",
        &direction(&moto, dir.path(), china, east, pc),
    );
    // Both directions in one process (`strait run -c e.toml -c c.toml`).
    let mut se = Strait::spawn_many(&[&ce, &cc], &dir.path().join("both.log"));
    wait_equal(&c, "east", &c, "china", Duration::from_secs(60), &se).await;
    // Writers on both sides, on overlapping keys: puts, updates and deletes.
    let writer = |table: &'static str, side: &'static str, digit: u64| {
        let c = c.clone();
        tokio::spawn(async move {
            let (mut writes, mut deletes) = (0u64, 0u64);
            for round in 0..6 {
                // East writes every third key, China every second: every sixth key is shared.
                for k in (0..80).step_by(3 - digit as usize) {
                    if (k + round) % 7 == 0 {
                        c.delete_item()
                            .table_name(table)
                            .set_key(Some(
                                [("pk".to_string(), s("shared")), ("sk".to_string(), n(k))].into(),
                            ))
                            .send()
                            .await
                            .unwrap();
                        deletes += 1;
                    } else {
                        put(
                            &c,
                            table,
                            app_item(k, side, digit, &format!("{side} r{round}")),
                        )
                        .await;
                        writes += 1;
                    }
                }
            }
            (writes, deletes)
        })
    };
    let (we, wc) = (
        writer("east", "us-east-1", 0),
        writer("china", "cn-north-1", 1),
    );
    // Deliberate conflicts: the same key written on both sides at once; China's is later.
    for k in 100..105 {
        put(&c, "east", app_item(k, "us-east-1", 0, "east loses")).await;
        put(&c, "china", app_item(k, "cn-north-1", 1, "china wins")).await;
    }
    let (we, wc) = (we.await.unwrap(), wc.await.unwrap());
    let took = wait_equal(&c, "east", &c, "china", Duration::from_secs(90), &se).await;
    eprintln!("two-way: east {we:?}, china {wc:?} (writes, deletes): equal {took:?} after the writers stopped");
    let items = all_items(&c, "east").await;
    for k in 100..105 {
        let it = items.iter().find(|i| i.get("sk") == Some(&n(k))).unwrap();
        assert_eq!(it.get("data"), Some(&s("china wins")), "{it:?}");
    }
    // Quiet: nothing is being shipped back and forth any more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = |p, id: &'static str| async move {
        (
            counter(p, "strait_two_way_applied_total", id).await,
            counter(p, "strait_two_way_echoes_total", id).await,
            counter(p, "strait_two_way_stale_total", id).await,
            counter(p, "strait_two_way_conflicts_total", id).await,
        )
    };
    let (a1, b1) = (
        read(pe, "east-to-china").await,
        read(pc, "china-to-east").await,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a2, b2) = (
        read(pe, "east-to-china").await,
        read(pc, "china-to-east").await,
    );
    assert_eq!(
        (a1, b1),
        (a2, b2),
        "changes still moving after the tables matched"
    );
    eprintln!("east->china (applied, echoes, stale, conflicts) {a2:?}; china->east {b2:?}");
    // Each direction applied at most its side's own changes (plus the other side's deletes,
    // which pass once and end there): nothing went round.
    assert!(a2.0 <= 50 + we.0 + we.1 + wc.1 + 5, "{a2:?}");
    assert!(b2.0 <= wc.0 + wc.1 + we.1 + 5, "{b2:?}");
    assert!(a2.1 > 0 && b2.1 > 0, "no echoes passed over: {a2:?} {b2:?}");
    assert!(a2.3 >= 1, "no conflict recorded: {a2:?}");
    let log = se.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Conflict:") && l.contains("east loses"))
        .unwrap_or_else(|| panic!("no conflict line with the losing image:\n{log}"));
    assert!(line.contains("china wins"), "{line}");
    // One SIGTERM stops both directions cleanly.
    assert!(se.sigterm().success(), "{}", se.log_text());
    for side in ["east", "china"] {
        assert!(dir.path().join(format!("{side}.ckpt")).exists(), "{side}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_in_one_process_stop_together_when_one_cannot_run() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "east", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&c, "china", Some(StreamViewType::NewAndOldImages)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = || crate::common::free_port_for_tests();
    let good = write_config(
        dir.path(),
        "good.toml",
        &direction(&moto, dir.path(), ("east", "e"), ("china", "c"), port()),
    );
    let bad = write_config(
        dir.path(),
        "bad.toml",
        &direction(&moto, dir.path(), ("gone", "g"), ("china", "c"), port()),
    );
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let started = Instant::now();
    let (code, out, err) = strait_cmd(
        &["run", "-c", &arg(&good), "-c", &arg(&bad)],
        Duration::from_secs(60),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("table gone does not exist"), "{err}");
    // The same id twice would share a checkpoint: refused before anything starts.
    let (code, out, err) = strait_cmd(
        &["run", "-c", &arg(&good), "-c", &arg(&good)],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("both have id = \"east-to-china\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_generator_writes_what_it_reports() {
    let moto = Moto::start();
    let c = moto.dynamodb().await;
    create_table(&c, "orders", None).await;
    // The loader takes credentials from the AWS default chain (moto accepts any).
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let started = Instant::now();
    let (code, out, err) = strait_cmd(
        &[
            "load",
            "dynamodb",
            "--table",
            "orders",
            "--endpoint",
            &moto.endpoint(),
            "--region",
            "us-east-1",
            "--ops",
            "300",
            "--rate",
            "150",
            "--keys",
            "100",
            "--side",
            "cn-north-1",
            "--side-digit",
            "1",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let total: u64 = ["puts", "updates", "deletes"]
        .iter()
        .map(|k| report[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 300, "{report}");
    assert_eq!(report["puts"], 180, "{report}");
    // At 150 ops/s, 300 operations take about two seconds, not less.
    assert!(started.elapsed() >= Duration::from_millis(1900), "{report}");
    let items = all_items(&c, "orders").await;
    assert!(!items.is_empty() && items.len() <= 100);
    for i in &items {
        assert_eq!(i.get("last_updater_region"), Some(&s("cn-north-1")));
        match i.get("last_update_timestamp") {
            Some(AttributeValue::N(t)) => assert!(t.ends_with('1'), "{t}"),
            other => panic!("{other:?}"),
        }
    }
    // Puts write whole orders (an update of an absent key creates a partial one).
    assert!(items
        .iter()
        .any(|i| matches!(i.get("customer"), Some(AttributeValue::M(_)))));
}
