"""The serving commands of the CLI, in process: recommend from an export, by user or history; serve's extra."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hpcl4sr
from hpcl4sr.cli import app
from hpcl4sr.errors import UserError


def test_recommend_reads_an_export_by_user_or_history(served: Path):
    rec = hpcl4sr.load(served)
    runner = CliRunner()
    by_user = runner.invoke(app, ["recommend", "--run", str(served), "--user", rec.data.user_ids[1], "-n", "4",
                                  "--json"])
    assert by_user.exit_code == 0, by_user.output
    assert len(json.loads(by_user.output)["recommendations"]) == 4
    history = ",".join([rec.data.item_ids[2], "unknown-item"])
    by_history = runner.invoke(app, ["recommend", "--run", str(served), "--history", history, "-n", "3"])
    assert by_history.exit_code == 0 and "skipped unknown items: unknown-item" in by_history.output
    # the history the list came from, each item with its category
    category = rec.data.category_ids[rec.data.catalogue.item_category[2]]
    assert f"history (oldest first): {rec.data.item_ids[2]} [{category}]" in by_history.output


def test_serve_without_the_extra_says_what_to_install(monkeypatch):
    from hpcl4sr.serve.app import import_serving

    real_import = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name in ("fastapi", "uvicorn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    with pytest.raises(UserError, match=r"pip install 'hpcl4sr\[serve\]'"):
        import_serving()
