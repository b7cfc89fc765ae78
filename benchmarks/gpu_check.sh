#!/usr/bin/env bash
# The GPU check, one prepared script; every part writes JSON into OUT_DIR:
#   bash benchmarks/gpu_check.sh OUT_DIR [--device cuda|cpu] [--data PREPARED_DIR]
# On one GPU (the default --device cuda) it runs in under 8 minutes:
#   train_matrix.json  training it/s at batch 128 and 1024, ComiRec-SA and HPCL4SR, fp32 / bf16 / compile
#   train_best.json    HPCL4SR trained to its best valid recall@50 (early stopping), with the wall time
#   eval_tmall.json    exact evaluation users/s over 311,746 items (benchmarks/eval_speed.py)
#   serve_load.json    the HTTP service's load benchmark on that HPCL4SR run's export
#   environment.json   torch, device, commit
# --device cpu runs the same parts at tiny sizes in a minute or two (tests/integration/test_gpu_check.py),
# without the compile mode (torch.compile takes minutes on CPU). Without --data a synthetic log with
# Ta-Feng's shape is generated and prepared (tiny on CPU), so a fresh checkout needs nothing else.
# PYTHON selects the interpreter (default: python).
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--device cuda|cpu] [--data PREPARED_DIR]}
shift
DEVICE=cuda
DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:?--device needs cuda or cpu}; shift 2 ;;
    --data) DATA=${2:?--data needs a prepared dataset directory}; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "error: --device: expected cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH="$OUT/scratch"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"

if [ "$DEVICE" = cuda ]; then
  SYNTH=(--users 17658 --items 10176 --categories 1297 --mean-length 38.5)   # Ta-Feng's shape
  MATRIX=(--modes fp32,bf16,compile --steps 200 --warmup 20)
  BEST=(--set train.max_iters=20000 --set train.eval_every=1000 --set train.patience=3)
  EVAL=()
  LOAD=(--seconds 5 --soak 0)
else
  SYNTH=(--users 300 --items 200 --categories 20 --mean-length 25)
  MATRIX=(--modes fp32,bf16 --steps 2 --warmup 1 --batch-sizes 128,256)
  BEST=(--set train.max_iters=20 --set train.eval_every=10 --set train.patience=1 --set train.threads=1)
  EVAL=(--items 5000 --users 128 --batch-size 64)
  LOAD=(--seconds 0.3 --soak 0)
fi

"$PY" - "$DEVICE" > "$OUT/environment.json" <<'PYTHON'
import json, platform, subprocess, sys, torch
device = sys.argv[1]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"device": device, "torch": torch.__version__, "python": platform.python_version(),
                  "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                  "cpu_threads": torch.get_num_threads(), "commit": commit}))
PYTHON

if [ -z "$DATA" ]; then
  "$PY" -m hpcl4sr data synth --out "$SCRATCH/log.parquet" "${SYNTH[@]}" > /dev/null
  "$PY" -m hpcl4sr prepare --source parquet --raw "$SCRATCH/log.parquet" --out "$SCRATCH/data" --min-count 5 > /dev/null
  DATA="$SCRATCH/data"
fi

"$PY" "$HERE/train_matrix.py" --data "$DATA" --device "$DEVICE" "${MATRIX[@]}" > "$OUT/train_matrix.json"

STARTED=$(date +%s.%N)
"$PY" -m hpcl4sr train --data "$DATA" --model hpcl4sr --out "$SCRATCH/run" --no-progress \
  --set train.device="$DEVICE" "${BEST[@]}" > /dev/null
ENDED=$(date +%s.%N)
"$PY" - "$SCRATCH/run" "$STARTED" "$ENDED" > "$OUT/train_best.json" <<'PYTHON'
import json, sys
run, started, ended = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
test = json.load(open(f"{run}/test_metrics.json"))
valid = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if '"valid"' in line]
print(json.dumps({"model": "hpcl4sr", "wall_s": round(ended - started, 1), "best_step": test["best_step"],
                  "valid_recall@50": test["valid_recall@50"], "steps_run": valid[-1]["step"],
                  "valid_curve": [[record["step"], record["recall@50"]] for record in valid],
                  "test": {key: value for key, value in test.items() if "@" in key}}))
PYTHON

"$PY" "$HERE/eval_speed.py" --device "$DEVICE" "${EVAL[@]}" > "$OUT/eval_tmall.json"

"$PY" -m hpcl4sr export --run "$SCRATCH/run" --out "$SCRATCH/export" > /dev/null
"$PY" "$HERE/serve_load.py" --model "$SCRATCH/export" "${LOAD[@]}" > "$OUT/serve_load.json" 2> /dev/null

rm -rf "$SCRATCH"
echo "wrote $(ls "$OUT" | wc -l) JSON files to $OUT"
