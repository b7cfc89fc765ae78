"""Analyses of trained runs: the paper's Figure 1 (how similar a user's K interests are to each other),
its Table 4 case study (one user's history, targets and each model's recommendations), and how a run's
top-n splits between repeat items (already in the user's history) and new ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hpcl4sr.atomic import atomic_output
from hpcl4sr.config import load_yaml
from hpcl4sr.data.dataset import Batch, SequenceDataset
from hpcl4sr.errors import UserError
from hpcl4sr.models.base import SequentialRecommender

FITTED_STYLES = ("--", ":", "-.")  # a fitted model's level in the curves figure, one style per level


@torch.no_grad()
def interest_similarities(
    model: SequentialRecommender, dataset: SequenceDataset, users: int, seed: int = 0
) -> np.ndarray:
    """Cosine similarities between every pair of a user's K interests, for `users` random test users.

    The interests are computed from the evaluation history (the first 80% of each sequence), as in
    the test metrics. Returns an array [users, K(K-1)/2].
    """
    candidates = dataset.eval_users("test")
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, min(users, len(candidates)), replace=False))
    batch = next(dataset.eval_batches("test", len(chosen), model.max_len, users=chosen))
    device = model.device
    interests = torch.nn.functional.normalize(model.eval().interests(batch.to(device)), dim=-1)
    cosine = interests @ interests.transpose(1, 2)
    upper = torch.triu_indices(cosine.shape[1], cosine.shape[1], offset=1, device=device)
    return cosine[:, upper[0], upper[1]].cpu().numpy()


@torch.no_grad()
def repeat_breakdown(
    model: SequentialRecommender, dataset: SequenceDataset, split: str, n: int = 50,
    batch_size: int = 1024, progress: bool = False,
) -> dict[str, float]:
    """Hits on repeat targets (items already in the evaluation history) and on new ones, pooled over users.

    On repeat-heavy logs such as Ta-Feng's groceries a model can win or lose mostly on re-purchases; this
    separates the two. Returns the distinct target counts of each kind, the share of each kind found in
    the top-n (`repeat_hit_rate`, `new_hit_rate`, in [0, 1]) and the share of top-n slots that hold an item
    of the history (`history_share`), with the protocol's history / target cut.
    """
    model.eval()
    device = model.device
    counts = dict.fromkeys(("repeat_targets", "repeat_hits", "new_targets", "new_hits", "history_slots", "slots"), 0)
    batches = dataset.eval_batches(split, batch_size, model.max_len)
    total = -(-len(dataset.eval_users(split)) // batch_size)
    for batch in tqdm(batches, total=total, desc=f"repeats {split}", disable=not progress, leave=False):
        ranked, _, _ = model.rank(batch.to(device), n)
        for top, history, targets in zip(ranked.tolist(), batch.history.tolist(), batch.targets.tolist()):
            top, history, targets = set(top), set(history) - {0}, set(targets) - {0}
            counts["repeat_targets"] += len(targets & history)
            counts["repeat_hits"] += len(targets & history & top)
            counts["new_targets"] += len(targets - history)
            counts["new_hits"] += len((targets - history) & top)
            counts["history_slots"] += len(top & history)
            counts["slots"] += len(top)
    return {"repeat_targets": counts["repeat_targets"], "new_targets": counts["new_targets"],
            "repeat_hit_rate": counts["repeat_hits"] / max(counts["repeat_targets"], 1),
            "new_hit_rate": counts["new_hits"] / max(counts["new_targets"], 1),
            "history_share": counts["history_slots"] / max(counts["slots"], 1)}


SIMILARITY_FILE = "interest_similarity.npz"  # a run's recorded Figure 1 sample
# Every run draws its users with this seed (`analyze similarity`'s default), so a grid's runs are compared on
# the same users whatever their training seed.
SIMILARITY_SEED = 0


def record_interest_similarities(run: Path, model: SequentialRecommender, dataset: SequenceDataset, users: int
                                 ) -> np.ndarray:
    """`interest_similarities` of `users` test users drawn with SIMILARITY_SEED, written to
    RUN/interest_similarity.npz (with the number of users asked for and the seed) and returned."""
    values = interest_similarities(model, dataset, users, SIMILARITY_SEED)
    with atomic_output(Path(run) / SIMILARITY_FILE) as temporary, temporary.open("wb") as file:
        np.savez(file, users=users, seed=SIMILARITY_SEED, similarities=values)
    return values


def recorded_interest_similarities(run: Path, users: int) -> np.ndarray | None:
    """What `record_interest_similarities` wrote for `users` users; None when the run holds no such sample
    (it finished before runs recorded one, or recorded one for another number of users)."""
    file = Path(run) / SIMILARITY_FILE
    if not file.is_file():
        return None
    with np.load(file) as saved:
        if int(saved["users"]) != users or int(saved["seed"]) != SIMILARITY_SEED:
            return None
        return saved["similarities"]


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")  # the formats `analyze similarity --out` writes


def similarity_summary(values: np.ndarray) -> dict[str, float | int]:
    """Users, pairs, the mean and the 10th / 50th / 90th percentiles of `interest_similarities`' output."""
    p10, median, p90 = np.quantile(values, [0.1, 0.5, 0.9]).round(4).tolist()
    return {"users": int(values.shape[0]), "pairs": int(values.size), "mean_similarity": round(float(values.mean()), 4),
            "p10": p10, "median": median, "p90": p90}


