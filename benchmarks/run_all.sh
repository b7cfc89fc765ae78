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
echo "wrote $(ls "$OUT" | wc -l) files to $OUT"
