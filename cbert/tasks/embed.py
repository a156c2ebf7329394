"""Embeddings: one pooled vector per text, a long text's window vectors combined."""

from __future__ import annotations

import numpy as np

from .run import flatten, run_windows, windows_per_text
from .windows import aggregate

POOLINGS = ("cls", "mean", "max")


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Pool [..., seq, hidden] over its real tokens."""
    if pooling == "cls":
        return hidden[..., 0, :]
    m = mask[..., None].astype(np.float32)
    if pooling == "mean":
        return (hidden * m).sum(-2) / np.maximum(m.sum(-2), np.float32(1e-9))
    return np.where(m > 0, hidden, np.float32(-1e9)).max(-2)


def embed(model, texts, pooling="mean", normalize=False, batch_size=32, truncation=False,
          window_aggregation="mean", stride=None, progress=False) -> np.ndarray:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; choose one of {', '.join(POOLINGS)}")
    if window_aggregation not in ("mean", "max", "first"):
        raise ValueError(f"window_aggregation={window_aggregation!r}; choose one of mean, max, first")
    _, per_text = windows_per_text(model, texts, stride, truncation)
    flat, spans = flatten(per_text)
    outs = run_windows(model, flat, batch_size, ("last_hidden_state",), progress)
    vecs = np.stack([pool(o["last_hidden_state"], o["attention_mask"], pooling) for o in outs])
    result = np.stack([aggregate(vecs[s], window_aggregation) for s in spans]).astype(np.float32)
    if normalize:
        result /= np.maximum(np.linalg.norm(result, axis=1, keepdims=True), np.float32(1e-12))
    return result
