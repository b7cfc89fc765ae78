"""The Python API: `rec = hpcl4sr.load(path)`, then `rec.recommend(user=...)` or `rec.recommend(history=...)`.

A known user is served from their whole known sequence (its last max_len items), as `hpcl4sr recommend`
always did. A history (raw item ids, oldest first, e.g. a fresh session of clicks) is mapped to item ids;
ids the dataset never saw are reported in `unknown` and skipped, and when none is known the answer is the
most popular items with `cold` set. Fresh histories carry no times unless given: PIMI's time intervals are
then all 0 (as if every item were bought the same day). UMI has no profile for a fresh history: every
profile field takes its learned "unknown" embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpcl4sr.config import RunConfig
from hpcl4sr.data.dataset import SPLITS, Batch
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import SequentialRecommender
from hpcl4sr.run import build_model, load_run
from hpcl4sr.serve.artifact import ServingData, is_artifact, read_artifact
from hpcl4sr.serve.index import ItemIndex, make_index

MAX_N = 1000


class UnknownId(UserError):
    """A user or item id the model does not know (the HTTP service answers 404)."""


@dataclass
class Item:
    """One item of a list: its raw id and category; score and interest when it was retrieved."""

    item: str
    category: str
    score: float | None = None
    interest: int | None = None  # index of the interest that retrieved it; None for popular (cold) items


@dataclass
class Recommendations:
    """The answer of `Recommender.recommend`."""

    items: list[Item]
    history: list[Item]  # the items the model saw, oldest first
    user: str | None = None  # the raw user id, when asked for a user
    split: str | None = None  # the split that user belongs to
    unknown: list[str] = field(default_factory=list)  # history ids the model does not know (skipped)
    cold: bool = False  # no known history item: `items` are the most popular items

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what dataclasses.asdict gives, several times faster)."""
        return {**vars(self), "items": [{**vars(row)} for row in self.items],
                "history": [{**vars(row)} for row in self.history], "unknown": list(self.unknown)}


@dataclass
class Interest:
    """One of the K interests: its vector and its own top items."""

    index: int
    vector: list[float]
    items: list[Item]


@dataclass
class Query:
    """A resolved request: the batch row the model sees, and what to report back."""

    history: np.ndarray  # int64 [max_len], right-padded
    times: np.ndarray  # int64 [max_len]
    user: int  # user index, or the catalogue's unknown user
    raw_user: str | None = None
    unknown: list[str] = field(default_factory=list)

    @property
    def cold(self) -> bool:
        return not self.history.any()


