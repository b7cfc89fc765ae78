"""Where an HPCL4SR training step's time goes, part by part, forward and backward together.

Runs the profiler (torch.profiler, CPU) over `--steps` training steps at batch 128 on a prepared dataset.
Each part of the model is labelled by wrapping its method; a backward op is credited to the part whose
forward op created it (the autograd sequence number links the two), so "routing" below includes the
routing's share of `loss.backward()`. Time no part claims (the hard readout, the loss sum, autograd's own
bookkeeping) is "other"; the optimizer step is counted as forward. Prints one JSON object: `step_ms` (timed
without the profiler), and per part its forward and backward milliseconds per step and its share of the
profiled step (the profiler adds a little to small ops).

    python benchmarks/hpcl4sr_profile.py [--data DIR] [--steps 50] [--threads N] [--set model.key=value]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import dataset_dir
from torch.profiler import ProfilerActivity, profile, record_function

import hpcl4sr.models.hpcl4sr as hpcl4sr_module
from hpcl4sr.config import parse_assignments
from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.run import build_model, config_for_run
from hpcl4sr.train import make_optimizer

LABEL_PREFIX = "part: "


def labelled(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` inside a profiler range named after `label`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(LABEL_PREFIX + label):
            return function(*args, **kwargs)

    return wrapper


def label_parts(model: torch.nn.Module) -> None:
    """Wrap each part of an HPCL4SR model (those its config enables) in a labelled profiler range."""
    parts = {
        "compute_category_table": "graph + GCN (eq. 1-4)",
        "category_rows": "graph + GCN (eq. 1-4)",
        "high_level": "high-level pooling (eq. 5-6)",
        "low_level": "item embeddings + L x L self-attention (eq. 7-9)",
        "fuse": "fusion (eq. 13)",
        "class_loss": "category classifier (eq. 11-12)",
        "recommendation_loss": "sampled softmax (eq. 19)",
    }
    for method, label in parts.items():
        if hasattr(model, method):  # category_rows: from issue 16 on (the profile also runs on older code)
            setattr(model, method, labelled(label, getattr(model, method)))
    if hasattr(model, "routing"):
        model.routing.forward = labelled("capsule routing (eq. 10)", model.routing.forward)
    hpcl4sr_module.angular_contrastive_loss = labelled("contrastive loss (eq. 15-17)",
                                                       hpcl4sr_module.angular_contrastive_loss)


def innermost_label(event: Any) -> str | None:
    while event is not None:
        if event.name.startswith(LABEL_PREFIX):
            return event.name[len(LABEL_PREFIX):]
        event = event.cpu_parent
    return None


def breakdown(events: list[Any]) -> dict[str, dict[str, float]]:
    """Microseconds per part and phase (forward / backward): forward ops by their enclosing range, backward
    nodes by the forward op that recorded them."""
    forward_label: dict[int, str] = {}
    for event in events:
        if event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            label = innermost_label(event)
            if label is not None:
                forward_label.setdefault(event.sequence_nr, label)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for event in events:
        if event.cpu_parent is not None:
            continue  # counted in its top-level ancestor
        if event.name.startswith("autograd::engine::evaluate_function"):
            totals[forward_label.get(event.sequence_nr, "other")]["backward"] += event.cpu_time_total
        elif event.name.startswith("Optimizer.step"):
            totals["optimizer step (fused Adam)"]["forward"] += event.cpu_time_total
        elif event.name.startswith(LABEL_PREFIX):
            for label, micros in forward_times(event).items():
                totals[label]["forward"] += micros
        else:
            totals["other"]["forward"] += event.cpu_time_total
    return totals


def forward_times(event: Any) -> dict[str, float]:
    """A labelled range's time, nested ranges' time credited to them rather than to it."""
    label = event.name[len(LABEL_PREFIX):]
    times: dict[str, float] = defaultdict(float)
    times[label] += event.cpu_time_total
    for child in event.cpu_children:
        if child.name.startswith(LABEL_PREFIX):
            times[label] -= child.cpu_time_total
            for inner, micros in forward_times(child).items():
                times[inner] += micros
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="prepared dataset directory (default: Ta-Feng from ../shared)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        dataset = SequenceDataset(dataset_dir(args.data, Path(scratch), parser))
    config = config_for_run("hpcl4sr", [{"train": {"batch_size": args.batch_size}}, parse_assignments(args.set)])
    max_len = int(dataset.meta["max_len"])
    torch.manual_seed(0)
    model = build_model(config, dataset, max_len)
    optimizer = make_optimizer(model, config.train)
    sampler = TrainSampler(dataset, args.batch_size, max_len, config.data.min_history, seed=0)
    batches = [sampler.sample() for _ in range(2 * args.steps + 10)]

    def step(batch: Any) -> None:
        loss = model.loss(batch)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:10]:
        step(batch)
    started = time.perf_counter()
    for batch in batches[10 : 10 + args.steps]:
        step(batch)
    step_ms = 1000 * (time.perf_counter() - started) / args.steps
    label_parts(model)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for batch in batches[10 + args.steps :]:
            step(batch)
    totals = breakdown(list(profiler.events()))
    profiled = sum(sum(phases.values()) for phases in totals.values())
    parts = {label: {"forward_ms": round(phases["forward"] / 1000 / args.steps, 2),
                     "backward_ms": round(phases["backward"] / 1000 / args.steps, 2),
                     "share": round(sum(phases.values()) / profiled, 3)}
             for label, phases in sorted(totals.items(), key=lambda item: -sum(item[1].values()))}
    print(json.dumps({
        "dataset": dataset.meta["source"], "batch_size": args.batch_size, "max_len": max_len,
        "threads": torch.get_num_threads(), "steps": args.steps, "step_ms": round(step_ms, 2),
        "profiled_step_ms": round(profiled / 1000 / args.steps, 2), "parts": parts,
    }, indent=1))


if __name__ == "__main__":
    main()
