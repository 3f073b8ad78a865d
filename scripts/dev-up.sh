#!/usr/bin/env bash
# Start the whole MC fleet locally (bootstraps the environment first); Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec scripts/uv run maestro dev up "$@"
