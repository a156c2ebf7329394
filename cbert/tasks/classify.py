"""Sequence classification, as Hugging Face's text-classification pipeline gives it."""

from __future__ import annotations

import numpy as np

from .arguments import one_of, positive_int, stride_or_none, texts_list
from .run import flatten, require, run_windows, softmax, windows_per_text
from .windows import aggregate

AGGREGATIONS = ("mean", "max", "vote")
FUNCTIONS = ("softmax", "sigmoid", "none")


def default_function(model, n_labels: int) -> str:
    """What Hugging Face's pipeline applies to a classifier's logits: sigmoid for one label or a
    multi-label checkpoint, else softmax."""
    multi_label = model.config.extra.get("problem_type") == "multi_label_classification"
    return "sigmoid" if n_labels == 1 or multi_label else "softmax"


def probabilities(logits: np.ndarray, function: str) -> np.ndarray:
    """Scores from logits [..., n_labels] by ``function``: softmax, sigmoid or none (the logits)."""
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    one_of(function, "function_to_apply", FUNCTIONS)
    return logits


def ranked(scores: np.ndarray, labels: list[str]) -> list[dict]:
    """[{label, score}] best first (ties in label order), as Hugging Face's pipeline lists them."""
    return [{"label": labels[i], "score": float(scores[i])} for i in np.argsort(-scores, kind="stable")]


def classify(model, texts, top_k: int | None = 1, aggregation="mean", stride=None, batch_size=32,
             function_to_apply: str | None = None, progress=False):
    """Hugging Face text-classification results: per text {label, score} (top_k=1) or a sorted list."""
    require(model, "seq_cls", "classify")
    texts, single = texts_list(texts)
    if top_k is not None:
        top_k = positive_int(top_k, "top_k")
    probs = class_probabilities(model, texts, aggregation, stride, batch_size, function_to_apply, progress)
    labels = model.config.labels(probs.shape[-1])
    results = [ranked(scores, labels) for scores in probs]
    results = [best[0] if top_k == 1 else best[:top_k] for best in results]
    return results[0] if single else results


def class_probabilities(model, texts, aggregation="mean", stride=None, batch_size=32,
                        function_to_apply: str | None = None, progress=False) -> np.ndarray:
    """[n texts, labels]: each text's label probabilities, a long note's windows combined by ``aggregation``
    (what ``classify`` ranks, and ``model.predict_proba`` returns)."""
    require(model, "seq_cls", "classify")
    texts, _ = texts_list(texts)
    aggregation = one_of(aggregation, "aggregation", AGGREGATIONS)
    if function_to_apply is not None:
        one_of(function_to_apply, "function_to_apply", FUNCTIONS)
    stride = stride_or_none(stride)
    batch_size = positive_int(batch_size, "batch_size")
    _, per_text = windows_per_text(model, texts, stride)
    flat, spans = flatten(per_text)
    outs = run_windows(model, flat, batch_size, ("logits",), progress)
    probs = window_probabilities(model, np.stack([o["logits"] for o in outs]), function_to_apply)
    return np.stack([aggregate(probs[s], aggregation) for s in spans]).astype(np.float32)


def window_probabilities(model, logits: np.ndarray, function_to_apply: str | None = None) -> np.ndarray:
    """[..., labels] scores of classifier logits [..., labels], by the caller's function or the pipeline's."""
    return probabilities(logits, function_to_apply or default_function(model, logits.shape[-1]))
