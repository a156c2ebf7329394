"""Long clinical notes: split an encoding into windows that fit the model, never truncating.

A window keeps the encoding's special tokens (and, for a question/context pair, the whole
question) and takes a slice of the content tokens; consecutive slices overlap by
``stride`` tokens. A text that fits gives exactly one window: its own encoding, so every
windowed task equals the un-windowed one on short texts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass
class Window:
    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    positions: list[int]  # for each token, its index among the text's content tokens; -1 for fixed tokens


# Default overlap: 128 tokens (a quarter of BERT's 510-token window), at most half a window.
DEFAULT_STRIDE = 128


def split(enc, max_len: int, stride: int | None, content_sequence: int | None = None) -> list[Window]:
    """Windows of ``enc`` (a ``tokenizers`` Encoding) of at most ``max_len`` tokens.

    Content tokens are the non-special ones (of sequence ``content_sequence`` for a pair:
    1 = the context); everything else is repeated in every window.
    """
    ids, types, offs = enc.ids, enc.type_ids, enc.offsets
    special = enc.special_tokens_mask
    seq_ids = enc.sequence_ids
    content = [i for i in range(len(ids)) if not special[i] and (
        content_sequence is None or seq_ids[i] == content_sequence)]
    if not content:
        return [Window(list(ids), list(types), list(offs), [-1] * len(ids))]
    first, last = content[0], content[-1]
    if content != list(range(first, last + 1)):
        raise InputError("the content tokens of a window must be contiguous")
    fixed = len(ids) - len(content)
    room = max_len - fixed
    if room <= 0:
        raise InputError(f"the fixed part of the input (special tokens and question: {fixed} tokens) leaves no room "
                         f"for the text in a window of {max_len} tokens")
    if stride is None:
        stride = min(DEFAULT_STRIDE, room // 2)
    if not 0 <= stride < room:
        raise InputError(f"stride={stride}: expected 0 <= stride < {room} (the text tokens per window)")
    n = len(content)
    starts = [0]
    while starts[-1] + room < n:
        starts.append(starts[-1] + room - stride)
    windows = []
    for s in starts:
        e = min(s + room, n)
        keep = list(range(first)) + list(range(first + s, first + e)) + list(range(last + 1, len(ids)))
        positions = [(k - first) if first <= k <= last else -1 for k in keep]
        windows.append(Window([ids[k] for k in keep], [types[k] for k in keep], [offs[k] for k in keep], positions))
    return windows


def pad(windows: list[Window], pad_id: int, length: int | None = None) -> dict[str, np.ndarray]:
    """Model inputs [n, length] (default: the longest window's length), each window padded with ``pad_id``."""
    n, s = len(windows), max(len(w.ids) for w in windows)
    if length is not None:
        if length < s:
            raise ValueError(f"length={length}: shorter than the longest window ({s} tokens)")
        s = length
    ids = np.full((n, s), pad_id, dtype=np.int64)
    types = np.zeros((n, s), dtype=np.int64)
    mask = np.zeros((n, s), dtype=np.int64)
    for i, w in enumerate(windows):
        k = len(w.ids)
        ids[i, :k], types[i, :k], mask[i, :k] = w.ids, w.type_ids, 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def centrality(window: Window) -> np.ndarray:
    """How central each content token sits in its window: distance to the nearer edge."""
    pos = np.array([p for p in window.positions if p >= 0], dtype=np.int64)
    if pos.size == 0:  # a text with no content tokens ("", only control characters): one window of specials
        return pos
    return np.minimum(pos - pos.min(), pos.max() - pos)


def aggregate(vectors: np.ndarray, how: str) -> np.ndarray:
    """Combine per-window rows [n_windows, ...] into one: mean, max, first, or Huang's vote score."""
    if how == "mean":
        return vectors.mean(0)
    if how == "max":
        return vectors.max(0)
    if how == "first":
        return vectors[0]
    if how == "vote":
        # ClinicalBERT readmission (Huang et al.): (max + mean * n/2) / (1 + n/2); n = number of windows.
        n = len(vectors)
        return (vectors.max(0) + vectors.mean(0) * n / 2) / (1 + n / 2)
    raise InputError(f"aggregation={how!r}; choose one of mean, max, first, vote")
