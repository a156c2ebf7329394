"""Reading files from strangers: regular files only (a FIFO never hangs), bounded JSON, paths
named inside a folder's files kept inside it. Every failure is a CheckpointError naming the file.
And writing a folder for a user: built in a new sibling, renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import CheckpointError

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


# -- writing: a folder built beside its target and renamed into place ------------------------------

NOT_EMPTY = "exists and is not empty; pass --overwrite (overwrite=True) to replace it once the new one is complete"


def check_target(out: Path, replace: bool, what: str = "the output folder") -> None:
    """What ``staged_folder`` refuses: a link (never written through), something not a folder, a
    non-empty folder unless ``replace``."""
    if out.is_symlink():
        raise CheckpointError(f"{out}: {what} is a symbolic link; give the real folder (cbert never writes "
                              "through links)")
    if not Path(os.path.abspath(out)).name:
        raise CheckpointError(f"{out}: {what} must name a folder")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: {what} exists and is not a folder")
    if out.is_dir() and not replace and any(out.iterdir()):
        raise CheckpointError(f"{out}: {what} {NOT_EMPTY}")


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
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()  # new and ours: nothing in it is a link someone else placed
            break
        except FileExistsError:
            continue
    try:
        yield tmp
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
