"""Extractive question answering over a context of any length."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .arguments import positive_int, stride_or_none, string
from .run import require, run_windows, softmax
from .windows import split


def qa(model, question: str, context: str, top_k: int = 1, max_answer_len: int = 15, stride=None,
       batch_size=32, progress=False):
    """The best answer span(s) in ``context``: {score, start, end, answer}, over every window of a long context."""
    require(model, "qa", "qa")
    question, context = string(question, "question"), string(context, "context")
    top_k = positive_int(top_k, "top_k")
    max_answer_len = positive_int(max_answer_len, "max_answer_len")
    stride = stride_or_none(stride)
    batch_size = positive_int(batch_size, "batch_size")
    if not question.strip() or not context.strip():
        raise InputError("qa needs a non-empty question and context")
    tok = model.tokenizer
    enc = tok.encode([question], text_pair=[context], check_length=False)[0]
    windows = split(enc, model.config.max_seq_len, stride, content_sequence=1)
    outs = run_windows(model, windows, batch_size, ("start_logits", "end_logits"), progress)
    answers = []
    for w, o in zip(windows, outs):
        # Only context tokens (and [CLS], zeroed after the softmax) may start or end an answer,
        # as Hugging Face's question-answering pipeline decides.
        allowed = np.array([p >= 0 or i == tok.cls_token_id for i, p in zip(w.ids, w.positions)])
        start = softmax(np.where(allowed, o["start_logits"], -10000.0))
        end = softmax(np.where(allowed, o["end_logits"], -10000.0))
        if w.ids[0] == tok.cls_token_id:
            start[0] = end[0] = 0.0
        cand = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
        ok = np.flatnonzero(allowed)
        cand[~np.isin(np.arange(len(w.ids)), ok)] = 0
        cand[:, ~np.isin(np.arange(len(w.ids)), ok)] = 0
        flat = np.argsort(-cand, axis=None, kind="stable")[:top_k]
        for s, e in zip(*np.unravel_index(flat, cand.shape)):
            if w.positions[s] < 0 or w.positions[e] < 0:
                continue
            a, b = w.offsets[s][0], w.offsets[e][1]
            answers.append({"score": float(cand[s, e]), "start": int(a), "end": int(b), "answer": context[a:b]})
    answers.sort(key=lambda x: -x["score"])
    if not answers:
        raise InputError("no answer span fits in the context")
    return answers[0] if top_k == 1 else answers[:top_k]
