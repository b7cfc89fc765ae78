"""`hpcl4sr experiment report`: the paper's tables and figures from an experiment directory.

Reads OUT/experiment.json and OUT/results.jsonl (written by `experiment run`) and writes OUT/report.md
with, per dataset, a table in the layout of the paper's Tables 2 and 3 (mean ± std over seeds in
percent, best bold, second underlined, and the relative improvement of each of `ours` over the best
baseline, i.e. the best row not in `ours`), the paper's own figures where the experiment file gives them,
a paired significance test of each of `ours` against every baseline row on R@20, R@50, HR@20 and HR@50,
the sweep figures (Figures 4 and 5: NDCG@50 against each swept value) and the interest-similarity
histogram (Figure 1) from the samples the cells recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hpcl4sr.analysis import plot_valid_curves
from hpcl4sr.atomic import atomic_output, write_text
from hpcl4sr.errors import UserError
from hpcl4sr.experiment import read_results
from hpcl4sr.experiment_file import SIMILARITY_USERS

TABLE_METRICS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50")
TESTED_METRICS = ("recall@20", "recall@50", "hr@20", "hr@50")
BOOTSTRAP_SAMPLES = 10_000


def paired_bootstrap(ours: np.ndarray, other: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                     ) -> tuple[float, float]:
    """(mean difference, two-sided p-value) of a paired bootstrap test over users.

    The per-user differences are centred to make the null hypothesis (no difference) true, resampled
    with replacement, and p is the share of resampled means at least as far from 0 as the observed one.
    """
    differences = np.asarray(ours, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    observed = differences.mean()
    centred = differences - observed
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, samples, 1000):  # chunks keep the index matrix small for big test sets
        count = min(1000, samples - start)
        means = centred[rng.integers(0, len(centred), (count, len(centred)))].mean(axis=1)
        extreme += int((np.abs(means) >= abs(observed)).sum())
    return float(observed), (extreme + 1) / (samples + 1)


def _grouped(results: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], list[dict[str, Any]]]:
    """Results keyed by (dataset, row, variant label or None), seeds in a list."""
    groups: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for result in results:
        variant = f"{result['variant'][0]}={result['variant'][1]}" if result.get("variant") else None
        groups.setdefault((result["dataset"], result["row"], variant), []).append(result)
    return groups


def _mean_std(runs: list[dict[str, Any]], metric: str) -> tuple[float, float]:
    values = 100 * np.array([run["metrics"][metric] for run in runs])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def metrics_table(rows: dict[str, list[dict[str, Any]]], ours: tuple[str, ...]) -> str:
    """Markdown: one row per model, mean ± std per metric, best bold, second underlined, improvements."""
    means = {row: {m: _mean_std(runs, m) for m in TABLE_METRICS} for row, runs in rows.items()}
    lines = ["| model | seeds | " + " | ".join(TABLE_METRICS) + " |", "|---|---|" + "---|" * len(TABLE_METRICS)]
    rank: dict[str, list[str]] = {m: sorted(means, key=lambda r: -means[r][m][0]) for m in TABLE_METRICS}
    for row, runs in rows.items():
        cells = []
        for metric in TABLE_METRICS:
            mean, std = means[row][metric]
            text = f"{mean:.2f} ± {std:.2f}" if len(runs) > 1 else f"{mean:.2f}"
            if row == rank[metric][0]:
                text = f"**{text}**"
            elif len(rank[metric]) > 1 and row == rank[metric][1]:
                text = f"<u>{text}</u>"
            cells.append(text)
        lines.append(f"| {row} | {len(runs)} | " + " | ".join(cells) + " |")
    baselines = [row for row in means if row not in ours]
    for row in [row for row in ours if row in means] if baselines else []:
        cells = []
        for metric in TABLE_METRICS:
            best = max(means[b][metric][0] for b in baselines)
            cells.append(f"{100 * (means[row][metric][0] - best) / best:+.2f}%" if best else "n/a")
        lines.append(f"| Improv. ({row} vs best baseline) | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_table(paper: dict[str, dict[str, float]]) -> str:
    lines = ["| model (paper) | " + " | ".join(TABLE_METRICS) + " |", "|---|" + "---|" * len(TABLE_METRICS)]
    for row, values in paper.items():
        lines.append(f"| {row} | " + " | ".join(f"{values[m]:.2f}" if m in values else "—" for m in TABLE_METRICS)
                     + " |")
    return "\n".join(lines)


def _user_metrics(out: Path, runs: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(test users, per-user `metric` averaged over the seeds' runs)."""
    users, values = None, []
    for run in runs:
        file = out / run["run"] / "test_users.npz"
        if not file.is_file():
            raise UserError(f"{file}: missing; rerun `hpcl4sr experiment run` to record per-user metrics")
        with np.load(file) as saved:
            if users is not None and not np.array_equal(users, saved["users"]):
                raise UserError(f"{file}: its test users differ from the other seeds'")
            users = saved["users"]
            values.append(saved[metric])
    return users, np.mean(values, axis=0)


