"""Approximate item indexes against exact search on a Tmall-size catalogue: recall@50 and queries/s.

    python benchmarks/index_recall.py [--items 311746] [--queries 512] > index.json

The embeddings are SYNTHETIC (no trained Tmall model is at hand): 1,400 category centres drawn N(0, 1/d)
and each item its category's centre plus noise, which gives the clustered geometry a trained item table
has; each query user has K = 4 interests, each near a random category centre. For each index (faiss flat
inner product, HNSW at several efSearch, IVF at several nprobe) it reports, for the merged top-50 list of
the K-interest retrieval (`rank`): `recall_vs_exact`, the share of the exact top 50 the index returns (an
index that keeps this at r keeps at least r of any recall@50 the exact list scores), and queries/s (users
per second, K interests each), plus the build seconds. Timings are wall clock on this machine; JSON out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from common import git_commit

from hpcl4sr.serve.index import ExactIndex, FaissIndex

N_CATEGORIES, DIM, K, N = 1_400, 64, 4, 50


def synthetic_table(items: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, DIM**-0.5, (N_CATEGORIES, DIM)).astype(np.float32)
    category = rng.integers(0, N_CATEGORIES, items)
    table = centres[category] + rng.normal(0, 0.5 * DIM**-0.5, (items, DIM)).astype(np.float32)
    return torch.from_numpy(np.vstack([np.zeros((1, DIM), np.float32), table])), centres


def queries(centres: np.ndarray, users: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed + 1)
    picked = centres[rng.integers(0, len(centres), (users, K))]
    return torch.from_numpy(picked + rng.normal(0, 0.3 * DIM**-0.5, picked.shape).astype(np.float32))


def timed(index, interests: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    found = [index.rank(interests[i : i + batch], N)[0] for i in range(0, len(interests), batch)]
    return torch.cat(found), len(interests) / (time.perf_counter() - start)


def overlap(found: torch.Tensor, exact: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / N for a, b in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=311_746)
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="users per search call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ef-search", default="32,64,128,256")
    parser.add_argument("--nprobe", default="8,16,32,64")
    args = parser.parse_args()

    table, centres = synthetic_table(args.items, args.seed)
    interests = queries(centres, args.queries, args.seed)
    exact, exact_qps = timed(ExactIndex(table), interests, args.batch)
    results = [{"index": "exact", "recall_vs_exact": 1.0, "queries_per_s": round(exact_qps, 1)}]

    def measure(label: str, build, **setting: int) -> None:
        start = time.perf_counter()
        index = build()
        built = time.perf_counter() - start
        for name, values in setting.items():
            for value in values:
                setattr(index.index if name == "nprobe" else index.index.hnsw, name, value)
                found, qps = timed(index, interests, args.batch)
                results.append({"index": label, name: value, "recall_vs_exact": round(overlap(found, exact), 4),
                                "queries_per_s": round(qps, 1), "build_s": round(built, 1)})
                print(json.dumps(results[-1]), flush=True, file=sys.stderr)
        if not setting:
            found, qps = timed(index, interests, args.batch)
            results.append({"index": label, "recall_vs_exact": round(overlap(found, exact), 4),
                            "queries_per_s": round(qps, 1), "build_s": round(built, 1)})

    measure("faiss-flat", lambda: FaissIndex(table, "flat"))
    measure("faiss-hnsw", lambda: FaissIndex(table, "hnsw"), efSearch=[int(v) for v in args.ef_search.split(",")])
    measure("faiss-ivf", lambda: FaissIndex(table, "ivf"), nprobe=[int(v) for v in args.nprobe.split(",")])
    commit = git_commit()
    print(json.dumps({
        "benchmark": "index_recall", "embeddings": "synthetic (clustered, 1,400 categories)", "items": args.items,
        "dim": DIM, "interests": K, "n": N, "queries": args.queries, "batch": args.batch, "seed": args.seed,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_before": os.getloadavg(), "commit": commit, "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
