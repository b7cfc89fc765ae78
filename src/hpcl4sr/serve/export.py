"""`hpcl4sr export`: a trained run as a self-contained artifact plus its embeddings as plain arrays.

The artifact files (see `hpcl4sr.serve.artifact`) rebuild the model without the dataset; the arrays
(item_embeddings.npy, user_interests.npy, manifest.json) are for users who serve the vectors elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hpcl4sr.atomic import atomic_directory
from hpcl4sr.config import RunConfig
from hpcl4sr.models.base import SequentialRecommender
from hpcl4sr.serve.artifact import ServingData, write_artifact


@torch.no_grad()
def export_run(model: SequentialRecommender, config: RunConfig, data: ServingData, out: Path,
               batch_size: int = 4096) -> dict[str, Any]:
    """Write the artifact, id maps and (models with vectors) item embeddings and every known user's K interests
    to `out`, atomically."""
    with atomic_directory(out) as staging:
        write_artifact(model, config, data, staging)
        manifest: dict[str, Any] = {
            "items": data.catalogue.n_items,
            "files": {
                "item_ids.txt": "raw item id of internal id i on line i (line 0 = padding)",
                "item_category.npy": "int32 category id of each item id",
                "artifact.json": "the model artifact: `hpcl4sr.load(DIR)` or `hpcl4sr serve --model DIR`",
            },
        }
        if not model.fitted:  # a fitted model (pop, repeat, itemknn) has no vectors to export
            np.save(staging / "item_embeddings.npy", model.item_embeddings().float().cpu().numpy())
            chunks = []
            users = np.arange(len(data.user_ids))
            for start in tqdm(range(0, len(users), batch_size), desc="user interests", leave=False):
                batch = data.user_batch(users[start : start + batch_size]).to(model.device)
                chunks.append(model.interests(batch).float().cpu().numpy())
            interests = np.concatenate(chunks)
            np.save(staging / "user_interests.npy", interests)
            manifest.update(users=int(interests.shape[0]), interests=int(interests.shape[1]),
                            dim=int(interests.shape[2]))
            manifest["files"].update({
                "item_embeddings.npy": "float32 [items + 1, dim]; row i = item id i, row 0 = padding",
                "user_interests.npy": "float32 [users, interests, dim]; row u = line u of user_ids.txt",
            })
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
