//! Test harness: real SecantusDB servers on free loopback ports, the real strait binary, and
//! an independent byte-for-byte comparison of source and target.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{doc, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;

/// A SecantusDB server process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn secantusd() -> String {
    std::env::var("STRAIT_SECANTUSD").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/strait/venv-mongo/bin/secantusd-py")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts an in-memory server.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    /// Starts a server whose data lives in `dir` (so it survives a restart).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let bin = secantusd();
        assert!(
            Path::new(&bin).exists(),
            "SecantusDB not installed at {bin}; run dev/test.sh"
        );
        let data = dir.path().join("data");
        // A port picked free can be taken by a process of a parallel test before the server
        // binds it; then the server exits and the port answers for someone else. So the
        // server counts as started only when its own process holds the listening socket.
        for _attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--storage-path")
                .arg(&data)
                .args(["--cache-size", "128M", "--noop-heartbeat-seconds", "1"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if listens_on(child.id(), port) {
                    return Server { child, port, dir };
                }
                assert!(Instant::now() < deadline, "server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "server exited at start three times:\n{}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub async fn client(&self) -> Client {
        Client::with_uri_str(self.uri()).await.unwrap()
    }

    /// Stops the server, keeping its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux `/proc`).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let Some(inode) = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
    }) else {
        return false;
    };
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == socket)
            })
        })
        .unwrap_or(false)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The strait binary under test.
pub fn strait_bin() -> PathBuf {
    std::env::var("STRAIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_strait")))
}

/// Writes a pipeline file and returns its path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A pipeline config between two servers, with extra TOML appended.
pub fn pipeline(src: &Server, dst: &Server, extra: &str) -> String {
    format!(
        "id = \"test\"\n{extra}\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n",
        src.uri(),
        dst.uri()
    )
}

/// A running `strait run`.
pub struct Strait {
    pub child: Child,
    pub log: PathBuf,
}

impl Strait {
    pub fn spawn(config: &Path, log: &Path) -> Strait {
        Self::spawn_command("run", config, log)
    }

    /// `strait serve -c config`: a worker of a pipeline group.
    pub fn serve(config: &Path, log: &Path) -> Strait {
        Self::spawn_command("serve", config, log)
    }

    /// `strait run -c a -c b ...`: several pipelines in one process.
    pub fn spawn_many(configs: &[&Path], log: &Path) -> Strait {
        Self::spawn_with("run", configs, log)
    }

    fn spawn_command(command: &str, config: &Path, log: &Path) -> Strait {
        Self::spawn_with(command, &[config], log)
    }

