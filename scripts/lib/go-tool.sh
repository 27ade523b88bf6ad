# Shared steps of the scripts that build a Go tool of the tests from pinned modules
# (scripts/build-controlplane.sh, scripts/build-kueue.sh). Source it, then:
#
#   go_tool_start NAME SRC OUT "need Go >= X for ..."   # exits 0 when OUT is up to date
#   ... go build ... -o "$out" ...
#   go_tool_done
#
# go_tool_start finds Go (its default install location too), skips the build when OUT
# is newer than every file of SRC (FORCE=1 rebuilds), and downloads SRC's modules with
# retries: on a cold cache several hundred are fetched at once, a DNS or proxy hiccup
# fails only some of them, and a retry fetches the rest (the cache keeps what came).

go_tool_start() {
  local name=$1 src=$2 need=$4
  out=$3
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH="/usr/local/go/bin:$PATH"
  fi
  if ! command -v go >/dev/null; then
    echo "$name: Go is not installed ($need)" >&2
    exit 1
  fi
  if [ -x "$out" ] && [ "${FORCE:-0}" != 1 ] && [ -z "$(find "$src" -newer "$out" -type f)" ]; then
    echo "==> $out is up to date (FORCE=1 rebuilds)"
    exit 0
  fi
  mkdir -p "$(dirname "$out")"
  go_tool_began=$(date +%s)
  local attempt
  for attempt in 1 2 3 4 5; do
    if (cd "$src" && go mod download); then return 0; fi
    if [ "$attempt" = 5 ]; then
      echo "$name: go mod download failed 5 times (is the Go module proxy reachable?)" >&2
      exit 1
    fi
    echo "==> go mod download failed (attempt $attempt); retrying in $((attempt * 15)) s"
    sleep $((attempt * 15))
  done
}

go_tool_done() {
  echo "==> $out built in $(( $(date +%s) - go_tool_began )) s"
}
