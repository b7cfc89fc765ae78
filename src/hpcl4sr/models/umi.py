"""UMI (Chai et al., "User-Aware Multi-Interest Learning for Candidate Matching in Recommenders", SIGIR 2022).

UMI lets the user profile (e.g. Ta-Feng's AGE_GROUP and PIN_CODE) steer multi-interest extraction:
1. dual-attention routing: a user-guided attention scores every history item against the profile,
   a_i = softmax_i(w2 . tanh(W1 [e_i ; p_u])), where p_u = Linear(concat of the field embeddings); the
   importance scales the item before ComiRec-DR's capsule routing (shared `CapsuleRouting`), so each
   interest is squash(sum_i c_ik a_i S_k e_i), the coupling c and the importance a acting together;
2. interest refinement: each interest v_k attends over the profile's field embeddings,
   b_kf = softmax_f((Q v_k) . p_f), and the refined interest is v_k + O (sum_f b_kf p_f), so different
   interests highlight different profile fields;
3. harder negatives: the positive is scored by its best interest (the hard readout) and every sampled
   negative by its own best interest, max_k v_k . e_j, before the shared sampled softmax (log-Q
   correction, accidental hits removed); with `loss: full` every item is scored by its best interest.

Each profile field has its own embedding table whose row 0 is an explicit, learned "unknown" embedding
(a null value, or a user without a profile row). Profile codes live in a non-persistent buffer indexed by
`batch.users`, so checkpoints stay free of user data and follow the dataset they are loaded with.

Profile-free variant: a dataset without a profile (or `use_profile: false`) runs UMI without the user:
the item attention scores items alone (w2 . tanh(W1 e_i)) and there is no interest refinement; only the
dual-attention routing and the harder negatives remain. It says so with a warning at construction.

Departures from the paper, and why:
- the importance a_i is multiplied by the number of real items, so it averages 1 and uniform
  importance reduces the extractor exactly to ComiRec-DR (a softmax over ~30 items would otherwise
  shrink every capsule towards 0 before squash);
- the importance scales the item capsules, so it also weighs the routing agreement of the inner rounds;
- the refinement is a residual sum with one output map, a simple form of the paper's refinement;
- no user-id embedding: validation and test users are never trained on, so an id would carry nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import ModelConfig, SequentialRecommender, register
from hpcl4sr.models.layers import NEG_INF, CapsuleRouting, corrected_sampled_softmax, item_rows, sample_classes

PROFILE_FREE_MESSAGE = "UMI: dataset has no user profile; running the profile-free variant"


@dataclass(frozen=True)
class UMIConfig(ModelConfig):
    """UMI's settings, beside `ModelConfig`'s.

    Attributes:
        routing_iterations: rounds of the capsule routing.
        use_profile: false runs the profile-free variant even when the dataset has a profile.
    """

    routing_iterations: int = 3
    use_profile: bool = True

    def validate(self) -> None:
        super().validate()
        if self.routing_iterations < 1:
            raise UserError("model.routing_iterations must be positive")


@register("umi")
class UMI(SequentialRecommender):
    config_class = UMIConfig

    def __init__(self, config: UMIConfig, catalogue: Catalogue, max_len: int) -> None:
        super().__init__(config, catalogue, max_len)
        dim = config.dim
        profile = catalogue.user_profile() if config.use_profile else None
        self.has_profile = profile is not None
        if profile is None:
            warnings.warn(PROFILE_FREE_MESSAGE, stacklevel=2)
        else:
            codes, sizes = profile
            self.register_buffer("profile_codes", torch.as_tensor(codes, dtype=torch.long), persistent=False)
            self.field_embeddings = nn.ModuleList(nn.Embedding(size, dim) for size in sizes)
            for table in self.field_embeddings:
                nn.init.normal_(table.weight, std=dim**-0.5)
            self.profile_encoder = nn.Linear(len(sizes) * dim, dim)
            self.profile_query = nn.Linear(dim, dim, bias=False)
            self.profile_output = nn.Linear(dim, dim)
        self.importance_hidden = nn.Linear(2 * dim if self.has_profile else dim, 4 * dim)
        # no bias: a constant added to every position's score cancels in the softmax over positions
        self.importance_score = nn.Linear(4 * dim, 1, bias=False)
        self.routing = CapsuleRouting(dim, config.interests, config.routing_iterations)

    def profile_fields(self, users: torch.Tensor) -> torch.Tensor:
        """[B, F, d]: the embedding of each profile field of each user (code 0 = unknown)."""
        codes = self.profile_codes[users]
        return torch.stack([table(codes[:, f]) for f, table in enumerate(self.field_embeddings)], dim=1)

    def importance(self, items: torch.Tensor, fields: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """[B, L]: the user-guided attention over the history, scaled to average 1 over the real items."""
        features = items
        if fields is not None:
            profile = self.profile_encoder(fields.flatten(1))  # p_u
            features = torch.cat([items, profile[:, None].expand_as(items)], dim=-1)
        scores = self.importance_score(torch.tanh(self.importance_hidden(features))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, NEG_INF), dim=-1)
        return weights * mask.sum(1, keepdim=True)

    def refine(self, interests: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """Each interest attends over the profile fields and adds what it highlights."""
        attention = torch.softmax(self.profile_query(interests) @ fields.transpose(1, 2), dim=-1)  # [B, K, F]
        return interests + self.profile_output(attention @ fields)

    def interests(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask
        items = self.item_embedding(batch.history) * mask[..., None]
        fields = self.profile_fields(batch.users) if self.has_profile else None
        weighted = items * self.importance(items, fields, mask)[..., None]
        interests, _ = self.routing(weighted, mask)
        return interests if fields is None else self.refine(interests, fields)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Softmax loss where the target and every negative are each scored by their own best interest."""
        interests, target, table = self.interests(batch), batch.target, self.item_embeddings()
        if self.config.loss == "full":
            logits = torch.einsum("bkd,nd->bkn", interests, table[1:]).amax(dim=1)
            rec = F.cross_entropy(logits, target - 1)
        else:
            classes = sample_classes(target, self.n_items, self.config.negatives * len(target),
                                     self.config.sampler == "log_uniform")
            sparse = self.item_embedding.sparse  # set by train.optimizer: lazy_adam
            positive = torch.einsum("bkd,bd->bk", interests, item_rows(table, target, sparse)).amax(dim=1)
            negative = torch.einsum("bkd,nd->bkn", interests, item_rows(table, classes.negatives, sparse)).amax(dim=1)
            rec = corrected_sampled_softmax(positive, negative, target, classes)
        return {"total": rec, "rec": rec}
