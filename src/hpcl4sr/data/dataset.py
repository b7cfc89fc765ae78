"""A prepared dataset directory as CSR arrays, with vectorised training and evaluation batches.

Every batch is cut with numpy fancy indexing over the CSR arrays (never a Python loop per sample), so
sampling stays a small share of a training step even at batch sizes in the thousands. The arrays are
memory-mapped, so several processes share one copy through the page cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from hpcl4sr.errors import UserError

SPLITS = ("train", "valid", "test")
REQUIRED_FILES = ("meta.json", "offsets.npy", "items.npy", "times.npy", "item_category.npy",
                  *(f"{split}_users.npy" for split in SPLITS))


@dataclass
class Batch:
    """What a model sees. `history` is right-padded with 0 and `mask` marks real positions."""

    history: torch.Tensor  # int64 [B, L]
    mask: torch.Tensor  # bool [B, L]
    history_times: torch.Tensor  # int64 [B, L], 0 at padding
    users: torch.Tensor  # int64 [B], user indices into the dataset
    target: torch.Tensor | None = None  # int64 [B], training only
    targets: torch.Tensor | None = None  # int64 [B, T] right-padded with 0, evaluation only

    def to(self, device: torch.device) -> Batch:
        moved = {
            name: (value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value)
            for name, value in self.__dict__.items()
        }
        return Batch(**moved)


class SequenceDataset:
    """The arrays of one prepared dataset directory plus the ids needed to talk to users."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise UserError(
                f"{self.path}: not a prepared dataset directory (missing {', '.join(missing)}); "
                "create one with `hpcl4sr prepare`"
            )
        self.meta: dict[str, Any] = self._read_meta()
        self.offsets = self._array("offsets.npy", mmap=True)
        self.items = self._array("items.npy", mmap=True)
        self.times = self._array("times.npy", mmap=True)
        self.item_category = self._array("item_category.npy")
        self.split_users = {name: self._array(f"{name}_users.npy") for name in SPLITS}
        self.lengths = np.diff(self.offsets)
        self.n_users = len(self.offsets) - 1
        self.n_items = int(self.meta["items"])
        self.n_categories = int(self.meta["categories"])
        self._check_consistent()
        self._raw_ids: dict[str, list[str]] = {}

    def _damaged(self, name: str, what: str) -> UserError:
        return UserError(f"{self.path / name}: {what}; the dataset is damaged, prepare it again")

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._damaged("meta.json", f"not valid JSON ({type(err).__name__})") from None
        keys = ("items", "categories", "max_len")
        if not isinstance(meta, dict) or not all(isinstance(meta.get(key), int) for key in keys):
            raise self._damaged("meta.json", f"expected an object with integer {', '.join(keys)}")
        return meta

    def _array(self, name: str, mmap: bool = False) -> np.ndarray:
        """A one-dimensional integer array, refused with its file name when it cannot be read."""
        try:
            array = np.load(self.path / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise self._damaged(name, f"not a readable .npy array ({reason})") from None
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise self._damaged(name, f"expected a 1-d integer array, found {array.dtype} {array.shape}")
        return array

    def _check_consistent(self) -> None:
        """The cheap invariants every later index relies on, so damage is an error here, not a crash later."""
        if self.n_users < 1 or self.offsets[0] != 0 or (self.lengths < 0).any():
            raise self._damaged("offsets.npy", "expected non-decreasing row pointers starting at 0")
        for name, array in (("items.npy", self.items), ("times.npy", self.times)):
            if len(array) != self.offsets[-1]:
                raise self._damaged(name, f"holds {len(array)} values, offsets.npy expects {self.offsets[-1]}")
        if len(self.items) and not (1 <= self.items.min() and self.items.max() <= self.n_items):
            raise self._damaged("items.npy", f"expected item ids 1..{self.n_items} (meta.json items)")
        if len(self.item_category) != self.n_items + 1:
            raise self._damaged("item_category.npy", f"expected {self.n_items + 1} values (meta.json items + 1)")
        for name, users in self.split_users.items():
            if len(users) and not (0 <= users.min() and users.max() < self.n_users):
                raise self._damaged(f"{name}_users.npy", f"expected user indices 0..{self.n_users - 1}")

    def raw_ids(self, kind: str) -> list[str]:
        """Raw ids of `user`, `item` or `category`, indexed by internal id (read on first use)."""
        if kind not in self._raw_ids:
            path = self.path / f"{kind}_ids.txt"
            try:
                lines = path.read_text(encoding="utf-8").split("\n")
            except FileNotFoundError:
                raise self._damaged(path.name, "missing") from None
            except UnicodeDecodeError:
                raise self._damaged(path.name, "not UTF-8 text") from None
            self._raw_ids[kind] = lines[:-1]
        return self._raw_ids[kind]

    def user_index(self, raw_user: str) -> int:
        try:
            return self.raw_ids("user").index(raw_user)
        except ValueError:
            raise UserError(f"user {raw_user!r} is not in {self.path / 'user_ids.txt'}") from None

    def split_of(self, user: int) -> str:
        return next(name for name in SPLITS if np.isin(user, self.split_users[name]))

    def user_profile(self) -> tuple[np.ndarray, list[int]] | None:
        """The profile fields of meta["user_features"] as integer codes, or None without a profile.

        Returns (codes [n_users, n_fields] int64, each field's vocabulary size). Within a field the distinct
        values are numbered 1..V in sorted string order; 0 means unknown (a null, or a user with no row),
        so a field's vocabulary size is V + 1.
        """
        fields = self.meta.get("user_features") or []
        path = self.path / "user_features.parquet"
        if not fields or not path.is_file():
            return None
        frame = pl.read_parquet(path, columns=["user_index", *fields])
        ranked = frame.select(pl.col(f).cast(pl.String).rank("dense").fill_null(0) for f in fields)
        codes = np.zeros((self.n_users, len(fields)), dtype=np.int64)
        codes[frame["user_index"].to_numpy()] = ranked.to_numpy()
        return codes, [int(ranked[f].max() or 0) + 1 for f in fields]

    def _gather(
        self, users: np.ndarray, ends: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last `max_len` interactions before position `ends` of each user, right-padded."""
        starts = np.maximum(ends - max_len, 0)
        steps = np.arange(max_len)
        valid = steps[None, :] < (ends - starts)[:, None]
        index = self.offsets[users][:, None] + starts[:, None] + steps[None, :]
        index = np.where(valid, index, 0)
        history = np.where(valid, self.items[index], 0)
        times = np.where(valid, self.times[index], 0)
        return history, times, valid

    def make_batch(self, users: np.ndarray, cuts: np.ndarray, max_len: int, targets: str = "next") -> Batch:
        """History = last `max_len` items of seq[:cut], plus the target(s) after the cut.

        targets: `next` sets `target` = seq[cut] (training), `rest` sets `targets` = seq[cut:]
        (evaluation), `none` sets neither (serving from the whole sequence).
        """
        history, times, valid = self._gather(users, cuts, max_len)
        batch = Batch(
            history=torch.from_numpy(history.astype(np.int64)),
            mask=torch.from_numpy(valid),
            history_times=torch.from_numpy(times.astype(np.int64)),
            users=torch.from_numpy(users.astype(np.int64)),
        )
        if targets == "rest":
            ends = self.lengths[users]
            width = int((ends - cuts).max())
            steps = np.arange(width)
            valid_t = steps[None, :] < (ends - cuts)[:, None]
            index = np.where(valid_t, self.offsets[users][:, None] + cuts[:, None] + steps[None, :], 0)
            batch.targets = torch.from_numpy(np.where(valid_t, self.items[index], 0).astype(np.int64))
        elif targets == "next":
            batch.target = torch.from_numpy(self.items[self.offsets[users] + cuts].astype(np.int64))
        return batch

    def eval_users(self, split: str) -> np.ndarray:
        """Users of a split with at least two interactions (so both history and targets are non-empty)."""
        if split not in SPLITS:
            raise UserError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
        users = self.split_users[split]
        return users[self.lengths[users] >= 2]

    def eval_batches(self, split: str, batch_size: int, max_len: int, users: np.ndarray | None = None
                     ) -> Iterator[Batch]:
        """ComiRec's protocol: cut at k = int(0.8 * len); history before it, every later item a target."""
        users = self.eval_users(split) if users is None else users
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            cuts = (0.8 * self.lengths[chunk]).astype(np.int64)
            yield self.make_batch(chunk, cuts, max_len, targets="rest")


class TrainSampler:
    """Draws training batches: users uniformly, a cut k in [min_history, len), target seq[k].

    Its random state is a numpy PCG64 generator whose state goes into checkpoints, so a resumed run
    draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, dataset: SequenceDataset, batch_size: int, max_len: int, min_history: int, seed: int,
                 stream: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.max_len = max_len
        self.min_history = min_history
        users = dataset.split_users["train"]
        self.users = users[dataset.lengths[users] > min_history]
        if len(self.users) == 0:
            raise UserError(
                f"{dataset.path}: no training user has more than data.min_history={min_history} interactions"
            )
        # Stream 0 is the single-process sequence; rank r of a distributed run draws from stream r.
        self.rng = np.random.default_rng(seed if stream == 0 else [seed, stream])

    def sample(self) -> Batch:
        users = self.users[self.rng.integers(0, len(self.users), self.batch_size)]
        lengths = self.dataset.lengths[users]
        cuts = self.min_history + (self.rng.random(self.batch_size) * (lengths - self.min_history)).astype(
            np.int64
        )
        return self.dataset.make_batch(users, cuts, self.max_len)

    def state_dict(self) -> dict[str, str]:
        # PCG64's state holds 128-bit integers; JSON text keeps checkpoints loadable with weights_only=True.
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, str]) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
