"""Repeat-aware scoring (`model.repeat: history`): the score r, its training inside the loss, and ranking."""

from __future__ import annotations

import math

import pytest
import torch

from hpcl4sr.data.dataset import Batch, SequenceDataset, TrainSampler
from hpcl4sr.models import MODELS
from hpcl4sr.models.layers import ExactClasses, RepeatScore, sample_negatives, sampled_softmax_loss
from hpcl4sr.run import build_model, config_for_run
from hpcl4sr.serve.index import FaissIndex, import_faiss

SGD_MODELS = sorted(name for name, cls in MODELS.items() if not cls.fitted)


def hand_batch(rows: list[list[int]], width: int, targets: list[int] | None = None) -> Batch:
    """A batch of the given histories, right-padded with 0 to `width`."""
    history = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = history > 0
    target = None if targets is None else torch.tensor(targets)
    return Batch(history, mask, torch.zeros_like(history), torch.arange(len(rows)), target=target)


def set_repeat(module: RepeatScore, count: float, recency: list[float], user: float, bias: float) -> None:
    with torch.no_grad():
        module.count_weight.fill_(count)
        module.recency.copy_(torch.tensor(recency))
        module.user_weight.fill_(user)
        module.bias.fill_(bias)


def test_repeat_score_matches_a_hand_computation():
    scorer = RepeatScore(max_len=6)
    set_repeat(scorer, 2.0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 4.0, -0.5)
    batch = hand_batch([[5, 3, 5, 7], [9]], width=6)
    with torch.no_grad():
        found = scorer(batch.history, batch.mask)
    # row 0: len 4, distinct 3, so the user term is 4 x (1 - 3/4) = 1; positions from the end: 7 -> 0,
    # 5 (last at index 2) -> 1, 3 -> 2; the first 5 is a duplicate and no class.
    assert found.items.tolist() == [[0, 3, 5, 7, 0, 0], [9, 0, 0, 0, 0, 0]]
    expected = [
        [0.0, 2 * math.log(2) + 0.3 + 1 - 0.5, 2 * math.log(3) + 0.2 + 1 - 0.5, 2 * math.log(2) + 0.1 + 1 - 0.5, 0, 0],
        [2 * math.log(2) + 0.1 + 0 - 0.5, 0, 0, 0, 0, 0],
    ]
    assert torch.allclose(found.repeat, torch.tensor(expected))
    assert found.repeat_of(torch.tensor([5, 4])).tolist() == pytest.approx([expected[0][2], 0.0])
    dense = found.dense_repeat(10)
    assert dense[0, 4].item() == pytest.approx(expected[0][2]) and dense[1, 8].item() == pytest.approx(expected[1][0])
    assert dense[0, 0].item() == 0 and float(dense.abs().sum()) == pytest.approx(sum(map(abs, sum(expected, []))))


def test_exact_classes_find_the_shared_draws_that_fall_in_each_row():
    torch.manual_seed(5)
    items = torch.stack([torch.randperm(12)[:6] for _ in range(40)])  # distinct per row, 0 = no class
    ids = torch.randint(1, 13, (50,))  # drawn with replacement: repeated ids
    expected = [[int(i) in set(row.tolist()) - {0} for i in ids] for row in items]
    assert ExactClasses(items, torch.zeros(items.shape)).contains(ids).tolist() == expected


def test_sampled_loss_with_repeat_equals_a_hand_computation():
    torch.manual_seed(3)
    table = torch.randn(7, 3)  # items 1..6
    users = torch.randn(3, 3)
    batch = hand_batch([[2, 4, 2], [6], [1, 3]], width=3, targets=[4, 5, 3])
    scorer = RepeatScore(max_len=3)
    set_repeat(scorer, 0.7, [0.3, -0.2, 0.1], 1.5, 0.25)
    history = scorer(batch.history, batch.mask)
    torch.manual_seed(11)
    loss = sampled_softmax_loss(users, batch.target, table, n_negatives=8, history=history)
    torch.manual_seed(11)
    negatives, _ = sample_negatives(8, 6, True, torch.device("cpu"))

    def r(row: int, item: int) -> float:
        seq = [i for i in batch.history[row].tolist() if i > 0]
        if item not in seq:
            return 0.0
        last = len(seq) - 1 - seq[::-1].index(item)
        return (0.7 * math.log(1 + seq.count(item)) + [0.3, -0.2, 0.1][len(seq) - 1 - last]
                + 1.5 * (1 - len(set(seq)) / len(seq)) + 0.25)

    def q(item: int) -> float:  # expected count of the id among the 8 log-uniform draws
        return 8 * math.log(1 + 1 / item) / math.log(7)

    total = 0.0
    for row in range(3):
        seq, target = {i for i in batch.history[row].tolist() if i > 0}, int(batch.target[row])
        score = (users[row] @ table.T).tolist()
        exact = [score[target] + r(row, target)] + [score[j] + r(row, j) for j in sorted(seq - {target})]
        sampled = [score[n] - math.log(q(n)) for n in negatives.tolist() if n not in seq | {target}]
        total += -exact[0] + math.log(sum(math.exp(v) for v in exact + sampled))
    assert loss.item() == pytest.approx(total / 3, rel=1e-5)


def build(name: str, synthetic_dir, repeat: str, **model) -> torch.nn.Module:
    torch.manual_seed(0)
    overrides = {"data": {"path": str(synthetic_dir)}, "model": {"repeat": repeat, **model}}
    return build_model(config_for_run(name, [overrides]), SequenceDataset(synthetic_dir), max_len=20)