def significance(out: Path, rows: dict[str, list[dict[str, Any]]], ours: str, baselines: list[str]) -> str:
    """The paired test of `ours` against every row of `baselines` (best mean recall@50 first), on each of
    `TESTED_METRICS`, as a markdown table: the difference in points and its p-value."""
    ordered = sorted(baselines, key=lambda row: -_mean_std(rows[row], "recall@50")[0])
    lines = [f"Paired bootstrap over test users ({BOOTSTRAP_SAMPLES:,} resamples; per-user metrics averaged "
             f"over seeds), {ours} minus each other row, points (p):", "",
             "| against | " + " | ".join(TESTED_METRICS) + " |", "|---|" + "---|" * len(TESTED_METRICS)]
    mine = {metric: _user_metrics(out, rows[ours], metric) for metric in TESTED_METRICS}  # read once
    for other in ordered:
        cells = []
        for metric in TESTED_METRICS:
            users_a, a = mine[metric]
            users_b, b = _user_metrics(out, rows[other], metric)
            if not np.array_equal(users_a, users_b):
                raise UserError(f"{ours} and {other} were tested on different users; compare runs of one dataset")
            difference, p = paired_bootstrap(a, b)
            cells.append(f"{100 * difference:+.2f} ({p:.4f})")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    lines.append(f"\nOver {len(mine[TESTED_METRICS[0]][0]):,} test users.")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _swept_default(out: Path, groups: dict[tuple[str, str, str | None], list[dict[str, Any]]], dataset: str,
                   row: str, key: str) -> Any:
    """The value `key` takes in the row's own config: read from a cell of the row that swept another key."""
    for (cell_dataset, cell_row, variant), runs in groups.items():
        if cell_dataset == dataset and cell_row == row and variant and not variant.startswith(f"{key}="):
            config = yaml.safe_load((out / runs[0]["run"] / "config.yaml").read_text())
            section, _, name = key.partition(".")
            return config.get(section, {}).get(name)
    return None


