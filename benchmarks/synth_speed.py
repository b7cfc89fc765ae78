"""Time the synthetic generator at Tmall's scale: generate and write a 35M-row interactions table.

Prints one JSON object with `rows`, `generate_s`, `write_s` and `peak_rss_mb`.

    python benchmarks/synth_speed.py [--users 356795] [--items 311746] [--categories 1400] [--mean-length 98]
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

from common import tmall_shape_parser

from hpcl4sr.data.synthetic import synthesize, write_interactions


def main() -> None:
    args = tmall_shape_parser(__doc__).parse_args()
    started = time.perf_counter()
    frame = synthesize(args.users, args.items, args.categories, seed=0, mean_length=args.mean_length)
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        write_interactions(frame, Path(scratch) / "log.parquet")
    written = time.perf_counter()
    print(json.dumps({
        "rows": frame.height,
        "generate_s": round(generated - started, 1),
        "write_s": round(written - generated, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
