#!/usr/bin/env bash
# buf breaking (WIRE_JSON) against (1) the committed baseline image of the last released
# contracts, contracts/baseline.binpb, and (2) the protos of the last landed main, when the
# repository has one that differs from the working tree. Updating the baseline is a deliberate
# act: scripts/release_contracts.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=node_modules/.bin/buf
"$BUF" breaking protos --against contracts/baseline.binpb
echo "no breaking changes against contracts/baseline.binpb"

ref=""
for candidate in origin/main main; do
  if git rev-parse --verify --quiet "$candidate" >/dev/null; then ref=$candidate; break; fi
done
# On main itself, "the last landed main" is the previous commit.
if [ -n "$ref" ] && [ "$(git rev-parse "$ref")" = "$(git rev-parse HEAD)" ]; then
  ref=$(git rev-parse --verify --quiet HEAD~1 || true)
fi
if [ -z "$ref" ] || ! git cat-file -e "$ref:protos" 2>/dev/null; then
  echo "no landed main with protos to compare against; skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$ref" protos buf.yaml | tar -x -C "$tmp"
mkdir -p "$tmp/.build" && cp -r .build/third_party "$tmp/.build/third_party"
(cd "$tmp" && "$OLDPWD/$BUF" build protos -o image.binpb)
"$BUF" breaking protos --against "$tmp/image.binpb"
echo "no breaking changes against $ref ($(git rev-parse --short "$ref"))"
