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
out="$PWD/$TOOLS_DIR/bin/kueue"
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"   # Go's default install location, when not on PATH
fi
if ! command -v go >/dev/null; then
  echo "build-kueue: Go is not installed (need Go >= 1.25 for sigs.k8s.io/kueue)" >&2
  exit 1
fi
src=tests/cluster/kueue
if [ -x "$out" ] && [ "${FORCE:-0}" != 1 ] && [ -z "$(find "$src" -newer "$out" -type f)" ]; then
  echo "==> $out is up to date (FORCE=1 rebuilds)"
  exit 0
fi
mkdir -p "$(dirname "$out")"
start=$(date +%s)
# A DNS or proxy hiccup fails only some modules; a retry fetches the rest.
for attempt in 1 2 3 4 5; do
  if (cd "$src" && go mod download); then break; fi
  if [ "$attempt" = 5 ]; then
    echo "build-kueue: go mod download failed 5 times (is the Go module proxy reachable?)" >&2
    exit 1
  fi
  echo "==> go mod download failed (attempt $attempt); retrying in $((attempt * 15)) s"
  sleep $((attempt * 15))
done
version=$(sed -n 's/^[[:space:]]*sigs.k8s.io\/kueue \(v[0-9.]*\)$/\1/p' "$src/go.mod" | head -1)
echo "==> building the Kueue manager $version ($(go version | cut -d' ' -f3); first build: about 2 minutes on 2 cores)"
# -mod=readonly: go.sum is the pin; a module that does not match it fails the build.
(cd "$src" && go build -mod=readonly -buildvcs=false -trimpath \
  -ldflags "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" -o "$out" .)
echo "==> $out built in $(( $(date +%s) - start )) s"
