"""The synthetic generator: shape, determinism, and that the planted interests are really there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hpcl4sr.data.sources import read_source
from hpcl4sr.data.synthetic import synthesize, write_interactions
from hpcl4sr.errors import UserError

ARGS = {"users": 1500, "items": 1200, "categories": 160, "seed": 3, "mean_length": 40.0, "min_length": 12}


@pytest.fixture(scope="module")
def log() -> pl.DataFrame:
    return synthesize(**ARGS)


def test_deterministic_for_a_seed(log: pl.DataFrame) -> None:
    assert synthesize(**ARGS).equals(log)
    assert not synthesize(**{**ARGS, "seed": 4}).equals(log)


def test_shape_and_counts(log: pl.DataFrame) -> None:
    assert dict(log.schema) == {"user": pl.String, "item": pl.String, "category": pl.String, "time": pl.Int64}
    assert log["user"].n_unique() == 1500
    assert log["item"].n_unique() <= 1200 and log["category"].n_unique() <= 160
    assert log["category"].n_unique() > 150  # every category has items; nearly all get drawn
    assert log["user"].str.starts_with("u").all() and log["item"].str.starts_with("i").all()
    assert log["category"].str.starts_with("c").all()
    lengths = log.group_by("user").len()["len"]
    assert lengths.min() >= 12
    assert 36 < lengths.mean() < 44
    assert log.group_by("item").agg(pl.col("category").n_unique())["category"].max() == 1
    times_increase = log.group_by("user", maintain_order=True).agg(pl.col("time").diff().min() >= 0)
    assert times_increase["time"].all()


def _top_share(frame: pl.DataFrame, k: int) -> float:
    """Mean share of a user's interactions that fall in the user's k most frequent categories."""
    counts = frame.group_by("user", "category").len()
    top = (
        counts.sort("len", descending=True)
        .group_by("user")
        .agg(pl.col("len").head(k).sum(), total=pl.col("len").sum())
    )
    return float((top["len"] / top["total"]).mean())


def test_users_concentrate_on_few_interest_clusters(log: pl.DataFrame) -> None:
    # 160 categories make 20 clusters of 8 and each user has 3 of them; the same rows with categories
    # shuffled across users (same category popularity, no planted interests) spread far wider
    shuffled = log.with_columns(pl.col("category").shuffle(seed=0))
    assert _top_share(log, 8) > 0.75
    assert _top_share(shuffled, 8) < 0.55

    def distinct(frame: pl.DataFrame) -> pl.Series:
        return frame.group_by("user").agg(pl.col("category").n_unique())["category"]

    assert distinct(log).max() <= 3 * 8
    assert distinct(log).mean() < 0.5 * distinct(shuffled).mean()


def test_sequences_carry_interest_persistence(log: pl.DataFrame) -> None:
    def same_category_rate(frame: pl.DataFrame) -> float:
        same = frame.select((pl.col("category") == pl.col("category").shift(1).over("user")).drop_nulls())
        return float(same.to_series().mean())

    within_user_shuffle = log.with_columns(pl.col("category").shuffle(seed=1).over("user"))
    assert same_category_rate(log) > 1.2 * same_category_rate(within_user_shuffle)


def test_popularity_skew_concentrates_items() -> None:
    def top_decile_share(skew: float) -> float:
        counts = synthesize(**{**ARGS, "popularity_skew": skew}).group_by("item").len()["len"].to_numpy()
        counts = np.sort(counts)[::-1]
        return counts[: len(counts) // 10].sum() / counts.sum()

    assert top_decile_share(1.2) > top_decile_share(0.0) + 0.2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"categories": 1}, "categories: expected at least 2"),
        ({"items": 100}, r"items: expected at least categories \(160\)"),
        ({"mean_length": 5.0}, r"mean_length: expected at least min_length \(12\)"),
        ({"users": 0}, "users: expected at least 1"),
    ],
)
def test_bad_arguments(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        synthesize(**{**ARGS, **change})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_round_trip_through_reader(tmp_path: Path, suffix: str) -> None:
    frame = synthesize(users=50, items=100, categories=16, seed=1, mean_length=15.0)
    path = tmp_path / "out" / f"synthetic{suffix}"
    write_interactions(frame, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    back = read_source(suffix[1:], [path]).interactions.collect()
    assert back.drop("order").equals(frame)
    assert back["order"].to_list() == list(range(frame.height))


def test_write_rejects_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"x\.json: unsupported output type '\.json'; expected a \.csv or \.parquet"
    ):
        write_interactions(synthesize(users=5, items=20, categories=4), tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []
