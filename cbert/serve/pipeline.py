"""Inputs to windows and per-window outputs to answers, by the same steps as ``model.embed``
and ``model.classify``: the model's tokenizer, :func:`cbert.tasks.windows.split`, pooling in
the engine, :func:`cbert.tasks.windows.aggregate`, then L2 normalization.

What cbert.tasks does inside one call is cut here at the forward, so that windows of many
requests can share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..tasks.classify import window_probabilities
from ..tasks.embed import l2_normalize
from ..tasks.windows import Window, aggregate, split
from .inputs import ApiError


@dataclass
class Prepared:
    windows: list[Window]  # every input's windows, input after input
    spans: list[range]  # per input, its windows
    tokens: int  # tokens of the inputs, as billed in usage.prompt_tokens

    @property
    def n_inputs(self) -> int:
        return len(self.spans)


@dataclass
class _Ids:
    """Token ids a client sent, shaped like a ``tokenizers`` Encoding for :func:`split`."""

    ids: list[int]
    special_tokens_mask: list[int]

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return [(0, 0)] * len(self.ids)

    @property
    def sequence_ids(self) -> list[int | None]:
        return [None if s else 0 for s in self.special_tokens_mask]


class Pipeline:
    def __init__(self, model, pooling: str, normalize: bool, window_aggregation: str = "mean",
                 stride: int | None = None, max_input_tokens: int = 16384):
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.window_aggregation = window_aggregation
        self.stride = stride
        self.max_input_tokens = max_input_tokens
        # A client's token ids are a whole model input, as POST /tokenize returns them; these are
        # the ids the tokenizer adds around a text (e.g. [CLS] and [SEP]).
        self.special_ids = frozenset(model.tokenizer.encode([""])[0].ids)

    def prepare(self, inputs: list, param: str, truncate: bool) -> Prepared:
        """Windows for each input: a text, token ids, a (text,) tuple, or a (text, text_pair)
        tuple whose second text is windowed while the first repeats in every window (as
        model.qa windows a context). ``truncate`` keeps only the first window, which is what
        the tokenizer's truncation gives."""
        encodings = self._encode(inputs, param)
        windows, spans, tokens = [], [], 0
        for i, enc in enumerate(encodings):
            n = len(enc.ids)
            if n > self.max_input_tokens and not truncate:
                raise ApiError("too_large", f"{param}[{i}] is {n} tokens long, more than this server's "
                               f"--max-input-tokens {self.max_input_tokens}; split it or set truncate",
                               f"{param}[{i}]", "input_too_long")
            try:
                ws = split(enc, self.model.config.max_seq_len, self.stride,
                           content_sequence=1 if isinstance(inputs[i], tuple) and len(inputs[i]) == 2 else None)
            except InputError as e:
                raise ApiError("validation", f"{param}[{i}]: {e}", f"{param}[{i}]") from None
            if truncate:
                ws = ws[:1]
            if len(ws[0].ids) > self.model.config.max_seq_len:  # only special tokens: nothing to window
                raise ApiError("validation", f"{param}[{i}] is {n} special tokens and no text, more than the model's "
                               f"{self.model.config.max_seq_len} positions", f"{param}[{i}]")
            tokens += len(ws[0].ids) if truncate else n
            spans.append(range(len(windows), len(windows) + len(ws)))
            windows += ws
        return Prepared(windows, spans, tokens)

    def _encode(self, inputs: list, param: str) -> list:
        tok = self.model.tokenizer
        vocab = self.model.config.vocab_size
        out: list = [None] * len(inputs)
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        singles = [i for i, x in enumerate(inputs) if isinstance(x, tuple) and len(x) == 1]
        pairs = [i for i, x in enumerate(inputs) if isinstance(x, tuple) and len(x) == 2]
        for group, first, second in ((texts, lambda x: x, None), (singles, lambda x: x[0], None),
                                     (pairs, lambda x: x[0], lambda x: x[1])):
            if group:
                encs = tok.encode([first(inputs[i]) for i in group],
                                  text_pair=None if second is None else [second(inputs[i]) for i in group],
                                  check_length=False)
                for i, e in zip(group, encs):
                    out[i] = e
        for i, x in enumerate(inputs):
            if isinstance(x, list):
                bad = next((j for j, t in enumerate(x) if not 0 <= t < vocab), None)
                if bad is not None:
                    raise ApiError("validation", f"{param}[{i}][{bad}] = {x[bad]} is outside the vocabulary "
                                   f"[0, {vocab})", f"{param}[{i}][{bad}]", "token_out_of_vocabulary")
                out[i] = _Ids(list(x), [int(t in self.special_ids) for t in x])
        return out

    # -- answers from per-window outputs ------------------------------------------------------

    def embeddings(self, pooled: list[np.ndarray], prep: Prepared, normalize: bool | None = None,
                   dimensions: int | None = None) -> np.ndarray:
        """[n_inputs, hidden or dimensions]: windows aggregated, then (Matryoshka) the first
        ``dimensions`` kept, then normalized. ``normalize`` None: as the server normalizes, except
        that a cut vector is always renormalized (a Matryoshka prefix is used at unit length)."""
        vectors = np.stack(pooled)
        result = np.stack([aggregate(vectors[s], self.window_aggregation) for s in prep.spans]).astype(np.float32)
        if dimensions is not None:
            result = np.ascontiguousarray(result[:, :dimensions])
        if normalize is None:
            normalize = self.normalize or dimensions is not None
        return l2_normalize(result) if normalize else result

    def class_scores(self, logits: list[np.ndarray], prep: Prepared, raw_scores: bool, aggregation: str) -> np.ndarray:
        """[n_inputs, n_labels]: per window softmax (sigmoid for one label or a multi-label
        checkpoint, as model.classify chooses), or the raw logits, aggregated over windows."""
        scores = window_probabilities(self.model, np.stack(logits), "none" if raw_scores else None)
        return np.stack([aggregate(scores[s], aggregation) for s in prep.spans])

    def ranked_labels(self, scores: np.ndarray) -> list[dict]:
        labels = self.model.config.labels(len(scores))
        return [{"label": labels[i], "score": float(scores[i])} for i in np.argsort(-scores, kind="stable")]
