//! What the benchmarks share: settings from the environment, the servers and strait as child
//! processes, their CPU and memory, strait's HTTP API, and the MongoDB clients and documents
//! of the harness.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongodb::{Client, Collection};

use crate::secantus;

pub fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

pub fn env_opt(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

pub fn env_str(k: &str, d: &str) -> String {
    env_opt(k).unwrap_or_else(|| d.to_string())
}
// ---------------------------------------------------------------------------------------------
// Processes: servers, broker, strait; CPU and memory accounting.

pub struct Proc {
    pub child: Child,
    pub port: u16,
    /// The Rust SecantusDB server's data directory, removed after the process stops.
    _dir: Option<tempfile::TempDir>,
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_to(name: &str, port: u16, suffix: &str) -> Stdio {
    match env_opt("BENCH_LOG_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            Stdio::from(std::fs::File::create(format!("{dir}/{name}-{port}.{suffix}")).unwrap())
        }
        None => Stdio::null(),
    }
}

pub fn wait_listening(child: &mut Child, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("{what} exited with {s}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn start_mongo(name: &str) -> Proc {
    let cache = env_str("BENCH_CACHE", "6G");
    let port = free_port();
    let (mut cmd, dir) = secantus::secantus_command(port, &cache);
    let mut child = cmd
        .stdout(log_to(name, port, "out"))
        .stderr(log_to(name, port, "err"))
        .spawn()
        .unwrap();
    println!(
        "server {name}: pid {} port {port} cache {cache}",
        child.id()
    );
    wait_listening(&mut child, port, name);
    Proc {
        child,
        port,
        _dir: dir,
    }
}

pub fn start_tansu() -> Proc {
    let bin = env_opt("STRAIT_TANSU").unwrap_or_else(|| {
        format!(
            "{}/.cache/strait/tansu/bin/tansu",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        std::path::Path::new(&bin).exists(),
        "tansu not installed at {bin}; run dev/install-servers.sh"
    );
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(&bin);
    cmd.arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args([
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            "bench",
        ]);
    // Tansu reads these from the environment too.
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
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_to("tansu", port, "out"))
        .stderr(log_to("tansu", port, "err"))
        .spawn()
        .unwrap();
    println!("broker tansu: pid {} port {port}", child.id());
    wait_listening(&mut child, port, "tansu");
    Proc {
        child,
        port,
        _dir: None,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn strait_bin() -> String {
    env_opt("STRAIT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_strait").to_string())
}

pub fn strait(cfg: &std::path::Path, name: &str) -> Child {
    let err = match env_opt("BENCH_LOG_DIR") {
        Some(dir) => {
            Stdio::from(std::fs::File::create(format!("{dir}/strait-{name}.log")).unwrap())
        }
        None => Stdio::inherit(),
    };
    Command::new(strait_bin())
        .args(["run", "-c"])
        .arg(cfg)
        .env("STRAIT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap()
}

pub fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Peak RSS (VmHWM) in KB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// CPU use of named processes over one phase.
pub struct CpuPhase {
    start: Instant,
    procs: Vec<(&'static str, u32, u64)>,
}

impl CpuPhase {
    pub fn start(procs: &[(&'static str, u32)]) -> Self {
        Self {
            start: Instant::now(),
            procs: procs.iter().map(|&(n, p)| (n, p, cpu_ticks(p))).collect(),
        }
    }

    /// "strait 95%, source 60%, ..." (% of one core).
    pub fn report(&self) -> String {
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        self.procs
            .iter()
            .map(|&(n, p, t0)| {
                let pct = (cpu_ticks(p).saturating_sub(t0)) as f64 / tck / secs * 100.0;
                format!("{n} {pct:.0}%")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// strait's `GET /status` as JSON, if the API answers.
pub fn api_status(port: u16) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    serde_json::from_str(&body[body.find("\r\n\r\n")? + 4..]).ok()
}

pub async fn status(port: u16) -> Option<serde_json::Value> {
    tokio::task::spawn_blocking(move || api_status(port))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// MongoDB.

pub fn uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true")
}

/// The harness's own clients: more connections for the writers, idle ones recycled (the
/// server drops connections idle for minutes).
pub fn harness_uri(port: u16) -> String {
    format!("{}&maxPoolSize=64&maxIdleTimeMS=20000", uri(port))
}

/// A ~1 KB document (the one benches/sync.rs uses).
pub fn doc_1k(i: i64) -> Document {
    doc! { "_id": i, "n": i, "s": "x".repeat(900), "sub": { "a": i, "b": [1, 2, 3] }, "t": bson::DateTime::now() }
}

/// A user-like document of about 960 bytes: nested documents, arrays of documents, a
/// Decimal128, dates, a double, a unique email; every 1,000th carries a ~100 KB note.
pub fn doc_user(i: i64) -> Document {
    let status = ["active", "trial", "suspended", "closed"][(i % 4) as usize];
    let mut d = doc! {
        "_id": i,
        "email": format!("user{i}@example.com"),
        "name": { "first": format!("First{}", i % 977), "last": format!("Last{}", i % 1013) },
        "status": status,
        "created": bson::DateTime::from_millis(1_600_000_000_000 + i * 37_000),
        "score": (i % 1000) as f64 / 10.0,
        "balance": format!("{}.{:02}", i % 100_000, i % 100).parse::<bson::Decimal128>().unwrap(),
        "address": {
            "street": format!("{} Main Street", i % 9999),
            "city": format!("City{}", i % 500),
            "zip": format!("{:05}", i % 100_000),
            "geo": { "lat": (i % 180) as f64 - 90.0, "lon": (i % 360) as f64 - 180.0 },
        },
        "tags": [format!("t{}", i % 50), format!("t{}", i % 7), "customer"],
        "orders": (0..4).map(|k| doc! {
            "sku": format!("SKU-{}", (i + k) % 5000),
            "qty": ((i + k) % 9 + 1) as i32,
            "price": format!("{}.99", (i * 7 + k) % 500).parse::<bson::Decimal128>().unwrap(),
            "at": bson::DateTime::from_millis(1_650_000_000_000 + i * 1000 + k),
        }).collect::<Vec<_>>(),
        "prefs": { "lang": "en", "newsletter": i % 3 == 0, "theme": "dark" },
        "notes": "x".repeat(240),
    };
    if i % 1000 == 999 {
        d.insert("attachment", "y".repeat(100_000));
    }
    d
}

/// The secondary indexes of [`doc_user`] collections, as users keep them: a unique one,
/// compound ones, nested paths and a multikey one (7 in all).
pub fn user_indexes() -> Vec<Document> {
    vec![
        doc! { "key": { "email": 1 }, "name": "email_1", "unique": true },
        doc! { "key": { "status": 1, "created": -1 }, "name": "status_created" },
        doc! { "key": { "address.city": 1 }, "name": "city" },
        doc! { "key": { "address.zip": 1, "status": 1 }, "name": "zip_status" },
        doc! { "key": { "tags": 1 }, "name": "tags" },
        doc! { "key": { "score": -1 }, "name": "score" },
        doc! { "key": { "orders.sku": 1 }, "name": "order_sku" },
    ]
}

/// Builds `indexes` on `db.coll`; returns how long the server took.
pub async fn build_indexes(c: &Client, db: &str, coll: &str, indexes: &[Document]) -> Duration {
    let t = Instant::now();
    c.database(db)
        .run_command(doc! { "createIndexes": coll, "indexes": indexes.to_vec() })
        .await
        .unwrap();
    t.elapsed()
}

/// Drops a database, once more after a network error.
pub async fn drop_db(c: &Client, db: &str) {
    if let Err(e) = c.database(db).drop().await {
        eprintln!("  drop {db}: {e}; retrying");
        c.database(db).drop().await.unwrap();
    }
}

/// Sends a request to strait's HTTP API; returns the status code and body.
pub fn api_request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, resp[resp.find("\r\n\r\n")? + 4..].to_string()))
}

/// The benches' incremental writer: cycles of six single-document writes on a fresh key from
/// `base` up (insert, `$set`, `$inc` of the counter document `counter`, `$push`, replace,
/// delete), each a separate write and so one change event. Whole documents it writes carry
/// `tag` (`(field, value)`) when given. `name` labels its failures. Returns the number of
/// `$inc`s done.
pub async fn mixed_writer(
    coll: Collection<Document>,
    name: String,
    base: i64,
    counter: i64,
    tag: Option<(&'static str, &'static str)>,
    ops: u64,
    done: Arc<AtomicU64>,
) -> i64 {
    let whole = |key: i64| {
        let mut d = doc_1k(key);
        if let Some((f, v)) = tag {
            d.insert(f, v);
        }
        d
    };
    let mut incs = 0;
    for i in 0..ops {
        let key = base + (i / 6) as i64;
        let r = match i % 6 {
            0 => coll.insert_one(whole(key)).await.map(|_| ()),
            1 => coll
                .update_one(
                    doc! { "_id": key },
                    doc! { "$set": { "n": i as i64, "s2": "set" } },
                )
                .await
                .map(|_| ()),
            2 => {
                incs += 1;
                coll.update_one(doc! { "_id": counter }, doc! { "$inc": { "n": 1 } })
                    .await
                    .map(|_| ())
            }
            3 => coll
                .update_one(doc! { "_id": key }, doc! { "$push": { "sub.b": i as i64 } })
                .await
                .map(|_| ()),
            4 => {
                let mut d = whole(key);
                d.insert("replaced", true);
                coll.replace_one(doc! { "_id": key }, d).await.map(|_| ())
            }
            _ => coll.delete_one(doc! { "_id": key }).await.map(|_| ()),
        };
        if let Err(e) = r {
            panic!("{name}, op {i}: {e}");
        }
        done.fetch_add(1, Relaxed);
    }
    incs
}
