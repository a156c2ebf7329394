"""Embeddings: one pooled vector per text, a long text's window vectors combined."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint.sentence_transformers import embedding_defaults
from ..errors import CheckpointError
from .arguments import flag, one_of, positive_int, stride_or_none, texts_list
from .run import flatten, run_windows, windows_per_text
from .windows import aggregate

POOLINGS = ("cls", "mean", "max")
WINDOW_AGGREGATIONS = ("mean", "max", "first")


@dataclass(frozen=True)
class EmbeddingDefaults:
    """The pooling and normalization an embedding gets when the caller names none: what the
    checkpoint's sentence-transformers modules.json declares, else mean pooling, not normalized.
    Read once when a model loads; ``model.embed``, ``cbert embed`` and ``cbert info`` all use it."""

    pooling: str = "mean"
    normalize: bool = False
    declared_by: Path | None = None  # the modules.json that declared them; None: cbert's own default
    # Why modules.json cannot be read. The model still loads and runs; an embedding that needs
    # the declared defaults raises it, one given pooling and normalize explicitly does not.
    problem: str | None = None

    @classmethod
    def of_folder(cls, folder: str | Path) -> EmbeddingDefaults:
        modules = Path(folder) / "modules.json"
        if not modules.is_file():
            return cls()
        try:
            pooling, normalize = embedding_defaults(folder)
        except CheckpointError as e:
            return cls(declared_by=modules, problem=str(e))
        return cls(pooling or cls.pooling, normalize, modules)

    def resolve(self, pooling: str | None, normalize: bool | None) -> tuple[str, bool]:
        """(pooling, normalize) with None replaced by the default, each checked."""
        if self.problem and (pooling is None or normalize is None):
            raise CheckpointError(f"{self.problem}; to embed without its defaults, name both pooling and "
                                  "normalize (--pooling and --normalize/--no-normalize)")
        pooling = self.pooling if pooling is None else one_of(pooling, "pooling", POOLINGS)
        normalize = self.normalize if normalize is None else flag(normalize, "normalize")
        return pooling, normalize

    def describe(self) -> str:
        if self.problem:
            return f"unknown: {self.problem}"
        said = f"declared by {self.declared_by.name}" if self.declared_by else "cbert's default, no modules.json"
        return f"{self.pooling} pooling, {'normalized' if self.normalize else 'not normalized'} ({said})"


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Pool [..., seq, hidden] over its real tokens."""
    if pooling == "cls":
        return hidden[..., 0, :]
    m = mask[..., None].astype(np.float32)
    if pooling == "mean":
        return (hidden * m).sum(-2) / np.maximum(m.sum(-2), np.float32(1e-9))
    return np.where(m > 0, hidden, np.float32(-1e9)).max(-2)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows [n, d] scaled to unit length (a zero row stays zero), as sentence-transformers' Normalize does."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), np.float32(1e-12))


def embed(model, texts, pooling: str | None = None, normalize: bool | None = None, batch_size=32,
          truncation=False, window_aggregation="mean", stride=None, progress=False,
          max_batch_tokens: int | None = None) -> np.ndarray:
    """[n, hidden] float32; ``pooling``/``normalize`` None: the model's ``embedding_defaults``.
    Forwards are packed as the server packs them: at most ``batch_size`` windows and ``max_batch_tokens``
    padded tokens each (None: :data:`cbert.batching.MAX_BATCH_TOKENS`)."""
    pooling, normalize = model.embedding_defaults.resolve(pooling, normalize)
    texts, _ = texts_list(texts)
    batch_size = positive_int(batch_size, "batch_size")
    truncation = flag(truncation, "truncation")
    window_aggregation = one_of(window_aggregation, "window_aggregation", WINDOW_AGGREGATIONS)
    stride = stride_or_none(stride)
    _, per_text = windows_per_text(model, texts, stride, truncation)
    if max_batch_tokens is not None:
        max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens")
    result = pooled_windows(model, per_text, pooling, window_aggregation, batch_size, progress, max_batch_tokens)
    return l2_normalize(result) if normalize else result


def pooled_windows(model, per_text, pooling: str, window_aggregation: str, batch_size: int, progress=False,
                   max_batch_tokens: int | None = None) -> np.ndarray:
    """[n texts, hidden] float32: every window of each text (``windows_per_text``) run, pooled (``pooling``
    "pooler": the pooler's output of the window), and a text's windows combined by ``window_aggregation``."""
    key = "pooler_output" if pooling == "pooler" else "last_hidden_state"
    flat, spans = flatten(per_text)
    outs = run_windows(model, flat, batch_size, (key,), progress, max_batch_tokens)
    vecs = np.stack([o[key] if pooling == "pooler" else pool(o[key], o["attention_mask"], pooling) for o in outs])
    return np.stack([aggregate(vecs[s], window_aggregation) for s in spans]).astype(np.float32)
