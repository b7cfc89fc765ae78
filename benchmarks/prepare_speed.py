"""Time `hpcl4sr prepare` at Tmall's scale: prepare a synthetic 35M-row log end to end.

The log (Tmall's users, items, categories and mean length) is generated and written as parquet first, which
is not measured; then a fresh child process prepares it with the parquet source's defaults, the same path
as `hpcl4sr prepare --source parquet`. Prints one JSON object with `wall_s` and `peak_rss_mb` of that
preparation alone, what it kept (`rows`, `users`, `items`, `categories`), the machine and the target.

    python benchmarks/prepare_speed.py [--users 356795] [--items 311746] [--categories 1400] [--mean-length 98]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl
from common import tmall_shape_parser

from hpcl4sr.data.prepare import prepare_from_files
from hpcl4sr.data.synthetic import synthesize, write_interactions

TARGET = {"wall_s": 90, "peak_rss_mb": 4096}  # the budget on 2 cores


def _prepare(log: Path, out: Path) -> tuple[float, float]:
    """Prepare `log` into `out` in a worker process; returns the wall time and the process's peak RSS in MB.

    The peak is VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a spawned child
    would report at least the parent's footprint at fork time (the generator's), not its own.
    """
    started = time.perf_counter()
    prepare_from_files("parquet", [log], out)
    wall = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return wall, peak_kb / 1024


def main() -> None:
    args = tmall_shape_parser(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        log, out = Path(scratch) / "log.parquet", Path(scratch) / "dataset"
        frame = synthesize(args.users, args.items, args.categories, seed=0, mean_length=args.mean_length)
        generated_rows = frame.height
        write_interactions(frame, log)
        del frame  # the table lives on disk now; the parent need not hold 1.5 GB while the child runs
        # spawn, not fork: a forked child would start with (and count) the parent's pages
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            wall, peak_mb = pool.submit(_prepare, log, out).result()
        meta = json.loads((out / "meta.json").read_text())
    print(json.dumps({
        "generated_rows": generated_rows,
        "rows": meta["interactions"],
        "users": meta["users"],
        "items": meta["items"],
        "categories": meta["categories"],
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "threads": pl.thread_pool_size(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "python": platform.python_version(),
                    "polars": pl.__version__},
        "target": TARGET,
    }))


if __name__ == "__main__":
    main()
