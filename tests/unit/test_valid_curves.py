"""Valid curves read from a run's metrics.jsonl and averaged over seeds (`hpcl4sr analyze curves`)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpcl4sr.analysis import plot_valid_curves, run_label, valid_curve
from hpcl4sr.errors import UserError


def write_run(path: Path, seed: int, points: list[tuple[int, float]], model: str = "comirec-sa") -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model_name": model, "train": {"seed": seed, "lr": 0.001}}))
    lines = [{"step": step, "split": "train", "total": 1.0} for step, _ in points]
    lines += [{"step": step, "split": "valid", "recall@50": value, "hr@50": 2 * value} for step, value in points]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_fitted_run_counts_its_chosen_setting(tmp_path: Path):
    run = write_run(tmp_path / "r", 1, [(0, 0.1), (0, 0.3), (0, 0.2)], model="itemknn")  # 3 candidates on valid
    steps, values = valid_curve(run)
    assert steps.tolist() == [0] and values.tolist() == [0.3]
    fitted, trained = plot_valid_curves([run, write_run(tmp_path / "t", 1, [(100, 0.2)])], tmp_path / "c.png")
    assert (fitted["best_step"], fitted["best_recall@50"]) == (0, 30.0) and trained["best_step"] == 100


def test_an_unknown_metric_names_the_file_and_line(tmp_path: Path):
    run = write_run(tmp_path / "r", 1, [(100, 0.1)])
    with pytest.raises(UserError, match=r"metrics.jsonl, line 2: no 'ndcg@7'"):
        valid_curve(run, "ndcg@7")


def test_seeds_average_over_the_steps_all_reached(tmp_path: Path):
    first = write_run(tmp_path / "row" / "s1", 1, [(100, 0.10), (200, 0.30), (300, 0.20)])
    second = write_run(tmp_path / "row" / "s2", 2, [(100, 0.20), (200, 0.10)])  # stopped early
    other = write_run(tmp_path / "other" / "s1", 1, [(100, 0.05)], model="remi")
    summaries = plot_valid_curves([first, second, other], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    row, single = summaries
    assert (row["label"], row["runs"], row["last_step"]) == ("row", 2, 200)
    assert row["best_step"] == 200 and np.isclose(row["best_recall@50"], 20.0)  # mean of 30 and 10
    assert (single["label"], single["model"], single["best_step"]) == ("other", "remi", 100)


def test_a_grid_seed_folder_is_labelled_by_its_row(tmp_path: Path):
    assert run_label(tmp_path / "comirec-sa.full" / "s3") == "comirec-sa.full"
    assert run_label(tmp_path / "my-run") == "my-run"


def test_a_last_line_cut_short_is_skipped_and_any_other_bad_line_named(tmp_path: Path):
    # a run being written (or killed mid-line) ends with part of a line; `analyze curves` reads it anyway
    run = write_run(tmp_path / "r", 1, [(100, 0.1), (200, 0.2)])
    with (run / "metrics.jsonl").open("a") as log:
        log.write('{"step": 300, "split": "val')
    steps, values = valid_curve(run)
    assert steps.tolist() == [100, 200] and values.tolist() == [0.1, 0.2]
    (run / "metrics.jsonl").write_text('{"step": 100, "spl\n{"step": 100, "split": "valid", "recall@50": 0.1}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl, line 1: not a JSON object"):
        valid_curve(run)
