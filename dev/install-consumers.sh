#!/usr/bin/env bash
# Installs the real consumers the Kafka sink tests read strait's records with, into a cache
# outside the repository, so a second run costs nothing: PyFlink (apache-flink 2.3.0, whose
# bundled flink-json jar provides the `debezium-json` format; runs on Java 17) and pymongo
# (bson.json_util, the reference Extended JSON reader). The scripts in tests/consumers/ run
# with this venv's python. Prints that python's path on stdout.
#   STRAIT_CACHE (default ~/.cache/strait) holds the virtualenv, consumers-venv.
#   --print-python: print the path only, install nothing (fails if not installed).
set -euo pipefail
CACHE="${STRAIT_CACHE:-$HOME/.cache/strait}"
VENV="$CACHE/consumers-venv"
# The marker holds this line; changing a pin reinstalls the venv from scratch.
PINS="apache-flink==2.3.0 pymongo==4.20.1"
if [ "${1:-}" = "--print-python" ]; then
  if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$PINS" ]; then
    echo "consumers not installed: run dev/install-consumers.sh" >&2
    exit 1
  fi
  echo "$VENV/bin/python"
  exit 0
fi
if ! command -v java >/dev/null; then
  echo "PyFlink needs a Java runtime (11 or 17): apt-get install openjdk-17-jre-headless" >&2
  exit 1
fi
mkdir -p "$CACHE"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$PINS" ]; then
  echo "installing $PINS into $VENV (about 75 s and 850 MB, once)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086 # PINS is a list of requirement specifiers
  "$VENV/bin/pip" install -q --disable-pip-version-check $PINS
  # Fail here, not in a test, if the wheel set is broken (e.g. a missing native dependency).
  "$VENV/bin/python" -c "import pyflink.table, bson.json_util"
  echo "$PINS" > "$VENV/.installed"
fi
echo "$VENV/bin/python"
