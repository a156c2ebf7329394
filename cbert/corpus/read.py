"""Reading a corpus: Parquet, JSONL or CSV files (one, or a folder of them) with an id and a text column.

Every reader yields the same thing, Arrow tables of (id, text, ``_row``: the row's index in its
file), and checks what it reads: a missing column, a null or non-string text, a missing id, a
line that is not JSON or not UTF-8 is an :class:`~cbert.errors.InputError` naming the file and
the line (JSONL, CSV) or row (Parquet).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..extras import need

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
ROW = "_row"  # the row's index in its file, 0-based; kept while a row travels, never written out
FILE = "_file"  # the file's index among the corpus's sorted files
CHUNK_ROWS = 4096


def arrow():
    return need("pyarrow", "cbert embed-corpus (Parquet in and out)")


@dataclass(frozen=True)
class Source:
    path: str
    format: str


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; expected "
                         f"{', '.join(FORMATS)} (Parquet, JSON lines, CSV)")
    return fmt


def find_sources(path: str | os.PathLike) -> list[Source]:
    """The input files: ``path`` itself, or every file under the folder ``path`` in sorted order, skipping
    hidden and ``_``-prefixed ones (``.DS_Store``, ``_SUCCESS``), as Spark and Arrow datasets do."""
    root = Path(path)
    if root.is_file():
        return [Source(str(root), _format(root))]
    if not root.is_dir():
        raise InputError(f"{root}: no such file or folder")
    files = sorted(f for f in root.rglob("*") if f.is_file() and not any(
        part.startswith((".", "_")) for part in f.relative_to(root).parts))
    if not files:
        raise InputError(f"{root}: the folder holds no input files ({', '.join(FORMATS)})")
    return [Source(str(f), _format(f)) for f in files]


def read_source(src: Source, text_column: str, id_column: str, chunk_rows: int = CHUNK_ROWS) -> Iterator:
    """Checked Arrow tables of (id_column, text_column, _row) from one file, ``chunk_rows`` rows at most."""
    reader = {"parquet": _read_parquet, "jsonl": _read_jsonl, "csv": _read_csv}[src.format]
    return reader(src.path, text_column, id_column, chunk_rows)


def _table(ids: list, texts: list, first_row: int, id_column: str, text_column: str):
    pa = arrow()
    return pa.table({id_column: pa.array(ids), text_column: pa.array(texts, pa.string()),
                     ROW: pa.array(range(first_row, first_row + len(ids)), pa.int64())})


def _read_parquet(path: str, text_column: str, id_column: str, chunk_rows: int) -> Iterator:
    pa = arrow()
    pq = need("pyarrow.parquet", "cbert embed-corpus")
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    schema = f.schema_arrow
    for col in (text_column, id_column):
        if col not in schema.names:
            raise InputError(f"{path}: no column {col!r} (columns: {', '.join(schema.names)}); "
                             f"choose it with --{'text' if col == text_column else 'id'}-column")
    text_type, id_type = schema.field(text_column).type, schema.field(id_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise InputError(f"{path}: column {text_column!r} holds {text_type}, expected strings (the texts)")
    if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise InputError(f"{path}: column {id_column!r} holds {id_type}, expected integers or strings (the ids)")
    first = 0
    for batch in f.iter_batches(batch_size=chunk_rows, columns=[id_column, text_column]):
        for col, what in ((text_column, "text"), (id_column, "id")):
            if batch.column(col).null_count:
                row = first + batch.column(col).is_null().to_pylist().index(True)
                raise InputError(f"{path}: row {row + 1}: the {what} ({col!r}) is null")
        for col, what in ((text_column, "text"), (id_column, "id")):
            _check_utf8(batch.column(col), path, first, what, col)
        ids = batch.column(id_column).cast(pa.int64() if pa.types.is_integer(id_type) else pa.string())
        yield pa.table({id_column: ids, text_column: batch.column(text_column).cast(pa.string()),
                        ROW: pa.array(range(first, first + batch.num_rows), pa.int64())})
        first += batch.num_rows


def _check_utf8(column, path: str, first: int, what: str, name: str) -> None:
    """A Parquet string column may hold bytes that are not UTF-8 (its writer did not check): name the first row."""
    pa = arrow()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        raw = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
        for i, value in enumerate(raw.to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}: row {first + i + 1}: the {what} ({name!r}) is not UTF-8 ({e.reason} at "
                                 f"byte {e.start})") from None
        raise  # invalid for another reason than its bytes: Arrow's own words


def utf8_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, checked as UTF-8 line by line so an error can say where."""
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {offset + e.start} of the file)"
                                 ) from None
            offset += len(raw)


def _check_id(value, where: str, id_column: str):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{where}: the id ({id_column!r}) is {type(value).__name__} {value!r}, "
                         f"expected an integer or a string")
    return value


