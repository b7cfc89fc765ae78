"""What the benchmark scripts share: the dataset they measure on."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcl4sr.data.prepare import prepare_from_files

SHARED_TAFENG = Path(__file__).resolve().parents[2] / "shared/data/tafeng/ta_feng_all_months_merged.csv.gz"


def dataset_dir(data: Path | None, scratch: Path, parser: argparse.ArgumentParser) -> Path:
    """`data` when given, else real Ta-Feng from ../shared/data prepared into `scratch` (paper recipe)."""
    if data is not None:
        return data
    if not SHARED_TAFENG.is_file():
        parser.error(f"{SHARED_TAFENG} not found; pass --data DIR (a prepared dataset directory)")
    prepare_from_files("tafeng", [SHARED_TAFENG], scratch / "tafeng")
    return scratch / "tafeng"
