#!/usr/bin/env bash
# The project's test command: set up if needed, run the linters, then the default
# test suite (fast; long runs are marked `slow` and excluded). Extra arguments go to
# pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/unit/api`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "==> ruff";          .venv/bin/ruff check .
echo "==> mypy";          .venv/bin/mypy flextrain
echo "==> import layers"; .venv/bin/lint-imports --no-cache
echo "==> CRDs fresh";    .venv/bin/flextrain crds --check
echo "==> pytest"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest "$@"
