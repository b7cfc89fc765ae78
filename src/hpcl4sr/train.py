"""The one trainer every model uses: a small loop, early stopping, checkpoints, exact resume.

A run directory holds:
  config.yaml        the resolved configuration (model name, model / train / data sections)
  metrics.jsonl      one JSON object per logged training step and per validation
  last.pt, best.pt   checkpoint dicts (model, optimizer, step, RNG and sampler states, config, version),
                     loadable with torch.load(weights_only=True); best.pt is the best valid recall@50
  test_metrics.json  the best checkpoint's test metrics, fractions keyed like "recall@20"

Resuming restores the model, the optimizer, the sampler's and torch's random states and the early
stopping counters from last.pt, so an interrupted run continues exactly as an uninterrupted one would.

Under `torchrun --nproc_per_node=N` the same function runs on every rank: DistributedDataParallel
averages the gradients of N batches of `train.batch_size` (so N x batch_size per step), each rank draws
its own batches and negatives, validation is sharded over the ranks, and rank 0 alone writes the run
directory. Checkpoints keep every rank's random states, so a distributed run resumes exactly on the
same number of processes, and their weights load into a single process like any other.

The step never waits for the device except at logging steps (`.item()` on the losses) and validations.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from hpcl4sr import __version__, distributed
from hpcl4sr.atomic import save_checkpoint, write_text
from hpcl4sr.config import RunConfig, TrainConfig
from hpcl4sr.data.dataset import TrainSampler
from hpcl4sr.errors import UserError
from hpcl4sr.evaluate import evaluate_model
from hpcl4sr.models.base import SequentialRecommender
from hpcl4sr.run import (
    build_model,
    load_checkpoint,
    load_run,
    load_weights,
    open_dataset,
    resolve_device,
    run_config_for_disk,
)

EARLY_STOP_METRIC = "recall@50"


def make_optimizer(model: SequentialRecommender, settings: TrainConfig) -> torch.optim.Optimizer:
    # Fused Adam updates all parameters in one kernel: about 10x faster than the per-tensor loop on CPU.
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)


class MetricsLog:
    """metrics.jsonl, one JSON object a line; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            write_text(path, "".join(f"{line}\n" for line in kept))
        elif path.exists():
            path.unlink()
        self.file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config: RunConfig, out: Path, resume: bool = False, progress: bool = True) -> dict[str, float]:
    """Train `config` into run directory `out` (or continue it when `resume`); returns test metrics."""
    out = Path(out)
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    group, device, joined_here = distributed.join(resolve_device(settings.device))
    try:
        if not resume and (out / "last.pt").exists():  # a run that never reached a checkpoint may restart
            raise UserError(f"{out}: already holds a run; continue it with --resume {out} or choose another --out")
        if group.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", yaml.safe_dump(run_config_for_disk(config, out), sort_keys=False))
        group.barrier()
        _train_loop(config, out, resume, progress, group, device)
        group.barrier()  # best.pt is complete before any rank reads it
        return write_test_metrics(out, device, group)
    finally:
        if joined_here:
            distributed.leave()


