#!/usr/bin/env bash
# Build the test control plane (tests/cluster/controlplane: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler from Kubernetes' own Go modules, pinned in
# its go.mod/go.sum) into .tools/bin/controlplane. Modules come from the Go module proxy;
# Go's module and build caches make every build after the first take seconds.
#
#   scripts/build-controlplane.sh          # .tools/bin/controlplane
#   TOOLS_DIR=/somewhere scripts/build-controlplane.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR=${TOOLS_DIR:-.tools}
out="$PWD/$TOOLS_DIR/bin/controlplane"
if ! command -v go >/dev/null; then
  echo "build-controlplane: Go is not installed (need Go >= 1.26 for k8s.io/kubernetes v1.37.2)" >&2
  exit 1
fi
src=tests/cluster/controlplane
if [ -x "$out" ] && [ "${FORCE:-0}" != 1 ] && [ -z "$(find "$src" -newer "$out" -type f)" ]; then
  echo "==> $out is up to date (FORCE=1 rebuilds)"
  exit 0
fi
mkdir -p "$(dirname "$out")"
start=$(date +%s)
echo "==> building the test control plane ($(go version | cut -d' ' -f3); first build: 10+ minutes on 2 cores)"
# -mod=readonly: go.sum is the pin; a module that does not match it fails the build.
(cd "$src" && go build -mod=readonly -trimpath -o "$out" .)
echo "==> $out built in $(( $(date +%s) - start )) s"
