"""The fitted baselines (pop, repeat, itemknn): scores against hand-computed values on a toy log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models import itemknn as itemknn_module
from hpcl4sr.models.itemknn import neighbour_tables
from hpcl4sr.models.pop import training_interactions
from hpcl4sr.run import build_model, config_for_run

# Users 0-2 train, 3 valid, 4 test. Item 5 is bought by the valid and test users only.
SEQUENCES = [[1, 2, 3], [1, 2], [2, 3, 3, 4], [1, 4, 1, 5, 2], [3, 1, 2, 5, 5]]
SPLITS = {"train": [0, 1, 2], "valid": [3], "test": [4]}
ROOT6 = math.sqrt(6)


@pytest.fixture
def toy(tmp_path: Path) -> SequenceDataset:
    """A prepared dataset directory written by hand, so every count below can be checked on paper."""
    lengths = [len(s) for s in SEQUENCES]
    np.save(tmp_path / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    np.save(tmp_path / "items.npy", np.concatenate(SEQUENCES).astype(np.int32))
    np.save(tmp_path / "times.npy", np.arange(sum(lengths), dtype=np.int64))
    np.save(tmp_path / "item_category.npy", np.zeros(6, dtype=np.int32))
    for split, users in SPLITS.items():
        np.save(tmp_path / f"{split}_users.npy", np.array(users, dtype=np.int64))
    (tmp_path / "meta.json").write_text(json.dumps({"items": 5, "categories": 1, "max_len": 5}))
    return SequenceDataset(tmp_path)


def fitted(name: str, dataset: SequenceDataset, **model: object):
    config = config_for_run(name, [{"data": {"path": str(dataset.path)}, "model": model}])
    instance = build_model(config, dataset, 5)
    tried: list[dict] = []
    chosen = instance.fit(dataset, 5, lambda setting: tried.append(setting) or 0.0)
    return instance, chosen, tried


def batch_of(*histories: list[int]) -> Batch:
    width = max(map(len, histories))
    history = torch.tensor([h + [0] * (width - len(h)) for h in histories])
    return Batch(history=history, mask=history > 0, history_times=torch.zeros_like(history),
                 users=torch.arange(len(histories)))


def test_popularity_counts_training_users_only(toy):
    users, items = training_interactions(toy)
    assert users.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pop, chosen, tried = fitted("pop", toy)
    assert chosen == {} and tried == [{}]
    assert pop.popularity.tolist() == [0, 2, 3, 3, 1, 0]
    items, scores, interest = pop.rank(batch_of([4], [1, 1]), 5)
    assert items.tolist() == [[2, 3, 1, 4, 5]] * 2  # equal counts (2 and 3) by smaller id
    assert scores[0].tolist() == [3, 3, 2, 1, 0]
    assert interest.tolist() == [[0] * 5] * 2


def test_exclusion_and_short_catalogue_leave_empty_slots(toy):
    pop, _, _ = fitted("pop", toy)
    items, scores, interest = pop.rank(batch_of([2]), 6, exclude=torch.tensor([[2, 0]]))
    assert items.tolist() == [[3, 1, 4, 5, 0, 0]]
    assert scores[0, 4:].tolist() == [-math.inf, -math.inf] and interest[0].tolist() == [0, 0, 0, 0, -1, -1]


def test_repeat_ranks_the_history_by_count_then_popularity(toy):
    repeat, _, _ = fitted("repeat", toy)
    items, scores, _ = repeat.rank(batch_of([1, 4, 1], [5, 4]), 5)
    assert items.tolist() == [[1, 4, 2, 3, 5], [4, 5, 2, 3, 1]]  # count, then popularity 2 = 3 > 1 > 4 > 5
    assert scores.tolist() == [[2, 1, 0, 0, 0], [1, 1, 0, 0, 0]]


def test_neighbours_are_the_cosine_over_training_users(toy):
    users, items = training_interactions(toy)
    (ids, sims), (_, shrunk) = neighbour_tables(users, items, 5, 2, [0.0, 1.0])
    # U1 = {0, 1}, U2 = {0, 1, 2}, U3 = {0, 2}, U4 = {2}, U5 = {} (its buyers are not training users).
    assert ids.tolist() == [[0, 0], [2, 3], [1, 3], [2, 4], [3, 2], [0, 0]]  # 2's tie 1 = 3 goes to 1
    expected = [[0, 0], [2 / ROOT6, 0.5], [2 / ROOT6, 2 / ROOT6], [2 / ROOT6, 1 / math.sqrt(2)],
                [1 / math.sqrt(2), 1 / math.sqrt(3)], [0, 0]]
    np.testing.assert_allclose(sims, expected, rtol=1e-6)
    assert shrunk[1, 0] == pytest.approx(2 / (ROOT6 + 1))


def test_itemknn_scores_sum_similarities_and_weighted_counts(toy):
    knn, chosen, tried = fitted("itemknn", toy, neighbours=2, shrinkage=0, repeat_weight=1.0)
    assert chosen == tried[0] == {"neighbours": 2, "shrinkage": 0, "repeat_weight": 1.0}
    items, scores, _ = knn.rank(batch_of([1, 1, 4]), 5)
    # item 2: 2 x sim(1,2) + sim(4,2); item 1: its count 2; item 3: 2 x sim(1,3) + sim(4,3); item 4: count 1
    assert items.tolist() == [[2, 1, 3, 4, 5]]
    expected = [4 / ROOT6 + 1 / math.sqrt(3), 2.0, 1.0 + 1 / math.sqrt(2), 1.0, 0.0]
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-6)
    logged, _, _ = fitted("itemknn", toy, neighbours=2, shrinkage=0, repeat_weight=1.0, repeat_score="log")
    assert logged.rank(batch_of([1, 1, 4]), 5)[1][0, 0].item() == pytest.approx(4 / ROOT6 + 1 / math.sqrt(3))
    assert sorted(logged.rank(batch_of([1, 1, 4]), 5)[1][0].tolist())[2] == pytest.approx(math.log(3))


def test_itemknn_tries_every_candidate_and_keeps_the_first_best(toy):
    grid = {"neighbours": [1, 2], "shrinkage": [0, 5], "repeat_weight": [0, 1]}
    config = config_for_run("itemknn", [{"model": grid}])
    knn = build_model(config, toy, 5)
    tried: list[dict] = []

    def select(setting: dict) -> float:
        tried.append(setting)
        return {(2, 0, 1): 0.3, (1, 5, 0): 0.3}.get(tuple(setting.values()), 0.1)

    chosen = knn.fit(toy, 5, select)
    assert len(tried) == 8 and chosen == {"neighbours": 2, "shrinkage": 0, "repeat_weight": 1}
    assert knn.neighbour_ids.shape == (6, 2) and knn.repeat_weight.item() == 1.0


def test_padding_is_ignored(toy):
    knn, _, _ = fitted("itemknn", toy, neighbours=2, shrinkage=0, repeat_weight=1.0)
    clean = batch_of([1, 4, 0, 0])
    garbage = batch_of([1, 4, 0, 0])
    garbage.history = garbage.history.masked_fill(~garbage.mask, 3)
    assert torch.equal(knn.rank(clean, 5)[0], knn.rank(garbage, 5)[0])


def test_blocks_and_chunks_do_not_change_results(synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    users, items = training_interactions(data)
    whole = neighbour_tables(users, items, data.n_items, 10, [0.0, 3.0])
    one_item_a_block = neighbour_tables(users, items, data.n_items, 10, [0.0, 3.0], pair_budget=1)
    for (ids, sims), (ids_b, sims_b) in zip(whole, one_item_a_block):
        assert np.array_equal(ids, ids_b) and np.array_equal(sims, sims_b)
    # Against a dense reference: the top similarity of every item.
    sets = np.zeros((data.n_users, data.n_items + 1))
    sets[users, items] = 1
    together = sets.T @ sets
    size = np.diag(together).copy()
    cosine = together / np.maximum(np.sqrt(np.outer(size, size)), 1e-12)
    np.fill_diagonal(cosine, 0)
    np.testing.assert_allclose(whole[0][1][:, 0], cosine.max(axis=1), rtol=1e-5)

    config = config_for_run("itemknn", [{"model": {"neighbours": 10, "shrinkage": 3.0, "repeat_weight": 0.5}}])
    knn = build_model(config, data, 20)
    knn.fit(data, 20, lambda setting: 0.0)
    batch = next(data.eval_batches("valid", 64, 20))
    expected = knn.rank(batch, 50)
    knn.score_budget = 3 * (data.n_items + 1)  # three users at a time
    assert all(torch.equal(a, b) for a, b in zip(expected, knn.rank(batch, 50)))
    knn.score_budget = 12 * 10  # one user at a time, their history 12 positions at a time
    assert all(torch.equal(a, b) for a, b in zip(expected, knn.rank(batch, 50)))


def test_fitted_models_have_no_vectors_or_loss(toy):
    knn, _, _ = fitted("itemknn", toy, neighbours=1, shrinkage=0, repeat_weight=0)
    for call in (lambda: knn.interests(batch_of([1])), knn.item_embeddings, lambda: knn.loss(batch_of([1]))):
        with pytest.raises(UserError, match="itemknn is fitted, not trained"):
            call()
    assert knn.device == torch.device("cpu") and list(knn.parameters()) == []


def test_tables_that_do_not_fit_memory_stop_with_the_setting(toy, monkeypatch):
    monkeypatch.setattr(itemknn_module, "free_memory", lambda: 1000)
    config = config_for_run("itemknn", [{"model": {"neighbours": [5, 50], "shrinkage": 0}}])
    with pytest.raises(UserError, match=r"model.neighbours: 50 neighbours for each of 5 items"):
        build_model(config, toy, 5).fit(toy, 5, lambda setting: 0.0)


@pytest.mark.parametrize("model, message", [({"neighbours": 0}, "model.neighbours"),
                                            ({"shrinkage": [1, -1]}, "model.shrinkage"),
                                            ({"repeat_weight": []}, "model.repeat_weight"),
                                            ({"neighbours": [2.5]}, "model.neighbours"),
                                            ({"repeat_score": "sqrt"}, "model.repeat_score")])
def test_bad_settings_name_the_option(model, message):
    with pytest.raises(UserError, match=message):
        config_for_run("itemknn", [{"model": model}])
