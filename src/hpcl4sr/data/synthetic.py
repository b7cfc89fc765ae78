"""Synthetic interaction logs with planted multi-category interests.

Real logs cannot always be shipped or fetched, and a multi-interest model needs data where several
interests exist and sequences carry a signal. Here categories are grouped into latent interest clusters,
each user mixes a few clusters, consecutive interactions tend to stay on the current interest, and items are
drawn with Zipf-like popularity inside a cluster. Everything is vectorised numpy over all interactions at
once, so a Tmall-sized log (35M rows) is generated in seconds and can exercise the big-data paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from hpcl4sr.atomic import atomic_output
from hpcl4sr.errors import UserError

CATEGORIES_PER_CLUSTER = 8
STAY_PROBABILITY = 0.7
LENGTH_SIGMA = 1.0
START_TIME = 1_600_000_000  # unix seconds (September 2020); any monotone origin would do
MEAN_GAP_SECONDS = 86_400


def synthesize(
    users: int,
    items: int,
    categories: int,
    seed: int = 0,
    interests_per_user: int = 3,
    mean_length: float = 40.0,
    min_length: int = 12,
    popularity_skew: float = 1.0,
) -> pl.DataFrame:
    """Generate the interactions table (user, item, category, time), one user's rows in time order.

    Ids are strings like "u12", "i7", "c3". Every user has at least `min_length` interactions and a length
    drawn from a shifted lognormal with mean `mean_length`; each item has exactly one category; the same
    arguments always give the same table.
    """
    _check(users, items, categories, interests_per_user, mean_length, min_length, popularity_skew)
    rng = np.random.default_rng(seed)
    n_clusters = min(categories, max(2, round(categories / CATEGORIES_PER_CLUSTER)))
    category_cluster = rng.permutation(np.arange(categories) % n_clusters)
    # every category gets at least one item, so every cluster can be sampled from
    item_category = rng.permutation(
        np.concatenate([np.arange(categories), rng.integers(0, categories, items - categories)])
    )
    sampler = _ClusterItems(category_cluster[item_category], n_clusters, popularity_skew, rng)

    interests = _distinct_clusters(rng, users, n_clusters, min(interests_per_user, n_clusters))
    mixture = np.cumsum(rng.dirichlet(np.ones(interests.shape[1]), size=users), axis=1)
    lengths = _lengths(rng, users, mean_length, min_length)
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(users, dtype=np.int32), lengths)

    # an interest is drawn from the user's mixture at each switch and kept until the next one
    switch = rng.random(total, dtype=np.float32) >= STAY_PROBABILITY
    switch[starts] = True
    switch_at = np.flatnonzero(switch)
    switch_owner = owner[switch_at]
    draw = rng.random(switch_at.size)
    slot_at_switch = (draw[:, None] >= mixture[switch_owner, :-1]).sum(axis=1)
    slot = slot_at_switch[np.cumsum(switch) - 1]
    cluster = interests[owner, slot]

    item = sampler.draw(cluster, rng)
    time = _times(rng, lengths, starts, owner)
    return pl.DataFrame(
        {
            "user": _names("u", users).gather(owner),
            "item": _names("i", items).gather(item),
            "category": _names("c", categories).gather(item_category[item]),
            "time": time,
        }
    )


def write_interactions(df: pl.DataFrame, path: Path) -> None:
    """Write the table as .csv or .parquet (by suffix), atomically so a reader never sees half a file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UserError(f"{path}: unsupported output type '{suffix}'; expected a .csv or .parquet file")
    with atomic_output(path) as temp:
        if suffix == ".csv":
            df.write_csv(temp)
        else:
            df.write_parquet(temp)


