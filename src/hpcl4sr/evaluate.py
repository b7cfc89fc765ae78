"""Evaluate a model on a split: exact chunked top-k over all items, the K-interest merge, the metrics.

The pure pieces live in `retrieval` (the exact top-k and the merge, behind each model's `rank`) and
`metrics` (`rank_metrics`, `batch_metric_values`); this module feeds them a model and a dataset.

Under torchrun the users are sharded over the ranks in whole evaluation batches (so every batch is
computed exactly as one process computes it) and the per-user metrics gathered; means are taken with
`math.fsum`, which is exact whatever the order, so sharded metrics equal single-process ones bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.distributed import ProcessGroup, current_group
from hpcl4sr.metrics import batch_metric_values
from hpcl4sr.models.base import SequentialRecommender

CUTOFFS = (20, 50)


@torch.no_grad()
def user_metrics(
    model: SequentialRecommender,
    dataset: SequenceDataset,
    split: str,
    batch_size: int = 1024,
    cutoffs: Sequence[int] = CUTOFFS,
    filter_history: bool = False,
    users: np.ndarray | None = None,
    progress: bool = False,
    group: ProcessGroup | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metrics (float64 arrays keyed like `recall@20`) of this rank's share of the users.

    The users are cut into batches of `batch_size`; rank r of `group` takes batches r, r + world, ...
    """
    group = group or current_group()
    was_training = model.training
    model.eval()
    device = model.device
    users = dataset.eval_users(split) if users is None else users
    starts = range(group.rank * batch_size, len(users), group.world * batch_size)
    mine = np.concatenate([users[start : start + batch_size] for start in starts] or [users[:0]])
    values: dict[str, list[torch.Tensor]] = {}
    batches = dataset.eval_batches(split, batch_size, model.max_len, users=mine)
    for batch in tqdm(batches, total=len(starts), desc=f"eval {split}", disable=not progress, leave=False):
        batch = batch.to(device)
        exclude = batch.history if filter_history else None
        ranked, _, _ = model.rank(batch, max(cutoffs), exclude=exclude)
        for key, value in batch_metric_values(ranked.cpu(), batch.targets.cpu(), cutoffs).items():
            values.setdefault(key, []).append(value)
    model.train(was_training)
    return {key: torch.cat(parts).numpy() for key, parts in values.items()}


def evaluate_model(
    model: SequentialRecommender,
    dataset: SequenceDataset,
    split: str,
    batch_size: int = 1024,
    cutoffs: Sequence[int] = CUTOFFS,
    filter_history: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Mean metrics over the split's users, as fractions, keyed like `recall@20` and `ndcg_std@50`.

    Called on every rank under torchrun; every rank gets the same (whole-split) result.
    """
    group = current_group()
    mine = user_metrics(model, dataset, split, batch_size, cutoffs, filter_history,
                        progress=progress and group.is_main, group=group)
    shards = group.gather(mine)
    count = sum(len(next(iter(shard.values()), ())) for shard in shards)
    keys = sorted({key for shard in shards for key in shard})
    return {key: math.fsum(np.concatenate([shard[key] for shard in shards if key in shard])) / max(count, 1)
            for key in keys}
