"""seq-cls data: labeled texts (and text pairs) as windows, the label kind deciding the problem type
(class names: single-label; floats: regression; lists: multi-label), scored per note."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, shown
from ..tasks.run import softmax
from ..tasks.windows import aggregate
from .data import TaskData, class_id, read_labeled, window_or_fail
from .metrics import accuracy, auroc, macro_f1, micro_f1

SINGLE, REGRESSION, MULTI = "single_label_classification", "regression", "multi_label_classification"


def read_seq_cls(path: Path, tokenizer, *, label2id, max_length: int, stride, aggregation: str,
                 whole_word: bool = False) -> SeqClsData:
    rows = read_labeled(path)
    problem, names, targets = label_targets(path, rows, label2id)
    encs: list = [None] * len(rows)
    for paired in (False, True):  # one tokenizer call for the single texts, one for the pairs
        which = [i for i, r in enumerate(rows) if (r["text_pair"] is not None) == paired]
        if which:
            found = tokenizer.encode([rows[i]["text"] for i in which], check_length=False,
                                     text_pair=[rows[i]["text_pair"] for i in which] if paired else None)
            for i, enc in zip(which, found):
                encs[i] = enc
    features, owner = [], []
    for i, (row, enc) in enumerate(zip(rows, encs)):
        # a pair keeps its first text whole in every window and windows the second, as QA does
        windows = window_or_fail(f"{path}:{row['line']}", enc, max_length, stride,
                                 None if row["text_pair"] is None else 1)
        features += windows
        owner += [i] * len(windows)
    return SeqClsData(tokenizer, features, owner, targets, names, problem, aggregation)


def label_targets(path: Path, rows: list[dict], label2id) -> tuple[str, list[str] | None, np.ndarray]:
    """(problem type, label names or None for regression, one target per row) from the rows' labels."""
    def where(row) -> str:
        return f"{path}:{row['line']}"

    kinds = {"list" if isinstance(r["label"], list) else "float" if isinstance(r["label"], float)
             else "int" if isinstance(r["label"], int) else "str": r for r in reversed(rows)}  # kind -> first row
    if "list" in kinds and len(kinds) > 1:
        other = min((r for k, r in kinds.items() if k != "list"), key=lambda r: r["line"])
        raise InputError(f"{where(other)}: the label {shown(other['label'])} is not a list, but line "
                         f"{kinds['list']['line']} gives a list (multi-label); a file holds one kind of label")
    if "str" in kinds and len(kinds) > 1:
        other = min((r for k, r in kinds.items() if k != "str"), key=lambda r: r["line"])
        raise InputError(f"{where(other)}: the label {shown(other['label'])} is a number, but line "
                         f"{kinds['str']['line']} names a class ({shown(kinds['str']['label'])}); a file holds one "
                         "kind of label")
    if "float" in kinds:
        if label2id is not None:
            raise InputError(f"{where(kinds['float'])}: the label {kinds['float']['label']} is a number (regression) "
                             f"but the model classifies into {', '.join(map(repr, label2id))}")
        return REGRESSION, None, np.array([r["label"] for r in rows], np.float32)
    multi = "list" in kinds
    if label2id is None:
        values = {v for r in rows for v in (r["label"] if multi else [r["label"]])}
        label2id = names_of(path, rows, values, multi)
    names = sorted(label2id, key=label2id.get)
    if multi:
        targets = np.zeros((len(rows), len(names)), np.float32)
        for n, r in enumerate(rows):
            for v in r["label"]:
                targets[n, class_id(where(r), v, label2id)] = 1.0
        return MULTI, names, targets
    return SINGLE, names, np.array([class_id(where(r), r["label"], label2id) for r in rows], np.int64)


def names_of(path: Path, rows: list[dict], values: set, multi: bool) -> dict[str, int]:
    """label2id from the labels a file uses: names sorted (as transformers' run_glue sorts them), or,
    for integer labels, the ids 0..max themselves."""
    if not values:
        return {}
    if any(isinstance(v, int) for v in values) and any(isinstance(v, str) for v in values):
        row = next(r for r in rows if any(isinstance(v, int) for v in (r["label"] if multi else [r["label"]])))
        raise InputError(f"{path}:{row['line']}: integer labels (class ids) mixed with class names in one file")
    if isinstance(next(iter(values)), int):
        if min(values) < 0:
            row = next(r for r in rows if min(r["label"] if multi else [r["label"]], default=0) < 0)
            raise InputError(f"{path}:{row['line']}: label {min(values)}; an integer label is a class id >= 0")
        return {str(i): i for i in range(max(values) + 1)}
    return {name: i for i, name in enumerate(sorted(values))}


class SeqClsData(TaskData):
    task = "seq-cls"

    def __init__(self, tokenizer, features, owner: list[int], targets: np.ndarray, label_names, problem_type: str,
                 aggregation: str):
        super().__init__(tokenizer, features)
        self.owner, self.targets, self.aggregation = owner, targets, aggregation
        self.label_names, self.problem_type = label_names, problem_type

    def collate(self, indices, seed: int) -> dict[str, np.ndarray]:
        batch = self.inputs(indices)
        batch["labels"] = self.targets[[self.owner[i] for i in indices]]
        return batch

    def evaluate(self, run, batch_size: int) -> dict:
        """Per note: its windows' probabilities (softmax; sigmoid for multi-label; the value for
        regression) combined by the aggregation, then accuracy, macro-F1, AUROC (two classes), or MSE."""
        loss, logits = self.eval_outputs(run, batch_size, ("logits",))
        raw = np.stack([row for row, in logits]).astype(np.float64)
        scores = (softmax(raw) if self.problem_type == SINGLE else 1 / (1 + np.exp(-raw))
                  if self.problem_type == MULTI else raw)
        bounds = np.searchsorted(self.owner, np.arange(len(self.targets) + 1))  # a note's windows are adjacent
        per_note = np.stack([aggregate(scores[a:b], self.aggregation) for a, b in zip(bounds[:-1], bounds[1:])])
        metrics = {"loss": loss}
        if self.problem_type == REGRESSION:
            metrics.update(mse=float(((per_note[:, 0] - self.targets) ** 2).mean()), main="mse",
                           greater_is_better=False)
        elif self.problem_type == MULTI:
            pred = per_note > 0.5
            metrics.update(accuracy=float((pred == (self.targets > 0.5)).all(1).mean()),
                           micro_f1=micro_f1(pred, self.targets > 0.5), main="micro_f1")
        else:
            pred = per_note.argmax(1)
            metrics.update(accuracy=accuracy(pred, self.targets), macro_f1=macro_f1(pred, self.targets),
                           main="accuracy")
            if len(self.label_names) == 2:
                area = auroc(per_note[:, 1], self.targets)
                if area is not None:  # undefined when the evaluation file holds one class only
                    metrics["auroc"] = area
        return metrics
