import numpy as np
import pytest

from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.errors import UserError


def sequence(data: SequenceDataset, user: int) -> list[int]:
    return data.items[data.offsets[user]:data.offsets[user + 1]].tolist()


def test_training_batch_follows_comirec_protocol(synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    sampler = TrainSampler(data, batch_size=256, max_len=20, min_history=4, seed=1)
    batch = sampler.sample()
    train_users = set(data.split_users["train"].tolist())
    for row in range(256):
        user = int(batch.users[row])
        assert user in train_users
        seq = sequence(data, user)
        history = batch.history[row][batch.mask[row]].tolist()
        n = len(history)
        # right padding only, and the history is the run of items just before the target
        assert batch.mask[row, :n].all() and not batch.mask[row, n:].any()
        assert (batch.history[row, n:] == 0).all()
        cuts = [k for k in range(4, len(seq)) if seq[max(0, k - 20):k] == history and seq[k] == int(batch.target[row])]
        assert cuts, f"row {row}: history/target is not a cut of the user's sequence"
        assert any(n == min(20, k) for k in cuts)


def test_sampler_state_round_trip_reproduces_batches(synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    first = TrainSampler(data, 32, 20, 4, seed=9)
    first.sample()
    state = first.state_dict()
    expected = first.sample()
    second = TrainSampler(data, 32, 20, 4, seed=123)
    second.load_state_dict(state)
    got = second.sample()
    assert np.array_equal(expected.history.numpy(), got.history.numpy())
    assert np.array_equal(expected.target.numpy(), got.target.numpy())


def test_eval_batches_cut_at_eighty_percent(synthetic_dir):
    data = SequenceDataset(synthetic_dir)
    users = data.eval_users("test")
    seen = 0
    for batch in data.eval_batches("test", batch_size=50, max_len=20):
        for row in range(len(batch.users)):
            seq = sequence(data, int(batch.users[row]))
            k = int(0.8 * len(seq))
            assert batch.history[row][batch.mask[row]].tolist() == seq[max(0, k - 20):k]
            targets = batch.targets[row]
            assert targets[targets > 0].tolist() == seq[k:]  # duplicates kept, order kept
            seen += 1
    assert seen == len(users) == len(data.split_users["test"])


def test_bad_split_and_missing_directory(tmp_path, synthetic_dir):
    with pytest.raises(UserError, match="--split"):
        SequenceDataset(synthetic_dir).eval_users("holdout")
    with pytest.raises(UserError, match="not a prepared dataset directory"):
        SequenceDataset(tmp_path)
