"""Durable file replacement, shared by the store and the reports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(dst: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temp file beside ``dst``; it is fsynced, renamed onto ``dst`` and
    the directory fsynced (the temp file is removed on any failure), so that a reader, after a
    kill or a power cut, sees the old file or the whole new one."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
