"""Running an experiment grid (read by `experiment_file`) cell by cell, resumable, and recording its results.

A missing raw file of a dataset stops with a message naming the files and the `--raw` option; a `fetch:`
dataset without raw files is downloaded into OUT/raw/NAME on first use.

`run_experiment` prepares each dataset once into OUT/data/NAME, then trains the cells one after another
into OUT/runs/DATASET/ROW[/KEY=VALUE]/sS: a cell whose test_metrics.json exists is skipped, one with a
last.pt is resumed (so a run killed halfway continues where it stopped), and each finished cell gets one
line in OUT/results.jsonl plus what the report reads of it: its per-user test metrics
(OUT/runs/.../test_users.npz, for the significance tests) and, when the file asks for Figure 1, its
interest similarity sample (interest_similarity.npz).

Cells are keyed by their resolved config (less the settings that change only speed): a run directory or
a results line written for another config than the file now asks for (an edited row) is never taken for
this cell's result; the run is refused before any work and its results line replaced.

Several runners may work on one directory at once (e.g. one per core or per GPU): each cell is held by
an advisory lock that dies with its process, so a runner skips the cells another one is training.
`run_with_runners` starts them and waits for them (`experiment run --runners N`).

`archive_experiment` keeps a grid's results without its checkpoints and prepared data (tens of kilobytes a
cell): the report reads the archive as it reads OUT, and `experiment run` with the archive as OUT goes on
with the cells it lacks, so a grid longer than one machine's lifetime can be carried over in pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hpcl4sr.atomic import (
    atomic_directory,
    atomic_output,
    check_writable_parent,
    exclusive_lock,
    lock_is_held,
    write_text,
)
from hpcl4sr.config import SPEED_ONLY, RunConfig
from hpcl4sr.errors import UserError
from hpcl4sr.experiment_file import Cell, DatasetSpec, Experiment
from hpcl4sr.models.base import model_class
from hpcl4sr.run import config_for_run, read_meta, read_run_config


def dataset_path(spec: DatasetSpec, out: Path) -> Path:
    """Where the cells of `spec` find their prepared dataset (OUT/data/NAME unless the file names one)."""
    return spec.path if spec.path is not None else out / "data" / spec.name


def check_dataset(spec: DatasetSpec, out: Path) -> None:
    """What can be checked of a dataset entry before anything is prepared or trained."""
    from hpcl4sr.data.prepare import PrepareOptions
    from hpcl4sr.data.sources import READERS

    if spec.path is not None:
        if not (spec.path / "meta.json").is_file():
            raise UserError(f"{spec.path}: not a prepared dataset (no meta.json); run `hpcl4sr prepare` first")
        return
    if (out / "data" / spec.name / "meta.json").is_file():
        return
    if spec.source not in READERS:
        raise UserError(f"dataset {spec.name}: unknown source {spec.source!r} (known: {', '.join(READERS)})")
    missing = [file for file in spec.raw if not file.is_file()]
    if missing:  # (a `fetch:` entry has no raw files: it is fetched when prepared)
        expected = ",".join(f"PATH/{file.name}" for file in spec.raw)
        raise UserError(f"dataset {spec.name}: raw file {missing[0]} not found; pass the dataset's file(s) to "
                        f"`hpcl4sr experiment run` as --raw {spec.name}={expected} (or train the other "
                        "datasets alone with --dataset NAME)")
    PrepareOptions(spec.source, **_split_options(spec)[0]).validate()


def _split_options(spec: DatasetSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """A dataset entry's options: (those of `prepare`, those of the source's reader)."""
    from hpcl4sr.data.prepare import PrepareOptions

    prepare_fields = set(PrepareOptions.__dataclass_fields__) - {"source"}
    return ({k: v for k, v in spec.options.items() if k in prepare_fields},
            {k: v for k, v in spec.options.items() if k not in prepare_fields})


def prepared_dataset(spec: DatasetSpec, out: Path) -> Path:
    """The prepared directory of `spec` (checked by `check_dataset`), prepared into OUT/data/NAME on first use."""
    from hpcl4sr.data.fetch import fetch_tafeng
    from hpcl4sr.data.prepare import prepare_from_files

    target = dataset_path(spec, out)
    if not (target / "meta.json").is_file():
        raw = list(spec.raw)
        if not raw:  # a `fetch:` dataset (load_experiment allows no other without raw files)
            try:
                raw = [fetch_tafeng(out / "raw" / spec.name)]
            except UserError as err:
                raise UserError(f"dataset {spec.name}: {err}; or pass the CSV with --raw {spec.name}=PATH") from None
        options, reader = _split_options(spec)
        prepare_from_files(spec.source, raw, target, reader, **options)
    return target


def cell_config(cell: Cell, data: Path, extra: dict[str, Any] | None = None) -> Any:
    """The cell's run config; `extra` is a last layer (the CLI's --set)."""
    own = {"data": {"path": str(data)}, "train": {"seed": cell.seed}}
    return config_for_run(cell.model, [*cell.layers, own, extra or {}])


def _result_fields(config: RunConfig, out: Path) -> dict[str, Any]:
    """What decides a run's results, flattened to `section.key`: the config less the speed-only settings,
    with a dataset inside OUT named relative to it (so a moved experiment directory keeps its cells). A
    fitted model reads no train setting but the seed, so a grid's budget never makes it another cell."""
    resolved = config.to_dict()
    fields = {"model_name": resolved.pop("model_name")}
    fitted = model_class(config.model_name).fitted
    for section, values in resolved.items():
        fields.update({f"{section}.{key}": value for key, value in values.items()
                       if not (section == "train" and (key in SPEED_ONLY or (fitted and key != "seed")))})
    data = Path(fields["data.path"]).resolve()
    fields["data.path"] = str(data)
    if data.is_relative_to(out.resolve()):
        fields["data.path"] = str(data.relative_to(out.resolve()))
    return fields


