"""Issue 15, the building blocks: stale staging, the advisory lock, YAML keys, option ranges."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpcl4sr.atomic import atomic_directory, exclusive_lock, remove_stale_staging, write_text
from hpcl4sr.cli import one_line
from hpcl4sr.config import TrainConfig, parse_assignments, parse_yaml
from hpcl4sr.errors import UserError

DEAD = 2**22 + 12345  # above Linux's largest pid: never a running process


def test_stale_staging_of_a_name_is_removed_only_for_dead_writers(tmp_path):
    stale = [tmp_path / f".out.{DEAD}.0123456789ab", tmp_path / f".last.pt.{DEAD}.0123456789ab.tmp.pt"]
    stale[0].mkdir()
    stale[1].write_bytes(b"x")
    kept = [tmp_path / f".out.{os.getpid()}.0123456789ab", tmp_path / f".other.{DEAD}.0123456789ab",
            tmp_path / "out.12.0123456789ab"]
    for path in kept:
        path.mkdir()
    remove_stale_staging(tmp_path / "out")
    remove_stale_staging(tmp_path / "last.pt")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_staging_names_carry_the_pid_and_vanish_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as staging:
        assert staging.name.startswith(f".out.{os.getpid()}.")
        raise RuntimeError
    write_text(tmp_path / "file.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_the_lock_names_its_holder_to_another_process(tmp_path):
    lock = tmp_path / ".lock"
    probe = ("import sys; from pathlib import Path; from hpcl4sr.atomic import exclusive_lock\n"
             "with exclusive_lock(Path(sys.argv[1]), wait=False) as holder: print(holder)")
    with exclusive_lock(lock, wait=False) as holder:
        assert holder is None
        seen = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert seen.stdout.strip() == str(os.getpid()), seen.stderr
    with exclusive_lock(lock, wait=False) as holder:  # released with the block
        assert holder is None


def test_yaml_duplicate_keys_are_errors_at_any_depth():
    with pytest.raises(UserError, match=r"cfg.yaml line 3, column 3: .*duplicate key 'lr'"):
        parse_yaml("train:\n  lr: 1\n  lr: 2\n", "cfg.yaml")
    with pytest.raises(UserError, match="--set model.x"):
        parse_assignments(["model.x={a: 1, a: 2}"])
    assert parse_yaml("a: {b: 1}\nc: [1, 2]\n", "ok") == {"a": {"b": 1}, "c": [1, 2]}


@pytest.mark.parametrize("field, value", [("lr", float("nan")), ("lr", float("inf")), ("lr", 0.0),
                                          ("weight_decay", -1.0), ("weight_decay", float("inf")),
                                          ("threads", -1), ("patience", -1)])
def test_train_settings_out_of_range(field, value):
    with pytest.raises(UserError, match=f"train.{field}"):
        TrainConfig(**{field: value}).validate()


def test_messages_are_one_line_with_control_bytes_escaped():
    assert one_line("bad id 'u\x1b[31m'\nnext") == "bad id 'u\\x1b[31m'\\nnext"
    assert one_line("café ok") == "café ok"
