"""The output folder of ``cbert embed-corpus``: Parquet part files and the job that made them.

A part is written by :func:`cbert.files.write_atomic` (a hidden temporary sibling renamed into
place when complete), so a part that exists is whole; a run that is killed leaves whole parts and
perhaps a temporary file, which the next run deletes. ``_cbert_job.json`` records the job (input files, columns, model,
options): a rerun of the same job skips the ids its parts hold, any other job refuses the
folder unless told to ``overwrite``. Both names start with ``_`` or ``.``, so Arrow, pandas,
Spark and Ray read the folder as a plain Parquet dataset of the parts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..extras import need
from ..files import write_atomic
from .read import FILE, ROW, arrow

JOB_FILE = "_cbert_job.json"
PART_GLOB = "part-*.parquet"
TMP_GLOB = ".*.tmp"  # write_atomic's temporary siblings: .NAME.RANDOM.tmp
VECTOR, N_TOKENS, N_WINDOWS = "vector", "n_tokens", "n_windows"


def part_path(out: Path, file_index: int, row: int) -> Path:
    """A part is named by its first row (file index, row in that file): unique, sorted as the input, and the
    same when Ray retries a write, which then replaces the part instead of adding a second copy."""
    return out / f"part-{file_index:05d}-{row:010d}.parquet"


def write_part(out: str | os.PathLike, table, id_column: str) -> dict:
    """Write embedded rows (with their _file and _row) as one part, atomically; returns its counts."""
    pa, pq = arrow(), need("pyarrow.parquet", "cbert embed-corpus")
    out = Path(out)
    table = table.sort_by([(FILE, "ascending"), (ROW, "ascending")])
    first_file, first_row = table.column(FILE)[0].as_py(), table.column(ROW)[0].as_py()
    rows = table.select([id_column, VECTOR, N_TOKENS, N_WINDOWS])
    # overwrite: a part of the same first row can only be this part, written by an earlier try.
    write_atomic(part_path(out, first_file, first_row), lambda f: pq.write_table(rows, f), overwrite=True)
    return {"rows": rows.num_rows, "tokens": int(pa.compute.sum(rows.column(N_TOKENS)).as_py()),
            "windows": int(pa.compute.sum(rows.column(N_WINDOWS)).as_py())}


def read_output(out: str | os.PathLike):
    """Every part of an output folder as one Arrow table, parts in name order (the input's order)."""
    pa, pq = arrow(), need("pyarrow.parquet", "reading cbert embed-corpus output")
    parts = sorted(Path(out).glob(PART_GLOB))
    if not parts:
        raise InputError(f"{out}: no part files ({PART_GLOB})")
    return pa.concat_tables([pq.read_table(p) for p in parts])


def prepare(out: str | os.PathLike, job: dict, overwrite: bool) -> bool:
    """Make ``out`` ready for ``job``; True when it holds a previous run of the same job to resume.

    A file, a folder that is not empty and not a cbert job, or a different job's folder is refused
    (``overwrite`` replaces a file or a previous job's output, never a folder cbert did not write).
    """
    out = Path(out)
    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link; give the real folder (cbert does not write through links)")
    if out.exists() and not out.is_dir():
        if not overwrite:
            raise InputError(f"{out}: is a file; embed-corpus writes a folder (pass --overwrite to replace it)")
        out.unlink()
    job_file = out / JOB_FILE
    if out.is_dir() and any(out.iterdir()):
        if not job_file.is_file():
            raise InputError(f"{out}: a folder that is not empty and holds no {JOB_FILE}, so it is no embed-corpus "
                             f"output; choose another OUT (not even --overwrite deletes a folder cbert did not write)")
        try:
            previous = json.loads(job_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{job_file}: unreadable ({e}); pass --overwrite to start over") from None
        if previous == job and not overwrite:
            _remove_tmp(out)
            return True
        if not overwrite:
            changed = sorted(k for k in set(job) | set(previous) if job.get(k) != previous.get(k))
            raise InputError(f"{out}: holds a different embed-corpus job (it differs in {', '.join(changed)}); "
                             f"pass --overwrite to replace it, or the same input and options to resume it")
        for p in list(out.glob(PART_GLOB)) + [job_file]:
            p.unlink()
        _remove_tmp(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(job, indent=1, sort_keys=True) + "\n"
    write_atomic(job_file, lambda f: f.write(text.encode()), overwrite=True)
    return False


def _remove_tmp(out: Path) -> None:
    """Temporary files of a run that was killed while writing: never renamed, so never part of the output."""
    for p in out.glob(TMP_GLOB):
        if p.is_file() and not p.is_symlink():
            p.unlink()


def done_ids(out: str | os.PathLike, id_column: str, input_ids):
    """The ids the parts of ``out`` already hold, checked to be input ids, each once."""
    pa, pc, pq = arrow(), need("pyarrow.compute", "cbert embed-corpus"), need("pyarrow.parquet", "cbert embed-corpus")
    parts = sorted(Path(out).glob(PART_GLOB))
    if not parts:
        return pa.array([], input_ids.type)
    try:
        ids = pa.concat_arrays([pq.read_table(p, columns=[id_column]).column(id_column).combine_chunks()
                                for p in parts])
    except (pa.ArrowException, OSError, KeyError) as e:
        raise InputError(f"{out}: a part file is unreadable or lacks column {id_column!r} ({e}); "
                         f"pass --overwrite to start over") from None
    if ids.type != input_ids.type:
        raise InputError(f"{out}: its ids are {ids.type}, the input's {input_ids.type}; pass --overwrite")
    stray = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=input_ids)))
    if len(stray):
        raise InputError(f"{out}: holds id {stray[0].as_py()!r}, which the input does not; pass --overwrite")
    if len(pc.unique(ids)) != len(ids):
        raise InputError(f"{out}: an id is in two part files; pass --overwrite to start over")
    return ids
