"""Model families: one module per family, each one :class:`Family` record and its graph function.

A record says everything that makes a family itself: the ``model_type`` values and Hugging
Face classes it answers to, how its tensors are named (the base model's prefix, each layer's
pieces, each head's), how its positions count, how its config.json differs from BERT's, and
which function builds its graph. Nothing outside this package asks which family a model is;
it asks the record (:func:`family_of`). A new family is one module that calls :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..heads import Heads
from ..ir import Graph, expose_attentions

if TYPE_CHECKING:
    from ..config import ModelConfig

# Hugging Face's class suffixes and the heads each one has ({stem}Model, {stem}ForMaskedLM, ...).
SUFFIX_HEADS = {"Model": (), "ForMaskedLM": ("mlm",), "ForSequenceClassification": ("seq_cls",),
                "ForTokenClassification": ("token_cls",), "ForQuestionAnswering": ("qa",)}


def classes(*stems: str) -> dict[str, tuple[str, ...]]:
    """Every standard class of these stems -> its heads: ``classes("Bert")`` gives BertModel ..."""
    return {stem + suffix: heads for stem in stems for suffix, heads in SUFFIX_HEADS.items()}


@dataclass(frozen=True)
class LayerNames:
    """One encoder layer's tensors (``.weight``/``.bias`` follow); ``prefix`` is formatted per layer."""

    prefix: str  # "encoder.layer.{i}."
    query: str
    key: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_in: str
    ffn_out: str
    output_norm: str


@dataclass(frozen=True)
class MaskedLMHead:
    """transform (dense + activation), LayerNorm, then the decoder onto the vocabulary."""

    dense: str
    layer_norm: str
    decoder_weight: str  # absent from a file whose decoder is tied to the word embeddings
    bias: str
    # The decoder's own bias: tied to ``bias`` in released files, but a model saved untied
    # keeps both and Hugging Face's forward adds the decoder's, so it wins where present.
    decoder_bias: str | None = None
    activation: str | None = None  # None: the config's hidden_act


@dataclass(frozen=True)
class SeqClassifier:
    """Where a sequence classifier reads the encoder, and the linears it runs."""

    from_pooler: bool  # the pooled output, else the first token's hidden state
    hidden: tuple[tuple[str, str], ...]  # (linear, activation) layers of size hidden_size, in order
    out: str  # the linear giving one logit per label


