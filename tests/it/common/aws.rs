//! A real DynamoDB / DynamoDB Streams / Kinesis endpoint for tests: moto's server on a free
//! loopback port (one process per test, so tests do not share tables), and SDK clients for it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};

pub type Item = HashMap<String, AttributeValue>;

/// A moto server, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn moto_bin() -> String {
    std::env::var("STRAIT_MOTO").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/strait/venv-moto/bin/moto_server")
    })
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// moto checking credentials like AWS: no access key is known, so every request is refused
    /// (`INITIAL_NO_AUTH_ACTION_COUNT=0` turns its IAM checks on).
    pub fn start_checking_credentials() -> Moto {
        Self::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
    }

    fn start_with(env: &[(&str, &str)]) -> Moto {
        let bin = moto_bin();
        assert!(
            std::path::Path::new(&bin).exists(),
            "moto not installed at {bin}; run dev/test.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port_for_tests();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk().await)
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk().await)
    }

    /// The `[source]` / `[sink]` keys that reach this server.
    pub fn keys(&self) -> String {
        format!(
            "region = \"us-east-1\"\nendpoint = \"{}\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            self.endpoint()
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a table keyed by `pk` (S) and `sk` (N), with a stream of `view` (none if `None`).
pub async fn create_table(c: &aws_sdk_dynamodb::Client, name: &str, view: Option<StreamViewType>) {
    let mut req = c
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("sk")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        );
    if let Some(v) = view {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(v)
                .build()
                .unwrap(),
        );
    }
    req.send().await.unwrap();
}

/// Every item of a table, in key order (`pk`, then `sk` as text).
pub async fn all_items(c: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let r = c
            .scan()
            .table_name(table)
            .consistent_read(true)
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

/// Waits until two tables hold the same items; returns how long it took.
pub async fn wait_equal(
    c: &aws_sdk_dynamodb::Client,
    a: &str,
    d: &aws_sdk_dynamodb::Client,
    b: &str,
    timeout: Duration,
    st: &super::Strait,
) -> Duration {
    let start = Instant::now();
    let mut before = Duration::ZERO;
    loop {
        let (x, y) = (all_items(c, a).await, all_items(d, b).await);
        if x == y {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            let missing = x
                .iter()
                .filter(|i| !y.contains(i))
                .take(3)
                .collect::<Vec<_>>();
            let extra = y
                .iter()
                .filter(|i| !x.contains(i))
                .take(3)
                .collect::<Vec<_>>();
            panic!(
                "tables differ after {timeout:?}: {} vs {} items; source-only {missing:?}; target-only {extra:?}\n{}",
                x.len(),
                y.len(),
                st.log_text()
            );
        }
        // Reading both tables loads moto as much as strait does: wait at least as long as the
        // comparison took, so the check does not starve what it measures.
        let compare = start.elapsed().saturating_sub(before);
        tokio::time::sleep(compare.max(Duration::from_millis(200))).await;
        before = start.elapsed();
    }
}

pub fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// An item with every attribute type, varied by `i` and `version`.
pub fn rich_item(i: usize, version: usize) -> Item {
    use aws_smithy_types::Blob;
    let mut m = Item::new();
    m.insert("pk".into(), s(&format!("user#{}", i % 17)));
    m.insert("sk".into(), n(i));
    m.insert("name".into(), s(&format!("name {i} v{version} ✓")));
    m.insert(
        "big".into(),
        n(format!(
            "1234567890123456789012345678901234567{}",
            version % 10
        )),
    );
    m.insert("ratio".into(), n(format!("-0.{:04}1", i * 7 + version)));
    m.insert(
        "bin".into(),
        AttributeValue::B(Blob::new(vec![0, 1, (i % 256) as u8, 255])),
    );
    m.insert(
        "flag".into(),
        AttributeValue::Bool(version.is_multiple_of(2)),
    );
    m.insert("nothing".into(), AttributeValue::Null(true));
    m.insert(
        "tags".into(),
        AttributeValue::Ss(vec![format!("t{}", i % 3), format!("v{version}")]),
    );
    m.insert(
        "scores".into(),
        AttributeValue::Ns(vec!["1".into(), format!("{}", version + 2)]),
    );
    m.insert(
        "blobs".into(),
        AttributeValue::Bs(vec![
            Blob::new(vec![1, 2]),
            Blob::new(vec![version as u8, 9, 9]),
        ]),
    );
    let mut inner = Item::new();
    inner.insert("city".into(), s("Zürich"));
    inner.insert(
        "list".into(),
        AttributeValue::L(vec![
            n(version),
            s("x"),
            AttributeValue::Bool(true),
            AttributeValue::M(Item::new()),
        ]),
    );
    m.insert("address".into(), AttributeValue::M(inner));
    if version % 3 == 1 {
        m.insert("optional".into(), s("only sometimes"));
    }
    m
}

/// A kinesis-local (kinesis-mock) server: Kinesis with real resharding. It binds every
/// interface; plain HTTP on a free port, streams created and resharded at once.
pub struct KinesisLocal {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl KinesisLocal {
    pub fn start() -> KinesisLocal {
        let main = std::env::var("STRAIT_KINESIS_LOCAL").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/strait/kinesis-local/node_modules/kinesis-local/main.js")
        });
        assert!(
            std::path::Path::new(&main).exists(),
            "kinesis-local not installed at {main}; run dev/test.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let (port, tls) = (super::free_port_for_tests(), super::free_port_for_tests());
        let log = std::fs::File::create(dir.path().join("kinesis.log")).unwrap();
        // It reads its server.json (TLS settings) from the working directory.
        let child = Command::new("node")
            .arg(&main)
            .current_dir(std::path::Path::new(&main).parent().unwrap())
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
            .env("CREATE_STREAM_DURATION", "0ms")
            .env("SPLIT_SHARD_DURATION", "0ms")
            .env("MERGE_SHARDS_DURATION", "0ms")
            .env("LOG_LEVEL", "WARN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "kinesis-local did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        KinesisLocal {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await;
        aws_sdk_kinesis::Client::new(&sdk)
    }

    /// The `[source]` / `[sink]` keys that reach this server.
    pub fn keys(&self) -> String {
        format!(
            "region = \"us-east-1\"\nendpoint = \"{}\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            self.endpoint()
        )
    }

    /// Waits until the stream is ACTIVE (after a create, a split or a merge).
    /// Creates `stream` with `shards` shards and waits until it is active.
    pub async fn create_stream(&self, c: &aws_sdk_kinesis::Client, stream: &str, shards: i32) {
        c.create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await
            .unwrap();
        self.wait_active(c, stream).await;
    }

    pub async fn wait_active(&self, c: &aws_sdk_kinesis::Client, stream: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = c
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .unwrap();
            let status = d.stream_description_summary.unwrap().stream_status;
            if status == aws_sdk_kinesis::types::StreamStatus::Active {
                return;
            }
            assert!(Instant::now() < deadline, "stream {stream} is {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python of moto's virtualenv, which has boto3 (a real consumer of DynamoDB JSON).
pub fn moto_python() -> std::path::PathBuf {
    std::path::Path::new(&moto_bin())
        .parent()
        .unwrap()
        .join("python")
}
