"""Writing files for users: complete or not at all, never over their files unasked.

Everything cbert writes goes to a temporary sibling first and is renamed into place once
complete, so an interrupted or failing write leaves what was there before. A symlink is
never written through.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import UsageError


def check_writable(path: str | Path, overwrite: bool, flag: str = "--overwrite") -> Path:
    """The path to write, refused (UsageError) if it is a folder, a symlink, in a missing folder,
    or an existing file without ``overwrite``."""
    path = Path(path)
    if path.is_symlink():
        raise UsageError(f"{path}: is a symbolic link; cbert does not write through links")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: already exists; pass {flag} to replace it")
    return path


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None], overwrite: bool = False,
                 flag: str = "--overwrite") -> Path:
    """Call ``write(file)`` on a temporary sibling of ``path`` and rename it into place."""
    path = check_writable(path, overwrite, flag)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UsageError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
