"""The experiment file (see experiments/*.yaml): its schema, read and checked into an `Experiment`.

An experiment file names a grid of (model or config) x dataset x seed x overrides:

    datasets:  name -> {path: PREPARED_DIR} or {source: READER, raw: [FILE, ...], options: {...}}
                       or {source: READER, fetch: tafeng, options: {...}} (downloaded by `data fetch`)
    models:    row name -> {model: NAME, config: FILE or [FILE, ...], set: {section.key: value}}
    seeds:     [1, 2, 3]
    set:       {section.key: value}           applied to every cell (e.g. the iteration budget)
    sweep:     {section.key: [v1, v2, ...]}   optional: each key varied alone, the others at default
    ours:      row name or [row, ...]         optional: our rows, each compared with the rows not in ours
    paper:     dataset -> row -> metric -> % optional: the paper's figures, printed beside ours
    similarity: {users: 128}                  optional: draw the paper's Figure 1 for these rows

Paths are relative to the experiment file. A dataset's raw files can be given on the command line
instead (`experiment run --raw NAME=PATH[,PATH]`, see `Experiment.with_raw`), which is how a dataset that
cannot be downloaded is found. Every error names the file and the offending entry. `experiment` runs the
cells; this module does no work on disk beyond reading the file and its config files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcl4sr.config import load_yaml
from hpcl4sr.errors import UserError

FETCHABLE = ("tafeng",)  # datasets `hpcl4sr data fetch` can download
EXPERIMENT_KEYS = {"datasets", "models", "seeds", "set", "sweep", "ours", "paper", "similarity"}
ROW_KEYS = {"model", "config", "set"}
SIMILARITY_USERS = 128  # the test users Figure 1 samples when `similarity:` does not say


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: Path | None = None  # an already prepared directory
    source: str = ""
    raw: tuple[Path, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # PrepareOptions fields and reader options
    fetch: str = ""  # a dataset `hpcl4sr data fetch` downloads (tafeng), used when `raw` is empty


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    dataset: str
    row: str
    model: str
    layers: tuple[dict[str, Any], ...]  # config layers, first to last, without data path and seed
    seed: int
    variant: tuple[str, Any] | None = None  # the swept (section.key, value), if any

    @property
    def id(self) -> str:
        variant = f"/{self.variant[0]}={self.variant[1]}" if self.variant else ""
        return f"{self.dataset}/{self.row}{variant}/s{self.seed}"


@dataclass(frozen=True)
class Selection:
    """The part of a grid one `experiment run` trains (`--dataset`, `--row`, `--seed`); empty: all."""

    datasets: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    def options(self) -> list[str]:
        """The same selection as `experiment run` options (for the runners it starts)."""
        return [*(f"--dataset={name}" for name in self.datasets), *(f"--row={row}" for row in self.rows),
                *(f"--seed={seed}" for seed in self.seeds)]


@dataclass(frozen=True)
class Experiment:
    path: Path
    datasets: dict[str, DatasetSpec]
    rows: dict[str, tuple[str, tuple[dict[str, Any], ...]]]  # row -> (model name, config layers)
    seeds: tuple[int, ...]
    common: dict[str, Any]
    sweep: dict[str, list[Any]]
    ours: tuple[str, ...]
    paper: dict[str, Any]
    similarity: dict[str, Any] | None
    selection: Selection = Selection()

    def summary(self) -> dict[str, Any]:
        """What `experiment report` needs of the file, saved beside the results as experiment.json: the
        whole grid, whatever part of it this run trains."""
        return {"file": str(self.path), "datasets": list(self.datasets), "rows": list(self.rows),
                "seeds": list(self.seeds), "sweep": self.sweep, "ours": list(self.ours), "paper": self.paper,
                "similarity": self.similarity}

    @property
    def similarity_users(self) -> int | None:
        """How many test users the paper's Figure 1 samples; None when the file does not draw it."""
        return None if self.similarity is None else self.similarity.get("users", SIMILARITY_USERS)

    def select(self, datasets: list[str], rows: list[str], seeds: list[int]) -> Experiment:
        """The same grid, training only these datasets, rows and seeds (an empty list: all of them), e.g.
        a first pass on a small machine, or the datasets whose files are at hand."""
        for option, chosen, known in (("--dataset", datasets, list(self.datasets)), ("--row", rows, list(self.rows)),
                                      ("--seed", seeds, list(self.seeds))):
            unknown = [value for value in chosen if value not in known]
            if unknown:
                raise UserError(f"{option} {unknown[0]}: not one of {self.path}'s "
                                f"{option[2:]}s ({', '.join(map(str, known))})")
        return replace(self, selection=Selection(tuple(datasets), tuple(rows), tuple(seeds)))

    @property
    def selected_datasets(self) -> dict[str, DatasetSpec]:
        """The datasets this run trains on (only those are checked and prepared)."""
        return {name: spec for name, spec in self.datasets.items()
                if not self.selection.datasets or name in self.selection.datasets}

    def with_raw(self, files: dict[str, list[Path]]) -> Experiment:
        """The same grid reading these datasets' raw files from the given paths (the CLI's --raw)."""
        datasets = dict(self.datasets)
        for name, paths in files.items():
            if name not in datasets or datasets[name].path is not None:
                raw_names = [key for key, spec in datasets.items() if spec.path is None]
                raise UserError(f"--raw {name}=...: {self.path} has no dataset {name!r} prepared from raw files "
                                f"(those are: {', '.join(raw_names) or 'none'})")
            datasets[name] = replace(datasets[name], raw=tuple(Path(p).resolve() for p in paths))
        return replace(self, datasets=datasets)

    def cells(self) -> list[Cell]:
        """Every selected cell, dataset-major then row, variant and seed, the order they run in."""
        variants: list[tuple[str, Any] | None] = [
            (key, value) for key, values in self.sweep.items() for value in values] or [None]
        cells = []
        rows = {row: spec for row, spec in self.rows.items() if not self.selection.rows or row in self.selection.rows}
        seeds = self.selection.seeds or self.seeds
        for dataset in self.selected_datasets:
            for row, (model, layers) in rows.items():
                for variant in variants:
                    sweep_layer = (nested({variant[0]: variant[1]}, self.path, "sweep"),) if variant else ()
                    for seed in seeds:
                        cells.append(Cell(dataset, row, model, (*layers, self.common, *sweep_layer), seed, variant))
        return cells


