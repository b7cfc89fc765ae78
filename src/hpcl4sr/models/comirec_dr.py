"""ComiRec-DR (Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020).

The dynamic-routing extractor: each history item embedding e_j is mapped by K bilinear maps into
predictions S_k e_j, routing logits start at 0, and for 3 iterations the coupling (a softmax over the
INTERESTS, zeroed at padding) weighs the predictions into squashed interest capsules, the logits growing
by each prediction's agreement with its capsule; all iterations but the last see the predictions through
a stop-gradient, as in the authors' code. This is `layers.CapsuleRouting`, the same routing HPCL4SR's
low-level path uses (DESIGN §4), here applied to the raw item embeddings (no position embeddings, no
self-attention), so the DR baseline and HPCL4SR's capsule layer differ only in their inputs. Training
uses the base class's hard readout (the interest closest to the target) and sampled softmax.

Departures from the authors' code:
- one map per interest, shared by all positions. The paper writes a map W_ij per (behaviour i, interest
  j) and the code (bilinear_type=2) learns a separate [K*d, d] map for every position of the sequence,
  initialised N(0, 1). DESIGN §4 settles the routing as per-interest maps (what the code's
  bilinear_type=1 computes, less its bias): max_len times fewer parameters, and maps that do not depend
  on where an item falls in the window. They are initialised N(0, 1/d), so that the predictions keep the
  item embeddings' scale;
- item ids are ranked by popularity, which the log-uniform negative sampler assumes (as for ComiRec-SA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register
from hpcl4sr.models.layers import CapsuleRouting


@dataclass(frozen=True)
class ComiRecDRConfig(ModelConfig):
    """ComiRec-DR's settings, beside `ModelConfig`'s.

    Attributes:
        routing_iterations: rounds of dynamic routing (3, as the authors).
    """

    routing_iterations: int = 3

    def validate(self) -> None:
        super().validate()
        if self.routing_iterations < 1:
            raise UserError(f"model.routing_iterations: expected at least 1, got {self.routing_iterations}")


@register("comirec-dr")
class ComiRecDR(SequentialRecommender):
    config_class = ComiRecDRConfig

    def __init__(self, config: ComiRecDRConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        self.routing = CapsuleRouting(config.dim, config.interests, config.routing_iterations)

    def interests_and_coupling(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(interests [B, K, d], coupling [B, K, L]); the routing gives padded positions coupling 0."""
        return self.routing(self.item_embedding(batch.history), batch.mask)

    def interests(self, batch: Batch) -> torch.Tensor:
        return self.interests_and_coupling(batch)[0]
