"""Tasks over whole notes, shaped like Hugging Face pipelines: embed, classify, ner, qa, fill_mask.

Every task splits a text longer than the model's positions into overlapping windows
(:mod:`cbert.windows`) and aggregates, so nothing is silently truncated; a text that fits
gives exactly the un-windowed result.
"""

from __future__ import annotations

import sys

import numpy as np

from ..errors import InputError
from .windows import Window, aggregate, centrality, pad, split

POOLINGS = ("cls", "mean", "max")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def run_windows(model, windows: list[Window], batch_size: int, outputs: tuple[str, ...],
                progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Forward every window (batched by length, so padding costs little); per window, unpadded outputs."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
    results: list[dict] = [{} for _ in windows]
    n_batches = (len(windows) + batch_size - 1) // batch_size
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        batch = model.tokenizer.model_inputs(pad([windows[i] for i in idx], model.tokenizer.pad_token_id))
        out = model.forward(**batch)
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


def _windows_per_text(model, texts, stride: int | None, truncation: bool = False):
    encs = model.tokenizer.encode(texts, truncation=truncation, check_length=False)
    per_text = [split(e, model.config.max_seq_len, stride) for e in encs]
    return encs, per_text


def _flat(per_text: list[list[Window]]) -> tuple[list[Window], list[range]]:
    flat, spans = [], []
    for ws in per_text:
        spans.append(range(len(flat), len(flat) + len(ws)))
        flat += ws
    return flat, spans


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
    _, per_text = _windows_per_text(model, texts, stride, truncation)
    flat, spans = _flat(per_text)
    outs = run_windows(model, flat, batch_size, ("last_hidden_state",), progress)
    vecs = np.stack([pool(o["last_hidden_state"], o["attention_mask"], pooling) for o in outs])
    result = np.stack([aggregate(vecs[s], window_aggregation) for s in spans]).astype(np.float32)
    if normalize:
        result /= np.maximum(np.linalg.norm(result, axis=1, keepdims=True), np.float32(1e-12))
    return result


HEAD_NAMES = {"seq_cls": "sequence classification", "token_cls": "token classification", "qa": "question answering"}


def _require(model, kind: str, what: str) -> None:
    if not getattr(model.checkpoint.heads, kind):
        raise ValueError(f"{model.checkpoint.weights_file}: {what} needs a {HEAD_NAMES[kind]} head; this "
                         f"checkpoint is a {model.checkpoint.architecture}")


def classify(model, texts, top_k: int | None = 1, aggregation="mean", stride=None, batch_size=32,
             function_to_apply: str | None = None, progress=False):
    """Hugging Face text-classification results: per text {label, score} (top_k=1) or a sorted list."""
    _require(model, "seq_cls", "classify")
    if aggregation not in ("mean", "max", "vote"):
        raise ValueError(f"aggregation={aggregation!r}; choose one of mean, max, vote")
    single = isinstance(texts, str)
    _, per_text = _windows_per_text(model, [texts] if single else texts, stride)
    flat, spans = _flat(per_text)
    outs = run_windows(model, flat, batch_size, ("logits",), progress)
    logits = np.stack([o["logits"] for o in outs])
    n_labels = logits.shape[-1]
    labels = model.config.labels(n_labels)
    fn = function_to_apply or ("sigmoid" if n_labels == 1 or model.config.extra.get("problem_type") ==
                               "multi_label_classification" else "softmax")
    if fn == "softmax":
        probs = _softmax(logits)
    elif fn == "sigmoid":
        probs = 1 / (1 + np.exp(-logits))
    elif fn == "none":
        probs = logits
    else:
        raise ValueError(f"function_to_apply={fn!r}; choose softmax, sigmoid or none")
    results = []
    for s in spans:
        scores = aggregate(probs[s], aggregation)
        ranked = [{"label": labels[i], "score": float(scores[i])} for i in np.argsort(-scores, kind="stable")]
        results.append(ranked[0] if top_k == 1 else ranked[:top_k])
    return results[0] if single else results


def ner(model, texts, stride=None, batch_size=32, ignore_labels=("O",), progress=False):
    """Entities per text, as Hugging Face's token-classification pipeline with aggregation_strategy="simple".

    In a long note each token keeps its prediction from the window where it sits most centrally.
    """
    _require(model, "token_cls", "ner")
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    encs, per_text = _windows_per_text(model, texts, stride)
    flat, spans = _flat(per_text)
    outs = run_windows(model, flat, batch_size, ("logits",), progress)
    labels = model.config.labels(outs[0]["logits"].shape[-1])
    tok = model.tokenizer
    results = []
    for text, enc, s in zip(texts, encs, spans):
        n_content = sum(1 for m in enc.special_tokens_mask if not m)
        best = np.full(n_content, -1)
        logits = np.zeros((n_content, len(labels)), np.float32)
        for w, o in zip(flat[s.start:s.stop], outs[s.start:s.stop]):
            rows = [k for k, p in enumerate(w.positions) if p >= 0]
            pos = np.array([w.positions[k] for k in rows])
            central = centrality(w)
            better = central > best[pos]
            best[pos[better]] = central[better]
            logits[pos[better]] = o["logits"][np.array(rows)[better]]
        scores = _softmax(logits)
        content = [i for i, m in enumerate(enc.special_tokens_mask) if not m]
        tokens = []
        for c, i in enumerate(content):
            start, end = enc.offsets[i]
            word = tok.convert_ids_to_tokens([enc.ids[i]])[0]
            if enc.ids[i] == tok.unk_token_id:
                word = text[start:end]
            k = int(scores[c].argmax())
            tokens.append({"entity": labels[k], "score": float(scores[c, k]), "word": word, "start": start,
                           "end": end})
        results.append([e for e in group_entities(tokens, tok) if e["entity_group"] not in ignore_labels])
    return results[0] if single else results


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # not in B-/I- form: a continuation


def group_entities(tokens: list[dict], tok) -> list[dict]:
    """Adjacent tokens with the same tag form one entity, a B- tag starting a new one (HF "simple")."""
    groups, current = [], []
    for t in tokens:
        if current:
            bi, tag = _tag(t["entity"])
            if not (tag == _tag(current[-1]["entity"])[1] and bi != "B"):
                groups.append(current)
                current = []
        current.append(t)
    if current:
        groups.append(current)
    return [{"entity_group": _tag(g[0]["entity"])[1], "score": float(np.mean([t["score"] for t in g])),
             "word": tok.convert_tokens_to_string([t["word"] for t in g]), "start": g[0]["start"],
             "end": g[-1]["end"]} for g in groups]


def qa(model, question: str, context: str, top_k: int = 1, max_answer_len: int = 15, stride=None,
       batch_size=32, progress=False):
    """The best answer span(s) in ``context``: {score, start, end, answer}, over every window of a long context."""
    _require(model, "qa", "qa")
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
        start = _softmax(np.where(allowed, o["start_logits"], -10000.0))
        end = _softmax(np.where(allowed, o["end_logits"], -10000.0))
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