@pytest.mark.filterwarnings("ignore:UMI")
@pytest.mark.parametrize("name", SGD_MODELS)
def test_at_initialisation_repeat_changes_neither_ranking_nor_full_loss(name, synthetic_dir):
    plain, repeat = build(name, synthetic_dir, "none", loss="full"), build(name, synthetic_dir, "history", loss="full")
    batch = TrainSampler(SequenceDataset(synthetic_dir), 16, 20, 4, seed=0).sample()
    plain.eval(), repeat.eval()  # MIND draws its routing logits afresh in training mode
    with torch.no_grad():
        before, after = plain.rank(batch, 30), repeat.rank(batch, 30)
        assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
        assert torch.allclose(before[1], after[1], atol=1e-6)
        assert torch.allclose(plain.loss(batch)["rec"], repeat.loss(batch)["rec"], atol=1e-6)


@pytest.mark.parametrize("loss", ["sampled", "full"])
@pytest.mark.parametrize("name", ["comirec-sa", "remi", "umi"])
@pytest.mark.filterwarnings("ignore:UMI")
def test_every_term_of_r_reaches_a_gradient(name, loss, synthetic_dir):
    model = build(name, synthetic_dir, "history", loss=loss)
    batch = hand_batch([[3, 8, 3, 3, 9], [4, 5, 6], [7, 7]], width=20, targets=[3, 1, 2])
    model.loss(batch)["total"].backward()
    for term, parameter in model.repeat_score.named_parameters():
        used = parameter.grad if term != "recency" else parameter.grad[:3]  # histories end 0, 1 or 2 back
        assert used is not None and (used != 0).all(), term


def brute_force(model, batch: Batch, n: int, exclude: torch.Tensor | None) -> tuple[list, torch.Tensor]:
    """Every item scored by its best interest + r, ranked by score desc then item id asc."""
    with torch.no_grad():
        scores = torch.einsum("bkd,nd->bkn", model.interests(batch), model.item_embeddings()[1:]).amax(dim=1)
        scores = scores + model.repeat_score(batch.history, batch.mask).dense_repeat(model.n_items)
    ranked, best = [], []
    for row in range(len(scores)):
        banned = set() if exclude is None else set(exclude[row].tolist())
        pairs = sorted((-float(s), item + 1) for item, s in enumerate(scores[row]) if item + 1 not in banned)
        ranked.append([item for _, item in pairs[:n]])
        best.append([-s for s, _ in pairs[:n]])
    return ranked, torch.tensor(best)


@pytest.mark.filterwarnings("ignore:UMI")
@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
@pytest.mark.parametrize("name", ["comirec-sa", "hpcl4sr", "mind", "umi"])
def test_rank_with_repeat_equals_brute_force_scoring_of_every_item(name, backend, synthetic_dir):
    if backend == "faiss-flat":
        pytest.importorskip("faiss")
        import_faiss().omp_set_num_threads(1)
    model = build(name, synthetic_dir, "history").eval()
    # Large enough to lift history items into, and drop them out of, the top n.
    set_repeat(model.repeat_score, 0.8, torch.linspace(0.6, -0.9, 20).tolist(), 0.5, 0.1)
    batch = TrainSampler(SequenceDataset(synthetic_dir), 24, 20, 4, seed=2).sample()
    index = None if backend == "exact" else FaissIndex(model.item_embeddings(), "flat")
    some_history = batch.history[:, ::3] * (torch.arange(24) % 2 == 0)[:, None]
    for exclude in (None, torch.cat([some_history, torch.randint(0, model.n_items + 1, (24, 5))], dim=1)):
        with torch.no_grad():
            items, scores, interest = model.rank(batch, 40, exclude=exclude, index=index)
        expected, expected_scores = brute_force(model, batch, 40, exclude)
        assert items.tolist() == expected
        assert torch.allclose(scores, expected_scores, atol=1e-5)
        in_history = (items[:, :, None] == batch.history[:, None, :]).any(-1)
        assert in_history.any() and not in_history.all()  # both parts of the merge are exercised
        with torch.no_grad():
            per_interest = torch.einsum("bkd,bnd->bkn", model.interests(batch), model.item_embeddings()[items])
        assert torch.equal(interest, per_interest.argmax(dim=1))


def test_a_run_written_before_the_option_loads_as_the_model_it_was(synthetic_dir, tmp_path):
    # its config.yaml has no model.repeat: it reads as `none`, what the code did then, not today's default
    import yaml

    from hpcl4sr.run import config_for_run, load_run
    from hpcl4sr.train import train

    config = config_for_run("comirec-sa", [{"data": {"path": str(synthetic_dir)}, "model": {"repeat": "none"},
                                            "train": {"max_iters": 20, "eval_every": 20, "batch_size": 16}}])
    train(config, tmp_path / "run", progress=False)
    _, dataset, before = load_run(tmp_path / "run")
    written = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    del written["model"]["repeat"]
    (tmp_path / "run/config.yaml").write_text(yaml.safe_dump(written))
    loaded, _, after = load_run(tmp_path / "run")
    assert loaded.model.repeat == "none" and after.repeat_score is None
    batch = next(dataset.eval_batches("test", 32, after.max_len))
    with torch.no_grad():
        assert torch.equal(before.rank(batch, 30)[0], after.rank(batch, 30)[0])
