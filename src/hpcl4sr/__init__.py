"""hpcl4sr: multi-interest sequential recommendation around HPCL4SR (Zhu et al., WWW 2024).

`rec = hpcl4sr.load(path)` opens a run directory or an export for inference (see `Recommender`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hpcl4sr.serve.recommender import Recommender


def load(path: Any, **options: Any) -> Recommender:
    """A `hpcl4sr.serve.recommender.Recommender` for a run directory or an export; see its `load`."""
    from hpcl4sr.serve.recommender import load as load_recommender  # torch is imported on first use only

    return load_recommender(path, **options)


__all__ = ["__version__", "load"]
