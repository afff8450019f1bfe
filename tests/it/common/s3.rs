//! A real S3 server for tests: s3s-fs on a free loopback port, storing each object as a plain
//! file under `root/<bucket>/<key>`, with SigV4 signatures checked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "test-ak";
pub const SECRET_KEY: &str = "test-sk";

/// An s3s-fs process, killed on drop.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
}

fn s3s_fs() -> String {
    std::env::var("STRAIT_S3S_FS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/strait/s3s-fs/bin/s3s-fs")
    })
}

impl S3Server {
    /// Starts a server with one bucket.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let port = super::free_port_for_tests();
        let mut s = S3Server {
            child: None,
            port,
            root,
        };
        s.restart();
        s
    }

    /// Starts (again) on the same port and directory.
    pub fn restart(&mut self) {
        let bin = s3s_fs();
        assert!(
            Path::new(&bin).exists(),
            "s3s-fs not installed at {bin}; run dev/test.sh"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("s3s.log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server; its files stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `[sinks.<name>]` table for this server.
    pub fn sink_toml(&self, name: &str, bucket: &str, extra: &str) -> String {
        format!(
            "[sinks.{name}]\ntype = \"archive\"\nbucket = \"{bucket}\"\nprefix = \"dr\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n{extra}\n",
            self.endpoint()
        )
    }

    /// Every stored object file under the bucket (not s3s-fs's own metadata), sorted.
    pub fn objects(&self, bucket: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.root.path().join(bucket), &mut out);
        out.retain(|p| p.to_string_lossy().contains(".jsonl"));
        out.sort();
        out
    }

    /// Every record of every object, parsed (plain `.jsonl` or `.gz`/`.zst`).
    pub fn records(&self, bucket: &str) -> Vec<serde_json::Value> {
        records_in(&self.objects(bucket))
    }
}

/// Records of archive object files.
pub fn records_in(files: &[PathBuf]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        let text = match f.extension().and_then(|e| e.to_str()) {
            Some("zst") => zstd::decode_all(&bytes[..]).unwrap(),
            Some("gz") => {
                use std::io::Read;
                let mut v = Vec::new();
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            _ => bytes,
        };
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap());
        }
    }
    out
}

/// Files under `dir`, recursively.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
