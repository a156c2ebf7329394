"""The data side of training: labeled rows read and checked, and each task's examples as a
TaskData that :func:`cbert.train.fit` batches (``collate``) and scores (``evaluate``).

``read_labeled`` is the one reader of labeled text files (JSONL or CSV rows of "text",
optional "text_pair", and "label"); every malformed row is an InputError naming the file and line.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
from pathlib import Path

from ..corpus.read import _utf8_lines
from ..errors import InputError, shown

LABELED_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
LABELED_FIELDS = ("text", "text_pair", "label")


def read_labeled(path: str | os.PathLike) -> list[dict]:
    """The rows of a labeled JSONL or CSV file: ``{"text", "text_pair" (None when absent), "label",
    "line"}`` (``line``: the row's 1-based line in the file, for later messages).

    A label is a string (a class name), a number (an int: a class name too; a float: a regression
    target) or, in JSONL, a list of class names (multi-label). CSV has no types: a label column whose
    every value reads as an int holds ints, else one whose every value reads as a number holds floats
    (as pandas infers a column), else strings. Blank lines are skipped; a line that is not JSON, a
    missing or empty text, a missing label or one of another kind is an InputError "FILE:LINE: ...".
    """
    path = Path(path)
    fmt = LABELED_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; expected "
                         f"{', '.join(LABELED_FORMATS)} (JSON lines or CSV with columns text, [text_pair,] label)")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return _read_labeled_jsonl(path) if fmt == "jsonl" else _read_labeled_csv(path)


def _check_texts(where: str, text, pair) -> None:
    if not isinstance(text, str):
        raise InputError(f"{where}: the text is {shown(text)} ({type(text).__name__}), expected a string")
    if not text.strip():
        raise InputError(f"{where}: the text is empty")
    if pair is not None and not isinstance(pair, str):
        raise InputError(f"{where}: text_pair is {shown(pair)} ({type(pair).__name__}), expected a string")


def _check_label(where: str, label):
    """A JSON label as read_labeled returns it: str, int, finite float, or a list of str/int."""
    if isinstance(label, bool) or label is None:
        raise InputError(f"{where}: the label is {shown(label)}; expected a class name (string or integer), "
                         "a number (regression) or a list of class names (multi-label)")
    if isinstance(label, float) and not math.isfinite(label):
        raise InputError(f"{where}: the label is {label}; a regression target must be finite")
    if isinstance(label, (str, int, float)):
        return label
    if isinstance(label, list):
        for item in label:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise InputError(f"{where}: the label list holds {shown(item)}; a multi-label row lists class "
                                 "names (strings or integers)")
        return label
    raise InputError(f"{where}: the label is {shown(label)} ({type(label).__name__}); expected a class name, "
                     "a number or a list of class names")


def _read_labeled_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in _utf8_lines(str(path)):
        if number == 1 and line.startswith(codecs.BOM_UTF8.decode()):
            line = line[1:]
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise InputError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: a JSON {type(row).__name__}, expected an object with \"text\" and \"label\"")
        for field in ("text", "label"):
            if field not in row:
                raise InputError(f"{where}: no field {field!r} (fields: {', '.join(row) or 'none'})")
        pair = row.get("text_pair")
        _check_texts(where, row["text"], pair)
        rows.append({"text": row["text"], "text_pair": pair, "label": _check_label(where, row["label"]),
                     "line": number})
    return rows


def _read_labeled_csv(path: Path) -> list[dict]:
    lines = _utf8_lines(str(path))
    reader = csv.reader(line.lstrip(codecs.BOM_UTF8.decode()) if n == 1 else line for n, line in lines)
    try:
        header = next(reader, None)
        if header is None:
            return []
        for col in ("text", "label"):
            if col not in header:
                raise InputError(f"{path}:1: no column {col!r} in the header (columns: {', '.join(header)})")
        ti, li = header.index("text"), header.index("label")
        pi = header.index("text_pair") if "text_pair" in header else None
        rows, next_line = [], reader.line_num + 1
        for fields in reader:
            # a quoted field may span lines: a row is named by the line it starts on
            number, next_line = next_line, reader.line_num + 1
            where = f"{path}:{number}"
            if not fields:
                continue
            if len(fields) != len(header):
                raise InputError(f"{where}: {len(fields)} fields, but the header has {len(header)}")
            if not fields[li].strip():
                raise InputError(f"{where}: the label is empty")
            pair = fields[pi] if pi is not None and fields[pi] != "" else None
            _check_texts(where, fields[ti], pair)
            rows.append({"text": fields[ti], "text_pair": pair, "label": fields[li].strip(), "line": number})
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    return _typed_csv_labels(path, rows)


def _typed_csv_labels(path: Path, rows: list[dict]) -> list[dict]:
    """CSV labels typed as a column: all ints -> int, else all numbers -> float, else strings."""
    for cast in (int, float):
        try:
            values = [cast(r["label"]) for r in rows]
        except ValueError:
            continue
        for r, v in zip(rows, values):
            if cast is float and not math.isfinite(v):
                raise InputError(f"{path}:{r['line']}: the label is {r['label']}; a regression target must be finite")
            r["label"] = v
        break
    return rows
