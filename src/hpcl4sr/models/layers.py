"""Blocks shared by several models: interest extraction, readout and the softmax losses."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = float("-inf")


class MultiInterestSelfAttention(nn.Module):
    """ComiRec-SA's extractor: K attention heads over the sequence, A = softmax_L(W2 tanh(W1 X)).

    Returns the attention [B, K, L]; padded positions get exactly zero weight, so padding can never
    change an interest. Callers aggregate whichever features they need with `attention @ features`.
    """

    def __init__(self, dim: int, heads: int, hidden_factor: int = 4) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim * hidden_factor)
        self.heads = nn.Linear(dim * hidden_factor, heads)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if features.is_cuda:
            # Packing the real positions (below) needs their count on the host, a device sync per call;
            # an accelerator scores the padding too, for nothing, but without waiting.
            scores = self.heads(torch.tanh(self.hidden(features))).masked_fill(~mask[..., None], NEG_INF)
        else:
            # Score the real positions only (about 60% of a Ta-Feng batch): the 4d-wide hidden layer and
            # its tanh are most of this module's cost, and padded positions get -inf whatever they score.
            packed = self.heads(torch.tanh(self.hidden(features[mask])))
            scores = packed.new_full((*mask.shape, packed.shape[-1]), NEG_INF).masked_scatter(mask[..., None], packed)
        return torch.softmax(scores.transpose(1, 2), dim=-1)  # [B, K, L]


def hard_readout(interests: torch.Tensor, target_embedding: torch.Tensor) -> torch.Tensor:
    """The interest with the largest inner product with the target (ComiRec, HPCL4SR eq. 18)."""
    best = torch.einsum("bkd,bd->bk", interests, target_embedding).argmax(dim=1)
    return interests[torch.arange(len(interests), device=interests.device), best]


NegativeReweighting = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(raw scores of the negatives [B, N], which of them are excluded [B, N]) -> log weights [B, N] added to the
negatives' logits (REMI's interest-aware hard negatives); excluded entries' weights are ignored."""


def item_rows(item_table: torch.Tensor, ids: torch.Tensor, sparse_gradient: bool = False) -> torch.Tensor:
    """item_table[ids]; with `sparse_gradient` the table's gradient is a sparse tensor of those rows only
    (for `train.optimizer: lazy_adam`, which updates the rows a step touched)."""
    return F.embedding(ids, item_table, sparse=True) if sparse_gradient else item_table[ids]


def full_softmax_loss(user_vectors: torch.Tensor, target: torch.Tensor, item_table: torch.Tensor,
                      reweight: NegativeReweighting | None = None) -> torch.Tensor:
    """Cross-entropy over every real item (row 0 of the table is padding and excluded).

    With `reweight`, every item but the row's target is a negative whose logit gets the returned log weight.
    """
    logits = user_vectors @ item_table[1:].T
    if reweight is not None:
        is_target = F.one_hot(target - 1, logits.shape[1]).bool()
        logits = logits + reweight(logits, is_target).masked_fill(is_target, 0.0)
    return F.cross_entropy(logits, target - 1)


