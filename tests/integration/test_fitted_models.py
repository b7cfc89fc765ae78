"""Fitted baselines end to end: the run directory `hpcl4sr train` writes works with every inference command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hpcl4sr import train as train_module
from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.experiment import run_experiment
from hpcl4sr.experiment_file import load_experiment
from hpcl4sr.report import write_report
from hpcl4sr.run import config_for_run, load_run
from hpcl4sr.train import train

GRID = {"neighbours": [5, 10], "shrinkage": [0.0, 10.0], "repeat_weight": [0.0, 1.0]}


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcl4sr", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def knn_run(synthetic_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fitted") / "itemknn"
    config = config_for_run("itemknn", [{"data": {"path": str(synthetic_dir)}, "model": GRID,
                                         "train": {"device": "cpu", "threads": 1}}])
    train(config, run, progress=False)
    return run


def test_the_run_directory_records_every_candidate_and_the_choice(knn_run):
    records = [json.loads(line) for line in (knn_run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8 and {r["split"] for r in records} == {"valid"} and {r["step"] for r in records} == {0}
    best = max(records, key=lambda r: r["recall@50"])
    chosen = {key: best[f"model.{key}"] for key in GRID}
    saved = yaml.safe_load((knn_run / "config.yaml").read_text())
    assert saved["model"] == {**chosen, "repeat_score": "count"}  # single values: the run is the chosen model
    metrics = json.loads((knn_run / "test_metrics.json").read_text())
    assert metrics["chosen"] == chosen and metrics["valid_recall@50"] == best["recall@50"]
    checkpoint = torch.load(knn_run / "best.pt", weights_only=True)
    assert set(checkpoint) >= {"model", "state", "config", "version"}
    assert checkpoint["model"]["neighbour_ids"].shape[1] == chosen["neighbours"]
    _, _, model = load_run(knn_run)
    assert torch.equal(model.neighbour_sims, checkpoint["model"]["neighbour_sims"])


def test_evaluate_recommend_and_export_work_on_the_run(knn_run, synthetic_dir):
    evaluated = cli("evaluate", "--run", knn_run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    stored = json.loads((knn_run / "test_metrics.json").read_text())
    assert json.loads(evaluated.stdout)["recall@50"] == pytest.approx(stored["recall@50"], abs=1e-12)
    data = SequenceDataset(synthetic_dir)
    user = data.raw_ids("user")[int(data.split_users["test"][0])]
    recommended = cli("recommend", "--run", knn_run, "--user", user, "-n", "5", "--json")
    assert recommended.returncode == 0, recommended.stderr
    rows = json.loads(recommended.stdout)["recommendations"]
    assert len(rows) == 5 and {row["interest"] for row in rows} == {0}
    export = knn_run.parent / "export"
    exported = cli("export", "--run", knn_run, "--out", export)
    assert exported.returncode == 0, exported.stderr  # the artifact alone: a fitted model has no vectors
    assert (export / "artifact.json").is_file() and not (export / "item_embeddings.npy").exists()
    from_export = cli("recommend", "--run", export, "--user", user, "-n", "5", "--json")
    assert json.loads(from_export.stdout)["recommendations"] == rows


def test_resume_of_a_fitted_run_changes_nothing(knn_run):
    before = {name: (knn_run / name).read_bytes() for name in ("config.yaml", "test_metrics.json", "metrics.jsonl")}
    resumed = cli("train", "--resume", knn_run, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert before == {name: (knn_run / name).read_bytes() for name in before}


def test_selection_never_reads_the_test_split(synthetic_dir, tmp_path, monkeypatch):
    splits = []
    evaluate = train_module.evaluate_model
    monkeypatch.setattr(train_module, "evaluate_model",
                        lambda model, dataset, split, *args, **kw: splits.append(split) or evaluate(
                            model, dataset, split, *args, **kw))
    config = config_for_run("itemknn", [{"data": {"path": str(synthetic_dir)}, "train": {"device": "cpu"},
                                         "model": {"neighbours": [5, 10], "shrinkage": 0, "repeat_weight": 1}}])
    train(config, tmp_path / "run", progress=False)
    assert splits == ["valid", "valid", "test"]  # the test split once, after the choice


def grid_file(tmp_path: Path, data: Path, models: dict, max_iters: int) -> Path:
    file = tmp_path / "experiment.yaml"
    file.write_text(yaml.safe_dump({
        "datasets": {"synthetic": {"path": str(data)}}, "seeds": [1], "models": models, "ours": list(models)[-1],
        "set": {"train.max_iters": max_iters, "train.eval_every": 10, "train.batch_size": 32,
                "train.device": "cpu"},
    }, sort_keys=False))
    return file


def test_an_experiment_grid_mixes_fitted_and_trained_rows(synthetic_dir, tmp_path):
    models = {"pop": {"model": "pop"}, "gru": {"model": "gru4rec"}}
    results = run_experiment(load_experiment(grid_file(tmp_path, synthetic_dir, models, 20)), tmp_path / "out",
                             progress=False)
    assert [r["cell"] for r in results] == ["synthetic/pop/s1", "synthetic/gru/s1"]
    assert (tmp_path / "out" / results[0]["run"] / "test_users.npz").is_file()
    report = write_report(tmp_path / "out").read_text()
    assert "| pop |" in report and "| gru |" in report

    # Fitting reads no train setting but the seed: another budget leaves the fitted cell as it is ...
    again = run_experiment(load_experiment(grid_file(tmp_path, synthetic_dir, {"pop": models["pop"]}, 30)),
                           tmp_path / "out", progress=False)
    assert again == results
    # ... and still makes the trained row another cell.
    with pytest.raises(UserError, match="train.max_iters=20"):
        run_experiment(load_experiment(grid_file(tmp_path, synthetic_dir, models, 30)), tmp_path / "out",
                       progress=False)


def test_blend_script_reproduces_both_ingredients_and_picks_w_on_valid(knn_run, synthetic_dir, tmp_path):
    """scripts/blend_itemknn.py: w = 0 is the neural run's own evaluation, item-kNN's row its own."""
    from hpcl4sr.evaluate import evaluate_model

    neural = tmp_path / "comirec"
    config = config_for_run("comirec-sa", [{"data": {"path": str(synthetic_dir)}, "model": {"dim": 16},
                                            "train": {"device": "cpu", "threads": 1, "max_iters": 30,
                                                      "eval_every": 30, "batch_size": 32}}])
    train(config, neural, progress=False)
    script = Path(__file__).parents[2] / "scripts" / "blend_itemknn.py"
    done = subprocess.run([sys.executable, script, "--run", neural, "--knn", knn_run, "--weights", "0.5,2"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    blend = json.loads(done.stdout)
    valid = blend["valid_recall@50"]
    assert set(valid) == {"0.0", "0.5", "2.0", "itemknn"}
    assert blend["chosen_weight"] == max((0.5, 2.0), key=lambda w: valid[str(w)])
    _, dataset, model = load_run(neural, device="cpu")
    # the model's own ranking, unchanged by adding 0 x item-kNN (whose padding column must not turn to nan)
    assert blend["test"]["model"]["recall@50"] == pytest.approx(evaluate_model(model, dataset, "test")["recall@50"])
    assert valid["0.0"] == pytest.approx(evaluate_model(model, dataset, "valid")["recall@50"])
    stored = json.loads((knn_run / "test_metrics.json").read_text())
    for metric in ("recall@20", "recall@50", "hr@20", "hr@50"):  # equal scores broken as item-kNN breaks them
        assert blend["test"]["itemknn"][metric] == pytest.approx(stored[metric], abs=1e-9)
    swapped = subprocess.run([sys.executable, script, "--run", knn_run, "--knn", neural], capture_output=True,
                             text=True)
    assert swapped.returncode == 2 and "--run must be a trained neural run" in swapped.stderr
    assert "Traceback" not in swapped.stderr
