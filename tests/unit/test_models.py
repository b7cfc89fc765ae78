"""The model contract, checked for every registered model."""

import pytest
import torch

from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.errors import UserError
from hpcl4sr.models import MODELS
from hpcl4sr.run import build_model, config_for_run
from hpcl4sr.train import make_optimizer


# Fitted models (pop, repeat, itemknn) have no vectors or loss: tests/unit/test_simple_baselines.py.
@pytest.fixture(params=sorted(name for name, cls in MODELS.items() if not cls.fitted))
def model_and_batch(request, synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    config = config_for_run(request.param, [{"data": {"path": str(synthetic_dir)}}])
    model = build_model(config, data, max_len=20)
    batch = TrainSampler(data, 16, 20, 4, seed=0).sample()
    return model, batch


def test_interests_shape_and_item_table(model_and_batch):
    model, batch = model_and_batch
    interests = model.interests(batch)
    assert interests.shape == (16, model.config.interests, model.config.dim)
    assert model.item_embeddings().shape == (model.n_items + 1, model.config.dim)
    assert torch.isfinite(interests).all()


def test_padding_never_changes_interests(model_and_batch):
    model, batch = model_and_batch
    model.eval()
    before = model.interests(batch)
    scrambled = batch.history.masked_fill(~batch.mask, 7)  # garbage ids where the mask says padding
    batch.history = scrambled
    assert torch.allclose(model.interests(batch), before, atol=1e-6)


def test_loss_terms_and_gradients(model_and_batch):
    model, batch = model_and_batch
    losses = model.loss(batch)
    assert "total" in losses and "rec" in losses
    assert all(value.dim() == 0 and torch.isfinite(value) for value in losses.values())
    losses["total"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fifty_steps_lower_the_loss(model_and_batch, synthetic_dir):
    model, _ = model_and_batch
    optimizer = make_optimizer(model, config_for_run(model.name, []).train)
    sampler = TrainSampler(SequenceDataset(synthetic_dir), 64, 20, 4, seed=0)
    losses = []
    for _ in range(50):
        total = model.loss(sampler.sample())["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])
    # every SGD model scores re-purchases by default (model.repeat: history), and learns that score too
    assert any(bool((p != 0).any()) for p in model.repeat_score.parameters())


@pytest.mark.parametrize("name", sorted(name for name, cls in MODELS.items() if not cls.fitted))
def test_gradients_repeat_bit_for_bit_on_two_threads(name, synthetic_dir):
    # A training step must not depend on how the CPU threads interleave, or a run (and its resume) would
    # not repeat itself: indexing's backward accumulates in a varying order (see layers.item_rows). The
    # default batch of 128: from about 32k indices on (PIMI's 128 x 20 x 20 buckets) it runs in parallel.
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    model = build_model(config_for_run(name, [{"data": {"path": str(synthetic_dir)}}]), data, max_len=20)
    batch = TrainSampler(data, 128, 20, 4, seed=0).sample()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gradients = []
        for _ in range(4):
            torch.manual_seed(1)  # the same negatives each time
            model.zero_grad(set_to_none=True)
            model.loss(batch)["total"].backward()
            gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    differing = {n for other in gradients[1:] for n in gradients[0] if not torch.equal(gradients[0][n], other[n])}
    assert not differing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_summary_is_the_whole_first_paragraph(name):
    # `hpcl4sr models` prints it: a citation wrapped over two lines must not be cut at the line break
    summary = MODELS[name].summary()
    assert "\n" not in summary and summary.endswith(".") and summary.count("(") == summary.count(")")


def test_lazy_adam_moves_exactly_the_item_rows_a_step_touched(model_and_batch, synthetic_dir):
    model, _ = model_and_batch
    settings = config_for_run(model.name, [{"train": {"optimizer": "lazy_adam"}}]).train
    optimizer = make_optimizer(model, settings)
    sampler = TrainSampler(SequenceDataset(synthetic_dir), 16, 20, 4, seed=0)
    table = model.item_embedding.weight
    start, others = table.detach().clone(), [p.detach().clone() for p in model.parameters() if p is not table]
    touched = torch.zeros(len(table), dtype=torch.bool)
    for _ in range(3):
        total = model.loss(sampler.sample())["total"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        assert torch.isfinite(total) and table.grad.is_sparse  # no dense use of the table is left
        gradient = table.grad.coalesce()
        touched[gradient.indices()[0][gradient.values().abs().sum(1) > 0]] = True
        optimizer.step()
    moved = (table.detach() != start).any(dim=1)
    assert 0 < touched.sum() < len(table) - 1  # the steps left most rows alone
    assert torch.equal(moved, touched)
    assert all(not torch.equal(p, before) for p, before in zip(
        (p for p in model.parameters() if p is not table), others))


def test_lazy_adam_refuses_the_full_softmax(synthetic_dir):
    config = config_for_run("comirec-sa", [{"model": {"loss": "full"}, "train": {"optimizer": "lazy_adam"}}])
    model = build_model(config, SequenceDataset(synthetic_dir), max_len=20)
    with pytest.raises(UserError, match="lazy_adam needs model.loss: sampled"):
        make_optimizer(model, config.train)
