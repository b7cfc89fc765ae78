"""A run directory on disk -> a ready model: its config, dataset, weights and device.

Inference (evaluate, recommend, export, analysis, reports) loads runs through this module and never
imports the trainer; the trainer builds its model through the same `build_model`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from hpcl4sr.catalogue import Catalogue
from hpcl4sr.config import RunConfig, build_config, load_yaml, parse_assignments
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
    """A checkpoint written by the trainer, with finite weights; anything else is refused naming the file.

    weights_only=True never runs code from the file: a pickled payload is an error here, not an action.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, random bytes, a foreign pickle: torch raises many types
        # torch's own message suggests weights_only=False, which would run the file's code: not repeated here
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}): truncated, damaged, or "
                        "holding objects other than tensors, which are never unpickled") from None
    weights = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: not a checkpoint written by `hpcl4sr train` (no model weights)")
    bad = next((name for name, value in weights.items()
                if value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
    if bad is not None:
        raise UserError(f"{path}: weight {bad!r} holds NaN or infinite values; the run diverged when it was "
                        "saved, so it cannot be used")
    return checkpoint


def load_weights(model: SequentialRecommender, path: Path) -> dict[str, Any]:
    """Load checkpoint `path` into `model` (refused when its weights are another model's); returns it."""
    return fit_weights(model, load_checkpoint(path), path)


def fit_weights(model: SequentialRecommender, checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """Load the weights of `checkpoint` (read from `path`) into `model`, refusing another model's."""
    mine, theirs = model.state_dict(), checkpoint["model"]
    # Checkpoints written before a buffer became persistent (HPCL4SR's category graph) lack it: a model built
    # from a dataset has already computed it, so it is kept.
    buffers = dict(model.named_buffers())
    theirs = {**{name: buffers[name] for name in set(mine) - set(theirs) if name in buffers}, **theirs}
    mismatch = next((name for name in sorted(set(mine) | set(theirs))
                     if name not in mine or name not in theirs or mine[name].shape != theirs[name].shape), None)
    if mismatch is not None:
        raise UserError(f"{path}: weights do not fit model {type(model).__name__} as configured in config.yaml "
                        f"(first difference: {mismatch!r}); was it written by another run?")
    model.load_state_dict(theirs)
    return checkpoint


def config_for_run(model_name: str, layers: list[dict[str, Any]]) -> RunConfig:
    cls = model_class(model_name)
    return build_config(model_name, cls.config_class(), layers)


# Keys added to a model's config after runs and artifacts were written with it, each with the value that
# reproduces what was written then (the default may have changed since: `repeat` became `history`).
ADDED_MODEL_KEYS = {"repeat": "none"}


def recorded_config(model_name: str, layers: list[dict[str, Any]]) -> RunConfig:
    """The config of something written earlier (a run's config.yaml, an artifact's manifest), first layer
    first: a key of `ADDED_MODEL_KEYS` that it lacks reads as what the code did before the key existed."""
    fields = getattr(model_class(model_name).config_class, "__dataclass_fields__", {})
    recorded = dict(layers[0]) if layers else {}
    model = dict(recorded.get("model") or {})
    for key, before in ADDED_MODEL_KEYS.items():
        if key in fields:
            model.setdefault(key, before)
    return config_for_run(model_name, [{**recorded, "model": model}, *layers[1:]])


def command_line_layers(files: list[Path], data: Path | None, assignments: list[str]) -> list[dict[str, Any]]:
    """The config layers of a command line, first to last: each --config file, --data DIR, the --set pairs."""
    layers = [load_yaml(path) for path in files]
    if data is not None:
        layers.append({"data": {"path": str(Path(data).resolve())}})
    return [*layers, parse_assignments(assignments)]


# config.yaml's data.path is written relative to the run directory when it can be (so that moving a run and
# its dataset together keeps them paired) and this top-level key keeps the absolute path as a fallback.
ABSOLUTE_DATA_KEY = "data_path_absolute"


def read_run_config(run: Path, extra_layers: list[dict[str, Any]] = ()) -> RunConfig:
    """The run's config with data.path resolved: the layers' own path (e.g. --data) wins, then the recorded
    absolute path, then the recorded path relative to the run directory (a run moved with its dataset).

    Runs written before paths were recorded relative (data.path absolute, data.max_len 0) load unchanged.
    """
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml); train one with `hpcl4sr train`")
    saved = load_yaml(path)
    if not isinstance(saved.get("model_name"), str):
        raise UserError(f"{path}: no model_name; not a config.yaml written by `hpcl4sr train`")
    absolute = saved.pop(ABSOLUTE_DATA_KEY, "")
    recorded = str(saved.get("data", {}).get("path", ""))
    # The absolute path first: a relative one can point at another dataset that happens to sit there now.
    candidates = [Path(absolute) if absolute else None, Path(run) / recorded if recorded else None]
    found = next((str(c.resolve()) for c in candidates if c is not None and c.is_dir()), recorded or absolute)
    saved = {**saved, "data": {**saved.get("data", {}), "path": found}}
    return recorded_config(saved["model_name"], [saved, *extra_layers])


def run_config_for_disk(config: RunConfig, run: Path) -> dict[str, Any]:
    """What train writes to config.yaml: the effective max_len, and data.path relative to the run directory
    (when both sit on one file system tree) with the absolute path beside it."""
    saved = config.to_dict()
    if config.data.path:
        data = Path(config.data.path).resolve()
        saved["data"]["max_len"] = config.data.max_len or int(read_meta(data).get("max_len", 0))
        saved["data"]["path"] = os.path.relpath(data, Path(run).resolve())
        saved[ABSOLUTE_DATA_KEY] = str(data)
    return saved


def read_meta(data: Path) -> dict[str, Any]:
    """The dataset's meta.json, or {} when it is missing or unreadable (opening the dataset reports that)."""
    try:
        meta = json.loads((Path(data) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def with_data(config: RunConfig, data: Path | None) -> RunConfig:
    """`config` with data.path replaced by an explicit --data DIR (None: unchanged)."""
    if data is None:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, path=str(Path(data).resolve())))


def open_dataset(config: RunConfig) -> tuple[SequenceDataset, int]:
    """The run's dataset and the effective max_len (the config's, else the one `prepare` recorded)."""
    if not config.data.path:
        raise UserError("no dataset: pass --data DIR (a directory written by `hpcl4sr prepare`)")
    if not Path(config.data.path).is_dir():
        raise UserError(f"{config.data.path}: the run's dataset directory is gone; pass --data DIR "
                        "(the directory written by `hpcl4sr prepare`)")
    dataset = SequenceDataset(config.data.path)
    return dataset, config.data.max_len or int(dataset.meta["max_len"])


def build_model(config: RunConfig, data: SequenceDataset | Catalogue, max_len: int) -> SequentialRecommender:
    """The untrained model of `config` over a dataset (for training) or a catalogue (e.g. an artifact's)."""
    catalogue = Catalogue.of(data) if isinstance(data, SequenceDataset) else data
    return model_class(config.model_name)(config.model, catalogue, max_len)


def load_run(run: Path, checkpoint: str = "best.pt", device: str | None = None, data: Path | None = None
             ) -> tuple[RunConfig, SequenceDataset, SequentialRecommender]:
    """A trained run ready for inference: its config, dataset and model (eval mode).

    The model carries the history length it was built for (`model.max_len`), which every inference path
    reads. `device` None: CUDA when available unless the run was trained with train.device cpu. `data`
    overrides the recorded dataset directory.
    """
    config = with_data(read_run_config(run), data)
    dataset, max_len = open_dataset(config)
    model = build_model(config, dataset, max_len)
    load_weights(model, Path(run) / checkpoint)
    device = device or ("cpu" if config.train.device == "cpu" else "auto")
    return config, dataset, model.to(resolve_device(device)).eval()