def _check(
    users: int,
    items: int,
    categories: int,
    interests_per_user: int,
    mean_length: float,
    min_length: int,
    popularity_skew: float,
) -> None:
    """Reject arguments the generative story cannot honour, naming the argument."""
    rules = [
        (users >= 1, f"users: expected at least 1, got {users}"),
        (categories >= 2, f"categories: expected at least 2 (interests need clusters), got {categories}"),
        (items >= categories, f"items: expected at least categories ({categories}), got {items}"),
        (interests_per_user >= 1, f"interests_per_user: expected at least 1, got {interests_per_user}"),
        (min_length >= 1, f"min_length: expected at least 1, got {min_length}"),
        (
            mean_length >= min_length,
            f"mean_length: expected at least min_length ({min_length}), got {mean_length}",
        ),
        (popularity_skew >= 0, f"popularity_skew: expected a value >= 0, got {popularity_skew}"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)


class _ClusterItems:
    """Draw items of given clusters with Zipf-like popularity, for many draws at once.

    Draws are grouped by cluster (a radix argsort on a small integer type) and each group is sampled by
    inverse CDF over its own cluster's items: the per-cluster tables stay in cache, which makes this several
    times faster than one search over all items. The loop runs over clusters, never over interactions.
    """

    def __init__(self, item_cluster: np.ndarray, n_clusters: int, skew: float, rng: np.random.Generator):
        popularity = (rng.permutation(item_cluster.size) + 1.0) ** -skew
        self.items = np.argsort(item_cluster, kind="stable").astype(np.int32)
        self.bounds = np.searchsorted(item_cluster[self.items], np.arange(n_clusters + 1))
        self.cdfs = [
            np.cumsum(popularity[self.items[a:b]])
            for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)
        ]

    def draw(self, cluster: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grouped = np.argsort(cluster.astype(np.min_scalar_type(len(self.cdfs))), kind="stable")
        edges = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=len(self.cdfs)))])
        drawn = np.empty(cluster.size, dtype=np.int32)
        for c, cdf in enumerate(self.cdfs):
            rows = grouped[edges[c] : edges[c + 1]]
            picks = np.searchsorted(cdf, rng.random(rows.size) * cdf[-1], side="right")
            drawn[rows] = self.items[self.bounds[c] + np.minimum(picks, cdf.size - 1)]
        return drawn


def _distinct_clusters(rng: np.random.Generator, users: int, n_clusters: int, k: int) -> np.ndarray:
    """k distinct clusters per user, uniformly (Floyd's algorithm, vectorised over users)."""
    chosen = np.empty((users, k), dtype=np.min_scalar_type(n_clusters))
    for column, upper in enumerate(range(n_clusters - k, n_clusters)):
        candidate = rng.integers(0, upper + 1, size=users)
        taken = (chosen[:, :column] == candidate[:, None]).any(axis=1)
        chosen[:, column] = np.where(taken, upper, candidate)
    return chosen


def _lengths(rng: np.random.Generator, users: int, mean_length: float, min_length: int) -> np.ndarray:
    """min_length plus a lognormal excess whose mean makes the total mean `mean_length` (long-tailed, as in
    real logs)."""
    excess = mean_length - min_length
    if excess <= 0:
        return np.full(users, min_length, dtype=np.int64)
    mu = np.log(excess) - LENGTH_SIGMA**2 / 2
    return min_length + np.rint(rng.lognormal(mu, LENGTH_SIGMA, size=users)).astype(np.int64)


def _times(
    rng: np.random.Generator, lengths: np.ndarray, starts: np.ndarray, owner: np.ndarray
) -> np.ndarray:
    """Increasing unix-second times per user: a random start within a month, then random gaps (mean one
    day; zero gaps are possible and leave the tie to the row order)."""
    gaps = rng.integers(0, 2 * MEAN_GAP_SECONDS, size=int(lengths.sum()), dtype=np.int64)
    gaps[starts] = rng.integers(0, 30 * MEAN_GAP_SECONDS, size=lengths.size)
    running = np.cumsum(gaps)
    return START_TIME + running - (running[starts] - gaps[starts])[owner]


def _names(prefix: str, count: int) -> pl.Series:
    """The id strings prefix0..prefix{count-1}, built once and gathered per row (no per-row formatting)."""
    return pl.select(pl.format(f"{prefix}{{}}", pl.int_range(count))).to_series()
