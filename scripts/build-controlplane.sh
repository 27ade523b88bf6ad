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
src=tests/cluster/controlplane
. scripts/lib/go-tool.sh
go_tool_start build-controlplane "$src" "$PWD/$TOOLS_DIR/bin/controlplane" "need Go >= 1.26 for k8s.io/kubernetes v1.37.2"
echo "==> building the test control plane ($(go version | cut -d' ' -f3); first build: 5-8 minutes on 2 cores)"
# -mod=readonly: go.sum is the pin; a module that does not match it fails the build.
# The version the API server reports (kubectl version, helm's kubeVersion check) is
# stamped at link time, as Kubernetes' own build does (hack/lib/version.sh).
version=$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$src/go.mod" | head -1)
minor=$(echo "$version" | cut -d. -f2)
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
(cd "$src" && go build -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$out" .)
go_tool_done
