"""GRU4Rec, MIND and ComiRec-DR: training, routing, readouts, each checked against a direct computation."""

import math

import pytest
import torch
from torch import nn

from hpcl4sr.data.dataset import Batch, SequenceDataset, TrainSampler
from hpcl4sr.errors import UserError
from hpcl4sr.models.layers import dynamic_routing, hard_readout, squash
from hpcl4sr.models.mind import label_aware_readout
from hpcl4sr.run import build_model, config_for_run


def build(name, synthetic_dir, model=None, seed=0):
    data = SequenceDataset(synthetic_dir)
    config = config_for_run(name, [{"data": {"path": str(synthetic_dir)}, "model": model or {}}])
    torch.manual_seed(seed)
    return build_model(config, data, max_len=20), config, data


def rows(batch, start, stop):
    return Batch(**{name: value[start:stop] if isinstance(value, torch.Tensor) else value
                    for name, value in batch.__dict__.items()})


def padded_batch(data, size=16):
    """A training batch in which some histories are shorter than max_len, so padding is exercised."""
    batch = TrainSampler(data, size, 20, 4, seed=1).sample()
    assert (~batch.mask).any() and batch.mask.any(dim=1).all()
    return batch


# --- GRU4Rec -----------------------------------------------------------------------------------------


def test_gru4rec_is_one_interest_whatever_the_config_says(synthetic_dir):
    model, _, data = build("gru4rec", synthetic_dir, model={"interests": 4})
    assert model.config.interests == 1
    assert model.interests(padded_batch(data)).shape == (16, 1, model.config.dim)


def test_gru4rec_interest_is_the_gru_state_after_the_last_real_item(synthetic_dir):
    model, _, data = build("gru4rec", synthetic_dir)
    batch = padded_batch(data)
    # An independent GRU with the same weights, run on each user's unpadded sequence alone.
    reference = nn.GRU(model.config.dim, model.config.dim, batch_first=True)
    reference.load_state_dict(model.gru.state_dict())
    with torch.no_grad():
        got = model.interests(batch)[:, 0]
        for row in range(len(got)):
            items = batch.history[row][batch.mask[row]]
            _, final = reference(model.item_embedding(items)[None])
            assert torch.allclose(got[row], final[0, 0], atol=1e-6), row


# --- routing shared by MIND and ComiRec-DR -----------------------------------------------------------


def test_routing_ignores_predictions_and_logits_at_padding():
    torch.manual_seed(0)
    capsules, logits = torch.randn(4, 7, 3, 5), torch.randn(4, 7, 3)
    mask = torch.arange(7)[None, :] < torch.tensor([[7], [5], [2], [1]])
    interests, _ = dynamic_routing(capsules, logits, mask, 3)
    noisy_capsules, noisy_logits = capsules.clone(), logits.clone()
    noisy_capsules[~mask] = 100 * torch.randn(int((~mask).sum()), 3, 5)
    noisy_logits[~mask] = 100 * torch.randn(int((~mask).sum()), 3)
    assert torch.allclose(dynamic_routing(noisy_capsules, noisy_logits, mask, 3)[0], interests, atol=1e-6)


def test_routing_gradient_flows_only_through_the_last_iteration():
    torch.manual_seed(0)
    capsules = torch.randn(2, 6, 3, 4, requires_grad=True)
    logits, mask = torch.randn(2, 6, 3), torch.ones(2, 6, dtype=torch.bool)
    interests, coupling = dynamic_routing(capsules, logits, mask, 3)
    (grad,) = torch.autograd.grad(interests.sum(), capsules)
    # With the final coupling held constant, the last squash(sum c u_hat) must give the same gradient.
    direct = squash((capsules * coupling.transpose(1, 2).detach()[..., None]).sum(dim=1))
    (expected,) = torch.autograd.grad(direct.sum(), capsules)
    assert torch.allclose(direct, interests, atol=1e-6)
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["mind", "comirec-dr"])
@pytest.mark.parametrize("training", [True, False])
def test_coupling_sums_to_one_over_interests_and_is_zero_at_padding(name, training, synthetic_dir):
    model, _, data = build(name, synthetic_dir)
    model.train(training)
    batch = padded_batch(data)
    interests, coupling = model.interests_and_coupling(batch)
    assert interests.shape == (16, model.config.interests, model.config.dim)
    assert coupling.shape == (16, model.config.interests, batch.mask.shape[1])
    assert (coupling >= 0).all()
    # summing over interests (dim 1), not over the sequence
    assert torch.allclose(coupling.sum(dim=1), batch.mask.float(), atol=1e-6)


