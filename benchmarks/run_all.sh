#!/usr/bin/env bash
# Every figure of docs/performance.md, one JSON file each under OUT_DIR:
#   bash benchmarks/run_all.sh OUT_DIR [auto|cpu|cuda]
# On a GPU machine this is the one prepared script to run (about 10 minutes on 2 CPU cores).
set -euo pipefail
OUT=${1:?usage: bash benchmarks/run_all.sh OUT_DIR [auto|cpu|cuda]}
DEVICE=${2:-auto}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
$PY benchmarks/train_speed.py --device "$DEVICE" > "$OUT/train_tafeng.json"
$PY benchmarks/train_speed.py --device "$DEVICE" --synthetic-tmall --steps 100 > "$OUT/train_tmall.json"
for L in 15 60; do
  $PY benchmarks/train_speed.py --device "$DEVICE" --max-len $L --models comirec-sa,hpcl4sr > "$OUT/train_len$L.json"
done
$PY benchmarks/eval_speed.py --device "$DEVICE" > "$OUT/eval_tmall.json"
for N in 10176 100000; do $PY benchmarks/eval_speed.py --device "$DEVICE" --items $N > "$OUT/eval_$N.json"; done
$PY benchmarks/prepare_speed.py > "$OUT/prepare_tmall.json"
for U in 89199 178398; do $PY benchmarks/prepare_speed.py --users $U > "$OUT/prepare_users$U.json"; done
$PY benchmarks/hpcl4sr_graph_share.py > "$OUT/graph_share.json"
$PY benchmarks/index_recall.py > "$OUT/index_recall.json"
# Serving load: two short Ta-Feng runs (a request's cost does not depend on how long the model trained).
TAFENG=${TAFENG:-../shared/data/tafeng/ta_feng_all_months_merged.csv.gz}
SERVE="$OUT/serve-scratch"
rm -rf "$SERVE" && mkdir -p "$SERVE"
$PY -m hpcl4sr prepare --source tafeng --raw "$TAFENG" --out "$SERVE/tafeng" > /dev/null
for M in comirec-sa hpcl4sr; do
  $PY -m hpcl4sr train --data "$SERVE/tafeng" --model $M --out "$SERVE/run-$M" --no-progress \
    --set train.max_iters=300 --set train.eval_every=300 --set train.threads=1 > /dev/null
  $PY -m hpcl4sr export --run "$SERVE/run-$M" --out "$SERVE/export-$M" > /dev/null
done
$PY benchmarks/serve_load.py --model "$SERVE/export-comirec-sa" --model "$SERVE/export-hpcl4sr" > "$OUT/serve_load.json"
echo "wrote $(ls "$OUT" | wc -l) files to $OUT"
