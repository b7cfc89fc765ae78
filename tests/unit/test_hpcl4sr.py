"""HPCL4SR's pieces checked against numbers computed by hand or by the paper's formulas directly."""

import dataclasses
import functools
import math

import numpy as np
import polars as pl
import pytest
import torch

from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.data.prepare import PrepareOptions, prepare
from hpcl4sr.data.sources import RawLog
from hpcl4sr.errors import UserError
from hpcl4sr.models.hpcl4sr import (
    angular_contrastive_loss,
    category_cooccurrence,
    diffuse,
    diffusion_weights,
    normalise,
    training_graph,
)
from hpcl4sr.models.layers import hard_negative_log_weights, hard_readout, routing_regularization
from hpcl4sr.run import build_model, config_for_run


def test_a2_on_three_categories_by_hand():
    # a12 = 2, a13 = 1, a23 = 0: a_1 = 3, a_2 = 2, a_3 = 1 (index 0 is padding)
    counts = np.zeros((4, 4))
    counts[1, 2] = counts[2, 1] = 2
    counts[1, 3] = counts[3, 1] = 1
    a2 = normalise(counts)
    assert a2[1, 2] == pytest.approx(2 / math.sqrt(4 * 3))
    assert a2[1, 3] == pytest.approx(1 / math.sqrt(4 * 2))
    assert a2[2, 3] == 0 and a2[1, 1] == 0 and not a2[0].any()
    assert np.allclose(a2, a2.T)


def test_diffusion_weights_sum_to_one_and_match_explicit_powers():
    theta = diffusion_weights(0.15, 4)
    assert theta.sum() == pytest.approx(1.0)
    series = 0.15 * 0.85 ** np.arange(5)
    assert theta == pytest.approx(series / series.sum())
    assert (np.diff(theta) < 0).all()  # theta_i > theta_{i+1}, every hop included
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (6, 6)).astype(float)
    a2 = normalise(counts + counts.T)
    explicit = sum(theta[i] * np.linalg.matrix_power(a2, i) for i in range(5))
    assert np.allclose(diffuse(a2, 0.15, 4), explicit)


def one_user_dataset(tmp_path, users: dict[str, list[str]]) -> SequenceDataset:
    rows = [(user, f"{cat}-{i}", cat, i) for user, cats in users.items() for i, cat in enumerate(cats)]
    frame = pl.DataFrame(rows, schema=["user", "item", "category", "time"], orient="row")
    raw = RawLog(frame.with_row_index("order").with_columns(pl.col("order").cast(pl.Int64)).lazy(), None)
    prepare(raw, PrepareOptions(source="toy", filter="none", min_count=1, split=(1.0, 0.0, 0.0)), tmp_path / "d")
    return SequenceDataset(tmp_path / "d")


def test_cooccurrence_counts_adjacent_changes_both_ways(tmp_path):
    data = one_user_dataset(tmp_path, {"u": ["x", "x", "y", "x", "z"]})
    names = data.raw_ids("category")
    counts = category_cooccurrence(data, data.split_users["train"])
    pair = lambda a, b: counts[names.index(a), names.index(b)]  # noqa: E731
    assert pair("x", "y") == pair("y", "x") == 2  # x->y and y->x
    assert pair("x", "z") == pair("z", "x") == 1
    assert pair("x", "x") == 0 and pair("y", "z") == 0


def test_graph_never_sees_valid_or_test_users(synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    train_only = normalise(category_cooccurrence(data, data.split_users["train"]))
    assert np.array_equal(training_graph(data), train_only)
    everyone = normalise(category_cooccurrence(data, np.arange(data.n_users)))
    assert not np.allclose(training_graph(data), everyone)
    # the model's diffusion is built from exactly that matrix
    config = config_for_run("hpcl4sr", [])
    model = build_model(config, data, max_len=20)
    expected = diffuse(train_only, 0.15, 4)
    assert np.allclose(model.diffusion.matrix.numpy(), expected, atol=1e-6)


def direct_contrastive(low, fused, margin_deg, tau):
    """Eq. 15-17 written out for one user, one anchor at a time."""
    views = [v / v.norm() for v in list(low) + list(fused)]
    k = len(low)
    total = 0.0
    for a in range(2 * k):
        p = (a + k) % (2 * k)
        theta = math.acos(float(views[a] @ views[p]))
        positive = math.exp(math.cos(min(theta + math.radians(margin_deg), math.pi)) / tau)
        negatives = sum(math.exp(float(views[a] @ views[j]) / tau) for j in range(2 * k) if j not in (a, p))
        total += -math.log(positive / (positive + negatives))
    return total / (2 * k)


def test_contrastive_loss_equals_direct_computation():
    torch.manual_seed(0)
    low, fused = torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 2, 5, dtype=torch.float64)
    got = angular_contrastive_loss(low, fused, margin_degrees=10.0, temperature=0.05)
    assert float(got) == pytest.approx(direct_contrastive(low[0], fused[0], 10.0, 0.05), rel=1e-6)
    # identical interests cannot be told apart: higher loss than orthogonal ones
    same = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    orthogonal = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    identical_loss = angular_contrastive_loss(same, same, 10.0, 0.05)
    assert identical_loss > angular_contrastive_loss(orthogonal, orthogonal, 10.0, 0.05)
    # the margin makes the task harder
    assert angular_contrastive_loss(low, fused, 10.0, 0.05) > angular_contrastive_loss(low, fused, 0.0, 0.05)


