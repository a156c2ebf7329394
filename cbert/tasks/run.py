"""What every task shares: long texts split into windows, windows run through the model in
length-sorted batches, and the checks that a checkpoint has the head a task needs."""

from __future__ import annotations

import sys

import numpy as np

from ..batching import FINE_STEP, MAX_BATCH_TOKENS, plan_batches
from ..errors import CheckpointError, InputError
from .windows import Window, pad, split

# A batch may pad each of its rows by up to one fine bucket step rather than leave a short forward
# behind (plan_batches' forward_tokens): fuller forwards, fewer of them and fewer shapes. (The
# server's default, batching.FORWARD_COST_TOKENS, is lower: there a forward waits for no one.)
FORWARD_TOKENS_PER_ROW = FINE_STEP

HEAD_NAMES = {"seq_cls": "sequence classification", "token_cls": "token classification", "qa": "question answering"}


def require(model, kind: str, what: str) -> None:
    """``what`` (a task) needs the checkpoint's class to output head ``kind``."""
    if not getattr(model.checkpoint.heads, kind):
        raise CheckpointError(f"{model.checkpoint.weights_file}: {what} needs a {HEAD_NAMES[kind]} head; this "
                              f"checkpoint is a {model.checkpoint.architecture}")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def run_windows(model, windows: list[Window], batch_size: int, outputs: tuple[str, ...],
                progress: bool = False, max_tokens: int | None = None) -> list[dict[str, np.ndarray]]:
    """Forward every window; per window, its unpadded outputs.

    Batches are the token-budget batcher's (:func:`cbert.batching.plan_batches`, as the server
    forms them): windows sorted by length, at most ``batch_size`` rows and ``max_tokens`` padded
    tokens (None: :data:`cbert.batching.MAX_BATCH_TOKENS`), each batch padded to a
    sequence bucket. So a corpus of every length meets a handful of shapes, and a backend that
    prepares each new shape (MLX traces it) prepares a handful. The mask hides the padding.
    A backend that prepares nothing per shape (numpy: ``bucketed_shapes = False``) gets each
    batch padded to its longest window instead.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    max_len = model.config.max_seq_len
    # A window of no tokens (a tokenizer without special tokens, an empty text) is planned as one:
    # it is padded like any other, its mask all zeros.
    plan = plan_batches([max(1, len(w.ids)) for w in windows], max_len, max_tokens or MAX_BATCH_TOKENS,
                        batch_size, forward_tokens=batch_size * FORWARD_TOKENS_PER_ROW)
    bucketed = getattr(model.backend, "bucketed_shapes", True)
    results: list[dict] = [{} for _ in windows]
    for b, batch in enumerate(plan):
        rows = [windows[i] for i in batch.indices]
        inputs = model.tokenizer.model_inputs(pad(rows, model.tokenizer.pad_token_id, batch.seq if bucketed else None))
        out = model.forward(**inputs, outputs=outputs)  # no head the task does not read
        for row, i in enumerate(batch.indices):
            n = len(windows[i].ids)
            for key in outputs:
                v = out[key][row]
                results[i][key] = v[:n] if key in ("last_hidden_state", "start_logits", "end_logits") or (
                    key == "logits" and v.ndim == 2) else v
            results[i]["attention_mask"] = inputs["attention_mask"][row, :n]
        if progress:
            print(f"\r{b + 1}/{len(plan)} batches", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return results


def windows_per_text(model, texts, stride: int | None, truncation: bool = False, text_pair=None,
                     where: list[str] | None = None):
    """(encodings, each text's windows). A pair (``text_pair``: one second text per text) keeps its first
    text whole in every window and windows the second, as seq-cls training and the server do; ``where``
    names each text in a window's error (e.g. its file and line)."""
    encs = model.tokenizer.encode(texts, text_pair=text_pair, truncation=truncation, check_length=False)
    content = None if text_pair is None else 1
    per_text = []
    for i, e in enumerate(encs):
        try:
            per_text.append(split(e, model.config.max_seq_len, stride, content))
        except InputError as err:
            if where is None:
                raise
            raise InputError(f"{where[i]}: {err}") from None
    return encs, per_text


def flatten(per_text: list[list[Window]]) -> tuple[list[Window], list[range]]:
    """All windows in one list, and each text's range in it."""
    flat, spans = [], []
    for ws in per_text:
        spans.append(range(len(flat), len(flat) + len(ws)))
        flat += ws
    return flat, spans
