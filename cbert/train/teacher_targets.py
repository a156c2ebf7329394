"""The teacher's side of distillation: its outputs added to every batch the student trains on,
computed by its forward on any backend or read from a cache on disk, and unlabeled text as data.

A classifier's task inputs are the same every epoch, so its teacher's outputs may be computed once
(longest examples first) and kept as .npy files, one row per example (sequence logits) or per real
token (token logits, hidden states), padded back to each batch's width when read. Masked-LM batches
are masked anew at every step, so a masked-LM teacher always runs.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..files import read_json, staged_folder
from .data import TaskData
from .save import write_into_new

TEACHER_LOGITS = "teacher_logits"  # runtime inputs of the distillation graph: the teacher's outputs
TEACHER_HIDDEN = "teacher_hidden"
CACHE = "teacher-cache"  # OUT/teacher-cache/
META = "meta.json"  # what the cached outputs were computed from


class TeacherTargets:
    """The training data (a TaskData of cbert.train.data) with the teacher's outputs in every batch it
    collates: fit's loop reads them as the distillation graph's runtime inputs."""

    def __init__(self, data, teacher, logits: str | None, hidden: bool, cache: dict | None = None):
        self.data, self.teacher, self.logits, self.hidden, self.cache = data, teacher, logits, hidden, cache

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str):  # label_names, problem_type, lengths, labeled ...: the data's own
        if name == "data":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)

    def collate(self, indices, seed: int) -> dict:
        batch = self.data.collate(indices, seed)
        batch.update(self.cached(indices, batch) if self.cache is not None else self.run(batch))
        return batch

    def run(self, batch: dict) -> dict[str, np.ndarray]:
        """The teacher's forward over ``batch`` (the student's inputs, masked as the student sees them)."""
        t = self.teacher
        types = batch.get("token_type_ids") if t.config.type_vocab_size > 0 else None
        wanted = tuple(n for n, on in ((self.logits, self.logits is not None), ("last_hidden_state", self.hidden))
                       if on)
        out = t.forward(batch["input_ids"], batch["attention_mask"], types, outputs=wanted)
        got = {}
        if self.logits is not None:
            got[TEACHER_LOGITS] = np.asarray(out[self.logits], np.float32)
        if self.hidden:
            got[TEACHER_HIDDEN] = np.asarray(out["last_hidden_state"], np.float32)
        return got

    def cached(self, indices, batch: dict) -> dict[str, np.ndarray]:
        """The cached outputs of ``indices``, padded as ``batch`` is (zeros past each row's length)."""
        rows, got = self.cache["rows"], {}
        for name, table in self.cache["values"].items():
            if not self.cache["per_token"][name]:  # a classifier's logits: one row per example
                got[name] = np.asarray(table[list(indices)], np.float32)
                continue
            out = np.zeros((len(indices), batch["input_ids"].shape[1], table.shape[-1]), np.float32)
            for r, i in enumerate(indices):
                part = table[rows[i]:rows[i + 1]]
                out[r, :len(part)] = part
            got[name] = out
        return got


def cache_key(teacher, train_file: Path, data, targets: TeacherTargets) -> dict:
    """What the cached outputs depend on: the teacher's weights, the data file, the examples, the outputs."""
    weights = Path(teacher.checkpoint.weights_file).stat()
    digest = hashlib.sha256(Path(train_file).read_bytes()).hexdigest()
    lengths = hashlib.sha256(np.asarray(list(data.lengths()), np.int64).tobytes()).hexdigest()
    return {"teacher": str(teacher.checkpoint.path.absolute()), "weights_size": weights.st_size,
            "weights_mtime_ns": weights.st_mtime_ns, "train_sha256": digest, "examples": len(data),
            "lengths_sha256": lengths, "logits": targets.logits, "hidden": targets.hidden}


def teacher_cache(folder: Path, targets: TeacherTargets, key: dict, batch_size: int, record) -> dict:
    """The teacher's outputs for every training example, from ``folder`` when it holds them for ``key``,
    else computed in one pass (longest examples first, ``batch_size`` at a time) into memory-mapped
    tables of a folder built beside ``folder`` and renamed into place (cbert.files.staged_folder)."""
    names = [n for n, on in ((TEACHER_LOGITS, targets.logits is not None), (TEACHER_HIDDEN, targets.hidden)) if on]
    if (folder / META).is_file() and read_json(folder / META) == key:
        record({"step": 0, "message": f"teacher outputs read from {folder}"})
        return open_cache(folder, names)
    data = targets.data
    n = len(data)
    lengths = np.asarray(list(data.lengths()), np.int64)
    rows = np.concatenate([[0], np.cumsum(lengths)])  # example i's tokens are rows[i]:rows[i + 1]
    order = np.argsort(-lengths, kind="stable")
    record({"step": 0, "message": f"teacher outputs for {n} training examples, kept in {folder}"})
    with staged_folder(folder, replace=True, what=f"{folder} (the teacher's outputs)") as tmp:
        tables, per_token, shown = {}, {}, 0
        for start in range(0, n, batch_size):
            indices = order[start:start + batch_size].tolist()
            for name, a in targets.run(data.collate(indices, 0)).items():
                if name not in tables:  # [tokens, width] for per-token outputs, [examples, width] otherwise
                    per_token[name] = a.ndim == 3
                    shape = (int(rows[-1]) if per_token[name] else n, a.shape[-1])
                    tables[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.float32, shape)
                for r, i in enumerate(indices):  # batches are padded on the right (cbert.tasks.windows.pad)
                    if per_token[name]:
                        tables[name][rows[i]:rows[i + 1]] = a[r, :lengths[i]]
                    else:
                        tables[name][i] = a[r]
            done = min(start + batch_size, n)
            if done == n or done * 10 // n > shown:
                shown = done * 10 // n
                record({"step": 0, "message": f"teacher outputs: {done}/{n} examples"})
        for table in tables.values():
            table.flush()
        del tables
        buffer = io.BytesIO()
        np.save(buffer, rows)
        write_into_new(tmp, {"rows.npy": buffer.getvalue(), "per_token.json": json.dumps(per_token).encode(),
                             META: (json.dumps(key, indent=2) + "\n").encode()})
    return open_cache(folder, names)


def open_cache(folder: Path, names: list[str]) -> dict:
    return {"rows": np.load(folder / "rows.npy"), "per_token": read_json(folder / "per_token.json"),
            "values": {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}}


class UnlabeledText(TaskData):
    """Texts without labels for a classifier teacher to label: a .txt file, one text per line, read as
    masked-LM documents are (cbert.train.mlm_data: consecutive windows, none truncated)."""

    labeled = False

    def __init__(self, task: str, tokenizer, features):
        super().__init__(tokenizer, features)
        self.task = task

    def collate(self, indices, seed: int) -> dict[str, np.ndarray]:
        return self.inputs(indices)


def read_unlabeled(task: str, path: Path, tokenizer, config) -> UnlabeledText:
    from .mlm_data import read_mlm

    return UnlabeledText(task, tokenizer, read_mlm(Path(path), tokenizer, max_length=config.max_seq_len,
                                                   whole_word=False).features)
