"""Run configuration: frozen dataclasses, YAML files of partial overrides, and `--set key=value` pairs.

A run's configuration has three sections: `train` (the trainer), `data` (how samples are cut) and
`model` (the chosen model's own dataclass, declared next to the model). Every layer (dataclass
defaults, then a YAML file, then `--set` pairs) only overrides what it names, and every key is checked
against the dataclass so a typo fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from hpcl4sr.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's settings; the defaults are the paper's (Adam, lr 1e-3, batch 128).

    Attributes:
        batch_size: training samples per step (per process under torchrun).
        lr: Adam's learning rate.
        weight_decay: Adam's L2 penalty.
        optimizer: adam (every parameter, every step) | lazy_adam (the item table gets sparse gradients and
            torch's SparseAdam updates only the rows a step looked up: history, targets and sampled
            negatives; the other parameters keep Adam). A step's cost then grows with the batch, not the
            catalogue. Untouched rows' Adam moments are not decayed (docs/design-notes.md). Needs
            model.loss: sampled and weight_decay: 0, and one process (no torchrun).
        max_iters: the step budget; training stops earlier when early stopping says so.
        eval_every: steps between validations (each one writes last.pt, and best.pt when better).
        patience: validations without a better valid recall@50 before stopping.
        seed: seeds the initialisation, the batch sampling and the negatives.
        device: auto (CUDA when present) | cpu | cuda.
        log_every: steps between the training-loss records of metrics.jsonl.
        eval_batch_size: users per evaluation batch.
        threads: torch intra-op threads; 0 keeps torch's default.
        precision: fp32 | bf16 (autocast of the training step; evaluation stays fp32).
        compile: torch.compile the training step.
    """

    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    max_iters: int = 60_000
    eval_every: int = 1_000
    patience: int = 10
    seed: int = 2024
    device: str = "auto"
    log_every: int = 100
    eval_batch_size: int = 1024
    threads: int = 0
    precision: str = "fp32"
    compile: bool = False

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"train.device: expected auto, cpu or cuda, got {self.device!r}")
        if self.optimizer not in ("adam", "lazy_adam"):
            raise UserError(f"train.optimizer: expected adam or lazy_adam, got {self.optimizer!r}")
        if self.optimizer == "lazy_adam" and self.weight_decay > 0:
            raise UserError("train.optimizer: lazy_adam has no weight decay (torch's SparseAdam); "
                            "use train.weight_decay: 0 or train.optimizer: adam")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"train.precision: expected fp32 or bf16, got {self.precision!r}")
        for name in ("batch_size", "max_iters", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"train.{name}: expected a positive integer, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"train.lr: expected a finite positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"train.weight_decay: expected a finite number >= 0, got {self.weight_decay}")
        for name in ("threads", "patience"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name}: expected an integer >= 0, got {getattr(self, name)}")


# What `train --resume` may change: how long and how fast the run goes on, never what it learns (the model,
# the data, the seed, the optimiser's settings), which the checkpoint's weights and optimiser state embody.
RESUME_MAY_CHANGE = frozenset({"max_iters", "patience", "eval_every", "log_every", "threads", "device",
                               "eval_batch_size", "precision", "compile"})
# Settings that change the speed of a run, not its results: two runs differing only in them are one run.
SPEED_ONLY = frozenset({"threads", "device", "eval_batch_size", "log_every", "compile"})


@dataclass(frozen=True)
class DataConfig:
    """How training and evaluation samples are cut from the prepared sequences.

    Attributes:
        path: the prepared dataset directory (`hpcl4sr prepare`); filled from --data.
        max_len: history length; 0 takes the value `prepare` recorded (30 Ta-Feng / Amazon, 20 Tmall).
        min_history: a training cut k is drawn uniformly from [min_history, len).
    """

    path: str = ""
    max_len: int = 0
    min_history: int = 4

    def validate(self) -> None:
        if self.max_len < 0 or self.min_history < 1:
            raise UserError("data.max_len must be >= 0 and data.min_history >= 1")


