#!/usr/bin/env bash
# Throughput benchmark on local servers. Sizes: BENCH_DOCS, BENCH_OPS, BENCH_RSS_DOCS.
set -euo pipefail
cd "$(dirname "$0")/.."
export STRAIT_SECANTUSD="$(dev/install-servers.sh)"
cargo bench --bench sync