def _train_loop(config: RunConfig, out: Path, resume: bool, progress: bool, group: distributed.ProcessGroup,
                device: torch.device) -> None:
    settings = config.train
    dataset, max_len = open_dataset(config)
    torch.manual_seed(settings.seed)  # the initialisation and the in-model draws (negatives); numpy samples batches
    model = build_model(config, dataset, max_len).to(device)
    if group.rank:  # same initial weights on every rank, different negatives
        torch.manual_seed(settings.seed + 1_000_003 * group.rank)
    optimizer = make_optimizer(model, settings)
    sampler = TrainSampler(dataset, settings.batch_size, max_len, config.data.min_history, settings.seed,
                           stream=group.rank)
    state = {"step": 0, "best_metric": -1.0, "best_step": 0, "bad_evals": 0, "finished": False, "seconds": 0.0}

    if resume:
        checkpoint = load_checkpoint(out / "last.pt")
        load_weights(model, checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ranks = checkpoint.get("ranks", [{"sampler": checkpoint["sampler"], "rng": checkpoint["rng"]}])
        if len(ranks) != group.world:
            raise UserError(f"{out / 'last.pt'} was written by {len(ranks)} process(es); resume it with as many "
                            f"(torchrun --nproc_per_node={len(ranks)}) to continue exactly")
        sampler.load_state_dict(ranks[group.rank]["sampler"])
        _restore_rng(ranks[group.rank]["rng"])
        state = checkpoint["state"]
        # A resumed run may be given more patience (or less): the stopping decision follows the new value.
        state["finished"] = state["bad_evals"] >= settings.patience
    log = MetricsLog(out / "metrics.jsonl", state["step"] if resume else None) if group.is_main else None

    def save(name: str) -> None:
        """Write a checkpoint from rank 0, with every rank's random states; a collective call."""
        ranks = group.gather({"sampler": sampler.state_dict(), "rng": _rng_state()})
        if not group.is_main:
            return
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": ranks[0]["sampler"],
            "rng": ranks[0]["rng"],
            "state": dict(state),
            "config": config.to_dict(),
            "version": __version__,
        }
        if group.world > 1:
            checkpoint["ranks"] = ranks
        save_checkpoint(checkpoint, out / name)

    step_model = model
    if group.world > 1:
        # No model has buffers that training changes, so there is nothing to broadcast each step.
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, forward_sync_buffers=False)
    if settings.compile:
        step_model = torch.compile(step_model)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if settings.precision == "bf16"
                else contextlib.nullcontext())

    bar = tqdm(total=settings.max_iters, initial=state["step"], desc=f"train {config.model_name}",
               disable=not (progress and group.is_main), mininterval=1.0, dynamic_ncols=True)
    # Training seconds count across resumes (older checkpoints lack them), so a log's times stay comparable.
    trained_before, started = state.get("seconds", 0.0), time.perf_counter()
    model.train()
    try:
        while not state["finished"] and state["step"] < settings.max_iters:
            batch = sampler.sample().to(device)
            with autocast:
                losses = step_model(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            state["step"] += 1
            step = state["step"]
            bar.update(1)
            if step % settings.log_every == 0 and log is not None:
                record = {name: round(value.item(), 6) for name, value in losses.items()}
                log.write({"step": step, "split": "train", **record})
                bar.set_postfix(loss=f"{record['total']:.4f}", best=f"{state['best_metric']:.4f}")
            if step % settings.eval_every == 0 or step == settings.max_iters:
                # Every rank gets the same metrics, so every rank takes the same stopping decision.
                metrics = evaluate_model(model, dataset, "valid", max_len, settings.eval_batch_size)
                state["seconds"] = trained_before + time.perf_counter() - started
                if log is not None:
                    log.write({"step": step, "split": "valid", "seconds": round(state["seconds"], 1), **metrics})
                if metrics[EARLY_STOP_METRIC] > state["best_metric"]:
                    state.update(best_metric=metrics[EARLY_STOP_METRIC], best_step=step, bad_evals=0)
                    save("best.pt")
                else:
                    state["bad_evals"] += 1
                    state["finished"] = state["bad_evals"] >= settings.patience
                if group.is_main:
                    bar.write(f"step {step}: valid {EARLY_STOP_METRIC} {metrics[EARLY_STOP_METRIC]:.4f} "
                              f"(best {state['best_metric']:.4f} at {state['best_step']})")
                save("last.pt")
    except KeyboardInterrupt:
        # last.pt is only written between steps (at each validation), so it is always consistent.
        raise UserError(f"interrupted; `hpcl4sr train --resume {out}` continues from the last validation") from None
    finally:
        bar.close()
        if log is not None:
            log.close()
    save("last.pt")


def write_test_metrics(out: Path, device: torch.device,
                       group: distributed.ProcessGroup = distributed.SINGLE_PROCESS) -> dict[str, float]:
    """Evaluate best.pt on the test split (sharded over the ranks) and write RUN/test_metrics.json."""
    config, dataset, model, max_len = load_run(out, "best.pt", str(device))
    metrics = evaluate_model(model, dataset, "test", max_len, config.train.eval_batch_size)
    if group.is_main:
        best = load_checkpoint(out / "best.pt")["state"]
        report = {**metrics, "best_step": best["best_step"], "valid_recall@50": best["best_metric"]}
        write_text(out / "test_metrics.json", json.dumps(report, indent=2) + "\n")
    return metrics
