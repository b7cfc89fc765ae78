"""A run directory on disk -> a ready model: its config, dataset, weights and device.

Inference (evaluate, recommend, export, analysis, reports) loads runs through this module and never
imports the trainer; the trainer builds its model through the same `build_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from hpcl4sr.config import RunConfig, build_config
from hpcl4sr.data.dataset import SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import SequentialRecommender, model_class


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def config_for_run(model_name: str, layers: list[dict[str, Any]]) -> RunConfig:
    cls = model_class(model_name)
    return build_config(model_name, cls.config_class(), layers)


def read_run_config(run: Path, extra_layers: list[dict[str, Any]] = ()) -> RunConfig:
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml); train one with `hpcl4sr train`")
    saved = yaml.safe_load(path.read_text())
    return config_for_run(saved["model_name"], [saved, *extra_layers])


def open_dataset(config: RunConfig) -> tuple[SequenceDataset, int]:
    """The run's dataset and the effective max_len (the config's, else the one `prepare` recorded)."""
    if not config.data.path:
        raise UserError("no dataset: pass --data DIR (a directory written by `hpcl4sr prepare`)")
    dataset = SequenceDataset(config.data.path)
    return dataset, config.data.max_len or int(dataset.meta["max_len"])


def build_model(config: RunConfig, dataset: SequenceDataset, max_len: int) -> SequentialRecommender:
    return model_class(config.model_name)(config.model, dataset, max_len)


def load_run(run: Path, checkpoint: str = "best.pt", device: str | None = None
             ) -> tuple[RunConfig, SequenceDataset, SequentialRecommender, int]:
    """A trained run ready for inference: its config, dataset, model (eval mode) and max_len.

    `device` None: CUDA when available unless the run was trained with train.device cpu.
    """
    config = read_run_config(run)
    dataset, max_len = open_dataset(config)
    model = build_model(config, dataset, max_len)
    model.load_state_dict(load_checkpoint(Path(run) / checkpoint)["model"])
    device = device or ("cpu" if config.train.device == "cpu" else "auto")
    return config, dataset, model.to(resolve_device(device)).eval(), max_len
