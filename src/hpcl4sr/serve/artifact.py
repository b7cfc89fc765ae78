"""A self-contained model artifact: everything inference needs, without the prepared dataset.

`hpcl4sr export --run RUN --out DIR` writes (besides the embeddings it always wrote, see `export_run`):

  artifact.json       format version, model name, the model's config, the effective max_len, catalogue
                      sizes, the dataset's source and the user-profile field sizes
  weights.pt          the model's state dict, persistent buffers included (HPCL4SR's diffused category
                      graph; the tables of models that fit some)
  item_ids.txt, category_ids.txt, user_ids.txt, item_category.npy   the id maps and item categories
  histories.npy, history_times.npy   each known user's last max_len items and times, right-padded
  user_split.npy      0/1/2: the split (train/valid/test) each user belongs to
  popularity.npy      interactions per item id in the dataset (what a cold history is answered with)
  user_profile.npy    UMI's profile codes per user (only when the dataset has a profile)

`ServingData` is the in-memory form, built from a dataset (a run directory) or read from an artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpcl4sr import __version__
from hpcl4sr.catalogue import Catalogue
from hpcl4sr.config import RunConfig
from hpcl4sr.data.dataset import SPLITS, Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import SequentialRecommender
from hpcl4sr.run import recorded_config

ARTIFACT_FORMAT = "hpcl4sr-artifact"
ARTIFACT_VERSION = 1


def read_ids(path: Path) -> list[str]:
    """Raw ids, one a line, indexed by internal id (as `prepare` writes them)."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@dataclass
class ServingData:
    """What serving reads besides the model: id maps, each known user's history, popularity."""

    catalogue: Catalogue
    item_ids: list[str]  # raw id of item id i (0 = padding)
    category_ids: list[str]
    user_ids: list[str]  # raw id of user index u
    histories: np.ndarray  # int64 [users, max_len], right-padded with 0
    history_times: np.ndarray  # int64 [users, max_len]
    user_split: np.ndarray  # uint8 [users]: index into SPLITS
    popularity: np.ndarray  # int64 [items + 1]
    dataset: SequenceDataset | None = None  # present when loaded from a run directory

    def __post_init__(self) -> None:
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids) if i > 0}
        self.user_index = {raw: u for u, raw in enumerate(self.user_ids)}

    def user_batch(self, users: np.ndarray) -> Batch:
        """The known users' whole histories (their last max_len items) as a model batch."""
        history = torch.from_numpy(self.histories[users])
        return Batch(history=history, mask=history > 0, history_times=torch.from_numpy(self.history_times[users]),
                     users=torch.from_numpy(np.asarray(users, dtype=np.int64)))

    @classmethod
    def from_dataset(cls, dataset: SequenceDataset, max_len: int) -> ServingData:
        users = np.arange(dataset.n_users)
        batch = dataset.make_batch(users, dataset.lengths.astype(np.int64), max_len, targets="none")
        split = np.zeros(dataset.n_users, dtype=np.uint8)
        for number, name in enumerate(SPLITS):
            split[dataset.split_users[name]] = number
        return cls(Catalogue.of(dataset), dataset.raw_ids("item"), dataset.raw_ids("category"),
                   dataset.raw_ids("user"), batch.history.numpy(), batch.history_times.numpy(), split,
                   np.bincount(np.asarray(dataset.items), minlength=dataset.n_items + 1).astype(np.int64),
                   dataset)


def write_artifact(model: SequentialRecommender, config: RunConfig, data: ServingData, out: Path) -> None:
    """Write the artifact files of `model` into the (staging) directory `out`."""
    catalogue = data.catalogue
    profile = catalogue.user_profile()
    meta = {
        "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "hpcl4sr": __version__,
        "model_name": config.model_name, "model": config.to_dict()["model"], "max_len": model.max_len,
        "items": catalogue.n_items, "categories": catalogue.n_categories, "users": len(data.user_ids),
        "source": catalogue.source, "profile_sizes": profile[1] if profile is not None else None,
    }
    (out / "artifact.json").write_text(json.dumps(meta, indent=2) + "\n")
    torch.save({name: value.cpu() for name, value in model.state_dict().items()}, out / "weights.pt")
    for kind, ids in (("item", data.item_ids), ("category", data.category_ids), ("user", data.user_ids)):
        (out / f"{kind}_ids.txt").write_text("".join(f"{raw}\n" for raw in ids), encoding="utf-8")
    np.save(out / "item_category.npy", catalogue.item_category)
    np.save(out / "histories.npy", data.histories)
    np.save(out / "history_times.npy", data.history_times)
    np.save(out / "user_split.npy", data.user_split)
    np.save(out / "popularity.npy", data.popularity)
    if profile is not None:
        np.save(out / "user_profile.npy", profile[0])


def is_artifact(path: Path) -> bool:
    return (Path(path) / "artifact.json").is_file()


def read_artifact(path: Path) -> tuple[RunConfig, ServingData, dict[str, torch.Tensor]]:
    """An artifact's config, serving data and weights; raises UserError naming what is missing or wrong."""
    path = Path(path)
    meta_path = path / "artifact.json"
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_path}: not a readable artifact manifest ({err})") from None
    if meta.get("format") != ARTIFACT_FORMAT or meta.get("version") != ARTIFACT_VERSION:
        raise UserError(f"{meta_path}: expected format {ARTIFACT_FORMAT} version {ARTIFACT_VERSION}, "
                        f"got {meta.get('format')} version {meta.get('version')}")
    needed = ["weights.pt", "item_ids.txt", "category_ids.txt", "user_ids.txt", "item_category.npy",
              "histories.npy", "history_times.npy", "user_split.npy", "popularity.npy"]
    if meta["profile_sizes"] is not None:
        needed.append("user_profile.npy")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path}: incomplete artifact (missing {', '.join(missing)}); export it again")
    config = recorded_config(meta["model_name"], [{"model": meta["model"], "data": {"max_len": meta["max_len"]}}])
    profile = None
    if meta["profile_sizes"] is not None:
        profile = np.load(path / "user_profile.npy"), [int(size) for size in meta["profile_sizes"]]
    catalogue = Catalogue(int(meta["items"]), int(meta["categories"]), np.load(path / "item_category.npy"),
                          str(meta["source"]), int(meta["users"]), profile)
    data = ServingData(catalogue, read_ids(path / "item_ids.txt"), read_ids(path / "category_ids.txt"),
                       read_ids(path / "user_ids.txt"), np.load(path / "histories.npy"),
                       np.load(path / "history_times.npy"), np.load(path / "user_split.npy"),
                       np.load(path / "popularity.npy"))
    weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    return config, data, weights
