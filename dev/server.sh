#!/usr/bin/env bash
# Starts or stops one local SecantusDB server (MongoDB wire protocol, change streams).
#   dev/server.sh start NAME PORT    -> runs in the background, state under .run/NAME
#   dev/server.sh stop NAME
# Servers bind 127.0.0.1 only, keep data in memory, and emit a no-op every second so idle
# change streams advance their resume token (as mongod does every 10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:?start|stop}"; name="${2:?name}"
dir=".run/$name"
case "$cmd" in
  start)
    port="${3:?port}"
    bin="$(dev/install-servers.sh)"
    mkdir -p "$dir"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "$name already running on port $(cat "$dir/port")" >&2; exit 0
    fi
    "$bin" --host 127.0.0.1 --port "$port" --storage-path :memory: --cache-size 256M \
      --noop-heartbeat-seconds 1 --oplog-max-entries 50000000 --oplog-retention-seconds 86400 \
      > "$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"; echo "$port" > "$dir/port"
    for _ in $(seq 1 100); do
      if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$name: SecantusDB on mongodb://127.0.0.1:$port (log $dir/server.log)" >&2; exit 0
      fi
      sleep 0.1
    done
    echo "$name did not start; see $dir/server.log" >&2; tail -5 "$dir/server.log" >&2; exit 1 ;;
  stop)
    if [ -f "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; rm -f "$dir/pid"; fi ;;
  *) echo "usage: $0 start NAME PORT | stop NAME" >&2; exit 2 ;;
esac
