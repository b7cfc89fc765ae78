"""Writing outputs so that nothing is ever half-written.

Every file or directory the package produces is built under a temporary name beside its destination and
renamed into place only when complete (a rename within one directory is atomic), so an interrupted or
failed command leaves either the old output or nothing, never a truncated one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hpcl4sr.errors import UserError


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh unique name rather than mkstemp, whose 0600 mode would stick to the published file
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a staging directory that becomes `out` when the block finishes; `out` must not exist."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out}: already exists; choose another --out or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text)


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    with atomic_output(path) as temp:
        torch.save(checkpoint, temp)
