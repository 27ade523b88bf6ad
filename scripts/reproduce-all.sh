#!/usr/bin/env bash
# Every run behind docs/results.md's seeded reproductions, as one-thread processes
# JOBS at a time (default: one per core), then the report.
#
#   scripts/reproduce-all.sh                 # everything (~4 h on 2 cores)
#   scripts/reproduce-all.sh paper anchor    # only these groups (names below)
#   JOBS=8 scripts/reproduce-all.sh          # on a bigger machine
#   LIST=1 scripts/reproduce-all.sh anchor   # print the tasks, run nothing
#   OUT=/tmp/r ARGS="--quick --limit 300" scripts/reproduce-all.sh   # a smoke run elsewhere
#
# Each task is one (seed, split) of one model variant or one centralised seed, with
# --skip-existing: a task whose JSON file exists is skipped, so an interrupted run
# resumes where it stopped. Per-task logs: benchmarks/out/logs/. Groups:
#   centralised  Table 1 analogue (3 seeds, both Independent baselines)
#   paper        Table 4 analogue: the paper's model, 5 runs per (seed, split)
#   anchor       --anchor ce, and ce on every shallower tier (FlexTrain runs only)
#   pool         --pool-at-prefix (the baselines repeated: the option changes them too)
#   adapters     --pool-at-prefix --stage-adapters linear / affine
#   beta0        no distillation (the FlexTrain run only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
OUT=${OUT:-benchmarks/out}
ARGS=${ARGS:-}
LOGS=$OUT/logs
mkdir -p "$LOGS"
groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=(centralised paper anchor pool adapters beta0)

SEEDS=(0 1 2)
SPLITS=(iid dir0.5 dir0.1)
ALL=flextrain-pad,flextrain-holder,fedsmall,fedclass
# the model options: FlexTrain with the paper's merge and the two baselines (they take
# the option too); the holder-weighted merge is measured on the paper's model only
OPT=flextrain-pad,fedsmall,fedclass

tasks() {
    local group seed split
    for group in "${groups[@]}"; do
        case $group in
            centralised)
                for seed in "${SEEDS[@]}"; do
                    echo "centralised-$seed reproduce_centralised --out $OUT/centralised --seeds $seed, --timing-repeats 0"
                done ;;
            paper|anchor|pool|adapters|beta0)
                local variants=()
                case $group in
                    paper) variants=("--runs $ALL,flextrain-tier") ;;
                    anchor) variants=("--runs flextrain-pad --anchor ce"
                                      "--runs flextrain-pad --anchor ce --anchor-tiers all") ;;
                    pool) variants=("--runs $OPT --pool-at-prefix") ;;
                    adapters) variants=("--runs $OPT --pool-at-prefix --stage-adapters linear"
                                        "--runs $OPT --pool-at-prefix --stage-adapters affine") ;;
                    beta0) variants=("--runs flextrain-pad --beta 0") ;;
                esac
                local i=0 v
                for v in "${variants[@]}"; do
                    for seed in "${SEEDS[@]}"; do
                        for split in "${SPLITS[@]}"; do
                            echo "$group$i-$seed-$split reproduce_federated --out $OUT/federated --seeds $seed, --split $split $v"
                        done
                    done
                    i=$((i + 1))
                done ;;
            *) echo "unknown group '$group'; groups: centralised paper anchor pool adapters beta0" >&2
               exit 2 ;;
        esac
    done
}

run_task() {
    local name=$1 module=$2
    shift 2
    local start=$SECONDS
    # shellcheck disable=SC2086  # ARGS is a list of flags
    if "$PY" -m "benchmarks.$module" "$@" --threads 1 --skip-existing $ARGS >"$LOGS/$name.log" 2>&1; then
        echo "$(date -u +%H:%M:%S) done   $name ($((SECONDS - start)) s)"
    else
        echo "$(date -u +%H:%M:%S) FAILED $name ($((SECONDS - start)) s): see $LOGS/$name.log"
        return 1
    fi
}
export -f run_task
export PY LOGS ARGS

if [ -n "${LIST:-}" ]; then tasks; exit 0; fi
count=$(tasks | wc -l)
echo "==> $count tasks, $JOBS at a time; logs in $LOGS"
status=0
tasks | xargs -P "$JOBS" -L 1 bash -c 'run_task "$@"' _ || status=$?
"$PY" -m benchmarks.reproduce_report --centralised "$OUT/centralised" --federated "$OUT/federated" \
    --out "$OUT/reproduction.md" >/dev/null
echo "==> report: $OUT/reproduction.md"
exit $status
