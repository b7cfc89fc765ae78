"""Recommendations for one user and the export of a trained run's embeddings.

Serving uses the user's whole known sequence (its last max_len items) as the history, the same exact
top-k and K-interest merge as evaluation, and reports which interest retrieved each item.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hpcl4sr.atomic import atomic_directory
from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import SequentialRecommender


def _full_history_batch(dataset: SequenceDataset, users: np.ndarray, max_len: int) -> Batch:
    return dataset.make_batch(users, dataset.lengths[users].astype(np.int64), max_len, targets="none")


@torch.no_grad()
def recommend(
    model: SequentialRecommender, dataset: SequenceDataset, raw_user: str, n: int, max_len: int
) -> dict[str, Any]:
    """Top-n raw item ids for a user, each with its category and the interest that retrieved it."""
    if n <= 0:
        raise UserError(f"-n: expected a positive integer, got {n}")
    user = dataset.user_index(raw_user)
    device = model.device
    batch = _full_history_batch(dataset, np.array([user]), max_len).to(device)
    items, scores, interest = model.rank(batch, n)
    item_ids, category_ids = dataset.raw_ids("item"), dataset.raw_ids("category")
    history = batch.history[0][batch.mask[0]].tolist()
    return {
        "user": raw_user,
        "split": dataset.split_of(user),
        "history": [item_ids[i] for i in history],
        "recommendations": [
            {
                "rank": rank + 1,
                "item": item_ids[item],
                "category": category_ids[dataset.item_category[item]],
                "interest": int(k),
                "score": round(float(score), 5),
            }
            for rank, (item, score, k) in enumerate(zip(items[0].tolist(), scores[0].tolist(), interest[0]))
            if item > 0
        ],
    }


@torch.no_grad()
def export_run(
    model: SequentialRecommender, dataset: SequenceDataset, max_len: int, out: Path, batch_size: int = 4096
) -> dict[str, Any]:
    """Write item embeddings, id maps and every user's K interests to `out`, atomically."""
    with atomic_directory(out) as staging:
        device = model.device
        np.save(staging / "item_embeddings.npy", model.item_embeddings().float().cpu().numpy())
        users = np.arange(dataset.n_users)
        chunks = []
        for start in tqdm(range(0, len(users), batch_size), desc="user interests", leave=False):
            batch = _full_history_batch(dataset, users[start : start + batch_size], max_len).to(device)
            chunks.append(model.interests(batch).float().cpu().numpy())
        interests = np.concatenate(chunks)
        np.save(staging / "user_interests.npy", interests)
        for kind in ("user", "item", "category"):
            shutil.copyfile(dataset.path / f"{kind}_ids.txt", staging / f"{kind}_ids.txt")
        np.save(staging / "item_category.npy", dataset.item_category)
        manifest = {
            "users": int(interests.shape[0]),
            "interests": int(interests.shape[1]),
            "dim": int(interests.shape[2]),
            "items": dataset.n_items,
            "files": {
                "item_embeddings.npy": "float32 [items + 1, dim]; row i = item id i, row 0 = padding",
                "user_interests.npy": "float32 [users, interests, dim]; row u = line u of user_ids.txt",
                "item_ids.txt": "raw item id of internal id i on line i (line 0 = padding)",
                "item_category.npy": "int32 category id of each item id",
            },
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
