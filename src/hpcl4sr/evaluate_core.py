"""The evaluation protocol as pure functions: exact top-n retrieval with the K-interest merge, and metrics.

Nothing here knows about datasets or models, so the protocol (DESIGN section 3, docs/protocol.md) can be
tested against brute-force references and reused by the trainer, the CLI and sharded evaluation alike.

Conventions shared by every function:

- item id 0 is padding: row 0 of the item table is never retrieved, a 0 in a ranked list is an empty slot
  and never a hit, a 0 in a padded target tensor is not a target;
- ties are broken deterministically, independently of chunk size and device: equal scores rank the
  smaller item id first, and an item retrieved with the same best score by several interests is credited
  to the smallest interest index.
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


def _score_desc_item_asc(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Per-row permutation ordering by score descending, then item id ascending.

    Two stable sorts (minor key first), so among entries equal on both keys the input order survives;
    callers rely on that to prefer the smaller interest index.
    """
    by_item = torch.sort(items, dim=1, stable=True).indices
    by_score = torch.sort(scores.gather(1, by_item), dim=1, descending=True, stable=True).indices
    return by_item.gather(1, by_score)


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (values, column indices) per row, in ascending column order, ties at the cut going to the
    smaller column. The values are a new tensor: callers may reuse the storage of ``scores``.

    ``torch.topk`` leaves the choice among values tied at the k-th place unspecified, which would make
    results depend on chunking and device. Asking for one more value detects such a tie cheaply (the
    (k+1)-th equals the k-th); only those rows (rare with real-valued scores, common with untrained or
    excluded items) are redone with a stable sort, the rest keep the fast path.

    On CPU ``torch.topk`` costs several times the scoring matmul per element, so wide rows are first cut
    into blocks of contiguous columns: the top k lie in the k blocks whose maxima rank first (by max, then
    block order), since a block ranked below those has k better maxima, each an element beating all of the
    block's own. Only the cheap block maxima and the k blocks' columns then go through ``torch.topk``.
    """
    rows, width = scores.shape
    if k >= width:
        return scores.clone(), torch.arange(width, device=scores.device).expand_as(scores)
    block = 32  # the narrowest that torch's CPU max-reduction vectorizes in float32: narrower is slower, not faster
    if width >= 16 * block * k:  # below that the extra calls cost more than the narrower topk saves
        n_blocks = width // block
        head = scores[:, : n_blocks * block].view(rows, n_blocks, block)
        _, picked = _chunk_topk(head.amax(dim=2), k)
        # The tail (fewer than ``block`` columns past the last whole block) always competes, as block n_blocks.
        in_picked = head[torch.arange(rows, device=scores.device)[:, None], picked].flatten(1)
        candidates = torch.cat([in_picked, scores[:, n_blocks * block :]], dim=1)
        picked = torch.cat([picked, torch.full_like(picked[:, :1], n_blocks)], dim=1)
        values, position = _chunk_topk(candidates, k)
        return values, picked.gather(1, position // block) * block + position % block
    values, index = torch.topk(scores, k + 1, dim=1)
    tied = (values[:, k - 1] == values[:, k]).nonzero().squeeze(1)
    values, index = values[:, :k], index[:, :k]
    if tied.numel():
        fixed = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        values[tied] = fixed.values[:, :k]
        index[tied] = fixed.indices[:, :k]
    index, order = torch.sort(index, dim=1)
    return values.gather(1, order), index


@torch.no_grad()
def topk_multi_interest(
    interests: torch.Tensor,
    item_embeddings: torch.Tensor,
    n: int,
    chunk_items: int = 65536,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-``n`` items for each user over K interests, merged as ComiRec does.

    ``interests`` is [B, K, d]; ``item_embeddings`` is [N+1, d] with row 0 padding, never returned. Each
    interest scores rows 1..N by inner product, ``chunk_items`` rows at a time, keeping a running top-n,
    so memory stays O(B*K*chunk_items) whatever N is (the table may even stay on the CPU while the
    interests live on an accelerator: each chunk is moved on its own). The K*n (item, score) pairs of a
    user are then pooled, sorted by score, de-duplicated keeping each item's best score, and the first n
    kept. Exact search needs no faiss and leaves no approximation error in the reported figures.

    ``exclude`` is an optional [B, L] LongTensor of item ids, 0-padded (the ``--filter-history`` variant):
    those items score -inf and are never returned.

    Returns ``(items, scores, interest)``, each [B, n]: item ids (LongTensor), their scores (the dtype of
    ``interests``), and the index of the interest that retrieved each item. Slots that cannot be filled
    (N, less excluded items, below n) hold item 0, score -inf and interest -1. Ties: see the module
    docstring (smaller item id first, then smaller interest index).
    """
    if interests.dim() != 3:
        raise ValueError(f"interests must be [B, K, d], got shape {tuple(interests.shape)}")
    if item_embeddings.dim() != 2 or item_embeddings.shape[1] != interests.shape[2]:
        raise ValueError(
            f"item_embeddings must be [N+1, {interests.shape[2]}], got shape {tuple(item_embeddings.shape)}"
        )
    if n < 1 or chunk_items < 1:
        raise ValueError(f"n and chunk_items must be >= 1, got n={n}, chunk_items={chunk_items}")
    batch, k_interests, _ = interests.shape
    if exclude is not None and (exclude.dim() != 2 or exclude.shape[0] != batch):
        raise ValueError(f"exclude must be [{batch}, L], got shape {tuple(exclude.shape)}")

    device, dtype = interests.device, interests.dtype
    rows = batch * k_interests
    queries = interests.reshape(rows, -1)
    if exclude is not None:
        exclude = exclude.to(device=device, dtype=torch.long)

    n_items = item_embeddings.shape[0] - 1
    # Every chunk scores into one buffer: a fresh [B*K, chunk_items] tensor per chunk pays page faults that
    # cost as much again as the matmul on CPU.
    buffer = torch.empty(rows * min(chunk_items, n_items), dtype=dtype, device=device)
    # The chunks' top n, kept in item order (chunks ascend, _chunk_topk returns ascending columns) so that
    # _chunk_topk's tie rule (smaller column) is the item rule when they are merged. Merging only once they
    # outgrow a chunk, rather than after every chunk, costs less and keeps memory O(B*K*chunk_items).
    found_scores = [torch.empty(rows, 0, dtype=dtype, device=device)]
    found_items = [torch.empty(rows, 0, dtype=torch.long, device=device)]
    for lo in range(1, n_items + 1, chunk_items):
        hi = min(lo + chunk_items, n_items + 1)
        chunk = item_embeddings[lo:hi].to(device=device, dtype=dtype)
        scores = torch.mm(queries, chunk.T, out=buffer[: rows * (hi - lo)].view(rows, hi - lo))
        if exclude is not None:
            # Column hi - lo is a dump for ids outside this chunk (and padding), dropped after the scatter.
            local = torch.where((exclude >= lo) & (exclude < hi), exclude - lo, hi - lo)
            banned = torch.zeros(batch, hi - lo + 1, dtype=torch.bool, device=device)
            banned.scatter_(1, local, True)
            scores.view(batch, k_interests, hi - lo).masked_fill_(banned[:, None, : hi - lo], -math.inf)
        values, index = _chunk_topk(scores, min(n, hi - lo))
        found_scores.append(values)
        found_items.append(index + lo)
        if hi > n_items or sum(found.shape[1] for found in found_scores) > chunk_items:
            pooled_scores, pooled_items = torch.cat(found_scores, dim=1), torch.cat(found_items, dim=1)
            values, index = _chunk_topk(pooled_scores, min(n, pooled_scores.shape[1]))
            found_scores, found_items = [values], [pooled_items.gather(1, index)]
    return merge_interests(found_items[0].view(batch, k_interests, -1), found_scores[0].view(batch, k_interests, -1),
                           n)


