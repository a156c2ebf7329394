"""What a prediction is, per task: the target an explanation is about, and how a window's forward
turns into that target's probability (every method) or log-probability (the gradient methods' scalar).

A target is pinned once it is resolved (a label index, an entity's tokens and their labels, an answer
span, a vocabulary token at a masked position), so the same target can be scored on another model:
the model-randomization sanity check does exactly that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..errors import InputError
from ..heads import MLM_LOGITS, QA_LOGITS, SEQ_CLS_LOGITS, TOKEN_CLS_LOGITS
from ..ir import IGNORE_INDEX, Node, Op, node
from ..tasks.classify import default_function, window_probabilities
from ..tasks.run import softmax
from ..tasks.windows import aggregate

LOSS = "loss"  # the gradient graph's scalar: minus the target's log-probability, summed over rows


class Target(ABC):
    """Base of the four targets. ``windows``: the indices (into the subject's windows) whose outputs
    make the prediction; ``weights``: d(note probability)/d(window probability) at the prediction."""

    task = ""
    windows: list[int]
    weights: np.ndarray

    @abstractmethod
    def probabilities(self, model, batch: dict[str, np.ndarray], window: int) -> np.ndarray:
        """[rows] the target's probability for each row of ``batch`` (inputs of window ``window``)."""

    def combine(self, window_probs: np.ndarray) -> np.ndarray:
        """[variants] note probabilities from [len(windows), variants] window probabilities."""
        return window_probs[0]

    @abstractmethod
    def rows(self, window: int) -> list[int]:
        """The window rows whose outputs the prediction reads (attention rollout starts from them)."""

    @abstractmethod
    def loss_nodes(self) -> tuple[list[Node], tuple[str, ...]]:
        """(nodes computing LOSS = -log p(target) summed over rows, the label inputs they read)."""

    @abstractmethod
    def loss_labels(self, window: int, n: int, seq: int) -> dict[str, np.ndarray]:
        """The label inputs of ``loss_nodes`` for window ``window`` of ``n`` rows of ``seq`` tokens."""

    @abstractmethod
    def describe(self) -> dict:
        """The target as the report and the JSON show it."""


class ClassifyTarget(Target):
    task = "classify"

    def __init__(self, model, label: int, labels: list[str], aggregation: str, window_probs: np.ndarray):
        """``window_probs``: [windows] the label's probability in each window of the note."""
        self.label, self.labels, self.aggregation = label, labels, aggregation
        self.function = default_function(model, len(labels))
        self.windows = list(range(len(window_probs)))
        self.weights = aggregation_weights(window_probs, aggregation)

    def probabilities(self, model, batch, window):
        logits = model.forward(**batch, outputs=("logits",)).logits
        return window_probabilities(model, logits, self.function)[:, self.label]

    def combine(self, window_probs):
        return aggregate(window_probs, self.aggregation)

    def rows(self, window):
        return [0]  # the first token ([CLS] / <s>): what every family's classifier reads

    def loss_nodes(self):
        if self.function != "softmax":
            raise InputError(f"the gradient methods explain a softmax classifier's log-probability; this one scores "
                             f"its {len(self.labels)} label(s) with a {self.function} (use occlusion, "
                             "attention-rollout, attention-flow, shap or lime)")
        return [node(Op.CROSS_ENTROPY, [SEQ_CLS_LOGITS, "explain_label"], LOSS, reduction="sum")], ("explain_label",)

    def loss_labels(self, window, n, seq):
        return {"explain_label": np.full(n, self.label, np.int64)}

    def describe(self):
        return {"label": self.labels[self.label], "index": self.label, "aggregation": self.aggregation}


def aggregation_weights(window_probs: np.ndarray, how: str) -> np.ndarray:
    """d aggregate / d window probability at ``window_probs``: how window attributions combine into the
    note's (exact for the mean; for max and Huang's vote, their slope at the prediction)."""
    n = len(window_probs)
    if how == "mean":
        return np.full(n, 1.0 / n)
    top = np.zeros(n)
    top[int(np.argmax(window_probs))] = 1.0
    if how == "max":
        return top
    return (top + 0.5) / (1 + n / 2)  # vote: (max + mean * n/2) / (1 + n/2)


class NerTarget(Target):
    task = "ner"

    def __init__(self, window: int, rows: list[int], labels: list[int], names: list[str], entity: dict):
        self.windows, self.weights = [window], np.ones(1)
        self._rows, self.token_labels, self.names, self.entity = rows, labels, names, entity

    def probabilities(self, model, batch, window):
        logits = model.forward(**batch, outputs=("logits",)).logits  # [n, seq, labels]
        p = softmax(logits[:, self._rows])
        return p[:, np.arange(len(self._rows)), self.token_labels].mean(-1)  # the entity's score, as HF's "simple"

    def rows(self, window):
        return self._rows

    def loss_nodes(self):
        return [node(Op.CROSS_ENTROPY, [TOKEN_CLS_LOGITS, "explain_label"], LOSS, reduction="sum")], ("explain_label",)

    def loss_labels(self, window, n, seq):
        labels = np.full((n, seq), IGNORE_INDEX, np.int64)
        labels[:, self._rows] = self.token_labels
        return {"explain_label": labels}

    def describe(self):
        return {**self.entity, "token_labels": [self.names[i] for i in self.token_labels]}


class QaTarget(Target):
    task = "qa"

    def __init__(self, window: int, start_row: int, end_row: int, allowed: np.ndarray, cls_first: bool, answer: dict):
        self.windows, self.weights = [window], np.ones(1)
        self.start_row, self.end_row, self.allowed, self.cls_first, self.answer = (
            start_row, end_row, allowed, cls_first, answer)

    def probabilities(self, model, batch, window):
        out = model.forward(**batch, outputs=("start_logits", "end_logits"))
        # The span's score as the question-answering pipeline computes it (tasks/qa.py): a softmax over
        # the context tokens (and [CLS], zeroed after), start times end.
        start = softmax(np.where(self.allowed, out.start_logits, -10000.0))
        end = softmax(np.where(self.allowed, out.end_logits, -10000.0))
        return start[:, self.start_row] * end[:, self.end_row]

    def rows(self, window):
        return list(range(self.start_row, self.end_row + 1))

    def loss_nodes(self):
        nodes = []
        for i, side in enumerate(("start", "end")):
            nodes += [node(Op.PICK, [QA_LOGITS], f"explain.{side}_logits", index=i),
                      node(Op.CROSS_ENTROPY, [f"explain.{side}_logits", f"explain_{side}"], f"explain.{side}_loss",
                           reduction="sum")]
        nodes.append(node(Op.WEIGHTED_SUM, ["explain.start_loss", "explain.end_loss"], LOSS, weights=(1.0, 1.0)))
        return nodes, ("explain_start", "explain_end")

    def loss_labels(self, window, n, seq):
        return {"explain_start": np.full(n, self.start_row, np.int64),
                "explain_end": np.full(n, self.end_row, np.int64)}

    def describe(self):
        return dict(self.answer)


class FillMaskTarget(Target):
    task = "fill-mask"

    def __init__(self, row: int, token: int, token_str: str):
        self.windows, self.weights = [0], np.ones(1)
        self.row, self.token, self.token_str = row, token, token_str

    def probabilities(self, model, batch, window):
        hidden = model.forward(**batch, outputs=("last_hidden_state",)).last_hidden_state
        logits = model.mlm_logits(hidden[:, [self.row]])[:, 0]  # the head over the masked position only
        return softmax(logits)[:, self.token]

    def rows(self, window):
        return [self.row]

    def loss_nodes(self):
        return [node(Op.CROSS_ENTROPY, [MLM_LOGITS, "explain_label"], LOSS, reduction="sum")], ("explain_label",)

    def loss_labels(self, window, n, seq):
        labels = np.full((n, seq), IGNORE_INDEX, np.int64)
        labels[:, self.row] = self.token
        return {"explain_label": labels}

    def describe(self):
        return {"token": self.token_str, "token_id": self.token, "position": self.row}
