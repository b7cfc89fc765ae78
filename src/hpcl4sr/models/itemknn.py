"""Item-kNN: items similar to the user's history, plus the history's own items (a fitted baseline, no SGD).

Two items are similar when the same training users bought them: over the sets U_i of training users
who bought item i,

    sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrinkage)

(the cosine of the binary user vectors; the shrinkage discounts pairs seen by few users). Each item keeps
its M most similar other items. A user's score for item i is the sum of sim(h, i) over the items h of the
history (with repeats, so an item bought twice counts twice) plus w * count(i in the history), or
w * log(1 + count) with `repeat_score: log`; equal scores, and items no history item points to, follow
popularity (see `pop`). M, the shrinkage and w are chosen on the valid users among the config's candidate
values, and the chosen ones are written into the run's config.yaml and test_metrics.json.

The similarities are never held as an N x N array: pairs of items sharing a user are counted a block of
items at a time by sorting, and only the [N + 1, M] tables of neighbour ids and similarities are kept, as
buffers of the state_dict. If those tables would not fit the free memory, `fit` stops with a message
naming model.neighbours before building anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import register
from hpcl4sr.models.pop import training_interactions
from hpcl4sr.models.repeat import Repeat

PAIR_BUDGET = 1 << 23  # (item, item) pairs expanded at once while counting co-occurrences: ~64 MiB per array


@dataclass(frozen=True)
class ItemKNNConfig:
    """item-kNN's settings. Each of the first three fields is one value or a list of candidates; every
    combination of the candidates is tried on the valid users and the best (valid recall@50) kept.

    Attributes:
        neighbours: M, the most similar items kept per item.
        shrinkage: added to the cosine's denominator, damping pairs seen by few users.
        repeat_weight: w, the weight of the history-count term.
        repeat_score: count (w x count of the item in the history) | log (w x log(1 + count)).
    """

    neighbours: int | list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    shrinkage: float | list[float] = field(default_factory=lambda: [0.0, 10.0, 30.0, 100.0])
    repeat_weight: float | list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    repeat_score: str = "count"

    def validate(self) -> None:
        for name, kind, least in (("neighbours", int, 1), ("shrinkage", float, 0), ("repeat_weight", float, 0)):
            values = candidates(getattr(self, name))
            if not values or not all(isinstance(v, (kind, int)) and not isinstance(v, bool) and v >= least
                                     for v in values):
                raise UserError(f"model.{name}: expected a number >= {least} or a non-empty list of them "
                                f"({'integers' if kind is int else 'numbers'}), got {getattr(self, name)!r}")
        if self.repeat_score not in ("count", "log"):
            raise UserError(f"model.repeat_score: expected count or log, got {self.repeat_score!r}")


def candidates(value: Any) -> list[Any]:
    """A config value that is one value or a list of candidates, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def free_memory() -> int:
    """Bytes of memory not in use right now (Linux); the largest table `fit` may build is half of it."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def neighbour_tables(users: np.ndarray, items: np.ndarray, n_items: int, neighbours: int,
                     shrinkages: list[float], pair_budget: int = PAIR_BUDGET) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each shrinkage, every item's `neighbours` most similar other items from (user, item) interactions.

    Returns (ids int32 [N + 1, M], sims float32 [N + 1, M]) per shrinkage: each row best first, equal
    similarities (to 2**-32) by smaller id, padded with id 0 and similarity 0; row 0 (padding) is empty.
    The pairs (i, j) sharing a user are expanded for a block of items i at a time, about `pair_budget` of
    them, and counted with a sort, so memory is bounded by the budget and the tables, whatever N is.
    """
    width = n_items + 1
    n_users = int(users.max()) + 1 if len(users) else 0
    owned = np.unique(users * width + items)  # each (user, item) once: the users' item sets, by user then item
    users, items = owned // width, owned % width
    set_size = np.bincount(users, minlength=n_users)
    user_start = np.cumsum(set_size) - set_size
    item_size = np.bincount(items, minlength=width)  # |U_i|
    item_offsets = np.concatenate([[0], np.cumsum(item_size)])
    item_users = users[np.argsort(items, kind="stable")]  # the users of item i: item_offsets[i]:item_offsets[i+1]
    pairs_of_item = np.bincount(items, weights=set_size[users], minlength=width)
    # Blocks of consecutive items with about `pair_budget` pairs and under 2**16 rows (see the sort key below).
    block_of_item = ((np.cumsum(pairs_of_item) - pairs_of_item) // pair_budget).astype(np.int64) * width
    block_of_item += np.arange(width) >> 16

    tables = [(np.zeros((width, neighbours), np.int32), np.zeros((width, neighbours), np.float32))
              for _ in shrinkages]
    bounds = np.flatnonzero(np.diff(block_of_item)) + 1
    for first, end in zip(np.concatenate([[1], bounds]), np.concatenate([bounds, [width]])):
        if first >= end:
            continue
        block_users = item_users[item_offsets[first] : item_offsets[end]]
        rows = np.repeat(np.arange(end - first), item_size[first:end])  # local row of each (item, user)
        lengths = set_size[block_users]
        # Every item of every user of the block's items: CSR expansion without a Python loop.
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        others = items[np.repeat(user_start[block_users], lengths) + within]
        rows = np.repeat(rows, lengths)
        keys, together = np.unique((rows * width + others)[others != rows + first], return_counts=True)
        row, other = keys // width, keys % width  # sorted by row, then other
        row_size = np.bincount(row, minlength=end - first)
        position_base = np.repeat(np.cumsum(row_size) - row_size, row_size)
        for shrinkage, (ids, sims) in zip(shrinkages, tables):
            similarity = together / (np.sqrt(item_size[row + first] * item_size[other]) + shrinkage)  # <= 1
            # One stable sort of an integer key: row, then descending similarity to 2**-32 (so float rounding
            # of equal ratios never decides), then, in the kept input order, the smaller id. Rows < 2**16.
            order = np.argsort((row << 33) + np.rint((1.0 - similarity) * 2**32).astype(np.int64), kind="stable")
            position = np.arange(len(order)) - position_base
            top = position < neighbours
            kept = order[top]
            ids[row[kept] + first, position[top]] = other[kept]
            sims[row[kept] + first, position[top]] = similarity[kept]
    return tables


@register("itemknn")
class ItemKNN(Repeat):
    config_class = ItemKNNConfig

    def __init__(self, config: ItemKNNConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        width = max(candidates(config.neighbours))
        self.register_buffer("neighbour_ids", torch.zeros(self.n_items + 1, width, dtype=torch.int32))
        self.register_buffer("neighbour_sims", torch.zeros(self.n_items + 1, width))
        self.register_buffer("repeat_weight", torch.tensor(0.0))

    def fit(self, dataset: SequenceDataset, max_len: int, select: Callable[[dict[str, Any]], float]
            ) -> dict[str, Any]:
        self.set_popularity(dataset)
        sizes, shrinkages = sorted(candidates(self.config.neighbours)), candidates(self.config.shrinkage)
        needed = len(shrinkages) * (self.n_items + 1) * sizes[-1] * 8
        if needed > free_memory() // 2:
            raise UserError(
                f"model.neighbours: {sizes[-1]} neighbours for each of {self.n_items} items under "
                f"{len(shrinkages)} model.shrinkage value(s) need {needed / 2**30:.1f} GiB, more than half the "
                f"free memory ({free_memory() / 2**30:.1f} GiB); give fewer or smaller model.neighbours or fewer "
                "model.shrinkage values")
        tables = neighbour_tables(*training_interactions(dataset), self.n_items, sizes[-1], shrinkages)
        best_score, best = -1.0, {}
        for shrinkage, (ids, sims) in zip(shrinkages, tables):
            for size in sizes:
                for weight in candidates(self.config.repeat_weight):
                    self.set_neighbours(ids[:, :size], sims[:, :size], weight)
                    setting = {"neighbours": size, "shrinkage": shrinkage, "repeat_weight": weight}
                    score = select(setting)
                    if score > best_score:
                        best_score, best = score, setting
        ids, sims = tables[shrinkages.index(best["shrinkage"])]
        self.set_neighbours(ids[:, : best["neighbours"]], sims[:, : best["neighbours"]], best["repeat_weight"])
        return best

    def set_neighbours(self, ids: np.ndarray, sims: np.ndarray, repeat_weight: float) -> None:
        device = self.neighbour_ids.device
        self.neighbour_ids = torch.from_numpy(np.ascontiguousarray(ids)).to(device)
        self.neighbour_sims = torch.from_numpy(np.ascontiguousarray(sims)).to(device)
        self.repeat_weight = torch.tensor(float(repeat_weight), device=device)

    def column_scores(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counts = self.history_counts(history, mask)
        scores = self.repeat_weight * (counts.log1p() if self.config.repeat_score == "log" else counts)
        # The history's neighbours [b, positions, M], a slice of positions at a time: a long history (a large
        # data.max_len) stays within the score budget.
        step = max(1, self.score_budget // (len(history) * self.neighbour_ids.shape[1]))
        for lo in range(0, history.shape[1], step):
            part = history[:, lo : lo + step]
            neighbours = self.item_columns[self.neighbour_ids[part].long()]  # their columns; padding -> dump
            similarities = self.neighbour_sims[part] * mask[:, lo : lo + step, None]
            scores.scatter_add_(1, neighbours.flatten(1), similarities.flatten(1))
        return scores