@torch.no_grad()
def merge_interests(
    items: torch.Tensor, scores: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ComiRec's K-interest merge of per-interest candidate lists into one top-``n`` list per user.

    ``items`` [B, K, w] (item ids, 0 = an empty slot) and ``scores`` [B, K, w] (-inf at empty or excluded
    slots) are each interest's candidates, in any order; any retrieval (exact or an approximate index)
    feeds them. Returns ``(items, scores, interest)`` [B, n] as ``topk_multi_interest`` documents.
    """
    batch, k_interests, width = items.shape
    device = items.device
    # Pool in interest-major order so the stable sorts credit ties to the lower interest.
    pool_items = items.reshape(batch, k_interests * width)
    pool_scores = scores.reshape(batch, k_interests * width)
    pool_interest = torch.arange(k_interests, device=device).repeat_interleave(width).expand(batch, -1)
    order = _score_desc_item_asc(pool_scores, pool_items)
    items, scores = pool_items.gather(1, order), pool_scores.gather(1, order)
    interest = pool_interest.gather(1, order)

    # An item's first occurrence in this order is its best (score, interest). Group by item with a stable
    # sort to find first occurrences without any per-user loop.
    by_item = torch.sort(items, dim=1, stable=True)
    first_in_group = torch.ones_like(items, dtype=torch.bool)
    first_in_group[:, 1:] = by_item.values[:, 1:] != by_item.values[:, :-1]
    keep = torch.empty_like(first_in_group).scatter_(1, by_item.indices, first_in_group)
    keep &= scores > -math.inf  # excluded items (and the padding of N < n) are never returned

    # Moving dropped entries (now -inf) behind the kept ones with a stable sort preserves the kept order.
    compact = torch.sort(scores.masked_fill(~keep, -math.inf), dim=1, descending=True, stable=True).indices
    compact = compact[:, :n]
    kept = keep.gather(1, compact)
    out_items = items.gather(1, compact).masked_fill(~kept, 0)
    out_scores = scores.gather(1, compact).masked_fill(~kept, -math.inf)
    out_interest = interest.gather(1, compact).masked_fill(~kept, -1)
    if out_items.shape[1] < n:
        pad = n - out_items.shape[1]
        out_items = torch.nn.functional.pad(out_items, (0, pad), value=0)
        out_scores = torch.nn.functional.pad(out_scores, (0, pad), value=-math.inf)
        out_interest = torch.nn.functional.pad(out_interest, (0, pad), value=-1)
    return out_items, out_scores, out_interest


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
