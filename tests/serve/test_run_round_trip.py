"""Every registered model survives its run directory: the weights and config.yaml the trainer writes, read
back by `load_run`, give identical interests and recommendations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from hpcl4sr.atomic import save_checkpoint, write_text
from hpcl4sr.models import MODELS, model_class
from hpcl4sr.run import load_run, run_config_for_disk

model_class("hpcl4sr")  # fills MODELS


@pytest.mark.filterwarnings("ignore:UMI")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_saved_run_loads_with_identical_interests_and_recommendations(name, synthetic_dir: Path, tmp_path: Path,
                                                                         trained):
    rec = trained(name, synthetic_dir)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"model": rec.model.state_dict()}, run / "best.pt")
    write_text(run / "config.yaml", yaml.safe_dump(run_config_for_disk(rec.config, run), sort_keys=False))

    config, dataset, model = load_run(run, device="cpu")

    assert config.model == rec.config.model and model.max_len == rec.model.max_len == 20
    batch = next(dataset.eval_batches("test", 64, model.max_len))
    with torch.no_grad():
        if not model.fitted:  # a fitted model has no interest vectors
            assert torch.equal(model.interests(batch), rec.model.interests(batch))
        loaded, before = model.rank(batch, 50), rec.model.rank(batch, 50)
    assert all(torch.equal(a, b) for a, b in zip(loaded, before, strict=True))
