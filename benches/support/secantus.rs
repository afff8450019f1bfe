//! The command line of a benchmark's SecantusDB server, for the Python and the Rust build alike.

use std::process::Command;

/// A SecantusDB server command on `port` with `cache` of WiredTiger cache and a change log
/// that keeps every entry of the run, plus the data directory to keep alive while it runs:
/// the Rust server has no in-memory store, so it gets a fresh temporary directory.
pub fn secantus_command(port: u16, cache: &str) -> (Command, Option<tempfile::TempDir>) {
    let bin = std::env::var("STRAIT_SECANTUSD").expect("run benches/run.sh");
    let dir = bin
        .ends_with("secantusd-rs")
        .then(|| tempfile::tempdir().expect("a data directory for secantusd-rs"));
    let storage = dir
        .as_ref()
        .map(|d| d.path().display().to_string())
        .unwrap_or_else(|| ":memory:".into());
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--storage-path", &storage, "--cache-size", cache])
        .args(["--noop-heartbeat-seconds", "1"])
        .args(["--oplog-max-entries", "50000000"])
        .args(["--oplog-retention-seconds", "86400"]);
    (cmd, dir)
}
