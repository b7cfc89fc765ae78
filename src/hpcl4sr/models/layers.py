"""Blocks shared by several models: interest extraction, readout, repeat-aware scoring and the softmax losses."""

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


def hard_negative_log_weights(scores: torch.Tensor, excluded: torch.Tensor, beta: float) -> torch.Tensor:
    """log w_j = beta s_j - log(mean over the row's non-excluded negatives of exp(beta s))."""
    tempered = beta * scores
    count = (~excluded).sum(dim=1, keepdim=True)
    log_mean = torch.logsumexp(tempered.masked_fill(excluded, NEG_INF), dim=1, keepdim=True) - count.log()
    return tempered - log_mean


class CrossEntropyWithoutDenormals(torch.autograd.Function):
    """Mean cross-entropy of `logits` [N, C] against `labels` [N]; its gradient is cross-entropy's, except
    that a class with probability below exp(LOG_PROBABILITY_FLOOR) gets exactly 0 instead of about that.

    Why: a confident classifier gives most of its classes probabilities that, scaled by the upstream
    weight and 1/N, fall below float32's smallest normal number (1.2e-38). A CPU computes with such
    denormal floats in microcode; the two matrix products of the backward that read them made HPCL4SR's
    category classifier (eq. 11-12) 3x slower late in training (docs/performance.md). exp(-60) = 8.8e-27
    leaves a margin of 1e11 above the smallest normal for the 1/N and the loss weight. The forward value
    is cross-entropy's: the floored classes weigh under 1e-26 in a float32 sum of at least 1.
    """

    LOG_PROBABILITY_FLOOR = -60.0

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor, labels: torch.Tensor
                ) -> torch.Tensor:
        log_probabilities = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_probabilities, labels)
        return -log_probabilities.gather(1, labels[:, None]).mean()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, upstream: torch.Tensor
                 ) -> tuple[torch.Tensor, None]:
        log_probabilities, labels = ctx.saved_tensors
        floor = CrossEntropyWithoutDenormals.LOG_PROBABILITY_FLOOR
        # exp of the clamped values, so that exp itself never returns a denormal, then the floored ones to 0
        gradient = log_probabilities.clamp(min=floor).exp_().masked_fill_(log_probabilities < floor, 0.0)
        gradient[torch.arange(len(labels), device=labels.device), labels] -= 1.0  # softmax - one-hot
        return gradient.mul_(upstream / len(labels)), None


def item_rows(item_table: torch.Tensor, ids: torch.Tensor, sparse_gradient: bool = False) -> torch.Tensor:
    """item_table[ids]; with `sparse_gradient` the table's gradient is a sparse tensor of those rows only
    (for `train.optimizer: lazy_adam`, which updates the rows a step touched).

    Through `F.embedding`, not indexing: the backward of `item_table[ids]` accumulates rows in parallel
    on the CPU in an order that varies from run to run with two or more threads, so training would not
    repeat itself bit for bit; the embedding's backward does."""
    return F.embedding(ids, item_table, sparse=sparse_gradient)


