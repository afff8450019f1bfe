#!/usr/bin/env bash
# Installs Debian's headless browser for the integration tests that drive a real page:
# the packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver), from
# apt only (no npm, no browser download). A second run costs nothing. Prints the chromedriver
# path on stdout as its last line; everything else goes to stderr.
#   The tests read STRAIT_CHROMEDRIVER and STRAIT_CHROMIUM (defaults: the paths above).
set -euo pipefail
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  # Passed through env: sudo would drop an exported DEBIAN_FRONTEND.
  apt_install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      chromium chromium-driver >&2
  }
  echo "installing chromium and chromium-driver with apt-get (about 20 s, once)" >&2
  # Try with the package lists already on the machine first; only when they are missing or
  # stale (the install fails: unknown package, or a download 404s) refresh them and retry.
  if ! apt_install; then
    echo "apt-get install failed; running apt-get update and retrying" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    apt_install
  fi
fi
for bin in "$CHROMIUM" "$CHROMEDRIVER"; do
  [ -x "$bin" ] || { echo "$bin is still missing after the install" >&2; exit 1; }
done
"$CHROMEDRIVER" --version >&2
"$CHROMIUM" --version >&2 || true
echo "$CHROMEDRIVER"
