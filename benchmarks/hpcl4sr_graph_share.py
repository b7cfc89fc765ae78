"""What share of an HPCL4SR training step the category graph and GCN take.

The diffused matrix A = sum_i theta_i A2^i is computed once when the model is built; each step then runs
the GCN (one dense A @ H per layer, forward and backward). This prints one JSON object with the build
time, the full step time and the GCN's part of it, on Ta-Feng from ../shared/data (or --data DIR).

    python benchmarks/hpcl4sr_graph_share.py [--data DIR] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import dataset_dir

from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.run import build_model, config_for_run
from hpcl4sr.train import make_optimizer


def per_call_ms(work, repeats: int) -> float:
    for _ in range(5):
        work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return 1000 * (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="prepared dataset directory (default: Ta-Feng from ../shared)")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = dataset_dir(args.data, Path(scratch), parser)
        dataset = SequenceDataset(data)
        config = config_for_run("hpcl4sr", [])
        max_len = int(dataset.meta["max_len"])
        torch.manual_seed(0)
        started = time.perf_counter()
        model = build_model(config, dataset, max_len)
        build_s = time.perf_counter() - started
        optimizer = make_optimizer(model, config.train)
        sampler = TrainSampler(dataset, 128, max_len, config.data.min_history, seed=0)

        def step() -> None:
            loss = model.loss(sampler.sample())["total"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def gcn() -> None:
            model.category_table().sum().backward()

        step_ms = per_call_ms(step, args.steps)
        gcn_ms = per_call_ms(gcn, args.steps)
    print(json.dumps({
        "categories": dataset.n_categories,
        "threads": torch.get_num_threads(),
        "model_build_s": round(build_s, 2),
        "step_ms": round(step_ms, 2),
        "gcn_forward_backward_ms": round(gcn_ms, 2),
        "gcn_share_of_step": round(gcn_ms / step_ms, 3),
    }))


if __name__ == "__main__":
    main()
