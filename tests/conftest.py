"""Shared fixtures: the real datasets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The directory of real datasets beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (CI provides ../shared/data beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared dataset with planted interests, shared by the tests that train."""
    from hpcl4sr.data.prepare import PrepareOptions, prepare
    from hpcl4sr.data.sources import RawLog
    from hpcl4sr.data.synthetic import synthesize

    frame = synthesize(users=400, items=300, categories=40, seed=7, mean_length=30)
    raw = RawLog(interactions=frame.with_row_index("order").lazy(), user_features=None)
    out = tmp_path_factory.mktemp("synthetic") / "dataset"
    prepare(raw, PrepareOptions(source="synthetic", min_count=5, max_len=20, seed=3), out)
    return out
