import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.data.prepare import PrepareOptions, prepare, prepare_from_files
from hpcl4sr.data.sources import RawLog
from hpcl4sr.errors import UserError

# (user, item, category, time) in file order. With min_count 2: item c and e are rare; after dropping
# them u4 keeps only d and is dropped. The paper's one pass stops there (d keeps its u2 row), a true
# 2-core goes on to drop d, then u2.
TOY = [
    ("u1", "b", "Y", 5),
    ("u1", "a", "X", 5),  # same time as b: file order breaks the tie, b first
    ("u1", "c", "Z", 1),
    ("u2", "a", "Y", 1),  # a's later rows say Y; its first-seen category X wins
    ("u2", "d", "W", 2),
    ("u3", "a", "X", 3),
    ("u3", "b", "Y", 4),
    ("u4", "d", "W", 1),
    ("u4", "e", "V", 2),
]


def toy_log() -> RawLog:
    frame = pl.DataFrame(TOY, schema=["user", "item", "category", "time"], orient="row")
    return RawLog(interactions=frame.with_row_index("order").with_columns(pl.col("order").cast(pl.Int64)).lazy(),
                  user_features=None)


def sequences(directory: Path) -> dict[str, list[str]]:
    data = SequenceDataset(directory)
    users, items = data.raw_ids("user"), data.raw_ids("item")
    return {users[u]: [items[i] for i in data.items[data.offsets[u]:data.offsets[u + 1]]] for u in range(data.n_users)}


def test_paper_filter_is_items_then_users_once(tmp_path: Path):
    meta = prepare(toy_log(), PrepareOptions(source="toy", min_count=2, seed=0), tmp_path / "out")
    assert sequences(tmp_path / "out") == {"u1": ["b", "a"], "u2": ["a", "d"], "u3": ["a", "b"]}
    assert (meta["users"], meta["items"], meta["interactions"]) == (3, 3, 6)
    data = SequenceDataset(tmp_path / "out")
    # ids by descending popularity: a (3 rows), b (2), d (1)
    assert data.raw_ids("item") == ["<pad>", "a", "b", "d"]
    categories = data.raw_ids("category")
    assert [categories[c] for c in data.item_category[1:]] == ["X", "Y", "W"]  # a keeps first-seen X
    assert data.item_category[0] == 0


def test_kcore_filter_iterates(tmp_path: Path):
    prepare(toy_log(), PrepareOptions(source="toy", filter="kcore", min_count=2), tmp_path / "out")
    assert sequences(tmp_path / "out") == {"u1": ["b", "a"], "u3": ["a", "b"]}


def test_split_is_a_seeded_partition(tmp_path: Path):
    frame = pl.DataFrame({"user": [f"u{i // 3}" for i in range(300)], "item": [str(i % 7) for i in range(300)],
                          "category": ["c"] * 300, "time": list(range(300))})
    raw = RawLog(frame.with_row_index("order").with_columns(pl.col("order").cast(pl.Int64)).lazy(), None)
    prepare(raw, PrepareOptions(source="toy", min_count=1, seed=5), tmp_path / "a")
    prepare(raw, PrepareOptions(source="toy", min_count=1, seed=5), tmp_path / "b")
    prepare(raw, PrepareOptions(source="toy", min_count=1, seed=6), tmp_path / "c")
    a, b, c = (SequenceDataset(tmp_path / name).split_users for name in "abc")
    assert [len(a[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(100))
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])


def test_nothing_left_is_an_error_and_leaves_nothing(tmp_path: Path):
    with pytest.raises(UserError, match="nothing left after filtering"):
        prepare(toy_log(), PrepareOptions(source="toy", min_count=50), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path: Path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        prepare(toy_log(), PrepareOptions(source="toy", min_count=1), tmp_path / "out")


def test_tafeng_matches_paper_table_1(shared_data: Path, tmp_path: Path):
    meta = prepare_from_files("tafeng", [shared_data / "tafeng/ta_feng_all_months_merged.csv.gz"], tmp_path / "tf")
    assert meta["items"] == 10_176
    assert meta["categories"] == 1_297
    assert abs(meta["users"] - 17_590) / 17_590 < 0.01  # paper Table 1; we get 17,658 (PROVENANCE.md)
    assert meta["max_len"] == 30
    assert meta["user_features"] == ["AGE_GROUP", "PIN_CODE"]
    saved = json.loads((tmp_path / "tf/meta.json").read_text())
    assert saved["train_users"] + saved["valid_users"] + saved["test_users"] == saved["users"]
    data = SequenceDataset(tmp_path / "tf")
    assert (np.diff(data.offsets) >= 12).all()
    # each user's sequence is in time order
    times = np.asarray(data.times)
    same_user = np.repeat(np.arange(data.n_users), np.diff(data.offsets))
    assert (np.diff(times)[np.diff(same_user) == 0] >= 0).all()
