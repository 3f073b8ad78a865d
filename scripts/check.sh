#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, types, contracts, generated-code drift, tests.
# Usage: scripts/check.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$HOME/.local/bin:$PATH"
step() { printf '\n==> %s\n' "$*"; }

step "ruff"
uv run ruff check .
uv run ruff format --check .

step "generated code drift (scripts/gen_protos.py --check)"
uv run python scripts/gen_protos.py --check 2>/dev/null

step "buf lint"
node_modules/.bin/buf lint protos

step "buf breaking (against the released baseline and the last landed main)"
scripts/buf_breaking.sh

step "mypy (libs and every declared service, strict)"
# shellcheck disable=SC2046  # one argument per line of output
uv run mypy libs/mc-common/src libs/maestro-cli/src $(uv run python scripts/services.py src-dirs)

step "pytest"
uv run pytest -q "$@"