def result_key(config: RunConfig, out: Path) -> str:
    """A cell's identity beyond its id: a short hash of `_result_fields`."""
    text = json.dumps(_result_fields(config, out), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same_setting(key: str, recorded: Any, cell: Any, config: RunConfig) -> bool:
    """Whether a run's recorded setting is what the cell asks for. A run records what it used: the
    dataset's max_len where the cell says 0 ("the dataset's"), and a fitted model's chosen value where the
    cell lists candidates."""
    if key == "data.max_len" and cell == 0:
        return recorded in (0, read_meta(Path(config.data.path)).get("max_len"))
    if isinstance(cell, list) and not isinstance(recorded, list):
        return recorded in cell
    return recorded == cell


def _check_not_stale(run: Path, cell: Cell, config: RunConfig, out: Path) -> None:
    """Refuse a run directory trained for another config than `cell` now has (the file was edited)."""
    if not (run / "config.yaml").is_file():
        return
    before, now = _result_fields(read_run_config(run), out), _result_fields(config, out)
    changed = next((key for key in sorted(set(before) | set(now))
                    if not _same_setting(key, before.get(key), now.get(key), config)), None)
    if changed is not None:
        raise UserError(f"{run}: trained with {changed}={before.get(changed)!r}, but cell {cell.id} now has "
                        f"{now.get(changed)!r}; remove that run directory or choose another --out")


def read_results(out: Path) -> list[dict[str, Any]]:
    file = out / "results.jsonl"
    if not file.is_file():
        return []
    results = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{file} line {number}: not a JSON object ({err.msg})") from None
    return results


def _record_test_outputs(run: Path, similarity_users: int | None) -> None:
    """What the report reads of a finished cell, computed once from best.pt: the per-user test metrics
    (test_users.npz, for paired significance tests) and, for `similarity_users` (None: the experiment draws
    no Figure 1), the interest similarity sample (interest_similarity.npz)."""
    from hpcl4sr.analysis import record_interest_similarities, recorded_interest_similarities
    from hpcl4sr.evaluate import user_metrics
    from hpcl4sr.run import load_run

    target = run / "test_users.npz"
    similarity = similarity_users is not None and recorded_interest_similarities(run, similarity_users) is None
    if target.is_file() and not similarity:
        return
    config, dataset, model = load_run(run, "best.pt")
    if not target.is_file():
        users = dataset.eval_users("test")
        values = user_metrics(model, dataset, "test", config.train.eval_batch_size, users=users)
        with atomic_output(target) as temporary, temporary.open("wb") as file:
            np.savez_compressed(file, users=users, **values)  # a quarter of the size: most users score 0
    if similarity:
        record_interest_similarities(run, model, dataset, similarity_users)


def _record_result(out: Path, cell: Cell, run: Path, key: str) -> None:
    """Append the cell's line to results.jsonl unless a runner already did; a line of the same cell for
    another config (`key`) is replaced."""
    with exclusive_lock(out / ".results.lock", wait=True):
        results = read_results(out)
        if any(result["cell"] == cell.id and result.get("key") == key for result in results):
            return
        kept = [result for result in results if result["cell"] != cell.id]
        if len(kept) != len(results):
            write_text(out / "results.jsonl", "".join(json.dumps(result) + "\n" for result in kept))
        result = {"cell": cell.id, "key": key, "dataset": cell.dataset, "row": cell.row, "model": cell.model,
                  "seed": cell.seed, "variant": list(cell.variant) if cell.variant else None,
                  "run": str(run.relative_to(out)), "metrics": json.loads((run / "test_metrics.json").read_text())}
        with (out / "results.jsonl").open("a") as file:  # one line per write: a kill leaves whole lines
            file.write(json.dumps(result) + "\n")


def archive_experiment(out: Path, archive: Path) -> int:
    """Copy what the report reads of `out` into the new directory `archive`: experiment.json, results.jsonl
    and each finished cell's config, metrics log and test outputs, not its checkpoints nor the prepared
    data. Returns the number of cells. Unfinished cells are left out (a grid run on the archive starts
    them afresh)."""
    from hpcl4sr.analysis import SIMILARITY_FILE

    out = Path(out)
    if not (out / "experiment.json").is_file():
        raise UserError(f"{out}: not an experiment directory (no experiment.json); expected the --out of "
                        "`hpcl4sr experiment run`")
    with exclusive_lock(out / ".results.lock", wait=True):  # no runner appends a line while we copy
        results = read_results(out)
        if not results:
            raise UserError(f"{out}/results.jsonl: no finished cell yet")
        with atomic_directory(archive, "archive") as staging:
            for run in sorted({result["run"] for result in results}):  # a sweep's twins share one run
                (staging / run).mkdir(parents=True)
                for name in ("config.yaml", "metrics.jsonl", "test_metrics.json", "test_users.npz",
                             SIMILARITY_FILE):
                    if (out / run / name).is_file():
                        shutil.copy2(out / run / name, staging / run / name)
                if not (staging / run / "test_users.npz").is_file():
                    raise UserError(f"{out / run}: a finished cell without test_users.npz; rerun "
                                    "`hpcl4sr experiment run` on it to record it")
            shutil.copy2(out / "experiment.json", staging / "experiment.json")
            shutil.copy2(out / "results.jsonl", staging / "results.jsonl")
    return len(results)


def prepare_datasets(experiment: Experiment, out: Path) -> dict[str, Path]:
    """Every dataset's prepared directory; one process prepares, any other waits for it."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / ".data.lock", wait=True):
        return {name: prepared_dataset(spec, out) for name, spec in experiment.selected_datasets.items()}


def checked_cells(experiment: Experiment, out: Path, extra: dict[str, Any] | None = None
                  ) -> tuple[list[Cell], list[RunConfig], list[str]]:
    """Every cell with its config and result key, after every check that needs no work: the output path,
    the datasets, each cell's config, and the run directories already there."""
    check_writable_parent(out, "--out")
    cells = experiment.cells()
    for spec in experiment.selected_datasets.values():
        check_dataset(spec, out)
    configs = [cell_config(cell, dataset_path(experiment.datasets[cell.dataset], out), extra) for cell in cells]
    for cell, config in zip(cells, configs):
        _check_not_stale(out / "runs" / cell.id, cell, config, out)
    return cells, configs, [result_key(config, out) for config in configs]


def run_experiment(experiment: Experiment, out: Path, progress: bool = True,
                   extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every unfinished cell of `experiment` into `out`; returns all of results.jsonl.

    `extra` is one more config layer for every cell (the CLI's --set), meant for settings that change
    speed, not results, such as train.threads or train.device.
    """
    from hpcl4sr.train import train

    out = Path(out)
    cells, configs, keys = checked_cells(experiment, out, extra)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "experiment.json", json.dumps(experiment.summary(), indent=2) + "\n")
    prepare_datasets(experiment, out)
    elsewhere = []
    bar = tqdm(cells, desc=f"experiment {experiment.path.stem}", unit="cell", disable=not progress,
               dynamic_ncols=True)
    for index, cell in enumerate(bar):
        bar.set_postfix_str(cell.id)
        # A sweep's default value is swept once per key: train that config once and record it under each id.
        twin = next((cells[i] for i in range(index) if keys[i] == keys[index]), None)
        run = out / "runs" / (twin or cell).id
        if twin is not None:
            if (run / "test_metrics.json").is_file():
                _record_result(out, cell, run, keys[index])
            else:  # a concurrent runner is still training the twin
                elsewhere.append(cell.id)
            continue
        with exclusive_lock(out / "runs" / f"{cell.id}.lock", wait=False) as holder:
            if holder is not None:
                elsewhere.append(cell.id)
                continue
            if not (run / "test_metrics.json").is_file():
                if run.is_dir() and not (run / "last.pt").is_file():
                    shutil.rmtree(run)  # a runner killed before the cell's first checkpoint: start it afresh
                train(configs[index], run, resume=(run / "last.pt").is_file(), progress=False)
            # a fitted model has no interest vectors to compare
            _record_test_outputs(run, None if model_class(cell.model).fitted else experiment.similarity_users)
            _record_result(out, cell, run, keys[index])
    bar.close()
    if elsewhere:
        tqdm.write(f"{len(elsewhere)} cell(s) were being trained by another runner (rerun to record them "
                   f"once it ends): {', '.join(elsewhere)}")
    return read_results(out)


def grid_status(experiment: Experiment, out: Path) -> str:
    """A table per dataset of every cell's state, read from `out` without changing it: the test recall@50
    of a finished cell (marked "not recorded" while its line is not in results.jsonl yet: the next
    `experiment run` writes it without training), the step and best valid recall@50 of one being trained
    or stopped halfway, "-" for one not begun (`experiment status`)."""
    from hpcl4sr.analysis import valid_curve

    out = Path(out)
    results = {result["cell"]: result for result in read_results(out)}
    every_cell = experiment.cells()
    sections = []
    for dataset, spec in experiment.selected_datasets.items():
        cells = [cell for cell in every_cell if cell.dataset == dataset]
        seeds = list(dict.fromkeys(cell.seed for cell in cells))
        table: dict[str, dict[int, str]] = {}
        counts = dict.fromkeys(("finished", "not recorded", "training", "stopped", "begun", "to do"), 0)
        for cell in cells:
            config = cell_config(cell, dataset_path(spec, out))
            run = out / "runs" / cell.id
            result = results.get(cell.id)
            if result is not None and result.get("key") == result_key(config, out):
                state, text = "finished", f"{100 * result['metrics']['recall@50']:.2f}"
            elif (run / "test_metrics.json").is_file():  # tested; killed before its line was written
                tested = json.loads((run / "test_metrics.json").read_text())
                state, text = "not recorded", f"{100 * tested['recall@50']:.2f} not recorded"
            elif model_class(cell.model).fitted:  # seconds to minutes, and a fit cut short starts again
                fitting = (run / "config.yaml").is_file() and lock_is_held(out / "runs" / f"{cell.id}.lock")
                state, text = ("training", "fitting") if fitting else ("to do", "-")
            elif (run / "config.yaml").is_file():
                held = lock_is_held(out / "runs" / f"{cell.id}.lock")
                state = {True: "training", False: "stopped", None: "begun"}[held]  # None: the system cannot tell
                try:
                    steps, values = valid_curve(run)
                    progress = f"{steps[-1]:,}/{config.train.max_iters:,}, best {100 * values.max():.2f}"
                except UserError:  # no validation yet
                    progress = f"0/{config.train.max_iters:,}"
                text = f"{state} {progress}"
            else:
                state, text = "to do", "-"
            counts[state] += 1
            table.setdefault(cell.id.split("/", 1)[1].rsplit("/", 1)[0], {})[cell.seed] = text
        summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
        lines = [f"{dataset}: {len(cells)} cells, {summary} (finished: test recall@50 %; otherwise step/cap "
                 "and best valid recall@50 %)", "", "| row | " + " | ".join(f"s{seed}" for seed in seeds) + " |",
                 "|---|" + "---|" * len(seeds)]
        lines += [f"| {row} | " + " | ".join(by_seed.get(seed, "") for seed in seeds) + " |"
                  for row, by_seed in table.items()]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def run_with_runners(experiment: Experiment, out: Path, runners: int, assignments: list[str],
                     progress: bool = True) -> list[dict[str, Any]]:
    """Train the grid with `runners` processes of `experiment run` at once, then record every cell.

    Each runner gets an equal share of the cores (train.threads, unless `assignments` set it) and writes
    its output to OUT/runner-K.log; the bar counts the grid's finished cells. Raises if a runner failed.
    """
    from hpcl4sr.config import parse_assignments

    out = Path(out)
    checked_cells(experiment, out, parse_assignments(assignments))  # fail here, not in N runners' logs
    prepare_datasets(experiment, out)  # here, so the runners (which re-read the file, not --raw) find them
    if "train.threads" not in parse_assignments(assignments).get("train", {}):
        assignments = [*assignments, f"train.threads={max(1, (os.cpu_count() or 1) // runners)}"]
    command = [sys.executable, "-m", "hpcl4sr", "experiment", "run", str(experiment.path), "--out", str(out),
               "--no-progress", *experiment.selection.options(),
               *(f"--set={assignment}" for assignment in assignments)]
    logs = [out / f"runner-{number}.log" for number in range(1, runners + 1)]
    children = []
    for log in logs:
        with log.open("w") as handle:  # the child keeps its own descriptor
            children.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT))
    cell_ids = {cell.id for cell in experiment.cells()}
    bar = tqdm(total=len(cell_ids), desc=f"experiment {experiment.path.stem} ({runners} runners)", unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        while any(child.poll() is None for child in children):
            bar.n = sum(result["cell"] in cell_ids for result in read_results(out))
            bar.refresh()
            time.sleep(1.0)
    finally:  # on Ctrl-C (or any error here) no runner is left training on its own
        for child in children:
            if child.poll() is None:
                child.terminate()
            child.wait()
        bar.close()
    failed = [log for log, child in zip(logs, children) if child.returncode != 0]
    if failed:
        last_line = (failed[0].read_text(errors="replace").strip().splitlines() or ["(empty)"])[-1]
        raise UserError(f"{len(failed)} runner(s) failed; see {', '.join(map(str, failed))}. "
                        f"{failed[0].name} ends: {last_line}")
    # Cells a runner found held by another are recorded now that every runner has finished.
    return run_experiment(experiment, out, progress=False, extra=parse_assignments(assignments))
