"""MIND (Li et al., "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall", CIKM 2019),
as the ComiRec code runs it as a baseline.

Read top to bottom, a forward pass is:
1. behaviour-to-interest (B2I) dynamic routing: ONE bilinear map S (d x d), shared by every interest,
   turns each history item embedding e_j into the prediction S e_j. Because the prediction is the same
   for all K interests, the routing logits must start unequal or the K interests would stay identical:
   they are drawn from N(0, sigma^2) for every user and position at every training step. Then, as in
   ComiRec-DR (`layers.dynamic_routing`), 3 iterations of coupling = softmax over the INTERESTS (not over
   the sequence, a bug of some public ports), zeroed at padding, squash, and the agreement added to the
   logits, with a stop-gradient on the predictions in all but the last iteration;
2. a dense ReLU layer on each interest capsule (ComiRec's `relu_layer`; MIND's "H-layer");
3. at training, the label-aware attention: the user vector for the target e is
   sum_k softmax_k((v_k . e)^p) v_k, instead of ComiRec's hard argmax readout; sampled softmax on it.
   At serving, every interest retrieves on its own, as for every multi-interest model here.

Departures from the paper and from the authors' code, and why:
- the readout. ComiRec's `Model_MIND` keeps `hard_readout=True`, so its `softmax(pow(atten, 1))` only
  feeds an argmax: ComiRec's MIND trains with the hard readout. The default here is the paper's
  label-aware attention with p = `label_aware_power` = 1.0 (the exponent written in ComiRec's code; the
  paper leaves p tunable, p -> infinity being the hard readout). `readout: hard` reproduces ComiRec's
  training exactly. p must be a whole number: (v . e)^p of a negative score is undefined otherwise. As
  in the paper's formula, an even p scores a strongly anti-aligned interest as high as an aligned one;
- the logits are drawn from N(0, sigma^2) as the paper says; ComiRec draws from a normal truncated at
  2 sigma, which changes about 5% of the draws;
- evaluation and serving (the model in eval mode) start from one fixed draw of the logits per
  (position, interest), made at construction and kept in the state dict (`serving_logits`), instead of
  fresh noise per call as in ComiRec: a user's interests are then repeatable and independent of the
  batch, and evaluating does not consume the global RNG, so a run's training stream does not depend on
  how often it is evaluated. (Starting from the mean, 0, is not an option: with a shared map, equal
  logits give K identical interests.) Training draws use torch's global RNG, which the trainer
  checkpoints, so a resumed run draws the same logits;
- the map S has no bias (the paper's bilinear map; ComiRec's dense layer adds one), is initialised
  N(0, 1/d) like ComiRec-DR's maps here, and the logits draw and the coupling ignore padding;
- a fixed K = `model.interests` for every user (the paper adapts K to the history length) and no user
  profile features in the H-layer, both as ComiRec; ComiRec enables the ReLU layer for its Book data
  only, here `relu_layer: true` is the default for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register
from hpcl4sr.models.layers import dynamic_routing


@dataclass(frozen=True)
class MINDConfig(ModelConfig):
    """MIND's settings, beside `ModelConfig`'s.

    Attributes:
        routing_iterations: rounds of dynamic routing.
        routing_sigma: standard deviation of the Gaussian initial routing logits.
        relu_layer: the dense ReLU layer on the interest capsules.
        readout: label_aware (the paper) | hard (what ComiRec's MIND trains with).
        label_aware_power: p of the label-aware attention, a whole number >= 0.
    """

    routing_iterations: int = 3
    routing_sigma: float = 1.0
    relu_layer: bool = True
    readout: str = "label_aware"
    label_aware_power: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.readout not in ("label_aware", "hard"):
            raise UserError(f"model.readout: expected label_aware or hard, got {self.readout!r}")
        if self.routing_iterations < 1 or self.routing_sigma <= 0:
            raise UserError("model.routing_iterations must be >= 1 and model.routing_sigma > 0")
        if self.label_aware_power < 0 or not float(self.label_aware_power).is_integer():
            raise UserError(f"model.label_aware_power: expected a whole number >= 0 (a negative score has no "
                            f"fractional power), got {self.label_aware_power}")


def label_aware_readout(interests: torch.Tensor, target_embedding: torch.Tensor, power: float) -> torch.Tensor:
    """MIND's label-aware attention: sum_k softmax_k((v_k . e)^p) v_k, [B, K, d] x [B, d] -> [B, d]."""
    scores = torch.einsum("bkd,bd->bk", interests, target_embedding)
    weights = torch.softmax(scores.pow(power), dim=1)
    return torch.einsum("bk,bkd->bd", weights, interests)


@register("mind")
class MIND(SequentialRecommender):
    config_class = MINDConfig

    def __init__(self, config: MINDConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        dim, k = config.dim, config.interests
        self.shared_map = nn.Parameter(torch.randn(dim, dim) * dim**-0.5)  # S, one for all interests
        self.register_buffer("serving_logits", torch.randn(max_len, k) * config.routing_sigma)
        if config.relu_layer:
            self.projection = nn.Linear(dim, dim)

    def initial_logits(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, L, K]: a fresh Gaussian draw at training, the fixed draw in eval mode (module docstring)."""
        batch, length = mask.shape
        if self.training:
            noise = torch.randn(batch, length, self.config.interests, device=mask.device, dtype=dtype)
            return noise * self.config.routing_sigma
        return self.serving_logits[:length].to(dtype).expand(batch, -1, -1)

    def interests_and_coupling(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(interests [B, K, d], coupling [B, K, L]); the coupling is 0 at padding, so neither the items
        nor the random logits there can change an interest."""
        mask = batch.mask
        predictions = self.item_embedding(batch.history) @ self.shared_map  # S e_j, [B, L, d]
        # The same prediction for every interest: a view, not K copies.
        item_capsules = predictions[:, :, None, :].expand(-1, -1, self.config.interests, -1)
        logits = self.initial_logits(mask, predictions.dtype)
        interests, coupling = dynamic_routing(item_capsules, logits, mask, self.config.routing_iterations)
        if self.config.relu_layer:
            interests = torch.relu(self.projection(interests))
        return interests, coupling

    def interests(self, batch: Batch) -> torch.Tensor:
        return self.interests_and_coupling(batch)[0]

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.config.readout == "hard":
            return super().loss(batch)
        interests = self.interests(batch)
        readout = label_aware_readout(interests, self.item_embedding(batch.target), self.config.label_aware_power)
        rec = self.recommendation_loss(readout, batch)
        return {"total": rec, "rec": rec}
