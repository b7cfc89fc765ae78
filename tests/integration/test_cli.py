"""The command line as a user meets it: --help everywhere, one-line errors, no partial output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcl4sr.data.dataset import SequenceDataset

COMMANDS = [[], ["models"], ["config"], ["prepare"], ["train"], ["evaluate"], ["recommend"], ["export"], ["analyze"],
            ["analyze", "similarity"], ["analyze", "summary"], ["analyze", "repeats"], ["analyze", "curves"],
            ["data"], ["data", "fetch"], ["data", "stats"], ["data", "synth"]]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcl4sr", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command):
    result = cli(*command, "--help")
    assert result.returncode == 0
    assert "Usage" in result.stdout


def test_models_lists_comirec_sa():
    assert "comirec-sa" in cli("models").stdout


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_prepare_errors_leave_no_output(tmp_path: Path):
    out = tmp_path / "out"
    assert_one_line_error(cli("prepare", "--source", "csv", "--raw", tmp_path / "missing.csv", "--out", out),
                          "missing.csv", "not found")
    log = tmp_path / "log.csv"
    log.write_text("user,product,category,time\nu1,i1,c1,1\n")
    assert_one_line_error(cli("prepare", "--source", "csv", "--raw", log, "--out", out), "log.csv", "item")
    log.write_text("user,item,category,time\nu1,i1,c1,1\nu1,i2,c1,2\n")
    assert_one_line_error(cli("prepare", "--source", "csv", "--raw", log, "--out", out), "nothing left")
    assert_one_line_error(cli("prepare", "--source", "avro", "--raw", log, "--out", out), "avro")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_synth_prepare_train_evaluate_recommend_export(tmp_path: Path):
    log, data, run = tmp_path / "log.parquet", tmp_path / "data", tmp_path / "run"
    assert cli("data", "synth", "--users", 300, "--items", 200, "--categories", 30, "--out", log).returncode == 0
    assert cli("prepare", "--source", "parquet", "--raw", log, "--out", data, "--min-count", 5).returncode == 0
    stats = json.loads(cli("data", "stats", data, "--json").stdout)
    assert stats["users"] > 0 and stats["train_users"] + stats["valid_users"] + stats["test_users"] == stats["users"]

    assert_one_line_error(cli("train", "--data", data, "--model", "nope", "--out", run), "unknown model 'nope'")
    assert_one_line_error(cli("train", "--data", data, "--model", "comirec-sa", "--out", run, "--set", "train.lr=x"),
                          "train.lr")
    trained = cli("train", "--data", data, "--model", "comirec-sa", "--out", run, "--no-progress",
                  "--set", "train.max_iters=40", "--set", "train.eval_every=20", "--set", "train.batch_size=32")
    assert trained.returncode == 0, trained.stderr
    assert "recall" in trained.stdout

    evaluated = json.loads(cli("evaluate", "--run", run, "--json").stdout)
    assert evaluated == pytest.approx({k: v for k, v in json.loads((run / "test_metrics.json").read_text()).items()
                                       if "@" in k and k != "valid_recall@50"})

    dataset = SequenceDataset(data)
    user = dataset.raw_ids("user")[int(dataset.split_users["test"][0])]
    result = json.loads(cli("recommend", "--run", run, "--user", user, "-n", 7, "--json").stdout)
    assert len(result["recommendations"]) == 7
    assert {"item", "category", "interest"} <= set(result["recommendations"][0])
    assert all(0 <= row["interest"] < 4 for row in result["recommendations"])
    assert_one_line_error(cli("recommend", "--run", run, "--user", "no-such-user"), "no-such-user")

    exported = tmp_path / "export"
    assert cli("export", "--run", run, "--out", exported).returncode == 0
    interests = np.load(exported / "user_interests.npy")
    assert interests.shape == (dataset.n_users, 4, 64)
    assert np.load(exported / "item_embeddings.npy").shape == (dataset.n_items + 1, 64)


def test_a_warning_reaches_the_user_as_one_line(synthetic_dir, tmp_path: Path):
    # the synthetic log has no user profile, so UMI says it runs its profile-free variant
    result = cli("train", "--data", synthetic_dir, "--model", "umi", "--out", tmp_path / "umi", "--no-progress",
                 "--set", "train.max_iters=10", "--set", "train.eval_every=10", "--set", "train.batch_size=16")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "profile-free" in line]
    assert warned == ["warning: UMI: dataset has no user profile; running the profile-free variant"]
    assert ".py:" not in result.stderr, result.stderr


def test_analyze_similarity_writes_a_figure_and_json(synthetic_dir, tmp_path: Path):
    runs = []
    for model in ("comirec-sa", "hpcl4sr"):
        run = tmp_path / model
        result = cli("train", "--data", synthetic_dir, "--model", model, "--out", run, "--no-progress",
                     "--set", "train.max_iters=20", "--set", "train.eval_every=10", "--set", "train.batch_size=16")
        assert result.returncode == 0, result.stderr
        runs += ["--run", run]
    figure = tmp_path / "figure1.png"
    result = cli("analyze", "similarity", *runs, "--users", 30, "--out", figure)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["model"] for line in lines] == ["comirec-sa", "hpcl4sr"]
    assert all(line["pairs"] == 30 * 6 and -1 <= line["mean_similarity"] <= 1 for line in lines)
    assert all(-1 <= line["p10"] <= line["median"] <= line["p90"] <= 1 for line in lines)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = tmp_path / "single"
    assert cli("train", "--data", synthetic_dir, "--model", "comirec-sa", "--out", single, "--no-progress", "--set",
               "model.interests=1", "--set", "train.max_iters=10", "--set", "train.eval_every=10").returncode == 0
    assert_one_line_error(cli("analyze", "similarity", *runs, "--run", single, "--out", tmp_path / "f.png"),
                          "one interest vector per user")
    summary = cli("analyze", "summary", *runs)
    assert summary.returncode == 0, summary.stderr
    rows = [line for line in summary.stdout.splitlines() if line.startswith("| comirec") or line.startswith("| hpcl")]
    assert len(rows) == 2 and "recall@50" in summary.stdout
    repeats = cli("analyze", "repeats", *runs, "-n", 20)
    assert repeats.returncode == 0, repeats.stderr
    lines = [json.loads(line) for line in repeats.stdout.splitlines()]
    assert [line["model"] for line in lines] == ["comirec-sa", "hpcl4sr"] and lines[0]["n"] == 20
    assert lines[0]["repeat_targets"] == lines[1]["repeat_targets"] > 0  # same users, same cut
    assert all(0 <= line[key] <= 1 for line in lines for key in ("repeat_hit_rate", "new_hit_rate", "history_share"))
    # the same figure name again: a figure is replaced, not refused
    curves = cli("analyze", "curves", *runs, "--out", figure, "--metric", "hr@50", "--panel-per-model")
    assert curves.returncode == 0, curves.stderr
    lines = [json.loads(line) for line in curves.stdout.splitlines() if line.startswith("{")]
    assert [(line["model"], line["last_step"]) for line in lines] == [("comirec-sa", 20), ("hpcl4sr", 20)]
    assert all(line["best_step"] in (10, 20) and 0 <= line["best_hr@50"] <= 100 for line in lines)
    assert_one_line_error(cli("analyze", "curves", *runs, "--out", figure, "--metric", "hr@7"), "hr@7", "line")
    (tmp_path / "taken.png").mkdir()
    assert_one_line_error(cli("analyze", "curves", *runs, "--out", tmp_path / "taken.png"), "is a directory")
