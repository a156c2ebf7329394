"""Evaluation metrics of the training tasks, each as the library people compare against computes it:
accuracy, macro-F1 and AUROC as scikit-learn does (seq-cls), entity-level precision/recall/F1 as
seqeval does (token-cls), exact match and F1 as the official SQuAD v2.0 script does (qa), and
perplexity (mlm). Plain numpy and Python; no metric library is needed at run time.
"""

from __future__ import annotations

import collections
import math
import re
import string

import numpy as np

# -- sequence classification (scikit-learn's definitions) -----------------------------------------


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean())


def f1_per_class(pred, labels, classes) -> np.ndarray:
    """F1 of each class in ``classes`` (0 where it has no true and no predicted example)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    out = []
    for c in classes:
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        out.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return np.array(out, np.float64)


def macro_f1(pred, labels) -> float:
    """The mean F1 over every class seen in ``labels`` or ``pred`` (sklearn's f1_score(average="macro"))."""
    classes = np.union1d(np.unique(pred), np.unique(labels))
    return float(f1_per_class(pred, labels, classes).mean())


def micro_f1(pred, labels) -> float:
    """F1 over all (example, class) decisions of a multi-label task: [n, classes] 0/1 arrays."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp, fp, fn = (pred & labels).sum(), (pred & ~labels).sum(), (~pred & labels).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve of binary ``labels`` (0/1) ranked by ``scores``, ties counted half
    (sklearn's roc_auc_score); None when only one class is present (the area is undefined)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    # Mann-Whitney U: the mean rank of the positives, tied scores sharing the mean of their ranks.
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    start = 0
    for end in range(1, len(scores) + 1):
        if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # ranks are 1-based
            start = end
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


# -- token classification (seqeval's default mode) -------------------------------------------------


def get_entities(seq: list) -> list[tuple[str, int, int]]:
    """(type, first, last) of each chunk in a tag sequence (a list of lists is joined with "O" between),
    by seqeval's rules (IOB1/IOB2/IOE/IOBES read leniently: an I- after O starts a chunk)."""
    if any(isinstance(s, list) for s in seq):
        seq = [item for sublist in seq for item in [*sublist, "O"]]
    prev_tag, prev_type, begin, chunks = "O", "", 0, []
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entity_scores(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 and token accuracy over sentences of tags, as
    seqeval's precision_score, recall_score, f1_score and accuracy_score give them."""
    true, pred = set(get_entities(true_tags)), set(get_entities(pred_tags))
    correct = len(true & pred)
    p = correct / len(pred) if pred else 0.0
    r = correct / len(true) if true else 0.0
    flat_true = [t for s in true_tags for t in s]
    flat_pred = [t for s in pred_tags for t in s]
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "accuracy": sum(a == b for a, b in zip(flat_true, flat_pred)) / len(flat_true) if flat_true else 0.0}


# -- question answering (the official SQuAD v2.0 evaluation script) -------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (the official script)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # an unanswerable question: right only when both are empty
        return float(pred == ref)
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each question scored against its best gold answer
    (no gold answer: the empty answer is the gold one, as SQuAD v2.0's script counts it)."""
    em = f1 = 0.0
    for pred, answers in zip(predictions, golds):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        em += max(exact_match(pred, a) for a in answers)
        f1 += max(token_f1(pred, a) for a in answers)
    n = max(len(predictions), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# -- masked LM ----------------------------------------------------------------------------------


def perplexity(mean_loss: float) -> float:
    """exp of the mean cross-entropy per masked token (inf past float range, never NaN from a finite loss)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
