#!/usr/bin/env bash
# Throughput benchmarks on local servers.
#   BENCH_ONLY=sync|kafka|two_way|dynamodb runs one of them (default: all four, in that order).
#   sync sizes: BENCH_DOCS, BENCH_OPS, BENCH_RSS_DOCS (see benches/sync.rs);
#   kafka sizes: BENCH_KAFKA_DOCS, BENCH_KAFKA_OPS (see benches/kafka.rs);
#   two_way sizes: BENCH_TW_OPS, BENCH_WRITERS (see benches/two_way.rs);
#   dynamodb sizes: BENCH_DDB_ITEMS, BENCH_DDB_OPS (see benches/dynamodb.rs; on moto's server).
#   BENCH_SERVER=rs|py picks SecantusDB's Rust server (default; built once, ~8 min) or its
#   Python server (the one the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
export STRAIT_MOTO="${STRAIT_MOTO:-${STRAIT_CACHE:-$HOME/.cache/strait}/venv-moto/bin/moto_server}"
if [ "${BENCH_ONLY:-}" = dynamodb ]; then
  dev/install-servers.sh >/dev/null
  exec cargo bench --bench dynamodb
fi
case "${BENCH_SERVER:-rs}" in
  rs) STRAIT_SECANTUSD="$(dev/install-servers.sh --rust)" ;;
  py) STRAIT_SECANTUSD="$(dev/install-servers.sh)" ;;
  *) echo "BENCH_SERVER must be rs or py" >&2; exit 2 ;;
esac
export STRAIT_SECANTUSD
export STRAIT_TANSU="${STRAIT_TANSU:-${STRAIT_CACHE:-$HOME/.cache/strait}/tansu/bin/tansu}"
case "${BENCH_ONLY:-}" in
  "") cargo bench --bench sync; cargo bench --bench kafka; cargo bench --bench two_way
      cargo bench --bench dynamodb ;;
  sync|kafka|two_way) cargo bench --bench "$BENCH_ONLY" ;;
  *) echo "BENCH_ONLY must be sync, kafka, two_way or dynamodb" >&2; exit 2 ;;
esac