def distinct_names(runs: list[Path]) -> list[str]:
    """A legend name for each run directory: the fewest trailing folders that no other run ends in, so
    the runs of one grid (ROW/s1, ROW/s2, ...) are named by row and seed, not by their whole paths."""
    parts = [Path(path).parts for path in runs]

    def name(own: tuple[str, ...]) -> str:
        for depth in range(1, len(own) + 1):
            if sum(other[-depth:] == own[-depth:] for other in parts) == 1:
                return str(Path(*own[-depth:]))
        return str(Path(*own))  # the same run twice

    return [name(own) for own in parts]


def plot_similarity_histogram(series: dict[str, np.ndarray], out: Path, dataset: str) -> None:
    """One step outline per run on shared bins, written atomically to `out` (format from its suffix).

    Each array is [users, K(K-1)/2] (see `interest_similarities`); the legend gives each run's K and mean,
    the title the dataset and the number of users, so the figure reads on its own.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(-1.0, 1.0, 41)
    for label, values in series.items():
        k = round((1 + (1 + 8 * values.shape[1]) ** 0.5) / 2)  # pairs = K(K-1)/2
        # shares rather than counts: a run with more interests has more pairs per user
        axes.hist(values.ravel(), bins=bins, weights=np.full(values.size, 1 / values.size), histtype="step",
                  linewidth=1.6,
                  label=f"{label}: K = {k}, mean {values.mean():.3f}")
    users = sorted({values.shape[0] for values in series.values()})
    axes.set_xlabel("cosine similarity between two interests of a user")
    axes.set_ylabel("share of interest pairs")
    axes.set_title(f"Interest similarity (paper Figure 1): {dataset}, "
                   f"{' / '.join(str(n) for n in users)} random test users", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_output(Path(out)) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def valid_curve(run: Path, metric: str = "recall@50") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` at each validation of a run, read from its metrics.jsonl.

    A fitted model's run has one step, 0: the value of the setting it chose."""
    metrics_file = Path(run) / "metrics.jsonl"
    if not metrics_file.is_file():
        raise UserError(f"{metrics_file}: not found; is {run} a run directory?")
    points = {}
    lines = metrics_file.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            if number == len(lines):  # being written, or cut short by a kill (a resume drops it)
                continue
            raise UserError(f"{metrics_file}, line {number}: not a JSON object") from None
        if record.get("split") == "valid":
            if metric not in record:
                raise UserError(f"{metrics_file}, line {number}: no {metric!r} (known: "
                                f"{', '.join(key for key in record if '@' in key)})")
            # a fitted model (pop, repeat, itemknn) records each candidate setting at step 0: the best is kept
            points[record["step"]] = max(points.get(record["step"], -np.inf), record[metric])
    if not points:
        raise UserError(f"{metrics_file}: no validation yet")
    steps = np.array(sorted(points))
    return steps, np.array([points[step] for step in steps])


