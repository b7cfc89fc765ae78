"""Distributed training with PyTorch's engine: two gloo processes on CPU, launched by torchrun."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hpcl4sr.errors import UserError
from hpcl4sr.evaluate import evaluate_model
from hpcl4sr.run import load_run, read_run_config
from hpcl4sr.train import train

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(data: Path, run: Path, max_iters: int, *extra: str) -> None:
    """Launch the worker on two processes; a failed launch is retried once from the same starting files.

    Two launches out of about forty failed on a loaded 2-core machine, and their output was not kept; a
    deterministic bug fails both attempts, and a first failure is reported as a warning with its output.
    One failure seen since (1 in about 90 launches, under a concurrent full suite) was rank 0 aborting
    with "terminate called without an active exception" (SIGABRT) after its last validation, the agent
    then stopping rank 1: a crash inside torch/gloo at teardown, not a rendezvous port (torchrun
    --standalone binds its store to port 0 and the workers reuse it) and not a timeout.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), str(data), str(run), str(max_iters), *extra]
    before = run.parent.with_name(run.parent.name + "-before")
    shutil.rmtree(before, ignore_errors=True)
    if run.parent.exists():
        shutil.copytree(run.parent, before)
    for attempt in (1, 2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        output = done.stdout[-3000:] + done.stderr[-3000:]
        if done.returncode == 0:
            return
        assert attempt == 1, output
        warnings.warn(f"torchrun launch failed once, retrying:\n{output}", stacklevel=2)
        shutil.rmtree(run.parent, ignore_errors=True)
        if before.exists():
            shutil.copytree(before, run.parent)


@pytest.fixture(scope="module")
def ddp_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-step comirec-sa run on two processes; returns its run directory."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(synthetic_dir, run, 40)
    return run


def test_ranks_keep_identical_parameters(ddp_run: Path) -> None:
    rank0 = torch.load(ddp_run.parent / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp_run.parent / "rank1.pt", weights_only=True)
    initial = load_run(ddp_run, "last.pt", "cpu")[2].state_dict()
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
        assert torch.equal(value, initial[name]), name  # last.pt holds what the ranks hold


def test_rank_zero_alone_writes_the_run(ddp_run: Path) -> None:
    assert {path.name for path in ddp_run.iterdir()} == {
        ".lock", "config.yaml", "metrics.jsonl", "best.pt", "last.pt", "test_metrics.json"}
    records = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "valid"] == [20, 40]  # one line per step, not two
    assert len(torch.load(ddp_run / "last.pt", weights_only=True)["ranks"]) == 2


def test_sharded_evaluation_equals_single_process(ddp_run: Path) -> None:
    sharded = json.loads((ddp_run.parent / "sharded_metrics.json").read_text())
    config, dataset, model = load_run(ddp_run, "best.pt", "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks run: the same kernels give the same per-user values
    try:
        single = evaluate_model(model, dataset, "test", batch_size=16)
    finally:
        torch.set_num_threads(threads)
    assert sharded == single
    saved = json.loads((ddp_run / "test_metrics.json").read_text())
    assert {key: saved[key] for key in single} == pytest.approx(single, rel=1e-12)


def test_distributed_run_resumes_exactly(ddp_run: Path, synthetic_dir: Path) -> None:
    resumed = ddp_run.parent.parent / "resumed" / "run"
    torchrun(synthetic_dir, resumed, 20)
    torchrun(synthetic_dir, resumed, 40, "--resume")
    straight = torch.load(ddp_run / "last.pt", weights_only=True)["model"]
    again = torch.load(resumed / "last.pt", weights_only=True)["model"]
    for name, value in straight.items():
        assert torch.equal(value, again[name]), name


def test_single_process_refuses_to_resume_a_distributed_run(ddp_run: Path) -> None:
    config = read_run_config(ddp_run, [{"train": {"max_iters": 60}}])  # the run's own config, as --resume reads it
    with pytest.raises(UserError, match="2 process"):
        train(config, ddp_run, resume=True, progress=False)
