"""Disk-space faults in words a person can act on: which folder, how much is needed, how much is free.

Used wherever EARL Studio writes something large (stored images, dataset exports, fine-tune
checkpoints, bundles), so that "no space left on device" (or SQLite's "database or disk is full") ends
as one message naming the folder and the space needed instead of a traceback from deep inside a
library.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

# errno values that mean "this file system has no room for that": full, or over a quota.
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# What SQLite says when a write hits a full disk (SQLITE_FULL).
SQLITE_FULL_TEXT = "database or disk is full"


class NoSpaceError(OSError):
    """A write failed for lack of space; ``str()`` is the message to show, naming folder and space."""

    def __init__(self, message: str, folder: Path, needed: int | None, free: int | None) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message, self.folder, self.needed, self.free = message, Path(folder), needed, free

    def __str__(self) -> str:
        return self.message


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the disk is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and SQLITE_FULL_TEXT in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(folder: str | Path) -> int | None:
    """Bytes free to this user on the file system holding ``folder`` (its nearest existing parent)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human(n: int | None) -> str:
    """``n`` bytes as a short size (``"12.3 MB"``); ``"?"`` when unknown."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def folder_size(folder: str | Path) -> int:
    """Total bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def no_space_message(folder: str | Path, needed: int | None, what: str, kept: str = "") -> str:
    """The message for a write of ``what`` into ``folder`` that ran out of space."""
    free = free_bytes(folder)
    need = f"about {human(needed)} more" if needed else "more space"
    msg = (f"Not enough disk space to save {what} in {folder}: it needs {need}, and {human(free)} is free. "
           "Free some space on that disk (or start with another folder, --data DIR) and try again.")
    return f"{msg} {kept}".rstrip()


def no_space_error(folder: str | Path, needed: int | None, what: str, kept: str = "") -> NoSpaceError:
    """A ``NoSpaceError`` carrying :func:`no_space_message`."""
    return NoSpaceError(no_space_message(folder, needed, what, kept), Path(folder), needed, free_bytes(folder))
