"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016),
in the form the ComiRec code trains it as a single-vector baseline.

The history's item embeddings run through one GRU layer (hidden size = `model.dim`); the hidden state
after the last real item is the user's one interest, scored against the item table by inner product.
Padding is on the right, so the GRU reaches every real position before any padding: the state at
position len - 1 is exactly the state of the unpadded sequence, and padding cannot change it.

Departures from the paper, each because DESIGN §5 puts every baseline on the same trainer, loss and
evaluation:
- K is forced to 1: the model replaces `model.interests` by 1 whatever the run config says (it is a
  key shared with the multi-interest models, e.g. in a dataset's YAML), so `interests()` is [B, 1, d]
  and `model.config.interests` reads 1;
- training samples are the ComiRec protocol's (a random cut of a user's sequence, the next item as the
  target) instead of session-parallel mini-batches, and the loss is the shared sampled softmax instead
  of TOP1 / BPR;
- no output layer: the user vector is scored against the input item embeddings (tied weights), as in
  ComiRec's GRU4REC; no dropout, and PyTorch's default GRU initialisation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register


@register("gru4rec")
class GRU4Rec(SequentialRecommender):
    config_class = ModelConfig

    def __init__(self, config: ModelConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(dataclasses.replace(config, interests=1), catalogue, max_len)
        self.gru = nn.GRU(config.dim, config.dim, batch_first=True)

    def interests(self, batch: Batch) -> torch.Tensor:
        # Running over the padding too (instead of pack_padded_sequence) costs a few wasted steps at
        # max_len 20-30 but needs no sort and no host copy of the lengths; the GRU is causal, so the
        # states before the padding are those of the unpadded sequence.
        states, _ = self.gru(self.item_embedding(batch.history))  # [B, L, d]
        # The mask is a prefix of each row; an empty history (not produced by the samplers) would read
        # the first state rather than index out of range.
        last = (batch.mask.sum(dim=1) - 1).clamp(min=0)
        return states[torch.arange(len(states), device=states.device), last][:, None, :]
