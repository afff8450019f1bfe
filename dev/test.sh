#!/usr/bin/env bash
# Sets up and runs every test: installs the test servers (cached under ~/.cache/strait),
# then unit tests, then integration tests against real SecantusDB servers that the tests
# start themselves (each test gets its own servers on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
export STRAIT_SECANTUSD="$(dev/install-servers.sh)"
export STRAIT_S3S_FS="${STRAIT_CACHE:-$HOME/.cache/strait}/s3s-fs/bin/s3s-fs"
export STRAIT_TANSU="${STRAIT_CACHE:-$HOME/.cache/strait}/tansu/bin/tansu"
export STRAIT_MOTO="${STRAIT_CACHE:-$HOME/.cache/strait}/venv-moto/bin/moto_server"
export STRAIT_KINESIS_LOCAL="${STRAIT_CACHE:-$HOME/.cache/strait}/kinesis-local/node_modules/kinesis-local/main.js"
# The real consumers of strait's Kafka records (PyFlink, pymongo): tests/it/consumers.rs.
export STRAIT_CONSUMERS_PYTHON="$(dev/install-consumers.sh)"
# A real browser for the status page of `strait serve` (Debian's Chromium + chromedriver).
export STRAIT_CHROMEDRIVER="$(dev/install-browser.sh)"
echo "test servers: $STRAIT_SECANTUSD, $STRAIT_S3S_FS, $STRAIT_TANSU" >&2
cargo build --release --bins
# Tests run strait's release binary; two at a time fits two cores and their servers.
export STRAIT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/strait"
if [ $# -gt 0 ]; then
  cargo test --release -- --test-threads=2 "$@"
  exit
fi
# The crash-loop test measures how fast the target converges (a 30 s bound), so it runs alone
# after the rest rather than beside another test's servers.
LOOP=kafka::a_crash_loop_during_the_copy_converges_within_30_s
cargo test --release -- --test-threads=2 --skip "$LOOP"
cargo test --release --test it -- --exact "$LOOP"
