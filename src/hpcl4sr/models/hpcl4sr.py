"""HPCL4SR (Zhu et al., "High-level preferences as positive examples in contrastive learning for
multi-interest sequential recommendation", World Wide Web 2024); docs/design-notes.md settles what the
paper leaves open.

Read top to bottom, a forward pass is:
1. high-level interests Q_u: category embeddings are propagated over the diffused category graph of the
   training users by a residual GCN (eq. 1-4); the user's history categories pick rows of the result
   (eq. 5) and a masked K-head attention pooling turns them into K vectors (eq. 6);
2. low-level interests P_u: item + position embeddings, one round of self-attention over the sequence
   and a linear map (eq. 7-9), then ComiRec-DR capsule routing (eq. 10);
3. the fused interests M_u = Linear([Q_u; P_u]) (eq. 13), used for retrieval and the readout.
Its loss (eq. 20) = sampled softmax on the hard readout of M_u (eq. 18-19) + lambda1 x the category
classifier on the routing inputs Z (eq. 11-12) + lambda2 x the angular-margin contrastive loss between
P_u and M_u (eq. 15-17).

The paper's Table 3 variants are configs under configs/hpcl4sr/, not code forks: `high_level: false`
drops the graph path (the `base` models use P_u directly), `fusion` swaps eq. 13 for Q + P or Q * P,
`routing_reg` adds REMI's routing regulariser on the capsule coupling (the `cr` variant, with
`lambda_cl: 0`), `margin: 0` is the w/o-m ablation. `beta` (REMI's hard negatives) and the base class's
`repeat` are not the paper's: they belong to HPCL4SR+ (configs/hpcl4sr/plus.yaml). `low_extractor:
attention`, `self_attention: false` and `fusion: residual` are not the paper's either: probes that locate
its deficits against REMI (docs/results.md, "What holds HPCL4SR+ back"), off by default.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register
from hpcl4sr.models.layers import (
    NEG_INF,
    CapsuleRouting,
    CrossEntropyWithoutDenormals,
    MultiInterestSelfAttention,
    hard_negative_log_weights,
    hard_readout,
    routing_regularization,
)

# --- the category global graph (eq. 1) and its multi-hop diffusion (eq. 2) -------------------------
# Built from training users only, so no valid or test sequence leaks into the model. The diffused matrix
# is computed once when the model is built for training: every training step then needs one product A @ H
# per GCN layer, never the powers of A2. It is a persistent buffer, so it travels with the weights and a
# model loaded from an exported artifact needs no training users.

DENSE_LIMIT = 5_000  # above this many categories the diffusion is applied by sparse power iteration


def category_cooccurrence(dataset: SequenceDataset, users: np.ndarray) -> np.ndarray:
    """A1: a[i, j] counts adjacent category changes (c_t, c_t+1), c_t != c_t+1, in both directions.

    Returns a dense (C + 1) x (C + 1) float64 matrix; row and column 0 (padding) stay zero.
    """
    size = dataset.n_categories + 1
    starts, ends = dataset.offsets[users], dataset.offsets[users + 1]
    lengths = ends - starts
    # The flat positions of every selected user's interactions, then the categories along them.
    positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    categories = dataset.item_category[np.asarray(dataset.items)[positions]]
    same_user = np.ones(len(categories), dtype=bool)
    same_user[np.cumsum(lengths)[:-1]] = False  # the first position of each user has no predecessor
    previous, current = categories[:-1], categories[1:]
    keep = same_user[1:] & (previous != current)
    counts = np.zeros((size, size), dtype=np.float64)
    np.add.at(counts, (previous[keep], current[keep]), 1.0)
    return counts + counts.T


def normalise(counts: np.ndarray) -> np.ndarray:
    """A2(i, j) = a_ij / sqrt((a_i + 1)(a_j + 1)), a_i = sum_j a_ij (eq. 1)."""
    scale = 1.0 / np.sqrt(counts.sum(axis=1) + 1.0)
    return counts * scale[:, None] * scale[None, :]


def diffusion_weights(alpha: float, hops: int) -> np.ndarray:
    """theta_i = alpha (1 - alpha)^i for i = 0..hops, renormalised to sum to 1 (eq. 2's constraint).

    Personalised-PageRank weights truncated at `hops`. Renormalising the truncated series keeps
    theta_i > theta_{i+1}, as the paper states; putting the remainder (1 - alpha)^hops on the last power
    instead would give hop 4 a weight of 0.52 at alpha 0.15, the largest of all.
    """
    theta = alpha * (1.0 - alpha) ** np.arange(hops + 1)
    return theta / theta.sum()


def diffuse(a2: np.ndarray, alpha: float, hops: int) -> np.ndarray:
    """A = sum_i theta_i A2^i, i = 0..hops, as a dense matrix (Horner's scheme: `hops` products)."""
    theta = diffusion_weights(alpha, hops)
    result = theta[hops] * np.eye(len(a2))
    for i in range(hops - 1, -1, -1):
        result = a2 @ result + theta[i] * np.eye(len(a2))
    return result


class Diffusion(torch.nn.Module):
    """Applies the diffused adjacency A to node features: dense A @ H, or sparse power iteration.

    Dense (the default up to 5,000 categories) stores A once; above that A would be dense and too big,
    so A2 is stored sparse and A @ H = sum_i theta_i A2^i H is evaluated with `hops` sparse products.
    """

    def __init__(self, a2: np.ndarray | None, size: int, alpha: float, hops: int) -> None:
        """`a2`: A2 of the training users, or None when the matrix comes with the weights (`size` nodes)."""
        super().__init__()
        self.dense = size <= DENSE_LIMIT
        theta = torch.tensor(diffusion_weights(alpha, hops), dtype=torch.float32)
        self.register_buffer("theta", theta, persistent=False)
        if a2 is None:  # a placeholder that load_state_dict replaces (see _load_from_state_dict)
            matrix = torch.zeros(size, size) if self.dense else torch.zeros(size, size).to_sparse_csr()
        elif self.dense:
            matrix = torch.tensor(diffuse(a2, alpha, hops), dtype=torch.float32)
        else:
            matrix = torch.tensor(a2, dtype=torch.float32).to_sparse_csr()
        self.register_buffer("matrix", matrix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001
                              unexpected_keys, error_msgs) -> None:
        # A sparse matrix cannot be copied into a placeholder with another number of non-zeros: take the
        # saved one as it is, on this module's device.
        key = prefix + "matrix"
        if self.dense or key not in state_dict:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            return
        self.matrix = state_dict[key].to(self.matrix.device)
        rest = {name: value for name, value in state_dict.items() if name != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        missing_keys.remove(key)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return self.matrix @ features
        power, total = features, self.theta[0] * features
        for weight in self.theta[1:]:
            power = self.matrix @ power
            total = total + weight * power
        return total


def training_graph(dataset: SequenceDataset) -> np.ndarray:
    """A2 of the training users' category sequences."""
    return normalise(category_cooccurrence(dataset, dataset.split_users["train"]))


@dataclass(frozen=True)
class HPCL4SRConfig(ModelConfig):
    """HPCL4SR's settings, beside `ModelConfig`'s; the defaults are the paper's.

    Attributes:
        lambda_class: lambda1 of eq. 20, the weight of the category loss (eq. 11-12).
        lambda_cl: lambda2 of eq. 20, the weight of the contrastive loss (eq. 15-17).
        temperature: tau of eq. 15.
        margin: m of eq. 15, the additive angular margin, in degrees.
        alpha: teleport probability of the diffusion weights theta_i proportional to alpha (1 - alpha)^i.
        hops: powers of A2 in eq. 2.
        gcn_layers: L of eq. 3-4.
        routing_iterations: rounds of the capsule routing of eq. 10.
        cl_warmup: training steps over which lambda2 rises linearly from 0 to `lambda_cl` (0: none, the
            paper, which sets no schedule). At initialisation the contrastive gradient is 1,000-3,000 times
            the recommendation gradient on the routing, context and position layers, and Adam's second
            moments then keep those layers slow; a warm-up lets the recommendation loss shape them first.
        fusion_bias: default (PyTorch's uniform initialisation of eq. 13's bias, the paper's silence) | zero.
            A random bias is one offset shared by the K fused interests of every user, so at initialisation
            they start alike and the contrast (whose negatives are the user's other interests) pushes hard.
        low_extractor: capsule (P_u by dynamic routing, eq. 10, the paper) | attention (ComiRec-SA's K-head
            attention over Z, aggregating the item embeddings; a departure, docs/design-notes.md).
        self_attention: Z is eq. 8-9's self-attention and context layer over eq. 7's embeddings (true, the
            paper); false gives the extractor and the classifier eq. 7's item + position embeddings as they
            are, as ComiRec and REMI do (a departure, measured in experiments/plus_beauty.yaml).
        high_level: the category-graph path (eq. 1-6); false for the `base` variants.
        high_pool: attention (W of eq. 6 is a masked K-head attention) | linear (a learned K x N matrix).
        fusion: mlp (eq. 13) | add | mul (Table 3's ablations) | residual (P + eq. 13's layer started at
            zero: M_u begins as P_u and takes from Q_u only what training asks for; a departure, measured
            in experiments/plus_beauty.yaml and plus_recipe.yaml, where it did not help).
        class_mode: supervised | reversed (a gradient-reversal layer before the classifier).
        routing_reg: weight of REMI's routing regulariser on the coupling (the `cr` variant).
        beta: hardness of REMI's interest-aware hard negatives in eq. 19's sampled softmax (each negative's
            term weighted by exp(beta s_j) / mean exp(beta s), `layers.hard_negative_log_weights`); 0, the
            paper, is the plain softmax exactly. Not in the paper: HPCL4SR+'s recipe (docs/design-notes.md).
        serve: fused (retrieve with M_u) | low (with P_u).
    """

    lambda_class: float = 0.1
    lambda_cl: float = 1.0
    temperature: float = 0.05
    margin: float = 10.0
    alpha: float = 0.15
    hops: int = 4
    gcn_layers: int = 2
    routing_iterations: int = 3
    cl_warmup: int = 0
    fusion_bias: str = "default"
    low_extractor: str = "capsule"
    self_attention: bool = True
    high_level: bool = True
    high_pool: str = "attention"
    fusion: str = "mlp"
    class_mode: str = "supervised"
    routing_reg: float = 0.0
    beta: float = 0.0
    serve: str = "fused"

    def validate(self) -> None:
        super().validate()
        choices = {"high_pool": ("attention", "linear"), "fusion": ("mlp", "add", "mul", "residual"),
                   "low_extractor": ("capsule", "attention"),
                   "class_mode": ("supervised", "reversed"), "serve": ("fused", "low"),
                   "fusion_bias": ("default", "zero")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"model.{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not self.high_level and (self.lambda_cl > 0 or self.serve == "fused"):
            raise UserError("model.high_level: false needs model.lambda_cl: 0 and model.serve: low "
                            "(without Q_u there is no fused view)")
        if not 0 < self.alpha <= 1 or self.hops < 0 or self.temperature <= 0:
            raise UserError("model.alpha must be in (0, 1], model.hops >= 0 and model.temperature > 0")
        if self.beta < 0:
            raise UserError(f"model.beta: expected a number >= 0, got {self.beta}")
        if self.cl_warmup < 0:
            raise UserError(f"model.cl_warmup: expected a number of steps >= 0, got {self.cl_warmup}")


class GradientReversal(torch.autograd.Function):
    """Identity forward, negated gradient backward (the `class_mode: reversed` option)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return -grad


@register("hpcl4sr")
class HPCL4SR(SequentialRecommender):
    config_class = HPCL4SRConfig

    def __init__(self, config: HPCL4SRConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        dim, n_categories = config.dim, catalogue.n_categories
        self.register_buffer("item_category", torch.as_tensor(catalogue.item_category, dtype=torch.long),
                             persistent=False)
        # Low-level path (eq. 7-10).
        self.position_embedding = nn.Parameter(torch.randn(max_len, dim) * dim**-0.5)
        if config.self_attention:
            self.context = nn.Linear(dim, dim)
        if config.low_extractor == "capsule":
            # REMI's regulariser (`cr`) needs a coupling that carries a gradient; the plain routing's has none.
            self.routing = CapsuleRouting(dim, config.interests, config.routing_iterations,
                                          differentiable_coupling=config.routing_reg > 0)
        else:
            self.low_attention = MultiInterestSelfAttention(dim, config.interests)
        if config.lambda_class > 0:
            self.classifier = nn.Linear(dim, n_categories + 1)
        # High-level path (eq. 1-6) and fusion (eq. 13).
        if config.high_level:
            graph = training_graph(catalogue.training) if catalogue.training is not None else None
            self.diffusion = Diffusion(graph, n_categories + 1, config.alpha, config.hops)
            self.category_embedding = nn.Embedding(n_categories + 1, dim)
            nn.init.normal_(self.category_embedding.weight, std=dim**-0.5)
            self.gcn = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(config.gcn_layers))
            if config.high_pool == "attention":
                self.high_pool = MultiInterestSelfAttention(dim, config.interests)
            else:
                self.high_pool_weights = nn.Parameter(torch.randn(config.interests, max_len) * max_len**-0.5)
            if config.fusion in ("mlp", "residual"):
                self.fusion = nn.Linear(2 * dim, dim)
                if config.fusion_bias == "zero" or config.fusion == "residual":
                    nn.init.zeros_(self.fusion.bias)
                if config.fusion == "residual":
                    nn.init.zeros_(self.fusion.weight)
        # lambda2's share of its full value this step (the warm-up); a tensor, so torch.compile never recompiles
        self.register_buffer("cl_ramp", torch.ones(()), persistent=False)

    def begin_step(self, step: int) -> None:
        if self.config.cl_warmup:
            self.cl_ramp.fill_(min(1.0, step / self.config.cl_warmup))

    # --- high-level preference interests Q_u (eq. 1-6) ---------------------------------------------
    def category_table(self) -> torch.Tensor:
        """H-hat: the layer mean of the residual GCN over the diffused graph (eq. 3-4).

        It depends on the weights only, not on the batch: without gradients (evaluation, serving) it is
        computed once per state of the weights and reused (a third of a serving request's time otherwise).
        """
        if torch.is_grad_enabled():
            return self.compute_category_table()
        # The cache is checked against copies of the weights (fused optimisers update them in place without
        # bumping their version counters); the graph changes only by load_state_dict, which bumps it.
        weights = [self.category_embedding.weight, *self.gcn.parameters()]
        graph = (id(self.diffusion.matrix), self.diffusion.matrix._version)
        cached = getattr(self, "_table_cache", None)
        if cached is None or cached[0] != graph or not all(
                old.device == new.device and torch.equal(old, new) for old, new in zip(cached[1], weights)):
            # the graph itself is kept so that its id cannot be reused by another tensor while cached
            self._table_cache = (graph, [w.detach().clone() for w in weights], self.compute_category_table(),
                                 self.diffusion.matrix)
        return self._table_cache[2]

    def compute_category_table(self) -> torch.Tensor:
        layer = self.category_embedding.weight
        layers = [layer]
        for weight in self.gcn:
            layer = weight(self.diffusion(layer)) + layer
            layers.append(layer)
        return torch.stack(layers).mean(dim=0)

    def category_rows(self, categories: torch.Tensor) -> torch.Tensor:
        """Rows `categories` (any shape) of H-hat; in a CPU training step, only the rows a batch uses.

        A batch of 128 Ta-Feng histories holds about 480 of 1,298 categories. The GCN is linear in E (no
        activation between layers), so layer i = sum_j A^j E M_ij with d x d matrices M_ij made of the
        layers' weights (`gcn_coefficients`), and the rows S of H-hat = E[S] + sum_j (A^j)[S] E N_j, N_j the
        layer mean of M_ij. With the powers A^j stored once, the step then multiplies |S| rows of them by
        E instead of the whole A by every layer, forward and backward: the same sum up to float rounding,
        at about a third of the GCN's cost. An accelerator (where `unique` would wait for the device), a
        sparse graph and evaluation (which caches the whole table) keep `category_table`.
        """
        # Rows are gathered with F.embedding, not indexing: see layers.item_rows (repeatable gradients).
        if categories.is_cuda or not torch.is_grad_enabled() or not self.diffusion.dense:
            return F.embedding(categories, self.category_table())
        present, where = torch.unique(categories, return_inverse=True)
        embedding = self.category_embedding.weight
        powers = self.adjacency_powers()[:, present]  # [layers, |S|, C]
        diffused = (powers @ embedding).transpose(0, 1).flatten(1)  # [|S|, layers * d]: (A^j)[S] E side by side
        rows = embedding[present] + diffused @ torch.cat(self.gcn_coefficients()[1:])
        return F.embedding(where, rows)

    def gcn_coefficients(self) -> list[torch.Tensor]:
        """N_j, j = 0..layers: H-hat = sum_j A^j E N_j, the layer mean of M_ij (layer i = sum_j A^j E M_ij).

        Layer i = A layer_{i-1} W_i^T + layer_{i-1} (eq. 3-4) gives M_ij = M_{i-1,j-1} W_i^T + M_{i-1,j}, M_00 = I.
        """
        dim = self.category_embedding.weight.shape[1]
        identity = torch.eye(dim, device=self.category_embedding.weight.device)
        layer, total = [identity], [identity]
        for weight in self.gcn:
            previous = layer + [torch.zeros_like(identity)]
            layer = [previous[0]] + [previous[j - 1] @ weight.weight.T + previous[j] for j in range(1, len(previous))]
            total = [total[j] + layer[j] if j < len(total) else layer[j] for j in range(len(layer))]
        return [coefficient / (len(self.gcn) + 1) for coefficient in total]

    def adjacency_powers(self) -> torch.Tensor:
        """[layers, C, C]: A^1 .. A^layers of the dense diffused graph, computed once per graph."""
        matrix = self.diffusion.matrix
        key = (id(matrix), matrix._version, matrix.device)
        cached = getattr(self, "_powers_cache", None)
        if cached is None or cached[0] != key:
            powers = [matrix]
            for _ in range(len(self.gcn) - 1):
                powers.append(powers[-1] @ matrix)
            # the graph itself is kept so that its id cannot be reused by another tensor while cached
            self._powers_cache = (key, torch.stack(powers), matrix)
        return self._powers_cache[1]

    def high_level(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask
        categories = self.item_category[batch.history]
        history = self.category_rows(categories) * mask[..., None]  # Hg, eq. 5
        if self.config.high_pool == "attention":
            weights = self.high_pool(history, mask)  # [B, K, L]
        else:
            weights = self.high_pool_weights[:, : mask.shape[1]].expand(len(mask), -1, -1) * mask[:, None, :]
        return weights @ history  # Q_u, eq. 6

    # --- low-level preference interests P_u (eq. 7-10) ---------------------------------------------
    def low_level(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (P_u [B, K, d], the routing inputs Z [B, L, d], the coupling [B, K, L]).

        With `low_extractor: attention` the coupling is the K-head attention over Z, which weighs the raw
        item embeddings as ComiRec-SA does; REMI's regulariser (`routing_reg`) then acts on it as in REMI.
        """
        mask = batch.mask
        features = self.item_embedding(batch.history) + self.position_embedding[: mask.shape[1]]  # eq. 7
        if self.config.self_attention:
            scores = (features @ features.transpose(1, 2)).masked_fill(~mask[:, None, :], NEG_INF)  # eq. 8
            features = self.context(features + torch.softmax(scores, dim=-1) @ features)  # eq. 9
        if self.config.low_extractor == "capsule":
            interests, coupling = self.routing(features, mask)  # eq. 10
        else:
            coupling = self.low_attention(features, mask)
            interests = coupling @ (self.item_embedding(batch.history) * mask[..., None])
        return interests, features, coupling

    def fuse(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """M_u (eq. 13): one Linear(2d -> d) shared over the K interests, the add / mul ablations, or P_u plus
        that layer (residual)."""
        if self.config.fusion == "add":
            return high + low
        if self.config.fusion == "mul":
            return high * low
        fused = self.fusion(torch.cat([high, low], dim=-1))
        return low + fused if self.config.fusion == "residual" else fused

    def parts(self, batch: Batch) -> dict[str, torch.Tensor]:
        low, routing_inputs, coupling = self.low_level(batch)
        parts = {"low": low, "routing_inputs": routing_inputs, "coupling": coupling}
        if self.config.high_level:
            parts["high"] = self.high_level(batch)
            parts["fused"] = self.fuse(parts["high"], low)
        return parts

    def interests(self, batch: Batch) -> torch.Tensor:
        parts = self.parts(batch)
        return parts["fused"] if self.config.serve == "fused" else parts["low"]

    # --- training objective (eq. 11-12, 15-20) -----------------------------------------------------
    def class_loss(self, routing_inputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the item categories predicted from Z at the real positions (eq. 11-12)."""
        features = routing_inputs
        if self.config.class_mode == "reversed":
            features = GradientReversal.apply(features)
        labels = self.item_category[batch.history]
        if features.is_cuda:  # boolean indexing would make the step wait for the device to count positions
            logits, labels = self.classifier(features).flatten(0, 1), labels.masked_fill(~batch.mask, -100).flatten()
            return F.cross_entropy(logits, labels, ignore_index=-100)  # -100 marks padding
        # A classifier over every category is costly on CPU: score the real positions only, and keep the
        # confident classifier's gradient free of denormal floats, which a CPU computes slowly.
        return CrossEntropyWithoutDenormals.apply(self.classifier(features[batch.mask]), labels[batch.mask])

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        config = self.config
        parts = self.parts(batch)
        serving = parts["fused"] if config.serve == "fused" else parts["low"]
        readout = hard_readout(serving, self.item_embedding(batch.target))  # eq. 18
        hard_negatives = functools.partial(hard_negative_log_weights, beta=config.beta) if config.beta > 0 else None
        losses = {"rec": self.recommendation_loss(readout, batch, hard_negatives)}  # eq. 19
        if config.lambda_class > 0:
            losses["class"] = self.class_loss(parts["routing_inputs"], batch)
        if config.lambda_cl > 0:
            losses["cl"] = angular_contrastive_loss(parts["low"], parts["fused"], config.margin, config.temperature)
        if config.routing_reg > 0:
            losses["reg"] = routing_regularization(parts["coupling"], config.dim)
        weights = {"rec": 1.0, "class": config.lambda_class, "cl": config.lambda_cl * self.cl_ramp,
                   "reg": config.routing_reg}
        losses["total"] = sum(weights[name] * value for name, value in losses.items())  # eq. 20
        return losses


# --- the multi-interest contrastive loss with an angular margin (eq. 15-17) -----------------------
def angular_contrastive_loss(low: torch.Tensor, fused: torch.Tensor, margin_degrees: float,
                             temperature: float) -> torch.Tensor:
    """HPCL4SR's multi-interest contrastive loss with an additive angular margin (eq. 15-17).

    Per user, the 2K views are the K low-level interests P and the K fused interests M. The anchor P^k
    has positive M^k and M^k has positive P^k; the other 2K - 2 views of the same user are negatives.
    The positive's angle gets the margin m (clamped to pi); the loss is the cross-entropy of the
    positive against positive + negatives, averaged over the 2K anchors and the batch.
    """
    k = low.shape[1]
    views = F.normalize(torch.cat([low, fused], dim=1), dim=-1)  # [B, 2K, d]
    cosine = views @ views.transpose(1, 2)  # [B, 2K, 2K]
    anchors = torch.arange(2 * k, device=low.device)
    positives = (anchors + k) % (2 * k)
    positive_cos = cosine[:, anchors, positives].clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    angle = torch.acos(positive_cos) + math.radians(margin_degrees)
    margin_logit = torch.cos(angle.clamp(max=math.pi))
    logits = cosine.scatter(2, positives.expand(len(low), -1)[..., None], margin_logit[..., None])
    logits = logits.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=low.device), NEG_INF)
    return F.cross_entropy((logits / temperature).flatten(0, 1), positives.repeat(len(low)))
