"""What denormal floats cost a trained model's CPU training step, and which operations make them.

Loads a checkpoint of a trained run and times `--steps` forward-and-backward passes at its batch size
with denormals kept and flushed to zero (`torch.set_flush_denormal`), alternating `--rounds` times; the
weights stay the checkpoint's, so both arms do the same arithmetic. Then counts, over one step, the
denormal values each operation produced. A fresh model makes few: pass a run trained for a while.
Prints one JSON object.

    python benchmarks/denormals.py --run runs/experiments/table2/runs/tafeng/hpcl4sr/s1 [--checkpoint last.pt]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from common import git_commit
from torch.utils._python_dispatch import TorchDispatchMode

from hpcl4sr.data.dataset import TrainSampler
from hpcl4sr.run import load_run

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def denormal_count(tensor: torch.Tensor) -> int:
    return int(((tensor != 0) & (tensor.abs() < SMALLEST_NORMAL)).sum())


class DenormalCounter(TorchDispatchMode):
    """Counts the denormal values in every floating-point output, per operation."""

    def __init__(self) -> None:
        super().__init__()
        self.denormal: Counter[str] = Counter()
        self.values: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and denormal_count(tensor):
                self.denormal[str(func)] += denormal_count(tensor)
                self.values[str(func)] += tensor.numel()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a trained run directory")
    parser.add_argument("--checkpoint", default="last.pt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config, dataset, model = load_run(args.run, args.checkpoint, device="cpu")
    model.train()
    sampler = TrainSampler(dataset, config.train.batch_size, config.data.max_len, config.data.min_history, seed=0)
    batches = [sampler.sample() for _ in range(args.steps + 3)]

    def step(batch: Any) -> None:
        model.zero_grad(set_to_none=True)
        model.loss(batch)["total"].backward()

    timings: dict[str, list[float]] = {"kept": [], "flushed": []}
    for _ in range(args.rounds):
        for arm in timings:
            torch.set_flush_denormal(arm == "flushed")
            for batch in batches[:3]:  # warm-up
                step(batch)
            start = time.perf_counter()
            for batch in batches[3:]:
                step(batch)
            timings[arm].append(round(1000 * (time.perf_counter() - start) / args.steps, 1))
    torch.set_flush_denormal(False)
    counter = DenormalCounter()
    with counter:
        step(batches[0])
    print(json.dumps({
        "run": str(args.run), "checkpoint": args.checkpoint, "commit": git_commit(), "threads": args.threads,
        "steps": args.steps, "step_ms_denormals_kept": timings["kept"], "step_ms_denormals_flushed": timings["flushed"],
        "denormal_values_by_op": {op: {"denormal": count, "of": counter.values[op]}
                                  for op, count in counter.denormal.most_common(5)},
    }, indent=2))


if __name__ == "__main__":
    main()