def log_uniform_probability(ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """P(id) of the log-uniform (Zipfian) sampler over ids 1..N sorted by descending popularity."""
    ids = ids.double()
    return (torch.log1p(1.0 / ids) / math.log(n_items + 1)).float()


def sample_negatives(n: int, n_items: int, log_uniform: bool, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n item ids in 1..N with replacement; returns (ids, expected count of each id among n)."""
    if log_uniform:
        # Inverse CDF of P(id) = log(1 + 1/id) / log(N + 1): id = floor(exp(u * log(N + 1))).
        u = torch.rand(n, device=device, dtype=torch.float64)
        ids = torch.exp(u * math.log(n_items + 1)).floor().long().clamp_(1, n_items)
        return ids, n * log_uniform_probability(ids, n_items)
    ids = torch.randint(1, n_items + 1, (n,), device=device)
    return ids, torch.full((n,), n / n_items, device=device)


@dataclass
class SampledClasses:
    """The negatives of one sampled-softmax step, shared by the batch, and their log-Q corrections."""

    negatives: torch.Tensor  # [N] item ids, drawn with replacement
    negative_log_q: torch.Tensor  # [N] log of each negative's expected count among the N draws
    target_log_q: torch.Tensor  # [B] the same for each row's target

    def accidental_hits(self, target: torch.Tensor) -> torch.Tensor:
        """[B, N]: the negatives that equal the row's own target."""
        return self.negatives[None, :] == target[:, None]


def sample_classes(target: torch.Tensor, n_items: int, n_negatives: int, log_uniform: bool) -> SampledClasses:
    """Draw the batch's shared negatives (see `sample_negatives`) and the expected counts for log-Q."""
    negatives, negative_counts = sample_negatives(n_negatives, n_items, log_uniform, target.device)
    if log_uniform:
        target_counts = n_negatives * log_uniform_probability(target, n_items)
    else:
        target_counts = torch.full_like(target, n_negatives / n_items, dtype=torch.float32)
    return SampledClasses(negatives, negative_counts.log(), target_counts.log())


def corrected_sampled_softmax(
    positive: torch.Tensor,
    negative: torch.Tensor,
    target: torch.Tensor,
    classes: SampledClasses,
    reweight: NegativeReweighting | None = None,
) -> torch.Tensor:
    """Sampled softmax from raw scores: the target's [B] and the shared negatives' [B, N].

    Every logit is corrected by subtracting log(expected count) of its class (log-Q correction, for the
    target too), a negative that equals the row's own target is removed (an accidental hit), and
    `reweight`, if given, adds its log weights to the remaining negatives' logits. Models that score
    items their own way (UMI: each item against its best interest) share the correction through this.
    """
    hits = classes.accidental_hits(target)
    positive = positive - classes.target_log_q
    logits = negative - classes.negative_log_q
    if reweight is not None:
        logits = logits + reweight(negative, hits)
    logits = logits.masked_fill(hits, NEG_INF)
    logits = torch.cat([positive[:, None], logits], dim=1)
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def sampled_softmax_loss(
    user_vectors: torch.Tensor,
    target: torch.Tensor,
    item_table: torch.Tensor,
    n_negatives: int,
    log_uniform: bool = True,
    reweight: NegativeReweighting | None = None,
    sparse_gradient: bool = False,
) -> torch.Tensor:
    """Sampled softmax with negatives shared by the batch, as TensorFlow's, which ComiRec trains with.

    Logits are log-Q corrected and accidental hits removed (see `corrected_sampled_softmax`). With
    `sparse_gradient` the table's gradient covers the targets' and negatives' rows only (`item_rows`).
    """
    classes = sample_classes(target, item_table.shape[0] - 1, n_negatives, log_uniform)
    positive = (user_vectors * item_rows(item_table, target, sparse_gradient)).sum(-1)
    negative = user_vectors @ item_rows(item_table, classes.negatives, sparse_gradient).T
    return corrected_sampled_softmax(positive, negative, target, classes, reweight)


def squash(vectors: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule non-linearity: keeps the direction, maps the norm into [0, 1)."""
    squared = (vectors * vectors).sum(-1, keepdim=True)
    return squared / (1.0 + squared) * vectors / torch.sqrt(squared + eps)


class CapsuleRouting(nn.Module):
    """ComiRec-DR's dynamic routing: per-interest bilinear maps, logits from 0, softmax over interests.

    Item capsules u_hat[j, k] = S_k x_j; for `iterations` rounds the coupling c = softmax_K(b) weighs them
    into interest capsules squash(sum_j c_jk u_hat[j, k]), and b grows by the agreement u_hat . interest.
    All rounds but the last see u_hat through a stop-gradient, as in ComiRec. Padded positions get
    coupling 0, so padding never changes an interest. `forward` returns (interests [B, K, d],
    coupling [B, K, L]); with `differentiable_coupling` the coupling carries a gradient (see
    `dynamic_routing`), for a loss on it such as REMI's routing regulariser.
    """

    def __init__(self, dim: int, interests: int, iterations: int = 3, differentiable_coupling: bool = False) -> None:
        super().__init__()
        self.iterations = iterations
        self.interests = interests
        self.differentiable_coupling = differentiable_coupling
        # The K maps S_k side by side, [d, K*d]: one matmul makes every item capsule, already laid out
        # [B, L, K, d] (an einsum over a [K, d, d] tensor cost permuted copies, twice the step time).
        self.maps = nn.Parameter(torch.randn(dim, interests * dim) * dim**-0.5)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, dim = features.shape
        item_capsules = (features @ self.maps).view(batch, length, self.interests, dim)
        logits = features.new_zeros(batch, length, self.interests)
        return dynamic_routing(item_capsules, logits, mask, self.iterations, self.differentiable_coupling)


def dynamic_routing(item_capsules: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, iterations: int,
                    differentiable_coupling: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing loop shared by ComiRec-DR (`CapsuleRouting`, logits from 0) and MIND (Gaussian logits).

    item_capsules [B, L, K, d] are the predictions u_hat (MIND passes one shared prediction expanded over
    K); logits [B, L, K] are the initial routing logits. Each round the coupling c = softmax over the K
    interests of the logits, zeroed at padding, weighs the predictions into squash(sum_j c_jk u_hat[j, k]);
    the logits then grow by the agreement u_hat . interest. All rounds but the last see u_hat through a
    stop-gradient (ComiRec's code), so the gradient reaches u_hat only through the last round's sum.
    Because the coupling is 0 at padding, neither the predictions nor the logits there can change an
    interest. Returns (interests [B, K, d], coupling [B, K, L]).

    The stop-gradient leaves the returned coupling without any gradient, so a loss on it would train
    nothing. `differentiable_coupling` rebuilds the same logits with the agreements taken on the live
    predictions u_hat: the coupling's values are unchanged (so are the interests and their gradients),
    but a loss on it now reaches the maps and the features behind u_hat.
    """
    frozen = item_capsules.detach()
    valid = mask[:, :, None]
    live_logits = logits
    for round_ in range(iterations):
        coupling = torch.softmax(logits, dim=2) * valid  # [B, L, K]
        last = round_ == iterations - 1
        capsules = item_capsules if last else frozen
        interests = squash((capsules * coupling[..., None]).sum(dim=1))  # [B, K, d]
        if not last:
            logits = logits + (frozen * interests[:, None]).sum(dim=-1)
            if differentiable_coupling:
                live_logits = live_logits + (item_capsules * interests[:, None]).sum(dim=-1)
    if differentiable_coupling:
        coupling = torch.softmax(live_logits, dim=2) * valid
    return interests, coupling.transpose(1, 2)


def routing_regularization(coupling: torch.Tensor, dim: int) -> torch.Tensor:
    """REMI's routing regulariser on the [B, K, L] routing/attention weights.

    Per user, the covariance over positions of each interest's weights (divided by the embedding size,
    as REMI's code does); the squared norm of its diagonal is summed over the batch. It penalises
    interests that pile their weight onto a few items.
    """
    centred = coupling - coupling.mean(dim=2, keepdim=True)
    variances = (centred * centred).sum(dim=2) / dim  # the diagonal of centred @ centred^T / dim
    return (variances * variances).sum()
