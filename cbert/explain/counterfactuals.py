"""Counterfactual edits: the smallest word substitutions that change a classifier's prediction.

The words that most support the prediction (by occlusion, or any method's attributions) are masked
one at a time, and a masked-LM head proposes replacements for each: the model's own head when its
checkpoint has one, else a companion masked-LM checkpoint (any vocabulary: edits are made in the
text). Single substitutions are tried first, then pairs, up to ``max_edits``; the edits of the
smallest size that change the predicted label are returned, most convincing first.
"""

from __future__ import annotations

import itertools
import numbers
import re
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..tasks.classify import class_probabilities
from ..tasks.run import softmax
from ..tasks.windows import centrality, split
from .methods import Options, run_method
from .shap_lime import predict_proba
from .subject import make_subject

_WORDLIKE = re.compile(r"\w")


def _count(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InputError(f"{name}={value!r}; expected an integer >= {low}")
    return int(value)


def masked_lm(model, mlm=None):
    """(the model that proposes words, how to name it): ``model`` itself when it has a masked-LM head,
    else ``mlm`` (a loaded model or a checkpoint folder, loaded on the same backend)."""
    if mlm is None:
        if model.checkpoint.loaded.mlm:
            return model, "the model's own masked-LM head"
        raise InputError(f"{model.checkpoint.weights_file}: counterfactuals need a masked-LM head to propose words, "
                         f"and this {model.checkpoint.architecture} has none; give a companion masked-LM checkpoint "
                         "(mlm=DIR, --mlm DIR), e.g. the base the classifier was fine-tuned from")
    if isinstance(mlm, (str, Path)):
        from .. import load

        mlm = load(mlm, backend=model.backend.name, dtype=model.backend.dtype)
    if not mlm.checkpoint.loaded.mlm:
        raise InputError(f"mlm: {mlm.checkpoint.weights_file} is a {mlm.checkpoint.architecture} without a "
                         "masked-LM head; give a *ForMaskedLM (or pre-training) checkpoint")
    return mlm, f"the companion masked-LM {mlm.checkpoint.path}"


def proposals(mlm, text: str, start: int, end: int, k: int, stride=None) -> list[str]:
    """Up to ``k`` whole words the masked LM puts in place of ``text[start:end]``, most likely first."""
    tok = mlm.tokenizer
    if tok.mask_token is None:
        raise InputError(f"{mlm.checkpoint.path}: its tokenizer has no mask token")
    masked = text[:start] + tok.mask_token + text[end:]
    enc = tok.encode([masked], check_length=False)[0]
    content = [i for i, special in enumerate(enc.special_tokens_mask) if not special]
    at = [k for k, i in enumerate(content) if enc.ids[i] == tok.mask_token_id and enc.offsets[i][0] == start]
    if not at:
        return []
    # The window where the masked word sits most centrally, as a long note's predictions are read.
    best = None
    for w in split(enc, mlm.config.max_seq_len, stride):
        inside = [p for p in w.positions if p >= 0]
        if at[0] in inside:
            c = centrality(w)[inside.index(at[0])]
            if best is None or c > best[0]:
                best = (c, w, w.positions.index(at[0]))
    _, window, row = best
    batch = tok.model_inputs({"input_ids": np.array([window.ids]), "attention_mask": np.ones((1, len(window.ids)),
                              np.int64), "token_type_ids": np.array([window.type_ids])})
    hidden = mlm.forward(**batch, outputs=("last_hidden_state",)).last_hidden_state
    probs = softmax(mlm.mlm_logits(hidden[:, [row]])[0, 0])
    original = text[start:end].lower()
    words: list[str] = []
    for t in np.argsort(-probs, kind="stable"):
        piece = tok.convert_ids_to_tokens([int(t)])[0]
        word = tok.decode([int(t)]).strip()
        if piece.startswith("##") or not _WORDLIKE.search(word) or word.lower() == original or word in words:
            continue
        words.append(word)
        if len(words) == k:
            break
    return words


def find_counterfactuals(subject, scores: np.ndarray, target=None, max_edits: int = 2, mlm=None,
                         positions: int = 5, candidates: int = 5) -> dict:
    """{"counterfactuals": [...], "tried", "words", "source"} for a classify subject whose per-token
    attributions toward its predicted label are ``scores``."""
    if subject.task != "classify":
        raise InputError(f"counterfactuals change a classifier's label; task {subject.task} has none")
    max_edits = _count(max_edits, "max_edits")
    positions, candidates = _count(positions, "positions"), _count(candidates, "candidates")
    labels = subject.target.labels
    original = subject.target.label
    wanted = None
    if target is not None:
        if target not in labels:
            raise InputError(f"target={target!r} is not a label of this classifier; its labels: {', '.join(labels)}")
        wanted = labels.index(target)
        if wanted == original:
            raise InputError(f"target={target!r} is already the prediction; a counterfactual needs another label")
    proposer, source = masked_lm(subject.model, mlm)
    text = subject.text
    spans = [(s, e) for a, b, s, e in subject.word_spans()
             if not subject.fixed[a:b].any() and _WORDLIKE.search(text[s:e])]
    word_score = {(s, e): float(scores[a:b].sum()) for a, b, s, e in subject.word_spans()}
    chosen = sorted(spans, key=lambda span: -word_score[span])[:positions]
    options = [(span, proposals(proposer, text, *span, candidates, subject.stride)) for span in chosen]
    options = [(span, words) for span, words in options if words]
    tried, found = 0, []
    for k in range(1, min(max_edits, len(options)) + 1):
        edits = [tuple(zip(spans_k, words_k)) for combo in itertools.combinations(options, k)
                 for spans_k, words_k in [tuple(zip(*combo))] for words_k in itertools.product(*words_k)]
        texts = [_apply(text, e) for e in edits]
        if subject.progress:
            print(f"counterfactuals: {len(texts)} edit(s) of {k} word(s)", file=sys.stderr)
        probs = predict_proba(subject.model, texts, subject.target.aggregation, subject.stride, subject.batch_size)
        tried += len(texts)
        for e, t, p in zip(edits, texts, probs):
            label = int(np.argmax(p))
            if label != original and (wanted is None or label == wanted):
                found.append({"edits": [{"start": s, "end": x, "original": text[s:x], "replacement": w}
                                        for (s, x), w in e],
                              "text": t, "label": labels[label], "probability": float(p[label]),
                              "original_label": labels[original], "original_probability": float(p[original])})
        if found:
            break
    found.sort(key=lambda c: -c["probability"])
    return {"counterfactuals": found, "tried": tried, "source": source,
            "words": [{"word": text[s:e], "start": s, "end": e, "proposals": w} for (s, e), w in options]}


def _apply(text: str, edits) -> str:
    for (start, end), word in sorted(edits, key=lambda e: -e[0][0]):  # right to left: offsets stay valid
        text = text[:start] + word + text[end:]
    return text


def counterfactuals_of(subject, options: Options | None = None, target=None, max_edits: int = 2, mlm=None,
                       occlusion=None) -> dict:
    """Counterfactuals of the classifier's predicted label on the subject's note, the words ranked by
    occlusion (reusing ``occlusion`` when it explains that label)."""
    predicted = int(np.argmax(class_probabilities(subject.model, [subject.text], subject.target.aggregation,
                                                  subject.stride, subject.batch_size)[0]))
    if subject.target.label != predicted:
        subject = make_subject(subject.model, subject.text, "classify", predicted, None, subject.target.aggregation,
                               subject.stride, subject.batch_size, subject.progress)
        occlusion = None
    ranking = occlusion or run_method(subject, "occlusion", options or Options())
    return find_counterfactuals(subject, ranking.scores, target, max_edits, mlm)



def counterfactuals(model, text: str, target=None, max_edits: int = 2, mlm=None, aggregation: str = "mean",
                    stride: int | None = None, batch_size: int = 32) -> list[dict]:
    """``model.counterfactuals``: the smallest edits of ``text`` that change the classifier's predicted label
    (to ``target`` when given), each {edits, text, label, probability, original_label, original_probability}."""
    subject = make_subject(model, text, "classify", None, None, aggregation, stride, batch_size)
    return counterfactuals_of(subject, target=target, max_edits=max_edits, mlm=mlm)["counterfactuals"]