    fn spawn_with(command: &str, configs: &[&Path], log: &Path) -> Strait {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(strait_bin());
        cmd.arg(command);
        for c in configs {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .env("STRAIT_LOG", "info,strait=debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Strait {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGKILL, after checking the process is still running (a crash test must not mistake a
    /// strait that exited on its own for one it killed).
    pub fn sigkill_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "strait exited early:\n{}",
            self.log_text()
        );
        self.sigkill();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if !s.success() {
                    eprintln!(
                        "strait exited with {s} after SIGTERM; log:\n{}",
                        self.log_text()
                    );
                }
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "strait did not stop after SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "strait did not finish; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Strait {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a strait subcommand to completion; returns (exit code, stdout, stderr).
pub fn strait_cmd(args: &[&str], timeout: Duration) -> (i32, String, String) {
    let mut child = Command::new(strait_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("strait {args:?} took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every document of a collection, raw, sorted by `_id`.
pub async fn raw_docs(client: &Client, db: &str, coll: &str) -> Vec<RawDocumentBuf> {
    by_id(&client.database(db).collection::<RawDocumentBuf>(coll)).await
}

/// Every document of `c`, sorted by `_id`.
pub async fn by_id<T>(c: &mongodb::Collection<T>) -> Vec<T>
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    c.find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Differences between two collections, byte for byte (empty when identical).
pub async fn diff(src: &Client, s: (&str, &str), dst: &Client, d: (&str, &str)) -> Vec<String> {
    diff_mapped(src, s, dst, d, |d| d).await
}

/// Differences between the target and the source's documents as `map` turns them (what a
/// lossy format makes of them), byte for byte.
pub async fn diff_mapped(
    src: &Client,
    s: (&str, &str),
    dst: &Client,
    d: (&str, &str),
    map: fn(RawDocumentBuf) -> RawDocumentBuf,
) -> Vec<String> {
    let a: Vec<_> = raw_docs(src, s.0, s.1).await.into_iter().map(map).collect();
    let b = raw_docs(dst, d.0, d.1).await;
    let mut out = Vec::new();
    if a.len() != b.len() {
        out.push(format!("count {} vs {}", a.len(), b.len()));
    }
    let index = |v: &Vec<RawDocumentBuf>| {
        v.iter()
            .map(|d| {
                (
                    format!("{:?}", d.get("_id").unwrap().unwrap()),
                    d.as_bytes().to_vec(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (ia, ib) = (index(&a), index(&b));
    for (k, v) in &ia {
        match ib.get(k) {
            None => out.push(format!("missing {k}")),
            Some(w) if w != v => out.push(format!(
                "differs {k}: source {:?} target {:?}",
                Document::try_from(RawDocumentBuf::from_bytes(v.clone()).unwrap()).unwrap(),
                Document::try_from(RawDocumentBuf::from_bytes(w.clone()).unwrap()).unwrap()
            )),
            _ => {}
        }
    }
    for k in ib.keys() {
        if !ia.contains_key(k) {
            out.push(format!("extra {k}"));
        }
    }
    out
}

/// Waits until `src` and `dst` collections are identical, or panics with the differences.
pub async fn wait_identical(
    src: &Client,
    s: (&str, &str),
    dst: &Client,
    d: (&str, &str),
    timeout: Duration,
    strait: Option<&Strait>,
) {
    wait_identical_mapped(src, s, dst, d, timeout, strait, |d| d).await
}

/// [`wait_identical`] against the source's documents as `map` turns them.
pub async fn wait_identical_mapped(
    src: &Client,
    s: (&str, &str),
    dst: &Client,
    d: (&str, &str),
    timeout: Duration,
    strait: Option<&Strait>,
    map: fn(RawDocumentBuf) -> RawDocumentBuf,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let dif = diff_mapped(src, s, dst, d, map).await;
        if dif.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let log = strait.map(|s| s.log_text()).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{}.{} and {}.{} still differ ({} differences), first: {:?}\nstrait log tail:\n{tail}", s.0, s.1, d.0, d.1, dif.len(), &dif[..dif.len().min(5)]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Index specs of a collection without version fields, sorted by name (none if it is missing).
pub async fn indexes(client: &Client, db: &str, coll: &str) -> Vec<Document> {
    let r = match client
        .database(db)
        .run_command(doc! { "listIndexes": coll })
        .await
    {
        Ok(r) => r,
        Err(e) if e.to_string().contains("NamespaceNotFound") => return Vec::new(),
        Err(e) => panic!("listIndexes {db}.{coll}: {e}"),
    };
    let mut v: Vec<Document> = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| {
            let mut d = d.as_document().unwrap().clone();
            d.remove("v");
            d.remove("ns");
            d
        })
        .collect();
    v.sort_by_key(|d| d.get_str("name").unwrap().to_string());
    v
}
pub mod aws;
pub mod browser;
pub mod kafka;
pub mod s3;
pub mod workload;

/// A free loopback port.
pub fn free_port_for_tests() -> u16 {
    free_port()
}

/// Waits until `db.coll` has the same indexes on `d` as on `s` (a unique build deferred over
/// duplicates comes within its backoff), or panics after `timeout` with strait's log.
pub async fn wait_same_indexes(
    s: &Client,
    d: &Client,
    (db, coll): (&str, &str),
    timeout: Duration,
    st: &Strait,
) {
    wait_for(
        timeout,
        &format!("the indexes of {db}.{coll}"),
        st,
        || async { indexes(s, db, coll).await == indexes(d, db, coll).await },
    )
    .await;
}

/// Polls `f` until it holds, or panics after `timeout` with `what` and strait's log.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, st: &Strait, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            st.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
