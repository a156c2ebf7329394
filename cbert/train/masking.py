"""Masked-LM inputs: ``mask_tokens``, as transformers' DataCollatorForLanguageModeling masks a batch.

15% of the maskable tokens are chosen (each by a coin of ``mask_prob``, or each word by one coin
for all its pieces); of those 80% become the mask token, 10% a random token, 10% stay as they are;
labels hold the chosen tokens' ids and -100 everywhere else. Special tokens and padding are never chosen.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ir import IGNORE_INDEX

# Every special token either vocabulary may have (BERT's WordPiece, RoBERTa's byte-level BPE):
# what DataCollatorForLanguageModeling leaves alone (the tokenizer's all_special_ids).
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>", "<pad>", "<mask>", "<unk>")


def special_ids(tokenizer) -> np.ndarray:
    ids = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS} | {tokenizer.pad_token_id}
    return np.array(sorted(i for i in ids if i is not None), np.int64)


def word_starts(tokenizer, ids: np.ndarray) -> np.ndarray:
    """Whether each token begins a word: WordPiece marks a continuation with ``##``, byte-level BPE
    marks a word's first piece with ``Ġ`` (a space before it)."""
    tokens = tokenizer.convert_ids_to_tokens(ids.ravel())
    if tokenizer.token_to_id("<s>") is not None:  # byte-level BPE (RoBERTa)
        starts = [t is None or t.startswith("Ġ") for t in tokens]
    else:
        starts = [t is None or not t.startswith("##") for t in tokens]
    return np.array(starts, bool).reshape(ids.shape)


def mask_tokens(input_ids, tokenizer, mask_prob: float = 0.15, whole_word: bool = False,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(masked input_ids, labels) for a [batch, seq] (or [seq]) array of token ids, the same for the
    same ``seed``.

    Each maskable token is chosen with ``mask_prob``, as DataCollatorForLanguageModeling does, or with
    ``whole_word`` each word is (WordPiece ``##`` continuations go with the piece before them), as its
    ``whole_word_mask=True`` does. One difference: a row where no coin came up gets one token (word)
    chosen at random, since a masked-LM loss over no token is undefined (NaN) and a short note often
    draws none. Labels are -100 wherever the loss should not look.
    """
    if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)) or not 0 < mask_prob <= 1:
        raise InputError(f"mask_prob={mask_prob!r}; expected a fraction in (0, 1]")
    if tokenizer.mask_token_id is None:
        raise InputError("this tokenizer has no mask token ([MASK] or <mask>); it cannot mask for a masked-LM loss")
    ids = np.asarray(input_ids)
    if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"input_ids: expected a [batch, seq] array of token ids, got {ids.dtype} "
                         f"with shape {list(ids.shape)}")
    squeeze = ids.ndim == 1
    ids = np.array(ids[None] if squeeze else ids, np.int64)
    rng = np.random.default_rng(seed)
    maskable = ~np.isin(ids, special_ids(tokenizer))
    if whole_word:
        chosen = _whole_words(ids, maskable, word_starts(tokenizer, ids), mask_prob, rng)
    else:
        chosen = (rng.random(ids.shape) < mask_prob) & maskable
        for row in np.flatnonzero(~chosen.any(1) & maskable.any(1)):
            chosen[row, rng.choice(np.flatnonzero(maskable[row]))] = True
    labels = np.where(chosen, ids, IGNORE_INDEX)
    replaced = (rng.random(ids.shape) < 0.8) & chosen
    randomized = (rng.random(ids.shape) < 0.5) & chosen & ~replaced
    masked = ids.copy()
    masked[replaced] = tokenizer.mask_token_id
    masked[randomized] = rng.integers(0, tokenizer.vocab_size, ids.shape)[randomized]
    return (masked[0], labels[0]) if squeeze else (masked, labels)


def _whole_words(ids, maskable, starts, mask_prob: float, rng) -> np.ndarray:
    """Each word's coin (drawn on its first piece) chooses all its pieces, as transformers'
    whole_word_mask does; a row where no coin came up gets one word chosen at random."""
    new_word = maskable & (starts | ~np.pad(maskable, ((0, 0), (1, 0)))[:, :-1])
    word = np.where(maskable, np.cumsum(new_word, 1), 0)  # 1, 2, ... within a row; 0: never chosen
    drawn = new_word & (rng.random(ids.shape) < mask_prob)
    for row in np.flatnonzero(~drawn.any(1) & maskable.any(1)):
        drawn[row, rng.choice(np.flatnonzero(new_word[row]))] = True
    chosen = np.zeros(ids.shape, bool)
    for row in range(ids.shape[0]):
        chosen[row] = np.isin(word[row], word[row][drawn[row]]) & maskable[row]
    return chosen
