#!/usr/bin/env bash
# Record the current protos as the released contract baseline that buf breaking checks against.
# Run this only when cutting a release: it makes today's contracts the compatibility floor.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/uv run python scripts/gen_protos.py >/dev/null 2>&1  # stages .build/third_party
node_modules/.bin/buf build protos -o contracts/baseline.binpb
echo "wrote contracts/baseline.binpb; commit it with the release"
