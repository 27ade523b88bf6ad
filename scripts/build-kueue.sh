#!/usr/bin/env bash
# Build the Kueue manager the cluster tests run (tests/cluster/kueue: Kueue's own
# controllers, scheduler and webhooks from the sigs.k8s.io/kueue Go module, pinned in its
# go.mod/go.sum) into .tools/bin/kueue. Modules come from the Go module proxy; Go's
# module and build caches make every build after the first take seconds.
#
#   scripts/build-kueue.sh          # .tools/bin/kueue
#   TOOLS_DIR=/somewhere scripts/build-kueue.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR=${TOOLS_DIR:-.tools}
src=tests/cluster/kueue
. scripts/lib/go-tool.sh
go_tool_start build-kueue "$src" "$PWD/$TOOLS_DIR/bin/kueue" "need Go >= 1.25 for sigs.k8s.io/kueue"
version=$(sed -n 's/^[[:space:]]*sigs.k8s.io\/kueue \(v[0-9.]*\)$/\1/p' "$src/go.mod" | head -1)
echo "==> building the Kueue manager $version ($(go version | cut -d' ' -f3); first build: about 2 minutes on 2 cores)"
# -mod=readonly: go.sum is the pin; a module that does not match it fails the build.
(cd "$src" && go build -mod=readonly -buildvcs=false -trimpath \
  -ldflags "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" -o "$out" .)
go_tool_done
