import json
from pathlib import Path

import pytest
import torch

from hpcl4sr.errors import UserError
from hpcl4sr.run import config_for_run
from hpcl4sr.train import train


def run_config(data: Path, **train_overrides):
    settings = {"eval_every": 20, "log_every": 10, "batch_size": 32, "seed": 5, "device": "cpu", **train_overrides}
    return config_for_run("comirec-sa", [{"data": {"path": str(data)}, "train": settings}])


def test_training_lowers_loss_and_writes_the_run(synthetic_dir, tmp_path):
    metrics = train(run_config(synthetic_dir, max_iters=200, eval_every=100), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    expected = {"config.yaml", "metrics.jsonl", "best.pt", "last.pt", "test_metrics.json"}
    assert {p.name for p in run.iterdir()} >= expected
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["total"] for r in records if r["split"] == "train"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert [r["step"] for r in records if r["split"] == "valid"] == [100, 200]
    saved = json.loads((run / "test_metrics.json").read_text())
    for key in ("recall@20", "recall@50", "hr@20", "hr@50", "ndcg@50", "ndcg_std@50"):
        assert 0.0 <= saved[key] <= 1.0 and saved[key] == pytest.approx(metrics[key])
    assert saved["recall@50"] > 0.05  # a trained model on planted interests beats chance (50 / 300 items)
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert checkpoint["state"]["best_step"] in (100, 200)
    assert checkpoint["config"]["model_name"] == "comirec-sa"


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_resume_continues_exactly(synthetic_dir, tmp_path, optimizer):
    train(run_config(synthetic_dir, max_iters=60, optimizer=optimizer), tmp_path / "straight", progress=False)
    train(run_config(synthetic_dir, max_iters=40, optimizer=optimizer), tmp_path / "resumed", progress=False)
    first_seconds = torch.load(tmp_path / "resumed/last.pt", weights_only=True)["state"]["seconds"]
    train(run_config(synthetic_dir, max_iters=60, optimizer=optimizer), tmp_path / "resumed", resume=True,
          progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    resumed = torch.load(tmp_path / "resumed/last.pt", weights_only=True)
    assert resumed["state"]["seconds"] > first_seconds > 0  # training time adds up across the resume


def test_a_schedule_resumes_where_it_stopped(synthetic_dir, tmp_path):
    # HPCL4SR's lambda2 warm-up is set from the step before each step, so a resumed run follows it exactly
    def config(iters: int):
        return config_for_run("hpcl4sr", [{"data": {"path": str(synthetic_dir)}, "model": {"cl_warmup": 50},
                                           "train": {"eval_every": 20, "log_every": 10, "batch_size": 16,
                                                     "seed": 5, "max_iters": iters}}])

    train(config(40), tmp_path / "straight", progress=False)
    train(config(20), tmp_path / "resumed", progress=False)
    train(config(40), tmp_path / "resumed", resume=True, progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def assert_same_run(first: Path, second: Path) -> None:
    """Two runs ended with identical weights and wrote identical logs (training times aside)."""
    straight = torch.load(first / "last.pt", weights_only=True)
    resumed = torch.load(second / "last.pt", weights_only=True)
    assert straight["state"]["step"] == resumed["state"]["step"]
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert records(first) == records(second)


def test_existing_run_needs_resume(synthetic_dir, tmp_path):
    train(run_config(synthetic_dir, max_iters=20), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(run_config(synthetic_dir, max_iters=20), tmp_path / "run", progress=False)


def test_early_stopping_stops(synthetic_dir, tmp_path):
    config = run_config(synthetic_dir, max_iters=10_000, eval_every=10, patience=2, lr=1e-12)
    train(config, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run/last.pt", weights_only=True)["state"]
    assert state["finished"] and state["step"] == 30  # lr ~0: no improvement after the first validation


def test_bf16_autocast_trains(synthetic_dir, tmp_path):
    config = config_for_run("hpcl4sr", [{"data": {"path": str(synthetic_dir)}, "train": {
        "max_iters": 20, "eval_every": 20, "log_every": 10, "batch_size": 32, "device": "cpu",
        "precision": "bf16"}}])
    metrics = train(config, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in records if r["split"] == "train")
    assert 0.0 < metrics["recall@50"] <= 1.0
    weights = torch.load(tmp_path / "run/last.pt", weights_only=True)["model"]
    assert all(value.dtype != torch.bfloat16 for value in weights.values())  # autocast keeps fp32 weights
