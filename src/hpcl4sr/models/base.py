"""The model contract and the registry.

Every model is an `nn.Module` that owns its interests and its loss (RecBole's contract), so one trainer,
one evaluator and one server serve them all:

- `interests(batch) -> Tensor[B, K, d]` (K = 1 for single-vector models);
- `item_embeddings() -> Tensor[n_items + 1, d]`, row 0 being padding;
- `loss(batch) -> dict[str, Tensor]` with `total` and each named term (`rec`, `class`, `cl`, ...);
- `rank(batch, n, exclude, index) -> (items, scores, interest)`, the top-n items of each user. Every caller
  (evaluation, recommendations, analyses) ranks through it; the default retrieves with each interest
  over the item table and merges, and a model that scores items another way overrides it.

`model.repeat: history` adds a learned "buy it again" score r (models.layers.RepeatScore) to the items of
the user's own history, for every SGD model through this class: `recommendation_loss` trains it inside
the model's softmax and `rank` adds it when ranking (evaluation, recommendations and serving alike).

A *fitted* model (`fitted = True`: pop, repeat, itemknn) is computed from the training users' sequences
instead of trained with SGD. It overrides `fit` and `rank`, keeps everything it needs at inference in
persistent buffers (so a run's best.pt restores it), has no item table and no interest vectors, and
its config class need not derive from `ModelConfig`. The trainer calls `fit` in place of its loop.

A model is registered by name with its own frozen config dataclass, whose fields are the keys of the
`model:` section of a run config.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.layers import (
    NegativeReweighting,
    RepeatScore,
    full_softmax_loss,
    hard_readout,
    sampled_softmax_loss,
)
from hpcl4sr.retrieval import merge_ranked_lists, topk_multi_interest

if TYPE_CHECKING:
    from hpcl4sr.serve.index import ItemIndex

MODELS: dict[str, type[SequentialRecommender]] = {}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters shared by every model; a model's own config subclasses this.

    Attributes:
        dim: embedding size d.
        interests: K, the number of interest vectors per user (1 for single-vector models).
        loss: sampled (softmax over shared sampled negatives) | full (softmax over every item).
        negatives: sampled negatives per batch = negatives x batch size, shared by the batch.
        sampler: log_uniform (over popularity ranks, log-Q corrected) | uniform.
        embedding_init: glorot (TensorFlow's default, as ComiRec) | normal (N(0, 1/d)).
        repeat: history | none: add the learned repeat score r(u, j) (models.layers.RepeatScore: the item's
            count and recency in the history, the user's repeat rate and a bias, all initialised to 0) to
            the score of each item of the user's history, in the loss and in every ranking. The default
            is history, chosen on the valid users (docs/results.md, "Repeat-aware scoring"): ComiRec-SA,
            seed 1, 4,000 iterations, valid R@50 12.24 -> 15.48 on Ta-Feng (11% of its valid targets are
            already in the history) and 11.15 -> 11.26 on Amazon Beauty (none are), where r learns to push
            the history items down instead. `none` is the published models as they were (the paper's rows).
    """

    dim: int = 64
    interests: int = 4
    loss: str = "sampled"
    negatives: int = 10
    sampler: str = "log_uniform"
    embedding_init: str = "glorot"
    repeat: str = "history"  # chosen on valid: see the docstring

    def validate(self) -> None:
        if self.loss not in ("sampled", "full"):
            raise UserError(f"model.loss: expected sampled or full, got {self.loss!r}")
        if self.embedding_init not in ("normal", "glorot"):
            raise UserError(f"model.embedding_init: expected normal or glorot, got {self.embedding_init!r}")
        if self.sampler not in ("log_uniform", "uniform"):
            raise UserError(f"model.sampler: expected log_uniform or uniform, got {self.sampler!r}")
        if self.repeat not in ("none", "history"):
            raise UserError(f"model.repeat: expected none or history, got {self.repeat!r}")
        if self.dim <= 0 or self.interests <= 0 or self.negatives <= 0:
            raise UserError("model.dim, model.interests and model.negatives must be positive")