@dataclass(frozen=True)
class RunConfig:
    model_name: str
    model: Any  # the model's own frozen dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
        }


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the `Attributes:` sections of `cls`'s docstring and its bases'."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        lines = (klass.__dict__.get("__doc__") or "").splitlines()
        if "    Attributes:" not in lines:
            continue
        name = None
        for line in lines[lines.index("    Attributes:") + 1:]:
            if line.startswith("        ") and not line.startswith("         ") and ":" in line:
                name, _, text = line.strip().partition(":")
                docs[name] = text.strip()
            elif line.startswith("            ") and name:  # a description's continuation line
                docs[name] += " " + line.strip()
            elif line.strip():
                break
    return docs


def describe(config: RunConfig) -> str:
    """`config` as YAML that `--config` reads back, each key commented with its description."""
    lines = [f"model_name: {config.model_name}"]
    for section in ("train", "data", "model"):
        values = getattr(config, section)
        docs = field_docs(type(values))
        lines.append(f"{section}:" if dataclasses.fields(values) else f"{section}: {{}}")
        for item in dataclasses.fields(values):
            value = yaml.safe_dump(getattr(values, item.name), default_flow_style=True).strip()
            value = value.removesuffix("\n...").strip()
            lines.append(f"  {item.name}: {value}  # {docs.get(item.name, '')}".rstrip())
    return "\n".join(lines) + "\n"


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Turn `["train.lr=1e-3", "model.fusion=add"]` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw_value = pair.partition("=")
        if not sep or not key or "." not in key:
            raise UserError(f"--set {pair!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.001")
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = parse_yaml(raw_value, f"--set {key}")
    return nested


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error instead of the last
    value silently winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML from a user (a file's text, or a --set value): safe tags only, no duplicate keys; an error
    names `source` and the line and column."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{source}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file of config sections (or an experiment file): a mapping, checked as `parse_yaml` does."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start} cannot be decoded)") from None
    loaded = parse_yaml(text, str(path)) or {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping with sections train / data / model")
    return loaded


def _coerce(cls: type, section: str, name: str, value: Any) -> Any:
    """Check one override against the dataclass field's type; ints are accepted where floats are."""
    expected = get_type_hints(cls)[name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept what Python reads as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if expected in (int, float, str, bool) and not isinstance(value, expected) or (
        expected is int and isinstance(value, bool)
    ):
        raise UserError(
            f"{section}.{name}: expected {expected.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def apply_overrides(base: Any, section: str, overrides: dict[str, Any]) -> Any:
    """Return a copy of the frozen dataclass `base` with `overrides` applied, rejecting unknown keys."""
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown option {section}.{unknown[0]} (known: {', '.join(sorted(known))})")
    cls = type(base)
    checked = {name: _coerce(cls, section, name, value) for name, value in overrides.items()}
    return dataclasses.replace(base, **checked)


def build_config(
    model_name: str,
    model_defaults: Any,
    layers: list[dict[str, Any]],
) -> RunConfig:
    """Merge override layers (first to last) onto the defaults and validate the result."""
    sections = {"train": TrainConfig(), "data": DataConfig(), "model": model_defaults}
    for layer in layers:
        unknown = sorted(set(layer) - set(sections) - {"model_name"})
        if unknown:
            raise UserError(f"unknown config section {unknown[0]!r} (known: train, data, model)")
        for section, values in layer.items():
            if section == "model_name":
                continue
            if not isinstance(values, dict):
                raise UserError(f"config section {section!r}: expected a mapping of key: value")
            sections[section] = apply_overrides(sections[section], section, values)
    config = RunConfig(model_name, sections["model"], sections["train"], sections["data"])
    for part in (config.train, config.data, config.model):
        if hasattr(part, "validate"):
            part.validate()
    return config