def value_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for a 1-D parameter `values` and an index of any shape, as a gather from `values`
    broadcast along the index's last axis: the gather's backward adds repeated indices row by row in a
    fixed order, where indexing's backward adds them in parallel in a varying one (see `item_rows`) once
    the index has more than about 32k entries (PIMI's [B, L, L] interval buckets)."""
    return values.expand(*index.shape[:-1], len(values)).gather(-1, index)


def shared_item_scores(user_vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[B, N]: items [N, d] scored against each user's readout [B, d], or its best interest of [B, K, d]."""
    if user_vectors.dim() == 2:
        return user_vectors @ items.T
    return torch.einsum("bkd,nd->bkn", user_vectors, items).amax(dim=1)


def own_item_scores(user_vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[B]: each user's own item [B, d] scored as in `shared_item_scores`."""
    if user_vectors.dim() == 2:
        return (user_vectors * items).sum(-1)
    return torch.einsum("bkd,bd->bk", user_vectors, items).amax(dim=1)


def full_softmax_loss(user_vectors: torch.Tensor, target: torch.Tensor, item_table: torch.Tensor,
                      reweight: NegativeReweighting | None = None, history: HistoryItems | None = None
                      ) -> torch.Tensor:
    """Cross-entropy over every real item (row 0 of the table is padding and excluded).

    `user_vectors` is a readout [B, d], or [B, K, d] when every item is scored by its best interest (UMI).
    With `reweight`, every item but the row's target is a negative whose logit gets the returned log weight
    (computed from the model's scores). With `history`, its repeat scores r are added to the history
    items' columns.
    """
    logits = shared_item_scores(user_vectors, item_table[1:])
    if reweight is not None:
        is_target = F.one_hot(target - 1, logits.shape[1]).bool()
        logits = logits + reweight(logits, is_target).masked_fill(is_target, 0.0)
    if history is not None:
        logits = logits + history.dense_repeat(logits.shape[1])
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
    history: ExactClasses | None = None,
) -> torch.Tensor:
    """Sampled softmax from scores: the target's [B] and the shared negatives' [B, N].

    Without `history`, every logit is corrected by subtracting log(expected count) of its class (log-Q
    correction, for the target too), a negative that equals the row's own target is removed (an
    accidental hit), and `reweight`, if given, adds its log weights to the remaining negatives' logits.

    With `history` (repeat-aware scoring, `RepeatScore`), the classes of row u split in two: the exact
    part E_u = h_u U {target} (the distinct items of u's history and the target, at most max_len + 1) and
    the rest. The softmax normaliser is Z_u = sum_{j in E_u} exp(s_j) + sum_{j not in E_u} exp(s_j). The
    first sum is computed exactly: the target and the history classes enter with their plain scores, no
    log-Q. The second is estimated by importance sampling from the N shared draws: each draw n not in
    E_u contributes exp(s_n - log(N q_n)), and E[sum_n 1[n not in E_u] exp(s_n) / (N q_n)] =
    sum_{j not in E_u} exp(s_j), so the estimated Z_u is unbiased (the sampled part keeps its log-Q
    correction; draws that fall in E_u are masked out, since E_u is already counted exactly). Without
    this split, a repeated item would be counted once exactly and again by its draws, and r would be
    learned against a normaliser that over-weights exactly the items it raises. `reweight` still acts on
    the sampled part only, with E_u's draws excluded from it.

    Models that score items their own way (UMI: each item against its best interest) pass their scores.
    """
    hits = classes.accidental_hits(target)
    if history is None:
        positive = positive - classes.target_log_q
    else:
        hits = hits | history.contains(classes.negatives)
    logits = negative - classes.negative_log_q
    if reweight is not None:
        logits = logits + reweight(negative, hits)
    logits = logits.masked_fill(hits, NEG_INF)
    exact = [positive[:, None]] if history is None else [positive[:, None], history.logits]
    logits = torch.cat([*exact, logits], dim=1)
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def sampled_softmax_loss(
    user_vectors: torch.Tensor,
    target: torch.Tensor,
    item_table: torch.Tensor,
    n_negatives: int,
    log_uniform: bool = True,
    reweight: NegativeReweighting | None = None,
    history: HistoryItems | None = None,
    sparse_gradient: bool = False,
) -> torch.Tensor:
    """Sampled softmax with negatives shared by the batch, as TensorFlow's, which ComiRec trains with.

    `user_vectors` is a readout [B, d], or [B, K, d] when every item is scored by its best interest (UMI).
    Logits are log-Q corrected and accidental hits removed; with `history`, the user's history items
    enter exactly, each with its repeat score r added (see `corrected_sampled_softmax`). With
    `sparse_gradient` the table's gradient covers the rows the step looked up only (`item_rows`).
    """
    classes = sample_classes(target, item_table.shape[0] - 1, n_negatives, log_uniform)
    positive = own_item_scores(user_vectors, item_rows(item_table, target, sparse_gradient))
    negative = shared_item_scores(user_vectors, item_rows(item_table, classes.negatives, sparse_gradient))
    exact = None
    if history is not None:
        positive = positive + history.repeat_of(target)
        history_rows = item_rows(item_table, history.items, sparse_gradient)
        exact = history.exact_classes(history_item_scores(user_vectors, history_rows), target)
    return corrected_sampled_softmax(positive, negative, target, classes, reweight, exact)


# --- repeat-aware scoring ("buy it again") ----------------------------------------------------------


def history_item_scores(user_vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[B, L]: each user's own history items [B, L, d] scored as in `shared_item_scores`."""
    users = user_vectors if user_vectors.dim() == 3 else user_vectors[:, None, :]
    return torch.einsum("bkd,bld->bkl", users, items).amax(dim=1)


@dataclass
class ExactClasses:
    """A row's classes outside the sampled part of a softmax: its history items and their full logits."""

    items: torch.Tensor  # [B, L] item ids, 0 where a position is no class
    logits: torch.Tensor  # [B, L] score + r, -inf where a position is no class

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, N]: which of the shared ids [N] (all > 0) are among the row's classes.

        Each class item finds its run of equal ids in the sorted ids (two binary searches), and the runs
        are marked through a cumulative sum: B x L searches instead of comparing every id with every item
        ([B, N, L]), which cost more than the rest of a training step. A row's items are distinct (and
        item 0 matches no id), so the runs never overlap.
        """
        ordered = ids.sort()
        start = torch.searchsorted(ordered.values, self.items)
        end = torch.searchsorted(ordered.values, self.items, right=True)
        edges = torch.zeros(len(self.items), len(ids) + 1, dtype=torch.long, device=ids.device)
        edges.scatter_add_(1, start, torch.ones_like(start)).scatter_add_(1, end, -torch.ones_like(end))
        inside = edges.cumsum(dim=1)[:, :-1] > 0  # in the sorted order of ids
        return torch.empty_like(inside).scatter_(1, ordered.indices.expand_as(inside), inside)


@dataclass
class HistoryItems:
    """The distinct items of each user's history and their repeat scores r (see `RepeatScore`).

    Position i of a row holds an item (and its r) at the item's last occurrence; every other position,
    padding included, holds item 0 and r = 0. So each distinct item appears once, and padding never.
    """

    items: torch.Tensor  # [B, L]
    repeat: torch.Tensor  # [B, L]

    def repeat_of(self, ids: torch.Tensor) -> torch.Tensor:
        """[B]: r of each row's item ids [B], 0 for an item outside the history."""
        return (self.repeat * (self.items == ids[:, None])).sum(dim=1)

    def dense_repeat(self, n_items: int) -> torch.Tensor:
        """[B, N]: r in each history item's column (item j in column j - 1), 0 elsewhere."""
        dense = self.repeat.new_zeros(len(self.items), n_items + 1).scatter_add(1, self.items, self.repeat)
        return dense[:, 1:]  # column 0 gathered the non-class positions, whose r is 0

    def exact_classes(self, scores: torch.Tensor, target: torch.Tensor) -> ExactClasses:
        """The history items other than the row's target as exact classes, logits = scores [B, L] + r."""
        is_class = (self.items > 0) & (self.items != target[:, None])
        logits = (scores + self.repeat).masked_fill(~is_class, NEG_INF)
        return ExactClasses(self.items.masked_fill(~is_class, 0), logits)


class RepeatScore(nn.Module):
    """Repeat-aware scoring: a learned "buy it again" term r(u, j) added to the score of the items of u's history.

    Multi-interest retrieval scores an item by how close it is to an interest, which rewards items like
    the history but has no notion of re-buying the same item; in grocery logs (Ta-Feng) about one test
    target in six is a re-purchase. For user u with model input history h (its <= max_len items) and an
    item j in h:

        r(u, j) = w_count log(1 + count of j in h)      how habitual the item is for u (diminishing returns)
                + recency[t_j]                          how recent: t_j = positions from the end of h to
                                                        j's last occurrence (0 = the latest item); a free
                                                        weight per position, so any decay can be learned
                + w_user (1 - distinct(h) / len(h))     how much u re-buys at all: 0 when every item of h
                                                        is new, near 1 for a user who buys the same things
                + bias                                  the prior of any re-purchase over a new item

    and r(u, j) = 0 for j not in h. Every weight starts at 0, so a model with this module starts exactly as
    without it (same ranking and, with `loss: full`, the same loss); training moves them only as far as
    the data rewards re-purchases (on a log with none, the bias goes negative). The final score of an item
    is the model's (the best interest's inner product) + r. `forward` returns `HistoryItems`.
    """

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.count_weight = nn.Parameter(torch.zeros(()))
        self.recency = nn.Parameter(torch.zeros(max_len))
        self.user_weight = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> HistoryItems:
        """`history` [B, L] item ids right-padded with 0, `mask` [B, L] its real positions (L <= max_len)."""
        same = (history[:, :, None] == history[:, None, :]) & mask[:, None, :]  # [B, L, L]: j real, same item
        count = same.sum(dim=2)
        last = mask & ~same.triu(diagonal=1).any(dim=2)  # no later real position holds the same item
        length = mask.sum(dim=1, keepdim=True)
        from_end = (length - 1 - torch.arange(history.shape[1], device=history.device)).clamp(min=0)
        repeat_rate = 1.0 - last.sum(dim=1, keepdim=True) / length.clamp(min=1)
        repeat = (self.count_weight * torch.log1p(count.to(self.bias.dtype)) + value_rows(self.recency, from_end)
                  + self.user_weight * repeat_rate + self.bias)
        return HistoryItems(history.masked_fill(~last, 0), repeat.masked_fill(~last, 0.0))


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
