"""Publishing a folder atomically: build it under a temporary name, fsync, then rename.

The rename is the commit. A crash at any earlier moment leaves only a dot-prefixed temporary
folder beside the final one, which readers ignore and the next writer removes. Used for the
builtin model checkpoints in the cache and for the per-round LoRA adapters.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".old-"


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folder entries themselves to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (names, renames) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """True for the temporary and discarded folders this module leaves while it works."""
    return path.name.startswith((TEMP_PREFIX, TRASH_PREFIX))


def remove_temporaries(parent: Path, name: str = "") -> list[Path]:
    """Delete temporary folders left in ``parent`` by interrupted writers (of final folder
    ``name`` only, when given). Returns what was removed. Call only where no other writer of
    the same folder is at work."""
    removed = []
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        if is_temporary(child) and (not name or child.name.split("-", 2)[-1] == name):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


@contextlib.contextmanager
def atomic_folder(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; on a clean exit, publish it as ``final``.

    With ``replace=False`` an existing ``final`` is kept (another writer finished first, and the
    content is the same by construction) and the new copy is discarded. With ``replace=True`` the
    old folder is moved aside, the new one renamed in, and the old one deleted; a crash between
    the two renames leaves no ``final`` at all, never a mixed one.
    On an exception the temporary folder is removed and nothing is published.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        _publish(tmp, final, replace=replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, final: Path, *, replace: bool) -> None:
    if final.exists() and replace:
        trash = final.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}"
        os.rename(final, trash)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        return  # someone else published first; ours is discarded by the caller's cleanup
    fsync_dir(final.parent)
