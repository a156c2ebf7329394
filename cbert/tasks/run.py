"""What every task shares: long texts split into windows, windows run through the model in
length-sorted batches, and the checks that a checkpoint has the head a task needs."""

from __future__ import annotations

import sys

import numpy as np

from ..batching import FORWARD_COST_TOKENS, plan_batches
from ..errors import CheckpointError
from .windows import Window, pad, split

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
    """Forward every window (batched by length, so padding costs little); per window, unpadded outputs.

    ``max_tokens`` None: ``batch_size`` windows per forward, padded to the longest. Else packed as the
    server packs them (:func:`cbert.batching.plan_batches`): at most ``max_tokens`` padded tokens and
    ``batch_size`` windows per forward, rows padded to a sequence bucket."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    if max_tokens is None:
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
        batches = [(order[b:b + batch_size], None) for b in range(0, len(windows), batch_size)]
    else:
        plan = plan_batches([len(w.ids) for w in windows], model.config.max_seq_len, max_tokens, batch_size,
                            FORWARD_COST_TOKENS)
        batches = [(list(b.indices), b.seq) for b in plan]
    results: list[dict] = [{} for _ in windows]
    n_batches = len(batches)
    for b, (idx, seq) in enumerate(batches):
        batch = model.tokenizer.model_inputs(pad([windows[i] for i in idx], model.tokenizer.pad_token_id, seq))
        out = model.forward(**batch, outputs=outputs)  # no head the task does not read
        for row, i in enumerate(idx):
            n = len(windows[i].ids)
            for key in outputs:
                v = out[key][row]
                results[i][key] = v[:n] if key in ("last_hidden_state", "start_logits", "end_logits") or (
                    key == "logits" and v.ndim == 2) else v
            results[i]["attention_mask"] = batch["attention_mask"][row, :n]
        if progress:
            print(f"\r{b + 1}/{n_batches} batches", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return results


def windows_per_text(model, texts, stride: int | None, truncation: bool = False):
    """(encodings, each text's windows)."""
    encs = model.tokenizer.encode(texts, truncation=truncation, check_length=False)
    per_text = [split(e, model.config.max_seq_len, stride) for e in encs]
    return encs, per_text


def flatten(per_text: list[list[Window]]) -> tuple[list[Window], list[range]]:
    """All windows in one list, and each text's range in it."""
    flat, spans = [], []
    for ws in per_text:
        spans.append(range(len(flat), len(flat) + len(ws)))
        flat += ws
    return flat, spans