def plot_sweeps(out: Path, groups: dict[tuple[str, str, str | None], list[dict[str, Any]]],
                sweep: dict[str, list[Any]], datasets: list[str], row: str, figure_path: Path) -> None:
    """Figures 4 and 5: NDCG@50 against each swept value, one panel per key on a shared y-axis.

    Points are the mean over seeds with ± one standard deviation when there are several; a dotted line
    marks the row's own (default) value of each key, and the title states the budget and the seeds.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(sweep), figsize=(3.6 * len(sweep), 3.6), squeeze=False, sharey=True)
    seeds: set[int] = set()
    cells: list[dict[str, Any]] = []
    for axis, (key, values) in zip(axes[0], sweep.items()):
        for dataset in datasets:
            points = []
            for i, value in enumerate(values):
                runs = groups.get((dataset, row, f"{key}={value}"))
                if runs:
                    points.append((i, *_mean_std(runs, "ndcg@50")))
                    seeds.update(run["seed"] for run in runs)
                    cells += runs
            if points:
                x, mean, std = zip(*points)
                axis.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=dataset)
            default = _swept_default(out, groups, dataset, row, key)
            if default is not None and default in values:
                axis.axvline(values.index(default), color="grey", linestyle=":", linewidth=1)
        axis.set_xticks(range(len(values)), [str(value) for value in values], rotation=45)
        axis.set_xlabel(f"{key} (dotted: default)")
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("test NDCG@50 (%)")
    iterations = sorted({train[0] for train in _cell_budgets(out, cells)})
    figure.suptitle(f"{row}: mean over {len(seeds)} seed(s) ({', '.join(map(str, sorted(seeds)))}), "
                    f"at most {', '.join(f'{n:,}' for n in iterations)} iterations", fontsize=10)
    figure.tight_layout()
    with atomic_output(figure_path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def _cell_budgets(out: Path, runs: list[dict[str, Any]]) -> set[tuple[int, int, int]]:
    """(max_iters, patience, batch_size) of each run, read from its saved config."""
    budgets = set()
    for run in runs:
        train = yaml.safe_load((out / run["run"] / "config.yaml").read_text())["train"]
        budgets.add((train["max_iters"], train["patience"], train["batch_size"]))
    return budgets


def _budget(out: Path, rows: dict[str, list[dict[str, Any]]]) -> str:
    """The iteration caps, batch sizes and patience the cells ran with, read from their saved configs."""
    budgets = _cell_budgets(out, [run for runs in rows.values() for run in runs])
    return "; ".join(f"at most {iters:,} iterations of batch {batch}, early stopping after {patience} validations "
                     "without a better valid recall@50" for iters, patience, batch in sorted(budgets))


def write_report(out: Path) -> Path:
    """Write OUT/report.md and its figures under OUT/figures/ (per dataset, the rows' valid curves; the
    sweeps; Figure 1); returns the report's path."""
    out = Path(out)
    summary_file = out / "experiment.json"
    if not summary_file.is_file():
        raise UserError(f"{out}: not an experiment directory (no experiment.json); run `hpcl4sr experiment run`")
    spec = json.loads(summary_file.read_text())
    results = read_results(out)
    if not results:
        raise UserError(f"{out}/results.jsonl: no finished cell yet")
    groups = _grouped(results)
    ours = spec.get("ours") or ()
    ours = (ours,) if isinstance(ours, str) else tuple(ours)  # a single row in files written before lists
    sections = [f"# Report: {Path(spec['file']).name}", "",
                f"{len(results)} finished cells from `{out / 'results.jsonl'}`; metrics in percent, mean ± std "
                "over seeds; **best**, <u>second</u>.", ""]
    for dataset in spec["datasets"]:
        rows = {row: groups[(dataset, row, None)] for row in spec["rows"] if (dataset, row, None) in groups}
        if not rows:
            continue
        # a fitted row (pop, itemknn, ...) records best step 0: it has no training steps to choose among
        best = sorted({run["metrics"].get("best_step", 0) for runs in rows.values() for run in runs} - {0})
        steps = f" Best validation steps (the checkpoints tested): {best[0]:,} to {best[-1]:,}." if best else ""
        sections += [f"## {dataset}", "", metrics_table(rows, ours), "", f"Budget: {_budget(out, rows)}.{steps}", ""]
        curves = out / "figures" / f"curves_{dataset}.png"
        plot_valid_curves([out / run["run"] for runs in rows.values() for run in runs], curves,
                          title=f"{dataset}: valid recall@50 during training, mean over seeds (dot: best)")
        sections += [f"![valid recall@50 against iterations](figures/{curves.name})", ""]
        if spec.get("paper", {}).get(dataset):
            sections += ["The paper's figures:", "", paper_table(spec["paper"][dataset]), ""]
        baselines = [row for row in rows if row not in ours]
        sections += [significance(out, rows, row, baselines) + "\n" for row in ours if row in rows and baselines]
    if spec.get("sweep"):
        for row in spec["rows"]:
            figure = out / "figures" / f"sweep_{row}.png"
            plot_sweeps(out, groups, spec["sweep"], spec["datasets"], row, figure)
            swept = {f"{dataset}/{variant}": runs for (dataset, name, variant), runs in groups.items()
                     if name == row and variant is not None}
            sections += [f"## Sweeps of {row}", "", f"![NDCG@50 against each swept value](figures/{figure.name})", "",
                         f"Budget: {_budget(out, swept)}.", ""]
            for key, values in spec["sweep"].items():
                header = "| dataset | " + " | ".join(f"{key}={value}" for value in values) + " |"
                lines = [header, "|---|" + "---|" * len(values)]
                for dataset in spec["datasets"]:
                    cells = [f"{_mean_std(groups[(dataset, row, f'{key}={v}')], 'ndcg@50')[0]:.2f}"
                             if (dataset, row, f"{key}={v}") in groups else "—" for v in values]
                    lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
                sections += [f"NDCG@50 (%), {key}:", "", *lines, ""]
    if spec.get("similarity") is not None:
        sections += similarity_section(out, spec, groups)
    report = out / "report.md"
    write_text(report, "\n".join(sections))
    return report


def _similarities(run: Path, users: int) -> np.ndarray:
    """The interest similarity sample the run recorded when its cell finished. A cell finished before cells
    recorded it (or recorded for another number of users) is computed once here, from its best.pt, and
    recorded, so later reports read it too."""
    from hpcl4sr.analysis import record_interest_similarities, recorded_interest_similarities
    from hpcl4sr.run import load_run

    values = recorded_interest_similarities(run, users)
    if values is None:
        _, dataset, model = load_run(run, "best.pt")
        values = record_interest_similarities(run, model, dataset, users)
    return values


def similarity_section(out: Path, spec: dict[str, Any], groups: dict[tuple[str, str, str | None], list[dict]]
                       ) -> list[str]:
    """Figure 1 per dataset: the first seed's run of every row with interests to compare, from what the runs
    recorded; mean similarity per row. Fitted rows (no interest vectors) and single-interest rows (K = 1, no
    pairs) are left out."""
    from hpcl4sr.analysis import plot_similarity_histogram
    from hpcl4sr.models.base import model_class

    users = spec["similarity"].get("users", SIMILARITY_USERS)
    lines: list[str] = []
    for dataset in spec["datasets"]:
        series = {}
        for row in spec["rows"]:
            runs = groups.get((dataset, row, None))
            if runs and not model_class(runs[0]["model"]).fitted:
                values = _similarities(out / runs[0]["run"], users)
                if values.shape[1]:
                    series[row] = values
        if not series:
            continue
        figure = out / "figures" / f"similarity_{dataset}.png"
        plot_similarity_histogram(series, figure, dataset)
        lines += [f"## Interest similarity on {dataset} (Figure 1)", "",
                  f"![similarity histogram](figures/{figure.name})", "",
                  "| model | mean cosine between a user's interests |", "|---|---|"]
        lines += [f"| {row} | {values.mean():.3f} |" for row, values in series.items()]
        lines.append("")
    return lines
