"""PIMI, UMI and REMI: training, and each model's own pieces against direct computations."""

import math
import warnings

import numpy as np
import polars as pl
import pytest
import torch

from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.data.prepare import PrepareOptions, prepare
from hpcl4sr.data.sources import RawLog
from hpcl4sr.errors import UserError
from hpcl4sr.models.layers import full_softmax_loss, hard_readout, sample_negatives, sampled_softmax_loss
from hpcl4sr.models.pimi import interval_buckets, resolve_time_unit
from hpcl4sr.models.umi import PROFILE_FREE_MESSAGE
from hpcl4sr.run import build_model, config_for_run

DAY = 86_400


def make_model(name: str, path, model: dict | None = None, max_len: int = 20):
    """`name` without repeat-aware scoring (tests/unit/test_repeat.py), so its own arithmetic is checked."""
    data = SequenceDataset(path)
    config = config_for_run(name, [{"data": {"path": str(path)}, "model": {"repeat": "none", **(model or {})}}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UMI's profile-free notice; tested on its own below
        return build_model(config, data, max_len), data, config


# --------------------------------------------------------------------------------------------- training

# ------------------------------------------------------------------------------------------------- REMI

def test_remi_regulariser_is_the_attention_covariance_diagonal(synthetic_dir):
    torch.manual_seed(0)
    model, data, _ = make_model("remi", synthetic_dir)
    batch = TrainSampler(data, 8, 20, 4, seed=1).sample()
    _, attention = model.interests_and_attention(batch)
    expected = 0.0
    for user in attention.detach().double():
        for weights in user:  # one interest's weights over the L positions
            variance = float(((weights - weights.mean()) ** 2).sum()) / model.config.dim
            expected += variance**2
    losses = model.loss(batch)
    assert losses["reg"].item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0
    assert losses["total"].item() == pytest.approx((losses["rec"] + 100.0 * losses["reg"]).item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["sampled", "full"])
def test_remi_with_beta_zero_is_the_plain_softmax(loss, synthetic_dir):
    torch.manual_seed(0)
    model, data, _ = make_model("remi", synthetic_dir, {"beta": 0.0, "loss": loss})
    batch = TrainSampler(data, 16, 20, 4, seed=2).sample()
    readout = hard_readout(model.interests(batch), model.item_embedding(batch.target))
    torch.manual_seed(5)
    remi = model.loss(batch)["rec"]
    torch.manual_seed(5)
    if loss == "sampled":
        plain = sampled_softmax_loss(readout, batch.target, model.item_embeddings(), 10 * 16,
                                     log_uniform=model.config.sampler == "log_uniform")
    else:
        plain = full_softmax_loss(readout, batch.target, model.item_embeddings())
    assert torch.equal(remi, plain)


def remi_loss_with_its_draws(model, data):
    """REMI's loss on a 4-user batch, with the 40 uniform negatives it drew (replayed from the same seed) and
    the readout and item table in float64, for direct computations of that loss."""
    batch = TrainSampler(data, 4, 20, 4, seed=3).sample()
    with torch.no_grad():
        readout = hard_readout(model.interests(batch), model.item_embedding(batch.target)).double()
        table = model.item_embeddings().double()
        torch.manual_seed(9)
        loss = float(model.loss(batch)["rec"])
        torch.manual_seed(9)
        negatives, _ = sample_negatives(40, model.n_items, False, torch.device("cpu"))
    return batch, readout, table, loss, negatives


def test_remi_hard_negatives_match_a_direct_computation(synthetic_dir):
    beta = 2.0
    torch.manual_seed(0)
    model, data, _ = make_model("remi", synthetic_dir, {"beta": beta, "sampler": "uniform"})
    batch, readout, table, ihn, negatives = remi_loss_with_its_draws(model, data)
    torch.manual_seed(9)
    with torch.no_grad():
        plain = float(sampled_softmax_loss(readout.float(), batch.target, table.float(), 40, log_uniform=False))
    log_q = math.log(40 / model.n_items)  # uniform sampler: the same correction for every class
    expected = 0.0
    for row, target in enumerate(batch.target.tolist()):
        scores = [float(readout[row] @ table[n]) for n in negatives.tolist() if n != target]
        weights = [math.exp(beta * s) for s in scores]
        mean = sum(weights) / len(weights)
        positive = float(readout[row] @ table[target]) - log_q
        normaliser = math.exp(positive) + sum(w / mean * math.exp(s - log_q) for w, s in zip(weights, scores))
        expected += -positive + math.log(normaliser)
    assert ihn == pytest.approx(expected / 4, rel=1e-5)
    # weights growing with the score put more mass on the negatives, so the loss can only grow
    assert ihn > plain


def test_remi_trains_by_default_as_its_authors_code(synthetic_dir):
    """Uniform negatives, 10 x batch size (1,280 at batch 128), hard-negative weights on uncorrected logits."""
    torch.manual_seed(0)
    model, data, config = make_model("remi", synthetic_dir, {"beta": 1.0})
    assert (config.model.sampler, config.model.negatives * config.train.batch_size) == ("uniform", 1280)
    batch, readout, table, loss, negatives = remi_loss_with_its_draws(model, data)
    expected = 0.0
    for row, target in enumerate(batch.target.tolist()):  # their formula: no log-Q anywhere
        scores = torch.stack([readout[row] @ table[n] for n in negatives.tolist() if n != target])
        weights = torch.exp(scores) / torch.exp(scores).mean()
        positive = readout[row] @ table[target]
        expected += float(torch.log(torch.exp(positive) + (weights * torch.exp(scores)).sum()) - positive)
    assert loss == pytest.approx(expected / 4, rel=1e-5)


# ------------------------------------------------------------------------------------------------- PIMI

def test_interval_buckets_are_whole_days_clipped_at_the_span():
    days = torch.tensor([[0, 1, 3, 100]])
    assert interval_buckets(days, "day", 64)[0].tolist() == [
        [0, 1, 3, 64],
        [1, 0, 2, 64],
        [3, 2, 0, 64],
        [64, 64, 64, 0],
    ]
    # seconds: calendar days (floor), so 1 s before midnight and midnight are a day apart
    seconds = torch.tensor([[DAY - 1, DAY, 2 * DAY + 5, 70 * DAY]])
    assert interval_buckets(seconds, "second", 64)[0, 0].tolist() == [0, 1, 2, 64]
    assert interval_buckets(seconds, "second", 3)[0, 1].tolist() == [1, 0, 1, 3]
    # Tmall MMDD across month ends: May 31 -> June 1 is one day, June 1 -> Nov 11 is 163
    mmdd = torch.tensor([[531, 601, 1111]])
    assert interval_buckets(mmdd, "mmdd", 500)[0, 1].tolist() == [1, 0, 163]


def test_time_unit_auto_follows_the_source():
    assert resolve_time_unit("auto", "tafeng") == "day"
    assert resolve_time_unit("auto", "tmall") == "mmdd"
    assert resolve_time_unit("auto", "synthetic") == "second"
    assert resolve_time_unit("second", "csv") == "second"
    with pytest.raises(UserError, match="model.time_unit"):
        resolve_time_unit("auto", "csv")


def test_pimi_reads_the_times_of_real_items(synthetic_dir):
    torch.manual_seed(0)
    model, data, _ = make_model("pimi", synthetic_dir)
    model.eval()
    batch = TrainSampler(data, 8, 20, 4, seed=4).sample()
    before = model.interests(batch)
    batch.history_times = batch.history_times.masked_fill(~batch.mask, 123 * DAY)  # garbage at padding
    assert torch.allclose(model.interests(batch), before, atol=1e-6)
    # spread the real items' times out by a week each: the interval buckets, hence the interests, change
    batch.history_times = batch.history_times + torch.arange(20) * 7 * DAY * batch.mask
    assert not torch.allclose(model.interests(batch), before, atol=1e-5)


# -------------------------------------------------------------------------------------------------- UMI

def profile_dataset(tmp_path) -> SequenceDataset:
    """Six users of 8 interactions; u2's age is null and u5 has no profile row at all."""
    rows = [(f"u{u}", f"i{(3 * u + t) % 10}", f"c{(3 * u + t) % 3}", t) for u in range(6) for t in range(8)]
    frame = pl.DataFrame(rows, schema=["user", "item", "category", "time"], orient="row")
    features = pl.DataFrame({
        "user": ["u0", "u1", "u2", "u3", "u4"],
        "AGE_GROUP": ["25-29", "<25", None, "25-29", "30-34"],
        "PIN_CODE": ["105", "110", "110", "221", "105"],
    })
    raw = RawLog(frame.with_row_index("order").with_columns(pl.col("order").cast(pl.Int64)).lazy(), features)
    prepare(raw, PrepareOptions(source="toy", filter="none", min_count=1, split=(1.0, 0.0, 0.0)), tmp_path / "d")
    return SequenceDataset(tmp_path / "d")


def test_user_profile_codes_with_unknown_zero(tmp_path):
    data = profile_dataset(tmp_path)
    codes, sizes = data.user_profile()
    by_user = {name: codes[data.user_index(name)].tolist() for name in ("u0", "u1", "u2", "u3", "u4", "u5")}
    # sorted values: ages "25-29" < "30-34" < "<25"; pins "105" < "110" < "221"
    assert by_user == {"u0": [1, 1], "u1": [3, 2], "u2": [0, 2], "u3": [1, 3], "u4": [2, 1], "u5": [0, 0]}
    assert sizes == [4, 4]


def full_batch(data: SequenceDataset):
    users = np.arange(data.n_users)
    return data.make_batch(users, np.full(data.n_users, 6), 8)


def test_umi_interests_follow_the_profile(tmp_path):
    data = profile_dataset(tmp_path)
    torch.manual_seed(0)
    model, _, _ = make_model("umi", tmp_path / "d", max_len=8)
    assert model.has_profile and "profile_codes" not in model.state_dict()
    model.eval()
    batch = full_batch(data)
    before = model.interests(batch)
    user = data.user_index("u2")  # the user with a null age: code 0, the learned "unknown" row
    model.profile_codes[user] = torch.tensor([3, 3])
    after = model.interests(batch)
    changed = (after - before).abs().amax(dim=(1, 2)) > 1e-6
    assert changed.tolist() == [row == user for row in range(data.n_users)]


def test_umi_profile_variant_trains_every_parameter(tmp_path):
    data = profile_dataset(tmp_path)
    torch.manual_seed(0)
    model, _, _ = make_model("umi", tmp_path / "d", max_len=8)
    batch = full_batch(data)
    batch.target = torch.as_tensor(data.items[data.offsets[:-1] + 6], dtype=torch.long)
    model.loss(batch)["total"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert any(name.startswith("field_embeddings") for name, _ in model.named_parameters())


def test_umi_without_a_profile_says_so(tmp_path, synthetic_dir):
    config = config_for_run("umi", [])
    with pytest.warns(UserWarning, match=PROFILE_FREE_MESSAGE):
        model = build_model(config, SequenceDataset(synthetic_dir), 20)
    assert not model.has_profile and not hasattr(model, "field_embeddings")
    data = profile_dataset(tmp_path)  # a profile, switched off by the config
    with pytest.warns(UserWarning, match="profile-free variant"):
        build_model(config_for_run("umi", [{"model": {"use_profile": False}}]), data, 8)


def test_umi_scores_every_negative_with_its_best_interest(synthetic_dir):
    torch.manual_seed(0)
    model, data, _ = make_model("umi", synthetic_dir)
    batch = TrainSampler(data, 4, 20, 4, seed=6).sample()
    with torch.no_grad():
        interests = model.interests(batch).double()
        table = model.item_embeddings().double()
        torch.manual_seed(8)
        loss = float(model.loss(batch)["rec"])
        torch.manual_seed(8)
        negatives, counts = sample_negatives(40, model.n_items, True, torch.device("cpu"))
    q = {int(n): float(c) for n, c in zip(negatives, counts)}
    expected = 0.0
    for row, target in enumerate(batch.target.tolist()):
        target_count = 40 * math.log(1 + 1 / target) / math.log(model.n_items + 1)
        logits = [float((interests[row] @ table[target]).max()) - math.log(target_count)]
        logits += [float((interests[row] @ table[n]).max()) - math.log(q[n]) for n in negatives.tolist() if n != target]
        expected += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert loss == pytest.approx(expected / 4, rel=1e-5)
