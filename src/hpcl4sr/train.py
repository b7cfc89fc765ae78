"""The one trainer every model uses: a small loop, early stopping, checkpoints, exact resume.

A run directory holds:
  config.yaml        the resolved configuration (model name, model / train / data sections)
  metrics.jsonl      one JSON object per logged training step and per validation
  last.pt, best.pt   checkpoint dicts (model, optimizer, step, RNG and sampler states, config, version),
                     loadable with torch.load(weights_only=True); best.pt is the best valid recall@50
  test_metrics.json  the best checkpoint's test metrics, fractions keyed like "recall@20"

A fitted model (`model.fitted`: pop, repeat, itemknn) is not trained: `_fit` calls its `fit` hook, which
tries its candidate settings on the valid users (one valid record each in metrics.jsonl, at step 0), and
writes the same run directory, best.pt = last.pt holding the chosen model and config.yaml its settings.

Resuming restores the model, the optimizer, the sampler's and torch's random states and the early
stopping counters from last.pt, so an interrupted run continues exactly as an uninterrupted one would.

Under `torchrun --nproc_per_node=N` the same function runs on every rank: DistributedDataParallel
averages the gradients of N batches of `train.batch_size` (so N x batch_size per step), each rank draws
its own batches and negatives, validation is sharded over the ranks, and rank 0 alone writes the run
directory. Checkpoints keep every rank's random states, so a distributed run resumes exactly on the
same number of processes, and their weights load into a single process like any other.

The step never waits for the device except at logging steps (`.item()` on the losses) and validations.
Those are also where divergence is caught: a NaN or infinite loss term, or non-finite weights before a
checkpoint would be written, stop the run with one line, and the last checkpoint on disk stays the last
good one. One process trains a run directory at a time (an advisory lock on RUN/.lock), a resume is checked
against last.pt before anything is written (docs/design-notes.md, "Reliability"), and a new run that fails
before its first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from hpcl4sr import __version__, distributed
from hpcl4sr.atomic import check_writable_parent, exclusive_lock, save_checkpoint, write_text
from hpcl4sr.config import RESUME_MAY_CHANGE, RunConfig, TrainConfig, apply_overrides
from hpcl4sr.data.dataset import TrainSampler
from hpcl4sr.errors import UserError
from hpcl4sr.evaluate import evaluate_model
from hpcl4sr.models.base import SequentialRecommender, model_class
from hpcl4sr.run import (
    build_model,
    config_for_run,
    fit_weights,
    load_checkpoint,
    load_run,
    open_dataset,
    resolve_device,
    run_config_for_disk,
)

EARLY_STOP_METRIC = "recall@50"


def make_optimizer(model: SequentialRecommender, settings: TrainConfig) -> torch.optim.Optimizer | LazyAdam:
    """Adam over every parameter, or `LazyAdam` (`train.optimizer: lazy_adam`), which switches the model's
    item table to sparse gradients."""
    if settings.optimizer == "lazy_adam":
        if model.config.loss == "full":
            raise UserError("train.optimizer: lazy_adam needs model.loss: sampled (the full softmax touches "
                            "every item row each step, so lazy_adam would be adam at a higher cost)")
        model.item_embedding.sparse = True  # its lookups, and the sampled softmax's, yield sparse gradients
        return LazyAdam(model, settings.lr)
    # Fused Adam updates all parameters in one kernel: about 10x faster than the per-tensor loop on CPU.
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)


class LazyAdam:
    """SparseAdam on the item table (only the rows a step looked up move), fused Adam on everything else.

    Dense Adam reads and writes the whole table, its gradient and both moments every step: at Tmall's
    311,746 items that is most of a step, whatever the model. Here a row's moments and weights change
    only in steps that touch it; the bias correction still counts every step (torch's SparseAdam).
    """

    def __init__(self, model: SequentialRecommender, lr: float) -> None:
        table = model.item_embedding.weight
        rest = [parameter for parameter in model.parameters() if parameter is not table]
        self.sparse = torch.optim.SparseAdam([table], lr=lr)
        self.dense = torch.optim.Adam(rest, lr=lr, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.sparse.step()
        self.dense.step()

    def state_dict(self) -> dict[str, Any]:
        return {"sparse": self.sparse.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"sparse", "dense"}:
            raise UserError("the checkpoint's optimizer state is not lazy_adam's")
        self.sparse.load_state_dict(state["sparse"])
        self.dense.load_state_dict(state["dense"])


class MetricsLog:
    """metrics.jsonl, one JSON object a line; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(errors="replace").splitlines() if _step(line) <= resume_step]
            write_text(path, "".join(f"{line}\n" for line in kept))
        elif path.exists():
            path.unlink()
        self.file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON: no bare NaN tokens
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _step(line: str) -> float:
    """The step of a metrics.jsonl line; a line a kill cut short counts as past every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


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
        checkpoint = _check_resume(config, out, group.world) if resume else _check_new_run(out)
        created = not out.exists()
        group.barrier()  # every rank has checked the directory before rank 0 writes into it
        with run_lock(out, group):
            try:
                if group.is_main:
                    if not resume:
                        _check_new_run(out)  # again under the lock: another process may have started since
                    write_text(out / "config.yaml", yaml.safe_dump(run_config_for_disk(config, out), sort_keys=False))
                group.barrier()
                if model_class(config.model_name).fitted:
                    _fit(config, out, resume, group, device)
                else:
                    _train_loop(config, out, checkpoint, progress, group, device)
                group.barrier()  # best.pt is complete before any rank reads it
                return write_test_metrics(out, device, group)
            except BaseException:
                if group.is_main and not resume and not (out / "last.pt").exists():
                    _remove_unfinished(out, created)
                raise
    finally:
        if joined_here:
            distributed.leave(synchronise=sys.exc_info()[0] is None)


def _check_new_run(out: Path) -> None:
    """A new run goes into a new or empty directory only (never over a dataset or a user's files)."""
    check_writable_parent(out, "--out")
    if not out.is_dir():
        return
    present = sorted(path.name for path in out.iterdir() if path.name != ".lock")
    if "last.pt" in present:
        raise UserError(f"{out}: already holds a run; continue it with --resume {out} or choose another --out")
    if present:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise UserError(f"--out {out}: not empty (holds {shown}); a new run needs a new or empty directory")


def _check_resume(config: RunConfig, out: Path, world: int) -> dict[str, Any]:
    """last.pt of `out`, checked against `config` before anything is written: a resume may change how long
    and how fast training goes on (RESUME_MAY_CHANGE), never the model, the data or the optimisation."""
    path = out / "last.pt"
    if not path.is_file():
        raise UserError(f"--resume {out}: no last.pt (the run never reached its first validation); "
                        "start it again with --out")
    checkpoint = load_checkpoint(path)
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        raise UserError(f"{path}: records no config; not a checkpoint written by `hpcl4sr train`")
    requested = config.to_dict()
    if saved.get("model_name") != requested["model_name"]:
        raise UserError(f"--resume {out}: the run trains {saved.get('model_name')!r}, not "
                        f"{requested['model_name']!r}; a resume cannot change the model")
    for section in ("model", "data", "train"):
        for key, before in (saved.get(section) or {}).items():
            after = requested[section].get(key, before)
            if section == "data" and _same_data(key, before, after):
                continue
            if after != before and not (section == "train" and key in RESUME_MAY_CHANGE):
                raise UserError(f"--resume {out}: {section}.{key} is {before!r} in the run, {after!r} requested; "
                                f"a resume may change only train.{{{','.join(sorted(RESUME_MAY_CHANGE))}}}")
    ranks = len(checkpoint.get("ranks", [None]))
    if ranks != world:
        raise UserError(f"{path} was written by {ranks} process(es); resume it with as many "
                        f"(torchrun --nproc_per_node={ranks}) to continue exactly")
    return checkpoint


def _same_data(key: str, before: Any, after: Any) -> bool:
    """Whether a data setting of a resume names what the checkpoint trained on, though written differently.

    config.yaml records the effective max_len where the checkpoint may hold 0 ("the dataset's"), and a run
    moved with its dataset finds it at another path: accepted when the recorded one is gone (the weights'
    shapes are still checked against the model when they are loaded).
    """
    if key == "max_len":
        return before == 0 or after == before
    if key == "path":
        return after == before or not Path(str(before)).is_dir()
    return False


@contextlib.contextmanager
def run_lock(out: Path, group: distributed.ProcessGroup = distributed.SINGLE_PROCESS) -> Iterator[None]:
    """Hold RUN/.lock (rank 0 of a distributed run) so that a second process cannot train into `out`."""
    if not group.is_main:
        yield
        return
    with exclusive_lock(out / ".lock", wait=False) as holder:
        if holder is not None:
            who = f"process {holder}" if holder else "another process"
            raise UserError(f"{out}: {who} is training this run; wait for it to finish or choose another --out")
        yield


def _remove_unfinished(out: Path, created: bool) -> None:
    """What a new run wrote before failing, when it never reached a checkpoint (nothing worth keeping)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir():  # the directory was empty when the run began: everything in it is the run's
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != ".lock":
            path.unlink(missing_ok=True)
    (out / ".lock").unlink(missing_ok=True)


def _non_finite(values: dict[str, float]) -> str | None:
    """The first NaN or infinite loss term (a named term before the total), as "'cl' is nan"."""
    for name in sorted(values, key=lambda name: name == "total"):
        if not math.isfinite(values[name]):
            return f"loss term {name!r} is {values[name]}"
    return None


def _finite_weights(model: SequentialRecommender) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point()]).all())


def _train_loop(config: RunConfig, out: Path, checkpoint: dict[str, Any] | None, progress: bool,
                group: distributed.ProcessGroup, device: torch.device) -> None:
    settings = config.train
    dataset, max_len = open_dataset(config)
    torch.manual_seed(settings.seed)  # the initialisation and the in-model draws (negatives); numpy samples batches
    model = build_model(config, dataset, max_len).to(device)
    if group.rank:  # same initial weights on every rank, different negatives
        torch.manual_seed(settings.seed + 1_000_003 * group.rank)
    if settings.optimizer == "lazy_adam" and group.world > 1:
        raise UserError("train.optimizer: lazy_adam runs in one process; use train.optimizer: adam under torchrun")
    optimizer = make_optimizer(model, settings)
    sampler = TrainSampler(dataset, settings.batch_size, max_len, config.data.min_history, settings.seed,
                           stream=group.rank)
    state = {"step": 0, "best_metric": -1.0, "best_step": 0, "bad_evals": 0, "finished": False, "seconds": 0.0}

    resume = checkpoint is not None
    if resume:
        fit_weights(model, checkpoint, out / "last.pt")
        optimizer.load_state_dict(checkpoint["optimizer"])
        ranks = checkpoint.get("ranks", [{"sampler": checkpoint["sampler"], "rng": checkpoint["rng"]}])
        sampler.load_state_dict(ranks[group.rank]["sampler"])
        _restore_rng(ranks[group.rank]["rng"])
        state = checkpoint["state"]
        # A resumed run may be given more patience (or less): the stopping decision follows the new value.
        state["finished"] = state["bad_evals"] >= settings.patience
    log = MetricsLog(out / "metrics.jsonl", state["step"] if resume else None) if group.is_main else None

    def stop_if_diverged(step: int, problem: str | None) -> None:
        """Stop when any rank found a problem (a collective call, at logging steps and before checkpoints)."""
        problem = next((found for found in group.gather(problem) if found), None)
        if problem is not None:
            kept = (f"last good checkpoint kept at {out / 'last.pt'}" if (out / "last.pt").exists()
                    else "no checkpoint was written yet")
            raise UserError(f"step {step}: {problem}; {kept} (a lower train.lr may help)")

    def save(name: str) -> None:
        """Write a checkpoint from rank 0, with every rank's random states; a collective call.

        Weights that are no longer finite are never saved: the run stops instead.
        """
        stop_if_diverged(state["step"], None if _finite_weights(model) else "the weights are NaN or infinite")
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
        # Buffers that training changes (a schedule, `begin_step`) are set from the step on every rank alike,
        # so there is nothing to broadcast each step.
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
            model.begin_step(state["step"])
            with autocast:
                losses = step_model(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            state["step"] += 1
            step = state["step"]
            bar.update(1)
            validate_now = step % settings.eval_every == 0 or step == settings.max_iters
            if step % settings.log_every == 0 or validate_now:  # the only steps that wait for the device
                values = {name: value.item() for name, value in losses.items()}
                stop_if_diverged(step, _non_finite(values))
                if step % settings.log_every == 0 and log is not None:
                    record = {name: round(value, 6) for name, value in values.items()}
                    log.write({"step": step, "split": "train", **record})
                    best = f"{state['best_metric']:.4f}" if state["best_step"] else "-"
                    bar.set_postfix(loss=f"{record['total']:.4f}", best=best)
            if validate_now:
                # Every rank gets the same metrics, so every rank takes the same stopping decision.
                metrics = evaluate_model(model, dataset, "valid", settings.eval_batch_size)
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
        if not (out / "last.pt").exists():
            raise UserError("interrupted before the first validation; nothing was kept") from None
        raise UserError(f"interrupted; `hpcl4sr train --resume {out}` continues from the last validation") from None
    finally:
        bar.close()
        if log is not None:
            log.close()
    save("last.pt")


def _fit(config: RunConfig, out: Path, resume: bool, group: distributed.ProcessGroup, device: torch.device) -> None:
    """Fit a fitted model into `out`; resuming a finished fit only restores its config.yaml."""
    if group.world > 1:
        raise UserError(f"{config.model_name} is fitted in seconds by one process; run it without torchrun")
    if resume and (out / "last.pt").is_file():
        # The cell's config of a grid lists candidates; the run's own is the chosen setting.
        saved = load_checkpoint(out / "last.pt")["config"]
        chosen = config_for_run(saved["model_name"], [saved])
        write_text(out / "config.yaml", yaml.safe_dump(run_config_for_disk(chosen, out), sort_keys=False))
        return
    dataset, max_len = open_dataset(config)
    model = build_model(config, dataset, max_len).to(device)
    log = MetricsLog(out / "metrics.jsonl", None)
    started = time.perf_counter()
    scores: list[float] = []

    def select(setting: dict[str, Any]) -> float:
        metrics = evaluate_model(model, dataset, "valid", config.train.eval_batch_size)
        scores.append(metrics[EARLY_STOP_METRIC])
        log.write({"step": 0, "split": "valid", "seconds": round(time.perf_counter() - started, 1),
                   "candidate": len(scores), **{f"model.{key}": value for key, value in setting.items()}, **metrics})
        return scores[-1]

    try:
        chosen = model.fit(dataset, max_len, select)
    finally:
        log.close()
    config = dataclasses.replace(config, model=apply_overrides(config.model, "model", chosen))
    state = {"step": 0, "best_metric": max(scores), "best_step": 0, "bad_evals": 0, "finished": True,
             "seconds": time.perf_counter() - started}
    checkpoint = {"model": model.state_dict(), "state": state, "config": config.to_dict(), "chosen": chosen,
                  "version": __version__}
    save_checkpoint(checkpoint, out / "best.pt")
    save_checkpoint(checkpoint, out / "last.pt")
    write_text(out / "config.yaml", yaml.safe_dump(run_config_for_disk(config, out), sort_keys=False))


def write_test_metrics(out: Path, device: torch.device,
                       group: distributed.ProcessGroup = distributed.SINGLE_PROCESS) -> dict[str, float]:
    """Evaluate best.pt on the test split (sharded over the ranks) and write RUN/test_metrics.json."""
    config, dataset, model = load_run(out, "best.pt", str(device))
    metrics = evaluate_model(model, dataset, "test", config.train.eval_batch_size)
    if group.is_main:
        checkpoint = load_checkpoint(out / "best.pt")
        best = checkpoint["state"]
        report = {**metrics, "best_step": best["best_step"], "valid_recall@50": best["best_metric"]}
        if "chosen" in checkpoint:  # a fitted model's settings, chosen on the valid users
            report["chosen"] = checkpoint["chosen"]
        write_text(out / "test_metrics.json", json.dumps(report, indent=2) + "\n")
    return metrics
