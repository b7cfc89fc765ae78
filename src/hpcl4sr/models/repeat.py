"""Repeat: the user's own most bought items first, then the most popular ones (a fitted baseline, no SGD).

An item's score is how many times it occurs in the user's history; items with equal counts, and every
item the user never bought (count 0), follow the training users' popularity (see `pop`). The history is
what every model sees: the batch's last `data.max_len` items. Setting `data.max_len` above the longest
sequence makes it the user's whole known history (docs/design-notes.md, "Simple baselines").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpcl4sr.models.base import register
from hpcl4sr.models.pop import Pop


@dataclass(frozen=True)
class RepeatConfig:
    """repeat has no settings."""


@register("repeat")
class Repeat(Pop):
    config_class = RepeatConfig

    def history_counts(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[b, N + 1] occurrences of each item in each history, in popularity order (column N: padding)."""
        counts = torch.zeros(len(history), self.n_items + 1, device=history.device)
        return counts.scatter_add_(1, self.item_columns[history], mask.float())

    def column_scores(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.history_counts(history, mask)
