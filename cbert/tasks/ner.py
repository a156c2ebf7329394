"""Named entities, as Hugging Face's token-classification pipeline with aggregation_strategy="simple"."""

from __future__ import annotations

import numpy as np

from .arguments import positive_int, stride_or_none, texts_list
from .run import flatten, require, run_windows, softmax, windows_per_text
from .windows import centrality


def ner(model, texts, stride=None, batch_size=32, ignore_labels=("O",), progress=False):
    """Entities per text, as Hugging Face's token-classification pipeline with aggregation_strategy="simple".

    In a long note each token keeps its prediction from the window where it sits most centrally.
    """
    require(model, "token_cls", "ner")
    texts, single = texts_list(texts)
    stride = stride_or_none(stride)
    batch_size = positive_int(batch_size, "batch_size")
    encs, per_text = windows_per_text(model, texts, stride)
    flat, spans = flatten(per_text)
    outs = run_windows(model, flat, batch_size, ("logits",), progress)
    labels = model.config.labels(outs[0]["logits"].shape[-1])
    tok = model.tokenizer
    results = []
    for text, enc, s in zip(texts, encs, spans):
        n_content = sum(1 for m in enc.special_tokens_mask if not m)
        best = np.full(n_content, -1)
        logits = np.zeros((n_content, len(labels)), np.float32)
        for w, o in zip(flat[s.start:s.stop], outs[s.start:s.stop]):
            rows = np.array([k for k, p in enumerate(w.positions) if p >= 0], dtype=np.int64)
            pos = np.array([w.positions[k] for k in rows], dtype=np.int64)
            central = centrality(w)
            better = central > best[pos]
            best[pos[better]] = central[better]
            logits[pos[better]] = o["logits"][rows[better]]
        scores = softmax(logits)
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
