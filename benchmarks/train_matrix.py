"""Training iterations per second for models x batch sizes x modes (fp32, bf16, compile), in one process.

Prints one JSON object with a row per measurement: {"model", "batch_size", "mode", "it_per_s",
"sampling_share"} (or "error" when a mode fails, e.g. torch.compile without a working compiler), and the
device, dataset and steps. benchmarks/gpu_check.sh runs it on a GPU at batch 128 and 1024.

    python benchmarks/train_matrix.py --data DIR [--models comirec-sa,hpcl4sr] [--batch-sizes 128,1024]
        [--modes fp32,bf16,compile] [--steps 200] [--warmup 20] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from train_speed import measure

from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.run import resolve_device

MODES = {"fp32": {"precision": "fp32", "compile": False}, "bf16": {"precision": "bf16", "compile": False},
         "compile": {"precision": "fp32", "compile": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    parser.add_argument("--models", default="comirec-sa,hpcl4sr")
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation happens there)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(MODES)})")

    dataset = SequenceDataset(args.data)
    device = resolve_device(args.device)
    max_len = int(dataset.meta["max_len"])
    rows = []
    for name in args.models.split(","):
        for batch_size in (int(size) for size in args.batch_sizes.split(",")):
            for mode in modes:
                row = {"model": name, "batch_size": batch_size, "mode": mode}
                try:
                    speed, share = measure(name, dataset, args.steps, device, max_len,
                                           {"batch_size": batch_size, **MODES[mode]}, warmup=args.warmup)
                    row.update(it_per_s=round(speed, 1), sampling_share=round(share, 3))
                except Exception as error:  # noqa: BLE001 - one failing mode must not lose the other figures
                    row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                rows.append(row)
                torch._dynamo.reset()  # each compiled model starts from a clean cache
    print(json.dumps({"dataset": dataset.meta["source"], "items": dataset.n_items, "device": str(device),
                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                      "max_len": max_len, "steps": args.steps, "warmup": args.warmup,
                      "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
