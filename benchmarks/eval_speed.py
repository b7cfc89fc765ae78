"""Time exact top-n retrieval over K interests at Tmall's scale, beside a plain matmul of the same shape.

Runs `topk_multi_interest` (chunked exact search, running top-n per interest, K-interest merge) on a seeded
random item table [items+1, dim] (row 0 padding) for `--users` random users of `--interests` interests,
`--batch-size` users at a time as the evaluator does. Prints one JSON object: `users_per_s`, `gflops` (the
scoring matmul's 2*users*K*items*dim FLOPs over the search's wall time), `mm_gflops` (a plain torch.mm
[batch*K, dim] x [dim, items] over the same number of batches, timed alone), `mm_share` = gflops / mm_gflops,
`peak_rss_mb` (and `peak_cuda_mb` on CUDA, both taken before the mm baseline), with the shape, device,
threads and chunk size.

    python benchmarks/eval_speed.py [--users 8192] [--batch-size 1024] [--items 311746] [--interests 4]
        [--dim 64] [--n 50] [--device auto] [--chunk-items N]
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import time
from collections.abc import Callable

import torch

from hpcl4sr.retrieval import topk_multi_interest


def timed(run_batch: Callable[[int, int], object], users: int, batch_size: int, device: torch.device) -> float:
    """Seconds to call ``run_batch(start, stop)`` over every batch of users, after one warm-up batch."""
    run_batch(0, min(batch_size, users))
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, users, batch_size):
        run_batch(start, min(start + batch_size, users))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    default_chunk = inspect.signature(topk_multi_interest).parameters["chunk_items"].default
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8_192)
    parser.add_argument("--batch-size", type=int, default=1_024)
    parser.add_argument("--items", type=int, default=311_746)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--chunk-items", type=int, default=default_chunk)
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(args.items + 1, args.dim, generator=gen).to(device)
    interests = torch.randn(args.users, args.interests, args.dim, generator=gen).to(device)

    def search(start: int, stop: int) -> None:
        topk_multi_interest(interests[start:stop], table, args.n, chunk_items=args.chunk_items)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    search_s = timed(search, args.users, args.batch_size, device)
    # Peaks are read now: the baseline's full score matrix would otherwise dominate them.
    peaks = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device.type == "cuda":
        peaks["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)

    # Preallocated, so the baseline times the multiply rather than page faults on a fresh output.
    out = torch.empty(min(args.batch_size, args.users) * args.interests * args.items, device=device)
    items_t = table[1:].T

    def matmul(start: int, stop: int) -> None:
        rows = (stop - start) * args.interests
        torch.mm(interests[start:stop].reshape(rows, -1), items_t, out=out[: rows * args.items].view(rows, -1))

    mm_s = timed(matmul, args.users, args.batch_size, device)
    flops = 2.0 * args.users * args.interests * args.items * args.dim
    print(json.dumps({
        "users_per_s": round(args.users / search_s, 1),
        "gflops": round(flops / search_s / 1e9, 1),
        "mm_gflops": round(flops / mm_s / 1e9, 1),
        "mm_share": round(mm_s / search_s, 3),
        **peaks,
        "users": args.users,
        "batch_size": args.batch_size,
        "items": args.items,
        "interests": args.interests,
        "dim": args.dim,
        "n": args.n,
        "chunk_items": args.chunk_items,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
