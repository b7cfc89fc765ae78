"""Blend a trained neural run with a fitted item-kNN run: score = model + w x item-kNN, w chosen on valid.

A check of whether a neural model adds anything to item-kNN on a log (docs/results.md, "HPCL4SR+"):
each user's score for every item is the model's own (its best interest's inner product, plus its repeat
score on history items) plus w times item-kNN's (its neighbour sums and history-count term). For every
candidate w the valid users' recall@50 is computed; the w with the best one is kept, and the test split
is then read once for three rows: the model alone (w = 0), item-kNN alone, and the blend at the chosen w.
Both runs must share one prepared dataset. Every item is scored, so this suits catalogues of up to about
a hundred thousand items (one [batch, items] matrix per score at a time).

    python scripts/blend_itemknn.py --run RUN --knn KNN_RUN [--weights 0.5,1,2,4,8,16,32] [--batch-size 512]

Prints one JSON object: the valid recall@50 of each w, the chosen w and the three test rows (fractions).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.metrics import batch_metric_values
from hpcl4sr.models.base import SequentialRecommender
from hpcl4sr.retrieval import topk_rows
from hpcl4sr.run import load_run

CUTOFFS = (20, 50)


def every_item_scores(model: SequentialRecommender, batch: Batch) -> torch.Tensor:
    """[B, N + 1] scores of every item id as the model ranks them; column 0 (padding) is 0 and never ranked
    (a -inf there would make 0 x -inf = nan in the blend)."""
    if model.fitted:  # the fitted baselines score columns in popularity order
        by_column = model.column_scores(batch.history, batch.mask)
        scores = torch.empty_like(by_column)
        scores[:, model.column_items] = by_column
    else:
        scores = torch.einsum("bkd,nd->bkn", model.interests(batch), model.item_embeddings()).amax(dim=1)
        if model.repeat_score is not None:
            history = model.repeat_score(batch.history, batch.mask)
            scores.scatter_add_(1, history.items, history.repeat)  # non-history slots add 0 to column 0
    scores[:, 0] = 0.0
    return scores


@torch.no_grad()
def blended_metrics(model: SequentialRecommender, knn: SequentialRecommender, dataset: SequenceDataset,
                    split: str, weights: list[float], batch_size: int) -> dict[float, dict[str, float]]:
    """Mean metrics of model + w x knn over the split's users for each w (math.inf: item-kNN alone). Equal
    scores go to the more popular item, as item-kNN's own ranking breaks them, so w = inf is item-kNN's run."""
    by_popularity = knn.column_items[: knn.n_items]  # every item id, most popular first
    sums: dict[float, dict[str, float]] = {weight: {} for weight in weights}
    users = 0
    batches = dataset.eval_batches(split, batch_size, model.max_len)
    n_batches = -(-len(dataset.eval_users(split)) // batch_size)
    for batch in tqdm(batches, total=n_batches, desc=f"blend {split}", leave=False):
        neural, neighbours = every_item_scores(model, batch), every_item_scores(knn, batch)
        users += len(batch.history)
        for weight in weights:
            scores = neighbours if weight == math.inf else neural + weight * neighbours
            ranked = by_popularity[topk_rows(scores[:, by_popularity], max(CUTOFFS))[1]]
            for key, values in batch_metric_values(ranked, batch.targets, CUTOFFS).items():
                sums[weight][key] = sums[weight].get(key, 0.0) + float(values.sum())
    return {weight: {key: value / users for key, value in metrics.items()} for weight, metrics in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a trained neural run directory")
    parser.add_argument("--knn", type=Path, required=True, help="a fitted itemknn run on the same dataset")
    parser.add_argument("--weights", default="0.25,0.5,1,2,4,8,16,32", help="candidate w, comma-separated")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    if not weights or any(w < 0 for w in weights):
        parser.error("--weights: expected comma-separated numbers >= 0")
    torch.manual_seed(0)
    try:
        _, dataset, model = load_run(args.run, device="cpu")
        _, knn_dataset, knn = load_run(args.knn, device="cpu")
    except UserError as err:  # a missing or damaged run: one line, as the CLI's errors
        parser.exit(2, f"error: {err}\n")
    if model.fitted or not knn.fitted or knn.name != "itemknn":
        parser.error(f"--run must be a trained neural run and --knn an itemknn run, got {model.name} and {knn.name}")
    if not np.array_equal(dataset.split_users["test"], knn_dataset.split_users["test"]) or model.max_len != knn.max_len:
        parser.error(f"--knn: {args.knn} was fitted on another dataset or history length than {args.run}")
    valid = blended_metrics(model, knn, dataset, "valid", [0.0, *weights, math.inf], args.batch_size)
    chosen = max(weights, key=lambda w: valid[w]["recall@50"])  # the first of equals: the smallest w
    test = blended_metrics(model, knn, dataset, "test", [0.0, chosen, math.inf], args.batch_size)
    print(json.dumps({
        "valid_recall@50": {("itemknn" if w == math.inf else str(w)): v["recall@50"] for w, v in valid.items()},
        "chosen_weight": chosen,
        "test": {"model": test[0.0], "blend": test[chosen], "itemknn": test[math.inf]},
    }, indent=1))


if __name__ == "__main__":
    main()
