#!/usr/bin/env bash
# Installs the local MongoDB-compatible test server (SecantusDB, Python build) into a cache
# outside the repository, so a second run costs nothing. Prints nothing on a warm cache.
#   STRAIT_CACHE (default ~/.cache/strait) holds the virtualenv.
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
echo "$VENV/bin/secantusd-py"
