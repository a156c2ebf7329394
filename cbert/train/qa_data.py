"""qa data: SQuAD v1.1/v2.0 questions as windows over their contexts (doc stride), labeled and scored
as transformers' run_qa example does (prepare_train_features, postprocess_qa_predictions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, shown
from .data import TaskData, check_unicode, jsonl_objects, parse_json, window_or_fail
from .metrics import squad_scores

N_BEST, MAX_ANSWER_LENGTH = 20, 30  # run_qa's n_best_size and max_answer_length
TOKENIZE_CHUNK = 512


def read_qa(path: Path, tokenizer, *, max_length: int, stride, label2id=None, aggregation: str = "mean",
            whole_word: bool = False) -> QAData:
    """SQuAD JSON (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``) or JSON lines of
    ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}`` (the
    datasets library's layout). An answer must be its context's text at ``answer_start``."""
    examples = _jsonl_examples(path) if path.suffix.lower() in (".jsonl", ".ndjson") else _squad_examples(path)
    features, owner, positions = [], [], []
    for start in range(0, len(examples), TOKENIZE_CHUNK):
        chunk = examples[start:start + TOKENIZE_CHUNK]
        encs = tokenizer.encode([e["question"].lstrip() for e in chunk], text_pair=[e["context"] for e in chunk],
                                check_length=False)
        for n, (ex, enc) in enumerate(zip(chunk, encs), start):
            for w in window_or_fail(ex["where"], enc, max_length, stride, content_sequence=1):
                features.append(w)
                owner.append(n)
                positions.append(_answer_tokens(w, ex["answers"][:1], tokenizer.cls_token_id))
    version_2 = any(not e["answers"] for e in examples)
    return QAData(tokenizer, features, owner, np.array(positions, np.int64).reshape(-1, 2), examples, version_2)


def _answer_tokens(window, answers, cls_id) -> tuple[int, int]:
    """(start, end) token of the answer in the window, or the [CLS] index twice when it has none or the
    answer is not wholly inside the window (run_qa's prepare_train_features)."""
    cls = window.ids.index(cls_id) if cls_id in window.ids else 0
    context = [k for k, p in enumerate(window.positions) if p >= 0]
    if not answers or not context:
        return cls, cls
    text, start_char = answers[0]
    end_char = start_char + len(text)
    offs = window.offsets
    first, last = context[0], context[-1]
    if not (offs[first][0] <= start_char and offs[last][1] >= end_char):
        return cls, cls
    s = first
    while s <= last and offs[s][0] <= start_char:
        s += 1
    e = last
    while e >= first and offs[e][1] >= end_char:
        e -= 1
    return s - 1, e + 1


def _check_example(where: str, qid, question, context, answers: list, impossible) -> dict:
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: the {name} is {shown(value)}; expected a non-empty string")
        check_unicode(where, name, value)
    if impossible is not None and not isinstance(impossible, bool):
        raise InputError(f"{where}: is_impossible is {shown(impossible)}; expected true or false")
    checked = []
    for a in [] if impossible else answers:
        text, start = a if isinstance(a, tuple) else (a.get("text"), a.get("answer_start")) if isinstance(
            a, dict) else (None, None)
        if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
            raise InputError(f"{where}: answer {shown(a)}; expected {{\"text\": a non-empty string, "
                             "\"answer_start\": its character offset in the context}")
        if context[start:start + len(text)] != text:
            raise InputError(f"{where}: the answer {shown(text)} is not in its context at answer_start={start} "
                             f"(the context there reads {shown(context[max(start, 0):max(start, 0) + len(text)])})")
        checked.append((text, start))
    if impossible is False and not checked:
        raise InputError(f"{where}: no answers, but is_impossible is false")
    return {"id": str(qid), "question": question, "context": context, "answers": checked, "where": where}


def _squad_examples(path: Path) -> list[dict]:
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    doc = parse_json(raw, str(path), whole_file=True)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(f"{path}: expected SQuAD JSON, an object whose \"data\" lists articles (or a .jsonl file "
                         "of questions)")
    lines = _id_lines(raw)
    examples = []
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"{path}: data[{a}] has no list of \"paragraphs\"")
        for p, par in enumerate(paragraphs):
            qas = par.get("qas") if isinstance(par, dict) else None
            if not isinstance(qas, list):
                raise InputError(f"{path}: data[{a}].paragraphs[{p}] has no list of \"qas\"")
            for q, qa in enumerate(qas):
                here = f"data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(qa, dict):
                    raise InputError(f"{path}: {here} is {shown(qa)}; expected a question object")
                qid = qa.get("id", here)
                where = f"{path}:{lines[qid]}" if lines.get(qid) else f"{path}"
                where += f" ({here}, id {shown(qid)})"
                if not isinstance(qa.get("answers", []), list):
                    raise InputError(f"{where}: \"answers\" is {shown(qa.get('answers'))}; expected a list")
                examples.append(_check_example(where, qid, qa.get("question"), par.get("context"),
                                               qa.get("answers", []), qa.get("is_impossible")))
    return examples


def _id_lines(raw: str) -> dict:
    """The line of each question id's first appearance, so that an error names a line of the file."""
    lines = {}
    for m in re.finditer(r'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)', raw):
        try:
            lines.setdefault(json.loads(m.group(1)), raw.count("\n", 0, m.start()) + 1)
        except json.JSONDecodeError:
            continue
    return lines


def _jsonl_examples(path: Path) -> list[dict]:
    examples = []
    for number, row in jsonl_objects(path, '"id", "question", "context" and "answers"'):
        where = f"{path}:{number}"
        answers = row.get("answers", [])
        if isinstance(answers, dict):  # {"text": [...], "answer_start": [...]}
            texts, starts = answers.get("text"), answers.get("answer_start")
            if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
                raise InputError(f"{where}: \"answers\" is {shown(answers)}; expected lists \"text\" and "
                                 "\"answer_start\" of one length")
            answers = list(zip(texts, starts))
        elif not isinstance(answers, list):
            raise InputError(f"{where}: \"answers\" is {shown(answers)}; expected a list or "
                             "{\"text\": [...], \"answer_start\": [...]}")
        examples.append(_check_example(where, row.get("id", number), row.get("question"), row.get("context"),
                                       answers, row.get("is_impossible")))
    return examples


class QAData(TaskData):
    task = "qa"

    def __init__(self, tokenizer, features, owner, positions: np.ndarray, examples, version_2: bool):
        super().__init__(tokenizer, features)
        self.owner, self.positions, self.examples, self.version_2 = owner, positions, examples, version_2

    def collate(self, indices, seed: int) -> dict[str, np.ndarray]:
        batch = self.inputs(indices)
        batch["start_positions"] = self.positions[indices, 0]
        batch["end_positions"] = self.positions[indices, 1]
        return batch

    def evaluate(self, run, batch_size: int) -> dict:
        """SQuAD exact match and F1 (percent) of the best span per question over all its windows (run_qa's
        postprocessing: the 20 best starts and ends, spans of at most 30 tokens; for SQuAD v2.0 the empty
        answer when [CLS]'s score beats the best span's)."""
        loss, logits = self.eval_outputs(run, batch_size, ("start_logits", "end_logits"), per_token=True)
        by_example: list[list[int]] = [[] for _ in self.examples]
        for i, n in enumerate(self.owner):
            by_example[n].append(i)
        predictions = [self._best_answer(ex, [(self.features[i], *logits[i]) for i in feats])
                       for ex, feats in zip(self.examples, by_example)]
        scores = squad_scores(predictions, [[t for t, _ in ex["answers"]] for ex in self.examples])
        return {"loss": loss, **scores, "main": "f1"}

    def _best_answer(self, example: dict, windows) -> str:
        best_text, best_score, null_score = "", -np.inf, np.inf
        for window, start, end in windows:
            cls = window.ids.index(self.tokenizer.cls_token_id) if self.tokenizer.cls_token_id in window.ids else 0
            null_score = min(null_score, float(start[cls] + end[cls]))
            for s in np.argsort(start)[::-1][:N_BEST]:
                for e in np.argsort(end)[::-1][:N_BEST]:
                    if window.positions[s] < 0 or window.positions[e] < 0 or e < s or e - s + 1 > MAX_ANSWER_LENGTH:
                        continue
                    score = float(start[s] + end[e])
                    if score > best_score:
                        best_score = score
                        best_text = example["context"][window.offsets[s][0]:window.offsets[e][1]]
        if self.version_2 and null_score > best_score:
            return ""
        return best_text
