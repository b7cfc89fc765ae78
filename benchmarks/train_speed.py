"""Training iterations per second of every registered model, and the share of a step spent sampling.

Prints one JSON object: {"it_per_s": {model: value}, "sampling_share": {model: value}, ...}.
By default it prepares real Ta-Feng from ../shared/data; --synthetic-tmall measures on a synthetic log
with Tmall-Buy's catalogue (311,746 items) instead, and --data DIR on any prepared directory.

    python benchmarks/train_speed.py [--data DIR | --synthetic-tmall [--users 100000] [--items 311746]]
        [--steps 300] [--batch-size 128] [--max-len L] [--models a,b] [--device cpu|cuda]
        [--optimizer adam|lazy_adam] [--precision fp32|bf16] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import TMALL_ITEMS, dataset_dir, synthetic_tmall_dir

from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.models import MODELS
from hpcl4sr.run import build_model, config_for_run, resolve_device
from hpcl4sr.train import make_optimizer


def measure(name: str, dataset: SequenceDataset, steps: int, device: torch.device, max_len: int,
            train: dict[str, Any], warmup: int = 20, model: dict[str, Any] | None = None) -> tuple[float, float]:
    """(iterations per second, fraction of the step spent drawing the batch) after `warmup` steps.

    `train` holds `train.*` settings: batch_size, optimizer, precision (fp32 | bf16) and compile; `model`
    the `model.*` settings that differ from the model's defaults (e.g. repeat).
    """
    config = config_for_run(name, [{"train": train, "model": model or {}}])
    batch_size = config.train.batch_size
    torch.manual_seed(0)
    model = build_model(config, dataset, max_len).to(device)
    optimizer = make_optimizer(model, config.train)
    step_model = torch.compile(model) if config.train.compile else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.train.precision == "bf16"
                else contextlib.nullcontext())
    sampler = TrainSampler(dataset, batch_size, max_len, config.data.min_history, seed=0)
    sampling = 0.0
    for step in range(steps + warmup):
        if step == warmup:  # warm-up done (and compiled, with --compile): start the clocks
            synchronize(device)
            started, sampling = time.perf_counter(), 0.0
        tick = time.perf_counter()
        batch = sampler.sample().to(device)
        sampling += time.perf_counter() - tick
        with autocast:
            loss = step_model(batch)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    return steps / elapsed, sampling / elapsed


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so the clock measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="prepared dataset directory (default: Ta-Feng from ../shared)")
    parser.add_argument("--synthetic-tmall", action="store_true", help="a synthetic log with Tmall's catalogue")
    parser.add_argument("--users", type=int, default=100_000, help="users of the --synthetic-tmall log")
    parser.add_argument("--items", type=int, default=TMALL_ITEMS, help="catalogue of the --synthetic-tmall log")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=0, help="history length (default: the dataset's)")
    parser.add_argument("--models", default=",".join(sorted(name for name, cls in MODELS.items() if not cls.fitted)))
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lazy_adam"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the first steps compile)")
    parser.add_argument("--repeat", default="history", choices=("none", "history"),
                        help="model.repeat: history (the default) or none (the published models)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.synthetic_tmall:
            data = synthetic_tmall_dir(Path(scratch), args.users, args.items)
        else:
            data = dataset_dir(args.data, Path(scratch), parser)
        dataset = SequenceDataset(data)
        device = resolve_device(args.device)
        max_len = args.max_len or int(dataset.meta["max_len"])
        speeds, shares = {}, {}
        train = {"batch_size": args.batch_size, "optimizer": args.optimizer, "precision": args.precision,
                 "compile": args.compile}
        for name in args.models.split(","):
            speeds[name], shares[name] = measure(name, dataset, args.steps, device, max_len, train,
                                                 model={"repeat": args.repeat})
    print(json.dumps({
        "dataset": "synthetic-tmall" if args.synthetic_tmall else dataset.meta["source"],
        "items": dataset.n_items,
        "device": str(device),
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "precision": args.precision,
        "compile": args.compile,
        "repeat": args.repeat,
        "max_len": max_len,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "it_per_s": {name: round(value, 1) for name, value in speeds.items()},
        "sampling_share": {name: round(value, 3) for name, value in shares.items()},
    }))


if __name__ == "__main__":
    main()
