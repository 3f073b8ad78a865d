#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, types, contracts, generated-code drift, tests.
# Usage: scripts/check.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
step() { printf '\n==> %s\n' "$*"; }

step "ruff"
scripts/uv run ruff check .
scripts/uv run ruff format --check .

step "generated code drift (scripts/gen_protos.py --check)"
scripts/uv run python scripts/gen_protos.py --check 2>/dev/null

step "buf lint"
node_modules/.bin/buf lint protos

step "buf breaking (against the released baseline and the last landed main)"
scripts/buf_breaking.sh

step "mypy (libs and every declared service, strict)"
# shellcheck disable=SC2046  # one argument per line of output
scripts/uv run mypy libs/mc-common/src libs/maestro-cli/src $(scripts/uv run python scripts/services.py src-dirs)

step "pytest"
scripts/uv run pytest -q "$@"
