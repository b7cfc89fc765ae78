"""hpcl4sr: multi-interest sequential recommendation around HPCL4SR (Zhu et al., WWW 2024).

`rec = hpcl4sr.load(path)` opens a run directory or an export for inference (README, "Serving").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hpcl4sr.serve.recommender import Recommender


def load(path: str | Path, data: str | Path | None = None, index: str = "exact", device: str = "cpu",
         checkpoint: str = "best.pt") -> Recommender:
    """A `Recommender` for a run directory (`hpcl4sr train --out`) or an export (`hpcl4sr export --out`).

    `data` overrides the run's dataset directory (or gives an export one, for `evaluate`); `index` is
    exact | faiss-flat | faiss-hnsw | faiss-ivf; `checkpoint` is best.pt or last.pt (runs only).
    """
    from hpcl4sr.serve.recommender import load as load_recommender  # torch is imported on first use only

    return load_recommender(path, data=data, index=index, device=device, checkpoint=checkpoint)


__all__ = ["__version__", "load"]
