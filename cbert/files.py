"""Files cbert reads from strangers and writes for users.

Reading: regular files only (a FIFO or device is refused, never waited on), JSON of bounded size
and depth, and paths that a folder's own files name (a shard index, modules.json) kept inside
that folder. Every failure is a CheckpointError naming the file.

Writing: complete or not at all, never over their files unasked. Everything cbert writes goes to
a temporary sibling first and is renamed into place once complete, so an interrupted or failing
write leaves what was there before. A symlink is never written through.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from .errors import CheckpointError, UsageError

MAX_JSON_BYTES = 64 << 20  # config, tokenizer and index files; the largest tokenizer.json is ~20 MB


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of the regular file ``path``.

    Opened non-blocking, so a FIFO or device returns at once and is refused instead of hanging;
    a directory is refused too. A missing file raises FileNotFoundError for the caller to word."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise CheckpointError(f"{path}: is {kind}, expected a regular file")
    return fd


def is_json_int(v: object) -> bool:
    """An integer as JSON gives one: true/false parse as bools and 1.0 as a float, neither is a size."""
    return isinstance(v, int) and not isinstance(v, bool)


def read_bytes(path: str | Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (or a link to a missing one)") from None
    with open(fd, "rb") as fh:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CheckpointError(f"{path}: {size:,} bytes, more than the {limit:,} cbert reads from such a file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"{path}: more than the {limit:,} bytes cbert reads from such a file")
    return data


def read_json(path: str | Path, limit: int = MAX_JSON_BYTES) -> object:
    """A UTF-8 JSON file's value: non-UTF-8, invalid or too deeply nested JSON is a CheckpointError."""
    return parse_json(read_bytes(path, limit), path)


def parse_json(data: bytes, path: str | Path) -> object:
    """``data`` (the bytes of the file ``path``) as JSON."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def inside(folder: Path, name: object, source: str | Path, what: str) -> Path:
    """``folder / name`` for a relative path that a file of the folder names (a shard in an index, a
    module in modules.json): absolute paths, ``..``, and links that lead out of the folder are errors
    naming ``source`` and the entry. A huggingface_hub cache snapshot's files are links into its
    repository's ``blobs/``, so for one the repository's cache folder is the bound."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise CheckpointError(f"{source}: {what} {name!r} is not a file name")
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(name)
        if p.is_absolute() or p.drive or p.root or ".." in p.parts:
            raise CheckpointError(f"{source}: {what} {name!r} points outside {folder} (absolute or '..' paths "
                                  "are not read)")
    path = folder / name
    root = snapshot_root(folder)
    try:
        path.resolve().relative_to(root)
    except ValueError:
        raise CheckpointError(f"{source}: {what} {name!r} is a link to {path.resolve()}, outside {folder}") from None
    return path


def snapshot_root(folder: Path) -> Path:
    """The folder whose files a snapshot may read: itself, or for a huggingface_hub cache snapshot
    (``models--owner--name/snapshots/<commit>/``) the repository's cache folder holding ``blobs/``."""
    real = folder.resolve()
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        return real.parent.parent
    return real


# -- writing: one file ----------------------------------------------------------------------------

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


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread
    for a moment); 0o022 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None], overwrite: bool = False,
                 flag: str = "--overwrite") -> Path:
    """Call ``write(file)`` on a temporary sibling of ``path`` and rename it into place."""
    path = check_writable(path, overwrite, flag)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UsageError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> the mode an ordinary new file gets
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- writing: a folder built beside its target ------------------------------------------------------

NOT_EMPTY = "exists and is not empty; pass --overwrite (overwrite=True) to replace it once the new one is complete"


def check_target(out: Path, replace: bool, what: str = "the output folder") -> None:
    """What ``staged_folder`` refuses: a link (never written through), something not a folder, a
    non-empty folder unless ``replace``."""
    if out.is_symlink():
        raise UsageError(f"{out}: {what} is a symbolic link; give the real folder (cbert does not write "
                         "through links)")
    if not Path(os.path.abspath(out)).name:
        raise UsageError(f"{out}: {what} must name a folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: {what} exists and is not a folder")
    if out.is_dir() and not replace and any(out.iterdir()):
        raise UsageError(f"{out}: {what} {NOT_EMPTY}")


def write_new(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:  # exclusive: never through a link, never over a file
        fh.write(data)


@contextmanager
def staged_folder(out: str | Path, replace: bool = False, what: str = "the output folder"):
    """Yields a new, empty sibling folder of ``out`` to build in. When the block succeeds it is
    renamed to ``out`` (an old ``out``, empty or with ``replace``, is moved aside, and deleted only
    once the new one is in place); when the block fails it is removed and ``out`` is untouched."""
    out = Path(os.path.abspath(out))
    check_target(out, replace, what)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            # Not mkdtemp: its 0700 would become OUT's mode. A new name, made here: nothing in it
            # is a link someone else placed.
            tmp = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
            try:
                tmp.mkdir()
                break
            except FileExistsError:
                continue
    except OSError as e:
        raise UsageError(f"{out}: cannot write in {out.parent} ({e.strerror})") from None
    try:
        yield tmp
        _sync_tree(tmp)  # on disk before it takes OUT's name, as write_atomic does for a file
        check_target(out, replace, what)  # again: out may have changed while the block ran
        if not os.path.lexists(out):
            os.rename(tmp, out)
            return
        aside = out.with_name(f".{out.name}.replaced-{secrets.token_hex(4)}")
        os.rename(out, aside)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(aside, out)
            raise
        shutil.rmtree(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_tree(folder: Path) -> None:
    for root, _dirs, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    if os.name == "posix":  # a folder's entries are synced through the folder itself
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
