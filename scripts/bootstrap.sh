#!/usr/bin/env bash
# Bootstrap a fresh clone: uv, the Python workspace (from uv.lock), and the buf CLI (npm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/uv sync --frozen --quiet  # finds uv, or installs it once (scripts/uv)
if [ ! -x node_modules/.bin/buf ]; then
  # The lock lists every platform's optional buf binary (made with
  # `npm install --package-lock-only` from no lock), so `npm ci` accepts it and never
  # rewrites it: the test command leaves `git status` clean.
  npm ci --no-audit --no-fund --loglevel=error
fi
if ! command -v promtool >/dev/null 2>&1; then
  # Prometheus' own linter checks every service's metrics in the test suite (Debian package).
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -qq prometheus >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq prometheus >/dev/null; }
fi
