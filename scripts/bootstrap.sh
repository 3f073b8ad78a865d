#!/usr/bin/env bash
# Bootstrap a fresh clone: uv, the Python workspace (from uv.lock), and the buf CLI (npm).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet
if [ ! -x node_modules/.bin/buf ]; then
  # npm ci rejects this lock: npm 11 omits other platforms' optional buf binaries from it,
  # then reports them missing. buf is pinned exactly in package.json, so install is as strict.
  npm install --no-audit --no-fund --loglevel=error
fi
if ! command -v promtool >/dev/null 2>&1; then
  # Prometheus' own linter checks every service's metrics in the test suite (Debian package).
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -qq prometheus >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq prometheus >/dev/null; }
fi
