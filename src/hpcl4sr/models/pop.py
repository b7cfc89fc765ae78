"""Pop: every user gets the items the training users bought most (a fitted baseline, no SGD).

An item's popularity is its number of interactions in the training users' sequences; the valid and
test users' sequences are not counted, so a model never sees more of an evaluated user than their
history (see docs/design-notes.md, "Simple baselines").

This module also holds what the three fitted baselines (pop, repeat, itemknn) share, each subclassing
the one before: the popularity, and ranking from a dense score of every item. Items are scored in
*popularity order* (column c is the c-th most popular item, ties to the smaller id), so that equal scores
rank the more popular item first: the popularity fallback of repeat and itemknn costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import SequentialRecommender, register
from hpcl4sr.retrieval import topk_rows


@dataclass(frozen=True)
class PopConfig:
    """pop has no settings."""


def training_interactions(dataset: SequenceDataset) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) of every interaction of the training users, in sequence order; nothing else is read."""
    is_training = np.zeros(dataset.n_users, dtype=bool)
    is_training[dataset.split_users["train"]] = True
    user_of_position = np.repeat(np.arange(dataset.n_users), dataset.lengths)
    keep = is_training[user_of_position]
    return user_of_position[keep], np.asarray(dataset.items)[keep].astype(np.int64)


@register("pop")
class Pop(SequentialRecommender):
    config_class = PopConfig
    fitted = True
    score_budget = 1 << 24  # scores held at once when ranking (users x items): 64 MiB of float32

    def __init__(self, config: Any, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        n = self.n_items
        self.register_buffer("popularity", torch.zeros(n + 1))  # training interactions of each item id
        # column_items[c]: the item scored in column c (popularity order); column n is a dump for padding.
        self.register_buffer("column_items", torch.cat([torch.arange(1, n + 1), torch.zeros(1, dtype=torch.long)]))
        self.register_buffer("item_columns", torch.cat([torch.full((1,), n), torch.arange(n)]))  # its inverse

    def fit(self, dataset: SequenceDataset, max_len: int, select: Callable[[dict[str, Any]], float]
            ) -> dict[str, Any]:
        self.set_popularity(dataset)
        select({})
        return {}

    def set_popularity(self, dataset: SequenceDataset) -> None:
        _, items = training_interactions(dataset)
        counts = torch.from_numpy(np.bincount(items, minlength=self.n_items + 1)).float()
        counts[0] = 0.0
        # Stable sort of the negated counts: most popular first, equal counts by smaller id.
        order = torch.sort(-counts[1:], stable=True).indices + 1
        device = self.popularity.device
        self.popularity = counts.to(device)
        self.column_items = torch.cat([order, torch.zeros(1, dtype=torch.long)]).to(device)
        self.item_columns = torch.empty_like(self.column_items)
        self.item_columns[self.column_items] = torch.arange(self.n_items + 1, device=device)

    def column_scores(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[b, N + 1] scores in popularity order (see `column_items`) for b histories; subclasses override."""
        return self.popularity[self.column_items].expand(len(history), -1).clone()

    @torch.no_grad()
    def rank(self, batch: Batch, n: int, exclude: torch.Tensor | None = None, index: Any = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-n items by `column_scores`, equal scores by popularity; interest 0 (-1 for empty slots).

        Exact over every item; an `index` (built over an item table, which a fitted model has not) is ignored.
        """
        rows = max(1, self.score_budget // (self.n_items + 1))
        found_items, found_scores = [], []
        for lo in range(0, len(batch.history), rows):
            scores = self.column_scores(batch.history[lo : lo + rows], batch.mask[lo : lo + rows])
            if exclude is not None:
                scores.scatter_(1, self.item_columns[exclude[lo : lo + rows].long()], -math.inf)
            values, columns = topk_rows(scores[:, : self.n_items], n)
            found_items.append(self.column_items[columns].masked_fill(values == -math.inf, 0))
            found_scores.append(values)
        items, scores = torch.cat(found_items), torch.cat(found_scores)
        if items.shape[1] < n:  # fewer items than n
            items = torch.nn.functional.pad(items, (0, n - items.shape[1]), value=0)
            scores = torch.nn.functional.pad(scores, (0, n - scores.shape[1]), value=-math.inf)
        interest = torch.where(items > 0, 0, -1)
        return items, scores, interest

    def interests(self, batch: Batch) -> torch.Tensor:
        raise UserError(f"{self.name} is fitted, not trained: it has no interest vectors")

    def item_embeddings(self) -> torch.Tensor:
        raise UserError(f"{self.name} is fitted, not trained: it has no item embeddings")

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise UserError(f"{self.name} is fitted, not trained: it has no loss (`hpcl4sr train` fits it)")
