#!/usr/bin/env bash
# Create .venv-flower: Flower for benchmarks/aggregation, in its own virtualenv because
# flwr pins protobuf<7 while FlexTrain's generated stubs need protobuf>=7 (one venv cannot
# hold both). The benchmark finds it at .venv-flower/bin/python (or --flower-python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
FLWR=${FLWR:-flwr==1.42.0}
if [ ! -x .venv-flower/bin/python ]; then
  "$PYTHON" -m venv .venv-flower
fi
.venv-flower/bin/python -m pip install --quiet "$FLWR" "numpy>=1.26" 2>&1 | grep -v "^WARNING: Location" || true
.venv-flower/bin/python -c "import flwr; print('flwr', flwr.__version__, 'in .venv-flower')"
