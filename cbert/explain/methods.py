"""The attribution methods by name: METHODS maps each to (function, needs_gradients), and
``explain`` runs one of them on one prediction and returns an :class:`Explanation`."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..extras import need
from .gradients import grad_x_input, integrated_gradients, require_gradients
from .occlusion import occlusion
from .rollout import attention_flow, attention_rollout
from .shap_lime import lime_weights, shap_values
from .subject import Subject, default_task, make_subject

# name -> (function(subject, options) -> (scores per token, details), needs gradients)
METHODS = {
    "integrated-gradients": (integrated_gradients, True),
    "grad-x-input": (grad_x_input, True),
    "occlusion": (occlusion, False),
    "attention-rollout": (attention_rollout, False),
    "attention-flow": (attention_flow, False),
    "shap": (shap_values, False),
    "lime": (lime_weights, False),
}
# What needs no optional package: the methods `cbert explain` runs when none are named.
CORE_METHODS = ("integrated-gradients", "grad-x-input", "occlusion", "attention-rollout")
# The optional packages (the `explain` extra) a method imports, and the methods that explain a classifier only.
METHOD_EXTRAS = {"attention-flow": "networkx", "shap": "shap", "lime": "lime.lime_text"}
CLASSIFIER_ONLY = ("shap", "lime")


@dataclass(frozen=True)
class Options:
    """Settings of the methods, each read by the methods it names."""

    steps: int = 50  # integrated-gradients: quadrature points (Captum's default)
    baseline: str = "pad"  # integrated-gradients: "pad" or "mask" embeddings
    seed: int = 0  # lime's sampling, the sanity checks' random orders and re-initialization
    shap_evals: int = 500  # shap: max_evals of the Partition explainer (shap's default)
    lime_samples: int = 5000  # lime: num_samples (lime's default)

    def __post_init__(self):
        for name in ("steps", "shap_evals", "lime_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise InputError(f"{name}={v!r}; expected a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise InputError(f"seed={self.seed!r}; expected an integer")


@dataclass
class Explanation:
    """Per-token attributions of one prediction by one method.

    ``tokens`` are the text's tokens (special tokens left out; for QA the context's), ``offsets`` their
    character spans in ``text``; ``scores`` one attribution per token (a word-level method splits a
    word's value evenly over its tokens, so a word's score is the sum over its tokens)."""

    method: str
    task: str
    text: str
    tokens: list[str]
    offsets: list[tuple[int, int]]
    scores: np.ndarray
    target: dict
    probability: float
    details: dict = field(default_factory=dict)
    word_spans: list[tuple[int, int, int, int]] = field(default_factory=list, repr=False)

    def words(self) -> list[dict]:
        """Per word: its text, character span and score (the sum of its tokens')."""
        return [{"word": self.text[s:e], "start": s, "end": e, "score": float(self.scores[a:b].sum())}
                for a, b, s, e in self.word_spans]

    def top_words(self, k: int = 5) -> list[dict]:
        return sorted(self.words(), key=lambda w: -w["score"])[:k]

    def to_dict(self) -> dict:
        return {"method": self.method, "task": self.task, "target": self.target, "probability": self.probability,
                "tokens": [{"token": t, "start": s, "end": e, "score": float(v)}
                           for t, (s, e), v in zip(self.tokens, self.offsets, self.scores)],
                "words": self.words(), "details": as_json(self.details)}


def check_method(model, method: str, task: str | None = None) -> None:
    """That ``method`` exists, runs on the model's backend, has its optional package, and explains ``task``:
    each a one-line error before any work."""
    if method not in METHODS:
        raise InputError(f"method={method!r} is not an attribution method; choose from {', '.join(METHODS)}")
    if METHODS[method][1]:
        require_gradients(model, method)
    if task is not None and task != "classify" and method in CLASSIFIER_ONLY:
        raise InputError(f"{method} explains a classifier's predict_proba (task classify); for {task} use "
                         f"{', '.join(m for m in METHODS if m not in CLASSIFIER_ONLY)}")
    if method in METHOD_EXTRAS:
        need(METHOD_EXTRAS[method], f"the {method} method")


def run_method(subject: Subject, method: str, options: Options | None = None) -> Explanation:
    """``method`` on a prepared subject (several methods share one subject and its forwards)."""
    check_method(subject.model, method, subject.task)
    options = options or Options()
    scores, details = METHODS[method][0](subject, options)
    scores = np.asarray(scores, np.float64)
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"{method}: the attributions hold NaN or infinite values")
    return Explanation(method, subject.task, subject.text, list(subject.tokens), list(subject.offsets), scores,
                       {**subject.target.describe(), "windows": len(subject.windows)}, subject.probability,
                       details, subject.word_spans())


def explain(model, text: str, target=None, task: str | None = None, method: str = "integrated-gradients",
            question: str | None = None, aggregation: str = "mean", stride: int | None = None,
            batch_size: int = 32, progress: bool = False, **options) -> Explanation:
    """Attributions of ``model``'s prediction on ``text`` by ``method`` (see METHODS); ``options``:
    the fields of :class:`Options` (steps, baseline, seed, shap_evals, lime_samples)."""
    task = default_task(model) if task is None else task
    check_method(model, method, task)  # before any forward: a method this backend cannot run fails at once
    unknown = sorted(set(options) - set(Options.__dataclass_fields__))
    if unknown:
        raise InputError(f"explain() got an unknown option {unknown[0]!r}; options: "
                         f"{', '.join(Options.__dataclass_fields__)}")
    opts = Options(**options)
    subject = make_subject(model, text, task, target, question, aggregation, stride, batch_size, progress)
    return run_method(subject, method, opts)


def as_json(value):
    """``value`` with numpy scalars and arrays as JSON's numbers and lists."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
