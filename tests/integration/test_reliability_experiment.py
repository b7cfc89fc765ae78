"""Issue 15, experiment runner: cells keyed by their resolved config, duplicate keys refused, every check
before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hpcl4sr.errors import UserError
from hpcl4sr.experiment import read_results, run_experiment
from hpcl4sr.experiment_file import load_experiment

TINY = {"train.max_iters": 10, "train.eval_every": 10, "train.batch_size": 32, "train.device": "cpu",
        "train.threads": 1}


def write_experiment(tmp_path: Path, data: Path, models: dict, **spec) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"synthetic": {"path": str(data)}}, "seeds": [1], "set": TINY,
                                    "models": models, **spec}, sort_keys=False))
    return path


def test_an_edited_row_never_reuses_the_old_results(synthetic_dir, tmp_path):
    out = tmp_path / "out"
    file = write_experiment(tmp_path, synthetic_dir, {"a": {"model": "comirec-sa"}})
    first = run_experiment(load_experiment(file), out, progress=False)
    file = write_experiment(tmp_path, synthetic_dir, {"a": {"model": "gru4rec"}})  # same row name, other model
    with pytest.raises(UserError, match="model_name='comirec-sa'.*remove that run directory"):
        run_experiment(load_experiment(file), out, progress=False)
    assert read_results(out) == first  # nothing recorded for the edited row

    file = write_experiment(tmp_path, synthetic_dir, {"a": {"model": "comirec-sa", "set": {"train.lr": 0.01}}})
    with pytest.raises(UserError, match="train.lr=0.001"):
        run_experiment(load_experiment(file), out, progress=False)


def test_a_results_line_of_another_config_is_replaced(synthetic_dir, tmp_path):
    out = tmp_path / "out"
    file = write_experiment(tmp_path, synthetic_dir, {"a": {"model": "comirec-sa"}})
    (first,) = run_experiment(load_experiment(file), out, progress=False)
    stale = {**first, "key": "0" * 16, "metrics": {**first["metrics"], "recall@50": 0.99}}
    (out / "results.jsonl").write_text(json.dumps(stale) + "\n")
    (again,) = run_experiment(load_experiment(file), out, progress=False)
    assert again == first


def test_speed_settings_do_not_make_another_cell(synthetic_dir, tmp_path):
    out = tmp_path / "out"
    file = write_experiment(tmp_path, synthetic_dir, {"a": {"model": "comirec-sa"}})
    first = run_experiment(load_experiment(file), out, progress=False)
    again = run_experiment(load_experiment(file), out, progress=False, extra={"train": {"eval_batch_size": 64}})
    assert again == first


def test_duplicate_keys_name_the_file_line_and_key(synthetic_dir, tmp_path):
    file = tmp_path / "twice.yaml"
    file.write_text(f"datasets:\n  synthetic: {{path: {synthetic_dir}}}\nmodels:\n  a: {{model: comirec-sa}}\n"
                    "  a: {model: gru4rec}\n")
    with pytest.raises(UserError, match=r"twice.yaml line 5, column 3: .*duplicate key 'a'"):
        load_experiment(file)


def test_an_unknown_model_fails_before_any_data_is_prepared(tmp_path):
    from hpcl4sr.data.synthetic import synthesize, write_interactions

    log = tmp_path / "log.csv"
    write_interactions(synthesize(users=100, items=50, categories=5, seed=0), log)
    file = tmp_path / "experiment.yaml"
    file.write_text(yaml.safe_dump({"datasets": {"s": {"source": "csv", "raw": "log.csv"}},
                                    "models": {"a": {"model": "nope"}}}))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="unknown model 'nope'"):
        run_experiment(load_experiment(file), out, progress=False)
    file.write_text(yaml.safe_dump({"datasets": {"s": {"source": "csv", "raw": "log.csv",
                                                       "options": {"max_len": -5}}},
                                    "models": {"a": {"model": "comirec-sa"}}}))
    with pytest.raises(UserError, match="--max-len"):
        run_experiment(load_experiment(file), out, progress=False)
    assert not out.exists()  # no experiment.json, no lock file, no prepared data


def test_runners_check_the_grid_before_starting_any(synthetic_dir, tmp_path):
    from hpcl4sr.experiment import run_with_runners

    file = write_experiment(tmp_path, synthetic_dir, {"a": {"model": "nope"}})
    with pytest.raises(UserError, match="unknown model 'nope'"):
        run_with_runners(load_experiment(file), tmp_path / "out", 2, [], progress=False)
    assert not (tmp_path / "out").exists()