def positions_from_zero(input_ids: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """0, 1, 2 ... on every row, padding included (BERT's default position_ids)."""
    B, S = input_ids.shape
    return np.broadcast_to(np.arange(S, dtype=np.int64), (B, S))


def every_position(cfg: ModelConfig) -> int:
    return cfg.max_position_embeddings


def no_config_problem(cfg: ModelConfig) -> tuple[str, str] | None:
    return None


@dataclass(frozen=True, eq=False)
class Family:
    """One family's record. Defaults are BERT's; tensor names are relative to ``prefix``. No
    tokenizer field: every family's tokenizer is read from the checkpoint's own files."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values
    architectures: Mapping[str, tuple[str, ...]]  # Hugging Face class -> its heads; the first of a set names it
    prefix: str  # what the *For* classes put before the base model's own names ("bert.")
    layer: LayerNames
    # (family, config, heads) -> the graph: every head of ``heads``, every hidden state an output.
    graph: Callable[[Family, ModelConfig, Heads], Graph]
    mlm: MaskedLMHead | None
    seq_cls: SeqClassifier
    pooler: str | None = "pooler.dense"  # its linear; None: the family has no pooler
    nsp: str | None = None  # next-sentence linear over the pooled output
    token_cls: str = "classifier"
    qa: str = "qa_outputs"  # one linear to (start, end) per token
    # The position rule: default position_ids for [B, S] input_ids, and the longest input it allows.
    position_ids: Callable[[np.ndarray, ModelConfig], np.ndarray] = positions_from_zero
    max_seq_len: Callable[[ModelConfig], int] = every_position
    # How config.json differs from BERT's: keys spelled otherwise, defaults, values the family fixes.
    config_renames: Mapping[str, str] = field(default_factory=dict)
    config_defaults: Mapping[str, object] = field(default_factory=dict)
    config_fixed: Mapping[str, object] = field(default_factory=dict)
    config_problem: Callable[[ModelConfig], tuple[str, str] | None] = no_config_problem  # (field, why)
    # config.json's keys for the dropout probabilities a training graph uses (hidden states,
    # attention probabilities, the classifier's input) and Hugging Face's defaults when a key is
    # absent; a classifier's None means "the hidden one", as BertForSequenceClassification reads it.
    dropout_keys: tuple[str, str, str] = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
    dropout_defaults: tuple[float, float, float | None] = (0.1, 0.1, None)

    def config_dict(self, d: dict) -> dict:
        """A config.json dict in BERT's spelling, with this family's defaults and fixed values."""
        d = dict(d)
        for theirs, ours in self.config_renames.items():
            if theirs in d:
                d[ours] = d.pop(theirs)
        for k, v in self.config_defaults.items():
            d.setdefault(k, v)
        return {**d, **self.config_fixed}

    @property
    def bias_twins(self) -> dict[str, str]:
        """Head bias -> the twin that replaces it when a file holds one."""
        return {self.mlm.bias: self.mlm.decoder_bias} if self.mlm and self.mlm.decoder_bias else {}

    def has_pooler(self, names) -> bool:
        return self.pooler is not None and self.pooler + ".weight" in names

    def detect_heads(self, names) -> tuple[str, ...]:
        """The heads whose tensors a file holds (names without the prefix), when config.json names no class."""
        found = []
        if self.mlm and self.mlm.dense + ".weight" in names:
            found.append("mlm")
        if self.nsp and self.nsp + ".weight" in names:
            found.append("nsp")
        if self.qa + ".weight" in names:
            found.append("qa")
        seq = self.seq_cls
        if all(n + ".weight" in names for n in [*(h for h, _ in seq.hidden), seq.out]) and (
                not seq.from_pooler or self.has_pooler(names)):
            found.append("seq_cls")
        elif self.token_cls + ".weight" in names:
            found.append("token_cls")
        return tuple(found)

    def class_name(self, heads: tuple[str, ...]) -> str:
        """The family's class with exactly these heads, or the heads joined by + when none has them."""
        return next((name for name, h in self.architectures.items() if set(h) == set(heads)), "+".join(heads))


# model_type -> family, in registration order (bert, roberta ..., as `cbert runs ...` lists them).
_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` answer to its model types and classes; returns it."""
    for model_type in family.model_types:
        other = _REGISTRY.get(model_type)
        if other is not None and other.name != family.name:
            raise ValueError(f"model_type {model_type!r} already belongs to family {other.name!r}")
    taken = {a: f.name for f in families() if f.name != family.name for a in f.architectures}
    clash = [a for a in family.architectures if a in taken]
    if clash:
        raise ValueError(f"architecture {clash[0]!r} already belongs to family {taken[clash[0]]!r}")
    for model_type in family.model_types:
        _REGISTRY[model_type] = family
    return family


def families() -> tuple[Family, ...]:
    return tuple(dict.fromkeys(_REGISTRY.values()))


def model_types() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def by_model_type(model_type) -> Family | None:
    """The family of a config.json ``model_type``; None for an unknown one (or a non-string)."""
    return _REGISTRY.get(model_type) if isinstance(model_type, str) else None


def architectures() -> dict[str, Family]:
    """Every Hugging Face class cbert runs -> its family."""
    return {a: f for f in families() for a in f.architectures}


def family_of(cfg: ModelConfig) -> Family:
    """The record of the family that runs ``cfg``."""
    family = _REGISTRY.get(cfg.model_type)
    if family is None:
        raise ValueError(f"model_type {cfg.model_type!r}: no family runs it; cbert runs {', '.join(model_types())}")
    return family


def build_graph(cfg: ModelConfig, heads: Heads | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> Graph:
    """The whole forward of ``cfg``'s family: embeddings, encoder layers, then ``heads`` (None: no
    head), as one op list."""
    family = family_of(cfg)
    graph = family.graph(family, cfg, heads or Heads())
    if output_attentions:
        graph = expose_attentions(graph)
    if not output_hidden_states:
        graph = replace(graph, outputs={k: v for k, v in graph.outputs.items() if not k.startswith("hidden_states.")})
    return graph


# The families cbert ships; each module registers its record on import.
from . import bert, roberta, distilbert, albert  # noqa: E402, F401, I001  (registration order)
