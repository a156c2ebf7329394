"""Occlusion: each word replaced in turn by the mask token, all variants batched; a word's attribution
is how much the target's probability drops without it (split evenly over the word's tokens)."""

from __future__ import annotations

import numpy as np


def occlusion(subject, options) -> tuple[np.ndarray, dict]:
    spans = subject.word_spans()
    free = [w for w, (a, b, _, _) in enumerate(spans) if not subject.fixed[a:b].all()]
    masked = np.zeros((1 + len(free), len(subject.tokens)), bool)
    for k, w in enumerate(free, start=1):
        a, b = spans[w][:2]
        masked[k, a:b] = ~subject.fixed[a:b]
    probs = subject.scores(masked)
    scores = np.zeros(len(subject.tokens))
    for k, w in enumerate(free, start=1):
        a, b = spans[w][:2]
        scores[a:b] = (probs[0] - probs[k]) / (b - a)
    replacement = subject.model.tokenizer.convert_ids_to_tokens([subject.replacement_id])[0]
    return scores, {"unit": "word", "replacement": replacement, "forwards": int(len(masked)),
                    "scalar": "probability of the target (drop when the word is replaced)"}
