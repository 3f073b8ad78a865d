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
