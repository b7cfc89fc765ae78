"""benchmarks/gpu_check.sh runs end to end on CPU at tiny sizes, so the GPU check is known to work before a
GPU is lent (the figures themselves are not checked: speed lives in benchmarks/)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="benchmarks/gpu_check.sh needs bash")
def test_gpu_check_writes_every_part_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path / "out"), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    parts = {path.name: json.loads(path.read_text()) for path in out.iterdir()}
    assert set(parts) == {"environment.json", "train_matrix.json", "train_best.json", "eval_tmall.json",
                          "serve_load.json"}  # and the scratch directory is gone
    rows = parts["train_matrix.json"]["rows"]
    assert {(row["model"], row["mode"]) for row in rows} == {
        (model, mode) for model in ("comirec-sa", "hpcl4sr") for mode in ("fp32", "bf16")}
    assert all(row["it_per_s"] > 0 for row in rows), rows
    best = parts["train_best.json"]
    assert best["wall_s"] > 0 and 0 <= best["valid_recall@50"] <= 1 and best["valid_curve"]
    assert parts["eval_tmall.json"]["users_per_s"] > 0
    runs = parts["serve_load.json"]["models"][0]["runs"]
    assert runs and all(run["errors"] == 0 and run["requests"] > 0 for run in runs)
