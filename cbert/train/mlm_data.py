"""mlm data: raw notes, one document per line, cut into full windows (none dropped), masked afresh
for every batch by :func:`~cbert.train.masking.mask_tokens`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..corpus.read import utf8_lines
from ..ir import IGNORE_INDEX
from .data import TaskData, check_unicode, window_or_fail
from .masking import mask_tokens, special_ids
from .metrics import perplexity

MLM_PROBABILITY = 0.15  # BERT's, and DataCollatorForLanguageModeling's default
TOKENIZE_CHUNK = 1024  # documents per tokenizer call


def read_mlm(path: Path, tokenizer, *, max_length: int, whole_word: bool, label2id=None, stride=None,
             aggregation: str = "mean") -> MLMData:
    """Every non-blank line a document; a document longer than ``max_length`` tokens becomes
    consecutive windows without overlap, each full but the last (transformers' run_mlm would drop
    the rest of a line, or glue documents together). A line with no token to predict (blank, or
    unknown to the vocabulary) is no document."""
    lines = []
    for number, line in utf8_lines(str(path)):
        text = line.rstrip("\r\n").lstrip("\ufeff") if number == 1 else line.rstrip("\r\n")
        if text.strip():
            check_unicode(f"{path}:{number}", "line", text)
            lines.append((number, text))
    features, specials = [], special_ids(tokenizer)
    for start in range(0, len(lines), TOKENIZE_CHUNK):
        chunk = lines[start:start + TOKENIZE_CHUNK]
        for (number, _), enc in zip(chunk, tokenizer.encode([t for _, t in chunk], check_length=False)):
            windows = window_or_fail(f"{path}:{number}", enc, max_length, 0)
            # a line the vocabulary reads as [UNK] alone has nothing to predict (its loss would be 0/0)
            features += [w for w in windows if not np.isin(w.ids, specials).all()]
    return MLMData(tokenizer, features, whole_word)


class MLMData(TaskData):
    task = "mlm"

    def __init__(self, tokenizer, features, whole_word: bool):
        super().__init__(tokenizer, features)
        self.whole_word = whole_word

    def collate(self, indices, seed: int) -> dict[str, np.ndarray]:
        batch = self.inputs(indices)
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], self.tokenizer, MLM_PROBABILITY,
                                                          self.whole_word, seed)
        return batch

    def evaluate(self, run, batch_size: int) -> dict:
        """Perplexity: exp of the mean loss per masked token, each batch masked by a fixed seed (its
        number) so that every evaluation of a run scores the same masks."""
        total, counted = 0.0, 0
        for number, indices in enumerate(self.eval_batches(batch_size)):
            batch = self.collate(indices, number)
            n = int((batch["labels"] != IGNORE_INDEX).sum())
            total += float(run(batch)["loss"]) * n
            counted += n
        loss = total / counted
        return {"loss": loss, "perplexity": perplexity(loss), "main": "perplexity", "greater_is_better": False}
