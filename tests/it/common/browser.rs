//! A small synchronous W3C WebDriver client: Debian's headless Chromium driven through
//! chromedriver's HTTP protocol, so a test can load a page served by strait, run its
//! JavaScript, click, and take a screenshot, as a person would. No npm, no browser download:
//! `dev/install-browser.sh` installs the `chromium` and `chromium-driver` apt packages.
//!
//! Paths: `STRAIT_CHROMEDRIVER` (default `/usr/bin/chromedriver`) and `STRAIT_CHROMIUM`
//! (default `/usr/bin/chromium`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The W3C key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromedriver_path() -> PathBuf {
    std::env::var_os("STRAIT_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

fn chromium_path() -> PathBuf {
    std::env::var_os("STRAIT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether both chromium and chromedriver exist, so a test can fail with a clear message
/// naming `dev/install-browser.sh` instead of a spawn error.
pub fn available() -> bool {
    chromedriver_path().is_file() && chromium_path().is_file()
}

/// A headless Chromium session behind its own chromedriver process. Dropping it deletes the
/// session and kills chromedriver together with the browser processes it started.
pub struct Browser {
    child: Child,
    agent: ureq::Agent,
    /// `http://127.0.0.1:<port>`, chromedriver's address.
    root: String,
    /// `<root>/session/<id>` once the session exists: every command is relative to it.
    session: Option<String>,
    /// The chromedriver log and Chromium's profile (`--user-data-dir`), fresh for each
    /// browser so tests never share cookies, storage or a profile lock.
    dir: tempfile::TempDir,
}

/// How a WebDriver command failed: the W3C error code and message, or a transport error.
type Outcome = Result<Value, String>;

impl Browser {
    /// Starts chromedriver on a free loopback port, waits until it reports ready, and opens a
    /// headless Chromium session with a fresh profile. Panics (with chromedriver's log) if
    /// any of that fails.
    pub fn start() -> Browser {
        assert!(
            available(),
            "no browser: {} or {} is missing; run dev/install-browser.sh \
             (or set STRAIT_CHROMEDRIVER / STRAIT_CHROMIUM)",
            chromedriver_path().display(),
            chromium_path().display()
        );
        let dir = tempfile::tempdir().expect("tempdir for the browser");
        // A per-request cap above chromedriver's own page-load and script timeouts (30 s,
        // set below), so a slow page is reported by chromedriver, not as a bare socket
        // timeout. No proxy: a proxy from the environment must never see loopback calls.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(90)))
            .proxy(None)
            .build()
            .into();
        let log_path = dir.path().join("chromedriver.log");
        // The free port is found by binding and releasing it, so another process can take it
        // before chromedriver binds: a few tries cover that race.
        let mut last_failure = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = File::create(&log_path).expect("chromedriver log");
            let mut child = Command::new(chromedriver_path())
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                // Its own process group, so drop can kill chromedriver and every Chromium
                // process under it at once, even when the session could not be deleted.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", chromedriver_path().display()));
            let root = format!("http://127.0.0.1:{port}");
            match wait_ready(&agent, &mut child, &root) {
                Ok(()) => {
                    // From here on drop cleans up, also if the session cannot be created.
                    let mut browser = Browser {
                        child,
                        agent,
                        root,
                        session: None,
                        dir,
                    };
                    browser.create_session();
                    return browser;
                }
                Err(e) => {
                    last_failure = e;
                    kill_group(&mut child);
                }
            }
        }
        panic!(
            "chromedriver did not start: {last_failure}\n{}",
            read_log(&log_path)
        );
    }

    /// Loads `url` and returns once the page's load event has fired.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` as the body of a JavaScript function (so it says `return ...`) in the
    /// page and returns its value as JSON. Panics if the script throws.
    pub fn eval(&self, script: &str) -> Value {
        self.execute(script)
            .unwrap_or_else(|e| panic!("eval {script:?}: {e}"))
    }

    /// Finds the first element matching the CSS selector `css` and clicks it. Panics if there
    /// is none, or if it cannot be clicked (hidden, covered).
    pub fn click(&self, css: &str) {
        let found = self
            .command(
                "POST",
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .unwrap_or_else(|e| panic!("find {css:?}: {e}"));
        let id = found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("find {css:?}: no element reference in {found}"));
        self.command("POST", &format!("/element/{id}/click"), json!({}))
            .unwrap_or_else(|e| panic!("click {css:?}: {e}"));
    }

    /// Writes a PNG screenshot of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let shot = self
            .command("GET", "/screenshot", Value::Null)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("screenshot is a base64 string"))
            .expect("screenshot base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Polls `script` (as in [`Browser::eval`]) until it returns a truthy value and returns
    /// that value. Truthy as in JavaScript, for JSON: anything but null, false, 0, "", [] and
    /// {}. A script that throws counts as not yet (the element it reads may not exist yet).
    /// Panics after `timeout` with the last value or error.
    pub fn wait_until(&self, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.execute(script);
            if let Ok(v) = &last {
                if truthy(v) {
                    return v.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!("wait_until {script:?}: still not truthy after {timeout:?}; last: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn execute(&self, script: &str) -> Outcome {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    fn create_session(&mut self) {
        let profile = self.dir.path().join("profile");
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "timeouts": { "pageLoad": 30_000, "script": 30_000 },
                    "goog:chromeOptions": {
                        "binary": chromium_path(),
                        "args": [
                            "--headless",
                            // Chromium will not start as root (tests and CI run as root)
                            // with its sandbox on.
                            "--no-sandbox",
                            "--disable-gpu",
                            // These stop Chromium calling Google services on its own: the
                            // network here is closed to all but loopback, and those refused
                            // connections otherwise slow or break start-up.
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--window-size=1280,900",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let created = request(&self.agent, "POST", &format!("{}/session", self.root), caps)
            .unwrap_or_else(|e| {
                panic!(
                    "new session: {e}\n{}",
                    read_log(&self.dir.path().join("chromedriver.log"))
                )
            });
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session: no sessionId in {created}"));
        self.session = Some(format!("{}/session/{id}", self.root));
    }

    /// Sends a command relative to the session.
    fn command(&self, method: &str, path: &str, body: Value) -> Outcome {
        let session = self.session.as_deref().expect("a session");
        request(&self.agent, method, &format!("{session}{path}"), body)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Deleting the session lets Chromium close cleanly; the kill then covers a session
        // that was never created or a browser that hangs.
        if let Some(session) = &self.session {
            let _ = request(&self.agent, "DELETE", session, Value::Null);
        }
        kill_group(&mut self.child);
    }
}

/// Polls `GET /status` until chromedriver says ready; fails if it exits or takes longer than
/// 20 s.
fn wait_ready(agent: &ureq::Agent, child: &mut Child, root: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("chromedriver exited with {status}"));
        }
        if let Ok(v) = request(agent, "GET", &format!("{root}/status"), Value::Null) {
            if v["ready"] == Value::Bool(true) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err("chromedriver not ready within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One WebDriver round trip: returns the response's `value`, or the W3C error (non-2xx status
/// with `{value: {error, message}}`) as text.
fn request(agent: &ureq::Agent, method: &str, url: &str, body: Value) -> Outcome {
    let sent = match method {
        "GET" => agent.get(url).call(),
        "DELETE" => agent.delete(url).call(),
        _ => agent
            .post(url)
            .header("Content-Type", "application/json; charset=utf-8")
            .send(body.to_string()),
    };
    let mut resp = sent.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status();
    // Screenshots are base64 PNGs of a few MB: lift ureq's 10 MB default read cap.
    let text = resp
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
    let mut parsed: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{method} {url}: {status}, not JSON ({e}): {text}"))?;
    let value = parsed["value"].take();
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "{method} {url}: {status}: {}: {}",
            value["error"].as_str().unwrap_or("?"),
            value["message"].as_str().unwrap_or(&text)
        ))
    }
}

/// Kills chromedriver's whole process group (chromedriver and any Chromium it started) and
/// reaps chromedriver.
fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on our own child's process group (process_group(0) made its pgid its
    // pid); no memory is involved.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    // The tail is what explains a failure; the whole log can be long.
    let start = log.len().saturating_sub(4000);
    let start = (start..=log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(0);
    format!("chromedriver log ({}):\n{}", path.display(), &log[start..])
}
