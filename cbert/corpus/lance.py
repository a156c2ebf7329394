"""``cbert embed-corpus --format lance``: the same parts as for Parquet, then one LanceDB table.

OUT is a Lance table folder named ``NAME.lance``: ``lancedb.connect(OUT's parent).open_table(NAME)``
(or ``lance.dataset(OUT)``) reads it. The parts are written, resumably, to the hidden sibling
folder ``.NAME.lance-parts`` exactly as a Parquet run writes them; when every row is embedded the
table is built from them under a hidden temporary name beside OUT and renamed to OUT, so OUT is
either absent or whole, and the parts folder is then removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ..errors import InputError
from ..extras import need
from .output import JOB_FILE, PART_GLOB

SUFFIX = ".lance"


def lancedb():
    return need("lancedb", "cbert embed-corpus --format lance")


def lance_paths(out: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """(the table folder OUT, its parts folder), checked before any work starts."""
    lancedb()
    out = Path(out)
    if out.suffix != SUFFIX or out.stem in ("", "."):
        raise InputError(f"{out}: a Lance table is a folder named NAME{SUFFIX}; give OUT as e.g. vectors{SUFFIX}")
    _check_replaceable(out, overwrite)
    return out, out.with_name(f".{out.name}-parts")


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link; give the real path (cbert does not write through links)")
    if not out.exists():
        return
    if not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if out.is_dir() and not (out / "_versions").is_dir():
        raise InputError(f"{out}: a folder that is no Lance table; choose another OUT (not even --overwrite deletes "
                         f"a folder cbert did not write)")


def write_lance(parts: Path, out: Path, overwrite: bool) -> None:
    """Build the table from the finished parts (streamed, part by part) and rename it into place."""
    pa, pq = need("pyarrow", "cbert embed-corpus"), need("pyarrow.parquet", "cbert embed-corpus")
    files = sorted(parts.glob(PART_GLOB))
    if not files:
        raise InputError(f"{parts}: no part files ({PART_GLOB}) to build {out} from")
    schema = pq.read_schema(files[0])

    def batches():
        for f in files:
            yield from pq.read_table(f, schema=schema).to_batches()

    _check_replaceable(out, overwrite)
    name = f".{out.stem}.{secrets.token_hex(6)}.tmp"
    db = lancedb().connect(str(out.parent.resolve()))
    tmp = out.parent / f"{name}{SUFFIX}"
    try:
        db.create_table(name, data=pa.RecordBatchReader.from_batches(schema, batches()))
        old = None
        if out.exists():  # checked above: a Lance table (or a file) the user asked to replace
            old = out.with_name(f".{out.name}.{secrets.token_hex(6)}.old")
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()
    for p in files + [parts / JOB_FILE]:
        p.unlink()
    shutil.rmtree(parts)  # only write_atomic's temporary files can be left


def read_lance(out: str | os.PathLike):
    """A Lance table written by embed-corpus as one Arrow table."""
    out = Path(out)
    return lancedb().connect(str(out.parent)).open_table(out.stem).to_arrow()
