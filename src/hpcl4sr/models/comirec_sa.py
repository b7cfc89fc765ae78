"""ComiRec-SA (Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020).

The self-attentive extractor: position embeddings are added to the history's item embeddings, K
attention heads score every position, and each interest is the attention-weighted sum of the raw item
embeddings (without positions), as in the authors' TensorFlow code. Training uses the hard readout
(the interest closest to the target) and a sampled softmax over 10 x batch shared negatives.

Departure from the authors' code: item ids are ranked by popularity, which the log-uniform sampler
assumes (ComiRec's ids are not sorted, so its sampler's log-Q correction was only approximate).
"""

from __future__ import annotations

import torch
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register
from hpcl4sr.models.layers import MultiInterestSelfAttention


@register("comirec-sa")
class ComiRecSA(SequentialRecommender):
    config_class = ModelConfig

    def __init__(self, config: ModelConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        self.position_embedding = nn.Parameter(torch.randn(max_len, config.dim) * config.dim**-0.5)
        self.attention = MultiInterestSelfAttention(config.dim, config.interests)

    def interests_and_attention(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(interests [B, K, d], attention [B, K, L]); REMI regularises the attention."""
        items = self.item_embedding(batch.history) * batch.mask[..., None]
        attention = self.attention(items + self.position_embedding, batch.mask)
        return attention @ items, attention

    def interests(self, batch: Batch) -> torch.Tensor:
        return self.interests_and_attention(batch)[0]
