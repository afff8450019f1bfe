//! Bad input: one clear line, a non-zero exit within seconds, nothing written.

use std::time::{Duration, Instant};

use crate::common::*;
use bson::doc;

/// Runs `strait run -c cfg`, which must fail within 15 s with exactly one `error:` line that
/// mentions each of `expect`; returns that line.
pub(crate) fn run_expect_failure(cfg: &std::path::Path, expect: &[&str]) -> String {
    command_expect_failure("run", cfg, expect)
}

/// [`run_expect_failure`] for another subcommand that takes `-c` (`serve`).
pub(crate) fn command_expect_failure(
    command: &str,
    cfg: &std::path::Path,
    expect: &[&str],
) -> String {
    let started = Instant::now();
    let (code, _out, err) = strait_cmd(
        &[command, "-c", cfg.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_ne!(code, 0, "must fail: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(errors.len() <= 1, "more than one error line:\n{err}");
    let line = errors
        .first()
        .unwrap_or_else(|| panic!("no error line in:\n{err}"));
    for e in expect {
        assert!(line.contains(e), "{line:?} does not mention {e:?}");
    }
    line.to_string()
}

async fn assert_nothing_written(dst: &Server) {
    let names = dst.client().await.list_database_names().await.unwrap();
    let user: Vec<_> = names
        .iter()
        .filter(|n| !["admin", "local", "config"].contains(&n.as_str()))
        .collect();
    assert!(user.is_empty(), "target was written: {user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_key_and_line() {
    let (src, dst) = (Server::start(), Server::start());
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(&src, &dst, "[apply]\nlanes = 4\nlane_count = 3\n");
    let cfg = write_config(dir.path(), "p.toml", &text);
    let line = run_expect_failure(&cfg, &["p.toml:4:", "lane_count"]);
    assert_eq!(line.lines().count(), 1);
    let cfg = write_config(
        dir.path(),
        "q.toml",
        &pipeline(&src, &dst, "mode = \"sometimes\"\n"),
    );
    run_expect_failure(&cfg, &["q.toml:2:", "sometimes"]);
    let cfg = write_config(
        dir.path(),
        "r.toml",
        "id = \"x\"\n[source]\nuri = \"http://nope\"\n[sink]\nuri = \"mongodb://127.0.0.1:1\"\n",
    );
    run_expect_failure(&cfg, &["r.toml:3:", "source.uri"]);
    assert_nothing_written(&dst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_and_missing_collection() {
    let (src, dst) = (Server::start(), Server::start());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[source]\nuri = \"mongodb://127.0.0.1:1/?directConnection=true\"\nconnect_timeout = \"2s\"\n[sink]\nuri = \"{}\"\n",
        dst.uri()
    );
    let cfg = write_config(dir.path(), "p.toml", &text);
    run_expect_failure(&cfg, &["cannot reach the source", "127.0.0.1:1"]);
    let cfg = write_config(
        dir.path(),
        "m.toml",
        &pipeline(&src, &dst, "[scope]\ninclude = [\"shop.nothere\"]\n"),
    );
    run_expect_failure(&cfg, &["shop.nothere", "does not exist"]);
    assert_nothing_written(&dst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error() {
    // Provision a user, then restart the server with --auth.
    let src = Server::start();
    src.client()
        .await
        .database("admin")
        .run_command(doc! { "createUser": "repl", "pwd": "right", "roles": ["root"] })
        .await
        .unwrap();
    let data = src.stop();
    let src = Server::start_in(data, &["--auth"]);
    let dst = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[source]\nuri = \"mongodb://repl:wrong@127.0.0.1:{}/?directConnection=true\"\nconnect_timeout = \"3s\"\n[sink]\nuri = \"{}\"\n",
        src.port,
        dst.uri()
    );
    let cfg = write_config(dir.path(), "p.toml", &text);
    let line = run_expect_failure(&cfg, &["authentication to the source", "failed"]);
    assert!(!line.contains("wrong"), "password leaked: {line}");
    assert_nothing_written(&dst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_a_remote_address_without_token() {
    let (src, dst) = (Server::start(), Server::start());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "p.toml",
        &pipeline(&src, &dst, "[api]\nlisten = \"0.0.0.0:0\"\n"),
    );
    run_expect_failure(&cfg, &["api.listen", "token"]);
}

/// Regression: SIGTERM while the sink is down used to wait for the sink's retry loop (up to
/// 5 minutes). Now it stops within seconds, exits 0, and the next run applies what was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_sink_is_down_stops_promptly_and_loses_nothing() {
    let (src, dst) = (Server::start(), Server::start());
    let s = src.client().await;
    let coll = s.database("shop").collection::<bson::Document>("orders");
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ckpt.json");
    let extra = format!(
        "[checkpoint]\nstore = \"file\"\npath = \"{}\"\ninterval = \"200ms\"\n",
        file.display()
    );
    let cfg = write_config(dir.path(), "p.toml", &pipeline(&src, &dst, &extra));
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    let d = dst.client().await;
    wait_identical(
        &s,
        ("shop", "orders"),
        &d,
        ("shop", "orders"),
        Duration::from_secs(30),
        Some(&st),
    )
    .await;

    let data = dst.stop();
    for i in 1..=20 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    wait_for(
        Duration::from_secs(30),
        "a failed sink write",
        &st,
        || async { st.log_text().contains("Sink write failed") },
    )
    .await;
    let started = Instant::now();
    assert!(st.sigterm().success(), "{}", st.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "SIGTERM took {:?}",
        started.elapsed()
    );

    let dst = Server::start_in(data, &[]);
    let cfg = write_config(dir.path(), "p2.toml", &pipeline(&src, &dst, &extra));
    let st = Strait::spawn(&cfg, &log);
    let d = dst.client().await;
    wait_identical(
        &s,
        ("shop", "orders"),
        &d,
        ("shop", "orders"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
}
