import math

import pytest
import torch
import torch.nn.functional as F

from hpcl4sr.models.layers import (
    CrossEntropyWithoutDenormals,
    full_softmax_loss,
    hard_readout,
    log_uniform_probability,
    sample_negatives,
    sampled_softmax_loss,
    value_rows,
)


def test_log_uniform_is_a_distribution_favouring_popular_ids():
    p = log_uniform_probability(torch.arange(1, 1001), 1000)
    assert float(p.double().sum()) == pytest.approx(1.0, abs=1e-5)
    assert (p[:-1] > p[1:]).all()


def test_sampler_matches_its_stated_probabilities():
    torch.manual_seed(0)
    ids, expected = sample_negatives(200_000, 50, log_uniform=True, device=torch.device("cpu"))
    counts = torch.bincount(ids, minlength=51)[1:].float()
    assert ids.min() >= 1 and ids.max() <= 50
    expected_by_id = 200_000 * log_uniform_probability(torch.arange(1, 51), 50)
    assert ((counts - expected_by_id).abs() < 5 * expected_by_id.sqrt()).all()  # within 5 sigma
    assert torch.allclose(expected, 200_000 * log_uniform_probability(ids, 50))


def test_sampled_softmax_equals_direct_computation():
    torch.manual_seed(3)
    table = torch.randn(21, 4)
    users, target = torch.randn(3, 4), torch.tensor([1, 5, 20])
    torch.manual_seed(11)
    loss = sampled_softmax_loss(users, target, table, n_negatives=6)
    torch.manual_seed(11)
    negatives, _ = sample_negatives(6, 20, True, torch.device("cpu"))
    total = 0.0
    for row in range(3):
        q = lambda i: 6 * math.log(1 + 1 / i) / math.log(21)  # noqa: E731 expected count of id i
        logits = [float(users[row] @ table[target[row]]) - math.log(q(int(target[row])))]
        logits += [float(users[row] @ table[n]) - math.log(q(int(n))) for n in negatives if n != target[row]]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert float(loss) == pytest.approx(total / 3, rel=1e-4)


def test_accidental_hits_are_removed():
    table = torch.randn(3, 2)
    users = torch.randn(4, 2)
    target = torch.ones(4, dtype=torch.long)
    torch.manual_seed(0)
    # with one item every negative is the target: after removing them the softmax has one class left
    loss = sampled_softmax_loss(users, target, table[:2], n_negatives=8)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_full_softmax_ignores_padding_row():
    table = torch.randn(6, 3)
    users, target = torch.randn(2, 3), torch.tensor([1, 5])
    expected = F.cross_entropy(users @ table[1:].T, target - 1)
    assert torch.allclose(full_softmax_loss(users, target, table), expected)


def test_hard_readout_picks_the_interest_closest_to_the_target():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[0.1, 0.9], [2.0, -1.0]])
    assert torch.equal(hard_readout(interests, target), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_capsule_coupling_sums_to_one_over_interests_and_ignores_padding():
    from hpcl4sr.models.layers import CapsuleRouting

    torch.manual_seed(0)
    routing = CapsuleRouting(dim=8, interests=3)
    features, mask = torch.randn(5, 6, 8), torch.rand(5, 6) > 0.3
    mask[:, 0] = True
    interests, coupling = routing(features, mask)
    assert interests.shape == (5, 3, 8) and coupling.shape == (5, 3, 6)
    assert torch.allclose(coupling.sum(dim=1), mask.float())  # 1 at real positions, 0 at padding
    assert (interests.norm(dim=-1) < 1).all()  # squashed
    shuffled = features.clone()
    shuffled[~mask] = torch.randn(int((~mask).sum()), 8)
    assert torch.allclose(routing(shuffled, mask)[0], interests, atol=1e-6)


def test_cross_entropy_without_denormals_is_cross_entropy_where_probabilities_are_normal():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 8, 3, 1, 5])
    ours = CrossEntropyWithoutDenormals.apply(logits, labels)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda x: CrossEntropyWithoutDenormals.apply(x, labels), (logits,))


def test_cross_entropy_without_denormals_zeroes_only_the_negligible_classes():
    # a confident classifier: class 0 leads by 70-100 logits, so most probabilities are below e^-60
    logits = torch.zeros(512, 300)
    logits[:, 0] = torch.linspace(70.0, 100.0, 512)
    logits[:, 1] = 50.0  # probability about e^-20 to e^-50: kept
    labels = torch.zeros(512, dtype=torch.long)
    labels[:8] = 2  # a wrong prediction keeps its full gradient of about -1 / N
    ours, reference = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    (0.1 * CrossEntropyWithoutDenormals.apply(ours, labels)).backward()
    (0.1 * F.cross_entropy(reference, labels)).backward()
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((reference.grad != 0) & (reference.grad.abs() < tiny)).any())  # the reference has denormals
    assert not bool(((ours.grad != 0) & (ours.grad.abs() < tiny)).any())
    kept = reference.grad.abs() > 0.1 / 512 * math.exp(-60)
    assert torch.allclose(ours.grad[kept], reference.grad[kept], rtol=1e-5, atol=0)
    assert bool((ours.grad[~kept] == 0).all()) and bool((~kept).any())
    assert ours.grad[:8, 2].tolist() == pytest.approx(reference.grad[:8, 2].tolist(), rel=1e-6)


def test_value_rows_is_indexing_with_a_backward_that_repeats_on_two_threads():
    # PIMI's interval buckets at the default batch: 128 x 30 x 30 indices into 65 values, far past the
    # size from which indexing's backward adds repeated indices in parallel
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(65, generator=generator, requires_grad=True)
    index = torch.randint(0, 65, (128, 30, 30), generator=generator)
    upstream = torch.randn(128, 30, 30, generator=generator)
    assert torch.equal(value_rows(values, index), values[index])
    (values[index] * upstream).sum().backward()
    by_indexing, values.grad = values.grad, None
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gradients = []
        for _ in range(8):
            (value_rows(values, index) * upstream).sum().backward()
            gradients.append(values.grad)
            values.grad = None
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(gradients[0], by_indexing, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(gradients[0], other) for other in gradients[1:])
