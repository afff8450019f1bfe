#!/usr/bin/env bash
# The quickstart: two local MongoDB-compatible servers, sample data, a full + incremental sync
# with a live writer, then `strait verify` proves source == target (exit code 0).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(dev/install-servers.sh)"
PY="$(dirname "$BIN")/python"
dev/server.sh stop qs-source; dev/server.sh stop qs-target
dev/server.sh start qs-source 37017
dev/server.sh start qs-target 37018
trap 'dev/server.sh stop qs-source; dev/server.sh stop qs-target' EXIT
echo "== building strait" >&2
cargo build --release --quiet
STRAIT=target/release/strait
SRC="mongodb://127.0.0.1:37017/?directConnection=true"
echo "== loading sample data into the source" >&2
"$PY" dev/sample_data.py load "$SRC"
"$STRAIT" checkpoint reset -c examples/quickstart.toml >/dev/null
echo "== running strait (full sync, then streaming) while a writer changes the source for 15 s" >&2
"$STRAIT" run -c examples/quickstart.toml &
PID=$!
"$PY" dev/sample_data.py write "$SRC" 15
echo "== writer stopped; letting strait catch up" >&2
sleep 5
kill -TERM "$PID"; wait "$PID"
echo "== verifying source == target" >&2
"$STRAIT" verify -c examples/quickstart.toml
