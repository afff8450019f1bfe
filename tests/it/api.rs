//! The HTTP API against a running pipeline: metrics parsed by the reference Prometheus parser,
//! pause/resume, the rate limit, and lag.

use std::time::{Duration, Instant};

use crate::common::*;
use bson::{doc, Document};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

/// A counter of one pipeline from the `/metrics` text (`name{pipeline="p"} value`), if there.
pub(crate) fn pipeline_counter(metrics: &str, name: &str, pipeline: &str) -> Option<u64> {
    let head = format!("{name}{{pipeline=\"{pipeline}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

async fn status(port: u16) -> serde_json::Value {
    serde_json::from_str(&http(port, "GET", "/status", "").await.1).unwrap()
}

/// Parses OpenMetrics text with the reference Python parser (prometheus_client) and returns
/// (name, labels, value) samples.
pub(crate) fn parse_metrics(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    let python = std::env::var("STRAIT_SECANTUSD")
        .map(|p| p.replace("secantusd-py", "python"))
        .unwrap_or_else(|_| {
            format!(
                "{}/.cache/strait/venv-mongo/bin/python",
                std::env::var("HOME").unwrap()
            )
        });
    let script = "import sys,json\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as f\nprint(json.dumps([[s.name,s.labels,s.value] for m in f(sys.stdin.read()) for s in m.samples]))";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the metrics:\n{text}"
    );
    let v: Vec<(String, serde_json::Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn sample(samples: &[(String, serde_json::Value, f64)], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l[label.0] == label.1)
        .unwrap_or_else(|| panic!("no sample {name}{{{}={}}}", label.0, label.1))
        .2
}

async fn start(extra: &str) -> (Server, Server, Strait, u16, tempfile::TempDir) {
    let (src, dst) = (Server::start(), Server::start());
    src.client()
        .await
        .database("m")
        .collection::<Document>("c")
        .insert_one(doc! { "_id": -1 })
        .await
        .unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(
        &src,
        &dst,
        &format!("[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"sesame\"\n{extra}"),
    );
    let cfg = write_config(dir.path(), "p.toml", &text);
    let st = Strait::spawn(&cfg, &dir.path().join("log"));
    let d = dst.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Streaming once the copied document is there and the API says so.
    loop {
        let copied = d
            .database("m")
            .collection::<Document>("c")
            .count_documents(doc! {})
            .await
            .unwrap()
            == 1;
        if copied
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && status(port).await["state"] == "streaming"
        {
            break;
        }
        assert!(Instant::now() < deadline, "{}", st.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (src, dst, st, port, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_applied() {
    let (src, dst, st, port, _dir) = start("").await;
    let (s, d) = (src.client().await, dst.client().await);
    let c = s.database("m").collection::<Document>("c");
    c.insert_many((0..40).map(|i| doc! { "_id": i, "v": i }))
        .await
        .unwrap();
    // Each update changes something (a no-op update produces no change event).
    for i in 1..16 {
        c.update_one(doc! { "_id": i }, doc! { "$set": { "v": -i } })
            .await
            .unwrap();
    }
    c.replace_one(doc! { "_id": 20 }, doc! { "_id": 20, "r": true })
        .await
        .unwrap();
    c.delete_many(doc! { "_id": { "$gte": 30 } }).await.unwrap();
    wait_identical(
        &s,
        ("m", "c"),
        &d,
        ("m", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, text) = http(port, "GET", "/metrics", "").await;
        assert_eq!(code, 200);
        let m = parse_metrics(&text);
        let got = |op| sample(&m, "strait_events_applied_total", ("op", op));
        if got("delete") == 10.0 || Instant::now() > deadline {
            assert_eq!(got("insert"), 40.0);
            assert_eq!(got("update"), 15.0);
            assert_eq!(got("replace"), 1.0);
            assert_eq!(got("delete"), 10.0);
            assert!(sample(&m, "strait_events_read_total", ("pipeline", "test")) >= 66.0);
            assert_eq!(
                sample(&m, "strait_fullsync_documents_copied", ("ns", "m.c")),
                1.0
            );
            assert!(m
                .iter()
                .any(|(n, _, v)| n == "strait_apply_latency_seconds_count" && *v > 0.0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, progress) = http(port, "GET", "/progress", "").await;
    assert!(progress.contains("\"ns\":\"m.c\""), "{progress}");
    let (_, config) = http(port, "GET", "/config", "").await;
    assert!(
        config.contains("token = \"***\"") && !config.contains("sesame"),
        "{config}"
    );
    // The checkpointer saves every second: the saved position shows up in /status.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st_json = status(port).await;
        if st_json["positions"]["checkpointed"]["token"].is_object() {
            assert!(
                st_json["checkpoint_age_seconds"].as_f64().unwrap() < 5.0,
                "{st_json}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{st_json}\n{}", st.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_target_and_resume_catches_up() {
    let (src, dst, st, port, _dir) = start("").await;
    let (s, d) = (src.client().await, dst.client().await);
    // Mutating endpoints need the token.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(
        b"POST /pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = String::new();
    raw.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 401"), "{buf}");

    assert_eq!(http(port, "POST", "/pause", "").await.0, 200);
    let c = s.database("m").collection::<Document>("c");
    let target = d.database("m").collection::<Document>("c");
    let before = target.count_documents(doc! {}).await.unwrap();
    for i in 0..30 {
        c.insert_one(doc! { "_id": i }).await.unwrap();
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            target.count_documents(doc! {}).await.unwrap(),
            before,
            "applied while paused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status(port).await["state"], "paused");
    // The CLI reads the same status and resumes through the API.
    let cfg = _dir.path().join("p.toml");
    let (code, out, err) = strait_cmd(
        &["status", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pipeline test: paused"), "{out}");
    let (code, out, err) = strait_cmd(
        &["resume", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_identical(
        &s,
        ("m", "c"),
        &d,
        ("m", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_within_ten_percent_and_lag_follows() {
    let (src, dst, st, port, _dir) = start("").await;
    let (s, d) = (src.client().await, dst.client().await);
    assert_eq!(
        http(port, "PUT", "/rate", "{\"ops_per_sec\": 200}").await.0,
        200
    );
    let c = s.database("m").collection::<Document>("c");
    c.insert_many((0..2000).map(|i| doc! { "_id": i }))
        .await
        .unwrap();
    let target = d.database("m").collection::<Document>("c");
    // Skip the first second (burst, start-up), then measure over 5 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n0, t0) = (
        target.count_documents(doc! {}).await.unwrap(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (n1, t1) = (
        target.count_documents(doc! {}).await.unwrap(),
        Instant::now(),
    );
    let rate = (n1 - n0) as f64 / (t1 - t0).as_secs_f64();
    assert!(
        (180.0..=220.0).contains(&rate),
        "applied {rate:.1} ops/s with a 200 ops/s limit"
    );
    // The target is held back: lag rises.
    let lag = status(port).await["lag_seconds"].as_f64().unwrap();
    assert!(lag >= 2.0, "lag {lag} while throttled");
    assert_eq!(http(port, "PUT", "/rate", "0").await.0, 200);
    wait_identical(
        &s,
        ("m", "c"),
        &d,
        ("m", "c"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lag = status(port).await["lag_seconds"].as_f64().unwrap();
        if lag < 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "lag stayed at {lag}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_delay_keeps_the_target_behind() {
    let (src, dst, st, _port, _dir) = start("[stream]\ntarget_delay = \"4s\"\n").await;
    let (s, d) = (src.client().await, dst.client().await);
    s.database("m")
        .collection::<Document>("c")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let written = Instant::now();
    let target = d.database("m").collection::<Document>("c");
    while target.find_one(doc! { "_id": 1 }).await.unwrap().is_none() {
        assert!(
            written.elapsed() < Duration::from_secs(20),
            "{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cluster time has one-second resolution: at least 3 s of the 4 s delay are certain.
    let took = written.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "applied after {took:?} with a 4 s delay"
    );
}
