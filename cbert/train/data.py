"""The data side of training: labeled rows read and checked, and each task's examples as a
TaskData that :func:`cbert.train.fit` batches (``collate``) and scores (``evaluate``).

``read_labeled`` is the one reader of labeled text files (JSONL or CSV rows of "text",
optional "text_pair", and "label"); every malformed row is an InputError naming the file and line.
"""

from __future__ import annotations

import codecs
import csv
import importlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ..corpus.read import utf8_lines
from ..errors import InputError, shown
from ..tasks.arguments import flag, one_of, stride_or_none
from ..tasks.windows import Window, pad, split

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
    for name, value in (("text", text), ("text_pair", pair or "")):
        check_unicode(where, name, value)


def check_unicode(where: str, name: str, value: str) -> None:
    """JSON may escape a lone surrogate (\\ud800), which no tokenizer can read."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where}: the {name} holds a lone surrogate at character {e.start}, not valid "
                         "Unicode text") from None


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


def jsonl_objects(path: Path, expected: str):
    """(line number, object) of each non-blank line of a JSON-lines file; a line that is not a JSON
    object is an InputError naming the file and line (``expected``: what an object holds)."""
    for number, line in utf8_lines(str(path)):
        if number == 1 and line.startswith(codecs.BOM_UTF8.decode()):
            line = line[1:]
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = parse_json(line, where)
        if not isinstance(row, dict):
            raise InputError(f"{where}: a JSON {type(row).__name__}, expected an object with {expected}")
        yield number, row


def _read_labeled_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, row in jsonl_objects(path, '"text" and "label"'):
        where = f"{path}:{number}"
        for field in ("text", "label"):
            if field not in row:
                raise InputError(f"{where}: no field {field!r} (fields: {', '.join(row) or 'none'})")
        pair = row.get("text_pair")
        _check_texts(where, row["text"], pair)
        rows.append({"text": row["text"], "text_pair": pair, "label": _check_label(where, row["label"]),
                     "line": number})
    return rows


def _read_labeled_csv(path: Path) -> list[dict]:
    lines = utf8_lines(str(path))
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


# -- the tasks' data --------------------------------------------------------------------------------


def read_task(task: str, path, tokenizer, config, *, label2id: dict[str, int] | None = None,
              max_length: int | None = None, stride: int | None = None, aggregation: str = "mean",
              whole_word: bool = False) -> TaskData:
    """``path`` read as ``task``'s training or evaluation data, tokenized by ``tokenizer`` into windows
    of at most ``max_length`` tokens (default: the model's longest input, ``config.max_seq_len``).

    - mlm: a text file, one document per line; a long document becomes consecutive full windows (the
      last one shorter), never truncated; each batch is masked afresh by ``mask_tokens``.
    - seq-cls: :func:`read_labeled` rows; a note longer than a window trains as every window with the
      note's label and is evaluated as one, its windows' probabilities combined by ``aggregation``.
    - token-cls: JSONL ``{"tokens", "tags"}`` or ``{"text", "spans": [[start, end, label], ...]}``.
    - qa: SQuAD v1.1/v2.0 JSON (or JSON lines of its questions); long contexts windowed with ``stride``.

    ``label2id`` fixes the label ids (an evaluation file's from its training file's, or a base
    model's own): a label outside it is an InputError naming the file and line.
    """
    one_of(task, "task", tuple(READERS))
    one_of(aggregation, "aggregation", ("mean", "max", "vote"))
    flag(whole_word, "whole_word")
    limit = config.max_seq_len
    if max_length is None:
        max_length = limit
    elif isinstance(max_length, bool) or not isinstance(max_length, int) or not 8 <= max_length <= limit:
        raise InputError(f"max_length={max_length!r}; expected an integer from 8 to the model's {limit} tokens")
    if label2id is not None and (not isinstance(label2id, dict)
                                 or sorted(label2id.values()) != list(range(len(label2id)))):
        raise InputError(f"label2id={shown(label2id)}; expected a dict of label name -> id 0..n-1")
    module, name = READERS[task]
    reader = getattr(importlib.import_module(module, __package__), name)
    return reader(Path(path), tokenizer, label2id=label2id, max_length=max_length,
                  stride=stride_or_none(stride), aggregation=aggregation, whole_word=whole_word)


# task -> (module, reader function): each task's data in a module of its own
READERS = {"mlm": (".mlm_data", "read_mlm"), "seq-cls": (".seq_cls_data", "read_seq_cls"),
           "token-cls": (".token_data", "read_token_cls"), "qa": (".qa_data", "read_qa")}


def parse_json(text: str, where: str, whole_file: bool = False):
    """json.loads, its errors one line naming ``where`` (a file whose line ``whole_file`` adds: FILE:LINE)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"{where}:{e.lineno}" if whole_file else where
        raise InputError(f"{at}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None


class TaskData:
    """Tokenized features (windows) of one task's file, what :func:`cbert.train.fit` batches.

    A subclass adds its labels to ``collate`` and scores predictions in ``evaluate(run, batch_size)``,
    where ``run(batch)`` returns the model's outputs (and ``loss``) for a collated batch; its metrics
    name the one the best checkpoint is chosen by under ``"main"``.
    """

    task = ""
    problem_type: str | None = None
    label_names: list[str] | None = None

    def __init__(self, tokenizer, features: list[Window]):
        self.tokenizer, self.features = tokenizer, features

    def __len__(self) -> int:
        return len(self.features)

    def lengths(self) -> list[int]:
        return [len(f.ids) for f in self.features]

    def inputs(self, indices) -> dict[str, np.ndarray]:
        """input_ids, attention_mask and (where the model takes them) token_type_ids, padded."""
        return self.tokenizer.model_inputs(pad([self.features[i] for i in indices], self.tokenizer.pad_token_id))

    def eval_batches(self, batch_size: int) -> list[list[int]]:
        """Every feature once, in batches of similar length (little padding), in a fixed order."""
        order = sorted(range(len(self)), key=lambda i: (len(self.features[i].ids), i))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def eval_outputs(self, run, batch_size: int, names: tuple[str, ...], per_token: bool = False):
        """Every feature run once (``eval_batches``): the mean loss per feature, and for each feature its
        row of each named output (cut to its own tokens when ``per_token``: no padding)."""
        rows: list = [None] * len(self)
        loss = 0.0
        for indices in self.eval_batches(batch_size):
            out = run(self.collate(indices, 0))
            loss += float(out["loss"]) * len(indices)
            for row, i in enumerate(indices):
                n = len(self.features[i].ids) if per_token else None
                rows[i] = tuple(np.asarray(out[name][row, :n]) for name in names)
        return loss / len(self), rows


def window_or_fail(where: str, enc, max_length: int, stride: int | None, content_sequence: int | None = None):
    """windows.split, its errors (no room for the text, a stride too large) naming the row."""
    try:
        return split(enc, max_length, stride, content_sequence)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def class_id(where: str, label, label2id: dict[str, int]) -> int:
    """The id of a class label: a name of ``label2id``, or an int taken as the id itself."""
    if isinstance(label, int):
        if not 0 <= label < len(label2id):
            raise InputError(f"{where}: label {label} is outside the model's {len(label2id)} classes "
                             f"(num_labels={len(label2id)}: ids 0..{len(label2id) - 1})")
        return label
    if label not in label2id:
        raise InputError(f"{where}: unknown label {shown(label)}; the model's labels are "
                         f"{', '.join(map(repr, list(label2id)[:12]))}{' ...' if len(label2id) > 12 else ''}")
    return label2id[label]
