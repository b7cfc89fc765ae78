"""The export artifact rebuilds every registered model without its dataset, with identical answers."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import hpcl4sr
from hpcl4sr.errors import UserError
from hpcl4sr.models import MODELS, model_class
from hpcl4sr.serve.export import export_run
from hpcl4sr.serve.index import INDEX_KINDS

FAISS = importlib.util.find_spec("faiss") is not None
model_class("hpcl4sr")  # fills MODELS


def ranked(rec, **query) -> list[tuple[str, str, float, int | None]]:
    answer = rec.recommend(n=25, **query)
    return [(row.item, row.category, row.score, row.interest) for row in answer.items]


ROUND_TRIPS = [(name, "none") for name in sorted(MODELS)] + [
    (name, "history") for name in sorted(MODELS) if not MODELS[name].fitted
]


@pytest.mark.filterwarnings("ignore:UMI")
@pytest.mark.parametrize(("name", "repeat"), ROUND_TRIPS)
def test_export_round_trip_without_the_dataset(name, repeat, data_copy: Path, tmp_path: Path, trained):
    rec = trained(name, data_copy, repeat=repeat)
    users = rec.data.user_ids[:: max(1, len(rec.data.user_ids) // 15)]
    history = [rec.data.item_ids[i] for i in (5, 17, 3, 42)] + ["never-seen"]
    before = {user: ranked(rec, user=user) for user in users}
    before_history = ranked(rec, history=history)
    batch = rec.data.user_batch(np.arange(40))
    with torch.no_grad():
        interests = None if rec.model.fitted else rec.model.interests(batch)

    export_run(rec.model, rec.config, rec.data, tmp_path / "export")
    data_copy.rename(tmp_path / "moved")  # nothing may read the dataset any more
    loaded = hpcl4sr.load(tmp_path / "export")

    assert loaded.max_len == 20 and loaded.data.dataset is None
    weights = loaded.model.state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in rec.model.state_dict().items())
    if interests is not None:
        with torch.no_grad():
            assert torch.equal(loaded.model.interests(batch), interests)
    assert {user: ranked(loaded, user=user) for user in users} == before
    assert ranked(loaded, history=history) == before_history
    with pytest.raises(UserError, match="evaluate needs the prepared dataset"):
        loaded.evaluate("test")


@pytest.mark.parametrize("index", INDEX_KINDS)
def test_every_index_backend_round_trips_and_agrees_with_exact(index, data_copy: Path, tmp_path: Path, trained):
    if index != "exact" and not FAISS:
        pytest.skip("faiss is not installed (pip install 'hpcl4sr[faiss]')")
    rec = trained("comirec-sa", data_copy)
    export_run(rec.model, rec.config, rec.data, tmp_path / "export")
    from_run = hpcl4sr.load(tmp_path / "export", index=index)
    users = rec.data.user_ids[:20]
    exact = {user: [row[0] for row in ranked(rec, user=user)] for user in users}
    found = {user: [row[0] for row in ranked(from_run, user=user)] for user in users}
    if index in ("exact", "faiss-flat"):
        assert found == exact
    else:  # approximate: most of the exact top 25 (a 300-item catalogue is easy for HNSW and IVF)
        overlap = np.mean([len(set(found[u]) & set(exact[u])) / len(exact[u]) for u in users])
        assert overlap >= 0.9


def test_unknown_ids_are_reported_and_a_cold_history_gets_popular_items(data_copy: Path, trained):
    rec = trained("comirec-sa", data_copy, steps=1)
    known = rec.data.item_ids[7]
    warm = rec.recommend(history=["nope", known, "nada"], n=5)
    assert warm.unknown == ["nope", "nada"] and not warm.cold
    assert [row.item for row in warm.history] == [known]
    assert all(row.interest is not None for row in warm.items)
    cold = rec.recommend(history=["nope"], n=5)
    assert cold.cold and cold.history == [] and all(row.interest is None for row in cold.items)
    counts = [rec.data.popularity[rec.data.item_index[row.item]] for row in cold.items]
    assert counts == sorted(counts, reverse=True) and counts[0] == rec.data.popularity.max()
    assert rec.interests(history=["nope"]) == []
    with pytest.raises(UserError, match="either a user or a history"):
        rec.recommend(n=5)
    with pytest.raises(UserError, match="unknown user"):
        rec.recommend(user="nobody")
    with pytest.raises(UserError, match=r"\[1, 1000\]"):
        rec.recommend(user=rec.data.user_ids[0], n=0)


def test_a_history_longer_than_max_len_keeps_its_last_items(data_copy: Path, trained):
    rec = trained("gru4rec", data_copy, steps=1)
    items = [rec.data.item_ids[i] for i in range(1, 31)]
    answer = rec.recommend(history=items, n=3)
    assert [row.item for row in answer.history] == items[-20:]


def test_interests_list_each_interest_with_its_own_items(data_copy: Path, trained):
    rec = trained("comirec-sa", data_copy, steps=1)
    found = rec.interests(user=rec.data.user_ids[3], n=4)
    assert [interest.index for interest in found] == [0, 1, 2]
    assert all(len(interest.items) == 4 and len(interest.vector) == 16 for interest in found)
    assert all(row.interest == interest.index for interest in found for row in interest.items)


def test_a_run_directory_loads_moved_with_its_dataset_and_with_data_override(synthetic_dir: Path, tmp_path: Path):
    from hpcl4sr.run import config_for_run
    from hpcl4sr.train import train

    data = Path(shutil.copytree(synthetic_dir, tmp_path / "project" / "data"))
    config = config_for_run("comirec-sa", [{"data": {"path": str(data)}, "model": {"dim": 16},
                                            "train": {"max_iters": 4, "eval_every": 4, "batch_size": 16}}])
    train(config, tmp_path / "project" / "runs" / "r1", progress=False)
    saved = (tmp_path / "project" / "runs" / "r1" / "config.yaml").read_text()
    assert "path: ../../data" in saved and "max_len: 20" in saved
    (tmp_path / "project").rename(tmp_path / "elsewhere")  # the run and its dataset move together
    rec = hpcl4sr.load(tmp_path / "elsewhere" / "runs" / "r1")
    assert rec.data.dataset is not None and rec.evaluate("test")["recall@50"] >= 0
    (tmp_path / "elsewhere" / "data").rename(tmp_path / "data2")
    with pytest.raises(UserError, match="pass --data"):
        hpcl4sr.load(tmp_path / "elsewhere" / "runs" / "r1")
    assert hpcl4sr.load(tmp_path / "elsewhere" / "runs" / "r1", data=tmp_path / "data2").max_len == 20


def test_umi_keeps_its_user_profile_in_the_export_and_fresh_histories_use_unknown(tmp_path: Path, trained):
    import polars as pl

    from hpcl4sr.data.prepare import PrepareOptions, prepare
    from hpcl4sr.data.sources import RawLog
    from hpcl4sr.data.synthetic import synthesize

    frame = synthesize(users=200, items=150, categories=20, seed=1, mean_length=25)
    users = frame.select(pl.col("user").unique().sort())
    profile = users.with_columns(age=(pl.int_range(pl.len()) % 4).cast(pl.String))
    raw = RawLog(interactions=frame.with_row_index("order").lazy(), user_features=profile)
    prepare(raw, PrepareOptions(source="synthetic", min_count=3, max_len=20, seed=3), tmp_path / "data")
    rec = trained("umi", tmp_path / "data")
    assert rec.model.has_profile
    user, history = rec.data.user_ids[2], [rec.data.item_ids[i] for i in (4, 9, 11)]
    before = ranked(rec, user=user), ranked(rec, history=history)
    export_run(rec.model, rec.config, rec.data, tmp_path / "export")
    (tmp_path / "data").rename(tmp_path / "moved")
    loaded = hpcl4sr.load(tmp_path / "export")
    assert loaded.model.has_profile and (ranked(loaded, user=user), ranked(loaded, history=history)) == before
    codes = loaded.model.profile_codes
    assert codes.shape[0] == len(rec.data.user_ids) + 1 and not codes[-1].any()


def test_hpcl4sr_category_table_cache_follows_fused_optimiser_steps_and_loads(synthetic_dir: Path, trained):
    rec = trained("hpcl4sr", synthetic_dir, steps=1)
    model = rec.model
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)  # in place, no version bump
    batch = rec.data.user_batch(np.arange(8))
    for _ in range(2):
        with torch.no_grad():
            cached = model.category_table()
            assert torch.equal(cached, model.compute_category_table())
        model.train()
        optimizer.zero_grad()
        model.interests(batch).sum().backward()
        optimizer.step()
        model.eval()
    with torch.no_grad():
        assert not torch.equal(model.category_table(), cached)
        model.load_state_dict({**model.state_dict(), "diffusion.matrix": torch.eye(len(model.diffusion.matrix))})
        assert torch.equal(model.category_table(), model.compute_category_table())


def test_an_old_run_directory_still_loads(synthetic_dir: Path, tmp_path: Path):
    """Runs written before this change: config.yaml with an absolute data.path and max_len 0, and an
    HPCL4SR checkpoint without the category graph (it was not persistent then)."""
    import yaml

    from hpcl4sr.run import config_for_run
    from hpcl4sr.train import train

    run = tmp_path / "run"
    config = config_for_run("hpcl4sr", [{"data": {"path": str(synthetic_dir)}, "model": {"dim": 16},
                                         "train": {"max_iters": 4, "eval_every": 4, "batch_size": 16}}])
    train(config, run, progress=False)
    fresh = hpcl4sr.load(run)
    user = fresh.data.user_ids[0]
    expected = ranked(fresh, user=user)
    old = config.to_dict()  # what train wrote before: data.path as given (absolute), max_len 0
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    del checkpoint["model"]["diffusion.matrix"]
    torch.save(checkpoint, run / "best.pt")
    assert ranked(hpcl4sr.load(run), user=user) == expected
