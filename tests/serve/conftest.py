"""Fixtures of the serving tests: a briefly trained model over a private copy of the synthetic dataset."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from hpcl4sr.config import apply_overrides
from hpcl4sr.data.dataset import SequenceDataset, TrainSampler
from hpcl4sr.models.base import model_class
from hpcl4sr.run import build_model, config_for_run
from hpcl4sr.serve.artifact import ServingData
from hpcl4sr.serve.recommender import Recommender


def trained_recommender(name: str, data_dir: Path, steps: int = 3, repeat: str = "none") -> Recommender:
    """`name` trained `steps` Adam steps on `data_dir` (enough to move every weight off its initialisation),
    with `model.repeat` set to `repeat` (SGD models)."""
    dataset = SequenceDataset(data_dir)
    small = {} if model_class(name).fitted else {"model": {"dim": 16, "interests": 3, "repeat": repeat}}
    config = config_for_run(name, [{"data": {"path": str(data_dir)}, **small}])
    torch.manual_seed(0)
    model = build_model(config, dataset, 20)
    if model.fitted:  # fitted, not trained: the first candidate setting (every score ties)
        chosen = model.fit(dataset, 20, lambda setting: 0.0)
        config = dataclasses.replace(config, model=apply_overrides(config.model, "model", chosen))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        sampler = TrainSampler(dataset, 32, 20, 4, seed=1)
        for _ in range(steps):
            optimizer.zero_grad()
            model.loss(sampler.sample())["total"].backward()
            optimizer.step()
    return Recommender(model.eval(), config, ServingData.from_dataset(dataset, 20))


@pytest.fixture(name="trained")
def trained_fixture():  # noqa: ANN201
    """`trained(name, data_dir, steps)`: a briefly trained recommender (see `trained_recommender`)."""
    return trained_recommender


@pytest.fixture
def data_copy(synthetic_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset, which a test may move away."""
    return Path(shutil.copytree(synthetic_dir, tmp_path / "dataset"))


@pytest.fixture(scope="session")
def served(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of a briefly trained HPCL4SR, shared by the API and page tests."""
    from hpcl4sr.serve.export import export_run

    rec = trained_recommender("hpcl4sr", synthetic_dir, steps=20)
    out = tmp_path_factory.mktemp("served") / "export"
    export_run(rec.model, rec.config, rec.data, out)
    return out
