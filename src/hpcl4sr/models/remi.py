"""REMI (Xie et al., "Rethinking Multi-Interest Learning for Candidate Matching", RecSys 2023).

REMI keeps ComiRec-SA's network and changes how it is trained, with two additions:
- routing regularisation (RR): `routing_reg` (lambda, default 100) times the shared
  `routing_regularization` of the [B, K, L] attention (per user, the squared norm of the diagonal of the
  attention's covariance over positions, divided by d, summed over the batch). It keeps an interest
  from piling its weight onto a few items;
- interest-aware hard negatives (IHN): each negative's term in the softmax normaliser is weighted by
  w_j = exp(beta s_j) / mean_j' exp(beta s_j'), where s_j is the raw score of negative j against the
  readout interest and the mean runs over the row's negatives. Hard negatives (high s_j) count more;
  beta = 0 gives w_j = 1, the plain sampled softmax, exactly. With `loss: full` every item but the
  target is a negative and gets the same weights.
`loss()` returns total = rec + routing_reg * reg, rec (the IHN softmax on the hard readout) and reg.

By default REMI trains as its authors' code does: `sampler: uniform`, 10 x batch size = 1,280 uniform
negatives shared by the batch (128 users a batch). Under the uniform sampler the log-Q correction is
the same constant for the target and every negative, so it cancels in the softmax: the hard-negative
weights act on uncorrected logits, as theirs do. (Our other models keep the log-uniform sampler.)

`beta` defaults to 1, the value the authors' README uses on Gowalla (10 on Amazon Books, 0.1 on
RetailRocket); the paper tunes it per dataset and does not cover Ta-Feng.

Departures from the authors' code, and why:
- their IHN branch drops the log-Q correction (a constant under their uniform sampler, not under their
  log-uniform one); we keep it, which changes nothing under the default uniform sampler and makes
  beta = 0 equal our plain sampled softmax under either sampler. The weights use the raw scores s_j, as
  theirs do;
- accidental hits (a negative equal to the row's target) are removed, and left out of the weights' mean,
  as in our other models' sampled softmax; their code keeps them;
- like theirs, the weights are not detached, so the gradient also flows through them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from hpcl4sr.data.dataset import Batch
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import ModelConfig, register
from hpcl4sr.models.comirec_sa import ComiRecSA
from hpcl4sr.models.layers import hard_negative_log_weights, hard_readout, routing_regularization


@dataclass(frozen=True)
class REMIConfig(ModelConfig):
    """REMI's settings, beside `ModelConfig`'s.

    Attributes:
        sampler: uniform, as the authors' code: so no log-Q correction sits under the hard-negative weights.
        routing_reg: lambda of the routing regulariser (RR) on the attention.
        beta: hardness of the interest-aware hard negatives (IHN); 0 turns IHN off.
    """

    sampler: str = "uniform"
    routing_reg: float = 100.0
    beta: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.routing_reg < 0 or self.beta < 0:
            raise UserError("model.routing_reg and model.beta must be >= 0")


@register("remi")
class REMI(ComiRecSA):
    config_class = REMIConfig

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        interests, attention = self.interests_and_attention(batch)
        readout = hard_readout(interests, self.item_embedding(batch.target))
        hard_negatives = functools.partial(hard_negative_log_weights, beta=self.config.beta)
        rec = self.recommendation_loss(readout, batch, hard_negatives)
        reg = routing_regularization(attention, self.config.dim)
        return {"total": rec + self.config.routing_reg * reg, "rec": rec, "reg": reg}