# --- MIND ----------------------------------------------------------------------------------------------


def test_mind_has_one_shared_map_and_draws_fresh_logits_from_the_global_rng(synthetic_dir):
    model, _, data = build("mind", synthetic_dir, model={"interests": 5})
    assert model.shared_map.shape == (model.config.dim, model.config.dim)
    batch = padded_batch(data)
    model.train()
    torch.manual_seed(3)
    first = model.interests(batch)
    torch.manual_seed(3)
    assert torch.equal(model.interests(batch), first)  # the global RNG decides: resume stays exact
    assert not torch.allclose(model.interests(batch), first)  # a new draw each call
    # the random logits break the symmetry of the shared map: the K interests differ
    assert (first[:, 0] - first[:, 1]).abs().amax() > 1e-4
    # padding cannot matter at training either, for the same draw
    batch.history = batch.history.masked_fill(~batch.mask, 7)
    torch.manual_seed(3)
    assert torch.allclose(model.interests(batch), first, atol=1e-6)


def test_mind_eval_is_repeatable_and_leaves_the_global_rng_alone(synthetic_dir):
    model, _, data = build("mind", synthetic_dir)
    model.eval()
    batch = padded_batch(data)
    state = torch.get_rng_state()
    first = model.interests(batch)
    assert torch.equal(model.interests(batch), first)
    assert torch.equal(torch.get_rng_state(), state)
    # a user's interests do not depend on the rest of the batch
    assert torch.allclose(model.interests(rows(batch, 3, 5)), first[3:5], atol=1e-6)
    # the fixed draw is part of the state dict, so a reloaded model serves the same interests
    twin, _, _ = build("mind", synthetic_dir, seed=99)
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.eval().interests(batch), first)


def test_label_aware_readout_equals_direct_computation():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    target = torch.tensor([[1.0, 1.0]])  # scores 1 and 2
    for power in (1.0, 2.0):
        w = [math.exp(1**power), math.exp(2**power)]
        expected = [w[0] / sum(w) * 1.0, w[1] / sum(w) * 2.0]
        assert label_aware_readout(interests, target, power)[0].tolist() == pytest.approx(expected)
    # p = 0: every interest weighs the same
    assert label_aware_readout(interests, target, 0.0)[0].tolist() == pytest.approx([0.5, 1.0])
    # a large p approaches the hard readout
    assert torch.allclose(label_aware_readout(interests, target, 8.0), hard_readout(interests, target), atol=1e-6)


@pytest.mark.parametrize("readout", ["label_aware", "hard"])
def test_mind_loss_uses_its_readout(readout, synthetic_dir):
    model, _, data = build("mind", synthetic_dir, model={"readout": readout, "label_aware_power": 2.0})
    batch = padded_batch(data)
    torch.manual_seed(5)
    got = model.loss(batch)
    torch.manual_seed(5)  # the same routing draw and the same sampled negatives
    interests, target = model.interests(batch), model.item_embedding(batch.target)
    pick = label_aware_readout(interests, target, 2.0) if readout == "label_aware" else hard_readout(interests, target)
    expected = model.recommendation_loss(pick, batch)
    assert torch.allclose(got["rec"], expected) and torch.equal(got["total"], got["rec"])


@pytest.mark.parametrize("key, value", [("label_aware_power", 1.5), ("label_aware_power", -1.0),
                                        ("readout", "soft"), ("routing_sigma", 0.0), ("routing_iterations", 0)])
def test_mind_rejects_bad_settings(key, value):
    with pytest.raises(UserError, match=key):
        config_for_run("mind", [{"model": {key: value}}])


def test_comirec_dr_rejects_no_routing_iterations():
    with pytest.raises(UserError, match="routing_iterations"):
        config_for_run("comirec-dr", [{"model": {"routing_iterations": 0}}])
