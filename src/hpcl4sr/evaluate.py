"""Evaluate a model on a split: exact chunked top-k over all items, the K-interest merge, the metrics.

The pure pieces (per-user `rank_metrics`, `topk_multi_interest`, `batch_metric_sums`) live in
`evaluate_core` and are re-exported here; this module feeds them a model and a dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.evaluate_core import batch_metric_sums, rank_metrics, topk_multi_interest
from hpcl4sr.models.base import SequentialRecommender

__all__ = ["batch_metric_sums", "evaluate_model", "metric_sums", "rank_metrics", "topk_multi_interest"]

CUTOFFS = (20, 50)


@torch.no_grad()
def metric_sums(
    model: SequentialRecommender,
    dataset: SequenceDataset,
    split: str,
    max_len: int,
    batch_size: int = 1024,
    cutoffs: Sequence[int] = CUTOFFS,
    filter_history: bool = False,
    users: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], int]:
    """Summed metrics and the user count; sums (not means) so that shards add up exactly."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    item_table = model.item_embeddings()
    users = dataset.eval_users(split) if users is None else users
    totals: dict[str, float] = {}
    batches = dataset.eval_batches(split, batch_size, max_len, users=users)
    total_batches = -(-len(users) // batch_size)
    for batch in tqdm(batches, total=total_batches, desc=f"eval {split}", disable=not progress, leave=False):
        batch = batch.to(device)
        exclude = batch.history if filter_history else None
        ranked, _, _ = topk_multi_interest(model.interests(batch), item_table, max(cutoffs), exclude=exclude)
        for key, value in batch_metric_sums(ranked.cpu(), batch.targets.cpu(), cutoffs).items():
            totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    return totals, len(users)


def evaluate_model(
    model: SequentialRecommender,
    dataset: SequenceDataset,
    split: str,
    max_len: int,
    batch_size: int = 1024,
    cutoffs: Sequence[int] = CUTOFFS,
    filter_history: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Mean metrics over the split's users, as fractions, keyed like `recall@20` and `ndcg_std@50`."""
    totals, count = metric_sums(
        model, dataset, split, max_len, batch_size, cutoffs, filter_history, progress=progress
    )
    return {key: value / max(count, 1) for key, value in sorted(totals.items())}
