"""What a model needs to know about its data to be built: the catalogue, not the interactions.

Models are built from a `Catalogue` rather than from a `SequenceDataset`, so that an exported artifact
(docs/design-notes.md, "Serving") rebuilds a model without the prepared dataset. A catalogue made from a
dataset keeps that dataset as `training`, from which models that fit something on the training users
(HPCL4SR's category graph) compute it; a catalogue read from an artifact has no `training`, and those
models then receive what they fitted through their persistent buffers, i.e. with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hpcl4sr.data.dataset import SequenceDataset


@dataclass
class Catalogue:
    """The item catalogue and the user-profile vocabulary of one dataset.

    `profile` is (codes [n_users + 1, fields] int64, each field's vocabulary size) or None without a user
    profile: row u holds user u's codes and the extra last row is all 0 (every field unknown), the
    profile of a history that belongs to no known user (a fresh session).
    """

    n_items: int
    n_categories: int
    item_category: np.ndarray  # int category id of each item id, [n_items + 1], 0 = padding
    source: str = ""  # the dataset's source (meta.json), which tells PIMI the unit of its times
    n_users: int = 0
    profile: tuple[np.ndarray, list[int]] | None = None
    training: SequenceDataset | None = field(default=None, repr=False)  # the prepared dataset, when built from one

    @classmethod
    def of(cls, dataset: SequenceDataset) -> Catalogue:
        profile = dataset.user_profile()
        if profile is not None:
            codes, sizes = profile
            profile = np.concatenate([codes, np.zeros_like(codes[:1])]), sizes
        return cls(dataset.n_items, dataset.n_categories, dataset.item_category,
                   str(dataset.meta.get("source", "")), dataset.n_users, profile, training=dataset)

    @property
    def unknown_user(self) -> int:
        """The user index of a history that belongs to no known user (its profile row is all unknown)."""
        return self.n_users

    def user_profile(self) -> tuple[np.ndarray, list[int]] | None:
        return self.profile