def _read_jsonl(path: str, text_column: str, id_column: str, chunk_rows: int) -> Iterator:
    ids, texts, first, kind = [], [], 0, None
    for number, line in utf8_lines(path):
        if number == 1 and line.startswith(codecs.BOM_UTF8.decode()):
            line = line[1:]
        if not line.strip():
            continue  # a blank line (often the last) is no row
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: a JSON {type(row).__name__}, expected an object with {id_column!r} and "
                             f"{text_column!r}")
        for col, what in ((text_column, "text"), (id_column, "id")):
            if col not in row:
                raise InputError(f"{where}: no field {col!r} (fields: {', '.join(row)}); "
                                 f"choose it with --{what}-column")
            if row[col] is None:
                raise InputError(f"{where}: the {what} ({col!r}) is null")
        text = row[text_column]
        if not isinstance(text, str):
            raise InputError(f"{where}: the text ({text_column!r}) is a {type(text).__name__}, expected a string")
        id_ = _check_id(row[id_column], where, id_column)
        if kind is None:
            kind = type(id_)
        elif type(id_) is not kind:
            raise InputError(f"{where}: the id {id_!r} is a {type(id_).__name__}, but earlier ids in this file are "
                             f"{kind.__name__}s")
        ids.append(id_)
        texts.append(text)
        if len(ids) == chunk_rows:
            yield _table(ids, texts, first, id_column, text_column)
            first += len(ids)
            ids, texts = [], []
    if ids:
        yield _table(ids, texts, first, id_column, text_column)


def _read_csv(path: str, text_column: str, id_column: str, chunk_rows: int) -> Iterator:
    lines = utf8_lines(path)
    reader = csv.reader(line.lstrip(codecs.BOM_UTF8.decode()) if n == 1 else line for n, line in lines)
    header = next(reader, None)
    if header is None:
        raise InputError(f"{path}: empty CSV file (no header line)")
    for col, what in ((text_column, "text"), (id_column, "id")):
        if col not in header:
            raise InputError(f"{path}: no column {col!r} in the header (columns: {', '.join(header)}); "
                             f"choose it with --{what}-column")
    ti, ii = header.index(text_column), header.index(id_column)
    ids, texts, first = [], [], 0
    for fields in reader:
        if not fields:
            continue  # a blank line
        if len(fields) != len(header):
            raise InputError(f"{path}:{reader.line_num}: {len(fields)} fields, but the header has {len(header)}")
        # CSV has no types: ids are the strings as written ("007" stays "007").
        if not fields[ii]:
            raise InputError(f"{path}:{reader.line_num}: the id ({id_column!r}) is empty")
        ids.append(fields[ii])
        texts.append(fields[ti])
        if len(ids) == chunk_rows:
            yield _table(ids, texts, first, id_column, text_column)
            first += len(ids)
            ids, texts = [], []
    if ids:
        yield _table(ids, texts, first, id_column, text_column)


@dataclass
class Corpus:
    """What a checking pass over the input found: its files, rows per file, every id (an Arrow array)."""

    sources: list[Source]
    text_column: str
    id_column: str
    rows: list[int]
    ids: object  # a pyarrow Array

    @property
    def n_rows(self) -> int:
        return sum(self.rows)


def scan(path: str | os.PathLike, text_column: str, id_column: str) -> Corpus:
    """Read the whole input once and check it: every row readable, one id type, every id unique."""
    pa = arrow()
    sources = find_sources(path)
    rows, ids, id_type = [], [], None
    for src in sources:
        n = 0
        for table in read_source(src, text_column, id_column):
            column = table.column(id_column)
            if id_type is None:
                id_type, first_src = column.type, src
            elif column.type != id_type:
                raise InputError(f"{src.path}: its ids are {_kind(column.type)}, but {first_src.path}'s are "
                                 f"{_kind(id_type)}; one corpus needs one id type")
            ids.append(column.combine_chunks())
            n += table.num_rows
        rows.append(n)
    if not any(rows):
        raise InputError(f"{path}: no rows to embed")
    all_ids = pa.concat_arrays(ids)
    _check_unique(all_ids, sources, text_column, id_column)
    return Corpus(sources, text_column, id_column, rows, all_ids)


def _kind(t) -> str:
    return "integers" if arrow().types.is_integer(t) else "strings"


def _check_unique(ids, sources: list[Source], text_column: str, id_column: str) -> None:
    pc = need("pyarrow.compute", "cbert embed-corpus")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return
    dup = repeated[0].as_py()
    seen = []  # only on this error path: look for where the first repeated id sits
    for src in sources:
        for table in read_source(src, text_column, id_column):
            for i, v in enumerate(table.column(id_column).to_pylist()):
                if v == dup:
                    seen.append(f"{src.path} row {table.column(ROW)[i].as_py() + 1}")
    raise InputError(f"id {dup!r} appears {len(seen)} times ({'; '.join(seen[:3])}); "
                     f"ids must be unique ({len(repeated)} repeated id(s) in all)")
