"""Fill-mask, as Hugging Face's fill-mask pipeline gives it."""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError, InputError
from .arguments import positive_int, string
from .run import softmax


def fill_mask(model, text: str, top_k: int = 5) -> list:
    """For each mask token in ``text``, the top_k candidates {score, token, token_str, sequence}; the
    list of candidates itself when there is one mask."""
    if not model.checkpoint.loaded.mlm:
        raise CheckpointError(f"{model.checkpoint.weights_file}: fill-mask needs a masked-LM head; this checkpoint "
                         f"is a {model.checkpoint.architecture}")
    text = string(text, "text")
    top_k = positive_int(top_k, "top_k")
    tok = model.tokenizer
    batch = tok([text])
    ids = batch["input_ids"][0]
    where = np.flatnonzero(ids == tok.mask_token_id)
    if where.size == 0:
        raise InputError(f"no {tok.mask_token} token in the text: {text!r}")
    hidden = model.forward(**batch, outputs=("last_hidden_state",)).last_hidden_state
    # The head runs only over the masked positions, not the whole [seq, vocab].
    logits = model.mlm_logits(hidden[:, where])[0]
    results = []
    for pos, row in zip(where, logits):
        p = softmax(row)
        top = np.argsort(-p, kind="stable")[:top_k]
        cands = []
        for t in top:
            filled = ids.copy()
            filled[pos] = t
            cands.append({"score": float(p[t]), "token": int(t),
                          "token_str": tok.decode([t], skip_special_tokens=False), "sequence": tok.decode(filled)})
        results.append(cands)
    return results[0] if len(results) == 1 else results
