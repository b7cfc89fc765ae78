"""What the benchmark scripts share: the datasets they measure on."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcl4sr.data.prepare import PrepareOptions, prepare, prepare_from_files
from hpcl4sr.data.sources import RawLog
from hpcl4sr.data.synthetic import synthesize

SHARED_TAFENG = Path(__file__).resolve().parents[2] / "shared/data/tafeng/ta_feng_all_months_merged.csv.gz"
# The paper's largest dataset, Tmall-Buy (Table 1), and the mean sequence length that gives its 35M rows.
TMALL_USERS, TMALL_ITEMS, TMALL_CATEGORIES, TMALL_MEAN_LENGTH = 356_795, 311_746, 1_400, 98.0


def tmall_shape_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with --users, --items, --categories and --mean-length, Tmall-Buy's by default."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=TMALL_USERS)
    parser.add_argument("--items", type=int, default=TMALL_ITEMS)
    parser.add_argument("--categories", type=int, default=TMALL_CATEGORIES)
    parser.add_argument("--mean-length", type=float, default=TMALL_MEAN_LENGTH)
    return parser


def dataset_dir(data: Path | None, scratch: Path, parser: argparse.ArgumentParser) -> Path:
    """`data` when given, else real Ta-Feng from ../shared/data prepared into `scratch` (paper recipe)."""
    if data is not None:
        return data
    if not SHARED_TAFENG.is_file():
        parser.error(f"{SHARED_TAFENG} not found; pass --data DIR (a prepared dataset directory)")
    prepare_from_files("tafeng", [SHARED_TAFENG], scratch / "tafeng")
    return scratch / "tafeng"


def synthetic_tmall_dir(scratch: Path, users: int, items: int = TMALL_ITEMS) -> Path:
    """A prepared synthetic dataset with Tmall's catalogue (311,746 items, 1,400 categories) in `scratch`.

    A step's cost grows with the catalogue (the item table and its optimiser state), not with the user
    count, so `users` can stay well below Tmall's 356,795 to keep the preparation short. Nothing is
    filtered, so (nearly) every item keeps a row; `meta.json` has the exact count. `items` changes the
    catalogue's size, to see how a step's cost grows with it.
    """
    frame = synthesize(users, items, TMALL_CATEGORIES, seed=0, mean_length=TMALL_MEAN_LENGTH)
    raw = RawLog(interactions=frame.with_row_index("order").lazy(), user_features=None)
    prepare(raw, PrepareOptions(source="synthetic", filter="none", max_len=20), scratch / "synthetic-tmall")
    return scratch / "synthetic-tmall"


def git_commit() -> str:
    """The short commit of this checkout (recorded in the serving benchmarks' JSON), or '' outside git."""
    import subprocess

    found = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True)
    return found.stdout.strip()
