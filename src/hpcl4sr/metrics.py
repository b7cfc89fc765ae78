"""The protocol's metrics as pure functions: recall, hit rate and the two NDCGs of a ranked list.

`rank_metrics` is the per-user reference, written as docs/protocol.md states it; `batch_metric_values`
computes the same for a whole batch on tensors. Item id 0 is padding: a 0 in a ranked list is an empty
slot and never a hit, a 0 in a padded target tensor is not a target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

METRICS: tuple[str, ...] = ("recall", "hr", "ndcg", "ndcg_std")


def rank_metrics(ranked: Sequence[int], targets: Sequence[int], n: int) -> dict[str, float]:
    """Recall, HR, NDCG (ComiRec's) and standard NDCG at ``n`` for one user; the readable reference.

    ``ranked`` lists item ids best first (only the first ``n`` count; 0 is an empty slot, never a hit).
    ``targets`` is the user's held-out items with duplicates kept: ``|T|`` counts them, as ComiRec's
    recall does, while hits are ranked positions whose item is in ``set(T)``.

    ``ndcg`` divides the DCG by the ideal DCG of the ``h`` hits actually found (ComiRec's definition, what
    multi-interest papers report, 1 whenever all hits sit at the top); ``ndcg_std`` divides by the ideal
    DCG of ``min(|set(T)|, n)`` hits (the textbook NDCG), so ``ndcg_std <= ndcg``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(targets) == 0:
        raise ValueError("targets is empty: a user with no held-out item cannot be evaluated")
    target_set = set(targets)
    if 0 in target_set:
        raise ValueError("targets contain item 0, the padding id")
    top = list(ranked[:n])
    real = [item for item in top if item != 0]
    if len(set(real)) != len(real):
        raise ValueError(f"ranked list repeats an item within its first {n}: {top}")

    hit_ranks = [rank for rank, item in enumerate(top, start=1) if item in target_set]
    h = len(hit_ranks)
    dcg = sum(1.0 / math.log2(rank + 1) for rank in hit_ranks)
    idcg_hits = sum(1.0 / math.log2(j + 1) for j in range(1, h + 1))
    idcg_std = sum(1.0 / math.log2(j + 1) for j in range(1, min(len(target_set), n) + 1))
    return {
        "recall": h / len(targets),
        "hr": 1.0 if h > 0 else 0.0,
        "ndcg": dcg / idcg_hits if h > 0 else 0.0,
        "ndcg_std": dcg / idcg_std,
    }


@torch.no_grad()
def batch_metric_values(
    ranked: torch.Tensor, targets: torch.Tensor, ns: Sequence[int] = (20, 50)
) -> dict[str, torch.Tensor]:
    """Every metric of ``rank_metrics`` for each user of a batch, for each cut-off in ``ns``.

    ``ranked`` is [B, n_max] (rows de-duplicated, 0 an empty slot); ``targets`` is [B, T], right-padded
    with 0, duplicates kept. Keys are ``f"{metric}@{n}"``; values are float64 tensors [B] equal (to
    rounding) ``rank_metrics`` of each row. Per-user values rather than sums let sharded evaluation
    gather every rank's users and sum them once, exactly, as a single process does.
    """
    if ranked.dim() != 2 or targets.dim() != 2 or ranked.shape[0] != targets.shape[0]:
        raise ValueError(
            f"ranked [B, n_max] and targets [B, T] must share B, got {tuple(ranked.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not ns or min(ns) < 1:
        raise ValueError(f"ns must be non-empty cut-offs >= 1, got {ns}")
    ranked, targets = ranked.long(), targets.to(device=ranked.device, dtype=torch.long)
    n_targets = (targets != 0).sum(dim=1)
    if bool((n_targets == 0).any()):
        raise ValueError("a row of targets is all padding: a user with no held-out item cannot be evaluated")
    sorted_ranked = ranked.sort(dim=1).values
    if bool(((sorted_ranked[:, 1:] == sorted_ranked[:, :-1]) & (sorted_ranked[:, 1:] != 0)).any()):
        raise ValueError("a row of ranked repeats an item")

    # Membership of each ranked item in its row's targets by binary search (B*n_max*log T, not B*n_max*T).
    sorted_targets = targets.sort(dim=1).values.contiguous()
    pos = torch.searchsorted(sorted_targets, ranked.contiguous()).clamp(max=targets.shape[1] - 1)
    hit = (sorted_targets.gather(1, pos) == ranked) & (ranked != 0)
    distinct = (sorted_targets != 0).clone()
    distinct[:, 1:] &= sorted_targets[:, 1:] != sorted_targets[:, :-1]
    n_distinct = distinct.sum(dim=1)

    longest = max(max(ns), ranked.shape[1])
    discount = 1.0 / torch.log2(torch.arange(2, longest + 2, dtype=torch.float64, device=ranked.device))
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # ideal[j] = DCG of j hits on top
    per_cutoff: dict[int, dict[str, torch.Tensor]] = {}
    for n in ns:
        hit_n = hit[:, :n].to(torch.float64)
        h = hit_n.sum(dim=1)
        dcg = hit_n @ discount[: hit_n.shape[1]]
        per_cutoff[n] = {
            "recall": h / n_targets,
            "hr": (h > 0).to(torch.float64),
            # ideal[0] = 0: the clamp only guards the h = 0 rows, which where() sets to 0 anyway.
            "ndcg": torch.where(h > 0, dcg / ideal[h.long()].clamp(min=1.0), 0.0),
            "ndcg_std": dcg / ideal[n_distinct.clamp(max=n)],
        }
    return {f"{metric}@{n}": per_cutoff[n][metric] for metric in METRICS for n in ns}
