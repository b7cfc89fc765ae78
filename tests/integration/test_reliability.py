"""Issue 15, as a hostile user meets the CLI: every failure is one line on stderr with exit status 2, no
traceback, and nothing broken, mixed or half-written is left behind.

The commands run in-process through `hpcl4sr.cli.main` (the entry point `python -m hpcl4sr` calls), on a
300-user synthetic log and a 20-step run shared by the module.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from hpcl4sr import cli
from hpcl4sr.atomic import exclusive_lock
from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.data.synthetic import synthesize, write_interactions

FAST = ["--no-progress", "--set", "train.threads=1", "--set", "train.batch_size=32", "--set", "train.eval_every=10"]


class Outcome:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> Outcome:
    """`hpcl4sr ARGS` in this process; an exception escaping `main` is a traceback the user would see."""
    capsys.readouterr()
    argv = sys.argv
    sys.argv = ["hpcl4sr", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception as err:  # noqa: BLE001 - the point is that nothing may escape
        pytest.fail(f"a traceback would reach the user: {type(err).__name__}: {err}")
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_one_line_error(outcome: Outcome, *fragments: str) -> str:
    """Exit status 2, exactly one line on stderr starting `error: `, naming every fragment, no traceback."""
    lines = outcome.err.strip().splitlines()
    assert outcome.code == 2, outcome.err
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.err
    assert "Traceback" not in outcome.out + outcome.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "log.csv"
    write_interactions(synthesize(users=300, items=200, categories=10, seed=0, mean_length=30), path)
    return path


@pytest.fixture(scope="module")
def data(log: Path) -> Path:
    from hpcl4sr.data.prepare import prepare_from_files

    out = log.parent / "data"
    prepare_from_files("csv", [log], out, min_count=5)
    return out


@pytest.fixture(scope="module")
def trained(data: Path) -> Path:
    """A finished 20-step comirec-sa run; tests copy it before changing anything."""
    from hpcl4sr.run import config_for_run
    from hpcl4sr.train import train

    run = data.parent / "run"
    config = config_for_run("comirec-sa", [{"data": {"path": str(data)}, "train": {
        "max_iters": 20, "eval_every": 10, "batch_size": 32, "threads": 1, "device": "cpu"}}])
    train(config, run, progress=False)
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != ".lock"}


def test_resume_that_changes_the_model_or_data_is_refused_and_writes_nothing(run, data, log, capsys):
    before = snapshot(run)
    other = log.parent / "other-data"
    shutil.copytree(data, other)
    assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--set", "model.dim=32", *FAST), "model.dim")
    assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--data", other, *FAST), "data.path")
    assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--set", "train.lr=0.05", *FAST), "train.lr")
    assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--set", "train.seed=3", *FAST), "train.seed")
    assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--model", "gru4rec"), "--model")
    assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--out", run.parent / "x"), "--out")
    assert snapshot(run) == before
    assert run_cli(capsys, "evaluate", "--run", run, "--json").code == 0  # the run still works


def test_resume_applies_the_keys_it_may_change(run, data, capsys):
    resumed = run_cli(capsys, "train", "--resume", run, "--data", data, "--set", "train.max_iters=30",
                      "--set", "train.patience=50", *FAST)
    assert resumed.code == 0, resumed.err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_iters"] == 30
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["state"]["step"] == 30 and checkpoint["config"]["train"]["patience"] == 50


def test_a_second_trainer_of_the_same_run_stops_naming_the_holder(run, capsys):
    with exclusive_lock(run / ".lock", wait=False) as holder:
        assert holder is None
        error = assert_one_line_error(run_cli(capsys, "train", "--resume", run, "--set", "train.max_iters=30",
                                              *FAST), f"process {os.getpid()}")
    assert "is training" in error


def test_divergence_stops_with_the_step_and_term_and_leaves_no_new_run(data, tmp_path, capsys):
    out = tmp_path / "diverged"
    error = assert_one_line_error(run_cli(capsys, "train", "--data", data, "--model", "hpcl4sr", "--out", out,
                                          "--set", "train.lr=1e6", "--set", "train.log_every=1", *FAST),
                                  "loss term", "is nan")
    assert error.startswith("error: step ")
    assert not out.exists()  # nothing worth keeping: no checkpoint was reached


def test_divergence_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    from hpcl4sr import train as trainer
    from hpcl4sr.errors import UserError
    from hpcl4sr.run import config_for_run, load_checkpoint

    def poisoned(model, settings):  # the weights turn NaN after step 7, between two validations
        optimizer = make_optimizer(model, settings)
        step, calls = optimizer.step, []

        def poisoned_step(*args, **kwargs):
            result = step(*args, **kwargs)
            calls.append(1)
            if len(calls) == 7:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            return result

        optimizer.step = poisoned_step
        return optimizer

    make_optimizer = trainer.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer", poisoned)
    out = tmp_path / "run"
    config = config_for_run("comirec-sa", [{"data": {"path": str(data)}, "train": {
        "max_iters": 20, "eval_every": 5, "batch_size": 32, "threads": 1, "device": "cpu"}}])
    with pytest.raises(UserError, match=r"step 10: loss term '\w+' is nan; last good checkpoint kept at .*last.pt"):
        trainer.train(config, out, progress=False)
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 5
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"bare {token} in metrics.jsonl"))


def test_checkpoints_with_non_finite_weights_are_refused(run, tmp_path, capsys):
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = torch.full_like(checkpoint["model"][name], float("nan"))
    torch.save(checkpoint, run / "best.pt")
    assert_one_line_error(run_cli(capsys, "evaluate", "--run", run), "best.pt", name, "NaN")
    assert_one_line_error(run_cli(capsys, "export", "--run", run, "--out", tmp_path / "export"), "best.pt")
    assert not (tmp_path / "export").exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


class _Payload:
    def __reduce__(self):  # would run `os.system` if unpickled without weights_only
        return (os.system, ("touch PWNED",))


def _pickled(path: Path) -> None:
    torch.save({"model": _Payload()}, path)


def _foreign(path: Path) -> None:
    from hpcl4sr.run import build_model, config_for_run, open_dataset, read_run_config

    config = config_for_run("gru4rec", [{"data": {"path": read_run_config(path.parent).data.path}}])
    dataset, max_len = open_dataset(config)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = build_model(config, dataset, max_len).state_dict()
    torch.save(checkpoint, path)


DAMAGE = {"truncated": _truncate, "random": _random, "empty": _empty, "pickled": _pickled, "foreign": _foreign}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["evaluate", "recommend", "export", "resume"])
def test_damaged_checkpoints_are_one_line(run, tmp_path, capsys, monkeypatch, damage, command):
    monkeypatch.chdir(tmp_path)
    name = "last.pt" if command == "resume" else "best.pt"
    DAMAGE[damage](run / name)
    args = {"evaluate": ["evaluate", "--run", run], "recommend": ["recommend", "--run", run, "--user", "u1"],
            "export": ["export", "--run", run, "--out", tmp_path / "export"],
            "resume": ["train", "--resume", run, "--set", "train.max_iters=30", *FAST]}[command]
    assert_one_line_error(run_cli(capsys, *args), name)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", ["items.npy", "offsets.npy", "meta.json", "times.npy", "train_users.npy"])
@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_dataset_files_are_one_line(data, run, tmp_path, capsys, name, damage):
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    DAMAGE[damage](broken / name)
    assert_one_line_error(run_cli(capsys, "data", "stats", broken), name)
    assert_one_line_error(run_cli(capsys, "train", "--data", broken, "--model", "comirec-sa", "--out",
                                  tmp_path / "new", *FAST), name)
    assert not (tmp_path / "new").exists()


def test_train_out_must_be_new_or_empty(data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own file\n")
    for out in (data, mine):
        before = snapshot(out)
        assert_one_line_error(run_cli(capsys, "train", "--data", data, "--model", "comirec-sa", "--out", out,
                                      *FAST), str(out), "not empty")
        assert snapshot(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(capsys, "train", "--data", data, "--model", "comirec-sa", "--out", empty,
                   "--set", "train.max_iters=10", *FAST)
    assert done.code == 0, done.err


def test_a_failed_new_run_leaves_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert_one_line_error(run_cli(capsys, "train", "--data", data, "--model", "comirec-sa", "--out", out,
                                  "--set", "data.min_history=1000", *FAST), "min_history")
    assert not out.exists()


def _file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker


# Each case: (arguments given tmp_path, data, run, log; fragments the one line must hold).
CASES: dict[str, tuple[Callable[..., list], tuple[str, ...]]] = {
    "threads -1": (lambda t, d, r, lg: ["train", "--resume", r, "--set", "train.threads=-1"], ("train.threads",)),
    "weight_decay -1": (lambda t, d, r, lg: ["train", "--data", d, "--model", "comirec-sa", "--out", t / "n",
                                             "--set", "train.weight_decay=-1"], ("train.weight_decay",)),
    "lr nan": (lambda t, d, r, lg: ["train", "--data", d, "--model", "comirec-sa", "--out", t / "n",
                                    "--set", "train.lr=nan"], ("train.lr",)),
    "lr inf": (lambda t, d, r, lg: ["train", "--data", d, "--model", "comirec-sa", "--out", t / "n",
                                    "--set", "train.lr=.inf"], ("train.lr",)),
    "unknown model": (lambda t, d, r, lg: ["train", "--data", d, "--model", "nope", "--out", t / "n"], ("nope",)),
    "train out under a file": (lambda t, d, r, lg: ["train", "--data", d, "--model", "comirec-sa",
                                                    "--out", _file(t) / "run"], ("a-file", "not a directory")),
    "prepare out under a file": (lambda t, d, r, lg: ["prepare", "--source", "csv", "--raw", lg,
                                                      "--out", _file(t) / "data"], ("a-file", "not a directory")),
    "export out under a file": (lambda t, d, r, lg: ["export", "--run", r, "--out", _file(t) / "x"], ("a-file",)),
    "recommend -n 0": (lambda t, d, r, lg: ["recommend", "--run", r, "--user", "u1", "-n", 0], ("-n",)),
    "similarity suffix": (lambda t, d, r, lg: ["analyze", "similarity", "--run", r, "--out", t / "f.xyz"],
                          ("f.xyz", ".png")),
    "similarity users 0": (lambda t, d, r, lg: ["analyze", "similarity", "--run", r, "--out", t / "f.png",
                                                "--users", 0], ("--users",)),
    "repeats -n 0": (lambda t, d, r, lg: ["analyze", "repeats", "--run", r, "-n", 0], ("-n",)),
    "case --top 0": (lambda t, d, r, lg: ["experiment", "case", "--run", r, "--user", "u1", "--top", 0], ("--top",)),
    "prepare max-len -5": (lambda t, d, r, lg: ["prepare", "--source", "csv", "--raw", lg, "--out", t / "n",
                                                "--max-len", -5], ("--max-len",)),
    "raw is a directory": (lambda t, d, r, lg: ["prepare", "--source", "csv", "--raw", t, "--out", t / "n"],
                           ("is a directory",)),
    "resume without last.pt": (lambda t, d, r, lg: ["train", "--resume", _no_last(r)], ("no last.pt",)),
    "resume not a run": (lambda t, d, r, lg: ["train", "--resume", t], ("config.yaml",)),
}


def _no_last(run: Path) -> Path:
    (run / "last.pt").unlink()
    return run


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line(case, tmp_path, data, run, log, capsys):
    build, fragments = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    assert_one_line_error(run_cli(capsys, *build(work, data, run, log)), *fragments)
    assert sorted(p.name for p in work.iterdir()) in ([], ["a-file"])  # nothing written


def test_recommend_clamps_n_to_the_catalogue(run, data, capsys):
    dataset = SequenceDataset(data)
    user = dataset.raw_ids("user")[int(dataset.split_users["test"][0])]
    done = run_cli(capsys, "recommend", "--run", run, "--user", user, "-n", 10_000_000_000, "--json")
    assert done.code == 0, done.err
    assert 0 < len(json.loads(done.out)["recommendations"]) <= dataset.n_items


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_read_only_parent_is_one_line(log, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert_one_line_error(run_cli(capsys, "prepare", "--source", "csv", "--raw", log, "--out", locked / "d"),
                          "permission denied")


def test_config_files_not_utf8_or_with_duplicate_keys(data, tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"train:\n  lr: \xff\xfe\n")
    assert_one_line_error(run_cli(capsys, "train", "--data", data, "--model", "comirec-sa", "--out", tmp_path / "r",
                                  "--config", binary), "binary.yaml", "UTF-8")
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.001\n  lr: 0.1\n")
    assert_one_line_error(run_cli(capsys, "train", "--data", data, "--model", "comirec-sa", "--out", tmp_path / "r",
                                  "--config", twice), "twice.yaml", "line 3", "duplicate key 'lr'")
    assert not (tmp_path / "r").exists()


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_raw_logs_that_are_wrong_in_small_ways(tmp_path, capsys):
    out = tmp_path / "out"
    header = _write_csv(tmp_path / "header.csv", "user,item,category,time\n")
    assert_one_line_error(run_cli(capsys, "prepare", "--source", "csv", "--raw", header, "--out", out),
                          "header.csv", "no interactions")
    spaces = _write_csv(tmp_path / "spaces.csv", "user,item,category,time\n   ,i1,c1,1\n")
    assert_one_line_error(run_cli(capsys, "prepare", "--source", "csv", "--raw", spaces, "--out", out),
                          "spaces.csv line 2", "'user'", "blank")
    garbage = _write_csv(tmp_path / "garbage.csv", "user,item,category,time\nu\x1b[31m,i1,c1,x\x07\n")
    error = assert_one_line_error(run_cli(capsys, "prepare", "--source", "csv", "--raw", garbage, "--out", out),
                                  "garbage.csv")
    assert "\x1b" not in error and "\x07" not in error
    broken = _write_csv(tmp_path / "breaks.csv", "".join(
        ["user,item,category,time\n"] + [f'"u\n{u}",i{i},c1,{i}\n' for u in range(3) for i in range(3)]))
    assert_one_line_error(run_cli(capsys, "prepare", "--source", "csv", "--raw", broken, "--out", out,
                                  "--min-count", 1), "breaks.csv", "line break")
    struct = tmp_path / "struct.parquet"
    pl.DataFrame({"user": [{"a": 1}], "item": ["i"], "category": ["c"], "time": [1]}).write_parquet(struct)
    assert_one_line_error(run_cli(capsys, "prepare", "--source", "parquet", "--raw", struct, "--out", out),
                          "struct.parquet", "'user'")
    assert not out.exists()


def test_prepared_and_exported_directories_follow_the_umask(data, run, tmp_path, capsys):
    umask = os.umask(0o022)
    try:
        assert run_cli(capsys, "export", "--run", run, "--out", tmp_path / "export").code == 0
    finally:
        os.umask(umask)
    assert (tmp_path / "export").stat().st_mode & 0o777 == 0o755


def test_stale_staging_of_dead_processes_is_removed(log, run, tmp_path, capsys):
    dead = 2**22 + 12345  # above Linux's largest pid
    stale_dir = tmp_path / f".data.{dead}.0123456789ab"
    stale_dir.mkdir()
    (stale_dir / "items.npy").write_bytes(b"half")
    live_dir = tmp_path / f".data.{os.getpid()}.0123456789ab"
    live_dir.mkdir()
    assert run_cli(capsys, "prepare", "--source", "csv", "--raw", log, "--out", tmp_path / "data",
                   "--min-count", 5).code == 0
    assert not stale_dir.exists() and live_dir.exists()  # a running writer's staging is left alone

    stale_checkpoint = run / f".last.pt.{dead}.0123456789ab.tmp.pt"
    stale_checkpoint.write_bytes(b"half")
    resumed = run_cli(capsys, "train", "--resume", run, "--set", "train.max_iters=30", *FAST)
    assert resumed.code == 0, resumed.err
    assert not stale_checkpoint.exists()
