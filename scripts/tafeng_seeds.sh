#!/usr/bin/env bash
# The Ta-Feng runs behind docs/results.md: every model of the list, seeds 1-3, one budget for all:
# at most 20,000 iterations of batch 128, early stopping on valid recall@50 (patience 10 evaluations of
# 1,000 iterations). Finished runs are skipped and interrupted ones resumed, so it can be rerun freely.
# Usage: [THREADS=n] [SEEDS="1 2 3"] [MAX_ITERS=20000] scripts/tafeng_seeds.sh DATA_DIR RUNS_DIR MODEL[:CONFIG] ...
# THREADS=1 lets two such lanes share a 2-core machine (more throughput than one lane of 2 threads);
# lanes started on the same list split it: each run is held by a lock that dies with its lane.
set -euo pipefail
DATA=$1 RUNS=$2
THREADS=${THREADS:-0}
SEEDS=${SEEDS:-1 2 3}
MAX_ITERS=${MAX_ITERS:-20000}
shift 2
for spec in "$@"; do
  model=${spec%%:*}
  config=${spec#*:}
  name=$model
  extra=()
  if [ "$config" != "$spec" ]; then name=$model-$(basename "$config" .yaml); extra=(--config "$config"); fi
  for seed in $SEEDS; do
    out=$RUNS/$name-s$seed
    [ -f "$out/test_metrics.json" ] && continue
    mkdir -p "$RUNS"
    exec 9>"$RUNS/.$name-s$seed.lock"
    flock -n 9 || continue  # another lane has it
    if [ -f "$out/last.pt" ]; then
      hpcl4sr train --resume "$out" --no-progress --set train.max_iters=$MAX_ITERS --set train.threads=$THREADS \
        --set train.patience=10
    else
      hpcl4sr train --data "$DATA" --model "$model" "${extra[@]}" --out "$out" --no-progress \
        --set train.seed=$seed --set train.max_iters=$MAX_ITERS --set train.patience=10 \
        --set train.threads=$THREADS
    fi
    exec 9>&-
  done
done
