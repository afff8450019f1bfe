#!/usr/bin/env bash
# Installs the local test servers into a cache outside the repository, so a second run costs
# nothing: SecantusDB (MongoDB wire protocol, Python build) and s3s-fs (S3 on a directory,
# built from crates.io once, about 80 s). Prints the SecantusDB path on stdout.
#   STRAIT_CACHE (default ~/.cache/strait) holds the virtualenv and the s3s-fs binary.
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
echo "$VENV/bin/secantusd-py"