def nested(dotted: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    """{"train.max_iters": 10} -> {"train": {"max_iters": 10}}; keys are checked later by the config."""
    layer: dict[str, Any] = {}
    for key, value in dotted.items():
        section, dot, name = str(key).partition(".")
        if not dot or not name:
            raise UserError(f"{path}: {where}: key {key!r} should read SECTION.KEY, e.g. train.max_iters")
        layer.setdefault(section, {})[name] = value
    return layer


def _mapping(value: Any, path: Path, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: {where}: expected a mapping, got {type(value).__name__}")
    return value


def _file_names(value: Any, path: Path, where: str, many: bool = True) -> list[str]:
    """A file name, or a list of them when `many`, as strings; anything else names the entry."""
    names = value if many and isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) and name for name in names):
        expected = "a file name or a list of them" if many else "a directory name"
        raise UserError(f"{path}: {where}: expected {expected}, got {value!r}")
    return names


def load_experiment(path: Path) -> Experiment:
    """Read and check an experiment file; every error names the file and the offending entry."""
    path = Path(path)
    spec = load_yaml(path)
    unknown = sorted(set(spec) - EXPERIMENT_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(EXPERIMENT_KEYS))})")
    base = path.parent

    datasets = {}
    for name, entry in _mapping(spec.get("datasets"), path, "datasets").items():
        entry = _mapping(entry, path, f"datasets.{name}")
        if "path" in entry:
            (prepared,) = _file_names(entry["path"], path, f"datasets.{name}.path", many=False)
            datasets[name] = DatasetSpec(name, path=(base / prepared).resolve())
        elif "source" in entry and ("raw" in entry or "fetch" in entry):
            raw = _file_names(entry["raw"], path, f"datasets.{name}.raw") if "raw" in entry else []
            fetch = entry.get("fetch", "")
            if fetch not in ("", *FETCHABLE):
                raise UserError(f"{path}: datasets.{name}.fetch: expected {' or '.join(FETCHABLE)}, got {fetch!r}")
            datasets[name] = DatasetSpec(name, source=entry["source"], raw=tuple((base / f).resolve() for f in raw),
                                         options=_mapping(entry.get("options"), path, f"datasets.{name}.options"),
                                         fetch=fetch)
        else:
            raise UserError(f"{path}: datasets.{name}: expected `path: PREPARED_DIR`, or `source:` with `raw:` "
                            "or `fetch:`")
    if not datasets:
        raise UserError(f"{path}: no datasets")

    rows = {}
    for name, entry in _mapping(spec.get("models"), path, "models").items():
        entry = _mapping(entry, path, f"models.{name}")
        unknown = sorted(set(entry) - ROW_KEYS)
        if unknown or "model" not in entry:
            raise UserError(f"{path}: models.{name}: expected keys model, config, set (got {sorted(entry)})")
        configs = _file_names(entry["config"], path, f"models.{name}.config") if "config" in entry else []
        layers = [load_yaml(base / file) for file in configs]
        layers.append(nested(_mapping(entry.get("set"), path, f"models.{name}.set"), path, f"models.{name}.set"))
        rows[name] = (str(entry["model"]), tuple(layers))
    if not rows:
        raise UserError(f"{path}: no models")

    seeds = spec.get("seeds", [2024])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{path}: seeds: expected a list of integers, got {seeds!r}")
    sweep = _mapping(spec.get("sweep"), path, "sweep")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: sweep.{key}: expected a non-empty list of values")
    ours = spec.get("ours", [])
    ours = [ours] if isinstance(ours, str) else ours
    if not isinstance(ours, list) or any(row not in rows for row in ours):
        raise UserError(f"{path}: ours: expected a model row or a list of them ({', '.join(rows)}), "
                        f"got {spec['ours']!r}")
    similarity = spec.get("similarity")
    if similarity is not None:
        similarity = _mapping(similarity, path, "similarity")
        users = similarity.get("users", SIMILARITY_USERS)
        if set(similarity) - {"users"} or isinstance(users, bool) or not isinstance(users, int) or users < 1:
            raise UserError(f"{path}: similarity: expected {{users: N}} with N a positive integer, got {similarity!r}")
    return Experiment(
        path=path, datasets=datasets, rows=rows, seeds=tuple(seeds),
        common=nested(_mapping(spec.get("set"), path, "set"), path, "set"),
        sweep=sweep, ours=tuple(ours), paper=_mapping(spec.get("paper"), path, "paper"),
        similarity=similarity,
    )


def parse_raw_option(values: list[str]) -> dict[str, list[Path]]:
    """`["amazon-beauty=a.txt,b.tsv"]` (the CLI's --raw) -> {"amazon-beauty": [a.txt, b.tsv]}."""
    files = {}
    for value in values:
        name, sep, paths = value.partition("=")
        if not sep or not name or not all(paths.split(",")):
            raise UserError(f"--raw {value!r}: expected NAME=PATH[,PATH], "
                            "e.g. amazon-beauty=Beauty.txt,item_categories.tsv")
        files[name] = [Path(p) for p in paths.split(",")]
    return files