class Recommender:
    """A trained model with its id maps, ready to answer requests (see the module docstring)."""

    def __init__(self, model: SequentialRecommender, config: RunConfig, data: ServingData,
                 index: str = "exact") -> None:
        self.model = model.eval()
        self.config = config
        self.data = data
        self.device = model.device
        # Models that rank items another way (they override `rank`) ignore the index.
        self.index: ItemIndex | None = None
        if index != "exact" and type(model).rank is SequentialRecommender.rank:
            self.index = make_index(index, model.item_embeddings())
        self.item_category_ids = [data.category_ids[c] for c in data.catalogue.item_category.tolist()]
        self.popular = np.argsort(-data.popularity[1:], kind="stable")[:MAX_N] + 1

    @property
    def max_len(self) -> int:
        return self.model.max_len

    # --- requests -> batches -----------------------------------------------------------------------
    def query(self, user: str | None = None, history: Sequence[str | int] | None = None,
              times: Sequence[int] | None = None) -> Query:
        """Resolve exactly one of a raw user id or a history of raw item ids (oldest first)."""
        if (user is None) == (history is None):
            raise UserError("give either a user or a history, not both and not neither")
        if user is not None:
            index = self.data.user_index.get(str(user))
            if index is None:
                raise UnknownId(f"unknown user {user!r}")
            return Query(self.data.histories[index], self.data.history_times[index], index, str(user))
        if times is not None and len(times) != len(history):
            raise UserError(f"times: expected one per history item ({len(history)}), got {len(times)}")
        raw = [str(item) for item in history]
        known = [(self.data.item_index[item], i) for i, item in enumerate(raw) if item in self.data.item_index]
        known = known[-self.max_len:]
        row, row_times = np.zeros(self.max_len, dtype=np.int64), np.zeros(self.max_len, dtype=np.int64)
        row[: len(known)] = [item for item, _ in known]
        if times is not None:
            row_times[: len(known)] = [int(times[i]) for _, i in known]
        unknown = [item for item in raw if item not in self.data.item_index]
        return Query(row, row_times, self.data.catalogue.unknown_user, unknown=unknown)

    def batch(self, queries: Sequence[Query]) -> Batch:
        history = torch.from_numpy(np.stack([q.history for q in queries]))
        return Batch(history=history, mask=history > 0,
                     history_times=torch.from_numpy(np.stack([q.times for q in queries])),
                     users=torch.tensor([q.user for q in queries], dtype=torch.long)).to(self.device)

    # --- answers -----------------------------------------------------------------------------------
    def item_of(self, item: int, score: float | None = None, interest: int | None = None) -> Item:
        return Item(self.data.item_ids[item], self.item_category_ids[item], score, interest)

    def history_of(self, query: Query) -> list[Item]:
        return [self.item_of(item) for item in query.history[query.history > 0].tolist()]

    def popular_items(self, n: int) -> list[Item]:
        return [self.item_of(item, float(self.data.popularity[item])) for item in self.popular[:n].tolist()]

    @torch.no_grad()
    def recommend_queries(self, queries: Sequence[Query], n: int = 20) -> list[Recommendations]:
        """Answer several resolved queries with one forward pass (the HTTP service's micro-batches)."""
        check_n(n)
        warm = [q for q in queries if not q.cold]
        ranked = iter(())
        if warm:
            items, scores, interest = self.model.rank(self.batch(warm), n, **self._index_argument())
            ranked = iter(zip(items.tolist(), scores.tolist(), interest.tolist()))
        answers = []
        for query in queries:
            if query.cold:
                listed = self.popular_items(n)
            else:
                row_items, row_scores, row_interest = next(ranked)
                listed = [self.item_of(item, round(score, 5), k)
                          for item, score, k in zip(row_items, row_scores, row_interest) if item > 0]
            split = SPLITS[int(self.data.user_split[query.user])] if query.raw_user is not None else None
            answers.append(Recommendations(listed, self.history_of(query), query.raw_user, split, query.unknown,
                                           query.cold))
        return answers

    def _index_argument(self) -> dict[str, ItemIndex]:
        return {"index": self.index} if self.index is not None else {}

    def recommend(self, user: str | None = None, history: Sequence[str | int] | None = None, n: int = 20,
                  times: Sequence[int] | None = None) -> Recommendations:
        """Top-n items for a known raw user id, or for a history of raw item ids (oldest first).

        Each item carries its raw id, category, score and the interest that retrieved it. `times` (one per
        history item, in the dataset's time unit) feeds PIMI's intervals; without them they are 0.
        """
        return self.recommend_queries([self.query(user, history, times)], n)[0]

    @torch.no_grad()
    def interests(self, user: str | None = None, history: Sequence[str | int] | None = None, n: int = 10,
                  times: Sequence[int] | None = None) -> list[Interest]:
        """The K interest vectors of a user or history, each with its own top-n items (empty when the
        history is cold or the model has no interest vectors)."""
        check_n(n)
        query = self.query(user, history, times)
        if query.cold:
            return []
        try:
            vectors = self.model.interests(self.batch([query]))[0]
        except NotImplementedError:  # a model that scores items without interest vectors
            return []
        single = vectors[:, None, :]  # each interest ranked on its own: K users of one interest
        if self.index is not None:
            items, scores, _ = self.index.rank(single, n)
        else:
            items, scores, _ = make_index("exact", self.model.item_embeddings()).rank(single, n)
        return [Interest(k, [round(v, 6) for v in vectors[k].tolist()],
                         [self.item_of(item, round(score, 5), k)
                          for item, score in zip(items[k].tolist(), scores[k].tolist()) if item > 0])
                for k in range(len(vectors))]

    def item(self, item_id: str | int) -> dict[str, Any]:
        """A raw item id's category and how often it occurs in the dataset."""
        index = self.data.item_index.get(str(item_id))
        if index is None:
            raise UnknownId(f"unknown item {item_id!r}")
        return {"item": str(item_id), "category": self.item_of(index).category,
                "interactions": int(self.data.popularity[index])}

    def users(self, limit: int = 100) -> list[str]:
        """The first `limit` raw user ids (for pickers)."""
        return self.data.user_ids[:limit]

    def evaluate(self, split: str = "test", filter_history: bool = False) -> dict[str, float]:
        """The paper's metrics on a split; needs the dataset (a run directory, or `load(..., data=DIR)`)."""
        from hpcl4sr.evaluate import evaluate_model

        if self.data.dataset is None:
            raise UserError("evaluate needs the prepared dataset: load the run directory, or pass data=DIR "
                            "to hpcl4sr.load for an export")
        return evaluate_model(self.model, self.data.dataset, split, self.config.train.eval_batch_size,
                              filter_history=filter_history)


def check_n(n: int) -> None:
    if not 1 <= n <= MAX_N:
        raise UserError(f"n: expected an integer in [1, {MAX_N}], got {n}")


def load(path: str | Path, data: str | Path | None = None, index: str = "exact", device: str = "cpu",
         checkpoint: str = "best.pt") -> Recommender:
    """`hpcl4sr.load`: a `Recommender` from a run directory or an export (see there)."""
    path = Path(path)
    if is_artifact(path):
        config, serving, weights = read_artifact(path)
        model = build_model(config, serving.catalogue, config.data.max_len)
        model.load_state_dict(weights)
        if data is not None:
            from hpcl4sr.data.dataset import SequenceDataset

            serving.dataset = SequenceDataset(data)
        model = model.to(torch.device(device))
    elif (path / "config.yaml").is_file():
        config, dataset, model = load_run(path, checkpoint, device, data=Path(data) if data else None)
        serving = ServingData.from_dataset(dataset, model.max_len)
    else:
        raise UserError(f"{path}: neither a run directory (config.yaml) nor an export (artifact.json)")
    return Recommender(model, config, serving, index)


__all__ = ["Interest", "Item", "Recommendations", "Recommender", "UnknownId", "load"]
