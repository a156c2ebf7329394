"""Sequence classification, as Hugging Face's text-classification pipeline gives it."""

from __future__ import annotations

import numpy as np

from .arguments import one_of, positive_int, stride_or_none, texts_list
from .run import flatten, require, run_windows, softmax, windows_per_text
from .windows import aggregate

AGGREGATIONS = ("mean", "max", "vote")
FUNCTIONS = ("softmax", "sigmoid", "none")


def classify(model, texts, top_k: int | None = 1, aggregation="mean", stride=None, batch_size=32,
             function_to_apply: str | None = None, progress=False):
    """Hugging Face text-classification results: per text {label, score} (top_k=1) or a sorted list."""
    require(model, "seq_cls", "classify")
    texts, single = texts_list(texts)
    if top_k is not None:
        top_k = positive_int(top_k, "top_k")
    aggregation = one_of(aggregation, "aggregation", AGGREGATIONS)
    if function_to_apply is not None:
        one_of(function_to_apply, "function_to_apply", FUNCTIONS)
    stride = stride_or_none(stride)
    batch_size = positive_int(batch_size, "batch_size")
    _, per_text = windows_per_text(model, texts, stride)
    flat, spans = flatten(per_text)
    outs = run_windows(model, flat, batch_size, ("logits",), progress)
    logits = np.stack([o["logits"] for o in outs])
    n_labels = logits.shape[-1]
    labels = model.config.labels(n_labels)
    fn = function_to_apply or ("sigmoid" if n_labels == 1 or model.config.extra.get("problem_type") ==
                               "multi_label_classification" else "softmax")
    if fn == "softmax":
        probs = softmax(logits)
    elif fn == "sigmoid":
        probs = 1 / (1 + np.exp(-logits))
    else:
        probs = logits
    results = []
    for s in spans:
        scores = aggregate(probs[s], aggregation)
        ranked = [{"label": labels[i], "score": float(scores[i])} for i in np.argsort(-scores, kind="stable")]
        results.append(ranked[0] if top_k == 1 else ranked[:top_k])
    return results[0] if single else results