def run_label(run: Path) -> str:
    """A run's name in a legend: its folder, or its row's folder for a grid's seed folder (ROW/s1)."""
    run = Path(run)
    return run.parent.name if run.name[:1] == "s" and run.name[1:].isdigit() else run.name


def plot_valid_curves(runs: list[Path], out: Path, metric: str = "recall@50", title: str = "",
                      panel_per_model: bool = False) -> list[dict]:
    """Valid `metric` against training iterations: one line per group of runs, the mean over its seeds.

    Runs are grouped by their config less train.seed (as `group_runs`); a shaded band shows the seeds'
    min-max where there are several, and a dot marks each group's best validation, the checkpoint that is
    tested. Only steps every seed of a group reached are averaged (early stopping ends seeds apart). A
    fitted model is a dashed level at its valid value. `panel_per_model` draws one panel per model (e.g.
    each model's objectives side by side) instead of one axis. Returns one summary per group: label,
    model, seeds, best step and value of the mean curve, last step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Path]] = {}
    models: dict[str, str] = {}
    for run in runs:
        config = load_yaml(Path(run) / "config.yaml")
        config.get("train", {}).pop("seed", None)
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, []).append(Path(run))
        models[key] = config["model_name"]
    panels = list(dict.fromkeys(models.values())) if panel_per_model else [""]
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7.0 if columns == 1 else 3.6 * columns, 4.4 * rows if rows == 1
                                                        else 3.2 * rows), squeeze=False, sharex=True)
    summaries = []
    fitted_levels: dict[object, int] = {}  # axis -> fitted levels drawn on it so far
    for key, members in groups.items():
        axis = axes.flat[panels.index(models[key]) if panel_per_model else 0]
        curves = [valid_curve(run, metric) for run in members]
        common = np.array(sorted(set.intersection(*(set(steps.tolist()) for steps, _ in curves))))
        if not len(common):
            raise UserError(f"{', '.join(map(str, members))}: one setting (seeds apart), no validation step in common")
        values = np.stack([vals[np.searchsorted(steps, common)] for steps, vals in curves]) * 100
        mean = values.mean(axis=0)
        label = run_label(members[0])
        seeds = f"{len(members)} seed{'s' * (len(members) > 1)}"
        if common.tolist() == [0]:  # fitted, not trained: the bar a trained model must clear, as a level
            # named on the line itself too: three grey levels are otherwise told apart only by the legend
            style = FITTED_STYLES[fitted_levels.setdefault(axis, 0) % len(FITTED_STYLES)]
            fitted_levels[axis] += 1
            axis.axhline(mean[0], linestyle=style, linewidth=1.2, color="grey", label=f"{label} (fitted, {seeds})")
            axis.text(0.99, mean[0], label, transform=axis.get_yaxis_transform(), ha="right", va="bottom",
                      fontsize=7, color="dimgrey")
            summaries.append({"label": label, "model": models[key], "runs": len(members), "best_step": 0,
                              f"best_{metric}": round(float(mean[0]), 2), "last_step": 0,
                              f"last_{metric}": round(float(mean[0]), 2)})
            continue
        line, = axis.plot(common, mean, linewidth=1.5, label=f"{label} ({seeds})")
        if len(members) > 1:
            axis.fill_between(common, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15)
        best = int(mean.argmax())
        axis.plot(common[best], mean[best], "o", color=line.get_color(), markersize=4)
        summaries.append({"label": label, "model": models[key], "runs": len(members), "best_step": int(common[best]),
                          f"best_{metric}": round(float(mean[best]), 2), "last_step": int(common[-1]),
                          f"last_{metric}": round(float(mean[-1]), 2)})
    for axis, panel in zip(axes.flat, panels):
        axis.set_title(panel, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=1 if panel_per_model else 2)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("training iterations")
    for axis in axes[:, 0]:
        axis.set_ylabel(f"valid {metric} (%)")
    figure.suptitle(title or f"Valid {metric} during training (dot: best validation)", fontsize=10)
    figure.tight_layout()
    with atomic_output(Path(out)) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
    return summaries


SUMMARY_COLUMNS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50", "ndcg_std@20", "ndcg_std@50", "hr@20", "hr@50")


def group_runs(runs: list[Path]) -> dict[str, list[dict[str, float]]]:
    """Test metrics of finished runs grouped by their config less train.seed: the seeds of one setting.

    Each group is labelled by its model and first run.
    """
    groups: dict[str, list[dict[str, float]]] = {}
    labels: dict[str, str] = {}
    for path in runs:
        metrics_file = path / "test_metrics.json"
        if not metrics_file.is_file():
            raise UserError(f"{metrics_file}: not found; has the run finished training?")
        config = load_yaml(path / "config.yaml")
        config.get("train", {}).pop("seed", None)
        key = json.dumps(config, sort_keys=True)
        labels.setdefault(key, f"{config['model_name']} ({path})")
        groups.setdefault(key, []).append(json.loads(metrics_file.read_text()))
    return {labels[key]: metrics for key, metrics in groups.items()}


def summarize_runs(test_metrics: dict[str, list[dict[str, float]]]) -> str:
    """A markdown table, one row per group of runs (e.g. one model over seeds): mean ± std in percent."""
    header = "| runs | n | " + " | ".join(SUMMARY_COLUMNS) + " | best step |"
    lines = [header, "|" + "---|" * (len(SUMMARY_COLUMNS) + 3)]
    for label, runs in test_metrics.items():
        cells = []
        for column in SUMMARY_COLUMNS:
            values = 100 * np.array([run[column] for run in runs])
            spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.2f}{spread}")
        steps = ", ".join(str(run.get("best_step", "?")) for run in runs)
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + f" | {steps} |")
    return "\n".join(lines)


def case_study(runs: list[Path], raw_user: str, top: int = 20) -> str:
    """The paper's Table 4 for one user: history, held-out targets and each run's top list, as markdown.

    The user must be a valid or test user: their history is the first 80% of the sequence and the
    targets the rest, as in evaluation. Hits are marked ✓; every item shows its category.
    """
    from hpcl4sr.run import load_run

    loaded = [load_run(run) for run in runs]
    dataset = loaded[0][1]
    for run, (_, other, _) in zip(runs, loaded):
        if other.path.resolve() != dataset.path.resolve():
            raise UserError(f"{run}: trained on {other.path}, not {dataset.path}; compare runs of one dataset")
    user = dataset.user_index(raw_user)
    split = dataset.split_of(user)
    if split == "train" or user not in dataset.eval_users(split):
        raise UserError(f"user {raw_user!r} is a {split} user without held-out items; pick a valid or test user")

    def user_batch(max_len: int) -> Batch:
        return next(dataset.eval_batches(split, 1, max_len, users=np.array([user])))

    batch = user_batch(loaded[0][2].max_len)  # the history shown: the first run's last max_len items
    items, categories = dataset.raw_ids("item"), dataset.raw_ids("category")

    def named(item: int) -> str:
        return f"{items[item]} [{categories[dataset.item_category[item]]}]"

    history = batch.history[0][batch.mask[0]].tolist()
    targets = [item for item in batch.targets[0].tolist() if item]
    lines = [f"User {raw_user} ({split} split)", "",
             f"History (last {len(history)} items, oldest first): " + ", ".join(named(i) for i in history), "",
             f"Targets ({len(targets)}): " + ", ".join(named(i) for i in targets), ""]
    columns = []
    for run, (config, _, model) in zip(runs, loaded):
        with torch.no_grad():
            ranked = model.rank(user_batch(model.max_len).to(model.device), top)[0][0].tolist()
        hits = sum(item in set(targets) for item in ranked)
        columns.append((f"{config.model_name} ({Path(run).name}): {hits} hits",
                        [("✓ " if item in set(targets) else "") + named(item) for item in ranked]))
    lines.append("| rank | " + " | ".join(title for title, _ in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for rank in range(top):
        lines.append(f"| {rank + 1} | " + " | ".join(cells[rank] for _, cells in columns) + " |")
    return "\n".join(lines)
