import dataclasses
from pathlib import Path

import pytest
import yaml

from hpcl4sr.config import describe, field_docs, load_yaml, parse_assignments
from hpcl4sr.errors import UserError
from hpcl4sr.models import MODELS, requested_model
from hpcl4sr.run import command_line_layers, config_for_run


def test_layers_override_in_order_and_parse_values():
    layers = [{"train": {"lr": 0.01, "max_iters": 10}}, parse_assignments(["train.lr=1e-4", "model.dim=32"])]
    config = config_for_run("comirec-sa", layers)
    assert config.train.lr == pytest.approx(1e-4)
    assert config.train.max_iters == 10
    assert config.model.dim == 32
    assert config.train.batch_size == 128  # untouched defaults stay the paper's


def test_command_line_layers_apply_files_then_data_then_set(tmp_path: Path):
    file = tmp_path / "run.yaml"
    file.write_text("model_name: hpcl4sr\ndata: {path: elsewhere}\ntrain: {lr: 0.01, max_iters: 10}\n")
    layers = command_line_layers([file], tmp_path / "data", ["train.lr=1e-4"])
    config = config_for_run(requested_model(None, layers), layers)
    assert config.model_name == "hpcl4sr"  # named by the file when --model is absent
    assert config.data.path == str((tmp_path / "data").resolve())  # --data wins over the file
    assert (config.train.lr, config.train.max_iters) == (pytest.approx(1e-4), 10)  # --set wins over both
    assert requested_model("pop", layers) == "pop"  # --model wins over the file
    assert requested_model(None, command_line_layers([], None, [])) is None


def test_int_is_accepted_for_float():
    assert config_for_run("comirec-sa", [{"train": {"lr": 1}}]).train.lr == 1.0


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"train": {"learning_rate": 1}}, "unknown option train.learning_rate"),
        ({"optim": {"lr": 1}}, "unknown config section 'optim'"),
        ({"train": {"max_iters": "many"}}, "train.max_iters: expected int"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"model": {"loss": "bpr"}}, "model.loss"),
        ({"train": {"optimizer": "sgd"}}, "train.optimizer: expected adam or lazy_adam"),
        ({"train": {"optimizer": "lazy_adam", "weight_decay": 0.01}}, "lazy_adam has no weight decay"),
    ],
)
def test_bad_options_are_named(layer, message):
    with pytest.raises(UserError, match=message):
        config_for_run("comirec-sa", [layer])


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="unknown model 'sasrec'.*comirec-sa"):
        config_for_run("sasrec", [])


def test_set_needs_section_and_value():
    with pytest.raises(UserError, match="SECTION.KEY=VALUE"):
        parse_assignments(["lr=0.1"])


def test_yaml_error_names_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+"):
        load_yaml(path)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_config_field_is_documented_and_described_yaml_reads_back(name):
    config = config_for_run(name, [{"train": {"lr": 5e-4}}])
    for section in (config.train, config.data, config.model):
        missing = {f.name for f in dataclasses.fields(section)} - set(field_docs(type(section)))
        assert not missing, f"{type(section).__name__} documents no {sorted(missing)}"
    text = describe(config)
    assert yaml.safe_load(text) == config.to_dict()  # comments aside, it is a config `--config` accepts
    assert "  lr: 0.0005  # Adam's learning rate." in text
