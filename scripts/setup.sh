#!/usr/bin/env bash
# Create .venv and install FlexTrain with its dev tools. Safe to re-run.
# torch is pinned (pyproject.toml, extra `trainer`) to releases that plain pip installs
# from its cache on the build machines; uv/poetry would download gigabytes instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.flextrain-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing flextrain[dev] (first time: a few minutes, torch is large)"
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import flextrain, torch, kopf, grpc" # fail loudly if the install did not work
  touch "$stamp"
fi
echo "==> ready: $(.venv/bin/flextrain --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
