"""PIMI (Chen et al., "Exploring Periodicity and Interactivity in Multi-Interest Framework for Sequential
Recommendation", IJCAI 2021).

ComiRec-SA with two modules in front of its extractor:
1. periodicity: every pair of history items (i, j), not only consecutive ones, gets the bucket of the
   time between them (below), as in the authors' time-interval matrix;
   each bucket has an embedding, item i attends over the buckets of its row (softmax over the real j
   of w . emb(bucket_ij)) and the weighted sum of their embeddings is its time embedding. The item's
   input is x_i = item embedding + position embedding + time embedding;
2. interactivity: a star-topology graph over the sequence, after Star-Transformer. Item node i attends
   (multi-head) to its context [previous item node, itself, next item node, its input x_i, the star
   node]; then the star node attends to [itself, every item node]. The star starts as the mean of the
   inputs and there are 3 blocks.
ComiRec-SA's K attention heads then score the item nodes and each interest is the attention-weighted sum
of the raw item embeddings, as in ComiRec-SA and the authors' code; training is the shared hard readout
plus sampled softmax.

Interval buckets: both times are converted to whole days, the bucket is |day_i - day_j| clipped at
`time_span`, so buckets 0..time_span - 1 mean exactly that many days apart and bucket `time_span` means
`time_span` days or more (`time_span + 1` embeddings). `time_unit` says what a stored time is:
`second` (unix seconds; the day is floor(t / 86400), a UTC calendar day), `day` (already days; the
`sequences` source's positions count as days) or `mmdd` (Tmall's month * 100 + day, taken as a day of
one non-leap year). `auto` reads the unit from the dataset's source: tafeng -> day, tmall -> mmdd,
sequences -> day, amazon / taobao / synthetic -> second; other sources (csv, parquet) must set it.

Departures from the paper and the authors' TensorFlow code, and why:
- the authors' adjacency links each item only to the previous one (plus itself and the star); we link
  the previous and the next item, the paper's ring connections (as in Star-Transformer). Neither end
  wraps around: the first item has no previous and the last real item no next (those keys are masked);
- each update is h <- ReLU(h + MultiAtt(h, C)); the residual is our choice, it keeps three stacked
  blocks easy to train;
- the star update of the last block is skipped: nothing reads it, and its weights would never learn;
- the star attends to the real item nodes only (the authors' code also passes the zeroed padded ones);
  no dropout, like our other baselines;
- the multi-head attention is our `ContextAttention`, the usual projections and scaled dot products,
  written so that shared context vectors are projected once (5x fewer projections than
  `nn.MultiheadAttention` on the gathered contexts);
- the authors turn times into days by rounding from each user's first time; we floor to calendar days;
- the head count (`heads`, default 4) is not given in the paper;
- item ids are ranked by popularity, which the log-uniform sampler assumes (as in our ComiRec-SA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register
from hpcl4sr.models.layers import NEG_INF, MultiInterestSelfAttention, value_rows

SECONDS_PER_DAY = 86_400
TIME_UNITS = ("auto", "second", "day", "mmdd")
AUTO_TIME_UNITS = {"tafeng": "day", "tmall": "mmdd", "sequences": "day", "amazon": "second",
                   "taobao": "second", "synthetic": "second"}
# Day of a non-leap year on which each month starts (0-based), for the `mmdd` unit.
MONTH_START = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


@dataclass(frozen=True)
class PIMIConfig(ModelConfig):
    """PIMI's settings, beside `ModelConfig`'s.

    Attributes:
        time_span: time intervals are clipped at this many days (the authors' default).
        time_unit: what a stored time is: auto (from the dataset's source) | second | day | mmdd.
        blocks: star-topology blocks.
        heads: heads of the graph's multi-head attention.
    """

    time_span: int = 64
    time_unit: str = "auto"
    blocks: int = 3
    heads: int = 4

    def validate(self) -> None:
        super().validate()
        if self.time_unit not in TIME_UNITS:
            raise UserError(f"model.time_unit: expected one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}")
        if self.time_span < 1 or self.blocks < 1 or self.heads < 1:
            raise UserError("model.time_span, model.blocks and model.heads must be positive")
        if self.dim % self.heads:
            raise UserError(f"model.heads ({self.heads}) must divide model.dim ({self.dim})")


def resolve_time_unit(unit: str, source: str) -> str:
    """`auto` -> the unit the dataset's source stores; an explicit unit is returned unchanged."""
    if unit != "auto":
        return unit
    if source not in AUTO_TIME_UNITS:
        raise UserError(f"model.time_unit: cannot tell the time unit of source {source!r}; "
                        "set model.time_unit to second, day or mmdd")
    return AUTO_TIME_UNITS[source]


def to_days(times: torch.Tensor, unit: str) -> torch.Tensor:
    """Stored times (int64) -> whole days, in the resolved `unit` (second, day or mmdd)."""
    if unit == "second":
        return torch.div(times, SECONDS_PER_DAY, rounding_mode="floor")
    if unit == "mmdd":
        # Padding holds time 0 (month 0): clamp so the lookup stays in range; padded days are never read.
        month = torch.div(times, 100, rounding_mode="floor").clamp(1, 12)
        month_start = torch.tensor(MONTH_START, device=times.device)[month - 1]
        return month_start + times % 100 - 1
    return times


def interval_buckets(times: torch.Tensor, unit: str, span: int) -> torch.Tensor:
    """[B, L] stored times -> [B, L, L] buckets min(|day_i - day_j|, span) (see the module docstring)."""
    days = to_days(times, unit)
    return (days[:, :, None] - days[:, None, :]).abs().clamp(max=span)


class ContextAttention(nn.Module):
    """Multi-head scaled dot-product attention of each query over its own few context vectors.

    `project` maps vectors to their keys and values; callers project each distinct vector once and then
    gather the contexts (a node is the previous, the self and the next of three items), which costs a
    fifth of projecting every gathered context as `nn.MultiheadAttention` would.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.output = nn.Linear(dim, dim)

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.key_value(vectors)

    def forward(self, query: torch.Tensor, context: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """query [..., d], context [..., C, 2d] (projected), usable [..., C] bool -> [..., d]."""
        head_dim = query.shape[-1] // self.heads
        keys, values = context.unflatten(-1, (2, self.heads, head_dim)).unbind(-3)  # [..., C, h, dh] each
        queries = self.query(query).unflatten(-1, (self.heads, head_dim))[..., None, :, :]  # [..., 1, h, dh]
        # Broadcast products, not einsum: with C = 5 contexts einsum's batched matmuls are twice as slow on CPU.
        scores = (queries * keys).sum(-1) * head_dim**-0.5  # [..., C, h]
        weights = torch.softmax(scores.masked_fill(~usable[..., None], NEG_INF), dim=-2)
        return self.output((weights[..., None] * values).sum(-3).flatten(-2))


@register("pimi")
class PIMI(SequentialRecommender):
    config_class = PIMIConfig

    def __init__(self, config: PIMIConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        dim = config.dim
        self.time_unit = resolve_time_unit(config.time_unit, catalogue.source)
        self.position_embedding = nn.Parameter(torch.randn(max_len, dim) * dim**-0.5)
        self.interval_embedding = nn.Embedding(config.time_span + 1, dim)
        nn.init.normal_(self.interval_embedding.weight, std=dim**-0.5)
        self.interval_score = nn.Linear(dim, 1, bias=False)
        self.item_attention = nn.ModuleList(ContextAttention(dim, config.heads) for _ in range(config.blocks))
        self.star_attention = nn.ModuleList(ContextAttention(dim, config.heads) for _ in range(config.blocks - 1))
        self.extractor = MultiInterestSelfAttention(dim, config.interests)

    # --- periodicity -------------------------------------------------------------------------------
    def time_embedding(self, batch: Batch) -> torch.Tensor:
        """[B, L, d]: per item, the attention-weighted embeddings of its intervals to the real items."""
        buckets = interval_buckets(batch.history_times, self.time_unit, self.config.time_span)
        table = self.interval_embedding.weight
        # The score w . emb(bucket) depends only on the bucket: score the table once, then index it.
        scores = value_rows(self.interval_score(table).squeeze(-1), buckets)  # [B, L, L]
        weights = torch.softmax(scores.masked_fill(~batch.mask[:, None, :], NEG_INF), dim=-1)
        # sum_j a_ij emb(bucket_ij) = (a summed per bucket) @ table: [B, L, span+1] instead of [B, L, L, d].
        per_bucket = weights.new_zeros(*weights.shape[:2], len(table)).scatter_add_(2, buckets, weights)
        return per_bucket @ table

    # --- interactivity: the star-topology graph ----------------------------------------------------
    def update_items(self, block: int, nodes: torch.Tensor, inputs: torch.Tensor, star: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Each item node attends to [previous, itself, next, its input, the star]."""
        attention = self.item_attention[block]
        node_kv, input_kv, star_kv = attention.project(nodes), attention.project(inputs), attention.project(star)
        context = torch.stack([F.pad(node_kv, (0, 0, 1, 0))[:, :-1], node_kv, F.pad(node_kv, (0, 0, 0, 1))[:, 1:],
                               input_kv, star_kv[:, None].expand_as(node_kv)], dim=2)  # [B, L, 5, 2d]
        present = torch.ones_like(mask)
        usable = torch.stack([F.pad(mask, (1, 0))[:, :-1], present, F.pad(mask, (0, 1))[:, 1:], present, present],
                             dim=2)  # [B, L, 5]; itself, its input and the star always exist, so no row is empty
        return F.relu(nodes + attention(nodes, context, usable)) * mask[..., None]

    def update_star(self, block: int, star: torch.Tensor, nodes: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
        """The star node attends to [itself, every real item node]."""
        attention = self.star_attention[block]
        context = torch.cat([attention.project(star)[:, None], attention.project(nodes)], dim=1)  # [B, 1+L, 2d]
        usable = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return F.relu(star + attention(star, context, usable))

    def graph(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask[..., None].float()
        star = (inputs * real).sum(1) / real.sum(1)  # the mean input starts the star node
        nodes = inputs
        for block in range(self.config.blocks):
            nodes = self.update_items(block, nodes, inputs, star, mask)
            if block < len(self.star_attention):
                star = self.update_star(block, star, nodes, mask)
        return nodes

    # --- extraction --------------------------------------------------------------------------------
    def interests(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask
        items = self.item_embedding(batch.history) * mask[..., None]
        inputs = (items + self.position_embedding[: mask.shape[1]] + self.time_embedding(batch)) * mask[..., None]
        attention = self.extractor(self.graph(inputs, mask), mask)
        return attention @ items
