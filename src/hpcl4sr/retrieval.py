"""Exact top-n retrieval over the item table with the K-interest merge, as a pure function.

Nothing here knows about datasets or models, so the protocol (docs/protocol.md) can be tested against
brute-force references and reused by evaluation, recommendations and serving alike.

- item id 0 is padding: row 0 of the item table is never retrieved, and an empty slot holds item 0;
- ties are broken deterministically, independently of chunk size and device: equal scores rank the
  smaller item id first, and an item retrieved with the same best score by several interests is credited
  to the smallest interest index.
"""

from __future__ import annotations

import math

import torch

BLOCK = 32  # columns per block when pruning wide rows: the narrowest that torch's CPU max-reduction
# vectorizes in float32 (narrower is slower, not faster)


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
    if width >= 16 * BLOCK * k:  # below that the extra calls cost more than the narrower topk saves
        n_blocks = width // BLOCK
        head = scores[:, : n_blocks * BLOCK].view(rows, n_blocks, BLOCK)
        _, picked = _chunk_topk(head.amax(dim=2), k)
        # The tail (fewer than BLOCK columns past the last whole block) always competes, as block n_blocks.
        in_picked = head[torch.arange(rows, device=scores.device)[:, None], picked].flatten(1)
        candidates = torch.cat([in_picked, scores[:, n_blocks * BLOCK :]], dim=1)
        picked = torch.cat([picked, torch.full_like(picked[:, :1], n_blocks)], dim=1)
        values, position = _chunk_topk(candidates, k)
        return values, picked.gather(1, position // BLOCK) * BLOCK + position % BLOCK
    values, index = torch.topk(scores, k + 1, dim=1)
    tied = (values[:, k - 1] == values[:, k]).nonzero().squeeze(1)
    values, index = values[:, :k], index[:, :k]
    if tied.numel():
        fixed = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        values[tied] = fixed.values[:, :k]
        index[tied] = fixed.indices[:, :k]
    index, order = torch.sort(index, dim=1)
    return values.gather(1, order), index


def _chunk_topk_best_interest(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` items of each user by their best interest's score: (values, columns, interest), columns
    ascending, from ``scores`` [B, K, W] (user, interest, item column).

    An item's merged score is its maximum over the K interests, so the merge happens here, per chunk,
    before any top-k: the top-k then runs on B rows instead of B x K, and the K-interest pool never
    exists. The interest is the first that reaches the maximum (the smallest index, as `merge_interests`
    credits ties). Wide rows are pruned by blocks as in `_chunk_topk`, with a block's maximum taken over
    the K interests too, in a pass that reads the scores once.
    """
    batch, _, width = scores.shape
    if k < width and width >= 16 * BLOCK * k:
        n_blocks = width // BLOCK
        head = scores[:, :, : n_blocks * BLOCK].view(batch, -1, n_blocks, BLOCK)
        _, picked = _chunk_topk(head.amax(dim=3).amax(dim=1), k)
        # [B, k, K, BLOCK] -> each column's best score; the tail competes whole, as block n_blocks.
        in_picked = head[torch.arange(batch, device=scores.device)[:, None], :, picked].amax(dim=2)
        candidates = torch.cat([in_picked.flatten(1), scores[:, :, n_blocks * BLOCK :].amax(dim=1)], dim=1)
        picked = torch.cat([picked, torch.full_like(picked[:, :1], n_blocks)], dim=1)
        values, position = _chunk_topk(candidates, k)
        columns = picked.gather(1, position // BLOCK) * BLOCK + position % BLOCK
    else:
        values, columns = _chunk_topk(scores.amax(dim=1), min(k, width))
    # Only the k winners need their interest: max's index is the first of equal maxima.
    interest = scores.gather(2, columns[:, None, :].expand(-1, scores.shape[1], -1)).max(dim=1).indices
    return values, columns, interest


@torch.no_grad()
def topk_multi_interest(
    interests: torch.Tensor,
    item_embeddings: torch.Tensor,
    n: int,
    chunk_items: int = 65536,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-``n`` items for each user over K interests, merged as ComiRec does.

    ``interests`` is [B, K, d]; ``item_embeddings`` is [N+1, d] with row 0 padding, never returned. An
    item's score is its best interest's inner product, and the n best items by that score are returned,
    which is ComiRec's merge (pool the K per-interest top-n lists, keep each item's best score, cut at n)
    computed directly. Rows 1..N are scored ``chunk_items`` rows at a time, keeping a running top-n, so
    memory stays O(B*K*chunk_items) whatever N is (the table may even stay on the CPU while the
    interests live on an accelerator: each chunk is moved on its own). Exact search needs no faiss and
    leaves no approximation error in the reported figures.

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
    # The chunks' top n, kept in item order (chunks ascend, the top-k returns ascending columns) so that
    # `_chunk_topk`'s tie rule (smaller column) is the item rule when they are merged. Merging only once they
    # outgrow a chunk, rather than after every chunk, costs less and keeps memory O(B*K*chunk_items).
    found_scores = [torch.empty(batch, 0, dtype=dtype, device=device)]
    found_items = [torch.empty(batch, 0, dtype=torch.long, device=device)]
    found_interest = [torch.empty(batch, 0, dtype=torch.long, device=device)]
    for lo in range(1, n_items + 1, chunk_items):
        hi = min(lo + chunk_items, n_items + 1)
        chunk = item_embeddings[lo:hi].to(device=device, dtype=dtype)
        scores = torch.mm(queries, chunk.T, out=buffer[: rows * (hi - lo)].view(rows, hi - lo))
        scores = scores.view(batch, k_interests, hi - lo)
        if exclude is not None:
            # Column hi - lo is a dump for ids outside this chunk (and padding), dropped after the scatter.
            local = torch.where((exclude >= lo) & (exclude < hi), exclude - lo, hi - lo)
            banned = torch.zeros(batch, hi - lo + 1, dtype=torch.bool, device=device)
            banned.scatter_(1, local, True)
            scores.masked_fill_(banned[:, None, : hi - lo], -math.inf)
        values, index, interest = _chunk_topk_best_interest(scores, min(n, hi - lo))
        found_scores.append(values)
        found_items.append(index + lo)
        found_interest.append(interest)
        if hi > n_items or sum(found.shape[1] for found in found_scores) > chunk_items:
            pooled_scores = torch.cat(found_scores, dim=1)
            values, index = _chunk_topk(pooled_scores, min(n, pooled_scores.shape[1]))
            found_scores = [values]
            found_items = [torch.cat(found_items, dim=1).gather(1, index)]
            found_interest = [torch.cat(found_interest, dim=1).gather(1, index)]
    # Item order -> score descending, ties by the smaller item (a stable sort of an item-ordered list).
    scores, order = torch.sort(found_scores[0], dim=1, descending=True, stable=True)
    return _empty_slots_marked(found_items[0].gather(1, order), scores, found_interest[0].gather(1, order), n)


def _empty_slots_marked(items: torch.Tensor, scores: torch.Tensor, interest: torch.Tensor, n: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ranked list whose -inf entries (excluded items, nothing left to rank) become empty slots: item 0,
    interest -1; padded the same way to n columns when fewer were found."""
    kept = scores > -math.inf
    items, interest = items.masked_fill(~kept, 0), interest.masked_fill(~kept, -1)
    if items.shape[1] < n:
        pad = n - items.shape[1]
        items = torch.nn.functional.pad(items, (0, pad), value=0)
        scores = torch.nn.functional.pad(scores, (0, pad), value=-math.inf)
        interest = torch.nn.functional.pad(interest, (0, pad), value=-1)
    return items, scores, interest


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
    kept_scores = scores.gather(1, compact).masked_fill(~keep.gather(1, compact), -math.inf)
    return _empty_slots_marked(items.gather(1, compact), kept_scores, interest.gather(1, compact), n)


@torch.no_grad()
def topk_rows(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``n`` (values, column indices) of each row of a dense [B, C] score matrix, best first.

    Ties go to the smaller column, whatever the device, as in `_chunk_topk`; for models that score every
    item themselves (the fitted baselines) rather than through an item table.
    """
    values, index = _chunk_topk(scores, min(n, scores.shape[1]))
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), index.gather(1, order)


@torch.no_grad()
def merge_ranked_lists(
    items: torch.Tensor, scores: torch.Tensor, interest: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``n`` of per-user candidates [B, w] (w >= n) that hold each item at most once, by the tie rule above.

    ``items`` (0 = an empty slot), ``scores`` (-inf at empty slots) and ``interest`` side by side, e.g. a
    retrieved top-n list beside a user's exactly scored history items (repeat-aware ranking). Returns
    ``(items, scores, interest)`` [B, n] as ``topk_multi_interest`` documents: slots left unfilled hold item
    0, score -inf and interest -1.
    """
    order = _score_desc_item_asc(scores, items)[:, :n]
    items, scores, interest = items.gather(1, order), scores.gather(1, order), interest.gather(1, order)
    empty = scores == -math.inf
    return items.masked_fill(empty, 0), scores, interest.masked_fill(empty, -1)
