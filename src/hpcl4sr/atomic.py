"""Writing outputs so that nothing is ever half-written, and one writer per output at a time.

Every file or directory the package produces is built under a temporary name beside its destination and
renamed into place only when complete (a rename within one directory is atomic), so an interrupted or
failed command leaves either the old output or nothing, never a truncated one. Temporary names carry the
writer's process id (`.NAME.PID.HEX...`), so what a killed process left behind is recognised and removed
by the next writer of the same output.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hpcl4sr.errors import UserError


def _staging_name(name: str, suffix: str = "") -> str:
    # a fresh unique name rather than mkstemp / mkdtemp, whose 0600 / 0700 modes would stick to the output
    return f".{name}.{os.getpid()}.{secrets.token_hex(6)}{suffix}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_staging(path: Path) -> None:
    """Remove the temporary files and directories of `path` left by processes that no longer run."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{12}}(\.tmp.*)?")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def check_writable_parent(path: Path, option: str, directory: bool = True) -> None:
    """Fail before any work when `path` could not be created: its nearest existing ancestor must be a
    writable directory, and `path` itself, if it exists, a directory (a file when `directory` is false,
    which the write then replaces)."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise UserError(f"{option} {path}: is a directory; expected a file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{option} {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write into {ancestor} (permission denied)")


def check_new_output(path: Path, option: str) -> None:
    """`path` is to be created by the command: it must not exist and its parent must be writable."""
    if Path(path).exists():
        raise UserError(f"{option} {path}: already exists; choose another {option} or remove it first")
    check_writable_parent(path, option)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    temp = path.with_name(_staging_name(path.name, f".tmp{path.suffix}"))
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(out: Path, option: str = "--out") -> Iterator[Path]:
    """Yield a staging directory that becomes `out` when the block finishes; `out` (given by `option`)
    must not exist."""
    out = Path(out)
    check_new_output(out, option)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging = out.with_name(_staging_name(out.name))
    staging.mkdir()  # mode 0777 less the umask, like the files written into it
    try:
        yield staging
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def exclusive_lock(lock: Path, wait: bool) -> Iterator[int | None]:
    """Hold an advisory lock on file `lock`, released when the block ends or the process dies.

    Yields None once held (the file then names this process), or, when `wait` is False and another process
    holds it, that process's id (0 if it has not written it yet) without waiting.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            yield int(holder) if holder.isdigit() else 0
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_is_held(lock: Path) -> bool | None:
    """Whether some process holds `exclusive_lock(lock)` now, read from Linux's /proc/locks without taking
    the lock (taking it, even for an instant, could make a runner skip that cell); None where the system
    does not tell."""
    try:
        info = lock.stat()
    except FileNotFoundError:
        return False
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 606 fe:00:5407133 0 EOF"; a waiter's line has "->" after the number
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any(fields[1:2] == ["FLOCK"] and fields[5:6] == [where]
               for fields in (line.replace("->", "").split() for line in table.splitlines()))


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text)


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    with atomic_output(path) as temp:
        torch.save(checkpoint, temp)