class SequentialRecommender(nn.Module):
    """Base of every model: the item table, the hard readout and the recommendation loss.

    Subclasses implement `interests`; those with extra loss terms extend `loss`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[Any]] = ModelConfig
    fitted: ClassVar[bool] = False  # True: computed by `fit` from the training log, not trained with SGD

    def __init__(self, config: Any, catalogue: Catalogue, max_len: int) -> None:
        super().__init__()
        self.config = config
        self.n_items = catalogue.n_items
        self.max_len = max_len
        if self.fitted:  # a fitted model scores items without an item table
            return
        self.item_embedding = nn.Embedding(self.n_items + 1, config.dim, padding_idx=0)
        if config.embedding_init == "glorot":  # uniform(+-sqrt(6 / (N + 1 + d))), tiny for big catalogues
            nn.init.xavier_uniform_(self.item_embedding.weight)
        else:
            nn.init.normal_(self.item_embedding.weight, std=config.dim**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.repeat_score = RepeatScore(max_len) if config.repeat == "history" else None

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the model's docstring (its module's when the class has none): its paper."""
        doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
        return " ".join(doc.strip().split("\n\n")[0].split())

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live (a fitted model has buffers but no parameters)."""
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def fit(self, dataset: SequenceDataset, max_len: int, select: Callable[[dict[str, Any]], float]
            ) -> dict[str, Any]:
        """Fitted models only: compute the model from the training users' sequences; return its chosen settings.

        For each candidate setting (e.g. a grid over the config's lists of values) the model sets itself up
        and calls `select(setting)`, which evaluates it as it stands on the valid users and returns the
        score to maximise; it then keeps the first candidate with the highest score. The test split is never
        read. The returned mapping holds the chosen value of each config field searched over, which the
        trainer writes into the run's config.yaml, so `load_run` rebuilds buffers of the right shapes.
        """
        raise NotImplementedError(f"{self.name} is trained with SGD, not fitted")

    def begin_step(self, step: int) -> None:
        """Called by the trainer before each training step, `step` being the number of steps done so far.

        A model whose objective follows a schedule (HPCL4SR's lambda2 warm-up) sets it here, from the step
        alone, so a resumed run follows the same schedule. The default has none.
        """

    def interests(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight

    def rank(
        self, batch: Batch, n: int, exclude: torch.Tensor | None = None, index: ItemIndex | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-n item ids [B, n], their scores and the interest that retrieved each, best first.

        `exclude` [B, L] (0-padded item ids) never appear. Exact (`topk_multi_interest`) unless an `index`
        built over `item_embeddings()` is given (hpcl4sr.serve.index: faiss for large catalogues); models
        that override `rank` ignore the index.

        With `repeat: history` an item's score is its best interest's + r (zero outside the history), and
        the two kinds of item are ranked apart, then merged: the index retrieves the top-n among the items
        NOT in the history (the history joins `exclude`), the <= max_len history items are scored exactly
        (credited to their best interest), and the two lists merge by score, then item id. Since r only
        raises or lowers history items, the result equals scoring every item exactly, without the index
        ever seeing r.
        """
        interests = self.interests(batch)
        if self.repeat_score is None:
            if index is not None:
                return index.rank(interests, n, exclude=exclude)
            return topk_multi_interest(interests, self.item_embeddings(), n, exclude=exclude)
        with torch.no_grad():
            history = self.repeat_score(batch.history, batch.mask)
            unseen = history.items if exclude is None else torch.cat([exclude.to(history.items.device),
                                                                     history.items], dim=1)
            if index is not None:
                retrieved = index.rank(interests, n, exclude=unseen)
            else:
                retrieved = topk_multi_interest(interests, self.item_embeddings(), n, exclude=unseen)
            per_interest = torch.einsum("bkd,bld->bkl", interests, self.item_embeddings()[history.items])
            best, interest = per_interest.max(dim=1)  # ties: the smaller interest index
            scores = best + history.repeat
            dropped = history.items == 0
            if exclude is not None:
                dropped |= (history.items[:, :, None] == exclude.to(history.items.device)[:, None, :]).any(-1)
            items = history.items.masked_fill(dropped, 0)
            scores = scores.masked_fill(dropped, float("-inf"))
            return merge_ranked_lists(
                torch.cat([retrieved[0], items], dim=1),
                torch.cat([retrieved[1], scores.to(retrieved[1].dtype)], dim=1),
                torch.cat([retrieved[2], interest.masked_fill(dropped, -1)], dim=1),
                n,
            )

    def recommendation_loss(
        self, user_vectors: torch.Tensor, batch: Batch, reweight: NegativeReweighting | None = None
    ) -> torch.Tensor:
        """Softmax loss of `user_vectors` against the batch's target items, sampled or full.

        `user_vectors` is the readout [B, d], or [B, K, d] for a model that scores every item by its best
        interest (UMI). `reweight` adds log weights to the negatives' logits (REMI's hard negatives). With
        `repeat: history`, the repeat score r of the user's history items joins their logits (the
        sampled softmax then counts those items exactly: see `layers.corrected_sampled_softmax`).
        """
        history = None if self.repeat_score is None else self.repeat_score(batch.history, batch.mask)
        if self.config.loss == "full":
            return full_softmax_loss(user_vectors, batch.target, self.item_embeddings(), reweight, history)
        return sampled_softmax_loss(
            user_vectors,
            batch.target,
            self.item_embeddings(),
            n_negatives=self.config.negatives * len(batch.target),
            log_uniform=self.config.sampler == "log_uniform",
            reweight=reweight,
            history=history,
            sparse_gradient=self.item_embedding.sparse,  # set by train.optimizer: lazy_adam
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The training losses: `loss` behind `forward`, which DistributedDataParallel and torch.compile wrap."""
        return self.loss(batch)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """ComiRec's training objective: the interest closest to the target, then softmax loss."""
        interests = self.interests(batch)
        readout = hard_readout(interests, self.item_embedding(batch.target))
        rec = self.recommendation_loss(readout, batch)
        return {"total": rec, "rec": rec}


def register(name: str) -> Callable[[type[SequentialRecommender]], type[SequentialRecommender]]:
    """Class decorator: make a model available to the trainer and the CLI under `name`."""

    def add(cls: type[SequentialRecommender]) -> type[SequentialRecommender]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def model_class(name: str) -> type[SequentialRecommender]:
    import hpcl4sr.models  # noqa: F401  (importing the package registers every model)

    if name not in MODELS:
        raise UserError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]