def test_routing_regularization_equals_direct_computation():
    torch.manual_seed(1)
    coupling = torch.softmax(torch.randn(3, 4, 6), dim=-1)
    expected = 0.0
    for user in coupling:
        centred = user - user.mean(dim=1, keepdim=True)
        covariance = centred @ centred.T / 64
        expected += float((torch.diagonal(covariance) ** 2).sum())
    assert float(routing_regularization(coupling, 64)) == pytest.approx(expected, rel=1e-5)


VARIANTS = ["base", "base_class", "add", "mul", "cr", "no_margin", "full", "attention_low"]


def variant_losses(variant: str, synthetic_dir) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A Table 3 variant (configs/hpcl4sr/VARIANT.yaml) on the synthetic data and its losses on one batch."""
    from pathlib import Path

    from hpcl4sr.config import load_yaml

    path = Path(__file__).resolve().parents[2] / "configs/hpcl4sr" / f"{variant}.yaml"
    config = config_for_run("hpcl4sr", [load_yaml(path)])
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    model = build_model(config, data, 20)
    return model, model.loss(TrainSampler(data, 8, 20, 4, seed=0).sample())


@pytest.mark.parametrize("variant", VARIANTS)
def test_table3_variants_train_and_log_their_terms(variant, synthetic_dir):
    model, losses = variant_losses(variant, synthetic_dir)
    expected = {"base": {"rec"}, "base_class": {"rec", "class"}, "cr": {"rec", "class", "reg"}}
    assert set(losses) - {"total"} == expected.get(variant, {"rec", "class", "cl"})
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_loss_term_of_every_variant_reaches_a_gradient(variant, synthetic_dir):
    # A term whose inputs are all detached trains nothing: `cr`'s regulariser once sat on such a coupling.
    model, losses = variant_losses(variant, synthetic_dir)
    parameters = list(model.parameters())
    for name, term in losses.items():
        assert term.requires_grad, f"{variant}: {name} is built from detached tensors only"
        grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), f"{variant}: {name} trains nothing"


def test_differentiable_coupling_keeps_the_routing_values():
    from hpcl4sr.models.layers import CapsuleRouting

    torch.manual_seed(3)
    plain = CapsuleRouting(8, 3, iterations=3)
    live = CapsuleRouting(8, 3, iterations=3, differentiable_coupling=True)
    live.load_state_dict(plain.state_dict())
    features = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    (plain_interests, plain_coupling), (live_interests, live_coupling) = plain(features, mask), live(features, mask)
    assert torch.equal(plain_interests, live_interests)
    assert torch.allclose(plain_coupling, live_coupling, atol=1e-6)
    assert not plain_coupling.requires_grad and live_coupling.requires_grad


def test_inconsistent_variant_is_refused():
    with pytest.raises(UserError, match="high_level"):
        config_for_run("hpcl4sr", [{"model": {"high_level": False}}])


@pytest.mark.parametrize("self_attention", [True, False])
def test_attention_low_extractor_ignores_padding(synthetic_dir, self_attention):
    config = config_for_run("hpcl4sr", [{"model": {"low_extractor": "attention", "self_attention": self_attention}}])
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    model = build_model(config, data, 20).eval()
    batch = TrainSampler(data, 8, 20, 4, seed=1).sample()
    assert not bool(batch.mask.all())  # some rows are padded
    garbage = batch.history.masked_fill(~batch.mask, 7)
    with torch.no_grad():
        clean, noisy = model.interests(batch), model.interests(dataclasses.replace(batch, history=garbage))
    assert clean.shape == (8, config.model.interests, config.model.dim)
    torch.testing.assert_close(clean, noisy)


def test_without_self_attention_the_attention_extractor_is_comirec_sa(synthetic_dir):
    """self_attention: false skips eq. 8-9, so P_u by the attention extractor is ComiRec-SA's (and REMI's)
    interests computed from the same weights."""
    config = config_for_run("hpcl4sr", [{"model": {"low_extractor": "attention", "self_attention": False,
                                                   "high_level": False, "lambda_cl": 0.0, "serve": "low"}}])
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    ours = build_model(config, data, 20).eval()
    assert not hasattr(ours, "context")
    theirs = build_model(config_for_run("comirec-sa", [{}]), data, 20).eval()
    theirs.item_embedding.load_state_dict(ours.item_embedding.state_dict())
    theirs.attention.load_state_dict(ours.low_attention.state_dict())
    with torch.no_grad():
        theirs.position_embedding.copy_(ours.position_embedding)
    batch = TrainSampler(data, 8, 20, 4, seed=1).sample()
    with torch.no_grad():
        torch.testing.assert_close(ours.interests(batch), theirs.interests(batch))


def test_residual_fusion_starts_at_p_and_learns_from_q(synthetic_dir):
    config = config_for_run("hpcl4sr", [{"model": {"fusion": "residual"}}])
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    model = build_model(config, data, 20)
    batch = TrainSampler(data, 8, 20, 4, seed=1).sample()
    parts = model.parts(batch)
    torch.testing.assert_close(parts["fused"], parts["low"])  # eq. 13's layer starts at zero
    model.loss(batch)["total"].backward()
    assert model.fusion.weight.grad.abs().sum() > 0  # ... and the loss moves it


def test_cl_warmup_ramps_lambda2_from_zero_by_step(synthetic_dir):
    config = config_for_run("hpcl4sr", [{"model": {"cl_warmup": 100, "lambda_cl": 2.0}}])
    data = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    model = build_model(config, data, 20)
    batch = TrainSampler(data, 8, 20, 4, seed=0).sample()
    for step, share in ((0, 0.0), (25, 0.25), (100, 1.0), (250, 1.0)):
        model.begin_step(step)
        torch.manual_seed(1)  # the same sampled negatives at every step
        losses = model.loss(batch)
        expected = losses["rec"] + 0.1 * losses["class"] + share * 2.0 * losses["cl"]
        assert torch.allclose(losses["total"], expected), step


def test_zero_fusion_bias_starts_at_zero_and_the_default_does_not(synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    for choice, is_zero in (("zero", True), ("default", False)):
        model = build_model(config_for_run("hpcl4sr", [{"model": {"fusion_bias": choice}}]), data, 20)
        assert bool((model.fusion.bias == 0).all()) is is_zero


def test_beta_weights_the_negatives_as_remi_and_zero_is_the_paper(synthetic_dir):
    """HPCL4SR+'s hard negatives: eq. 19's softmax with REMI's weights exp(beta s_j) / mean exp(beta s)."""
    data = SequenceDataset(synthetic_dir)
    batch = TrainSampler(data, 8, 20, 4, seed=0).sample()

    def rec_loss(beta: float, reweight=None) -> float:
        torch.manual_seed(0)
        model = build_model(config_for_run("hpcl4sr", [{"model": {"beta": beta, "sampler": "uniform"}}]), data, 20)
        torch.manual_seed(1)  # the same negatives in every call
        if reweight is None:
            return float(model.loss(batch)["rec"])
        readout = hard_readout(model.interests(batch), model.item_embedding(batch.target))
        return float(model.recommendation_loss(readout, batch, reweight))

    weighted = rec_loss(2.0)
    assert weighted == pytest.approx(rec_loss(0.0, functools.partial(hard_negative_log_weights, beta=2.0)), rel=1e-6)
    assert rec_loss(0.0) == pytest.approx(rec_loss(0.0, lambda scores, excluded: torch.zeros_like(scores)), rel=1e-6)
    assert weighted > rec_loss(0.0)  # weights growing with the score put more mass on the negatives
    with pytest.raises(UserError, match="model.beta"):
        config_for_run("hpcl4sr", [{"model": {"beta": -1.0}}])


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_batch_rows_of_the_gcn_equal_the_whole_table_with_gradients(synthetic_dir, layers):
    # A training step computes only the categories its batch uses, through the powers of A; values and
    # gradients must be those of the layer-by-layer GCN (eq. 3-4) up to float rounding.
    dataset = SequenceDataset(synthetic_dir)
    torch.manual_seed(0)
    model = build_model(config_for_run("hpcl4sr", [{"model": {"gcn_layers": layers}}]), dataset, 20)
    for layer in model.gcn:  # weights away from their small initial values, so every M_ij term matters
        torch.nn.init.normal_(layer.weight, std=0.1)
    categories = model.item_category[TrainSampler(dataset, 16, 20, 4, seed=0).sample().history]
    direction = torch.randn(*categories.shape, model.config.dim)
    weights = [model.category_embedding.weight, *model.gcn.parameters()]

    def rows_and_gradients(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (rows, *torch.autograd.grad((rows * direction).sum(), weights))

    batch_rows = rows_and_gradients(model.category_rows(categories))
    table_rows = rows_and_gradients(model.compute_category_table()[categories])
    assert len(categories.unique()) < dataset.n_categories  # the batch does leave categories out
    for fast, reference in zip(batch_rows, table_rows):
        assert reference.abs().max() > 0
        assert (fast - reference).abs().max() <= 1e-5 * reference.abs().max()
